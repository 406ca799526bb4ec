"""LoRA adapters on the StyleVAR blocks (docs/upstream.md §6.1): module code only.

:class:`LoRALinear` wraps a linear layer: it keeps the layer's own weight (and bias) Parameters,
frozen, as ``base_weight`` (``base_bias``) and adds ``lora_A`` (rank, in) and ``lora_B`` (out, rank)
so that ``weight = base_weight + (lora_B @ lora_A) * alpha / rank``. The blocks read
``mat_qkv_target.weight[C:]`` / ``mat_qkv_guide.weight[:C]`` directly and the other projections
call ``.weight`` / ``.bias``, so exposing ``weight`` as a property is all it takes for LoRA to
apply everywhere (with gradients to A and B). It is an :class:`~stylevar.models.adapters.Adapter`:
``enabled`` switches the update off, ``merge_`` bakes it in.

Files (our adapter folder, the published GRPO checkpoint forms and their state-dict conversions)
are :mod:`stylevar.io.adapters`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import Serialisable
from ..errors import CheckpointError, ConfigError
from .adapters import Adapter, adapters_disabled, set_adapters_enabled
from .ops import Linear, linear

if TYPE_CHECKING:
    from .stylevar import StyleVAR

#: the modules the published GRPO code wraps in every block (docs/upstream.md §6.1)
DEFAULT_TARGETS: tuple[str, ...] = (
    "attn.mat_qkv_guide",
    "attn.mat_qkv_target",
    "attn.proj",
    "ffn.fc1",
    "ffn.fc2",
)
_A, _B = ".lora_A", ".lora_B"


# ------------------------------------------------------------------------------------- config
@dataclass
class LoRAConfig(Serialisable):
    """Which linear layers get adapters and how large they are."""

    #: rows of ``lora_A`` / columns of ``lora_B`` (the paper and the release: 256)
    rank: int = 256
    #: the update is scaled by ``alpha / rank`` (the paper: alpha / rank = 2)
    alpha: float = 512.0
    #: module names relative to each block (``blocks.N.<target>``) that are wrapped; each must be
    #: a linear layer
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        r = self.rank
        if isinstance(r, bool) or not isinstance(r, (int, float)) or int(r) != r or r < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        self.rank = int(self.rank)
        try:
            self.alpha = float(self.alpha)
        except (TypeError, ValueError):
            raise ConfigError(f"LoRA alpha must be a number, got {self.alpha!r}") from None
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be a positive number, got {self.alpha}")
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if not self.targets:
            raise ConfigError("LoRA needs at least one target module")
        bad = [
            t for t in self.targets if not isinstance(t, str) or not t or t.startswith(".") or t.endswith(".")
        ]
        if bad:
            raise ConfigError(f"LoRA targets must be module names like 'ffn.fc1', got {bad}")
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"LoRA targets contain duplicates: {list(self.targets)}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


# ------------------------------------------------------------------------------------- module
def _kaiming_(t: torch.Tensor, generator: torch.Generator | None) -> None:
    """kaiming_uniform_(a=sqrt(5)) of a (rows, fan_in) tensor: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(t.shape[1]) if t.shape[1] else 0.0
    with torch.no_grad():
        t.uniform_(-bound, bound, generator=generator)


class LoRALinear(Adapter):
    """``base`` plus a low-rank update: ``weight = base_weight + (lora_B @ lora_A) * alpha / rank``.

    The base layer's Parameters are registered as they are (same objects, frozen) under
    ``base_weight`` / ``base_bias``; ``lora_A`` starts as kaiming-uniform(a=sqrt(5)) and ``lora_B``
    as zeros, so a fresh adapter changes nothing. ``enabled`` (not saved) switches the update off:
    the layer is then exactly the base layer.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear layers, got {type(base).__name__}")
        if int(rank) < 1 or alpha <= 0:
            raise ConfigError(f"LoRA needs rank >= 1 and alpha > 0, got rank={rank}, alpha={alpha}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank
        self.enabled = True
        w = base.weight
        w.requires_grad_(False)
        self.base_weight = w
        if base.bias is not None:
            base.bias.requires_grad_(False)
            self.base_bias = base.bias
        else:
            self.register_parameter("base_bias", None)
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, self.rank, device=w.device, dtype=w.dtype))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """A fresh adapter: A ~ kaiming-uniform(a=sqrt(5)), B = 0 (the update is zero)."""
        _kaiming_(self.lora_A, generator)
        with torch.no_grad():
            self.lora_B.zero_()

    def delta(self) -> torch.Tensor:
        """The update ``(lora_B @ lora_A) * scaling``, (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @property
    def weight(self) -> torch.Tensor:
        w = self.base_weight
        if not self.enabled:
            return w
        return w + self.delta().to(w.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    @torch.no_grad()
    def merge_(self, reinit: bool = True, generator: torch.Generator | None = None) -> None:
        """Bake the update into ``base_weight`` (in place), then start a fresh adapter.

        ``reinit=True``: A re-drawn (kaiming), B zero (upstream's ``merge_lora_and_reinit``);
        ``reinit=False``: A and B both zero (upstream's merge script). The output is unchanged
        either way. The merge happens whether or not the adapter is ``enabled``.
        """
        self.base_weight.add_(self.delta().to(self.base_weight.dtype))
        if reinit:
            self.reset_parameters(generator)
        else:
            self.lora_A.zero_()
            self.lora_B.zero_()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}, bias={self.base_bias is not None}, enabled={self.enabled}"
        )


# ------------------------------------------------------------------------------------- model level
def _resolve(block: nn.Module, target: str) -> tuple[nn.Module, str]:
    *path, leaf = target.split(".")
    parent = block
    for p in path:
        parent = getattr(parent, p, None)
        if not isinstance(parent, nn.Module):
            raise ConfigError(f"LoRA target {target!r}: the block has no module {'.'.join(path)!r}")
    return parent, leaf


def apply_lora(
    model: StyleVAR, config: LoRAConfig, *, generator: torch.Generator | None = None
) -> list[nn.Parameter]:
    """Freeze every parameter of ``model``, then wrap ``blocks.N.<target>`` in :class:`LoRALinear`.

    Returns the trainable parameters (``lora_A``, ``lora_B`` of block 0's targets in
    ``config.targets`` order, then block 1's, ...). ``model.config`` is untouched; the LoRA
    configuration is kept as ``model.lora_config``. ``generator`` draws the A matrices.
    """
    if has_lora(model):
        raise ConfigError("the model already has LoRA adapters (merge_lora_ or unload_lora first)")
    plan = []
    for i, block in enumerate(model.blocks):
        for t in config.targets:
            parent, leaf = _resolve(block, t)
            m = getattr(parent, leaf, None)
            if not isinstance(m, nn.Linear):
                what = "nothing" if m is None else type(m).__name__
                raise ConfigError(f"LoRA target {t!r} of block {i} is {what}, not a linear layer")
            plan.append((parent, leaf, m))
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for parent, leaf, m in plan:
        wrapped = LoRALinear(m, config.rank, config.alpha, generator=generator)
        setattr(parent, leaf, wrapped)
        params += [wrapped.lora_A, wrapped.lora_B]
    model.lora_config = config
    model.drop_static_runners()  # cached runners hold the old module structure
    return params


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` of ``model`` by full module name (``blocks.3.ffn.fc1``), in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """``lora_A``, ``lora_B`` of every wrapped module, in module order (as :func:`apply_lora` returns them)."""
    return [p for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)]


def set_lora_enabled(model: nn.Module, flag: bool) -> None:
    """Switch every adapter on or off (off: the base model exactly).

    Cached sampling runners (``generate(cuda_graphs=True)``, reduced-dtype runners) notice the
    change at their next use (:func:`~stylevar.models.adapters.adapter_switches`) and re-capture.
    """
    set_adapters_enabled(model, flag)


def lora_disabled(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Inside the block the model is its base (GRPO's reference policy); previous flags are restored."""
    return adapters_disabled(model)


def merge_lora_(model: nn.Module, *, reinit: bool = True, generator: torch.Generator | None = None) -> None:
    """Bake every adapter into its base weight and start fresh adapters (the paper's iterative merge).

    The Parameter objects stay the same (an optimizer keeps pointing at them, but its state is
    stale: upstream builds a new optimizer after a merge).
    """
    mods = lora_modules(model)
    if not mods:
        raise ConfigError("the model has no LoRA adapters to merge")
    for m in mods.values():
        m.merge_(reinit=reinit, generator=generator)


def unload_lora(model: StyleVAR) -> StyleVAR:
    """Merge every adapter and put plain linear layers back (in place; returns ``model``).

    The state dict then has upstream's plain key names (``.weight`` / ``.bias``). Parameters stay
    frozen as :func:`apply_lora` left them (``model.requires_grad_(True)`` to train all).
    """
    for name, m in lora_modules(model).items():
        m.merge_(reinit=False)
        with torch.device("meta"):
            plain = Linear(m.in_features, m.out_features, bias=m.base_bias is not None)
        plain.weight = m.base_weight
        if m.base_bias is not None:
            plain.bias = m.base_bias
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, plain)
    if "lora_config" in model.__dict__:
        del model.lora_config
    model.drop_static_runners()
    return model


def snapshot_lora(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """CPU copies of every adapter's (A, B), keyed by module name."""
    return {
        name: (m.lora_A.detach().to("cpu", copy=True), m.lora_B.detach().to("cpu", copy=True))
        for name, m in lora_modules(model).items()
    }


@torch.no_grad()
def restore_lora(model: nn.Module, snapshot: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy a :func:`snapshot_lora` back into the adapters (in place: the Parameters stay the same)."""
    mods = lora_modules(model)
    if set(mods) != set(snapshot):
        missing, extra = sorted(set(mods) - set(snapshot)), sorted(set(snapshot) - set(mods))
        raise ConfigError(
            f"LoRA snapshot does not fit the model (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for name, m in mods.items():
        a, b = snapshot[name]
        if a.shape != m.lora_A.shape or b.shape != m.lora_B.shape:
            raise ConfigError(f"LoRA snapshot of {name} has other shapes than the model's adapter")
        m.lora_A.copy_(a)
        m.lora_B.copy_(b)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters only (form 3): ``blocks.N.<target>.lora_A`` / ``.lora_B`` -> detached tensors."""
    out = {}
    for name, m in lora_modules(model).items():
        out[name + _A] = m.lora_A.detach()
        out[name + _B] = m.lora_B.detach()
    return out


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Copy adapter tensors (form 3 keys; other keys are ignored) into a wrapped model, in place.

    ``strict``: every adapter of the model must be given and every LoRA key must fit one. Shapes
    must always match.
    """
    own = lora_state_dict(model)
    if not own:
        raise ConfigError("the model has no LoRA adapters (apply_lora first)")
    given = {k: v for k, v in sd.items() if k.endswith((_A, _B))}
    if strict:
        missing, unexpected = sorted(set(own) - set(given)), sorted(set(given) - set(own))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing LoRA keys (e.g. {missing[0]})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected LoRA keys (e.g. {unexpected[0]})")
            raise CheckpointError("the adapters do not fit the model: " + "; ".join(parts))
    for k, v in given.items():
        if k in own:
            if tuple(v.shape) != tuple(own[k].shape):
                raise CheckpointError(
                    f"the adapters do not fit the model: {k} is {tuple(v.shape)}, the model's {tuple(own[k].shape)} "
                    "(another LoRA rank?)"
                )
            own[k].copy_(v)
