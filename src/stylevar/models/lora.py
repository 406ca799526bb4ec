"""LoRA adapters on the StyleVAR blocks (upstream-spec §5.1) and the GRPO checkpoint forms (§5.6).

:class:`LoRALinear` wraps a linear layer: it keeps the layer's own weight (and bias) Parameters,
frozen, as ``base_weight`` (``base_bias``) and adds ``lora_A`` (rank, in) and ``lora_B`` (out, rank)
so that ``weight = base_weight + (lora_B @ lora_A) * alpha / rank``. The blocks read
``mat_qkv_target.weight[C:]`` / ``mat_qkv_guide.weight[:C]`` directly and the other projections
call ``.weight`` / ``.bias``, so exposing ``weight`` as a property is all it takes for LoRA to
apply everywhere (with gradients to A and B).

Checkpoint forms of the published GRPO code (state-dict key names are upstream's):

1. plain: ``blocks.N.ffn.fc1.weight`` ... (full-parameter mode, merged releases);
2. LoRA-wrapped full state: ``.base_weight`` / ``.base_bias`` / ``.lora_A`` / ``.lora_B``
   (``grpo_latest.pth`` after a merge, ``grpo_pre_merge_stepN.pth``): :func:`bake_wrapped_state`;
3. LoRA only: ``.lora_A`` / ``.lora_B`` (GRPO saves before any merge), applied to a plain base
   with :func:`apply_lora_to_plain_state`.

Our own adapter format is a directory (:func:`save_lora` / :func:`load_lora`)::

    adapter_config.json   {"format": "stylevar-lora", "format_version": 1, "lora": {...}, "stylevar": {...}, "info": {...}}
    adapter.safetensors   LoRA-only keys (form 3)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .ops import Linear, linear

if TYPE_CHECKING:
    from .stylevar import StyleVAR

LORA_FORMAT = "stylevar-lora"
LORA_FORMAT_VERSION = 1
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"

#: the modules upstream wraps in every block (upstream-spec §5.1)
DEFAULT_TARGETS: tuple[str, ...] = (
    "attn.mat_qkv_guide",
    "attn.mat_qkv_target",
    "attn.proj",
    "ffn.fc1",
    "ffn.fc2",
)
#: upstream's defaults when a checkpoint's ``args`` do not say (``--lora_rank 256 --lora_alpha 512``)
UPSTREAM_RANK = 256
UPSTREAM_ALPHA_PER_RANK = 2.0

_A, _B = ".lora_A", ".lora_B"
_BASE_W, _BASE_B = ".base_weight", ".base_bias"


# ------------------------------------------------------------------------------------- config
@dataclass
class LoRAConfig:
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

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoRAConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"LoRAConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)


# ------------------------------------------------------------------------------------- module
def _kaiming_(t: torch.Tensor, generator: torch.Generator | None) -> None:
    """kaiming_uniform_(a=sqrt(5)) of a (rows, fan_in) tensor: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(t.shape[1]) if t.shape[1] else 0.0
    with torch.no_grad():
        t.uniform_(-bound, bound, generator=generator)


class LoRALinear(nn.Module):
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
def _drop_static_runners(model: nn.Module) -> None:
    """Forget sampling's cached static runners (they hold block copies / graphs of the old structure)."""
    model.__dict__.pop("_static_runners", None)


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
    _drop_static_runners(model)
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
    change at their next use and re-capture (:class:`~stylevar.models.graphs.StaticRunner`).
    """
    for m in lora_modules(model).values():
        m.enabled = bool(flag)


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model is its base (GRPO's reference policy); previous flags are restored."""
    mods = lora_modules(model)
    before = {name: m.enabled for name, m in mods.items()}
    set_lora_enabled(model, False)
    try:
        yield model
    finally:
        for name, m in mods.items():
            m.enabled = before[name]


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
    _drop_static_runners(model)
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


# ------------------------------------------------------------------------------------- state dicts
def _scaling(a_mat: torch.Tensor, key: str, rank: int | None, alpha: float | None) -> tuple[int, float]:
    """(rank, alpha) for an adapter with this ``lora_A``: rank defaults to its rows, alpha to 2 * rank."""
    rows = int(a_mat.shape[0])
    if rank is not None and int(rank) != rows:
        raise CheckpointError(
            f"LoRA rank {rank} (given or from the checkpoint's args) does not match {key}, which has {rows} rows; "
            "pass the right --rank"
        )
    r = rows
    a = float(alpha) if alpha is not None else UPSTREAM_ALPHA_PER_RANK * r
    return r, a


def _pairs(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> (lora_A, lora_B) of a state dict; a lone A or B is an error."""
    names = {k[: -len(_A)] for k in sd if k.endswith(_A)} | {k[: -len(_B)] for k in sd if k.endswith(_B)}
    out = {}
    for n in sorted(names):
        if n + _A not in sd or n + _B not in sd:
            lone = n + (_A if n + _A in sd else _B)
            raise CheckpointError(
                f"LoRA state has {lone} without its partner (lora_A and lora_B come in pairs)"
            )
        A, B = sd[n + _A], sd[n + _B]
        if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
            raise CheckpointError(
                f"LoRA state of {n}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} do not form (out, rank) @ (rank, in)"
            )
        out[n] = (A, B)
    return out


def _merged(base: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """``base + (B @ A) * scaling`` in at least fp32, returned in base's dtype (the same ops as ``merge_``)."""
    ct = torch.promote_types(base.dtype, torch.float32)
    return (base.to(ct) + (B.to(ct) @ A.to(ct)) * scaling).to(base.dtype)


def bake_wrapped_state(
    sd: Mapping[str, torch.Tensor], rank: int | None = None, alpha: float | None = None
) -> dict[str, torch.Tensor]:
    """A LoRA-wrapped full state (form 2) -> a plain state dict (form 1).

    ``.weight = .base_weight + (.lora_B @ .lora_A) * alpha / rank``, ``.base_bias`` -> ``.bias``,
    LoRA keys dropped. ``rank`` defaults to ``lora_A``'s rows, ``alpha`` to 2 * rank (upstream's
    256 / 512).
    """
    pairs = _pairs(sd)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith((_A, _B)):
            continue
        if k.endswith(_BASE_W):
            n = k[: -len(_BASE_W)]
            if n in pairs:
                A, B = pairs[n]
                r, a = _scaling(A, n + _A, rank, alpha)
                if tuple(B.shape[:1]) + tuple(A.shape[1:]) != tuple(v.shape):
                    raise CheckpointError(
                        f"LoRA state of {n}: B @ A is {(B.shape[0], A.shape[1])}, base_weight {tuple(v.shape)}"
                    )
                v = _merged(v, A, B, a / r)
            out[n + ".weight"] = v
        elif k.endswith(_BASE_B):
            out[k[: -len(_BASE_B)] + ".bias"] = v
        else:
            out[k] = v
    orphans = [n for n in pairs if n + _BASE_W not in sd]
    if orphans:
        raise CheckpointError(f"LoRA state has adapters without a base weight (e.g. {orphans[0]}{_BASE_W})")
    return out


def apply_lora_to_plain_state(
    plain_sd: Mapping[str, torch.Tensor],
    lora_sd: Mapping[str, torch.Tensor],
    rank: int | None = None,
    alpha: float | None = None,
) -> dict[str, torch.Tensor]:
    """A plain base state (form 1) plus adapters (form 3; other keys ignored) -> a new plain state.

    ``.weight += (.lora_B @ .lora_A) * alpha / rank`` for every adapter; ``plain_sd`` is not
    modified. Defaults as in :func:`bake_wrapped_state`.
    """
    out = dict(plain_sd)
    pairs = _pairs(lora_sd)
    if not pairs:
        raise CheckpointError("the LoRA state holds no lora_A / lora_B keys")
    for n, (A, B) in pairs.items():
        key = n + ".weight"
        if key not in out:
            raise CheckpointError(
                f"the base checkpoint has no {key} for the adapter {n}; is it the right base?"
            )
        r, a = _scaling(A, n + _A, rank, alpha)
        if (B.shape[0], A.shape[1]) != tuple(out[key].shape):
            raise CheckpointError(
                f"adapter {n} (B @ A: {(B.shape[0], A.shape[1])}) does not fit the base's {key} "
                f"{tuple(out[key].shape)}; is it the right base?"
            )
        out[key] = _merged(out[key], A, B, a / r)
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v


def lora_hparams_from_checkpoint(obj: Any) -> tuple[int | None, float | None]:
    """(rank, alpha) from an upstream checkpoint's ``args`` (a dict, or a namespace when unpickled).

    Keys tried: ``lora_rank``, ``lora_r``, ``rank``; ``lora_alpha``, ``alpha``. None where absent
    (or not a number).
    """
    args = obj.get("args") if isinstance(obj, Mapping) else None
    if args is not None and not isinstance(args, Mapping):
        args = vars(args) if hasattr(args, "__dict__") else None
    if not isinstance(args, Mapping):
        return None, None
    rank = next(
        (_number(args[k]) for k in ("lora_rank", "lora_r", "rank") if _number(args.get(k)) is not None), None
    )
    alpha = next(
        (_number(args[k]) for k in ("lora_alpha", "alpha") if _number(args.get(k)) is not None), None
    )
    return (None if rank is None else int(rank)), (None if alpha is None else float(alpha))


def lora_hparams(
    sd: Mapping[str, torch.Tensor],
    rank: int | None = None,
    alpha: float | None = None,
    where: Any = "LoRA state",
) -> tuple[int, float]:
    """The (rank, alpha) that apply to the adapters in ``sd``: ``rank`` / ``alpha`` when given (rank
    checked against lora_A's rows), else lora_A's rows and 2 * rank. All adapters must share one rank."""
    pairs = _pairs(sd)
    if not pairs:
        raise CheckpointError(f"{where} holds no lora_A / lora_B keys")
    ranks = {int(A.shape[0]) for A, _ in pairs.values()}
    if len(ranks) != 1:
        raise CheckpointError(
            f"{where}: its adapters have different ranks {sorted(ranks)}; stylevar uses one rank"
        )
    n0 = next(iter(pairs))
    return _scaling(pairs[n0][0], n0 + _A, rank, alpha)


def lora_only(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``.lora_A`` / ``.lora_B`` entries of a state dict."""
    return {k: v for k, v in sd.items() if k.endswith((_A, _B))}


def _targets_of(names: list[str], path: Any) -> tuple[str, ...]:
    found = []
    for n in names:
        parts = n.split(".")
        if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise CheckpointError(f"{path}: LoRA module {n} is not inside a block (blocks.N.<module>)")
        t = ".".join(parts[2:])
        if t not in found:
            found.append(t)
    order = {t: i for i, t in enumerate(DEFAULT_TARGETS)}
    return tuple(sorted(found, key=lambda t: (order.get(t, len(order)), t)))


# ------------------------------------------------------------------------------------- our format
def save_lora(out_dir: str | os.PathLike, model: StyleVAR, *, info: dict[str, Any] | None = None) -> Path:
    """Write the adapters of ``model`` as ``adapter_config.json`` + ``adapter.safetensors`` (atomically).

    ``info`` is free-form provenance; a ``"base"`` entry (the base checkpoint's path) lets
    :func:`stylevar.checkpoints.load_pretrained` find the base without ``base=``.
    """
    from ..checkpoints import write_weights_dir

    sd = lora_state_dict(model)
    if not sd:
        raise ConfigError("the model has no LoRA adapters to save (apply_lora first)")
    cfg = getattr(model, "lora_config", None)
    if cfg is None:  # wrapped by hand: read the configuration off the modules
        mods = list(lora_modules(model).values())
        cfg = LoRAConfig(mods[0].rank, mods[0].alpha, _targets_of(list(lora_modules(model)), "model"))
    config = {
        "format": LORA_FORMAT,
        "format_version": LORA_FORMAT_VERSION,
        "lora": cfg.to_dict(),
        "stylevar": model.config.to_dict(),
        "info": info or {},
    }
    return write_weights_dir(
        out_dir, {ADAPTER_WEIGHTS: sd}, config, kind="stylevar LoRA directory", config_name=ADAPTER_CONFIG
    )


def is_lora_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / ADAPTER_CONFIG).exists()


def load_lora(
    path: str | os.PathLike, *, allow_pickle: bool = False
) -> tuple[LoRAConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read adapters: our directory, or an upstream ``grpo_*.pth`` (LoRA-only or LoRA-wrapped full state).

    Returns (configuration, LoRA-only state dict, metadata). The metadata of our directory is its
    ``adapter_config.json`` (``stylevar``: the model configuration, ``info``); of an upstream file
    ``kind``, ``step``, ``epoch`` where present. ``source`` is the path in both. For upstream
    files, rank and alpha come from the file's ``args``, else lora_A's rows and 2 * rank.
    """
    from ..checkpoints import classify, extract_state_dict, read_file

    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / ADAPTER_CONFIG).exists():
            raise CheckpointError(f"{p} is not a LoRA directory (no {ADAPTER_CONFIG})")
        try:
            raw = json.loads((p / ADAPTER_CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read {p / ADAPTER_CONFIG}: {e}") from None
        if not isinstance(raw, dict) or raw.get("format") != LORA_FORMAT:
            raise CheckpointError(
                f'{p / ADAPTER_CONFIG} is not a stylevar LoRA config (no "format": "{LORA_FORMAT}")'
            )
        if int(raw.get("format_version", 0)) > LORA_FORMAT_VERSION:
            raise CheckpointError(
                f"{p} was written by a newer stylevar (LoRA format {raw['format_version']}); upgrade stylevar"
            )
        try:
            cfg = LoRAConfig.from_dict(raw["lora"])
        except (KeyError, TypeError, ConfigError) as e:
            raise CheckpointError(f"{p / ADAPTER_CONFIG}: invalid LoRA configuration ({e})") from None
        sd = read_file(p / ADAPTER_WEIGHTS) if (p / ADAPTER_WEIGHTS).exists() else None
        if sd is None:
            raise CheckpointError(f"{p / ADAPTER_WEIGHTS} is missing; the LoRA directory is incomplete")
        lora_hparams(sd, cfg.rank, None, p / ADAPTER_WEIGHTS)
        meta = dict(raw)
        meta["info"] = dict(raw.get("info") or {})
        meta["source"] = str(p)
        return cfg, lora_only(sd), meta
    obj = read_file(p, allow_pickle=allow_pickle)
    full = extract_state_dict(obj, p)
    kind = classify(full)
    if kind not in ("lora_only", "stylevar_lora"):
        raise CheckpointError(f"{p} holds no LoRA adapters (it looks like: {kind})")
    sd = lora_only(full)
    r, a = lora_hparams(sd, *lora_hparams_from_checkpoint(obj), where=p)
    cfg = LoRAConfig(rank=r, alpha=a, targets=_targets_of(list(_pairs(sd)), p))
    meta: dict[str, Any] = {"source": str(p), "kind": kind}
    if isinstance(obj, Mapping):
        for k in ("step", "epoch"):
            if isinstance(obj.get(k), (int, float)) and not isinstance(obj.get(k), bool):
                meta[k] = obj[k]
    return cfg, sd, meta
