"""``stylevar evaluate``: the paper's Table 2 for your checkpoints and data (see benchmark.py, report.py).

    stylevar evaluate --out eval/ \\
        --model SFT=released:sft --model GRPO=released:grpo --adain --content-copy \\
        --omnistyle data/OmniStyle-150K --exclude-split runs/sft/split.json \\
        --imagepulse data/ImagePulse --coco data/coco/val2017 --wikiart data/wikiart -n 50

Everything fails before the first image is generated when it can: the datasets are scanned and sampled,
the metric models built (a missing weight file is named with where to get it), the AdaIN weights read
and the first checkpoint loaded.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError

RELEASED = "released:"


def add_evaluate_arguments(p: argparse.ArgumentParser, add_checkpoint_args: Callable) -> None:
    p.add_argument("-o", "--out", required=True, help="output folder (rerun the same command to resume)")
    g = p.add_argument_group("what to evaluate")
    g.add_argument(
        "-m",
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]SOURCE",
        help="a StyleVAR checkpoint: our folder, an upstream .pth, a Hub id, or released:grpo / released:sft "
        "(the authors' weights); repeat to compare",
    )
    g.add_argument("--adain", action="store_true", help="also evaluate the AdaIN baseline")
    g.add_argument(
        "--adain-weights",
        default=None,
        help="folder holding vgg_normalised.pth and decoder.pth (default: ~/.cache/stylevar/adain)",
    )
    g.add_argument("--adain-alpha", type=float, default=1.0, help="AdaIN content-style trade-off (default 1)")
    g.add_argument("--adain-preserve-color", action="store_true", help="AdaIN keeps the content's colours")
    g.add_argument(
        "--content-copy", action="store_true", help="also score output = content (a reference floor)"
    )

    g = p.add_argument_group("datasets")
    g.add_argument("--omnistyle", default=None, help="OmniStyle-150K root (paired, vs the GT target)")
    g.add_argument("--imagepulse", default=None, help="ImagePulse root (paired, vs the GT target)")
    g.add_argument(
        "--paired",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another triplet dataset or manifest",
    )
    g.add_argument("--content-dir", "--coco", default=None, help="content images (unpaired; e.g. COCO)")
    g.add_argument("--style-dir", "--wikiart", default=None, help="style images (unpaired; e.g. WikiArt)")
    g.add_argument(
        "--unpaired-name",
        default="COCO+WikiArt",
        help="name of the unpaired benchmark (default COCO+WikiArt)",
    )
    g.add_argument("-n", "--num-samples", type=int, default=50, help="images per dataset (default 50)")
    g.add_argument("--seed", type=int, default=42, help="selection seed; sample i is generated with seed+i")
    g.add_argument(
        "--exclude-split",
        action="append",
        default=[],
        metavar="SPLIT_JSON",
        help="leave out the training triplets of this split.json (RUN_DIR/split.json); repeatable",
    )
    g.add_argument(
        "--strict-holdout",
        action="store_true",
        help="also leave out triplets whose content or style image was seen in training",
    )
    g.add_argument(
        "--fit",
        choices=("squash", "crop"),
        default="squash",
        help="resize inputs as in training (squash, default) or centre-crop first",
    )
    g.add_argument(
        "--resolution", type=int, default=None, help="image size when no --model is given (default 256)"
    )

    g = p.add_argument_group("metrics")
    g.add_argument(
        "--metrics",
        default="all",
        help="comma list of style_loss, content_loss, lpips, ssim, dreamsim, clip, histogram, fid, artfid, or "
        "paper / all (default) / torchvision (no optional package needed)",
    )
    g.add_argument(
        "--vgg-weights", default=None, help="vgg19-dcbb9e9d.pth (file or folder; default torch hub cache)"
    )
    g.add_argument(
        "--lpips-weights", default=None, help="vgg16-397923af.pth, LPIPS's trunk (default torch hub cache)"
    )
    g.add_argument(
        "--dreamsim-dir", default=None, help="DreamSim weights folder (default ~/.cache/stylevar/dreamsim)"
    )
    g.add_argument(
        "--clip-model",
        default=None,
        help="CLIP folder or Hub id (default openai/clip-vit-base-patch32, cached)",
    )
    g.add_argument(
        "--inception-weights", default=None, help="inception_v3_google-0cc3c7bd.pth for FID/ArtFID"
    )
    g.add_argument(
        "--download", action="store_true", help="download missing metric weights (needs the internet)"
    )

    g = p.add_argument_group("sampling (StyleVAR)")
    g.add_argument("--top-k", type=int, default=None, help="default: the checkpoint's (900)")
    g.add_argument("--top-p", type=float, default=None, help="default: the checkpoint's (0.96)")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--style-strength", type=float, default=None)
    g.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    g.add_argument("--cuda-graphs", action="store_true")
    g.add_argument("--legacy-kv-cache", action="store_true", help="the published sampler, token for token")

    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument(
        "--batch-size", type=int, default=8, help="images generated at once (results do not depend on it)"
    )
    g.add_argument("--timing-samples", type=int, default=8, help="images timed per dataset (0 = no timing)")
    g.add_argument(
        "--timing-batch-size", type=int, default=8, help="the batched timing's batch size (default 8)"
    )
    g.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed calls before each timing (default 3; 1 is too few on CPUs)",
    )
    g.add_argument("--sheet-samples", type=int, default=8, help="rows of each sample sheet (default 8)")
    g.add_argument("--overwrite", action="store_true", help="discard results already in --out")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_checkpoint_args(p, checkpoint=False)


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


def build_benchmarks(args: argparse.Namespace) -> list:
    from .data import load_exclusions, paired_benchmark, unpaired_benchmark

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


def run_evaluate(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    from ..pipeline import StyleVARPipeline, resolve_device
    from .benchmark import EvalSettings, Evaluation, MethodEntry
    from .data import describe
    from .methods import AdaINMethod, ContentCopy, StyleVARMethod
    from .suite import MetricSuite, MetricWeights, parse_metrics

    for flag in ("num_samples", "batch_size", "timing_batch_size"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("timing_samples", "warmup", "sheet_samples"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 0")
    names = parse_metrics(args.metrics)
    models = []
    for item in args.model:
        name, source = _split_named(item, "--model")
        models.append((name or _default_model_name(source), source))
    if not (models or args.adain or args.content_copy):
        raise ConfigError("nothing to evaluate: give --model (repeatable), --adain and/or --content-copy")

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

    # 2. metric models: missing weights fail before any generation
    weights = MetricWeights(
        vgg=args.vgg_weights,
        lpips_backbone=args.lpips_weights,
        dreamsim_dir=args.dreamsim_dir,
        inception=args.inception_weights,
        download=args.download,
    )
    if args.clip_model:
        weights.clip_model = args.clip_model
    suite = MetricSuite(names, weights, device=device)

    # 3. methods: AdaIN's weights (small) first, then the first StyleVAR checkpoint (its resolution is the
    # evaluation's; the others load in turn), then the content copy
    adain = None
    if args.adain:
        from .adain import AdaIN

        adain = AdaIN(args.adain_weights, device=device, download=args.download)
    from ..cli import _checkpoint_kwargs

    ckpt_kwargs = _checkpoint_kwargs(args)  # the same checkpoint options as every subcommand
    default_variant = ckpt_kwargs.pop("variant")
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
        if source.startswith(RELEASED):
            released = source[len(RELEASED) :]
            if released not in ("grpo", "sft"):
                raise ConfigError(f"--model {source}: use released:grpo or released:sft")
            return StyleVARPipeline.from_pretrained(None, variant=released, device=device, **ckpt_kwargs)
        return StyleVARPipeline.from_pretrained(source, variant=default_variant, device=device, **ckpt_kwargs)

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
            return StyleVARMethod(name, pipe, **sampling)

        settings = {"source": source, **{k: v for k, v in sampling.items() if k != "cuda_graphs"}}
        if args.alpha is not None:
            settings["alpha"] = args.alpha
        entries.append(MethodEntry(name, "stylevar", build, settings))
    if args.adain:
        method = AdaINMethod(adain, alpha=args.adain_alpha, preserve_color=args.adain_preserve_color)
        entries.append(MethodEntry(method.name, "adain", lambda m=method: m, method.settings))
    if args.content_copy:
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
    say(f"reports in {ev.out}/: summary.md, summary.csv, summary.json, sheets/")
    return results
