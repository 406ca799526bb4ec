"""``stylevar dpo DATA... --init SFT_CHECKPOINT -o RUN_DIR [--reward ...]``: DPO post-training (StyleAR).

The GRPO command with ``--objective dpo``: the same data, rewards, LoRA, resume, torchrun, merges and
export (:mod:`stylevar.cli.grpo`); each condition's G rollouts are ranked by the reward and the best and
worst form a preference pair for DPO's loss against the LoRA-off reference.
"""

from __future__ import annotations

import argparse

from .grpo import build_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = build_parser(
        sub,
        "dpo",
        help="DPO post-training (LoRA) on preference pairs ranked by a reward from the model's own rollouts",
        description="DPO from an SFT checkpoint (--init): G rollouts per (content, style), ranked by a reward "
        "(default -5 DreamSim vs target); the best and the worst form a preference pair; DPO's loss "
        "(--dpo-beta) against the LoRA-off reference. Every flag of `stylevar grpo` applies (resume, "
        "torchrun, LoRA export and merges).",
    )
    p.set_defaults(objective="dpo")
