"""Flicker of stylized video: independent frames against the VAR-native consistent mode (--keep-scales).

    python benchmarks/bench_video_flicker.py --checkpoint demo/sft/final --style demo/data/heldout/style/s00000.png
    python benchmarks/bench_video_flicker.py            # the tests' tiny random model (plumbing only)

A generated clip (the demo's synthetic world: shapes on a light sheet; one shape moves across, the others
stay), written losslessly and with H.264 at CRF 23 (compression noise, as in real videos), is stylized with
every frame's seed different (naive), every frame's seed the same (keep 0) and keep-scales 1..K. Printed
per mode: flicker = mean |out_t - out_{t-1}| / mean |in_t - in_{t-1}| (1: the output changes as much as
the input; above 1: it flickers), the same on the static pixels only (where the input does not change, any
change is flicker), and the share of kept tokens. ``--gif PATH`` writes input | keep 0 | best keep side by
side (the README's example clip).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def make_clip(path: Path, *, frames: int, size: int, rate: int, crf: int, seed: int = 0) -> list[np.ndarray]:
    """A clip of the demo's synthetic world: static shapes and one disc moving left to right."""
    import av

    from stylevar.data.synthetic import random_content

    base, _ = random_content(random.Random(f"flicker/{seed}"), size)
    base = (base * 255).astype(np.uint8)
    out = []
    with av.open(str(path), "w") as oc:
        vs = oc.add_stream("libx264", rate=rate)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv444p"
        vs.options = {"crf": str(crf)}
        for i in range(frames):
            img = Image.fromarray(base.copy())
            x = int(size * 0.1 + i * size * 0.8 / max(1, frames - 1))
            r = size // 8
            ImageDraw.Draw(img).ellipse((x - r, size // 2 - r, x + r, size // 2 + r), fill=(40, 40, 160))
            frame = av.VideoFrame.from_image(img)
            frame.pts = i
            for p in vs.encode(frame):
                oc.mux(p)
        for p in vs.encode():
            oc.mux(p)
    from stylevar.stylize.video import read_frames

    for _, f in read_frames(path):
        out.append(np.asarray(f, dtype=np.float32) / 255)
    return out


def measure(
    pipe, clip: Path, style: str, out_dir: Path, *, keep: int, same_seed: bool, top_k: int, batch: int,
    criterion: str = "pixels", threshold: float = 0.02,
):  # fmt: skip
    from stylevar.stylize.video import stylize_video

    got: list[np.ndarray] = []

    def collect(_inputs, outputs):
        got.extend(np.asarray(o, dtype=np.float32) / 255 for o in outputs)

    if same_seed:
        r = stylize_video(
            pipe, clip, style, out_dir / f"keep{keep}.mp4", keep_scales=keep, seed=0, top_k=top_k,
            top_p=0.0, batch_size=batch, on_frames=collect, crf=0, keep_criterion=criterion,
            change_threshold=threshold,
        )  # fmt: skip
        return got, r.kept_tokens
    # naive: each frame its own seed (frame by frame, the way peers stylize video)
    from stylevar.stylize.video import read_frames

    for i, (_, f) in enumerate(read_frames(clip)):
        got.append(np.asarray(pipe(f, style, seed=i, top_k=top_k, top_p=0.0, fit="squash",
                                   keep_size=True)[0], dtype=np.float32) / 255)  # fmt: skip
    return got, 0.0


def scores(inp: list[np.ndarray], out: list[np.ndarray]) -> dict[str, float]:
    d_in = [np.abs(b - a) for a, b in zip(inp, inp[1:])]
    d_out = [np.abs(b - a) for a, b in zip(out, out[1:])]
    static = [(di.max(-1, keepdims=True) < 2 / 255) for di in d_in]
    flick = float(np.mean([d.mean() for d in d_out]) / np.mean([d.mean() for d in d_in]))
    still = float(np.mean([(do * s).sum() / max(1, s.sum() * 3) for do, s in zip(d_out, static)]))
    return {"flicker_ratio": flick, "static_change": still}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint", default=None, help="a StyleVAR checkpoint (default: the tests' tiny model)"
    )
    ap.add_argument("--style", default=None, help="the style image (default: a generated one)")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=0, help="0: plain sampling (where flicker shows)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gif", default=None, help="write input | keep 0 | best keep side by side here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from stylevar.stylize.pipeline import StyleVARPipeline

    torch.set_num_threads(torch.get_num_threads())
    if args.checkpoint:
        pipe = StyleVARPipeline.from_pretrained(args.checkpoint)
    else:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from helpers import tiny_models

        pipe = StyleVARPipeline(*tiny_models())
    tmp = Path(tempfile.mkdtemp(prefix="flicker-"))
    style = args.style
    if style is None:
        from stylevar.data.synthetic import synthetic_triplet

        style = str(tmp / "style.png")
        synthetic_triplet(0, 3, seed=5, size=64).style.save(style)
    rows = []
    best_frames = None
    for crf in (0, 23):
        clip = tmp / f"clip_crf{crf}.mp4"
        inp = make_clip(clip, frames=args.frames, size=args.size, rate=12, crf=crf)
        S = len(pipe.model.patch_nums)
        modes = [("naive: a seed per frame", 0, False, "pixels", 0.02)]
        modes += [("same seed, independent frames (keep 0)", 0, True, "pixels", 0.02)]
        modes += [(f"keep all {S} scales where the content's tokens are unchanged", S, True, "tokens", 0.02)]
        modes += [(f"keep {k} scales where the content's pixels moved < 0.02", k, True, "pixels", 0.02)
                  for k in sorted({2, 4, S})]  # fmt: skip
        modes += [(f"keep all {S} scales where the content's pixels moved < 0.05", S, True, "pixels", 0.05)]
        for name, k, same, crit, th in modes:
            t = time.perf_counter()
            out, kept = measure(pipe, clip, style, tmp, keep=k, same_seed=same, top_k=args.top_k,
                                batch=args.batch, criterion=crit, threshold=th)  # fmt: skip
            row = {"clip": f"crf {crf}", "mode": name, **scores(inp, out), "kept_tokens": kept,
                   "seconds": time.perf_counter() - t}  # fmt: skip
            rows.append(row)
            print(json.dumps(row))
            if crf == 0 and k == 0 and same:
                keep0 = out
            if crf == 0 and k == S and crit == "pixels" and th == 0.02:  # the default
                best_frames = (inp, keep0, out)
    print()
    print("| clip | mode | flicker (out/in) | change on static pixels | tokens kept |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clip']} | {r['mode']} | {r['flicker_ratio']:.2f} | {r['static_change']:.4f} | "
              f"{r['kept_tokens']:.0%} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.gif and best_frames is not None:
        inp, a, b = best_frames
        scale = max(1, 96 // args.size)
        frames = []
        for x, y, z in zip(inp, a, b):
            strip = np.concatenate([x, np.ones_like(x[:, :2]), y, np.ones_like(x[:, :2]), z], axis=1)
            im = Image.fromarray((strip * 255).round().astype(np.uint8))
            frames.append(im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST))
        frames[0].save(args.gif, save_all=True, append_images=frames[1:], duration=83, loop=0)
        print(f"wrote {args.gif}")


if __name__ == "__main__":
    main()
