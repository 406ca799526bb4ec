"""Shared test helpers: deterministic weights, tiny configurations, upstream-format files."""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from stylevar.config import StyleVARConfig, VQVAEConfig
from stylevar.models import VQVAE, StyleVAR

REPO_ROOT = Path(__file__).resolve().parents[1]


def fill_weights(module: torch.nn.Module, prefix: str) -> None:
    """Fill every parameter and BatchNorm running stat from its key name (the parity README's rule).

    z = RandomState(crc32(prefix + key)).standard_normal(shape); scaled per kind of tensor.
    """
    sd = module.state_dict()
    params = {n for n, _ in module.named_parameters()}
    new = {}
    for k, t in sd.items():
        leaf = k.split(".")[-1]
        if k not in params and leaf not in ("running_mean", "running_var"):
            continue
        full = prefix + k
        z = np.random.RandomState(zlib.crc32(full.encode())).standard_normal(tuple(t.shape))
        if leaf == "running_var":
            v = np.exp(0.2 * z)
        elif leaf == "running_mean":
            v = 0.1 * z
        elif leaf == "scale_mul_1H11":
            v = math.log(4) + 0.1 * z
        elif any(s in full for s in ("pos_start", "pos_1LC", "lvl_embed")):
            v = 0.5 * z
        elif full.endswith("quantize.embedding.weight"):
            v = z
        elif t.ndim >= 2:
            v = z / math.sqrt(np.prod(t.shape[1:]))
        elif leaf == "weight":
            v = 1 + 0.1 * z
        else:
            v = 0.1 * z
        new[k] = torch.from_numpy(np.asarray(v, dtype=np.float32).reshape(tuple(t.shape)))
    module.load_state_dict(new, strict=False)


def tiny_configs(
    patch_nums=(1, 2, 3, 4),
    depth=2,
    embed_dim=64,
    num_heads=2,
    vocab=64,
    z=4,
    vae_ch=32,
    share=4,
    style_enc_dim=64,
    **kw,
) -> tuple[StyleVARConfig, VQVAEConfig]:
    """Small configs. The encoders are narrow (64-d, 0.2 M parameters each instead of ResNet-18's
    11 M): full-width ones made every checkpoint a test writes 90-270 MB."""
    vcfg = VQVAEConfig(
        vocab_size=vocab, z_channels=z, ch=vae_ch, share_quant_resi=share, patch_nums=patch_nums
    )
    scfg = StyleVARConfig(
        depth=depth,
        embed_dim=embed_dim,
        num_heads=num_heads,
        vocab_size=vocab,
        z_channels=z,
        patch_nums=patch_nums,
        style_enc_dim=style_enc_dim,
        **kw,
    )
    return scfg, vcfg


def tiny_models(tag: str = "tiny", **kw) -> tuple[StyleVAR, VQVAE]:
    scfg, vcfg = tiny_configs(**kw)
    model, vae = StyleVAR(scfg), VQVAE(vcfg)
    fill_weights(model, f"{tag}.var.")
    fill_weights(vae, f"{tag}.vae.")
    return model.eval(), vae.eval()


def smooth_images(batch: int, res: int, seed: int) -> torch.Tensor:
    """Smooth random images in [-1, 1], (B, 3, res, res)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 4, 4, generator=g) * 2 - 1
    img = torch.nn.functional.interpolate(low, size=(res, res), mode="bicubic", align_corners=False)
    return (img + 0.1 * torch.randn(batch, 3, res, res, generator=g)).clamp(-1, 1)


def write_smooth_pngs(folder: Path, sizes, seed: int, stem: str = "pic") -> list[Path]:
    """``folder/<stem><i>.png``: smooth random pictures (from ``smooth_images``, seed ``seed + i``)
    resized to each of ``sizes`` (width, height)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, size in enumerate(sizes):
        a = ((smooth_images(1, 96, seed + i)[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
        p = folder / f"{stem}{i}.png"
        Image.fromarray(a).resize(size).save(p)
        out.append(p)
    return out


def write_upstream(
    model: StyleVAR, vae: VQVAE, folder: Path, model_name="StyleVAR-GRPO.pth", wrap="model"
) -> tuple[Path, Path]:
    """Write the pair the way upstream releases them: {'model': state_dict} and a plain VQ-VAE state dict."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    obj = {wrap: sd} if wrap else sd
    mp, vp = folder / model_name, folder / "vae_ch160v4096z32.pth"
    torch.save(obj, mp)
    torch.save(vae.state_dict(), vp)
    return mp, vp


def rand_images(*shape: int, seed: int = 0) -> torch.Tensor:
    """Uniform random images in [0, 1] of ``shape`` from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for a test module that imports this fixture: on a 2-core machine shared with
    another test run, two OpenMP threads spin against each other and conv-heavy forwards get 10x slower;
    one thread costs less than 2x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchrun_env() -> dict[str, str]:
    """The environment for ``torchrun`` test processes: one thread each (2 cores), and Python's
    fault handler on, so that a rank dying on a signal (an abort in C++) prints where it was."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")


def random_inception_state(sd: dict, seed: int) -> dict:
    """Random values for every tensor of an Inception-v3 state dict (``num_batches_tracked`` dropped, as in
    the released files), scaled so activations stay O(1) through its 94 convolutions."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith("bn.weight"):
            out[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        elif v.ndim > 1:
            out[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        else:
            out[k] = 0.01 * torch.randn(v.shape, generator=g)
    return out


def torchvision_inception_state(seed: int) -> dict:
    """Random weights in the key layout of torchvision's inception_v3_google-0cc3c7bd.pth (heads included)."""
    from torchvision.models import inception_v3

    with torch.device("meta"):
        model = inception_v3(weights=None, init_weights=False, aux_logits=True)
    return random_inception_state(model.to_empty(device="cpu").state_dict(), seed)


def art_inception_state(seed: int) -> dict:
    """Random weights in the key layout of ArtFID's art_inception.pth: torchvision's Inception3 trunk and
    two heads, fc1/fc2 and AuxLogits1/AuxLogits2 (the art-fid package's inception.py)."""
    out = {}
    for k, v in torchvision_inception_state(seed).items():
        if k.startswith(("fc.", "AuxLogits.")):
            head, rest = k.split(".", 1)
            out[f"{head}1.{rest}"], out[f"{head}2.{rest}"] = v, v.clone()
        else:
            out[k] = v
    return out
