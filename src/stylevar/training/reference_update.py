"""GRPO's iterative reference update (docs/upstream.md §6.5): when to merge the LoRA adapter into the base.

A reward EMA, its peak (with a snapshot of the adapter that reached it), a normal merge when the EMA
has clearly improved and stopped improving, an emergency merge when the policy drifts too far from
the reference (raw KL). The state (snapshot included) goes into checkpoints, so a resumed run merges
exactly when an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ReferenceController:
    """Iterative reference update (docs/upstream.md §6.5): reward EMA, peak snapshot, normal and emergency merges.

    Call :meth:`observe` with the step's mean reward *before* the optimizer step (a new peak
    snapshots the weights that produced those rollouts), then :meth:`decide` with the step's raw
    KL after it. Its state (with the snapshot) goes into checkpoints, so a resumed run merges
    exactly when an uninterrupted one would (the published code forgot it, docs/upstream.md B18).
    """

    cooldown: int = 300
    min_gain: float = 0.05
    patience: int = 50
    kl_threshold: float = 2.0
    emergency_cooldown: int = 50
    ema_decay: float = 0.99
    ema: float | None = None
    ref_ema: float | None = None
    peak: float = -math.inf
    steps_since_merge: int = 0
    steps_at_peak: int = 0
    merges: list[dict] = field(default_factory=list)
    snapshot: dict | None = None  #: LoRA (A, B) per module at the peak

    @property
    def enabled(self) -> bool:
        return self.cooldown > 0

    def observe(self, mean_reward: float, take_snapshot: Callable[[], dict] | None = None) -> bool:
        """Update the EMA and the peak; True when this is a new peak (snapshot taken)."""
        self.ema = (
            mean_reward
            if self.ema is None
            else self.ema_decay * self.ema + (1 - self.ema_decay) * mean_reward
        )
        if self.ref_ema is None:
            self.ref_ema = self.ema
        self.steps_since_merge += 1
        if self.ema > self.peak:
            self.peak = self.ema
            self.steps_at_peak = 0
            if self.enabled and take_snapshot is not None:
                self.snapshot = take_snapshot()
            return True
        self.steps_at_peak += 1
        return False

    def decide(self, raw_kl: float) -> str | None:
        """``"merge"``, ``"emergency"`` or None for this step."""
        if not self.enabled or self.ref_ema is None:
            return None
        if (
            self.steps_since_merge >= self.cooldown
            and self.peak - self.ref_ema >= self.min_gain
            and self.steps_at_peak >= self.patience
        ):
            return "merge"
        if (
            self.kl_threshold > 0
            and raw_kl > self.kl_threshold
            and self.steps_since_merge >= self.emergency_cooldown
            and self.snapshot is not None
        ):
            return "emergency"
        return None

    def merged(self, step: int, kind: str) -> dict:
        """Record a merge: the peak becomes the new baseline; counters and snapshot reset."""
        event = {
            "step": step,
            "kind": kind,
            "ema": self.ema,
            "ref_ema_before": self.ref_ema,
            "peak": self.peak,
        }
        self.merges.append(event)
        self.ref_ema = self.peak if math.isfinite(self.peak) else self.ema
        self.peak = -math.inf
        self.steps_since_merge = 0
        self.steps_at_peak = 0
        self.snapshot = None
        return event

    def state_dict(self) -> dict:
        return {
            k: getattr(self, k)
            for k in ("ema", "ref_ema", "peak", "steps_since_merge", "steps_at_peak", "merges", "snapshot")
        }

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)
