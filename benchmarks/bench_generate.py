"""Latency, throughput, peak memory and FLOPs of stylization with the d20 release configuration,
against the machine's floor and against the straightforward (published) computation.

Random weights (nothing is downloaded), 256x256. A timed call is what a user waits for per
batch: VQ-VAE tokenisation of style and content, both ResNet-18s, the scale-by-scale sampling
loop and decoding (upstream's eval timed the same span).

* **ours**: ``StyleVAR.generate`` (fused blocks, correct KV cache);
* **straightforward**: :func:`stylevar.models.reference.reference_generate`, the published
  computation (full QKV of both streams twice per block, two output projections, every key
  cached twice) -- what the legacy-compatible sampler costs when written the obvious way;
* **floor**: FLOPs per sample of our path / the machine's measured matmul rate (the best of a few
  large GEMMs in the benchmark's dtype), i.e. the time if every FLOP ran at GEMM speed.

    python benchmarks/bench_generate.py                                  # CPU, batch 1 and 4
    python benchmarks/bench_generate.py --device cuda --dtype bf16 --batch-sizes 1 64 256
    python benchmarks/bench_generate.py --paths ours                     # skip the slow reference
    python benchmarks/bench_generate.py --paths ours --dtypes fp32 int8 --batch-sizes 1   # int8 vs fp32
    python benchmarks/bench_generate.py --paths ours --dtypes fp32 bf16 int8 --batch-sizes 1 --runs 3

Per dtype, a per-phase table of one batch-1 call of ours: conditioning (VQ-VAE tokenisation of both
images and both ResNet-18s), each scale's pass (its 20 blocks and the head, sampling, and the
quantizer's input for the next scale), decoding; milliseconds, GFLOP (counted in fp32: int8's products
are the same arithmetic) and achieved GFLOP/s. int8, and bf16 on the CPU, convert the model in place as
the pipeline does (``StyleVARPipeline.prepare_dtype``), so they run after fp32 and a model converted by
one is built again (the same draw) for the next; ``auto`` is resolved for the device first.

Prints Markdown tables (and ``--json PATH`` writes the numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from stylevar._malloc import release_memory_promptly
from stylevar.config import Sampling, d20_configs
from stylevar.devices import bf16_convolutions_, cpu_name, decode_dtype, resolve_dtype
from stylevar.models import VQVAE, StyleVAR
from stylevar.models.ops import autocast_to, parse_dtype
from stylevar.models.reference import reference_generate


def build(device: torch.device, size: str = "d20") -> tuple[StyleVAR, VQVAE]:
    if size == "tiny":  # the plumbing only (gpu_check.sh --smoke): a 64-px, depth-2 model
        from stylevar.config import StyleVARConfig, VQVAEConfig

        pns = (1, 2, 3, 4)
        vcfg = VQVAEConfig(vocab_size=64, z_channels=4, ch=32, share_quant_resi=4, patch_nums=pns)
        scfg = StyleVARConfig(depth=2, embed_dim=64, num_heads=2, vocab_size=64, z_channels=4,
                              patch_nums=pns, style_enc_dim=64)  # fmt: skip
    else:
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


def matmul_rate(device: torch.device, dtype: torch.dtype, seconds: float = 3.0) -> float:
    """The machine's GEMM rate in FLOP/s: the best of a few large square products in ``dtype``.

    Sizes grow only while one product fits the time budget: a dtype the hardware lacks (bf16 on a CPU
    without AVX512-BF16/AMX runs ~50x slower than fp32) would otherwise spend minutes on one 4096 product."""
    best = 0.0
    for n in (1024, 2048, 4096):
        if best and 2 * n**3 / best > seconds / 3:  # one product of this size would overrun the budget
            break
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        sync(device)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            reps += 1
            sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def phases(model, vae, style, content, dtype, flops_only: bool = False) -> list[dict]:
    """One call of ours split into phases: wall time and counted FLOPs of each (see the module doc)."""
    from torch.utils.flop_counter import FlopCounterMode

    rows: list[dict] = []
    ctx = FlopCounterMode(display=False) if flops_only else None
    marks: list[tuple[float, float]] = []

    def now() -> tuple[float, float]:
        sync(style.device)
        return time.perf_counter(), (ctx.get_total_flops() if ctx is not None else 0.0)

    def hook(si, tokens):
        marks.append(now())
        return tokens

    with torch.no_grad(), ctx if ctx is not None else contextlib.nullcontext():
        t0 = now()
        cond = model.conditioning(vae, style, content)
        t1 = now()
        rows.append({"phase": "conditioning", "s": t1[0] - t0[0], "flop": t1[1] - t0[1]})
        gen = model.generate(vae, cond, Sampling.plain(top_k=900, top_p=0.96, dtype=dtype), seed=0, decode=False, token_hook=hook)  # fmt: skip
        prev = t1
        for si, m in enumerate(marks):
            pn = model.patch_nums[si]
            rows.append({"phase": f"scale {si + 1} ({pn}x{pn})", "s": m[0] - prev[0], "flop": m[1] - prev[1]})
            prev = m
        with autocast_to(style.device, decode_dtype(model, style.device) or dtype):
            vae.fhat_to_img(gen.f_hat)
        t2 = now()
        rows.append({"phase": "decode", "s": t2[0] - prev[0], "flop": t2[1] - prev[1]})
    return rows


def run_once(model, vae, style, content, path: str, dtype, cuda_graphs: bool = False):
    with torch.no_grad():
        cond = model.conditioning(vae, style, content)
        if path == "ours":
            return model.generate(vae, cond, Sampling.plain(top_k=900, top_p=0.96, dtype=dtype, cuda_graphs=cuda_graphs), seed=0, decode_dtype=decode_dtype(model, style.device))  # fmt: skip
        with autocast_to(style.device, dtype):
            return reference_generate(model, vae, cond, seed=0, top_k=900, top_p=0.96, legacy_kv_cache=True)


def count_flops(model, vae, style, content, path: str) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            cond = model.conditioning(vae, style, content)
        out["conditioning"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            if path == "ours":
                gen = model.generate(vae, cond, Sampling.plain(top_k=900, top_p=0.96), seed=0, decode=False)
            else:
                gen = reference_generate(model, vae, cond, seed=0, top_k=900, top_p=0.96, decode=False)
        out["transformer"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            vae.fhat_to_img(gen.f_hat)
        out["decode"] = fc.get_total_flops()
    out["total"] = sum(out.values())
    return out


def measure(model, vae, img, B, path, dtype, device, runs, warmup, cuda_graphs=False) -> dict:
    style, content = img[:B], img[:B].flip(0)
    for _ in range(warmup):
        run_once(model, vae, style, content, path, dtype, cuda_graphs)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_peak_reset()
    times = []
    for _ in range(runs):
        sync(device)
        t = time.perf_counter()
        out = run_once(model, vae, style, content, path, dtype, cuda_graphs)
        sync(device)
        times.append(time.perf_counter() - t)
    assert torch.isfinite(out.images).all()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss_peak_mib()
    med = statistics.median(times)
    return {
        "path": path,
        "batch": B,
        "median_s_per_batch": med,
        "s_per_sample": med / B,
        "images_per_s": B / med,
        "peak_mib": peak,
        "times_s": times,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    dtype_names = ["fp32", "bf16", "fp16", "int8", "auto"]
    ap.add_argument("--dtype", default=None, choices=dtype_names, help="one dtype")
    ap.add_argument(
        "--dtypes", nargs="+", default=None, choices=dtype_names,
        help="several dtypes in one run (int8 last: it quantizes the model in place)",
    )  # fmt: skip
    ap.add_argument("--no-phases", action="store_true", help="skip the per-phase tables")
    ap.add_argument("--model", choices=("d20", "tiny"), default="d20", help="tiny: plumbing checks only")
    ap.add_argument("--matmul-seconds", type=float, default=3.0, help="time spent measuring the GEMM rate")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    ap.add_argument(
        "--paths", nargs="+", default=["ours", "straightforward"], choices=["ours", "straightforward"]
    )
    ap.add_argument("--runs", type=int, default=3, help="timed runs per configuration (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--cuda-graphs", action="store_true", help="ours: replay each scale as a CUDA graph")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    malloc_fixed = release_memory_promptly()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = [resolve_dtype(d, device) for d in args.dtypes or [args.dtype or "fp32"]]
    in_place = {"int8": 2, "bf16": 1 if device.type == "cpu" else 0}  # converted in place: after fp32
    dtypes = sorted(dict.fromkeys(dtypes), key=lambda d: in_place.get(d, 0))
    mm_dtype = parse_dtype(dtypes[0] if dtypes[0] != "int8" else "fp32") or torch.float32
    t0 = time.perf_counter()
    model, vae = build(device, args.model)
    build_s = time.perf_counter() - t0
    R = vae.config.resolution
    weights_mib = (
        sum(t.numel() * t.element_size() for m in (model, vae) for t in m.state_dict().values()) / 2**20
    )
    baseline_rss = rss_peak_mib() if device.type == "cpu" else None
    rate = matmul_rate(device, mm_dtype, args.matmul_seconds)
    gen = torch.Generator().manual_seed(1)
    img = (torch.rand(max(args.batch_sizes), 3, R, R, generator=gen) * 2 - 1).to(device)
    flops = {p: count_flops(model, vae, img[:1], img[:1], p) for p in args.paths}
    phase_flops = (
        None if args.no_phases else phases(model, vae, img[:1], img[:1].flip(0), None, flops_only=True)
    )
    rows = []
    phase_rows: dict[str, list[dict]] = {}
    for dname in dtypes:
        dtype = None
        if model.int8 or model.bf16:  # converted in place by the last dtype: the same weights again
            del model, vae
            model, vae = build(device, args.model)
        if dname == "bf16" and device.type == "cpu":
            from stylevar.models.quantized import run_dtype

            run_dtype(model, device, "bf16", vae=vae)  # as the pipeline does: weights in bf16 once
        if dname == "int8":
            from stylevar.models.quantized import quantize_int8_

            released = quantize_int8_(model)
            if bf16_convolutions_(vae, model, device):  # as the pipeline does for int8 on an AMX CPU
                bf16 = [p for m in (model, vae) for p in m.parameters() if p.dtype == torch.bfloat16]
                released += sum(p.numel() * 2 for p in bf16)
            print(f"  int8: {released / 2**20:.0f} MiB of fp32 weights released", flush=True)
        else:
            dtype = parse_dtype(dname)
        for path in args.paths:
            if path != "ours" and (model.int8 or model.bf16):
                continue  # the reference path reads the fp32 weights int8 and bf16 released
            for B in args.batch_sizes:
                r = measure(
                    model, vae, img, B, path, dtype, device, args.runs, args.warmup,
                    args.cuda_graphs and path == "ours",
                )  # fmt: skip
                r["dtype"] = dname
                r["gflop_per_sample"] = flops[path]["total"] / 1e9
                r["achieved_gflops"] = flops[path]["total"] * B / r["median_s_per_batch"] / 1e9
                rows.append(r)
                print(f"  measured {dname} {path} batch {B}: {r['s_per_sample']:.3f} s/sample", flush=True)
        if phase_flops is not None and "ours" in args.paths:
            runs = [phases(model, vae, img[:1], img[:1].flip(0), dtype) for _ in range(args.runs)]
            phase_rows[dname] = [
                {"phase": f["phase"], "flop": f["flop"], "s": statistics.median(r[k]["s"] for r in runs)}
                for k, f in enumerate(phase_flops)
            ]

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    floor_s = flops.get("ours", next(iter(flops.values())))["total"] / rate
    print(
        f"\nStyleVAR d20 + VQ-VAE ch160, {', '.join(dtypes)}{', CUDA graphs' if args.cuda_graphs else ''}, {R}x{R}, random weights, top-k 900, top-p 0.96"
    )
    print(
        f"device: {device} ({dev_name}), torch {torch.__version__}, CPU threads {torch.get_num_threads()}; "
        f"build {build_s:.1f} s"
    )
    print(
        f"weights: {weights_mib:.0f} MiB"
        + (f"; process RSS after building: {baseline_rss:.0f} MiB" if baseline_rss else "")
    )
    print(f"glibc mmap threshold fixed at 1 MiB: {malloc_fixed} (stylevar._malloc)")
    print(f"matmul rate ({mm_dtype}, best large square GEMM): {rate / 1e9:.0f} GFLOP/s")
    for path, f in flops.items():
        g = {k: v / 1e9 for k, v in f.items()}
        print(
            f"FLOPs per sample, {path}: {g['total']:.0f} GFLOP (conditioning {g['conditioning']:.0f}, "
            f"transformer {g['transformer']:.0f}, decode {g['decode']:.0f})"
        )
    print(f"floor (ours' FLOPs / matmul rate): {floor_s:.3f} s per sample\n")
    mem = "peak GPU alloc (MiB)" if device.type == "cuda" else "peak RSS (MiB)"
    print(
        f"| path | dtype | batch | s / batch (median of {args.runs}) | s / sample | x floor | images / s | GFLOP/s | {mem} | x weights |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        peak = r["peak_mib"]
        print(
            f"| {r['path']} | {r['dtype']} | {r['batch']} | {r['median_s_per_batch']:.3f} | {r['s_per_sample']:.3f} | "
            f"{r['s_per_sample'] / floor_s:.2f} | {r['images_per_s']:.2f} | {r['achieved_gflops']:.0f} | "
            f"{'n/a' if peak is None else f'{peak:.0f}'} | {'n/a' if peak is None else f'{peak / weights_mib:.2f}'} |"
        )
    for dname, prs in phase_rows.items():
        total = sum(p["s"] for p in prs)
        print(f"\nPer phase, ours, {dname}, batch 1 (median of {args.runs} calls; {total:.3f} s in all):\n")
        print("| phase | ms | share | GFLOP | GFLOP/s |")
        print("|---|---:|---:|---:|---:|")
        for p in prs:
            rate_p = p["flop"] / p["s"] / 1e9 if p["s"] > 0 else float("nan")
            print(
                f"| {p['phase']} | {p['s'] * 1e3:.1f} | {p['s'] / total:.1%} | {p['flop'] / 1e9:.2f} | {rate_p:.0f} |"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": str(device),
                    "device_name": dev_name,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "dtypes": dtypes,
                    "phases": phase_rows,
                    "weights_mib": weights_mib,
                    "matmul_gflops": rate / 1e9,
                    "floor_s_per_sample": floor_s,
                    "gflop_per_sample": {p: {k: v / 1e9 for k, v in f.items()} for p, f in flops.items()},
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
