"""GRPO rewards (training/rewards.py) and the perceptual models behind them (stylevar.perceptual).

Everything runs on CPU with tiny self-made weights and no network. The weight-free rewards, the spec
parser, VGG-19 Gram/content losses and every missing-package/missing-weights error run always; the
DreamSim, CLIP and LPIPS parts run when their optional package (``stylevar[rewards]``) is installed.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import pytest
import torch

from helpers import rand_images
from stylevar import perceptual as P
from stylevar.errors import (
    CheckpointError,
    ConfigError,
    MissingDependencyError,
    MissingWeightsError,
    StyleVARError,
)
from stylevar.training import rewards as R
from stylevar.training.rewards import RewardBatch

SRC = Path(__file__).resolve().parents[1] / "src" / "stylevar"
OPTIONAL = ("dreamsim", "transformers", "lpips", "peft", "open_clip", "timm")


@pytest.fixture(scope="module")
def trio():
    """target, content, style: (4, 3, 32, 32) in [0, 1]."""
    return (
        rand_images(4, 3, 32, 32, seed=1),
        rand_images(4, 3, 32, 32, seed=2),
        rand_images(4, 3, 32, 32, seed=3),
    )


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and msg, msg
    return msg


# ---------------------------------------------------------------------------------------------------
# Weight-free rewards


def test_identical_images_give_the_best_value(trio):
    t, _, _ = trio
    b = RewardBatch(target=t)
    assert torch.allclose(R.ssim_reward(t, b), torch.ones(4), atol=1e-6)
    assert torch.equal(R.pixel_reward(t, b), torch.zeros(4))
    assert torch.equal(R.pixel_reward(t, b, mse=True), torch.zeros(4))
    for out in (R.ssim_reward(t, b), R.pixel_reward(t, b), R.tv_reward(t, b)):
        assert out.shape == (4,) and out.dtype == torch.float32
    assert torch.equal(R.tv_reward(torch.full((2, 3, 8, 8), 0.3)), torch.zeros(2))


def test_closer_images_score_higher(trio):
    t, _, _ = trio
    b = RewardBatch(target=t)
    noise = rand_images(4, 3, 32, 32, seed=9) - 0.5
    near, far = (t + 0.05 * noise).clamp(0, 1), (t + 0.6 * noise).clamp(0, 1)
    for fn in (R.ssim_reward, R.pixel_reward, functools.partial(R.pixel_reward, mse=True)):
        assert (fn(near, b) > fn(far, b)).all()
        assert (fn(near, b) < fn(t, b) + 1e-6).all()
    # TV: a smoother image scores higher; the value is −(mean|Δh| + mean|Δw|)
    x = rand_images(2, 3, 16, 16, seed=4)
    ref = -(x.diff(dim=2).abs().mean(dim=(1, 2, 3)) + x.diff(dim=3).abs().mean(dim=(1, 2, 3)))
    assert torch.allclose(R.tv_reward(x), ref, atol=1e-7)
    assert (R.tv_reward(x * 0.5) > R.tv_reward(x)).all()


def test_spec_sign_flip_weights_and_per_term_logging(trio):
    t, c, s = trio
    x = rand_images(4, 3, 32, 32, seed=5)
    b = RewardBatch(target=t, content=c, style=s)
    flipped = R.build_reward("pixel:-1")
    assert torch.allclose(flipped(x, b), -R.pixel_reward(x, b))
    assert (flipped(x, b) > 0).all()

    reward = R.build_reward(" ssim:2, pixel:0.5 ,tv:0.01,ssim@content:-0.25,mse ")
    total = reward(x, b)
    parts = {
        "ssim": R.ssim_reward(x, b),
        "pixel": R.pixel_reward(x, b),
        "tv": R.tv_reward(x),
        "ssim@content": R.ssim_reward(x, b, ref="content"),
        "mse": R.pixel_reward(x, b, mse=True),
    }
    assert reward.weights == {"ssim": 2.0, "pixel": 0.5, "tv": 0.01, "ssim@content": -0.25, "mse": 1.0}
    expect = sum(reward.weights[k] * v for k, v in parts.items())
    assert total.shape == (4,) and total.dtype == torch.float32
    assert torch.allclose(total, expect, atol=1e-6)
    assert set(reward.last_terms) == set(parts)
    for k, v in parts.items():
        assert torch.allclose(reward.last_terms[k], v, atol=1e-7)
        assert not reward.last_terms[k].requires_grad
        assert reward.term_means()[k] == pytest.approx(float(v.mean()), abs=1e-6)
    assert "2*ssim" in repr(reward)

    # WeightedReward directly: (weight, fn) and (name, weight, fn); repeated names are numbered
    w = R.WeightedReward([(1.0, R.tv_reward), ("mine", 3, R.ssim_reward), (2, R.tv_reward)])
    assert list(w.weights) == ["tv", "mine", "tv#2"]
    assert torch.allclose(w(x, b), 3 * R.tv_reward(x) + 3 * R.ssim_reward(x, b), atol=1e-6)
    with pytest.raises(ConfigError):
        R.WeightedReward([])


def test_gradients_reach_the_generated_image(trio):
    t, c, s = trio
    b = RewardBatch(target=t, content=c, style=s)
    reward = R.build_reward("ssim:1,pixel:1,mse:1,tv:0.1,ssim@content:0.5,pixel@style:0.2")
    for x0 in (rand_images(4, 3, 32, 32, seed=6), t.clone()):  # also at the optimum (identical images)
        x = x0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(reward(x, b).sum(), x)
        assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0


def test_refs_pick_the_right_image(trio):
    t, c, s = trio
    b = RewardBatch(target=t, content=c, style=s)
    assert torch.allclose(R.ssim_reward(c, b, ref="content"), torch.ones(4), atol=1e-6)
    assert (R.ssim_reward(c, b) < 0.9).all()  # default: vs target
    assert torch.equal(R.build_reward("pixel@style")(s, b), torch.zeros(4))
    assert torch.equal(R.build_reward("pixel@content")(c, b), torch.zeros(4))
    assert (R.build_reward("pixel")(c, b) < 0).all()
    # a target-based reward on unpaired data: a clear error naming @content
    with pytest.raises(ConfigError, match="@content"):
        R.ssim_reward(c, RewardBatch(content=c, style=s))
    # reference rows must line up with the generated images
    with pytest.raises(ValueError, match="repeat"):
        R.pixel_reward(torch.cat([c, c]), b)


def test_batch_repeat_is_g_major(trio):
    t, c, _ = trio
    r = RewardBatch(target=t, content=c).repeat(3)
    assert r.style is None and r.target.shape == (12, 3, 32, 32)
    for g in range(3):
        assert torch.equal(r.target[g * 4 : (g + 1) * 4], t)
    assert r.to("cpu").content.shape == (12, 3, 32, 32)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("", "empty"),
        ("dreamsm:5", "unknown reward 'dreamsm'"),
        ("ssim@gt", "unknown reference image 'gt'"),
        ("ssim:abc", "bad weight"),
        ("ssim:nan", "finite"),
        ("tv@content", "no reference image"),
        ("ssim,,pixel", "bad reward term"),
        ("ssim:1:2", "bad weight"),
    ],
)
def test_bad_specs_raise_config_errors(spec, needle):
    with pytest.raises(ConfigError) as e:
        R.build_reward(spec)
    msg = _one_line(e.value)
    assert needle in msg
    if "unknown" in needle:
        assert "target, content, style" in msg  # lists the valid refs (and names, for a bad name)
    if "unknown reward" in needle:
        assert "dreamsim, clip, lpips, ssim, pixel, mse, gram, tv" in msg


def test_parse_and_requires_target():
    assert R.parse_reward_spec(R.PAPER_REWARD) == [("dreamsim", None, 5.0)]
    assert R.parse_reward_spec("LPIPS@Content:1e-1") == [("lpips", "content", 0.1)]
    assert [t.name for t in R.parse_reward_spec(R.LEGACY_UNPAIRED_REWARD)] == ["lpips", "gram", "tv", "ssim"]
    assert R.requires_target(R.ssim_reward) and R.requires_target(R.pixel_reward)
    assert not R.requires_target(R.tv_reward)
    assert not R.requires_target(functools.partial(R.ssim_reward, ref="content"))
    assert R.requires_target(R.build_reward("tv,ssim"))
    assert not R.requires_target(R.build_reward("tv,ssim@content,pixel@style"))
    assert R.build_reward("ssim@content,gram", models={"vgg": object()}).refs == {"content", "style"}

    # the legacy unpaired reward, with stand-in models: no target needed, right refs, shared models
    dist = lambda a, b: (a - b).abs().flatten(1).mean(1)  # noqa: E731
    fake_vgg = _FakeVGG()
    legacy = R.build_reward(R.LEGACY_UNPAIRED_REWARD, models={"lpips": dist, "vgg": fake_vgg})
    assert not legacy.requires_target
    assert legacy.weights == {"lpips@content": 1.0, "gram": 1.0, "tv": 0.01, "ssim@content": 0.5}
    assert isinstance(legacy.terms[0].fn, R.LPIPSReward) and legacy.terms[0].fn.ref == "content"
    assert isinstance(legacy.terms[1].fn, R.GramStyleReward) and legacy.terms[1].fn.ref == "style"
    c, s = rand_images(2, 3, 16, 16, seed=7), rand_images(2, 3, 16, 16, seed=8)
    out = legacy(c, RewardBatch(content=c, style=s))
    assert torch.allclose(legacy.last_terms["lpips@content"], torch.zeros(2))
    assert torch.allclose(legacy.last_terms["ssim@content"], torch.ones(2), atol=1e-6)
    assert (legacy.last_terms["gram"] < 0).all()
    assert torch.allclose(out, sum(w * legacy.last_terms[k] for k, w in legacy.weights.items()), atol=1e-6)


class _FakeVGG:
    """Stands in for VGGFeatures: two 'layers' of raw pixels."""

    def __call__(self, x, layers=None):
        names = layers or P.VGGFeatures.STYLE_LAYERS
        return {n: x * (i + 1) for i, n in enumerate(names)}

    def to(self, device):
        return self


# ---------------------------------------------------------------------------------------------------
# VGG-19 Gram / content losses


@pytest.fixture(scope="module")
def vgg(vgg_file):
    return P.VGGFeatures(vgg_file)


def test_vgg_features_are_pre_relu_and_frozen(vgg, vgg_file):
    x = rand_images(2, 3, 32, 32, seed=10)
    feats = vgg(x)
    assert list(feats) == ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv4_2", "conv5_1"]
    assert feats["conv4_2"].shape == (2, 512, 4, 4) and feats["conv5_1"].shape == (2, 512, 2, 2)
    sd = torch.load(vgg_file, weights_only=True)
    mean, std = torch.tensor(P.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(P.IMAGENET_STD).view(1, 3, 1, 1)
    conv1_1 = torch.nn.functional.conv2d(
        (x - mean) / std, sd["features.0.weight"], sd["features.0.bias"], padding=1
    )
    assert torch.allclose(feats["conv1_1"], conv1_1, atol=1e-5)
    assert (feats["conv1_1"] < 0).any()  # pre-ReLU, not clobbered by an in-place ReLU
    assert all(not p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training and not vgg.features.training
    assert list(vgg(x, ["conv4_2"])) == ["conv4_2"]
    with pytest.raises(ConfigError):
        vgg(x, ["relu1_1"])


def _naive_style_loss(fa: dict, fb: dict) -> torch.Tensor:
    total = torch.zeros(fa["conv1_1"].shape[0], dtype=torch.float64)
    for name in P.VGGFeatures.STYLE_LAYERS:
        a, b = fa[name].double(), fb[name].double()
        n, c, h, w = a.shape
        for i in range(n):
            ga = a[i].reshape(c, -1) @ a[i].reshape(c, -1).T / (c * h * w)
            gb = b[i].reshape(c, -1) @ b[i].reshape(c, -1).T / (c * h * w)
            total[i] += ((ga - gb) ** 2).sum() / (c * c)
    return total


def test_gram_and_content_losses(vgg):
    x, y = rand_images(2, 3, 32, 32, seed=11), rand_images(2, 3, 32, 32, seed=12)
    fx, fy = vgg(x), vgg(y)
    same = P.gram_style_loss(fx, fx)
    assert torch.equal(same, torch.zeros(2))
    ab, ba = P.gram_style_loss(fx, fy), P.gram_style_loss(fy, fx)
    assert torch.allclose(ab, ba, rtol=1e-6, atol=0) and (ab > 0).all()
    # the formula, computed naively in float64 on the same features: within 1e-4 relative
    assert torch.allclose(ab.double(), _naive_style_loss(fx, fy), rtol=1e-4, atol=0)
    naive_content = ((fx["conv4_2"].double() - fy["conv4_2"].double()) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(P.content_loss(fx, fy).double(), naive_content, rtol=1e-5, atol=0)
    assert torch.equal(P.content_loss(fx, fx), torch.zeros(2))
    # the convenience object: (style loss vs style, content loss vs content), generated run once
    scl = P.StyleContentLoss(vgg)
    s_loss, c_loss = scl(x, content=y, style=y)
    assert torch.allclose(s_loss, ab, rtol=1e-5) and torch.allclose(c_loss, P.content_loss(fx, fy), rtol=1e-5)
    assert torch.allclose(scl.style_loss(x, y), ab, rtol=1e-5)
    assert torch.allclose(scl.content_loss(x, y), c_loss, rtol=1e-5)
    # Gram matrices are C×C: a style image of another size is fine
    assert P.gram_style_loss(fx, vgg(rand_images(2, 3, 48, 48, seed=13))).shape == (2,)


def test_gram_reward_uses_the_style_image(vgg_file, trio):
    t, c, s = trio
    reward = R.build_reward("gram:1,ssim@content:0.5", vgg_weights=vgg_file)
    b = RewardBatch(content=c, style=s)
    assert not reward.requires_target
    reward(s, b)
    assert torch.equal(reward.last_terms["gram"], torch.zeros(4))
    x = rand_images(4, 3, 32, 32, seed=14).requires_grad_(True)
    out = reward(x, b)
    assert (reward.last_terms["gram"] < 0).all()
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # @target overrides the default reference
    gram_t = R.GramStyleReward(reward.terms[0].fn.model, ref="target")
    assert torch.equal(gram_t(t, RewardBatch(target=t, style=s)), torch.zeros(4))


def test_vgg_missing_weights(tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError) as e:
        P.VGGFeatures(tmp_path)  # an empty folder
    msg = _one_line(e.value)
    assert "vgg19-dcbb9e9d.pth" in msg and "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in msg
    # no path: torch hub's cache (an empty one here); no download unless asked
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError) as e:
        R.build_reward("gram")
    msg = _one_line(e.value)
    assert str(tmp_path / "hub" / "checkpoints") in msg and "download=True" in msg
    assert isinstance(e.value, StyleVARError) and isinstance(e.value, FileNotFoundError)
    # an unreadable file: a one-line CheckpointError
    bad = tmp_path / "vgg19-dcbb9e9d.pth"
    bad.write_bytes(b"not a checkpoint\n" * 3)
    with pytest.raises(CheckpointError) as e:
        P.VGGFeatures(bad)
    assert str(bad) in _one_line(e.value)


# ---------------------------------------------------------------------------------------------------
# Optional packages: absent -> one-line error; present -> tiny self-made models


def test_optional_packages_are_imported_lazily():
    for path in (*sorted((SRC / "perceptual").glob("*.py")), SRC / "training" / "rewards.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] in OPTIONAL for n in names), (path, names)


@pytest.mark.parametrize(
    "package, build",
    [
        ("dreamsim", lambda d: P.DreamSimDistance(d)),
        ("transformers", lambda d: P.ClipSimilarity(d)),
        ("lpips", lambda d: P.LPIPSDistance("alex", backbone_weights=d)),
        ("dreamsim", lambda d: R.build_reward("ssim,dreamsim:5", dreamsim_dir=d)),
        ("transformers", lambda d: R.ClipReward(model_dir_or_name=d)),
        ("lpips", lambda d: R.LPIPSReward(backbone_weights=d)),
    ],
)
def test_missing_package_error(package, build, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # import now fails as if not installed
    with pytest.raises(MissingDependencyError) as e:
        build(tmp_path)
    msg = _one_line(e.value)
    assert f"'{package}'" in msg and 'pip install "stylevar[rewards]"' in msg
    assert isinstance(e.value, ImportError)


def test_weight_free_rewards_need_no_optional_package(monkeypatch, trio):
    for name in OPTIONAL:
        monkeypatch.setitem(sys.modules, name, None)
    t, c, _ = trio
    reward = R.build_reward("ssim:1,pixel:1,mse:-1,tv:0.01,ssim@content")
    assert reward(t, RewardBatch(target=t, content=c)).shape == (4,)


# --- DreamSim ---------------------------------------------------------------------------------------


def test_dreamsim_tiny(dreamsim_dir):
    hub_before = torch.hub.get_dir()
    ds = P.DreamSimDistance(dreamsim_dir)
    assert torch.hub.get_dir() == hub_before
    # the adapter's LoRA weights are in place (B was randomised before saving, so not zero)
    lora_b = [p for n, p in ds.model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 12 and all(p.abs().sum() > 0 for p in lora_b)
    assert all(not p.requires_grad for p in ds.parameters())
    x, y = rand_images(2, 3, 64, 64, seed=20), rand_images(2, 3, 64, 64, seed=21)
    assert ds.preprocess(x).shape == (2, 3, 224, 224)
    assert torch.allclose(ds(x, x), torch.zeros(2), atol=1e-5)
    d = ds(x, y)
    assert d.shape == (2,) and (d > 1e-3).all()
    assert torch.allclose(ds(y, x), d, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ds(xg, y).sum(), xg)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # the paper's reward: R = -5 * DreamSim(generated, target)
    reward = R.build_reward(R.PAPER_REWARD, dreamsim_dir=dreamsim_dir)
    assert reward.requires_target
    assert torch.allclose(reward(x, RewardBatch(target=y)), -5 * d, atol=1e-6)
    assert torch.allclose(R.DreamSimReward(ds, ref="content")(x, RewardBatch(content=y)), -d, atol=1e-6)


def test_dreamsim_missing_weights(tmp_path, monkeypatch):
    pytest.importorskip("dreamsim")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError) as e:
        P.DreamSimDistance(tmp_path / "empty")
    msg = _one_line(e.value)
    for needle in (
        "dino_vitb16_pretrain.pth",
        "dino_vitb16_single_lora/",
        "checkpoints/dino_vitbase16_pretrain.pth",
        "dreamsim_dino_vitb16_checkpoint.zip",
        "https://dl.fbaipublicfiles.com/dino/",
        str(tmp_path / "empty"),
    ):
        assert needle in msg
    assert not (tmp_path / "empty").exists()  # nothing created, nothing downloaded


# --- CLIP -------------------------------------------------------------------------------------------


def test_clip_tiny(clip_dir):
    clip = P.ClipSimilarity(clip_dir)
    x, y = rand_images(2, 3, 64, 64, seed=30), rand_images(2, 3, 64, 64, seed=31)
    px = clip.preprocess(x)
    assert px.shape == (2, 3, 224, 224)
    assert torch.allclose(clip(x, x), torch.ones(2), atol=1e-5)
    sim = clip(x, y)
    assert sim.shape == (2,) and (sim < 1 - 1e-4).all()
    # the embedding: pooler_output -> visual_projection -> L2 normalise, on bilinear-224 CLIP-normalised pixels
    manual = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    manual = (manual - torch.tensor(P.CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(P.CLIP_STD).view(1, 3, 1, 1)
    pooled = clip.model.vision_model(pixel_values=manual).pooler_output
    emb = torch.nn.functional.normalize(clip.model.visual_projection(pooled), dim=-1)
    assert torch.allclose(clip.embed(x), emb, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(clip(xg, y).sum(), xg)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    reward = R.build_reward("clip:5", clip_model=clip_dir)
    assert torch.allclose(reward(x, RewardBatch(target=y)), 5 * sim, atol=1e-5)


def test_clip_vision_only_folder(clip_dir, tmp_path):
    """A folder saved from CLIPVisionModelWithProjection (no text tower) loads the same way."""
    transformers = pytest.importorskip("transformers")
    full = transformers.CLIPModel.from_pretrained(str(clip_dir))
    vision_cfg = transformers.CLIPVisionConfig(**{**full.config.vision_config.to_dict(), "projection_dim": 8})
    vision = transformers.CLIPVisionModelWithProjection(vision_cfg)
    vision.vision_model.load_state_dict(full.vision_model.state_dict())
    vision.visual_projection.load_state_dict(full.visual_projection.state_dict())
    vision.save_pretrained(str(tmp_path / "vision"))
    x, y = rand_images(2, 3, 32, 32, seed=32), rand_images(2, 3, 32, 32, seed=33)
    both = P.ClipSimilarity(clip_dir)(x, y)
    assert torch.allclose(P.ClipSimilarity(tmp_path / "vision")(x, y), both, atol=1e-5)


def test_clip_missing_weights(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as e:
        P.ClipSimilarity(tmp_path / "no-such-clip")
    assert "does not exist" in _one_line(e.value)
    with pytest.raises(MissingWeightsError) as e:
        P.ClipSimilarity(tmp_path)  # a folder without config.json
    assert "config.json" in _one_line(e.value)
    with pytest.raises(MissingWeightsError) as e:  # a Hub id, cache only (offline): not cached
        P.ClipSimilarity("openai/clip-vit-base-patch32", cache_dir=tmp_path / "hf", local_files_only=True)
    msg = _one_line(e.value)
    assert "openai/clip-vit-base-patch32" in msg and "Hugging Face cache" in msg


# --- LPIPS ------------------------------------------------------------------------------------------


def test_lpips_tiny(alexnet_file):
    pytest.importorskip("lpips")
    lp = P.LPIPSDistance("alex", backbone_weights=alexnet_file.parent)  # a folder holding the file
    sd = torch.load(alexnet_file, weights_only=True)
    assert torch.equal(lp.model.net.slice1[0].weight, sd["features.0.weight"])
    assert torch.equal(getattr(lp.model.net.slice5, "10").weight, sd["features.10.weight"])
    assert lp.model.lin0.model[-1].weight.abs().sum() > 0  # the package's learned linear layers
    x, y = rand_images(2, 3, 64, 64, seed=40), rand_images(2, 3, 64, 64, seed=41)
    assert torch.equal(lp(x, x), torch.zeros(2))
    d = lp(x, y)
    assert d.shape == (2,) and (d > 0).all()
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(lp(xg, y).sum(), xg)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    reward = R.build_reward("lpips@content:2", lpips_net="alex", lpips_backbone=alexnet_file)
    assert torch.allclose(reward(x, RewardBatch(content=y)), -2 * d, atol=1e-6)


def test_lpips_missing_backbone(tmp_path, monkeypatch):
    pytest.importorskip("lpips")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError) as e:
        P.LPIPSDistance("vgg")
    msg = _one_line(e.value)
    assert "vgg16-397923af.pth" in msg and "https://download.pytorch.org/models/vgg16-397923af.pth" in msg
    with pytest.raises(MissingWeightsError) as e:
        P.LPIPSDistance("alex", backbone_weights=tmp_path)
    assert "alexnet-owt-7be5be79.pth" in _one_line(e.value)
    with pytest.raises(ConfigError):
        P.LPIPSDistance("squeeze")
