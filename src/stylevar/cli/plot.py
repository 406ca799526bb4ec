"""``stylevar plot RUN_DIR``: a training run's curves as one PNG."""

from __future__ import annotations

import argparse

from .common import examples


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="draw a training run's loss/accuracy curves to a PNG",
        description="Read RUN_DIR/metrics.jsonl (written by train-tokenizer, sft, grpo and dpo as they train) "
        "and draw its curves, training and validation, into one PNG.",
        epilog=examples(
            ("an SFT run's curves, to runs/sft/curves.png", "stylevar plot runs/sft"),
            ("a tokenizer run's, somewhere else", "stylevar plot runs/tok -o tok.png"),
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding metrics.jsonl")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.output)}")
    return 0
