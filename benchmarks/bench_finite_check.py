"""Cost of refusing NaN/inf weights at load (``stylevar.io.safe.check_finite``) on d20-sized checkpoints.

Builds random weights of the release's shapes (StyleVAR d20, 721M parameters, + the VQ-VAE
vae_ch160v4096z32) without initialising a model (the shapes come from a model on the meta device),
writes them in both formats we load -- our folder (config.json + safetensors) and the published
``.pth`` pair -- then times ``load_pretrained`` with the check and with it patched out, interleaved,
each alone and followed by a first pass over every weight (both formats load memory-mapped, so the
check reads the weights a first forward pass would read anyway), and the check alone on resident
tensors (``aminmax`` per tensor, as shipped, and ``isfinite(t).all()`` for comparison). Peak resident
memory about 1.3x the weights' size (4.0 GB at d20; ``--depth 12`` needs a third), disk twice it
(``--dir``, deleted at the end), about 2 minutes on 2 cores. On a shared machine a pass over memory varies several-fold from
minute to minute: read the check against a plain pass (a sum per tensor) measured beside it.

    python benchmarks/bench_finite_check.py            # d20
    python benchmarks/bench_finite_check.py --depth 12 # smaller, where memory is short
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from stylevar.config import StyleVARConfig, VQVAEConfig
from stylevar.devices import cpu_name
from stylevar.io import load_pretrained, save_pretrained
from stylevar.io.safe import first_nonfinite
from stylevar.models import VQVAE, StyleVAR


def random_state(module_cls, cfg, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors of ``module_cls(cfg)``'s state-dict shapes; the model's own buffers where they
    carry structure (the scale layout and the attention mask)."""
    with torch.device("meta"):
        meta = module_cls(cfg)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in meta.state_dict().items():
        if v.is_floating_point():
            sd[k] = torch.empty(v.shape, dtype=v.dtype).normal_(0.0, 0.02, generator=g)
        else:
            sd[k] = torch.zeros(v.shape, dtype=v.dtype)
    if module_cls is StyleVAR:
        sd["lvl_1L"], sd["attn_bias_for_masking"] = StyleVAR._lvl_buffers(cfg.patch_nums)
    return sd


class Holder(torch.nn.Module):
    """A module whose state dict is the given tensors (what save_pretrained takes)."""

    def __init__(self, sd: dict[str, torch.Tensor], config) -> None:
        super().__init__()
        self._sd, self.config = sd, config

    def state_dict(self, *a, **k):  # type: ignore[override]
        return self._sd


def first_pass(ckpt):
    """Read every weight once (what the first forward pass does): a sum per tensor."""
    for t in [*ckpt.model.state_dict().values(), *ckpt.vae.state_dict().values()]:
        t.sum()
    return ckpt


def timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``; what it returns is freed after the clocks stop. CPU time (all
    threads, user + system) shows the work itself where other processes share the cores."""
    gc.collect()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    dt, dc = time.perf_counter() - t, time.process_time() - c
    del out
    gc.collect()
    return dt, dc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=20, help="StyleVAR depth (20: the release, 721M parameters)")
    ap.add_argument("--reps", type=int, default=3, help="loads per variant (interleaved)")
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    scfg, vcfg = StyleVARConfig(depth=args.depth), VQVAEConfig()
    t = time.perf_counter()
    msd, vsd = random_state(StyleVAR, scfg, 0), random_state(VQVAE, vcfg, 1)
    n_model = sum(v.numel() for v in msd.values() if v.is_floating_point())
    n_vae = sum(v.numel() for v in vsd.values() if v.is_floating_point())
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}")
    print(
        f"StyleVAR d{args.depth}: {n_model / 1e6:.0f}M floats ({n_model * 4 / 2**30:.2f} GiB), VQ-VAE "
        f"{n_vae / 1e6:.0f}M ({n_vae * 4 / 2**30:.2f} GiB); random weights made in {time.perf_counter() - t:.1f} s"
    )
    root = Path(tempfile.mkdtemp(prefix="bench_finite_", dir=args.dir))
    try:
        ours = save_pretrained(root / "ours", Holder(msd, scfg), Holder(vsd, vcfg))  # type: ignore[arg-type]
        up_model, up_vae = root / "StyleVAR-GRPO.pth", root / "vae_ch160v4096z32.pth"
        torch.save({"model": msd}, up_model)
        torch.save(vsd, up_vae)
        del msd, vsd
        gc.collect()
        loads = {
            "ours (safetensors)": lambda: load_pretrained(ours),
            "upstream .pth": lambda: load_pretrained(up_model, vae=up_vae),
        }
        print(
            "\nBoth formats load memory-mapped: a load without the check reads no weights yet; the check "
            "reads them all once (page faults included), which the first image's forward pass would do "
            "anyway. So the fair comparison is load + one pass over every weight (a sum per tensor, standing "
            f"in for first use) with and without the check. Medians of {args.reps}, interleaved, page cache "
            "warm; wall seconds, CPU seconds (all threads) in brackets.\n"
        )
        print(
            "| format | load, check | load, no check | load + first pass, check | load + first pass, no check |"
        )
        print("|---|---:|---:|---:|---:|")
        for name, load in loads.items():
            load()  # page cache warm, like every later load of the same file
            times: dict[tuple[bool, bool], list[tuple[float, float]]] = {}
            for _ in range(args.reps):
                for check in (True, False):
                    for touch in (False, True):
                        fn = (lambda load=load: first_pass(load())) if touch else load
                        if check:
                            dt = timed(fn)
                        else:
                            with mock.patch("stylevar.io.state.check_finite", lambda *a, **k: None):
                                dt = timed(fn)
                        times.setdefault((check, touch), []).append(dt)
            cells = []
            for key in ((True, False), (False, False), (True, True), (False, True)):
                wall = statistics.median(w for w, _ in times[key])
                cpu = statistics.median(c for _, c in times[key])
                cells.append(f"{wall:.2f} ({cpu:.2f})")
            print(f"| {name} | " + " | ".join(cells) + " |")

        ckpt = load_pretrained(ours)
        tensors = {**ckpt.model.state_dict(), **ckpt.vae.state_dict()}
        n = sum(v.numel() for v in tensors.values() if v.is_floating_point())
        for label, fn in [
            ("aminmax per tensor (shipped)", lambda: first_nonfinite(tensors)),
            (
                "isfinite(t).all() per tensor",
                lambda: [bool(torch.isfinite(v).all()) for v in tensors.values()],
            ),
        ]:
            dt = min(timed(fn)[0] for _ in range(args.reps))
            print(
                f"check alone on resident weights, {label}: {dt:.3f} s for {n / 1e6:.0f}M floats "
                f"({n * 4 / dt / 1e9:.1f} GB/s)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
