"""``stylevar plot RUN_DIR``: a training run's curves as one PNG."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw a training run's loss/accuracy curves to a PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding metrics.jsonl")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.output)}")
    return 0
