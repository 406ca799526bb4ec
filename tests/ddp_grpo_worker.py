"""Run by tests/test_grpo.py under torchrun (gloo): a few GRPO steps, then rank 0 saves the LoRA weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from test_grpo import ToyConditions, small_cfg  # noqa: E402

from helpers import tiny_models  # noqa: E402
from stylevar.training import distributed as D  # noqa: E402
from stylevar.training.grpo import GRPOTrainer  # noqa: E402
from stylevar.training.rewards import build_reward  # noqa: E402


def main(out: str, batch: int) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    model, vae = tiny_models(tag="ddp-grpo")
    cfg = small_cfg(
        max_steps=2,
        batch_size=batch,
        group_size=4,
        micro_batch=8,
        merge_cooldown=1,
        merge_patience=0,
        merge_min_gain=-1.0,
        restore_peak=False,
    )
    t = GRPOTrainer(
        model, vae, ToyConditions(4, vae.config.resolution), build_reward("ssim"), Path(out) / "run", cfg
    )
    t.fit(progress=False)
    if dist.get_rank() == 0:
        torch.save({"state": t.model.state_dict(), "merges": len(t.controller.merges)}, Path(out) / "lora.pt")
    D.destroy()  # waits for every rank first


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
