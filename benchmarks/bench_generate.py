"""Latency, peak memory and FLOPs of ``StyleVAR.generate`` for the d20 release configuration.

Random weights (nothing is downloaded), fp32, 256x256. A timed call is what a user waits for per
batch: VQ-VAE tokenisation of style and content, both ResNet-18s, the scale-by-scale sampling
loop and decoding (upstream's eval timed the same span).

    python benchmarks/bench_generate.py                       # CPU, batch 1 and 4
    python benchmarks/bench_generate.py --device cuda --batch-sizes 1 16 64
    python benchmarks/bench_generate.py --legacy              # the published (duplicated) KV cache

Prints a Markdown table (and ``--json PATH`` writes the numbers).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from stylevar.config import d20_configs
from stylevar.models import VQVAE, StyleVAR


def build(device: torch.device) -> tuple[StyleVAR, VQVAE]:
    scfg, vcfg = d20_configs()
    with torch.device("meta"):
        model, vae = StyleVAR(scfg), VQVAE(vcfg)
    model.to_empty(device=device)
    vae.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for m in (model, vae):
            for name, p in m.named_parameters():
                if p.ndim >= 2:
                    p.normal_(0, (1.0 / p[0].numel()) ** 0.5, generator=g)
                elif name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0, 0.02, generator=g)
            for name, b in m.named_buffers():
                if name.endswith("running_var"):
                    b.fill_(1.0)
                elif name.endswith(
                    ("running_mean", "ema_vocab_hit_SV", "zero_k_bias_guide", "zero_k_bias_target")
                ):
                    b.zero_()
                elif name.endswith("num_batches_tracked"):
                    b.zero_()
        for blk in model.blocks:
            blk.attn.scale_mul_1H11.fill_(torch.log(torch.tensor(4.0)).item())
        lvl, mask = StyleVAR._lvl_buffers(scfg.patch_nums)
        model.lvl_1L.copy_(lvl)
        model.attn_bias_for_masking.copy_(mask)
    return model.eval(), vae.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_peak_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def rss_peak_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_once(model, vae, style, content, legacy: bool):
    with torch.no_grad():
        cond = model.conditioning(vae, style, content)
        return model.generate(vae, cond, seed=0, top_k=900, top_p=0.96, legacy_kv_cache=legacy)


def count_flops(model, vae, style, content, legacy: bool) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            cond = model.conditioning(vae, style, content)
        out["conditioning"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            gen = model.generate(
                vae, cond, seed=0, top_k=900, top_p=0.96, legacy_kv_cache=legacy, decode=False
            )
        out["transformer"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            vae.fhat_to_img(gen.f_hat)
        out["decode"] = fc.get_total_flops()
    out["total"] = sum(out.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per batch size (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--legacy", action="store_true", help="time the published duplicated KV cache instead")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    model, vae = build(device)
    build_s = time.perf_counter() - t0
    R = vae.config.resolution
    weights_mib = (
        sum(t.numel() * t.element_size() for m in (model, vae) for t in m.state_dict().values()) / 2**20
    )
    gen = torch.Generator().manual_seed(1)
    img = (torch.rand(max(args.batch_sizes), 3, R, R, generator=gen) * 2 - 1).to(device)

    flops = count_flops(model, vae, img[:1], img[:1], args.legacy)
    rows = []
    for B in args.batch_sizes:
        style, content = img[:B], img[:B].flip(0)
        for _ in range(args.warmup):
            run_once(model, vae, style, content, args.legacy)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss_peak_reset()
        times = []
        for _ in range(args.runs):
            sync(device)
            t = time.perf_counter()
            out = run_once(model, vae, style, content, args.legacy)
            sync(device)
            times.append(time.perf_counter() - t)
        assert torch.isfinite(out.images).all()
        med = statistics.median(times)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss_peak_mib()
        rows.append(
            {
                "batch": B,
                "median_s_per_batch": med,
                "s_per_sample": med / B,
                "images_per_s": B / med,
                "achieved_gflops": flops["total"] * B / med / 1e9,
                "peak_mib": peak,
                "times_s": times,
            }
        )

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    cores = torch.get_num_threads()
    print(
        f"\nStyleVAR d20 + VQ-VAE ch160, fp32, {R}x{R}, random weights, cache={'legacy' if args.legacy else 'correct'}"
    )
    print(
        f"device: {device} ({dev_name}), torch {torch.__version__}, CPU threads {cores}; build {build_s:.1f} s"
    )
    print(f"weights: {weights_mib:.0f} MiB (fp32)")
    g = {k: v / 1e9 for k, v in flops.items()}
    print(
        f"FLOPs per sample: {g['total']:.0f} GFLOP (conditioning {g['conditioning']:.0f}: VQ-VAE encode x2 + ResNet-18 x2; "
        f"transformer {g['transformer']:.0f}; decode {g['decode']:.0f})\n"
    )
    mem = "peak GPU alloc (MiB)" if device.type == "cuda" else "peak RSS (MiB)"
    print(f"| batch | s / batch (median of {args.runs}) | s / sample | images / s | GFLOP/s | {mem} |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "n/a"
        print(
            f"| {r['batch']} | {r['median_s_per_batch']:.3f} | {r['s_per_sample']:.3f} | {r['images_per_s']:.2f} | "
            f"{r['achieved_gflops']:.0f} | {peak} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": str(device),
                    "device_name": dev_name,
                    "torch": torch.__version__,
                    "threads": cores,
                    "legacy_kv_cache": args.legacy,
                    "weights_mib": weights_mib,
                    "gflop_per_sample": g,
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
