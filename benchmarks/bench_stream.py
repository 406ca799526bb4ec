"""Peak memory and throughput of ``stylevar stylize`` over folders of many large contents.

Does memory stay flat as the number of inputs grows? Each measurement is one fresh
``stylevar stylize CONTENTS/ STYLE -o OUT`` process (its peak RSS from ``getrusage``), on folders of
40, 400 and 4000 contents of 1024x1024 px (JPEG; 40 distinct pictures, the rest hard links to them
under other names: every path is read and decoded, as distinct files would be) and one style.

    python benchmarks/bench_stream.py                            # tiny random model, 40/400/4000
    python benchmarks/bench_stream.py --keep-size                # full-size outputs (contents kept per window)
    python benchmarks/bench_stream.py --model d20 --counts 4 16  # the release configuration (slow on CPU)
    python benchmarks/bench_stream.py --src /tmp/old/src         # another checkout, e.g. before streaming
    python benchmarks/bench_stream.py --ray-workers 2 --counts 400  # through --ray (a local Ray instance)

Prints a Markdown table; ``--json PATH`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUNNER = r"""
import resource, sys, time
sys.argv = ["stylevar"] + sys.argv[1:]
from stylevar.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
wall = time.perf_counter() - t
print("BENCH", code, wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)
"""


def make_model(kind: str, out: Path, src: str | None) -> Path:
    """A random-weight checkpoint of ``kind`` (tiny or d20) in our format."""
    code = f"""
import sys, torch
from stylevar.config import StyleVARConfig, VQVAEConfig, d20_configs
from stylevar.io import save_pretrained
from stylevar.models import VQVAE, StyleVAR
torch.manual_seed(0)
if {kind!r} == "d20":
    scfg, vcfg = d20_configs()
else:
    pn = (1, 2, 3, 4, 6, 8)
    vcfg = VQVAEConfig(vocab_size=512, z_channels=8, ch=32, patch_nums=pn)
    scfg = StyleVARConfig(depth=4, embed_dim=128, num_heads=4, vocab_size=512, z_channels=8, patch_nums=pn,
                          style_enc_dim=64)
model, vae = StyleVAR(scfg), VQVAE(vcfg)
model.init_weights()
save_pretrained({str(out)!r}, model.eval(), vae.eval())
"""
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(src))
    return out


def _env(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def make_inputs(root: Path, count: int, side: int, distinct: int = 40) -> tuple[Path, Path]:
    """``root/contents_<count>/`` (``count`` JPEGs of side x side) and ``root/style.jpg``."""
    from PIL import Image

    base = root / "distinct"
    if not base.exists():
        base.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(distinct):
            small = rng.random((side // 64, side // 64, 3))
            img = Image.fromarray((small * 255).astype(np.uint8)).resize(
                (side, side), Image.Resampling.BICUBIC
            )
            noise = rng.normal(0, 12, (side, side, 3))
            a = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(a).save(base / f"p{i:03d}.jpg", quality=90)
        Image.open(base / "p000.jpg").rotate(90).save(root / "style.jpg", quality=90)
    folder = root / f"contents_{count}"
    if not folder.exists():
        folder.mkdir()
        for i in range(count):
            os.link(base / f"p{i % distinct:03d}.jpg", folder / f"img{i:05d}.jpg")
    return folder, root / "style.jpg"


def measure(folder: Path, style: Path, ckpt: Path, out: Path, args, src: str | None) -> dict:
    cmd = [sys.executable, "-c", RUNNER, "stylize", str(folder), str(style), "-o", str(out),
           "--checkpoint", str(ckpt), "--device", "cpu", "--seed", "0", "-q",
           "--batch-size", str(args.batch_size)]  # fmt: skip
    if args.keep_size:
        cmd.append("--keep-size")
    if args.ray_workers:
        cmd += ["--ray", "--ray-workers", str(args.ray_workers)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(src))
    line = next((x for x in r.stdout.splitlines() if x.startswith("BENCH")), None)
    if line is None:
        raise SystemExit(f"stylize failed:\n{r.stderr[-2000:]}")
    _, code, wall, rss = line.split()
    n = len(list(out.glob("*.png")))
    return {"exit": int(code), "wall_s": float(wall), "peak_rss_gb": int(rss) / 1e9, "images": n,
            "images_per_s": n / float(wall)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[40, 400, 4000])
    p.add_argument("--side", type=int, default=1024, help="content size in pixels (default 1024)")
    p.add_argument("--model", choices=("tiny", "d20"), default="tiny")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--keep-size", action="store_true")
    p.add_argument(
        "--ray-workers",
        type=int,
        default=0,
        help="run with --ray and this many workers (a local Ray instance)",
    )
    p.add_argument(
        "--src", default=None, help="put this source folder first on PYTHONPATH (another checkout)"
    )
    p.add_argument("--work", default=None, help="folder for the inputs and outputs (default: a temp folder)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_stream_"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"model_{args.model}"
    if not ckpt.exists():
        make_model(args.model, ckpt, args.src)
    rows = []
    for n in args.counts:
        folder, style = make_inputs(work, n, args.side)
        out = work / f"out_{n}_{int(time.time())}"
        r = measure(folder, style, ckpt, out, args, args.src)
        rows.append({"contents": n, **r})
        print(f"{n} contents: {r}", file=sys.stderr, flush=True)
        for f in out.glob("*"):
            f.unlink()
        out.rmdir()
    base = rows[0]["peak_rss_gb"]
    print(f"\n{args.model} model, {args.side}x{args.side} JPEG contents, batch {args.batch_size}"
          f"{', --keep-size' if args.keep_size else ''}{f', Ray x {args.ray_workers}' if args.ray_workers else ''}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; source: {args.src or 'this checkout'}\n")  # fmt: skip
    print("| contents | peak RSS (GB) | x the first | images/s | wall (s) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['contents']} | {r['peak_rss_gb']:.2f} | {r['peak_rss_gb'] / base:.2f} | "
              f"{r['images_per_s']:.1f} | {r['wall_s']:.0f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
