"""Old import paths of names that moved: they keep working, with a :class:`DeprecationWarning`.

A module whose public names moved defines ``__getattr__ = moved(__name__, {"old_name": "new.module:attr"})``.
The target module is imported when the old name is first used, by name (``importlib``): an alias is a
redirect for old callers, not a dependency of the module that holds it, so the package's layering is
unaffected. Nothing inside stylevar uses these paths.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def moved(module: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` resolving each old name to ``"package.module:attribute"``."""

    def __getattr__(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, _, attr = target.partition(":")
        warnings.warn(
            f"{module}.{name} has moved to {new_module}.{attr}; import it from there "
            "(the old path will be removed in a later release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new_module), attr)

    return __getattr__
