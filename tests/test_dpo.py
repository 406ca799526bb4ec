"""DPO post-training (``DPOTrainer``, ``GRPOConfig.objective="dpo"``, ``stylevar dpo``): the loss, the pairs,
learning a reward and its opposite on a tiny model (as GRPO's test does), and the command end to end."""

from __future__ import annotations

import math

import pytest
import torch
from test_grpo import ToyConditions, small_cfg

from helpers import tiny_models
from stylevar.training.dpo import DPOTrainer
from stylevar.training.grpo_loss import dpo_loss, preference_pairs
from stylevar.training.rewards import pixel_reward


@pytest.fixture
def models():
    return tiny_models(tag="grpo")


def test_preference_pairs_and_the_loss():
    r = torch.tensor([[0.1, 0.5, 0.3], [0.2, 0.2, 0.2], [0.9, 0.0, 0.4]])
    chosen, rejected = preference_pairs(r)
    assert chosen.tolist() == [1, 6] and rejected.tolist() == [0, 7]  # the all-equal group gives no pair
    s = torch.zeros(4, requires_grad=True)
    ref = torch.zeros(4)
    loss, stats = dpo_loss(s[:2], s[2:], ref[:2], ref[2:], beta=0.5)
    assert loss.item() == pytest.approx(math.log(2)) and stats["dpo_acc"] == 0.0
    loss.backward()
    assert (s.grad[:2] < 0).all() and (s.grad[2:] > 0).all()  # descent raises chosen, lowers rejected
    better, _ = dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), torch.zeros(1), torch.zeros(1), 0.5)
    assert better.item() < math.log(2)


def _learn(sign: float, tmp_path, steps: int = 20) -> tuple[float, float]:
    """DPO on GRPO's learning task (8 conditions, targets = the content's mean colour), reward sign * -L1."""
    model, vae = tiny_models(tag="learn", patch_nums=(1, 2, 3), vocab=16)
    res = vae.config.resolution
    ds = ToyConditions(8, res, seed=20)
    ds.t = ds.c.mean((2, 3), keepdim=True).expand_as(ds.c).clone()
    tr = DPOTrainer(
        model, vae, ds, lambda x, b: sign * pixel_reward(x, b), tmp_path / f"dpo{sign:+.0f}",
        small_cfg(objective="dpo", dpo_beta=0.1, max_steps=steps, batch_size=4, group_size=8, micro_batch=32,
                  lr=1e-2, lora_rank=8, lora_alpha=16, eval_pairs=8, eval_samples=2),
        val_set=ds,
    )  # fmt: skip
    st = tr.fit(progress=False)
    ev = [h["eval_reward"] for h in st.history if "eval_reward" in h]
    steps_ = [h for h in st.history if "dpo_loss" in h]
    assert steps_ and all(h["pairs"] > 0 for h in steps_)
    return ev[0], ev[-1]


@pytest.mark.slow
def test_dpo_learns_a_reward_and_its_opposite(tmp_path):
    # measured (2 CPU cores): -0.2303 -> -0.2222 and, flipped, +0.2303 -> +0.2457
    start, end = _learn(+1.0, tmp_path)
    assert end > start + 0.005, (start, end)
    start_n, end_n = _learn(-1.0, tmp_path)
    assert start_n == pytest.approx(-start)  # same model, seeds and samples
    assert end_n > start_n + 0.005, (start_n, end_n)


def test_cli_dpo_end_to_end(tmp_path, models):
    from stylevar.cli import main
    from stylevar.data.synthetic import make_synthetic
    from stylevar.io import save_pretrained

    model, vae = models
    res = vae.config.resolution
    data = make_synthetic(tmp_path / "data", num_contents=6, num_styles=6, num_triplets=12, size=res, seed=0)
    save_pretrained(tmp_path / "sft", model, vae)
    args = ["dpo", str(data), "--init", str(tmp_path / "sft"), "-o", str(tmp_path / "run"), "--reward", "pixel",
            "--max-steps", "2", "--batch-size", "2", "--group-size", "3", "--micro-batch", "4", "--lora-rank", "2",
            "--lora-alpha", "4", "--num-workers", "0", "--eval-pairs", "2", "--val-fraction", "0.2",
            "--device", "cpu", "-q"]  # fmt: skip
    assert main(args) == 0
    run = tmp_path / "run"
    assert (run / "final" / "model.safetensors").exists()
    import json

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("dpo_loss" in r for r in rows)
    assert '"objective": "dpo"' in (run / "grpo_args.json").read_text()
