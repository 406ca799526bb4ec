"""Deprecated: ``stylevar sft``'s library side moved to :mod:`stylevar.training.jobs` (``run_sft`` now takes an
:class:`~stylevar.training.jobs.SFTJob`) and its flags to :mod:`stylevar.cli.sft`."""

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "OtherRankFailed": "stylevar.errors:OtherRankFailed",
        "SFTRun": "stylevar.training.jobs:SFTRun",
        "on_rank0": "stylevar.training.distributed:on_rank0",
    },
)
