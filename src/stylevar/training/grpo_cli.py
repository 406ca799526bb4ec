"""Deprecated: ``stylevar grpo``'s library side moved to :mod:`stylevar.training.jobs` (``run_grpo`` now takes a
:class:`~stylevar.training.jobs.GRPOJob`) and its flags to :mod:`stylevar.cli.grpo`."""

from .._deprecated import moved

__getattr__ = moved(__name__, {"GRPORun": "stylevar.training.jobs:GRPORun"})
