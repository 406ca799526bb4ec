"""fp32 products with few rows on this CPU: ``F.linear`` against the transposed form ``(W @ x.T).T``.

The crossover decides ``stylevar.models.ops.SKINNY_ROWS`` (the first scales of sampling at batch 1
have 1-16 rows per product). Prints one Markdown row per (shape, rows).

    python benchmarks/bench_linear.py
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F


def timeit(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=1280, help="model width C (d20: 1280)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 9, 16, 25, 36, 64])
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    C = args.dim
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| in -> out | rows | F.linear (ms) | (W @ x.T).T (ms) | faster |")
    print("|---|---:|---:|---:|---|")
    for i, o in ((C, 4 * C), (4 * C, C), (C, 2 * C)):
        w, b = torch.randn(o, i), torch.randn(o)
        for n in args.rows:
            x = torch.randn(n, i)
            a = timeit(lambda x=x, w=w, b=b: F.linear(x, w, b), args.reps)
            t = timeit(
                lambda x=x, w=w, b=b: torch.addmm(b.unsqueeze(1), w, x.t()).t().contiguous(), args.reps
            )
            print(
                f"| {i} -> {o} | {n} | {a * 1e3:.2f} | {t * 1e3:.2f} | {'transposed' if t < a else 'F.linear'} |"
            )


if __name__ == "__main__":
    main()
