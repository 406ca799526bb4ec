from __future__ import annotations

import pytest
import torch

from helpers import tiny_models, write_upstream


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny():
    """A tiny StyleVAR (depth 2, C 64, patch_nums 1-4, 64x64 images) and its VQ-VAE."""
    return tiny_models()


@pytest.fixture(scope="session")
def upstream_dir(tmp_path_factory, tiny):
    """Upstream-format files of the tiny model: StyleVAR-GRPO.pth ({'model': sd}) + vae_ch160v4096z32.pth."""
    folder = tmp_path_factory.mktemp("upstream")
    write_upstream(*tiny, folder)
    return folder


@pytest.fixture(scope="session")
def ours_dir(tmp_path_factory, tiny):
    """The tiny model in our format (config.json + safetensors)."""
    from stylevar.checkpoints import save_pretrained

    out = tmp_path_factory.mktemp("ours") / "ckpt"
    save_pretrained(out, *tiny, info={"variant": "test"})
    return out
