"""Deprecated: ``stylevar evaluate``'s library side moved to :mod:`stylevar.eval.run` (``run_evaluate`` now
takes an :class:`~stylevar.eval.run.EvaluateRequest`) and its flags to :mod:`stylevar.cli.evaluate`."""

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {name: f"stylevar.eval.run:{name}" for name in ("RELEASED", "build_benchmarks", "run_evaluate")},
)
