"""One entry point for every checkpoint: :func:`load_pretrained` tells what it was given and dispatches.

* a folder in our format (``config.json`` + safetensors, :mod:`stylevar.io.checkpoint`);
* our LoRA folder (``adapter_config.json``), merged into its base (:mod:`stylevar.io.adapters`);
* a folder holding the released files, or a file of the published code's kinds (:mod:`stylevar.io.upstream`),
  including GRPO training checkpoints (LoRA-wrapped: baked; LoRA-only: applied to ``base``);
* a Hugging Face Hub repo id (:mod:`stylevar.io.hub`), our format or the released files.

Also :func:`convert_upstream` (``stylevar convert``) and :func:`merge_lora_checkpoint`
(``stylevar merge-lora``), which read through the same dispatcher.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..config import StyleVARConfig, alpha_for_scales
from ..errors import CheckpointError, ConfigError
from .adapters import apply_lora_to_plain_state, is_lora_dir, load_lora
from .checkpoint import Checkpoint, load_checkpoint_dir, save_pretrained
from .folders import ADAPTER_CONFIG, CHECKPOINT, CONFIG_NAME, MODEL_WEIGHTS, VAE_WEIGHTS
from .hub import (
    DEFAULT_REPO,
    HubUnreachableError,
    hub_download,
    hub_has_file,
    hub_host_resolves,
    looks_like_repo_id,
)
from .safe import atomic_save, read_json, short_error
from .state import build_stylevar
from .upstream import VAE_FILENAME, VARIANT_FILES, guess_variant, load_upstream_file, read_vae, vae_for

logger = logging.getLogger(__name__)


def _load_base(
    base: str | os.PathLike, vae: str | os.PathLike | None, allow_pickle: bool, need_vae: bool
) -> Checkpoint:
    """The base (SFT) checkpoint that LoRA adapters apply to: any local checkpoint ``load_pretrained`` reads."""
    path = Path(base).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"base checkpoint not found: {path} (--base takes a local SFT checkpoint file or folder)"
        )
    if is_lora_dir(path):
        raise CheckpointError(
            f"the base {path} is itself a LoRA directory; pass the full SFT checkpoint as --base"
        )
    return _load_local(path, vae=vae, allow_pickle=allow_pickle, need_vae=need_vae)


def load_upstream(
    model_path: str | os.PathLike,
    vae_path: str | os.PathLike | None = None,
    *,
    variant: str | None = None,
    alpha: Any = None,
    allow_pickle: bool = False,
    base: str | os.PathLike | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
) -> Checkpoint:
    """Load upstream ``.pth`` (or plain ``.safetensors``) files: a StyleVAR transformer and a VQ-VAE.

    ``vae_path`` may be omitted when ``model_path`` is an SFT trainer checkpoint (it embeds the
    VQ-VAE), when ``vae_ch160v4096z32.pth`` lies beside it, or when a ``base`` brings one. Alpha
    (not stored upstream) is ``alpha`` if given, else the variant's preset (``grpo`` -> paper,
    ``sft`` -> sft; the variant is guessed from the file name when not given), else the paper
    preset.

    GRPO training checkpoints (docs/upstream.md §6.6) load too:

    * LoRA-wrapped full state (``.base_weight`` / ``.lora_A`` ...): the adapters are baked in
      (``info["lora_baked"]``);
    * LoRA adapters only: applied to ``base``, the SFT checkpoint the run started from (any local
      checkpoint :func:`load_pretrained` reads; ``info["lora_merged"]``). The model
      configuration (apart from alpha) and, unless ``vae_path`` is given, the VQ-VAE come from
      the base.

    rank / alpha of the adapters: ``lora_rank`` / ``lora_alpha``, else the file's ``args``
    (``lora_rank``, ``lora_alpha``), else lora_A's rows and 2 * rank (upstream's 256 / 512).
    """
    return load_upstream_file(
        Path(model_path),
        vae_path,
        variant=variant,
        alpha=alpha,
        allow_pickle=allow_pickle,
        base=base,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        load_base=_base_loader(base, vae_path, allow_pickle, True),
    )


def _load_lora_dir(
    path: Path,
    *,
    base: str | os.PathLike | None,
    vae: str | os.PathLike | None,
    alpha: Any,
    allow_pickle: bool,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    need_vae: bool = True,
) -> Checkpoint:
    """Our LoRA directory merged into its base (``base``, else the ``info["base"]`` it recorded)."""
    cfg, lora_sd, meta = load_lora(path)
    recorded = meta["info"].get("base")
    if base is None and recorded:
        base = recorded
        if not Path(base).expanduser().is_absolute() and not Path(base).expanduser().exists():
            base = path / base  # recorded relative to the adapter directory
    if base is None:
        raise CheckpointError(
            f"{path} holds only LoRA adapters; pass --base SFT_CHECKPOINT (the checkpoint they were trained on)"
        )
    if lora_rank is not None and int(lora_rank) != cfg.rank:
        raise CheckpointError(
            f"{path} has rank {cfg.rank} (its {ADAPTER_CONFIG}), not {lora_rank}; drop --rank"
        )
    a = float(lora_alpha) if lora_alpha is not None else cfg.alpha
    base_ckpt = _load_base(base, vae, allow_pickle, need_vae)
    try:
        sd = apply_lora_to_plain_state(base_ckpt.model.state_dict(), lora_sd, cfg.rank, a)
    except CheckpointError as e:
        raise CheckpointError(f"{path} does not fit the base {base}: {e}") from None
    stored = meta.get("stylevar")
    try:
        scfg = StyleVARConfig.from_dict(stored) if stored else base_ckpt.model.config
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: invalid configuration ({short_error(e)})") from None
    if alpha is not None:  # the caller's value: its error is the caller's, not the file's
        scfg = dataclasses.replace(scfg, alpha=alpha_for_scales(alpha, scfg.num_scales))
    model = build_stylevar(scfg, sd, f"{path} merged into {base}")
    vae_model, vae_src = base_ckpt.vae, base_ckpt.info.get("vae_source", base_ckpt.info.get("source"))
    if vae is not None:
        vae_src = Path(vae)
        vae_model = vae_for(scfg, vae_src, read_vae(vae_src, allow_pickle), path)
    elif vae_model is not None:
        vae_model = vae_for(scfg, vae_src, None, path, vae_model)
    info = dict(meta["info"])
    info.update(
        {
            "source": str(path),
            "vae_source": None if vae_src is None else str(vae_src),
            "alpha_source": "explicit" if alpha is not None else "adapter config",
            "lora_merged": {"rank": cfg.rank, "alpha": a, "base": str(base), "modules": len(lora_sd) // 2},
        }
    )
    info.pop("base", None)
    logger.info(
        "merged %d LoRA adapters of %s into %s (rank %d, alpha %g)",
        len(lora_sd) // 2,
        path,
        base,
        cfg.rank,
        a,
    )
    return Checkpoint(
        model.float(), None if vae_model is None else vae_model.float(), base_ckpt.sampling, info
    )  # type: ignore[arg-type]


def _load_local(
    path: Path,
    *,
    vae: str | os.PathLike | None = None,
    variant: str | None = None,
    alpha: Any = None,
    allow_pickle: bool = False,
    base: str | os.PathLike | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    need_vae: bool = True,
) -> Checkpoint:
    """A local checkpoint: our directory, our LoRA directory, a folder of upstream files, or a file."""
    lora_kw = dict(
        base=base, allow_pickle=allow_pickle, lora_rank=lora_rank, lora_alpha=lora_alpha, need_vae=need_vae
    )
    if path.is_dir():
        if is_lora_dir(path):
            return _load_lora_dir(path, vae=vae, alpha=alpha, **lora_kw)  # type: ignore[arg-type]
        if (path / CONFIG_NAME).exists():
            return load_checkpoint_dir(path, alpha)
        name = VARIANT_FILES[variant or "grpo"]
        candidates = [path / name] if variant else [path / VARIANT_FILES["grpo"], path / VARIANT_FILES["sft"]]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            hint = ""
            model = _finished_model_in(path)
            if model is not None:  # a training run's folder (or the demo's): the model is final/
                hint = f"; did you mean {model} (the run's finished model)?"
            elif (path / "checkpoints" / "last.pt").is_file():
                hint = "; it looks like a training run that has not finished (no final/): resume it with --resume"
            raise CheckpointError(
                f"{path} holds neither a stylevar checkpoint ({CONFIG_NAME}) nor "
                f"{' / '.join(c.name for c in candidates)}{hint}"
            )
        vae_path = Path(vae) if vae else path / VAE_FILENAME
        vae_file = vae_path if vae_path.exists() or vae else None
        return load_upstream_file(
            found,
            vae_file,
            variant=variant or guess_variant(found),
            alpha=alpha,
            load_base=_base_loader(base, vae_file, allow_pickle, need_vae),
            **lora_kw,  # type: ignore[arg-type]
        )
    return load_upstream_file(
        path,
        vae,
        variant=variant,
        alpha=alpha,
        load_base=_base_loader(base, vae, allow_pickle, need_vae),
        **lora_kw,  # type: ignore[arg-type]
    )


def _finished_model_in(folder: Path) -> Path | None:
    """``folder/final`` or ``folder/<run>/final`` when it is a checkpoint in our format (not a tokenizer)."""
    for cand in [folder / "final", *sorted(folder.glob("*/final"))]:
        if not (cand / CONFIG_NAME).is_file():
            continue
        try:
            if read_json(cand / CONFIG_NAME).get("format") == CHECKPOINT.name:
                return cand
        except CheckpointError:  # an unreadable config is no hint; the caller's error stands
            continue
    return None


def _base_loader(
    base: str | os.PathLike | None, vae: str | os.PathLike | None, allow_pickle: bool, need_vae: bool
) -> Callable[[], Checkpoint] | None:
    """What LoRA-only adapters are applied to, loaded only if the file turns out to hold such adapters."""
    return None if base is None else partial(_load_base, base, vae, allow_pickle, need_vae)


def load_pretrained(
    pretrained: str | os.PathLike | None = None,
    *,
    vae: str | os.PathLike | None = None,
    variant: str | None = None,
    alpha: Any = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    allow_pickle: bool = False,
    base: str | os.PathLike | None = None,
) -> Checkpoint:
    """Load a StyleVAR checkpoint from a directory, files or a Hub repo id.

    Args:
        pretrained: one of
            * a directory in our format (``config.json`` + safetensors),
            * a directory holding upstream files (``vae_ch160v4096z32.pth`` and
              ``StyleVAR-GRPO.pth`` / ``StyleVAR_SFT.pth``),
            * a transformer file (``.pth`` / ``.safetensors``), with ``vae`` or the VQ-VAE beside it;
              GRPO training checkpoints too (LoRA-wrapped: baked; LoRA only: needs ``base``),
            * our LoRA directory (``adapter_config.json``): merged into ``base``, or into the
              base path it recorded as ``info["base"]``,
            * a Hub repo id (default ``Senfier-LiqiJing/StyleVAR``).
        vae: path of the VQ-VAE file (upstream files only).
        variant: ``grpo`` or ``sft``: which released transformer, and its default alpha.
        alpha: per-scale alpha values or a preset name; overrides the checkpoint's.
        revision: the Hub revision (branch, tag or commit), passed to ``huggingface_hub``.
        cache_dir: the Hugging Face cache folder, passed to ``huggingface_hub``.
        local_files_only: only files already in the cache (offline), passed to ``huggingface_hub``.
        allow_pickle: allow ``.pth`` files with arbitrary pickled objects (trusted files only).
        base: the local base (SFT) checkpoint that LoRA-only adapters apply to (ignored for full
            checkpoints). Its VQ-VAE is used unless ``vae`` is given.
    """
    if variant is not None and variant not in VARIANT_FILES:
        raise CheckpointError(f"unknown variant {variant!r}; choose one of {sorted(VARIANT_FILES)}")
    src, path = _local_or_repo_id(pretrained)
    if path is not None:
        return _load_local(path, vae=vae, variant=variant, alpha=alpha, allow_pickle=allow_pickle, base=base)
    if not local_files_only and not hub_host_resolves():
        logger.info("the Hugging Face Hub cannot be resolved; using the local cache only")
        local_files_only = True
    kw = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    try:
        cfg_file = hub_download(src, CONFIG_NAME, missing_ok=True, **kw)
    except HubUnreachableError:
        # Unreachable (or offline) and no config.json cached: the upstream files may still be in the
        # cache. Look only there from now on instead of waiting through the Hub client's retries again.
        cfg_file, kw["local_files_only"] = None, True
    if cfg_file is not None:
        directory = cfg_file.parent
        for name in (MODEL_WEIGHTS, VAE_WEIGHTS):
            hub_download(src, name, **kw)
        return load_checkpoint_dir(directory, alpha)
    variant = variant or "grpo"
    try:
        model_file = hub_download(src, VARIANT_FILES[variant], **kw)
        vae_file = Path(vae) if vae else hub_download(src, VAE_FILENAME, **kw)
    except HubUnreachableError:
        files = " ".join([VARIANT_FILES[variant]] + ([] if vae else [VAE_FILENAME]))
        local = src.rsplit("/", 1)[-1]
        raise HubUnreachableError(
            f"cannot get {files} of the Hub repo {src}: offline and not in the Hugging Face cache; on a "
            f"connected machine run 'hf download {src} {files} --local-dir {local}', copy the folder here "
            f"and pass --checkpoint {local}"
        ) from None
    ckpt = load_upstream(
        model_file, vae_file, variant=variant, alpha=alpha, allow_pickle=allow_pickle, base=base
    )
    ckpt.info["repo_id"] = src
    return ckpt


def _local_or_repo_id(pretrained: str | os.PathLike | None) -> tuple[str, Path | None]:
    """``(source, local path)`` when ``pretrained`` exists here, ``(repo id, None)`` when it can only be a
    Hub repo (``None``: the released weights); neither is a one-line :class:`CheckpointError`."""
    src = str(pretrained) if pretrained is not None else DEFAULT_REPO
    path = Path(src).expanduser()
    if path.exists():
        return src, path
    if not looks_like_repo_id(src):
        raise CheckpointError(
            f"checkpoint not found: {src} (neither a local path nor a Hub repo id like {DEFAULT_REPO})"
        )
    return src, None


def check_available(
    pretrained: str | os.PathLike | None = None,
    *,
    variant: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> None:
    """Fail now, with the one line :func:`load_pretrained` would give later, when ``pretrained`` cannot be
    loaded from here: a local path that does not exist, or a Hub repo whose files are neither in the
    cache nor (online) in the repo. Reads no weights: for checking several checkpoints before the first
    one is used (``stylevar evaluate``)."""
    src, path = _local_or_repo_id(pretrained)
    if path is not None:
        return
    kw = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    if hub_has_file(src, CONFIG_NAME, **kw) or hub_has_file(src, VARIANT_FILES[variant or "grpo"], **kw):
        return
    raise CheckpointError(
        f"checkpoint not found: {src} is no local path, and no Hub repo of that name is in the Hugging Face "
        f"cache{'' if local_files_only else ' or reachable'}; check the path (a Hub repo: 'hf download {src} "
        "--local-dir DIR' on a connected machine, then pass DIR)"
    )


def convert_upstream(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vae: str | os.PathLike | None = None,
    variant: str | None = None,
    alpha: Any = None,
    allow_pickle: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Convert upstream files (a StyleVAR ``.pth`` and its VQ-VAE) into our format in ``out_dir``."""
    ckpt = load_pretrained(model_path, vae=vae, variant=variant, alpha=alpha, allow_pickle=allow_pickle)
    return save_pretrained(out_dir, ckpt.model, ckpt.vae, sampling=ckpt.sampling, info=ckpt.info, dtype=dtype)


MERGE_FORMATS = ("stylevar", "upstream")


def merge_lora_checkpoint(
    lora_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    base: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    fmt: str = "stylevar",
    rank: int | None = None,
    alpha: float | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Merge GRPO LoRA adapters into plain weights and write them (``stylevar merge-lora``).

    ``lora_path`` is a GRPO checkpoint of upstream's (``grpo_*.pth``: LoRA only, which needs
    ``base``; LoRA-wrapped full state; or plain, full-parameter mode) or our LoRA directory.
    ``rank`` / ``alpha`` override the adapters' (default: the file's ``args``, else lora_A's rows
    and 2 * rank). The merged state is checked by a strict load into a fresh plain model and for
    finite values, then written as

    * ``fmt="stylevar"``: our checkpoint directory ``out`` (with the VQ-VAE: ``vae``, the base's,
      or the one beside the checkpoint), provenance in ``info``;
    * ``fmt="upstream"``: ``{'model': plain_state_dict, 'note': str}`` to the file ``out``, like
      upstream's ``merge_grpo_lora.py`` (no VQ-VAE needed).

    Returns the path written.
    """
    if fmt not in MERGE_FORMATS:
        raise ConfigError(f"unknown output format {fmt!r}; choose one of {list(MERGE_FORMATS)}")
    src = Path(lora_path).expanduser()
    if not src.exists():
        raise CheckpointError(f"checkpoint not found: {src}")
    out_path = Path(out).expanduser()
    if fmt == "upstream" and out_path.is_dir():
        raise CheckpointError(
            f"{out_path} is a directory; --format upstream writes one file (e.g. {out_path}/merged.pth)"
        )
    ckpt = _load_local(
        src,
        vae=vae,
        allow_pickle=allow_pickle,
        base=base,
        lora_rank=rank,
        lora_alpha=alpha,
        need_vae=fmt == "stylevar",
    )
    plain = {k: v.detach() for k, v in ckpt.model.state_dict().items()}
    leftover = [k for k in plain if ".lora_" in k or k.endswith((".base_weight", ".base_bias"))]
    if leftover:
        raise CheckpointError(f"{src}: the merged state still has LoRA keys (e.g. {leftover[0]})")
    # strict round trip; non-finite merged weights were refused when they were built (build_stylevar)
    build_stylevar(ckpt.model.config, plain, f"{src} (merged)")
    merged = {k: v for k, v in ckpt.info.items() if k in ("lora_merged", "lora_baked")}
    note = f"merged by stylevar merge-lora from {src}"
    for k, v in merged.items():
        note += f"; {k.replace('_', ' ')}: " + ", ".join(f"{a} {b}" for a, b in v.items())
    if not merged:
        note += " (a plain checkpoint: nothing to merge)"
    logger.info(note)
    if fmt == "upstream":
        return atomic_save({"model": plain, "note": note}, out_path)
    info = dict(ckpt.info)
    info["merge_note"] = note
    return save_pretrained(out_path, ckpt.model, ckpt.vae, sampling=ckpt.sampling, info=info)
