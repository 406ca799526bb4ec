"""SFT: the loss falls, runs resume exactly, bad losses and signals are handled, checkpoints are safe to load."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch.utils.data import Dataset

from helpers import smooth_images, tiny_models, torchrun_env
from stylevar.errors import NonFiniteLossError
from stylevar.io import load_pretrained
from stylevar.training.schedule import lr_multiplier, param_groups, scale_token_weights
from stylevar.training.sft import SFTConfig, SFTTrainer


class ToyTriplets(Dataset):
    """Smooth random images: target = content with the style's mean colour (learnable, structured)."""

    def __init__(self, n: int, res: int = 64, seed: int = 0, hook=None):
        self.content = smooth_images(n, res, seed) * 2 - 1
        self.style = smooth_images(n, res, seed + 1000) * 2 - 1
        tint = self.style.mean(dim=(2, 3), keepdim=True)
        self.target = (0.5 * self.content + 0.5 * tint).clamp(-1, 1)
        self.hook = hook

    def __len__(self):
        return len(self.content)

    def __getitem__(self, i):
        if self.hook:
            self.hook(i)
        return {"target": self.target[i], "style": self.style[i], "content": self.content[i], "index": i}


def _trainer(tmp_path, name="run", n=16, hook=None, **kw):
    model, vae = tiny_models(tag="sft", depth=2, num_heads=2, drop_path_rate=0.0)
    cfg = dict(
        micro_batch=2,
        grad_accum=2,
        epochs=2,
        lr=3e-3,
        num_workers=0,
        save_every=2,
        log_every=1,
        warmup_steps=1,
    )
    cfg.update(kw)
    return SFTTrainer(
        model,
        vae,
        ToyTriplets(n, hook=hook),
        tmp_path / name,
        SFTConfig(**cfg),
        val_set=ToyTriplets(4, seed=77),
    )


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_schedules_and_groups():
    assert lr_multiplier(0, 100, warmup=10) == pytest.approx(0.005)
    assert lr_multiplier(10, 100, warmup=10) == 1.0 and lr_multiplier(99, 100, warmup=10) == pytest.approx(
        0.01
    )
    assert lr_multiplier(59, 100, schedule="step") == 1.0 and lr_multiplier(60, 100, schedule="step") == 0.2
    w = scale_token_weights((1, 2, 3), 0.7)
    assert w.shape == (14,) and w.sum().item() == pytest.approx(1.0) and w[0] > w[1] > w[5]
    assert torch.allclose(scale_token_weights((1, 2), 0.0), torch.full((5,), 0.2))
    model, _ = tiny_models(tag="g", depth=1, num_heads=2)
    groups = {g["name"]: g for g in param_groups(model, 0.05)}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert "pos_1LC" in no_decay and "blocks.0.attn.scale_mul_1H11" in no_decay and "head.bias" in no_decay
    assert "head.weight" not in no_decay and groups["no_decay"]["weight_decay"] == 0.0


def test_loss_falls_and_a_final_model_is_exported(tmp_path):
    t = _trainer(tmp_path, epochs=6)
    before = t.validate()["val_loss"]
    state = t.fit(progress=False)
    after = t.validate()["val_loss"]
    assert state.step == 6 * 4 and after < before - 0.3, (before, after)
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    assert len(list((tmp_path / "run" / "checkpoints").glob("step-*.pt"))) == 5  # keep_rolling
    ckpt = load_pretrained(tmp_path / "run" / "final")
    assert torch.equal(ckpt.model.state_dict()["head.weight"], t.model.state_dict()["head.weight"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 24 and '"val_loss"' in lines[-1]
    # the training checkpoint needs no pickle
    torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    kw = dict(epochs=2, alpha_jitter=0.1, style_noise=0.05, precision="fp32")
    full = _trainer(tmp_path, "full", **kw)
    full.fit(progress=False)
    part = _trainer(tmp_path, "part", **kw)
    part.fit(progress=False, stop_after=3)  # stops mid-epoch, after step 3 of 8
    assert part.state.step == 3
    resumed = _trainer(tmp_path, "part", **kw)
    assert resumed.resume()
    assert (resumed.state.epoch, resumed.state.batch, resumed.state.step) == (0, 3, 3)
    resumed.fit(progress=False)
    a, b = _params(full.model), _params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


def test_non_finite_loss_stops_or_skips(tmp_path):
    class NaNSet(ToyTriplets):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            if i == 5:
                item = dict(item, content=item["content"] * float("nan"))  # NaN features -> NaN loss
            return item

    model, vae = tiny_models(tag="sft", depth=2, num_heads=2)
    cfg = SFTConfig(micro_batch=2, grad_accum=1, epochs=1, num_workers=0, save_every=0, seed=1)
    t = SFTTrainer(model, vae, NaNSet(8), tmp_path / "stop", cfg)
    with pytest.raises(NonFiniteLossError, match="on_nonfinite=skip"):
        t.fit(progress=False)
    model, vae = tiny_models(tag="sft", depth=2, num_heads=2)
    cfg = SFTConfig(
        micro_batch=2, grad_accum=1, epochs=1, num_workers=0, save_every=0, seed=1, on_nonfinite="skip"
    )
    t = SFTTrainer(model, vae, NaNSet(8), tmp_path / "skip", cfg)
    state = t.fit(progress=False)
    assert state.skipped_steps == 1 and state.step == t.total_steps == 4  # a skipped step is made up
    assert all(torch.isfinite(p).all() for p in t.model.parameters())  # the bad step left no trace
    assert all(torch.isfinite(b).all() for n, b in t.model.named_buffers() if "running" in n)


def test_sigterm_saves_and_stops(tmp_path):
    sent = []

    def hook(i):
        if not sent and len(seen) >= 6:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        seen.append(i)

    seen: list[int] = []
    t = _trainer(tmp_path, "sig", hook=hook, save_every=0)
    state = t.fit(progress=False)
    assert 0 < state.step < t.total_steps
    resumed = _trainer(tmp_path, "sig", save_every=0)
    assert resumed.resume() and resumed.state.step == state.step


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_the_same_global_batch(tmp_path):
    """torchrun, 2 CPU processes x micro-batch 2 == 1 process x micro-batch 2 x accumulation 2."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    worker = str(Path(__file__).parent / "ddp_sft_worker.py")
    env = torchrun_env()
    for name, nproc, micro, accum, port in (("two", 2, 2, 1, 29541), ("one", 1, 2, 2, 29542)):
        cmd = [
            torchrun,
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(port),
            worker,
            str(tmp_path / name),
            str(micro),
            str(accum),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-8000:]
    two = torch.load(tmp_path / "two" / "params.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "params.pt", weights_only=True)
    init, _ = tiny_models(tag="ddp", depth=2, num_heads=2)
    moved = [k for k, v in init.state_dict().items() if v.is_floating_point() and not torch.equal(v, one[k])]
    assert len(moved) > 20  # training happened
    for k in one:
        if one[k].is_floating_point():
            assert torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4), k


def test_token_cache_tokenizes_each_file_once_and_changes_nothing(tmp_path):
    """--cache-tokens: every content, style and target file goes through the VQ-VAE once, and training
    is the same as without the cache; with augmentations in use nothing is cached."""
    from stylevar.data import TripletDataset, TripletTransform, scan
    from stylevar.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path / "data", num_contents=3, num_styles=3, num_triplets=8, size=64)
    triplets = scan(root)

    def run(name, cache, transform=None):
        transform = transform or TripletTransform(resolution=64)
        model, vae = tiny_models(tag="sft", depth=2, num_heads=2, drop_path_rate=0.0)
        encoded = []
        real = vae.img_to_idx
        vae.img_to_idx = lambda img: (encoded.append(img.shape[0]), real(img))[1]
        cfg = SFTConfig(
            micro_batch=4,
            grad_accum=1,
            epochs=3,
            lr=3e-3,
            num_workers=0,
            save_every=0,
            log_every=1,
            warmup_steps=1,
            cache_tokens=cache,
        )
        t = SFTTrainer(model, vae, TripletDataset(triplets, transform, train=True), tmp_path / name, cfg)
        t.fit(progress=False)
        return [r["loss"] for r in t.history if "loss" in r], sum(encoded), t

    plain, n_plain, _ = run("plain", False)
    cached, n_cached, t = run("cached", True)
    assert n_plain == 3 * 8 * 3  # three roles, eight triplets, three epochs
    assert n_cached == 3 + 3 + 8 and len(t._token_cache) == 14  # each file once
    assert cached == pytest.approx(plain, rel=1e-5)
    rotated = TripletTransform(resolution=64, content_rotation=10)
    _, n_aug, t = run("augmented", True, rotated)
    assert n_aug == n_plain and not t._token_cache
