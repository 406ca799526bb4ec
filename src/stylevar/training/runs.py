"""The pieces of a training run that the harness (:mod:`stylevar.training.harness`) puts together:

* :func:`world` -- (rank, world size) under ``torchrun``, (0, 1) otherwise;
* :func:`capture_rng` / :func:`restore_rng` -- torch, CUDA and Python ``random`` states, as plain
  tensors/ints so they pass ``weights_only`` loading (the checkpoint files themselves are
  :mod:`stylevar.io.run_files`);
* :func:`epoch_permutation` -- the seeded per-epoch data order (SFT's formula);
* :class:`RunLogger` -- ``metrics.jsonl`` plus TensorBoard scalars when ``tensorboard`` is installed;
* :class:`StopSignals` -- SIGTERM/SIGINT become a flag the loop checks at step boundaries.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- processes
def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def main_thread() -> bool:
    """True on the interpreter's main thread (the only one allowed to install signal handlers)."""
    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------- randomness
def capture_rng() -> dict[str, Any]:
    """The global RNG states: ``{"torch": ByteTensor, "cuda": [ByteTensor...], "python": (v, (ints), gauss)}``.

    Everything is a tensor, int, float, tuple/list or None, so ``torch.load(weights_only=True)`` reads it.
    """
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng` (CUDA states are restored when CUDA is available and were saved)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((int(py[0]), tuple(int(v) for v in py[1]), py[2]))


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """Data order of ``epoch``: a permutation of ``range(n)`` from (seed, epoch) only (SFT's formula)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


# ---------------------------------------------------------------------------------------- logs
def _scalar(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


class RunLogger:
    """Appends records to ``run_dir/metrics.jsonl`` and their scalars to TensorBoard (``run_dir/tb``).

    Only rank 0 writes. Each record is one JSON line (``{"step": N, "loss": ..., ...}``); numeric
    fields other than ``step`` also go to TensorBoard at global step ``step`` when
    ``torch.utils.tensorboard`` imports (``pip install "stylevar[train]"``), silently skipped
    otherwise. The writer is opened on first use and reopened after :meth:`close`.
    """

    def __init__(self, run_dir: str | os.PathLike, rank: int = 0, *, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.path = self.run_dir / "metrics.jsonl"
        self._use_tb = tensorboard
        self._tb: Any = None  # None: not tried yet; False: unavailable

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / "tb"

    def _writer(self) -> Any:
        if self._tb is None and self._use_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.tensorboard_dir))
            except Exception:  # tensorboard not installed (torch raises ImportError or ModuleNotFoundError)
                logger.debug("tensorboard unavailable; logging to %s only", self.path)
                self._tb = False
        return self._tb or None

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` (must hold an int ``"step"``) to the metrics file and TensorBoard."""
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        tb = self._writer()
        if tb is not None:
            step = int(record.get("step", 0))
            for k, v in record.items():
                x = _scalar(v)
                if k != "step" and x is not None and math.isfinite(x):
                    tb.add_scalar(k, x, step)

    def flush(self) -> None:
        if self._tb:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer (a later :meth:`log` opens a new one)."""
        if self._tb:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- signals
class StopSignals:
    """Context manager turning SIGTERM/SIGINT into a flag, so a loop can save and stop cleanly.

    Handlers are installed only on the main thread (elsewhere this is a no-op and ``received``
    stays None); the previous handlers are restored on exit. A second SIGINT while the first is
    pending raises :class:`KeyboardInterrupt` (press Ctrl-C twice to abort without saving).

        with StopSignals() as stop:
            for step in ...:
                ...
                if stop.received is not None:
                    save(); break
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        self.received = None
        if main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in self.signals}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
