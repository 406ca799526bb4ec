"""The run harness: the one training loop that the tokenizer, SFT and GRPO trainers share.

A trainer subclasses :class:`Trainer` and implements what is its own -- its step, its validation,
what its checkpoint holds, its export -- the way TRL's trainers override hooks of one base:

==============================  ==================================================================
hook                            what it does
==============================  ==================================================================
``train_step(group)``           one optimizer step over this process's micro-batches of one
                                global batch; returns the step's record, or None when the step
                                was skipped (non-finite loss, see :meth:`Trainer.check_finite`)
``validate()``                  held-out metrics (``{}`` without a validation set)
``checkpoint_payload()``        what the checkpoint holds besides position, RNG and configs
                                (model, optimizer, scaler, trainer state)
``load_checkpoint_payload()``   the way back, when resuming
``checkpoint_config()``         the configurations that must match to resume (model, VQ-VAE...)
``export()``                    the finished model in its folder format (every process calls it)
``progress_postfix(record)``    what the progress bar shows
==============================  ==================================================================

The harness owns the rest, identically for the three:

* **Data**: the global batch (``per_rank_batch x processes``) is cut from a permutation of the data
  seeded by (seed, epoch) only, and each process takes its slice; the loader has its own seeded
  generator, so the order never touches (or depends on) the global RNG, the number of processes, or
  interruptions. ``set_epoch(epoch)`` is called on datasets that have it (augmentations seeded by
  (seed, epoch, index)).
* **The loop**: micro-batches are grouped per optimizer step (``grad_accum``); a fresh run seeds the
  global RNG from ``seed`` and the rank; records every ``log_every`` steps go to ``metrics.jsonl`` and
  TensorBoard (:class:`~stylevar.training.runs.RunLogger`) and to :attr:`Trainer.history`.
* **Validation**: every ``val_every`` steps (``eval_every`` for GRPO), at epoch ends (trainers that ask),
  and once more at the end -- never twice on one step; the best value of :attr:`Trainer.best_metric`
  saves ``best.pt``. All processes take the same decision (rank 0's metrics are broadcast).
* **Checkpoints** (:mod:`stylevar.io.run_files`): ``last.pt`` every ``save_every`` steps, at epoch ends,
  on a stop signal, after ``stop_after`` steps and at the end; rolling ``step-<N>.pt``; written
  atomically, read with ``weights_only=True``, checked for their format and for the model
  configuration when resuming; RNG states included, so a resumed run continues bit for bit.
* **Stop signals**: SIGTERM/SIGINT become a flag checked after every step; the processes agree (one
  all-reduce), save ``last.pt`` and return with :attr:`Trainer.stopped_by` set. A second Ctrl-C
  aborts without saving.
* **Non-finite losses** (:meth:`Trainer.check_finite`): ``on_nonfinite="stop"`` saves the last good
  state and raises :class:`~stylevar.errors.NonFiniteLossError`; ``skip`` drops the step (it is made
  up: the run still does ``total_steps`` steps), counts it and logs the reason.
* **The end**: final validation, ``last.pt``, :meth:`Trainer.export` into ``run_dir/final``, then every
  process waits for the export.

To add a trainer: a config dataclass in :mod:`stylevar.training.config` (fields ``epochs``,
``max_steps``, ``seed``, ``save_every``, ``keep_rolling``, ``log_every``, ``num_workers`` and the
validation cadence), a ``*State`` dataclass deriving from :class:`RunState`, and a subclass that sets
the class attributes below and implements the hooks (see ``docs/architecture.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from .. import threads
from ..errors import CheckpointError, ConfigError, NonFiniteLossError
from ..io import load_training_checkpoint, resume_path, save_checkpoint
from . import distributed as D
from .runs import RunLogger, StopSignals, capture_rng, epoch_permutation, restore_rng, world

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """Where a run stands (saved in every checkpoint); trainers extend it with their own fields."""

    epoch: int = 0
    batch: int = 0  #: global batches of this epoch already consumed
    step: int = 0  #: optimizer steps done
    skipped_steps: int = 0  #: steps dropped for a non-finite loss (made up: total_steps still run)


class Trainer:
    """The run skeleton of every stylevar trainer (see the module docstring for the hooks)."""

    #: label of the progress bar; also the key of the trainer's config in the checkpoint's ``config``
    name: str = "trainer"
    #: how messages call the trainer ("SFT")
    label: str = "trainer"
    #: the ``"format"`` of its checkpoints (e.g. ``stylevar-sft-1``)
    checkpoint_format: str = ""
    #: the entry of :meth:`checkpoint_config` that must match to resume, and how messages call it
    model_config_key: str = "stylevar"
    model_config_label: str = "model"
    #: the state class (a :class:`RunState` dataclass)
    state_cls: type = RunState
    #: the validation metric that picks ``best.pt``, whether lower or higher is better, and the
    #: state field that holds the best value so far
    best_metric: str = "val_loss"
    best_mode: str = "min"
    best_field: str = "best_val"
    #: what the data items are called in messages ("images", "triplets", "conditions")
    item_label: str = "items"
    #: validate at every epoch end (besides ``val_every`` and the end), and before the first step
    validate_at_epoch_end: bool = True
    validate_at_start: bool = False
    #: the throughput field added to each step record (None: none)
    rate_key: str | None = "imgs_per_s"

    def __init__(
        self,
        config: Any,
        train_set: Dataset,
        run_dir: str | os.PathLike,
        *,
        val_set: Dataset | None,
        device: str | torch.device,
        micro_batch: int,
        grad_accum: int = 1,
        hint: str = "lower the batch size",
    ):
        self.cfg = config
        self.device = torch.device(device)
        self.rank, self.world = world()
        self.train_set, self.val_set = train_set, val_set
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.micro_batch, self.grad_accum = int(micro_batch), int(grad_accum)
        self.global_batch = self.micro_batch * self.grad_accum * self.world
        self.batches_per_epoch = len(train_set) // self.global_batch
        if self.batches_per_epoch < 1:
            raise ConfigError(
                f"the training set has {len(train_set)} {self.item_label}, fewer than one global batch "
                f"({self.global_batch}); {hint}"
            )
        self.total_steps = config.max_steps or config.epochs * self.batches_per_epoch
        self.state = self.state_cls()
        self.logger = RunLogger(self.run_dir, self.rank)
        self.stopped_by: int | None = None  #: the signal that stopped the last :meth:`fit`, if any
        self.final_dir: Path | None = None  #: the export of the last finished :meth:`fit` (rank 0)
        self._history: list[dict] = []
        self._validated_at = -1

    # ------------------------------------------------------------------------------ hooks
    def train_step(self, group: list) -> dict | None:
        """One optimizer step over this process's micro-batches ``group``; its record, or None if skipped."""
        raise NotImplementedError

    def validate(self) -> dict:
        """Held-out metrics (must contain :attr:`best_metric`), ``{}`` when there is nothing to validate."""
        return {}

    def checkpoint_payload(self) -> dict:
        """The trainer's own checkpoint entries (``model``, ``optimizer``...). Under FSDP every process
        calls it (gathering shards is a collective); only rank 0's result is written."""
        raise NotImplementedError

    def load_checkpoint_payload(self, ck: dict, path: Path) -> None:
        """Restore what :meth:`checkpoint_payload` saved (position, RNG and state are the harness's)."""
        raise NotImplementedError

    def checkpoint_config(self) -> dict:
        """Configurations stored beside the trainer's own (``{"stylevar": ..., "vqvae": ...}``)."""
        return {}

    def export(self) -> Path | None:
        """Write the finished model (every process calls it; returns the folder on rank 0)."""
        return None

    def progress_postfix(self, record: dict) -> dict:
        """What the progress bar shows after a step."""
        return {}

    def must_log(self, record: dict) -> bool:
        """True for a step record that is logged whatever ``log_every`` says (e.g. GRPO's merges)."""
        return False

    @property
    def history(self) -> list[dict]:
        """Every record this process logged (rank 0: steps and validations), oldest first."""
        return self._history

    @property
    def validate_every(self) -> int:
        """Validate every this many steps (0: only at epoch ends and the end); the config's ``val_every``."""
        return self.cfg.val_every

    # ------------------------------------------------------------------------------ processes
    def data_parallel(
        self, module: torch.nn.Module, *, find_unused_parameters: bool = False
    ) -> torch.nn.Module:
        """``module`` wrapped in DDP when several processes train (gradients averaged over them on the
        last micro-batch of a step: ``no_sync`` before), else ``module`` itself."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=find_unused_parameters)

    # ------------------------------------------------------------------------------ data
    def _batches(self, epoch: int, start: int) -> Iterator[list]:
        """This process's micro-batches of global batches ``start..`` of ``epoch``, grouped per step."""
        order = epoch_permutation(len(self.train_set), self.cfg.seed, epoch)
        per_rank = self.micro_batch * self.grad_accum
        indices: list[int] = []
        for b in range(start, self.batches_per_epoch):
            chunk = order[b * self.global_batch : (b + 1) * self.global_batch]
            indices.extend(chunk[self.rank * per_rank : (self.rank + 1) * per_rank])
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        loader = DataLoader(
            Subset(self.train_set, indices),
            batch_size=self.micro_batch,
            shuffle=False,
            num_workers=self.cfg.num_workers,
            generator=torch.Generator().manual_seed(self.cfg.seed),  # never draws from the global RNG
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        group: list = []
        for mb in loader:
            group.append(mb)
            if len(group) == self.grad_accum:
                yield group
                group = []

    # ------------------------------------------------------------------------------ policies
    def check_finite(self, loss: float) -> bool:
        """The non-finite policy, for a step's loss (the same value on every process). True: go on.

        A non-finite loss clears the gradients and counts the step as skipped; ``on_nonfinite="stop"``
        then saves ``last.pt`` (the last good state: the step has not changed the weights) and raises
        :class:`NonFiniteLossError`; ``"skip"`` logs the reason and returns False.
        """
        if math.isfinite(loss):
            return True
        self.optimizer.zero_grad(set_to_none=True)
        self.state.skipped_steps += 1
        msg = f"non-finite loss ({loss}) at step {self.state.step}"
        if self.cfg.on_nonfinite == "stop":
            path = self.save("last")
            raise NonFiniteLossError(
                f"{msg}; stopped, last good state saved in {path or self.ckpt_dir / 'last.pt'}; lower the "
                "learning rate, use fp32/bf16, check the data, or pass on_nonfinite=skip (--on-nonfinite skip)"
            )
        logger.warning("%s: step skipped (%d so far)", msg, self.state.skipped_steps)
        self.logger.log(
            {
                "step": self.state.step,
                "skipped": self.state.skipped_steps,
                "reason": f"non-finite loss ({loss})",
            }
        )
        return False

    def _agreed_signal(self, received: int | None) -> int | None:
        """The stop signal agreed by all processes (a signal seen by any one stops all at the same step)."""
        if self.world == 1:
            return received
        flag = torch.tensor([received or 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    # ------------------------------------------------------------------------------ logs and validation
    def _log(self, record: dict) -> None:
        if self.rank == 0:
            self.history.append(record)
        self.logger.log(record)

    def _is_better(self, value: float) -> bool:
        best = getattr(self.state, self.best_field)
        return value < best if self.best_mode == "min" else value > best

    def _validate_and_keep_best(self, *, keep_best: bool = True) -> None:
        if self._validated_at == self.state.step:  # val_every, an epoch end and the end on one step
            return
        metrics = self.validate()
        if self.world > 1:  # one decision for all processes (saving is a collective under FSDP)
            metrics = D.broadcast_object(metrics)
        if not metrics:
            return
        self._validated_at = self.state.step
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self._log({"step": self.state.step, "epoch": self.state.epoch, **scalars})
        if keep_best and self._is_better(metrics[self.best_metric]):
            setattr(self.state, self.best_field, metrics[self.best_metric])
            self.save("best")

    # ------------------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> dict:
        return {
            "format": self.checkpoint_format,
            **self.checkpoint_payload(),
            "state": dataclasses.asdict(self.state),
            "rng": capture_rng(),
            "config": {self.name: self.cfg.to_dict(), **self.checkpoint_config(), "world_size": self.world},
        }

    @property
    def collective_save(self) -> bool:
        """True when saving needs every process (sharded models); then every process calls :meth:`save`."""
        return False

    def save(self, kind: str = "last") -> Path | None:
        """Write ``last``/``best``/``rolling`` (``step-<N>.pt``) checkpoints (rank 0), atomically."""
        if self.rank != 0 and not self.collective_save:
            return None
        ck = self._checkpoint()
        if self.rank != 0:
            return None
        return save_checkpoint(
            self.ckpt_dir, ck, kind, step=self.state.step, keep_rolling=self.cfg.keep_rolling
        )

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Load ``path`` (default ``checkpoints/last.pt`` when present); False when there is nothing to resume.

        The trainer must have been built on the same model configuration; changed settings or another
        number of processes are allowed (with a warning: the run then differs from an uninterrupted one).
        """
        p = resume_path(path, self.ckpt_dir)
        if p is None:
            return False
        ck = load_training_checkpoint(p, self.checkpoint_format, f"{self.label} training")
        saved = ck["config"]
        key = self.model_config_key
        if saved.get(key) != self.checkpoint_config()[key]:
            raise CheckpointError(
                f"{p}: written for another {self.model_config_label} configuration; resume with the same model"
            )
        mine = self.cfg.to_dict()
        changed = sorted(k for k, v in saved.get(self.name, {}).items() if mine.get(k, v) != v)
        if saved.get("world_size", 1) != self.world:
            changed.append("world_size")
        if changed:
            logger.warning(
                "resuming %s with changed settings (%s); the run will differ from an uninterrupted one",
                p,
                ", ".join(changed),
            )
        self.load_checkpoint_payload(ck, p)
        self.state = self.state_cls(**ck["state"])
        restore_rng(ck["rng"])
        logger.info(
            "resumed from %s at epoch %d, batch %d, step %d",
            p,
            self.state.epoch,
            self.state.batch,
            self.state.step,
        )
        return True

    # ------------------------------------------------------------------------------ the loop
    @property
    def fresh(self) -> bool:
        return self.state.step == 0 and self.state.batch == 0 and self.state.epoch == 0

    def fit(self, *, progress: bool = True, stop_after: int | None = None) -> Any:
        """Train to the end (or ``stop_after`` more batches), saving, logging and validating as configured.

        Returns the state. At the end the model is exported (:meth:`export`, ``final_dir``). On
        SIGTERM/SIGINT ``last.pt`` is saved, :attr:`stopped_by` is set to the signal and fit returns.
        The run uses at most :meth:`cpu_threads` intra-op threads (restored after it).
        """
        with threads.limited(self.cpu_threads()):
            return self._fit(progress=progress, stop_after=stop_after)

    def cpu_threads(self) -> int:
        """How many intra-op threads a run may use (default: torch's count). A trainer whose steps are made of
        short parallel regions gives fewer (docs/speed.md, "On a shared machine")."""
        return torch.get_num_threads()

    def _fit(self, *, progress: bool, stop_after: int | None) -> Any:
        cfg = self.cfg
        self.stopped_by = None
        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.state.step, desc=self.name, dynamic_ncols=True)
        if self.fresh:  # model randomness (drop path, jitter, noise) from the seed alone
            torch.manual_seed(cfg.seed * 1000 + self.rank)
            random.seed(cfg.seed * 1000 + self.rank)
            if self.validate_at_start and not self.history:
                self._validate_and_keep_best(keep_best=False)
        done = 0
        try:
            with StopSignals() as stop:
                while self.state.step < self.total_steps:
                    epoch = self.state.epoch
                    t0, items = time.perf_counter(), 0
                    for group in self._batches(epoch, self.state.batch):
                        record = self.train_step(group)
                        self.state.batch += 1
                        done += 1
                        if record is not None:
                            items += self.global_batch
                            self._after_step(record, epoch, items, t0, bar)
                        received = self._agreed_signal(stop.received)
                        if received is not None:
                            self.save("last")
                            self.stopped_by = received
                            logger.warning(
                                "signal %d: saved %s and stopped", received, self.ckpt_dir / "last.pt"
                            )
                            return self.state
                        if self.state.step >= self.total_steps or (
                            stop_after is not None and done >= stop_after
                        ):
                            break
                    if self.state.batch >= self.batches_per_epoch:
                        self.state.epoch += 1
                        self.state.batch = 0
                        if self.validate_at_epoch_end:
                            self._validate_and_keep_best()
                    if self.state.step < self.total_steps:
                        self.save("last")
                        if stop_after is not None and done >= stop_after:
                            return self.state
                self._validate_and_keep_best()  # the final model (once, if nothing else did at this step)
                self.save("last")
        finally:
            if bar is not None:
                bar.close()
            self.logger.close()
        self.final_dir = self.export()
        if self.world > 1:
            dist.barrier()  # every process returns once the export is complete
        return self.state

    def _after_step(self, record: dict, epoch: int, items: int, t0: float, bar: Any) -> None:
        cfg = self.cfg
        self.state.step += 1
        step = self.state.step
        record.update(step=step, epoch=epoch)
        if self.rate_key is not None:
            record[self.rate_key] = items / (time.perf_counter() - t0)
        if step % cfg.log_every == 0 or step == self.total_steps or self.must_log(record):
            self._log(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(**self.progress_postfix(record))
        if self.validate_every and step % self.validate_every == 0:
            self._validate_and_keep_best()
        if cfg.save_every and step % cfg.save_every == 0:
            self.save("last")
            self.save("rolling")
