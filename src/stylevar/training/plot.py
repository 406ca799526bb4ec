"""Training curves of a run directory as one PNG (``stylevar plot RUN_DIR``).

Reads ``RUN_DIR/metrics.jsonl`` (written by the SFT and tokenizer trainers: one JSON record per
line with ``"step"`` and numeric fields) and draws one panel per family of metrics that is
present: losses, accuracy, codebook, image quality, rewards, learning rate, gradient norm,
throughput, then anything else numeric. Validation series (``val_*``) are drawn with markers.
When a resumed run logged a step twice, the later value wins. Needs matplotlib (``pip install
"stylevar[train]"``), imported lazily with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from ..errors import DataError, StyleVARError
from ..files import atomic_write

logger = logging.getLogger(__name__)

#: fields that are positions, not metrics
POSITION_FIELDS = frozenset({"step", "epoch", "batch", "skipped", "time"})
#: (panel title, predicate on the field name), first match wins
FAMILIES: tuple[tuple[str, object], ...] = (
    ("accuracy", lambda k: "acc" in k),
    ("codebook usage (fraction)", lambda k: "usage" in k),
    ("codebook perplexity", lambda k: "perplexity" in k),
    ("restarted codes", lambda k: "revived" in k or "dead" in k),
    ("image quality (dB)", lambda k: "psnr" in k),
    ("reward / KL", lambda k: any(s in k for s in ("reward", "kl", "advantage"))),
    ("learning rate", lambda k: k == "lr" or k.endswith("_lr") or k.startswith("lr_")),
    ("gradient norm", lambda k: "grad_norm" in k),
    ("throughput (images/s)", lambda k: "per_s" in k or k in ("ips", "throughput")),
    (
        "losses",
        lambda k: (
            any(s in k for s in ("loss", "recon", "vq", "perceptual", "l1", "l2", "mse")) or k.endswith("ce")
        ),
    ),
)
PANEL_W, PANEL_H, DPI, COLUMNS = 6.0, 3.6, 100, 2


def read_metrics(path: str | os.PathLike) -> dict[str, dict[int, float]]:
    """``{field: {step: value}}`` of the numeric fields of a ``metrics.jsonl`` (later lines win).

    Lines that are not JSON objects with an integer ``step`` (e.g. a line cut short by a killed
    process) are skipped with a warning. Raises :class:`DataError` for a missing file or one with
    no numeric records.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"no metrics file {p}; give a run directory written by stylevar training (SFT or tokenizer)"
        )
    series: dict[str, dict[int, float]] = {}
    bad = 0
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            step = int(rec["step"])
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        for k, v in rec.items():
            if k in POSITION_FIELDS or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            series.setdefault(k, {})[step] = float(v)
    if bad:
        logger.warning("%s: skipped %d unreadable line(s)", p, bad)
    if not series:
        raise DataError(f"{p} holds no numeric metrics yet; plot again once training has logged a step")
    return series


def group_metrics(names: list[str]) -> list[tuple[str, list[str]]]:
    """Panels ``[(title, [fields])]`` in :data:`FAMILIES` order, then ``other``."""
    panels: dict[str, list[str]] = {}
    for k in sorted(names):
        title = next((t for t, match in FAMILIES if match(k)), "other")  # type: ignore[operator]
        panels.setdefault(title, []).append(k)
    order = [t for t, _ in FAMILIES] + ["other"]
    first = ["losses"]  # the loss panel leads
    order = first + [t for t in order if t not in first]
    return [(t, panels[t]) for t in order if t in panels]


def figure_size(num_panels: int) -> tuple[int, int]:
    """Pixel size ``(width, height)`` of the PNG for ``num_panels`` panels."""
    cols = min(COLUMNS, num_panels)
    rows = math.ceil(num_panels / COLUMNS)
    return round(cols * PANEL_W * DPI), round(rows * PANEL_H * DPI)


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw the curves of ``run_dir/metrics.jsonl`` to ``out`` (default ``run_dir/curves.png``).

    Returns the PNG's path. The image is :func:`figure_size` pixels, written atomically.
    """
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise DataError(f"run directory not found: {run}")
    series = read_metrics(run / "metrics.jsonl")
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise StyleVARError('plotting needs matplotlib: pip install "stylevar[train]"') from None
    panels = group_metrics(list(series))
    cols = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / COLUMNS)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * PANEL_W, rows * PANEL_H), dpi=DPI, squeeze=False)
    try:
        for ax, (title, names) in zip(axes.flat, panels):
            positive = True
            for k in names:
                steps = sorted(series[k])
                ys = [series[k][s] for s in steps]
                positive &= all(y > 0 for y in ys if math.isfinite(y))
                style = {"marker": "o", "markersize": 3} if k.startswith("val_") or len(steps) == 1 else {}
                ax.plot(steps, ys, label=k, linewidth=1.2, **style)
            finite = [y for k in names for y in series[k].values() if math.isfinite(y)]
            if (
                title in ("losses", "learning rate")
                and positive
                and finite
                and max(finite) > 20 * min(finite)
            ):
                ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle(run.name)
        fig.tight_layout()
        target = Path(out).expanduser() if out else run / "curves.png"
        atomic_write(target, lambda f: fig.savefig(f, dpi=DPI, format="png"))
    finally:
        plt.close(fig)
    return target
