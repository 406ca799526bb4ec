"""GRPO: rollouts, the reference controller, the trainer (steps, VMR, mask propagation, merges, resume,
export), the CLI, DDP under torchrun, and that it learns (tiny models, CPU)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import smooth_images, tiny_models, torchrun_env
from stylevar.config import Sampling
from stylevar.models.lora import has_lora, lora_modules, lora_state_dict
from stylevar.training.config import GRPOConfig
from stylevar.training.grpo import GRPOTrainer
from stylevar.training.reference_update import ReferenceController
from stylevar.training.rewards import RewardBatch, build_reward, pixel_reward
from stylevar.training.rollouts import generate_rollouts, middle_scale, rollout_seed


class ToyConditions(torch.utils.data.Dataset):
    """Smooth random (content, style, target) images in [-1, 1] with their index."""

    def __init__(self, n: int, res: int, seed: int = 0):
        self.c, self.s, self.t = (smooth_images(n, res, seed + k) for k in range(3))

    def __len__(self) -> int:
        return len(self.c)

    def __getitem__(self, i: int) -> dict:
        return {"content": self.c[i], "style": self.s[i], "target": self.t[i], "index": i}


def small_cfg(**kw) -> GRPOConfig:
    base = dict(
        max_steps=2,
        batch_size=2,
        group_size=4,
        micro_batch=4,
        lr=1e-2,
        lora_rank=4,
        lora_alpha=8,
        top_k=0,
        top_p=0.0,
        num_workers=0,
        save_every=0,
        merge_cooldown=0,
        eval_pairs=2,
        eval_samples=1,
    )
    base.update(kw)
    return GRPOConfig(**base)


@pytest.fixture
def models():
    return tiny_models(tag="grpo")


def make_trainer(models, tmp_path, name="run", n=4, **kw):
    model, vae = models
    res = vae.config.resolution
    return GRPOTrainer(
        model,
        vae,
        ToyConditions(n, res),
        build_reward("ssim"),
        tmp_path / name,
        small_cfg(**kw),
        val_set=ToyConditions(2, res, seed=10),
    )


# ---------------------------------------------------------------------------------------------- rollouts
def test_batched_rollouts_equal_one_at_a_time(models):
    model, vae = models
    res = vae.config.resolution
    cond = model.conditioning(vae, smooth_images(2, res, 1), smooth_images(2, res, 2)).repeat_interleave(3)
    seeds = [rollout_seed(42, 5, i, g) for i in (7, 9) for g in range(3)]
    batched = generate_rollouts(model, vae, cond, seeds, Sampling(top_k=20, top_p=0.9))
    serial = generate_rollouts(model, vae, cond, seeds, Sampling(top_k=20, top_p=0.9), serial=True)
    chunked = generate_rollouts(model, vae, cond, seeds, Sampling(top_k=20, top_p=0.9), chunk=4)
    assert torch.equal(batched.flat, serial.flat) and torch.equal(batched.flat, chunked.flat)
    assert torch.allclose(batched.images, serial.images, atol=1e-5)
    assert batched.images.shape == (6, 3, res, res) and 0 <= batched.images.min() <= batched.images.max() <= 1
    # a group's rollouts differ (one generator per rollout), and the same seed repeats exactly
    assert not torch.equal(batched.flat[0], batched.flat[1])
    again = generate_rollouts(model, vae, cond, seeds, Sampling(top_k=20, top_p=0.9))
    assert torch.equal(again.flat, batched.flat)


def test_generate_continues_a_prefix_with_the_teacher_forced_logits(models):
    model, vae = models
    res = vae.config.resolution
    cond = model.conditioning(vae, smooth_images(2, res, 3), smooth_images(2, res, 4))
    head = model.generate(vae, cond, seed=[1, 2], num_scales=2)
    assert len(head.tokens) == 2 and head.images.numel() == 0
    full = model.generate(vae, cond, seed=[3, 4], prefix=head.tokens, return_logits=True)
    assert all(torch.equal(a, b) for a, b in zip(full.tokens[:2], head.tokens))
    # the cache built from the prefix gives exactly the teacher-forced logits of the whole sequence
    tf = model(vae.quantize.idx_to_teacher_input(full.tokens), cond)
    sampled = torch.cat(full.logits, dim=1)
    assert torch.allclose(tf, sampled, atol=1e-4)
    with pytest.raises(ValueError):
        model.generate(vae, cond, prefix=[head.tokens[0][:1]])


def test_middle_scale_default():
    assert middle_scale((1, 2, 3, 4, 5, 6, 8, 10, 13, 16)) == 6  # 8x8 of 16x16: the 128 px map at 256 px
    assert middle_scale((1, 2, 3, 4)) == 1


# ---------------------------------------------------------------------------------------------- controller
def test_reference_controller_normal_and_emergency_merges():
    c = ReferenceController(
        cooldown=5, min_gain=0.1, patience=2, kl_threshold=1.0, emergency_cooldown=3, ema_decay=0.0
    )
    snaps = []
    decisions = []
    rewards = [0.0, 0.05, 0.2, 0.3, 0.25, 0.2, 0.2, 0.2]
    for r in rewards:
        c.observe(r, lambda: snaps.append(len(snaps)) or {"id": len(snaps)})
        decisions.append(c.decide(raw_kl=0.0))
    # peaks at 0.0, 0.05, 0.2, 0.3 (4 snapshots); merge when >= 5 steps since start, gain 0.3 >= 0.1, 2 steps at peak
    assert len(snaps) == 4
    assert decisions == [None, None, None, None, None, "merge", "merge", "merge"]
    event = c.merged(step=6, kind="merge")
    assert event["peak"] == pytest.approx(0.3) and c.ref_ema == pytest.approx(0.3)
    assert c.snapshot is None and c.steps_since_merge == 0 and c.peak == -math.inf
    # emergency: high KL, after its cool-down, with a snapshot
    c.observe(0.31, lambda: {"x": 1})
    assert c.decide(raw_kl=5.0) is None  # 1 step since the merge < 3
    c.observe(0.1)
    c.observe(0.1)
    assert c.decide(raw_kl=0.5) is None
    assert c.decide(raw_kl=5.0) == "emergency"
    # state round trip
    d = ReferenceController()
    d.load_state_dict(c.state_dict())
    assert d.state_dict() == c.state_dict()
    assert ReferenceController(cooldown=0).decide(100.0) is None  # off


# ---------------------------------------------------------------------------------------------- trainer
def test_one_step_statistics_and_what_trains(models, tmp_path):
    tr = make_trainer(models, tmp_path, max_steps=1)
    model = tr.model
    base_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    mb = next(iter(tr._batches(0, 0)))
    rec = tr.train_step(mb)
    for key in (
        "reward_mean",
        "reward_std",
        "adv_mean",
        "kl_raw",
        "kl_weighted",
        "clip_frac",
        "ratio_mean",
        "policy_loss",
        "grad_norm",
        "merges",
        "entropy/scale0",
        "entropy/scale3",
        "rollouts",
    ):
        assert key in rec
    assert rec["rollouts"] == 2 * 4
    assert abs(rec["adv_mean"]) < 1e-5
    assert rec["ratio_mean"] == pytest.approx(1.0) and rec["clip_frac"] == 0  # one pass: new == old
    assert rec["kl_raw"] == pytest.approx(0.0, abs=1e-9)  # B = 0 at the start: policy == reference
    assert rec["grad_norm"] > 0
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base_before.items())  # only LoRA moved
    assert any(m.lora_B.abs().sum() > 0 for m in lora_modules(model).values())
    rec2 = tr.train_step(next(iter(tr._batches(0, 1))))
    assert rec2["kl_raw"] > 0  # the policy has left the reference


def test_ppo_passes_let_the_clip_act_and_sampled_logprobs(models, tmp_path):
    tr = make_trainer(models, tmp_path, ppo_epochs=3, lr=5e-2, logprob_dist="sampled", top_k=16, top_p=0.9)
    rec = tr.train_step(next(iter(tr._batches(0, 0))))
    assert rec["ratio_max"] > 1.0  # later passes score the updated policy against the stored old one
    assert rec["clip_frac"] > 0


def test_vmr_alternates_prefix_and_suffix_steps(models, tmp_path):
    tr = make_trainer(models, tmp_path, vmr=True, vmr_k=2, vmr_prefix_updates=3, max_steps=4, n=8)
    assert tr.m == 1
    assert [tr.scorer.phase(s) for s in range(8)] == ["prefix"] * 3 + ["suffix"] + ["prefix"] * 3 + ["suffix"]
    st = tr.fit(progress=False)
    steps = [h for h in st.history if "phase" in h]
    assert [h["phase"] for h in steps] == ["prefix", "prefix", "prefix", "suffix"]
    assert steps[0]["rollouts"] == 2 * 4 * 2  # G prefixes x K continuations per condition
    assert steps[3]["rollouts"] == 2 * 4


@pytest.mark.parametrize("mode", ["reward_grad", "error"])
def test_mask_propagation_runs_and_weights_tokens(models, tmp_path, mode):
    tr = make_trainer(models, tmp_path, mask_propagation=mode, mp_mix=1.0)
    rb = RewardBatch(target=torch.rand(3, 3, 16, 16), content=None, style=None)
    imgs = torch.rand(3, 3, 16, 16)
    r, rel = tr.scorer.rewards(imgs, rb)
    assert r.shape == (3,) and rel.shape == (3, 16, 16) and (rel >= 0).all()
    if mode == "error":
        assert torch.allclose(rel, (imgs - rb.target).abs().mean(1))
    rec = tr.train_step(next(iter(tr._batches(0, 0))))
    assert math.isfinite(rec["policy_loss"]) and rec["grad_norm"] > 0


def test_merge_bakes_the_adapter_and_resets_the_reference(models, tmp_path):
    tr = make_trainer(
        models,
        tmp_path,
        max_steps=3,
        merge_cooldown=2,
        merge_patience=0,
        merge_min_gain=-1.0,
        restore_peak=False,
    )
    st = tr.fit(progress=False)
    merges = [h for h in st.history if h.get("merge")]
    assert merges and merges[0]["step"] == 2
    # right after a merge the adapter's update is zero: the policy equals its (new) reference
    mods = lora_modules(tr.model)
    assert len(tr.controller.merges) >= 1
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["base"] is not None and any(".base_weight" in k for k in ck["base"])
    assert all(m.lora_A.abs().sum() > 0 for m in mods.values())


def test_resume_continues_exactly(models, tmp_path):
    model, vae = models
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    a = make_trainer(
        models, tmp_path, "a", max_steps=4, n=4, merge_cooldown=2, merge_patience=0, merge_min_gain=-1.0
    )
    a.fit(progress=False)
    want = lora_state_dict(a.model)
    hist_a = [h["reward_mean"] for h in a.state.history if "reward_mean" in h]

    def fresh():

        m, v = tiny_models(tag="grpo")
        m.load_state_dict(snapshot)
        assert not has_lora(m)
        return m, v

    b = make_trainer(
        fresh(), tmp_path, "b", max_steps=4, n=4, merge_cooldown=2, merge_patience=0, merge_min_gain=-1.0
    )
    b.fit(progress=False, stop_after=3)
    assert b.state.step == 3
    c = make_trainer(
        fresh(), tmp_path, "b", max_steps=4, n=4, merge_cooldown=2, merge_patience=0, merge_min_gain=-1.0
    )
    assert c.resume()
    assert c.state.step == 3 and len(c.controller.merges) == len(b.controller.merges)
    c.fit(progress=False)
    got = lora_state_dict(c.model)
    assert all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)
    hist_c = [h["reward_mean"] for h in c.state.history if "reward_mean" in h]
    assert hist_c == pytest.approx(hist_a, abs=1e-6)
    del a, b


def test_export_loads_and_matches_the_trained_policy(models, tmp_path):
    from stylevar.io import load_pretrained

    tr = make_trainer(models, tmp_path, max_steps=2)
    tr.fit(progress=False)
    run = tmp_path / "run"
    assert (run / "final" / "config.json").exists() and (run / "final_lora").exists()
    merged = load_pretrained(run / "final").model
    res = tr.vae.config.resolution
    cond = tr.model.conditioning(tr.vae, smooth_images(2, res, 5), smooth_images(2, res, 6))
    out = tr.model.generate(tr.vae, cond, seed=[1, 2], return_logits=True)
    x = tr.vae.quantize.idx_to_teacher_input(out.tokens)
    assert torch.allclose(merged(x, cond), tr.model(x, cond), atol=1e-4)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "eval_reward" in r] == [0, 2]


def test_held_out_reward_at_start_every_eval_every_steps_and_once_at_the_end(models, tmp_path):
    tr = make_trainer(models, tmp_path, max_steps=2, eval_every=1)
    tr.fit(progress=False)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "eval_reward" in r] == [0, 1, 2]  # step 2 is also the end: once
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["state"]["best_eval"] == max(
        r["eval_reward"] for r in lines if "eval_reward" in r and r["step"] > 0
    )


def test_full_parameter_mode_keeps_a_frozen_reference(models, tmp_path):
    tr = make_trainer(models, tmp_path, lora=False, max_steps=2)
    assert tr.ref_model is not None and not has_lora(tr.model)
    assert not any(p.requires_grad for p in tr.model.style_encoder.parameters())
    ref_before = {k: v.clone() for k, v in tr.ref_model.state_dict().items()}
    tr.fit(progress=False)
    assert all(torch.equal(v, tr.ref_model.state_dict()[k]) for k, v in ref_before.items())
    assert tr.state.history[-2]["kl_raw"] > 0


# ---------------------------------------------------------------------------------------------- learning
def _learn(sign: float, tmp_path: Path, steps: int = 20) -> tuple[float, float, float]:
    """GRPO on 8 conditions whose targets are flat images of the content's mean colour; reward sign * -L1."""
    model, vae = tiny_models(tag="learn", patch_nums=(1, 2, 3), vocab=16)
    res = vae.config.resolution
    ds = ToyConditions(8, res, seed=20)
    ds.t = ds.c.mean((2, 3), keepdim=True).expand_as(ds.c).clone()
    tr = GRPOTrainer(
        model,
        vae,
        ds,
        lambda x, b: sign * pixel_reward(x, b),
        tmp_path / f"learn{sign:+.0f}",
        small_cfg(
            max_steps=steps,
            batch_size=4,
            group_size=8,
            micro_batch=32,
            lr=1e-2,
            lora_rank=8,
            lora_alpha=16,
            beta=0.02,
            eval_pairs=8,
            eval_samples=2,
        ),
        val_set=ds,
    )
    st = tr.fit(progress=False)
    ev = [h["eval_reward"] for h in st.history if "eval_reward" in h]
    return ev[0], ev[-1], max(h["kl_raw"] for h in st.history if "kl_raw" in h)


@pytest.mark.slow
def test_grpo_learns_a_weight_free_reward_and_its_opposite(tmp_path):
    # measured (2 CPU cores): -0.2317 -> -0.2213 and, flipped, +0.2317 -> +0.2507; KL <= 1.6
    start, end, kl = _learn(+1.0, tmp_path)
    assert end > start + 0.005, (start, end)  # pixel error falls (reward in [0, 1] units)
    assert kl < 5.0  # bounded: no rollout dropped for a KL spike needed
    start_n, end_n, kl_n = _learn(-1.0, tmp_path)
    assert start_n == pytest.approx(-start)  # same model, same seeds, same samples
    assert end_n > start_n + 0.005, (start_n, end_n)  # the flipped reward: pixel error grows
    assert kl_n < 5.0


# ---------------------------------------------------------------------------------------------- CLI, DDP
def test_cli_grpo_end_to_end(tmp_path, models):
    from stylevar.cli import main
    from stylevar.data.synthetic import make_synthetic
    from stylevar.io import save_pretrained

    model, vae = models
    res = vae.config.resolution
    data = make_synthetic(tmp_path / "data", num_contents=6, num_styles=6, num_triplets=12, size=res, seed=0)
    save_pretrained(tmp_path / "sft", model, vae)
    args = [
        "grpo",
        str(data),
        "--init",
        str(tmp_path / "sft"),
        "-o",
        str(tmp_path / "run"),
        "--reward",
        "pixel",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--group-size",
        "2",
        "--micro-batch",
        "4",
        "--lora-rank",
        "2",
        "--lora-alpha",
        "4",
        "--num-workers",
        "0",
        "--eval-pairs",
        "2",
        "--val-fraction",
        "0.2",
        "--device",
        "cpu",
        "-q",
    ]
    assert main(args) == 0
    run = tmp_path / "run"
    assert (run / "final" / "model.safetensors").exists() and (run / "grpo_args.json").exists()
    assert main(args) == 1  # last.pt exists and no --resume: refused, nothing overwritten
    bad = args.copy()
    bad[bad.index("pixel")] = "nonsense:2"
    bad[bad.index(str(run))] = str(tmp_path / "run2")
    assert main(bad) == 1


def test_torchrun_ddp_equals_one_process(tmp_path):
    """2 gloo processes x 1 condition == 1 process x 2 conditions (same rollouts, averaged gradients)."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    worker = str(Path(__file__).parent / "ddp_grpo_worker.py")
    env = torchrun_env()
    for name, nproc, batch, port in (("two", 2, 1, 29561), ("one", 1, 2, 29562)):
        cmd = [
            torchrun,
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(port),
            worker,
            str(tmp_path / name),
            str(batch),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-8000:]
    two = torch.load(tmp_path / "two" / "lora.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "lora.pt", weights_only=True)
    assert two["merges"] == one["merges"] == 2  # the controller decided alike on global statistics
    a, b = two["state"], one["state"]
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in b)
    start, _ = tiny_models(tag="ddp-grpo")
    start = start.state_dict()
    moved = [
        k
        for k in b
        if k.endswith(".base_weight")
        and not torch.allclose(b[k], start[k.replace(".base_weight", ".weight")])
    ]
    assert moved  # the merge baked the trained adapters into the base


@pytest.mark.parametrize("form", ["lora", "wrapped", "merged"])
def test_upstream_grpo_forms_written_and_read_back(tmp_path, form):
    from stylevar.io import load_pretrained, save_pretrained, save_upstream_grpo

    tr = make_trainer(tiny_models(tag="forms"), tmp_path, max_steps=1)
    tr.fit(progress=False)
    save_pretrained(tmp_path / "base", *tiny_models(tag="forms"))  # what the run started from
    path = save_upstream_grpo(tmp_path / f"grpo_{form}.pth", tr.model, form, step=1)
    ck = torch.load(path, weights_only=True)
    assert ck["args"] == {"lora_rank": 4, "lora_alpha": 8.0} and ck["step"] == 1
    keys = set(ck["model"])
    if form == "lora":
        assert keys and all(".lora_" in k for k in keys)
    elif form == "wrapped":
        assert any(k.endswith(".base_weight") for k in keys) and any(".lora_A" in k for k in keys)
    else:
        assert not any(".lora_" in k or ".base_weight" in k for k in keys)
    base = tmp_path / "base" if form == "lora" else None
    got = load_pretrained(
        path, base=base, vae=None if base else tmp_path / "base" / "vqvae.safetensors"
    ).model
    res = tr.vae.config.resolution
    cond = tr.model.conditioning(tr.vae, smooth_images(2, res, 7), smooth_images(2, res, 8))
    toks = tr.model.generate(tr.vae, cond, seed=[1, 2]).tokens
    x = tr.vae.quantize.idx_to_teacher_input(toks)
    assert torch.allclose(got(x, cond), tr.model(x, cond), atol=1e-4)
