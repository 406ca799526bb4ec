"""What bf16 (and int8) on the CPU change against fp32: VQ token flips, logits, and a demo model's SSIM.

docs/speed.md ("bf16 on the CPU") reports these numbers.

* ``vq``: the VQ-VAE encoder in bf16 (channels-last, as ``--dtype bf16`` stores it) against fp32: the share
  of token indices that flip per scale, how far the features, the per-scale condition features and the
  final f_hat move, and the decoded images. On the released architecture (d20's ch160 VQ-VAE, random
  weights as ``bench_generate.py`` draws them; 11 photographs from scikit-image and examples/, 256 px) and,
  with ``--demo DIR``, on a trained demo tokenizer (fresh synthetic pairs and the same photographs).
* ``logits``: teacher-forced logits of d20 (random weights), bf16 weights and bf16 autocast against fp32.
* ``demo``: a demo model's SSIM against the target, fp32 against bf16 and the int8 variants, on its 64
  held-out pairs and on ``-n`` fresh pairs (data seed 1000), with the demo's own sampling (top-k 1).

    python benchmarks/bench_bf16_quality.py vq                       # d20 architecture, random weights
    python benchmarks/bench_bf16_quality.py vq --vae vae_ch160v4096z32.pth   # the released tokenizer
    python benchmarks/bench_bf16_quality.py vq --demo demo/          # + a demo's trained tokenizer
    python benchmarks/bench_bf16_quality.py logits
    python benchmarks/bench_bf16_quality.py demo --demo demo/ -n 512
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_demo_fresh import fresh_pairs  # noqa: E402
from bench_generate import build  # noqa: E402

import stylevar.models.quantized as quantized  # noqa: E402
from stylevar.config import Sampling  # noqa: E402
from stylevar.images import to_model_input  # noqa: E402
from stylevar.io import load_pretrained  # noqa: E402
from stylevar.models.quantized import bf16_convs_, to_bf16_  # noqa: E402
from stylevar.perceptual import ssim  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")


def photos(resolution: int) -> torch.Tensor:
    """scikit-image's colour photographs and examples/*.jpg, centre-cropped: (N, 3, R, R) in [-1, 1]."""
    import skimage.data
    from PIL import Image

    images = [Image.fromarray(getattr(skimage.data, name)()) for name in SKIMAGE]
    images += [Image.open(p).convert("RGB") for p in sorted((REPO / "examples").glob("*.jpg"))]
    return torch.stack([to_model_input(im, resolution, "crop") for im in images])


def pct(values) -> str:
    return " / ".join(f"{100 * v:.1f}" for v in values) + " %"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def vq_flips(vae, images: torch.Tensor, label: str, batch: int = 64) -> None:
    b16 = copy.deepcopy(vae)
    bf16_convs_(b16.encoder)
    rows = {k: [] for k in ("f32", "f16")}
    for j in range(0, len(images), batch):
        rows["f32"].append(vae.encode_f(images[j : j + batch]))
        rows["f16"].append(b16.encode_f(images[j : j + batch]))
    f32, f16 = torch.cat(rows["f32"]), torch.cat(rows["f16"])
    q = vae.quantize
    i32, i16 = q.f_to_idx(f32), q.f_to_idx(f16)
    h32, h16 = q.idx_to_fhat(i32), q.idx_to_fhat(i16)
    x32, x16 = vae.fhat_to_img(h32), vae.fhat_to_img(h16)
    flips = [(a != b).float().mean().item() for a, b in zip(i32, i16)]
    every = sum((a != b).sum().item() for a, b in zip(i32, i16)) / sum(a.numel() for a in i32)
    print(f"{label}, {len(images)} images")
    print(f"  indices flipped per scale: {pct(flips)}; all tokens {100 * every:.2f} %")
    print(
        f"  relative change: encoder features {rel(f16, f32):.4f}, condition features "
        f"{rel(q.idx_to_condition(i16), q.idx_to_condition(i32)):.4f}, final f_hat {rel(h16, h32):.4f} "
        f"(fp32's own quantisation error |f - f_hat| / |f|: {rel(h32, f32):.4f})"
    )
    levels = 127.5  # [-1, 1] -> levels of 255
    print(
        f"  decoded (fp32 decoder) from bf16's tokens vs fp32's: mean |diff| {(x16 - x32).abs().mean() * levels:.2f} "
        f"levels; error against the input: fp32 {(x32 - images).abs().mean() * levels:.2f}, bf16 "
        f"{(x16 - images).abs().mean() * levels:.2f}"
    )


def run_vq(args) -> None:
    if args.vae:  # the released tokenizer (vae_ch160v4096z32.pth) or any other: stylevar.io.load_vqvae
        from stylevar.io.vqvae import load_vqvae

        vae = load_vqvae(args.vae)
        label = f"{args.vae}, photographs at {vae.config.resolution} px"
    else:
        _, vae = build(torch.device("cpu"))
        label = "d20 VQ-VAE (ch160), random weights, photographs at 256 px"
    vq_flips(vae, photos(vae.config.resolution), label)
    if args.demo:
        cfg, _, dvae = demo_models(Path(args.demo))
        pairs = fresh_pairs(256, cfg["size"], cfg["period"], 1000)
        images = torch.cat([pairs["content"], pairs["style"], pairs["target"]])
        name = f"{args.demo} tokenizer ({cfg['tokenizer_steps']} steps)"
        vq_flips(dvae, images, f"{name}, 256 fresh synthetic triplets")
        vq_flips(dvae, photos(cfg["size"]), f"{name}, photographs at {cfg['size']} px")


@torch.no_grad()
def run_logits(args) -> None:
    model, vae = build(torch.device("cpu"))
    images = photos(vae.config.resolution)
    cond = model.conditioning(vae, images[0:1], images[1:2])
    x = vae.quantize.idx_to_teacher_input(vae.img_to_idx(images[2:3]))  # a photograph's tokens as the target
    ref = model(x, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = model(x, cond)
    to_bf16_(model, vae)
    got = model(x, cond)
    top = ref.abs().max().item()
    print("d20, random weights, teacher-forced logits of one pair (680 tokens) against fp32:")
    for name, t in (("bf16 weights", got), ("bf16 autocast", amp)):
        agree = (t.argmax(-1) == ref.argmax(-1)).float().mean().item()
        print(
            f"  {name}: max |diff| / max |fp32| {(t - ref).abs().max().item() / top:.4f}, mean "
            f"{(t - ref).abs().mean().item() / top:.5f}, argmax agreement {100 * agree:.1f} %"
        )


def demo_models(folder: Path):
    cfg = json.loads((folder / "metrics.json").read_text())["config"]
    ckpt = load_pretrained(folder / "sft" / "final")
    return cfg, ckpt.model.eval(), ckpt.vae.eval()


def variant(model, vae, name: str):
    """(model, vae, dtype) of a way of computing, as the pipeline prepares it."""
    m, v = copy.deepcopy(model), copy.deepcopy(vae)
    if name == "fp32":
        return m, v, "fp32"
    if name == "bf16":
        to_bf16_(m, v)
        return m, v, "bf16"
    engine = "fbgemm" if "fbgemm" in name else "onednn"
    _quantize_with(m, engine)
    if "convolutions" in name:
        quantized.bf16_decoder_convs_(v)
        quantized.bf16_encoders_(m, v)
    return m, v, "int8"


def _quantize_with(model, engine: str) -> None:
    default = quantized.int8_engine
    quantized.int8_engine = lambda: engine
    try:
        quantized.quantize_int8_(model)
    finally:
        quantized.int8_engine = default


@torch.no_grad()
def run_demo(args) -> None:
    from stylevar.data import TripletDataset, TripletTransform, scan

    folder = Path(args.demo)
    cfg, model, vae = demo_models(folder)
    held = TripletDataset(scan(folder / "data" / "heldout"), TripletTransform(resolution=cfg["size"]))
    sets = {
        f"{len(held)} held-out": {
            k: torch.stack([held[i][k] for i in range(len(held))]) for k in ("content", "style", "target")
        },
        f"{args.n} fresh": fresh_pairs(args.n, cfg["size"], cfg["period"], 1000),
    }
    filters = {"top_k": cfg["top_k"], "top_p": cfg["top_p"], "temperature": cfg["temperature"]}
    print(f"{folder}: tokenizer {cfg['tokenizer_steps']} steps, SFT {cfg['sft_steps']} steps; {filters}")
    base: dict[str, torch.Tensor] = {}
    names = ["fp32", "bf16", "int8 fbgemm", "int8 onednn", "int8 onednn + bf16 convolutions"]
    for name in names:
        m, v, dtype = variant(model, vae, name)
        cells = []
        for label, pairs in sets.items():
            n, out = len(pairs["content"]), []
            for j in range(0, n, 128):
                cond = m.conditioning(v, pairs["style"][j : j + 128], pairs["content"][j : j + 128])
                seeds = [cfg["seed"] + i for i in range(j, min(n, j + 128))]
                out.append(m.generate(v, cond, Sampling(**filters, dtype=dtype), seed=seeds).images)
            s = ssim(torch.cat(out), pairs["target"].add(1).mul(0.5))
            base.setdefault(label, s)
            d = s - base[label]
            cells.append(f"{label}: SSIM {s.mean():.4f} ({d.mean():+.4f} +- {d.std() / n**0.5:.4f})")
        print(f"  {name:32s} " + "; ".join(cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("vq", "logits", "demo"))
    ap.add_argument("--demo", default=None, help="a folder written by `stylevar demo`")
    ap.add_argument("--vae", default=None, help="vq: a trained VQ-VAE instead of d20's random weights")
    ap.add_argument("-n", type=int, default=512, help="fresh pairs for `demo`")
    args = ap.parse_args()
    if args.what == "demo" and not args.demo:
        ap.error("demo needs --demo DIR")
    {"vq": run_vq, "logits": run_logits, "demo": run_demo}[args.what](args)


if __name__ == "__main__":
    main()
