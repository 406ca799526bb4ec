"""InceptionFeatures (perceptual/inception.py): torchvision Inception-v3 pool features, on CPU with random
weights in torchvision's released key layout (fc and AuxLogits included) saved by the test."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from helpers import one_thread, rand_images  # noqa: F401  (one_thread: an autouse module fixture)
from stylevar import perceptual as P
from stylevar.errors import CheckpointError, MissingWeightsError, StyleVARError
from stylevar.perceptual import frechet_distance

FILE = "inception_v3_google-0cc3c7bd.pth"
URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"


def _inception(**kw):
    from torchvision.models import inception_v3

    with torch.device("meta"):
        model = inception_v3(weights=None, init_weights=False, **kw)
    return model.to_empty(device="cpu")


@pytest.fixture(scope="module")
def weights(inception_file):
    """Random weights in the released file's layout (conftest: AuxLogits.* and fc.* present)."""
    return inception_file


@pytest.fixture(scope="module")
def features(weights):
    return P.InceptionFeatures(weights.parent)  # a folder holding the file


def test_features_shape_frozen_and_fid(features):
    x = rand_images(2, 3, 64, 80, seed=1)
    f = features(x)
    assert f.shape == (2, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert (f >= 0).all() and f.std() > 0  # average of ReLU outputs
    assert all(not p.requires_grad for p in features.parameters())
    features.train()
    assert not features.training and not features.model.training
    assert torch.allclose(features(x[:1]), f[:1], atol=1e-5)  # batch-independent (BN in eval mode)
    assert abs(frechet_distance(f, f)) < 1e-6 and frechet_distance(f, f.flip(1)) > 0


def test_2x_minus_1_equals_torchvision_transform_input(features, weights):
    """torchvision's transform_input=True on ImageNet-normalised input == our 2x − 1 on [0, 1] input."""
    ref = _inception(aux_logits=False, transform_input=True)
    ref.fc = torch.nn.Identity()
    sd = {k: v for k, v in torch.load(weights, weights_only=True).items() if not k.startswith(("fc.", "Aux"))}
    ref.load_state_dict(sd)
    ref.eval()
    x = rand_images(1, 3, 120, 90, seed=3)
    resized = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=False)
    mean, std = torch.tensor(P.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(P.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref((resized - mean) / std)
        ours = features(x)
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    # already 299x299: no resize
    assert torch.equal(features.preprocess(resized), resized * 2 - 1)


def test_weights_as_state_dict_and_safetensors(features, weights, tmp_path):
    from safetensors.torch import save_file

    sd = torch.load(weights, weights_only=True)
    x = rand_images(1, 3, 32, 32, seed=4)
    expected = features(x)
    assert torch.allclose(P.InceptionFeatures(sd)(x), expected, atol=1e-6)
    st = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items() if not k.startswith(("fc.", "AuxLogits."))}, str(st))
    assert torch.allclose(P.InceptionFeatures(st)(x), expected, atol=1e-6)


def test_bad_and_missing_weights(weights, tmp_path, monkeypatch):
    sd = torch.load(weights, weights_only=True)
    broken = {k: v for k, v in sd.items() if k != "Mixed_7c.branch_pool.conv.weight"}
    with pytest.raises(CheckpointError) as e:
        P.InceptionFeatures(broken)
    msg = str(e.value)
    assert "\n" not in msg and "Inception3" in msg and "Mixed_7c.branch_pool.conv.weight" in msg
    with pytest.raises(CheckpointError):
        P.InceptionFeatures({**sd, "extra.weight": torch.zeros(1)})
    # a folder without the file
    with pytest.raises(MissingWeightsError) as e:
        P.InceptionFeatures(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and FILE in msg and URL in msg and str(tmp_path) in msg
    # no path: torch hub's cache (empty here); nothing downloaded unless asked
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError) as e:
        P.InceptionFeatures()
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "hub" / "checkpoints") in msg and "download=True" in msg
    assert isinstance(e.value, StyleVARError) and not (tmp_path / "hub").exists()
