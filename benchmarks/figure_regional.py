"""The README's regional-style figure: content | style A | style B | mask | A | B | A with B inside the mask.

    stylevar demo -o demo            # a model trained here (32 px synthetic shapes)
    python benchmarks/figure_regional.py demo/sft/final demo/data/heldout -o docs/regional.png

Rows: held-out pairs of the demo's data (content i with style i as A and style i+1 as B); the mask keeps B
in the left half. Sampling: top-k 1 (the demo's scoring setting), seed 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from stylevar.images import label_font, load_image, tensor_to_pil, to_model_input
from stylevar.stylize.pipeline import StyleVARPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument(
        "heldout", help="a folder with content/ and style/ sub-folders (the demo's held-out data)"
    )
    ap.add_argument("-o", "--out", default="docs/regional.png")
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--cell", type=int, default=96, help="pixels per cell (nearest-neighbour upscale)")
    ap.add_argument("--measure", type=int, default=16, help="held-out pairs for the routing measure")
    args = ap.parse_args()

    pipe = StyleVARPipeline.from_pretrained(args.checkpoint)
    R = pipe.resolution
    contents = sorted((Path(args.heldout) / "content").glob("*.png"))
    styles = sorted((Path(args.heldout) / "style").glob("*.png"))
    mask = Image.new("L", (R, R), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, R // 2 - 1, R - 1), fill=255)
    cols = ["content", "style A", "style B", "mask (B)", "A", "B", "A + B in mask"]
    cell, pad, head = args.cell, 4, 22
    sheet = Image.new("RGB", (len(cols) * (cell + pad) + pad, head + args.rows * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = label_font(13)
    for j, name in enumerate(cols):
        draw.text((pad + j * (cell + pad), 4), name, fill="black", font=font)
    kw = dict(seed=0, top_k=1, top_p=0.0, fit="squash")
    for i in range(args.rows):
        c, a, b = contents[i], styles[i % len(styles)], styles[(i + 1) % len(styles)]
        only_a = pipe(c, a, **kw)[0]
        only_b = pipe(c, b, **kw)[0]
        both = pipe(c, a, regions=[(mask, b)], **kw)[0]
        shown = [tensor_to_pil(to_model_input(load_image(p), R, "squash").add(1).mul(0.5)) for p in (c, a, b)]
        cells = [*shown, mask.convert("RGB"), only_a, only_b, both]
        for j, im in enumerate(cells):
            x, y = pad + j * (cell + pad), head + i * (cell + pad)
            sheet.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
            draw.rectangle((x - 1, y - 1, x + cell, y + cell), outline=(150, 150, 150))  # white masks show
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")
    # the routing, measured: inside the mask the result should be near B's image, outside near A's
    d = {("left", "A"): [], ("left", "B"): [], ("right", "A"): [], ("right", "B"): []}
    pt = dict(kw, output_type="pt")
    for i in range(min(args.measure, len(contents))):
        c, a, b = contents[i], styles[i % len(styles)], styles[(i + 1) % len(styles)]
        ref = {"A": pipe(c, a, **pt)[0], "B": pipe(c, b, **pt)[0]}
        both = pipe(c, a, regions=[(mask, b)], **pt)[0]
        for side, cols_ in (("left", slice(0, R // 2)), ("right", slice(R // 2, R))):
            for k in ("A", "B"):
                d[(side, k)].append(float((both[:, :, cols_] - ref[k][:, :, cols_]).abs().mean()))
    n = len(d[("left", "A")])
    for side in ("left", "right"):
        a_, b_ = (sum(d[(side, k)]) / n for k in ("A", "B"))
        print(
            f"{side} half ({'B' if side == 'left' else 'A'} asked), mean |result - A| {a_:.3f}, |result - B| {b_:.3f} (n={n})"
        )


if __name__ == "__main__":
    main()
