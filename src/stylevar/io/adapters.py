"""LoRA adapters on disk: our adapter folder and the published GRPO code's checkpoint forms.

State-dict forms of the published GRPO code (key names are the published code's; see
docs/upstream.md §6.6):

1. plain: ``blocks.N.ffn.fc1.weight`` ... (full-parameter mode, merged releases);
2. LoRA-wrapped full state: ``.base_weight`` / ``.base_bias`` / ``.lora_A`` / ``.lora_B``
   (``grpo_latest.pth`` after a merge, ``grpo_pre_merge_stepN.pth``): :func:`bake_wrapped_state`;
3. LoRA only: ``.lora_A`` / ``.lora_B`` (GRPO saves before any merge), applied to a plain base
   with :func:`apply_lora_to_plain_state`.

:func:`save_upstream_grpo` writes all three as the published code does. Our own adapter format is a
folder (:func:`save_lora` / :func:`load_lora`, :mod:`stylevar.io.folders`)::

    adapter_config.json   {"format": "stylevar-lora", "format_version": 1, "lora": {...}, "stylevar": {...}, "info": {...}}
    adapter.safetensors   LoRA-only keys (form 3)

The adapters themselves (the :class:`~stylevar.models.lora.LoRALinear` layers) are module code in
:mod:`stylevar.models.lora`, which knows nothing of files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..models import StyleVAR
from ..models.lora import DEFAULT_TARGETS, LoRAConfig, has_lora, lora_modules, lora_state_dict
from .folders import (
    ADAPTER,
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    config_from,
    has_config,
    read_config,
    read_section,
    read_weights,
    write_folder,
)
from .safe import atomic_save, read_file, short_repr
from .state import classify, extract_state_dict

#: the published code's defaults when a checkpoint's ``args`` do not say (``--lora_rank 256 --lora_alpha 512``)
UPSTREAM_RANK = 256
UPSTREAM_ALPHA_PER_RANK = 2.0
GRPO_FORMS = ("lora", "wrapped", "merged")

_A, _B = ".lora_A", ".lora_B"
_BASE_W, _BASE_B = ".base_weight", ".base_bias"


# ---------------------------------------------------------------------------------------- state-dict forms
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


# ---------------------------------------------------------------------------------------- our folder
def save_lora(out_dir: str | os.PathLike, model: StyleVAR, *, info: dict[str, Any] | None = None) -> Path:
    """Write the adapters of ``model`` as ``adapter_config.json`` + ``adapter.safetensors`` (atomically).

    ``info`` is free-form provenance; a ``"base"`` entry (the base checkpoint's path) lets
    :func:`stylevar.io.load_pretrained` find the base without ``base=``.
    """
    sd = lora_state_dict(model)
    if not sd:
        raise ConfigError("the model has no LoRA adapters to save (apply_lora first)")
    cfg = getattr(model, "lora_config", None)
    if cfg is None:  # wrapped by hand: read the configuration off the modules
        mods = list(lora_modules(model).values())
        cfg = LoRAConfig(mods[0].rank, mods[0].alpha, _targets_of(list(lora_modules(model)), "model"))
    body = {"lora": cfg.to_dict(), "stylevar": model.config.to_dict(), "info": info or {}}
    return write_folder(ADAPTER, out_dir, {ADAPTER_WEIGHTS: sd}, body)


def is_lora_dir(path: str | os.PathLike) -> bool:
    """True for a folder holding ``adapter_config.json`` (our adapter folder)."""
    return has_config(path, ADAPTER)


def load_lora(
    path: str | os.PathLike, *, allow_pickle: bool = False
) -> tuple[LoRAConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read adapters: our directory, or an upstream ``grpo_*.pth`` (LoRA-only or LoRA-wrapped full state).

    Returns (configuration, LoRA-only state dict, metadata). The metadata of our directory is its
    ``adapter_config.json`` (``stylevar``: the model configuration, ``info``); of an upstream file
    ``kind``, ``step``, ``epoch`` where present. ``source`` is the path in both. For upstream
    files, rank and alpha come from the file's ``args``, else lora_A's rows and 2 * rank.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if not is_lora_dir(p):
            raise CheckpointError(f"{p} is not a LoRA directory (no {ADAPTER_CONFIG})")
        _, raw = read_config(p, (ADAPTER,), what="LoRA config")
        cfg = config_from(LoRAConfig, raw, "lora", p / ADAPTER_CONFIG)
        info = read_section(raw, "info", p / ADAPTER_CONFIG, required=False)
        if not isinstance(info.get("base", ""), str):
            raise CheckpointError(
                f'{p / ADAPTER_CONFIG}: info "base" must be the base checkpoint\'s path (a string), '
                f"got {short_repr(info['base'])}; fix it or pass --base"
            )
        if raw.get("stylevar") is not None:
            read_section(raw, "stylevar", p / ADAPTER_CONFIG)  # a model configuration: an object
        sd = read_weights(p, ADAPTER_WEIGHTS, ADAPTER)
        lora_hparams(sd, cfg.rank, None, p / ADAPTER_WEIGHTS)
        meta = dict(raw)
        meta["info"] = dict(info)
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


# ---------------------------------------------------------------------------------------- the published GRPO files
def save_upstream_grpo(
    path: str | os.PathLike, model: StyleVAR, form: str = "lora", *, step: int = 0, epoch: int = 0
) -> Path:
    """Write a LoRA-wrapped model in one of the published GRPO code's three checkpoint forms
    (docs/upstream.md §6.6).

    ``form``: ``lora`` -- only the ``lora_A``/``lora_B`` keys (upstream's saves before a merge; loading
    needs the base); ``wrapped`` -- the full wrapped state (``base_weight``/``base_bias``/``lora_*``,
    upstream's saves after a merge); ``merged`` -- the adapters baked into a plain state dict (the
    released ``StyleVAR-GRPO.pth`` form). The file is ``{step, epoch, use_lora, model, optimizer,
    scaler, args}`` with ``args`` holding ``lora_rank``/``lora_alpha``, written atomically; upstream's
    code and :func:`stylevar.io.load_pretrained` read all three.
    """
    if form not in GRPO_FORMS:
        raise ConfigError(f"form must be lora, wrapped or merged, not {form!r}")
    if not has_lora(model):
        raise ConfigError("the model has no LoRA adapters; save a plain model with save_pretrained")
    cfg = model.lora_config
    full = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if form == "lora":
        sd = {k: v.clone() for k, v in lora_state_dict(model).items()}
    elif form == "wrapped":
        sd = full
    else:
        sd = bake_wrapped_state(full, cfg.rank, cfg.alpha)
    obj = {
        "step": step,
        "epoch": epoch,
        "use_lora": form != "merged",
        "model": sd,
        "optimizer": {},
        "scaler": {},
        "args": {"lora_rank": cfg.rank, "lora_alpha": cfg.alpha},
    }
    return atomic_save(obj, path)
