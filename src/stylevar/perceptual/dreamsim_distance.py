"""DreamSim (``dreamsim`` package, DINO ViT-B/16 + LoRA), built from local files without GitHub access.
Conventions: :mod:`stylevar.perceptual.common`.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from unittest import mock

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError, ConfigError, MissingWeightsError
from ..io.safe import read_state_dict, torch_load, why
from .common import (
    Frozen,
    PathLike,
    check_images,
    hub_checkpoints_dir,
    image_pair,
    require,
    resolve_cache_dir,
)

_DREAMSIM_FILES = {  # what the dreamsim package's checkpoint zip unpacks to, per model type
    "dino_vitb16": ("dino_vitb16_pretrain.pth", "dino_vitb16_single_lora"),
    "clip_vitb32": ("clip_vitb32_pretrain.pth.tar", "clip_vitb32_single_lora"),
    "open_clip_vitb32": ("open_clip_vitb32_pretrain.pth.tar", "open_clip_vitb32_single_lora"),
    "ensemble": (
        "dino_vitb16_pretrain.pth",
        "open_clip_vitb16_pretrain.pth.tar",
        "clip_vitb16_pretrain.pth.tar",
        "ensemble_lora",
    ),
}
_DINO_BACKBONE_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
_DINO_BACKBONE_FILE = _DINO_BACKBONE_URL.rsplit("/", 1)[-1]
_DREAMSIM_ZIP_URL = (
    "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_{}_checkpoint.zip"
)


def _dino_backbone_path(weights_dir: Path) -> Path | None:
    """The DINO ViT-B/16 backbone that ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')``
    would load: ``<dir>/checkpoints/`` (where dreamsim's torch.hub cache puts it), ``<dir>/``, or
    torch hub's own checkpoint cache."""
    for p in (
        weights_dir / "checkpoints" / _DINO_BACKBONE_FILE,
        weights_dir / _DINO_BACKBONE_FILE,
        hub_checkpoints_dir() / _DINO_BACKBONE_FILE,
    ):
        if p.is_file():
            return p
    return None


def _missing_dreamsim_files(weights_dir: Path, dreamsim_type: str) -> list[str]:
    missing = []
    for name in _DREAMSIM_FILES[dreamsim_type]:
        p = weights_dir / name
        ok = (p / "adapter_config.json").is_file() if name.endswith("_lora") else p.is_file()
        if not ok:
            missing.append(name + ("/" if name.endswith("_lora") else ""))
    return missing


def _vit_from_state_dict(sd: Mapping[str, torch.Tensor]) -> nn.Module:
    """dreamsim's DINO VisionTransformer sized from a DINO backbone state dict (ViT-B/16: 768 wide,
    12 blocks, 12 heads of 64), loaded strictly: the model ``torch.hub.load('facebookresearch/dino:main',
    'dino_vitb16')`` builds, without fetching the hub repository."""
    from functools import partial

    from dreamsim.feature_extraction.vision_transformer import VisionTransformer

    try:
        dim = sd["cls_token"].shape[-1]
        patch = sd["patch_embed.proj.weight"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
        grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"not a DINO ViT backbone state dict (missing {why(e)})") from None
    vit = VisionTransformer(
        img_size=[grid * patch],
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // 64),
        mlp_ratio=hidden / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_classes=0,
    )
    try:
        vit.load_state_dict(dict(sd), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the DINO backbone does not fit ({why(e)})") from None
    return vit


def _dino_head(weights_dir: Path) -> nn.Module:
    """The DINO projection head that dreamsim attaches (from ``dino_vitb16_pretrain.pth``'s student);
    unused by the CLS features but part of the module tree the LoRA adapter was saved against."""
    from dreamsim.feature_extraction.vision_transformer import DINOHead

    path = weights_dir / "dino_vitb16_pretrain.pth"
    try:
        sd = torch_load(path, weights_only=True)["student"]
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read DreamSim's DINO head ({why(e)})") from None
    p = "module.head."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm deprecation
        head = DINOHead(
            sd[p + "mlp.0.weight"].shape[1],
            sd[p + "last_layer.weight"].shape[0],
            hidden_dim=sd[p + "mlp.0.weight"].shape[0],
            bottleneck_dim=sd[p + "mlp.4.weight"].shape[0],
        )
    with torch.no_grad():
        for i in (0, 2, 4):
            head.mlp[i].weight.copy_(sd[f"{p}mlp.{i}.weight"])
            head.mlp[i].bias.copy_(sd[f"{p}mlp.{i}.bias"])
    return head


@contextlib.contextmanager
def _local_dino_builder():
    """While active, dreamsim builds its DINO ViT-B/16 from local files (see :func:`_dino_backbone_path`)
    instead of ``torch.hub.load`` from GitHub; torch hub's folder is left as it was."""
    from dreamsim.feature_extraction import extractor

    original = extractor.ViTExtractor.create_model

    def create_model(model_type: str, load_dir: str = "./models"):
        if model_type != "dino_vitb16":
            return original(model_type, load_dir)
        folder = Path(load_dir)
        path = _dino_backbone_path(folder)
        if path is None:
            raise MissingWeightsError(f"DINO backbone {_DINO_BACKBONE_FILE} not found under {folder}")
        return _vit_from_state_dict(read_state_dict(path)), _dino_head(folder)

    saved_hub_dir = torch.hub._hub_dir
    try:
        with mock.patch.object(extractor.ViTExtractor, "create_model", staticmethod(create_model)):
            yield
    finally:
        torch.hub._hub_dir = saved_hub_dir


def _fetch_dreamsim(weights_dir: Path, dreamsim_type: str, need_zip: bool, need_backbone: bool) -> None:
    try:
        weights_dir.mkdir(parents=True, exist_ok=True)
        if need_zip:
            from dreamsim.model import download_weights

            with contextlib.redirect_stdout(io.StringIO()):
                download_weights(cache_dir=str(weights_dir), dreamsim_type=dreamsim_type)
        if need_backbone:
            (weights_dir / "checkpoints").mkdir(exist_ok=True)
            torch.hub.download_url_to_file(
                _DINO_BACKBONE_URL, str(weights_dir / "checkpoints" / _DINO_BACKBONE_FILE), progress=False
            )
    except Exception as e:
        raise MissingWeightsError(
            f"cannot download the DreamSim weights into {weights_dir} ({why(e)}); "
            "fetch them on a connected machine (see DreamSimDistance)"
        ) from None


class DreamSimDistance(Frozen):
    """DreamSim perceptual distance, (N,), lower is closer (docs/upstream.md §6.3, §7.1).

    Upstream's use: ``dreamsim(pretrained=True, dreamsim_type='dino_vitb16')``; both images resized to
    224×224 by ``F.interpolate(bilinear, align_corners=False)`` (no antialias) when not already 224;
    the model normalises with ImageNet mean/std, takes the DINO ViT-B/16 (+LoRA) CLS token of block 12,
    centres and L2-normalises it, and returns 1 − cosine.

    ``weights_dir`` (default ``resolve_cache_dir('dreamsim')``, i.e. ``$STYLEVAR_CACHE/dreamsim`` or
    ``~/.cache/stylevar/dreamsim``) is a dreamsim ``cache_dir``; for ``dino_vitb16`` it holds

    * ``dino_vitb16_pretrain.pth`` and ``dino_vitb16_single_lora/`` — unzipped from
      https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_dino_vitb16_checkpoint.zip
    * ``checkpoints/dino_vitbase16_pretrain.pth`` — the DINO backbone,
      https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth (also found in
      ``<dir>/`` or torch hub's checkpoint cache).

    The backbone is built from that file with dreamsim's own ViT class, so no GitHub access (dreamsim's
    ``torch.hub.load('facebookresearch/dino:main')``) is needed. ``download=True`` fetches what is
    missing. The other dreamsim types (``ensemble``, ``clip_vitb32``, ``open_clip_vitb32``) load from
    their unzipped files the same way (untested here).
    """

    SIZE = 224

    def __init__(
        self,
        weights_dir: PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        dreamsim_type: str = "dino_vitb16",
        download: bool = False,
    ):
        super().__init__()
        if dreamsim_type not in _DREAMSIM_FILES:
            raise ConfigError(
                f"unsupported dreamsim_type {dreamsim_type!r}; valid: {', '.join(_DREAMSIM_FILES)}"
            )
        dreamsim = require("dreamsim", "DreamSim")
        folder = Path(weights_dir).expanduser() if weights_dir is not None else resolve_cache_dir("dreamsim")
        missing = _missing_dreamsim_files(folder, dreamsim_type)
        needs_dino = "dino_vitb16_pretrain.pth" in _DREAMSIM_FILES[dreamsim_type]
        no_backbone = needs_dino and _dino_backbone_path(folder) is None
        if (missing or no_backbone) and download:
            _fetch_dreamsim(folder, dreamsim_type, bool(missing), no_backbone)
            missing = _missing_dreamsim_files(folder, dreamsim_type)
            no_backbone = needs_dino and _dino_backbone_path(folder) is None
        if missing or no_backbone:
            parts = []
            if missing:
                known = getattr(getattr(dreamsim, "config", None), "dreamsim_weights", {})
                zip_url = known.get(dreamsim_type) or _DREAMSIM_ZIP_URL.format(dreamsim_type)
                parts.append(f"{', '.join(missing)} (unzip {zip_url} there)")
            if no_backbone:
                parts.append(f"checkpoints/{_DINO_BACKBONE_FILE} (from {_DINO_BACKBONE_URL})")
            raise MissingWeightsError(
                f"DreamSim ({dreamsim_type}) weights missing in {folder}: {'; '.join(parts)}; download them on "
                "a connected machine and put them there (or allow downloading: download=True)"
            )
        try:
            with _local_dino_builder(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, _ = dreamsim.dreamsim(
                    pretrained=True, device="cpu", cache_dir=str(folder), dreamsim_type=dreamsim_type
                )
        except (MissingWeightsError, CheckpointError):
            raise
        except Exception as e:
            raise CheckpointError(f"{folder}: cannot build DreamSim ({dreamsim_type}): {why(e)}") from None
        self.dreamsim_type = dreamsim_type
        self.weights_dir = folder
        self.model = model
        self._freeze()
        self.to(device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Upstream's resize: bilinear to 224×224 (align_corners=False, no antialias) unless already so."""
        x = check_images(images)
        if x.shape[-2:] != (self.SIZE, self.SIZE):
            x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear", align_corners=False)
        return x

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = image_pair(a, b, same_size=False)
        return self.model(self.preprocess(a), self.preprocess(b)).reshape(a.shape[0]).float()
