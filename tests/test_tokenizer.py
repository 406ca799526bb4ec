"""Tokenizer (VQ-VAE) training: the loss falls, runs resume exactly, bad losses and signals are
handled, dead codes come back, the perceptual loss, the export/load formats and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from helpers import torchrun_env
from stylevar.cli import main
from stylevar.config import DEFAULT_PATCH_NUMS, VQVAEConfig
from stylevar.data import ImageFolderDataset, collect_images, split_images
from stylevar.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError
from stylevar.io import atomic_save, load_vqvae, save_checkpoint, save_vqvae
from stylevar.models import VQVAE
from stylevar.perceptual import VGGPerceptualLoss
from stylevar.training.config import TokenizerConfig
from stylevar.training.runs import RunLogger, StopSignals, capture_rng, restore_rng
from stylevar.training.tokenizer import TokenizerTrainer, codebook_stats

#: 8 px images, latent 4x4, scales 1-2-4, 64 codes of 4 channels: ~20 ms a step on one core
TINY = dict(
    vocab_size=64,
    z_channels=4,
    ch=32,
    ch_mult=(1, 1),
    patch_nums=(1, 2, 4),
    num_res_blocks=1,
    using_sa=False,
    using_mid_sa=False,
)
TINY_FLAGS = ["--ch", "32", "--ch-mult", "1,1", "--patch-nums", "1,2,4", "--vocab-size", "64"]
TINY_FLAGS += ["--z-channels", "4", "--num-res-blocks", "1"]


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is faster than two (no synchronisation per op)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_vae(seed: int = 0, **kw) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(VQVAEConfig(**{**TINY, **kw}))


def blobs(n: int, res: int, seed: int) -> torch.Tensor:
    """Images in [-1, 1]: a random colour at each corner, blended bilinearly, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 2, 2, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear", align_corners=True)
    return (x + 0.05 * torch.randn(n, 3, res, res, generator=g)).clamp(-1, 1)


class Images(Dataset):
    def __init__(self, n: int, res: int = 8, seed: int = 0, hook=None, nan_at: int | None = None):
        self.x, self.hook, self.nan_at = blobs(n, res, seed), hook, nan_at

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.hook:
            self.hook(i)
        return self.x[i] * float("nan") if i == self.nan_at else self.x[i]


def _cfg(**kw) -> TokenizerConfig:
    base = dict(batch=8, lr=2e-3, num_workers=0, log_every=1, save_every=0, warmup_steps=2)
    return TokenizerConfig(**{**base, **kw})


def _write_pngs(folder: Path, n: int, size: int = 20, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    paths = []
    for i in range(n):
        low = rng.randint(0, 256, size=(2, 2, 3)).astype(np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.Resampling.BILINEAR)
        paths.append(folder / f"img{i:03d}.png")
        img.save(paths[-1])
    return paths


def _tensors(obj) -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts/lists, keyed by its path."""
    out = {}

    def walk(x, key):
        if torch.is_tensor(x):
            out[key] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{key}/{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{key}/{i}")

    walk(obj, "")
    return out


# ---------------------------------------------------------------------------------------- config / runs
def test_config_validation():
    with pytest.raises(ConfigError, match="precision"):
        TokenizerConfig(precision="fp8")
    with pytest.raises(ConfigError, match="recon_loss"):
        TokenizerConfig(recon_loss="huber")
    with pytest.raises(ConfigError, match="on_nonfinite"):
        TokenizerConfig(on_nonfinite="ignore")
    with pytest.raises(ConfigError, match="schedule"):
        TokenizerConfig(schedule="linear")
    with pytest.raises(ConfigError, match="unknown field"):
        TokenizerConfig.from_dict({"learning_rate": 1.0})
    c = TokenizerConfig(betas=[0.5, 0.9])
    assert c.betas == (0.5, 0.9) and TokenizerConfig.from_dict(c.to_dict()) == c


def test_run_utilities(tmp_path):
    # RNG states survive a weights_only round trip and restore exactly
    random.seed(3)
    torch.manual_seed(3)
    atomic_save({"rng": capture_rng()}, tmp_path / "rng.pt")
    a = (torch.rand(4), random.random())
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    b = (torch.rand(4), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    # rolling checkpoints keep the newest N; no temporary files are left behind
    for step in range(1, 6):
        save_checkpoint(tmp_path / "ck", {"step": step}, "rolling", step=step, keep_rolling=2)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step-00000004.pt", "step-00000005.pt"]
    # signals become a flag; the old handler comes back
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_logger_writes_jsonl_and_a_tensorboard_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path / "run") as log:
        for step in (1, 2, 3):
            log.log({"step": step, "loss": 1.0 / step, "note": "text", "flag": True})
    RunLogger(tmp_path / "run", rank=1).log({"step": 4, "loss": 0.0})  # other ranks write nothing
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["loss"]  # strings and booleans are not scalars
    assert [round(e.value, 4) for e in acc.Scalars("loss")] == [1.0, 0.5, 0.3333]


# ---------------------------------------------------------------------------------------- training
def test_loss_falls_usage_is_tracked_and_the_tokenizer_is_exported(tmp_path):
    t = TokenizerTrainer(
        tiny_vae(),
        Images(256),
        tmp_path / "run",
        _cfg(max_steps=48, dead_code_steps=3, save_every=16, keep_rolling=2, val_every=16),
        val_set=Images(16, seed=99),
    )
    before = t.validate()
    state = t.fit(progress=False)
    after = t.validate()
    # measured: L1 0.44 -> 0.35, PSNR 11.6 -> 13.8 dB on held-out images
    assert state.step == 48 and after["val_l1"] < 0.85 * before["val_l1"], (before, after)
    assert after["val_psnr"] > before["val_psnr"] + 1.0
    recs = [r for r in t.history if "loss" in r]
    assert len(recs) == 48 and all(0 < r["usage"] <= 1 and 1 <= r["perplexity"] <= 64 for r in recs)
    assert np.mean([r["loss"] for r in recs[-8:]]) < 0.85 * np.mean([r["loss"] for r in recs[:8]])
    ck = tmp_path / "run" / "checkpoints"
    assert (ck / "best.pt").exists() and sorted(p.name for p in ck.glob("step-*.pt")) == [
        "step-00000032.pt",
        "step-00000048.pt",
    ]
    last = torch.load(ck / "last.pt", weights_only=True)  # no pickled objects
    assert last["state"]["step"] == 48 and last["format"] == "stylevar-tokenizer-1"
    cfg = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert cfg["format"] == "stylevar-vqvae" and cfg["format_version"] == 1 and cfg["info"]["steps"] == 48
    vae = load_vqvae(tmp_path / "run" / "final")
    assert vae.config == t.vae.config
    mine = t.vae.state_dict()
    assert all(torch.equal(v, mine[k].cpu()) for k, v in vae.state_dict().items())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    val_steps = [json.loads(x)["step"] for x in lines if '"val_psnr"' in x]
    assert val_steps == [16, 32, 48]  # step 32 is also the epoch end: validated once


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    _write_pngs(tmp_path / "imgs", 16)

    def trainer(name):
        data = ImageFolderDataset(tmp_path / "imgs", 8, hflip=True, seed=1)
        cfg = _cfg(batch=2, grad_accum=2, epochs=2, dead_code_steps=2, save_every=2, seed=1)
        return TokenizerTrainer(tiny_vae(), data, tmp_path / name, cfg, val_set=Images(4, seed=9))

    full = trainer("full")
    full.fit(progress=False)
    part = trainer("part")
    part.fit(progress=False, stop_after=3)  # mid-epoch: step 3 of 8
    assert part.state.step == 3
    resumed = trainer("part")
    assert resumed.resume()
    assert (resumed.state.epoch, resumed.state.batch, resumed.state.step) == (0, 3, 3)
    resumed.fit(progress=False)
    assert full.state.revived_codes > 0  # the restarts (and their RNG) are part of what must match
    a = _tensors(
        {"model": full.vae.state_dict(), "opt": full.optimizer.state_dict(), "age": full.codebook_age}
    )
    b = _tensors(
        {
            "model": resumed.vae.state_dict(),
            "opt": resumed.optimizer.state_dict(),
            "age": resumed.codebook_age,
        }
    )
    assert a.keys() == b.keys() and len(a) > 50
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert dataclasses.asdict(full.state) == dataclasses.asdict(resumed.state)


def test_non_finite_loss_stops_or_skips(tmp_path):
    t = TokenizerTrainer(tiny_vae(), Images(16, nan_at=5), tmp_path / "stop", _cfg(batch=2, epochs=1, seed=1))
    with pytest.raises(NonFiniteLossError, match="on_nonfinite=skip"):
        t.fit(progress=False)
    saved = torch.load(tmp_path / "stop" / "checkpoints" / "last.pt", weights_only=True)
    assert 0 <= saved["state"]["step"] < t.total_steps  # the last good state
    t = TokenizerTrainer(
        tiny_vae(),
        Images(16, nan_at=5),
        tmp_path / "skip",
        _cfg(batch=2, epochs=1, seed=1, on_nonfinite="skip"),
    )
    state = t.fit(progress=False)
    assert state.skipped_steps == 1 and state.step == t.total_steps == 8  # a skipped step is made up
    assert all(torch.isfinite(p).all() for p in t.vae.parameters())  # the bad step left no trace
    recs = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in recs if "reason" in r] == ["non-finite loss (nan)"]


def test_bf16_steps_keep_fp32_weights_and_the_last_step_is_validated(tmp_path):
    t = TokenizerTrainer(
        tiny_vae(), Images(16), tmp_path / "bf16", _cfg(max_steps=3, precision="bf16"), val_set=Images(4)
    )
    t.fit(progress=False)
    assert all(p.dtype == torch.float32 for p in t.vae.parameters())
    assert all(np.isfinite(r["loss"]) for r in t.history if "loss" in r)
    assert [r["step"] for r in t.history if "val_l1" in r] == [2, 3]  # epoch end, then the end of training
    assert json.loads((tmp_path / "bf16" / "final" / "config.json").read_text())["info"]["val"]["val_l1"] > 0


def test_channels_last_trains_the_same_model_and_exports_the_usual_layout(tmp_path):
    """channels_last changes the convolutions' memory layout, not what is learned: the same losses step
    by step (up to rounding) and an exported model in the contiguous layout."""
    runs = {}
    for layout in (False, True):
        t = TokenizerTrainer(
            tiny_vae(), Images(32), tmp_path / f"cl{layout}", _cfg(max_steps=6, channels_last=layout)
        )
        conv = t.vae.encoder.conv_in.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == layout and conv.shape[1] == 3
        t.fit(progress=False)
        runs[layout] = t
    losses = [[r["loss"] for r in runs[x].history if "loss" in r] for x in (False, True)]
    assert len(losses[0]) == 6 and np.allclose(losses[0], losses[1], rtol=1e-3), losses
    assert all(p.is_contiguous() for p in runs[True].vae.parameters())
    exported = load_vqvae(tmp_path / "clTrue" / "final").state_dict()
    mine = runs[True].vae.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in exported.items())


def test_sigterm_saves_and_stops(tmp_path):
    seen: list[int] = []

    def hook(i):
        if len(seen) == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        seen.append(i)

    cfg = _cfg(batch=2, epochs=2)
    t = TokenizerTrainer(tiny_vae(), Images(16, hook=hook), tmp_path / "sig", cfg)
    state = t.fit(progress=False)
    assert t.stopped_by == signal.SIGTERM and 0 < state.step < t.total_steps
    assert not (tmp_path / "sig" / "final").exists()
    resumed = TokenizerTrainer(tiny_vae(), Images(16), tmp_path / "sig", cfg)
    assert resumed.resume() and resumed.state.step == state.step


@pytest.mark.parametrize("dead_code_steps", [0, 2])
def test_dead_code_restart_revives_unused_codes(tmp_path, dead_code_steps):
    vae = tiny_vae()
    with torch.no_grad():
        vae.quantize.embedding.weight[32:] = 100.0  # far from every feature: never the nearest code
    far_before = vae.quantize.embedding.weight[32:].clone()
    val = blobs(16, 8, 99)
    used_before = torch.cat(vae.img_to_idx(val), 1).unique()
    assert (used_before >= 32).sum() == 0
    cfg = _cfg(max_steps=4, lr=1e-5, dead_code_steps=dead_code_steps)
    t = TokenizerTrainer(vae, Images(32), tmp_path / f"d{dead_code_steps}", cfg)
    t.fit(progress=False)
    far_after = t.vae.quantize.embedding.weight[32:].detach()
    used_after = torch.cat(t.vae.eval().img_to_idx(val), 1).unique()
    if dead_code_steps == 0:
        assert torch.equal(far_after, far_before) and (used_after >= 32).sum() == 0
        assert "revived" not in t.history[-1]
    else:
        assert t.state.revived_codes >= 32 and sum(r["revived"] for r in t.history) == t.state.revived_codes
        assert far_after.norm(dim=1).max() < 10  # now real feature vectors
        assert (used_after >= 32).sum() >= 4 and len(used_after) > len(used_before)


def test_codebook_stats():
    assert codebook_stats(torch.tensor([4.0, 0, 0, 0])) == (0.25, 1.0)
    usage, ppl = codebook_stats(torch.tensor([1.0, 1, 1, 1]))
    assert usage == 1.0 and ppl == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------- perceptual loss
@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A torchvision-layout VGG16 state dict with random weights (features only, fp16: ~30 MB)."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    feats = make_layers(cfgs["D"])
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.save({f"features.{k}": v.half() for k, v in feats.state_dict().items()}, path)
    return path


def test_perceptual_loss_with_a_self_made_vgg_file(tmp_path, vgg_file):
    lp = VGGPerceptualLoss(vgg_file)
    x, y = blobs(2, 16, 0), blobs(2, 16, 1)
    assert lp(x, x).item() == 0.0 and lp(x, y).item() > lp(x, (x + 0.05 * y).clamp(-1, 1)).item() > 0
    assert not any(p.requires_grad for p in lp.parameters())
    # inputs in [-1, 1] reach VGG as ImageNet-normalised [0, 1] images
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    manual = lp.net[:2](((x + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    h = torch.cat([x, y]).add(1).mul(0.5).sub(lp.mean).div(lp.std)
    assert torch.allclose(lp.net[:2](h)[:2], manual, atol=1e-6)

    vae = tiny_vae(ch_mult=(1, 1, 2))  # 16 px: VGG16 pools four times
    cfg = _cfg(max_steps=2, batch=4, perceptual_weight=0.5)
    t = TokenizerTrainer(vae, Images(8, res=16), tmp_path / "p", cfg, vgg_weights=vgg_file)
    t.fit(progress=False)
    r = t.history[-1]
    assert r["perceptual"] > 0 and r["loss"] == pytest.approx(
        r["recon"] + r["vq"] + 0.5 * r["perceptual"], rel=1e-5
    )
    ck = torch.load(tmp_path / "p" / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith(("net.", "perceptual")) for k in ck["model"])  # VGG is not saved

    with pytest.raises(CheckpointError, match="vgg16-397923af.pth"):
        TokenizerTrainer(tiny_vae(ch_mult=(1, 1, 2)), Images(8, res=16), tmp_path / "q", cfg)
    with pytest.raises(CheckpointError, match="not found.*vgg16-397923af.pth"):
        TokenizerTrainer(
            tiny_vae(ch_mult=(1, 1, 2)),
            Images(8, res=16),
            tmp_path / "q",
            cfg,
            vgg_weights=tmp_path / "no.pth",
        )
    torch.save(tiny_vae().state_dict(), tmp_path / "notvgg.pth")
    with pytest.raises(CheckpointError, match="not a torchvision VGG16"):
        VGGPerceptualLoss(tmp_path / "notvgg.pth")
    with pytest.raises(ConfigError, match="at least 16 px"):
        TokenizerTrainer(tiny_vae(), Images(8), tmp_path / "q", cfg, vgg_weights=vgg_file)


# ---------------------------------------------------------------------------------------- formats
def test_load_vqvae_reads_each_format(tmp_path, tiny, ours_dir, upstream_dir):
    ref = tiny[1]
    ref_sd = ref.state_dict()

    def same(vae):
        sd = vae.state_dict()
        return all(torch.equal(sd[k], v) for k, v in ref_sd.items() if k != "quantize.ema_vocab_hit_SV")

    # our full checkpoint folder ("format": "stylevar")
    vae = load_vqvae(ours_dir)
    assert vae.config == ref.config and same(vae)
    # an upstream plain state dict: configuration read off the shapes
    vae = load_vqvae(upstream_dir / "vae_ch160v4096z32.pth", patch_nums=ref.config.patch_nums)
    assert vae.config == ref.config and same(vae)
    assert load_vqvae(upstream_dir).config.patch_nums == DEFAULT_PATCH_NUMS  # a folder holding it
    # a tokenizer folder
    out = save_vqvae(tmp_path / "tok", ref, info={"note": "x"})
    raw = json.loads((out / "config.json").read_text())
    assert raw["format"] == "stylevar-vqvae" and raw["info"] == {"note": "x"}
    vae = load_vqvae(out)
    assert vae.config == ref.config and same(vae) and not vae.training
    # errors name the file
    with pytest.raises(CheckpointError, match="not found"):
        load_vqvae(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="StyleVAR-GRPO.pth is not a VQ-VAE"):
        load_vqvae(upstream_dir / "StyleVAR-GRPO.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds neither config.json"):
        load_vqvae(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"format": "diffusers"}')
    with pytest.raises(CheckpointError, match="not a stylevar config"):
        load_vqvae(tmp_path / "other")
    (tmp_path / "other2").mkdir()
    (tmp_path / "other2" / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a stylevar tokenizer folder"):
        save_vqvae(tmp_path / "other2", ref)


def test_collect_images_split_and_dataset(tmp_path, monkeypatch):
    files = _write_pngs(tmp_path / "flat", 5)
    assert collect_images([tmp_path / "flat", files[0]]) == files  # duplicates dropped, order kept
    # an OmniStyle-layout triplet source: targets, or all three images with triplets=True
    root = tmp_path / "omni"
    for sub, name in (("content", "c.png"), ("style", "s.png"), ("target", "c.png&&s.png.png")):
        _write_pngs(root / sub, 1)[0].rename(root / sub / name)
    assert [p.name for p in collect_images(root)] == ["c.png&&s.png.png"]
    assert [p.parent.name for p in collect_images(root, triplets=True)] == ["content", "style", "target"]
    with pytest.raises(DataError, match="not found"):
        collect_images(tmp_path / "missing")
    (tmp_path / "nested" / "a").mkdir(parents=True)
    _write_pngs(tmp_path / "nested" / "a", 2)
    with pytest.raises(DataError, match="--recursive"):
        collect_images(tmp_path / "nested")
    assert len(collect_images(tmp_path / "nested", recursive=True)) == 2

    train, val = split_images(files, 0.2, seed=3)
    assert len(val) == 1 and sorted(train + val) == files and split_images(files, 0.2, seed=3) == (train, val)

    ds = ImageFolderDataset(tmp_path / "flat", 8, hflip=True, seed=0)
    x = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    flips = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        a = ds[1]
        assert torch.equal(a, ds[1])  # a function of (seed, epoch, index)
        flips.append(torch.equal(a, ImageFolderDataset(tmp_path / "flat", 8)[1]))
    assert True in flips and False in flips
    # cache_images: each file decoded once; the same tensors, flips still drawn per epoch
    import stylevar.data.folders as folders

    loads: list = []
    real = folders.load_image
    monkeypatch.setattr(folders, "load_image", lambda p: loads.append(p) or real(p))
    want = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        want.append([ds[i] for i in range(len(ds))])
    loads.clear()
    cached = ImageFolderDataset(tmp_path / "flat", 8, hflip=True, seed=0, cache_images=True)
    for epoch in range(6):
        cached.set_epoch(epoch)
        assert all(torch.equal(cached[i], want[epoch][i]) for i in range(len(ds)))
    assert sorted(loads) == files  # each once


# ---------------------------------------------------------------------------------------- CLI
def test_cli_train_resume_refusal_init_and_plot(tmp_path, capsys):
    _write_pngs(tmp_path / "imgs", 12)
    run = tmp_path / "run"
    base = ["train-tokenizer", str(tmp_path / "imgs"), "-o", str(run), *TINY_FLAGS, "--batch", "4"]
    base += ["--num-workers", "0", "--device", "cpu", "--val-fraction", "0.2", "--log-every", "1", "-q"]
    assert main([*base, "--max-steps", "3", "--resolution", "8"]) == 0
    out = capsys.readouterr().out
    assert f"tokenizer: {run / 'final'}/" in out
    vae = load_vqvae(run / "final")
    assert vae.config.resolution == 8 and vae.config.num_res_blocks == 1
    assert len(json.loads((run / "tokenizer_data.json").read_text())["val"]) == 2

    assert main([*base, "--max-steps", "3"]) == 1  # the run exists: refused without --resume
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pass --resume" in err and "new RUN_DIR" in err

    assert main([*base, "--max-steps", "5", "--resume"]) == 0  # continues at step 3, to 5
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s > 3] and max(steps) == 5 and steps.count(1) == 1
    capsys.readouterr()

    new = ["train-tokenizer", str(tmp_path / "imgs"), "-o", str(tmp_path / "ft"), "--batch", "4", "-q"]
    new += ["--num-workers", "0", "--device", "cpu", "--max-steps", "1"]
    assert main([*new, "--init", str(run / "final")]) == 0  # fine-tune from our tokenizer folder
    assert load_vqvae(tmp_path / "ft" / "final").config == vae.config
    capsys.readouterr()
    assert main([*new, "--init", str(run / "final"), "--ch", "64", "-o", str(tmp_path / "x")]) == 1
    assert "fixes the architecture" in capsys.readouterr().err
    assert main([*base[:3], str(tmp_path / "y"), *base[4:], "--resolution", "16"]) == 1
    assert "--patch-nums ending in 8" in capsys.readouterr().err
    assert main(["train-tokenizer", str(tmp_path / "none"), "-o", str(tmp_path / "z"), "-q"]) == 1
    assert "image source not found" in capsys.readouterr().err

    assert main(["plot", str(run)]) == 0
    assert Image.open(run / "curves.png").size[0] > 0


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_accumulation(tmp_path):
    """torchrun, 2 CPU processes x batch 2 == 1 process x batch 2 x accumulation 2 (code restarts included)."""
    import shutil
    import socket
    import subprocess
    import sys

    _write_pngs(tmp_path / "imgs", 16)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    common = [str(tmp_path / "imgs"), *TINY_FLAGS, "--num-workers", "0", "--device", "cpu", "-q"]
    common += ["--val-fraction", "0", "--max-steps", "4", "--dead-code-steps", "2", "--lr", "1e-3"]
    env = torchrun_env()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = [torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "stylevar", "train-tokenizer"]
    one = [sys.executable, "-m", "stylevar", "train-tokenizer"]
    for cmd, out, extra in (
        (two, "two", ["--batch", "2"]),
        (one, "one", ["--batch", "2", "--grad-accum", "2"]),
    ):
        res = subprocess.run(
            [*cmd, *common, "-o", str(tmp_path / out), *extra],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert res.returncode == 0, res.stderr[-8000:]
    a = load_vqvae(tmp_path / "one" / "final").state_dict()
    b = load_vqvae(tmp_path / "two" / "final").state_dict()
    torch.manual_seed(0)  # the CLI's initialisation (seed 0)
    init = VQVAE(load_vqvae(tmp_path / "one" / "final").config).state_dict()
    assert sum(not torch.equal(init[k], a[k]) for k in a) > 20  # training happened
    revived = [
        json.loads(x).get("revived", 0) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    ]
    assert sum(revived) > 0
    for k in a:  # the usage EMA buffer is only kept under DDP (VAR's diagnostic), not compared
        if k != "quantize.ema_vocab_hit_SV":
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
