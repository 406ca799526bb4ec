"""One process of the demo's multi-process SFT: ``torchrun ... -m stylevar.demo.sft_worker JOB.json``.

:func:`stylevar.demo.stages.spawn_sft` writes the job file and starts the processes; each enters the
process group through :func:`stylevar.training.distributed.launch` (gloo on the CPU), trains its share of
every batch, and rank 0 exports ``sft/final`` and writes ``sft/val.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..files import atomic_write_json
from .config import DemoConfig, ModelBudget
from .stages import sft_trainer, stop_if_signalled


def config_class(name: str) -> type[ModelBudget]:
    """The demo config class a job names (the synthetic or the real-photo demo's)."""
    from .real import RealDemoConfig

    classes = {"DemoConfig": DemoConfig, "RealDemoConfig": RealDemoConfig}
    if name not in classes:
        raise ValueError(f"unknown demo config {name!r}")
    return classes[name]


def run(job_file: str | Path) -> None:
    from ..io import load_vqvae
    from ..training.distributed import launch

    job = json.loads(Path(job_file).read_text())
    out = Path(job["out"])
    cfg = config_class(job.get("config_class", "DemoConfig")).from_dict(job["config"])

    def body(device: torch.device, rank: int, world: int) -> None:
        vae = load_vqvae(out / "tokenizer" / "final").eval().requires_grad_(False)
        train_source, held_source = Path(job["train_source"]), Path(job["held_source"])
        sft, _ = sft_trainer(cfg, vae, train_source, held_source, out, job["precision"], device, world)
        sft.fit(progress=job["progress"] and rank == 0)
        stop_if_signalled(sft)
        if rank == 0:  # validation has no collective (the unwrapped model): rank 0 alone scores and writes it
            atomic_write_json(out / "sft" / "val.json", sft.validate())

    launch(body, device="cpu")


if __name__ == "__main__":
    run(sys.argv[1])
