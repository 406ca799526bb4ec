"""Run by tests/test_fsdp.py under ``torchrun --nproc_per_node 2`` (gloo, CPU): SFT with FSDP.

Phases, each a fresh trainer on the same tiny model and data (micro-batch 1 x accumulation 2 per
process, so the global batch is 4, as in the test's 1-process runs with micro-batch 1 x 4):

* ``full``: 2 steps, the checkpoint of step 1 kept as ``OUT/fsdp_full/run/checkpoints/step1.pt``; the gathered parameters
  go to ``OUT/fsdp_full.pt``;
* ``resumed``: resumes the test's 1-process checkpoint of step 1 (``OUT/one/run``) and trains to step 2; parameters
  to ``OUT/fsdp_resumed.pt``;
* ``bf16``: one step with bf16 units (``OUT/fsdp_bf16/run``).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from test_sft import ToyTriplets

from helpers import tiny_models
from stylevar.training import distributed as D
from stylevar.training.sft import SFTConfig, SFTTrainer


def trainer(run: Path, base: tuple, **kw) -> SFTTrainer:
    model, vae = copy.deepcopy(base)
    cfg = dict(micro_batch=1, grad_accum=2, max_steps=2, lr=3e-3, num_workers=0, save_every=0, warmup_steps=0)
    cfg.update(kw)
    return SFTTrainer(model, vae, ToyTriplets(16), run, SFTConfig(parallel="fsdp", log_every=1, **cfg))


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    base = tiny_models(tag="fsdp", depth=2, num_heads=2, drop_path_rate=0.0)  # built once

    t = trainer(out / "fsdp_full" / "run", base)
    t.fit(progress=False, stop_after=1)  # saves last.pt: keep it as step1.pt, then go on
    if rank == 0:
        os.link(t.ckpt_dir / "last.pt", t.ckpt_dir / "step1.pt")
    t.fit(progress=False)
    sd = D.full_state_dict(t.model, rank)
    if rank == 0:
        torch.save(sd, out / "fsdp_full.pt")

    t = trainer(out / "fsdp_resumed" / "run", base)
    assert t.resume(out / "one" / "run" / "checkpoints" / "step1.pt") and t.state.step == 1
    t.fit(progress=False)
    sd = D.full_state_dict(t.model, rank)
    if rank == 0:
        torch.save(sd, out / "fsdp_resumed.pt")

    trainer(out / "fsdp_bf16" / "run", base, precision="bf16", max_steps=1).fit(progress=False)
    del t  # its sharded model holds the process group: let destroy() free it (and join gloo's threads)
    D.destroy()  # waits for every rank first


if __name__ == "__main__":
    main(Path(sys.argv[1]))
