"""Training: the run harness and its trainers (tokenizer, SFT, GRPO, DPO), VAR initialisation, rewards.

    from stylevar.training import SFTConfig, SFTTrainer
    SFTTrainer(model, vae, train_set, "runs/sft", SFTConfig(max_steps=1000)).fit()

Names are imported on first use, so ``stylevar.training.config`` (the configurations, which the command
line reads for its flags) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Trainer": "harness",
    "RunState": "harness",
    "TokenizerConfig": "config",
    "SFTConfig": "config",
    "GRPOConfig": "config",
    "TokenizerTrainer": "tokenizer",
    "train_tokenizer": "tokenizer",
    "SFTTrainer": "sft",
    "PolicyTrainer": "policy",
    "GRPOTrainer": "grpo",
    "DPOTrainer": "dpo",
    "InitReport": "var_init",
    "init_from_var": "var_init",
    "load_resnet18_weights": "var_init",
    "var_config_from_state_dict": "var_init",
    "var_to_stylevar": "var_init",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
