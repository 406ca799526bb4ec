"""The run harness (training/harness.py) on a toy trainer: what every trainer gets from it.

A linear model with dropout on random vectors trains in milliseconds, so each behaviour of the loop is
checked directly: the data order and the global RNG, validation cadence, checkpoints and bit-exact
resume, stop signals, the non-finite policy, the final export. The three real trainers are
subclasses (checked at the end); their own tests run the same behaviours on real models.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from stylevar.config import Serialisable, option
from stylevar.errors import CheckpointError, NonFiniteLossError
from stylevar.training.harness import RunState, Trainer


@dataclass
class ToyConfig(Serialisable):
    epochs: int = option(2, "epochs")
    max_steps: int = option(0, "steps")
    micro_batch: int = option(2, "micro-batch")
    grad_accum: int = option(2, "accumulation")
    lr: float = option(0.05, "learning rate")
    seed: int = option(0, "seed")
    val_every: int = option(0, "validation cadence")
    save_every: int = option(0, "checkpoint cadence")
    keep_rolling: int = option(2, "rolling checkpoints")
    log_every: int = option(1, "log cadence")
    num_workers: int = option(0, "loader processes")
    on_nonfinite: str = option("stop", "policy")


class Vectors(Dataset):
    def __init__(self, n: int = 16, nan_at: int | None = None, hook=None):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g)
        self.nan_at, self.hook, self.epochs_seen = nan_at, hook, []

    def __len__(self):
        return len(self.x)

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)

    def __getitem__(self, i):
        if self.hook:
            self.hook(i)
        x = self.x[i] * float("nan") if i == self.nan_at else self.x[i]
        return {"x": x, "y": self.y[i], "index": i}


@dataclass
class ToyState(RunState):
    best_val: float = math.inf
    history: list[dict] = field(default_factory=list)


class ToyTrainer(Trainer):
    name = label = "toy"
    checkpoint_format = "stylevar-toy-1"
    model_config_key = "toy_model"
    state_cls = ToyState
    item_label = "vectors"

    def __init__(self, run_dir, cfg=None, *, train_set=None, val_set=None, width: int = 8):
        cfg = cfg or ToyConfig()
        super().__init__(
            cfg,
            train_set if train_set is not None else Vectors(),
            run_dir,
            val_set=val_set,
            device="cpu",
            micro_batch=cfg.micro_batch,
            grad_accum=cfg.grad_accum,
        )
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(width, 1))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr)
        self.seen: list[list[int]] = []  # the dataset indices of every step, in order

    @property
    def history(self):
        return self.state.history

    def train_step(self, group):
        self.model.train()
        self.optimizer.zero_grad()
        total = 0.0
        for mb in group:
            loss = torch.nn.functional.mse_loss(self.model(mb["x"]), mb["y"])
            (loss / len(group)).backward()
            total += loss.item() / len(group)
        self.seen.append([int(i) for mb in group for i in mb["index"]])
        if not self.check_finite(total):
            return None
        self.optimizer.step()
        return {"loss": total}

    def validate(self):
        if self.val_set is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            x, y = self.val_set.x, self.val_set.y
            return {"val_loss": torch.nn.functional.mse_loss(self.model(x), y).item(), "val_list": [1, 2]}

    def checkpoint_payload(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_checkpoint_payload(self, ck, path):
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])

    def checkpoint_config(self):
        return {"toy_model": {"width": self.model[1].in_features}}

    def export(self):
        if self.rank != 0:
            return None
        out = self.run_dir / "final"
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), out / "model.pt")
        return out


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_data_order_is_seeded_per_epoch_and_leaves_the_global_rng_alone(tmp_path):
    t = ToyTrainer(tmp_path / "a", ToyConfig(epochs=2))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = [[int(i) for mb in g for i in mb["index"]] for g in t._batches(0, 0)]
    assert torch.equal(torch.get_rng_state(), before)  # building and reading the loader drew nothing
    again = [[int(i) for mb in g for i in mb["index"]] for g in ToyTrainer(tmp_path / "b")._batches(0, 0)]
    other_epoch = [[int(i) for mb in g for i in mb["index"]] for g in t._batches(1, 0)]
    assert first == again and first != other_epoch
    assert sorted(i for step in first for i in step) == list(range(16))  # an epoch is a permutation
    assert [[int(i) for mb in g for i in mb["index"]] for g in t._batches(0, 2)] == first[
        2:
    ]  # resume mid-epoch
    assert t.train_set.epochs_seen == [0, 1, 0]


def test_validation_cadence_never_twice_on_one_step_and_best_checkpoint(tmp_path):
    # 16 vectors, global batch 4: epochs of 4 steps; validation every 2 steps, at epoch ends, at the end
    t = ToyTrainer(tmp_path / "v", ToyConfig(epochs=2, val_every=2), val_set=Vectors(4))
    t.fit(progress=False)
    val_steps = [r["step"] for r in _records(t.run_dir) if "val_loss" in r]
    assert val_steps == [2, 4, 6, 8]  # steps 4 and 8 are also epoch ends and 8 the end: once each
    assert all("val_list" not in r for r in _records(t.run_dir))  # only scalars are logged
    best = torch.load(t.ckpt_dir / "best.pt", weights_only=True)
    assert best["state"]["best_val"] == min(r["val_loss"] for r in _records(t.run_dir) if "val_loss" in r)
    assert t.final_dir == t.run_dir / "final" and (t.final_dir / "model.pt").is_file()


def test_interrupted_and_resumed_equals_uninterrupted_bit_for_bit(tmp_path):
    cfg = ToyConfig(epochs=3, save_every=2)
    full = ToyTrainer(tmp_path / "full", cfg, val_set=Vectors(4))
    full.fit(progress=False)
    part = ToyTrainer(tmp_path / "part", cfg, val_set=Vectors(4))
    part.fit(progress=False, stop_after=5)  # mid-epoch 1 (steps 5 of 12), dropout draws in flight
    assert part.state.step == 5
    resumed = ToyTrainer(tmp_path / "part", cfg, val_set=Vectors(4))
    assert resumed.resume()
    assert (resumed.state.epoch, resumed.state.batch, resumed.state.step) == (1, 1, 5)
    resumed.fit(progress=False)
    assert part.seen + resumed.seen == full.seen  # the same batches in the same order
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # rolling checkpoints: the newest keep_rolling; every file loads without pickled code
    ck = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in ck.glob("step-*.pt")) == ["step-00000010.pt", "step-00000012.pt"]
    last = torch.load(ck / "last.pt", weights_only=True)
    assert last["format"] == "stylevar-toy-1" and last["config"]["world_size"] == 1
    assert last["config"]["toy"] == dataclasses.asdict(cfg) and last["state"]["step"] == 12


def test_resume_refuses_another_model_and_warns_about_changed_settings(tmp_path, caplog):
    ToyTrainer(tmp_path / "r", ToyConfig(max_steps=2)).fit(progress=False)
    wider = ToyTrainer(tmp_path / "r", ToyConfig(max_steps=2), width=8)
    wider.model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(4, 1))
    with pytest.raises(CheckpointError, match="another model configuration"):
        wider.resume()
    changed = ToyTrainer(tmp_path / "r", ToyConfig(max_steps=2, lr=0.01))
    with caplog.at_level("WARNING"):
        assert changed.resume()
    assert "changed settings (lr)" in caplog.text
    with pytest.raises(CheckpointError, match="not found"):
        ToyTrainer(tmp_path / "r").resume(tmp_path / "missing.pt")
    assert not ToyTrainer(tmp_path / "empty").resume()  # nothing to resume


def test_non_finite_loss_stops_with_the_last_good_state_or_is_skipped(tmp_path):
    t = ToyTrainer(tmp_path / "stop", ToyConfig(epochs=1), train_set=Vectors(nan_at=5))
    with pytest.raises(NonFiniteLossError, match="on_nonfinite=skip"):
        t.fit(progress=False)
    saved = torch.load(t.ckpt_dir / "last.pt", weights_only=True)
    assert saved["state"]["skipped_steps"] == 1 and saved["state"]["step"] < t.total_steps
    t = ToyTrainer(tmp_path / "skip", ToyConfig(epochs=1, on_nonfinite="skip"), train_set=Vectors(nan_at=5))
    state = t.fit(progress=False)
    assert state.step == t.total_steps == 4  # skipped steps are made up (from the next epoch)
    reasons = [r["reason"] for r in _records(t.run_dir) if "reason" in r]
    assert state.skipped_steps == len(reasons) >= 1 and set(reasons) == {"non-finite loss (nan)"}
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_sigterm_saves_and_returns_and_a_second_ctrl_c_aborts(tmp_path):
    seen: list[int] = []

    def hook(i):
        if len(seen) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        seen.append(i)

    t = ToyTrainer(tmp_path / "sig", ToyConfig(epochs=2), train_set=Vectors(hook=hook))
    state = t.fit(progress=False)
    assert t.stopped_by == signal.SIGTERM and 0 < state.step < t.total_steps
    assert not (t.run_dir / "final").exists() and t.final_dir is None
    assert ToyTrainer(tmp_path / "sig").resume()

    def ctrl_c(i):
        os.kill(os.getpid(), signal.SIGINT)  # every item: the second one arrives before the step ends

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        ToyTrainer(tmp_path / "int", ToyConfig(epochs=1), train_set=Vectors(hook=ctrl_c)).fit(progress=False)
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are restored


def test_too_little_data_is_one_line(tmp_path):
    with pytest.raises(Exception, match="fewer than one global batch"):
        ToyTrainer(tmp_path / "x", ToyConfig(micro_batch=16, grad_accum=2))


def test_the_three_trainers_are_harness_trainers():
    from stylevar.training.grpo import GRPOTrainer
    from stylevar.training.policy import PolicyState
    from stylevar.training.sft import SFTState, SFTTrainer
    from stylevar.training.tokenizer import TokenizerState, TokenizerTrainer

    for cls, state in (
        (TokenizerTrainer, TokenizerState),
        (SFTTrainer, SFTState),
        (GRPOTrainer, PolicyState),
    ):
        assert issubclass(cls, Trainer) and cls.state_cls is state and issubclass(state, RunState)
        for hook in ("fit", "_fit", "save", "resume", "_batches", "check_finite", "_validate_and_keep_best"):
            assert getattr(cls, hook) is getattr(Trainer, hook), (cls.__name__, hook)  # not overridden
