"""Initialising StyleVAR from a vanilla VAR checkpoint (``var_d16/d20/d24/d30.pth``), as the paper describes.

Mapping (docs/upstream.md §4): VAR's self-attention ``mat_qkv`` initialises **both** the guide and
the target projections (``mat_qkv_guide``, ``mat_qkv_target``), ``q_bias``/``v_bias`` both
streams' biases; every other key StyleVAR shares with VAR is copied (embeddings, positions,
``scale_mul``, output projections, FFNs, AdaLN, head); ``class_emb`` and ``zero_k_bias`` are
dropped. The published launcher bypassed this mapping by accident (docs/upstream.md B7: it loaded VAR with
``strict=False`` so the attention stayed random); here the mapping always runs and every key is
accounted for in an :class:`InitReport`.

The ResNet-18 encoders start from torchvision's ImageNet weights when given (not re-initialised
afterwards, docs/upstream.md B4), and the config then records ``encoder_input="imagenet"`` so the encoders see
the normalisation they were trained with; released checkpoints keep ``raw``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import StyleVARConfig
from ..errors import CheckpointError
from ..io import classify, extract_state_dict, infer_stylevar_config, read_file
from ..models import StyleVAR
from ..models.encoders import load_encoder_weights

_DUPLICATED = {
    "attn.mat_qkv.weight": ("attn.mat_qkv_guide.weight", "attn.mat_qkv_target.weight"),
    "attn.q_bias": ("attn.q_bias_guide", "attn.q_bias_target"),
    "attn.v_bias": ("attn.v_bias_guide", "attn.v_bias_target"),
}
_DROPPED_KEY, _DROPPED_SUFFIX = "class_emb.weight", ".attn.zero_k_bias"


@dataclass
class InitReport:
    """Which StyleVAR keys came from where."""

    copied: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)  # StyleVAR keys filled from a duplicated VAR key
    dropped: list[str] = field(default_factory=list)  # VAR keys with no StyleVAR counterpart
    kept_init: list[str] = field(default_factory=list)  # StyleVAR keys left at their initialisation
    resnet: str = "random"

    def summary(self) -> str:
        return (
            f"{len(self.copied)} copied, {len(self.duplicated)} from duplicated attention keys, "
            f"{len(self.dropped)} VAR keys dropped, {len(self.kept_init)} left at init; ResNets: {self.resnet}"
        )


def var_config_from_state_dict(sd: Mapping[str, torch.Tensor], **overrides) -> StyleVARConfig:
    """The StyleVAR config matching a VAR state dict's depth, width, heads, vocabulary and scales."""
    if classify(sd) != "var":
        raise CheckpointError("not a vanilla VAR state dict (no blocks.*.attn.mat_qkv.weight / class_emb)")
    cfg = infer_stylevar_config(sd, alpha=overrides.pop("alpha", "paper"))
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def var_to_stylevar(
    var_sd: Mapping[str, torch.Tensor], model: StyleVAR
) -> tuple[dict[str, torch.Tensor], InitReport]:
    """StyleVAR tensors initialised from ``var_sd`` (only keys StyleVAR has), and the report."""
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    report = InitReport()
    for k, v in var_sd.items():
        src = next((name for name in _DUPLICATED if k.endswith("." + name)), None)
        if src is not None:
            block = k[: -len(src)]
            for name in _DUPLICATED[src]:
                out[block + name] = v
                report.duplicated.append(block + name)
            continue
        if k == _DROPPED_KEY or k.endswith(_DROPPED_SUFFIX):
            report.dropped.append(k)
            continue
        if k in target:
            out[k] = v
            report.copied.append(k)
        elif k.startswith("blocks."):
            raise CheckpointError(
                f"VAR has {k} but this StyleVAR has fewer blocks; build it with var_config_from_state_dict"
            )
        else:
            report.dropped.append(k)
    for k, v in out.items():
        if k not in target:
            raise CheckpointError(f"VAR key maps to {k}, which this StyleVAR lacks (another depth?)")
        if tuple(target[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"VAR tensor for {k} has shape {tuple(v.shape)}, StyleVAR expects {tuple(target[k].shape)}; "
                "build the model with var_config_from_state_dict (depth/width/vocabulary must match)"
            )
    report.kept_init = sorted(set(target) - set(out))
    missing_blocks = [k for k in report.kept_init if k.startswith("blocks.") and "zero_k_bias" not in k]
    if missing_blocks:
        raise CheckpointError(
            f"this StyleVAR has {missing_blocks[0]} but the VAR checkpoint does not (fewer blocks); "
            "build it with var_config_from_state_dict"
        )
    return out, report


def load_resnet18_weights(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """torchvision ResNet-18 ImageNet weights as our encoder's keys (``0.weight`` ... ``7.1.bn2.*``).

    ``path``: a torchvision ``resnet18-f37072fd.pth`` (or any resnet18 state dict); None looks in
    torch hub's cache and downloads there when allowed.
    """
    if path is None:
        from torchvision.models import ResNet18_Weights

        try:
            sd = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as e:  # offline, no cache
            raise CheckpointError(
                f"cannot get torchvision's ResNet-18 ImageNet weights ({type(e).__name__}); download "
                f"{ResNet18_Weights.IMAGENET1K_V1.url} and pass its path"
            ) from None
    else:
        sd = extract_state_dict(read_file(path), path)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    out = {}
    for k, v in sd.items():
        head = k.split(".", 1)[0]
        if head in names:
            out[f"{names.index(head)}.{k.split('.', 1)[1]}"] = v
    if "0.weight" not in out:
        raise CheckpointError(f"{path}: not a ResNet-18 state dict (no conv1.weight)")
    return out


@torch.no_grad()
def init_from_var(
    model: StyleVAR,
    var: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    resnet_weights: str | os.PathLike | Mapping[str, torch.Tensor] | bool | None = None,
    allow_pickle: bool = False,
) -> InitReport:
    """Fill ``model`` from a vanilla VAR checkpoint (path or state dict), in place.

    Args:
        resnet_weights: ImageNet ResNet-18 weights for both encoders: a path, a state dict, or
            True for torchvision's cache/download; None/False leaves them at their initialisation.
            When given, ``model.config.encoder_input`` becomes ``imagenet``.
    """
    if isinstance(var, Mapping):
        var_sd = dict(var)
    else:
        var_sd = extract_state_dict(read_file(var, allow_pickle=allow_pickle), var)
    if classify(var_sd) != "var":
        raise CheckpointError(
            f"{var if not isinstance(var, Mapping) else 'state dict'}: not a vanilla VAR checkpoint"
        )
    sd, report = var_to_stylevar(var_sd, model)
    model.load_state_dict(sd, strict=False)
    if resnet_weights:
        if isinstance(resnet_weights, Mapping):
            rsd = dict(resnet_weights)
        else:
            rsd = load_resnet18_weights(None if resnet_weights is True else Path(resnet_weights))
        load_encoder_weights(model, rsd)
        report.resnet = "imagenet"
        report.kept_init = [
            k for k in report.kept_init if not k.startswith(("style_encoder.", "content_encoder."))
        ]
    return report
