"""Training: initialisation from vanilla VAR (and, as they land, the SFT and tokenizer trainers)."""

from .var_init import (
    InitReport,
    init_from_var,
    load_resnet18_weights,
    var_config_from_state_dict,
    var_to_stylevar,
)

__all__ = [
    "InitReport",
    "init_from_var",
    "load_resnet18_weights",
    "var_config_from_state_dict",
    "var_to_stylevar",
]
