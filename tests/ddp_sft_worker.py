"""Run by tests/test_sft.py under torchrun (gloo): a few SFT steps, then rank 0 saves the parameters."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from test_sft import ToyTriplets  # noqa: E402

from helpers import tiny_models  # noqa: E402
from stylevar.training import distributed as D  # noqa: E402
from stylevar.training.sft import SFTConfig, SFTTrainer  # noqa: E402


def main(out: str, micro: int, accum: int) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    model, vae = tiny_models(tag="ddp", depth=2, num_heads=2, drop_path_rate=0.0)
    cfg = SFTConfig(
        micro_batch=micro, grad_accum=accum, max_steps=3, lr=3e-3, num_workers=0, save_every=0, warmup_steps=0
    )
    t = SFTTrainer(model, vae, ToyTriplets(16), Path(out) / "run", cfg)
    t.fit(progress=False)
    if dist.get_rank() == 0:
        torch.save(t.model.state_dict(), Path(out) / "params.pt")
    D.destroy()  # waits for every rank first


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
