"""The adapter protocol: layers that add a switchable update to a frozen base layer.

An :class:`Adapter` wraps a base layer, keeps that layer's parameters as its own base (frozen), and adds
an update that can be switched off (``enabled = False`` makes it exactly the base layer) or baked into
the base (:meth:`Adapter.merge_`). LoRA (:class:`~stylevar.models.lora.LoRALinear`) is one; code that
only needs to know *whether* updates are on (the sampling runners, GRPO's reference policy) asks the
free functions here instead of looking for LoRA attributes, so another adapter kind needs no change
there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


class Adapter(nn.Module):
    """Base class of adapter layers (see the module docstring)."""

    #: False: the layer computes exactly its base layer (not saved in state dicts)
    enabled: bool = True

    def merge_(self, **kwargs) -> None:
        """Bake the current update into the base weights, in place (the output is unchanged)."""
        raise NotImplementedError


def adapter_modules(model: nn.Module) -> dict[str, Adapter]:
    """Every :class:`Adapter` of ``model`` by full module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Adapter)}


def adapter_switches(model: nn.Module) -> tuple[bool, ...]:
    """The ``enabled`` flag of every adapter of ``model`` in module order (empty without adapters):
    what a cached computation compares to notice that updates were switched on or off."""
    return tuple(bool(m.enabled) for m in model.modules() if isinstance(m, Adapter))


def set_adapters_enabled(model: nn.Module, flag: bool) -> None:
    """Switch every adapter of ``model`` on or off (off: the base model exactly)."""
    for m in adapter_modules(model).values():
        m.enabled = bool(flag)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model is its base (e.g. GRPO's reference policy); previous flags are restored."""
    mods = adapter_modules(model)
    before = {name: m.enabled for name, m in mods.items()}
    set_adapters_enabled(model, False)
    try:
        yield model
    finally:
        for name, m in mods.items():
            m.enabled = before[name]
