"""Reports of an evaluation: ``summary.json``, ``summary.csv``, ``summary.md`` (laid out like the paper's
Table 2, best value per benchmark in bold), sample sheets ``sheets/<benchmark>.png`` (content | style |
target | each method) and a bar chart ``metrics.png`` (when matplotlib is installed).

Reference methods (the content copy) are shown but never marked best: they are the floor, not a
competitor. Values are means over the images; the JSON and CSV also hold medians and population
standard deviations.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from .. import __version__
from ..files import atomic_write_text
from ..images import fit_label, label_font, save_image_atomic, tensor_to_pil
from .suite import METRICS

if TYPE_CHECKING:
    from .benchmark import Evaluation


def metric_value(entry: dict, name: str) -> float | None:
    """The table value of ``name`` for one result entry (mean for per-image metrics)."""
    if METRICS[name].per_image:
        st = entry.get("metrics", {}).get(name)
        return None if st is None else st["mean"]
    return entry.get("set_metrics", {}).get(name)


def timing_value(entry: dict, key: str) -> float | None:
    t = entry.get("timing", {}).get(key)
    if not t or not t.get("per_image_s"):
        return None
    return t["per_image_s"]["mean"]


def timing_keys(results: list[dict]) -> list[str]:
    keys = {k for e in results for k in e.get("timing", {}) if k.startswith("b") and k[1:].isdigit()}
    return sorted(keys, key=lambda k: int(k[1:]))


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if v != v:  # NaN
        return "nan"
    a = abs(v)
    if a >= 100:
        return f"{v:.2f}"
    if a >= 1:
        return f"{v:.3f}"
    if a >= 1e-3 or a == 0:
        return f"{v:.4f}"
    return f"{v:.2e}"


def best_values(results: list[dict], names: list[str]) -> dict[tuple[str, str], float]:
    """(benchmark, metric) -> the best value among non-reference methods (when two or more compete)."""
    best = {}
    for bench in dict.fromkeys(e["benchmark"] for e in results):
        rows = [e for e in results if e["benchmark"] == bench and not e.get("reference_method")]
        if len(rows) < 2:
            continue
        for name in names:
            vals = [v for v in (metric_value(e, name) for e in rows) if v is not None and v == v]
            if vals:
                best[(bench, name)] = max(vals) if METRICS[name].better == "higher" else min(vals)
    return best


def markdown_table(
    results: list[dict], names: list[str], *, title: str = "", notes: list[str] | None = None
) -> str:
    arrows = {"lower": "↓", "higher": "↑"}
    tkeys = timing_keys(results)
    head = ["Dataset", "Method", *(f"{METRICS[n].label} {arrows[METRICS[n].better]}" for n in names)]
    head += [f"s/img (batch {k[1:]})" for k in tkeys]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = best_values(results, names)
    for e in results:
        ds = f"{e['benchmark']} (vs {'GT' if e['compared_to'] == 'target' else 'content'}, n={e['n']}"
        ds += f" of {e['n_planned']})" if e["n"] != e["n_planned"] else ")"
        method = f"*{e['method']}*" if e.get("reference_method") else e["method"]
        cells = [ds, method]
        for n in names:
            v = metric_value(e, n)
            s = _fmt(v)
            if v is not None and best.get((e["benchmark"], n)) == v:
                s = f"**{s}**"
            cells.append(s)
        cells += [_fmt(timing_value(e, k)) for k in tkeys]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {n}" for n in notes or []]
    return "\n".join(lines) + "\n"


def csv_text(results: list[dict], names: list[str]) -> str:
    tkeys = timing_keys(results)
    per_image = [n for n in names if METRICS[n].per_image]
    sets = [n for n in names if not METRICS[n].per_image]
    cols = ["benchmark", "method", "kind", "compared_to", "n", "n_planned"]
    cols += [f"{n}_{s}" for n in per_image for s in ("mean", "median", "std")]
    cols += sets
    cols += [f"time_{k}_{s}_s" for k in tkeys for s in ("mean", "median", "std")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for e in results:
        row: dict[str, Any] = {c: e.get(c, "") for c in cols[:6]}
        for n in per_image:
            st = e["metrics"].get(n) or {}
            for s in ("mean", "median", "std"):
                row[f"{n}_{s}"] = st.get(s, "")
        for n in sets:
            v = e.get("set_metrics", {}).get(n)
            row[n] = "" if v is None else v
        for k in tkeys:
            st = (e.get("timing", {}).get(k) or {}).get("per_image_s") or {}
            for s in ("mean", "median", "std"):
                row[f"time_{k}_{s}_s"] = st.get(s, "")
        w.writerow([row[c] for c in cols])
    return buf.getvalue()


def sample_sheet(ev: Evaluation, bench, k: int, min_cell: int = 128) -> Image.Image | None:
    """content | style | [target] | each method, for the first ``k`` samples, under a row of labels.
    Images smaller than ``min_cell`` are enlarged (nearest neighbour: pixels stay visible as they are)."""
    R = ev.settings.resolution
    samples = bench.samples[:k]
    if not samples:
        return None
    cell = max(R, min_cell)
    labels = ["content", "style", *(["target"] if bench.paired else []), *(m.name for m in ev.methods)]
    pad, head = 2, max(16, cell // 10)
    W = len(labels) * (cell + pad) + pad
    H = head + len(samples) * (cell + pad) + pad
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = label_font(max(10, head - 5))
    for j, lab in enumerate(labels):
        draw.text(
            (pad + j * (cell + pad) + 2, 1), fit_label(draw, lab, font, cell - 4), fill=(0, 0, 0), font=font
        )
    blank = Image.new("RGB", (R, R), (200, 200, 200))
    for i, s in enumerate(samples):
        inputs = ev.images(bench)  # already read for generation
        tiles = [inputs.image(s.content, "content"), inputs.image(s.style, "style")]
        if bench.paired:
            tiles.append(inputs.image(s.target, "target"))
        row = [tensor_to_pil(t.float().div(255)) for t in tiles]
        for m in ev.methods:
            p = ev.image_path(bench, m.name, s.index)
            row.append(Image.open(p).convert("RGB") if p.is_file() else blank)
        for j, tile in enumerate(row):
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (pad + j * (cell + pad), head + pad + i * (cell + pad)))
    return sheet


def bar_chart(results: list[dict], names: list[str], path: Path) -> bool:
    """One panel per metric: a bar per (benchmark, method). False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [n for n in names if any(metric_value(e, n) is not None for e in results)]
    if not names:
        return False
    benches = list(dict.fromkeys(e["benchmark"] for e in results))
    methods = list(dict.fromkeys(e["method"] for e in results))
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    width = 0.8 / max(1, len(methods))
    for ax, n in zip(axes.flat, names):
        for j, m in enumerate(methods):
            ys = []
            for b in benches:
                e = next((e for e in results if e["benchmark"] == b and e["method"] == m), None)
                v = metric_value(e, n) if e else None
                ys.append(float("nan") if v is None else v)
            ax.bar(
                [i + (j - (len(methods) - 1) / 2) * width for i in range(len(benches))], ys, width, label=m
            )
        ax.set_title(f"{METRICS[n].label} ({METRICS[n].better} is better)", fontsize=9)
        ax.set_xticks(range(len(benches)), benches, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    buf.seek(0)
    save_image_atomic(Image.open(buf).convert("RGB"), path)
    return True


def write_reports(ev: Evaluation, results: list[dict], *, partial: bool = False) -> dict[str, Path]:
    """Write every report file into the evaluation's folder; returns their paths by kind."""
    out = ev.out
    names = list(ev.suite.names)
    written: dict[str, Path] = {}
    cfg = ev.config()
    doc = {
        "stylevar": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "partial": partial,
        "metric_info": {
            n: {"label": METRICS[n].label, "better": METRICS[n].better, "against": METRICS[n].against}
            for n in names
        },
        "config": cfg,
        "results": results,
    }
    written["json"] = out / "summary.json"
    atomic_write_text(written["json"], json.dumps(doc, indent=1, default=str))
    written["csv"] = out / "summary.csv"
    atomic_write_text(written["csv"], csv_text(results, names))
    st = ev.settings
    notes = [
        f"seed {st.seed} (sample i uses seed {st.seed}+i for every method), images resized to {st.resolution}² "
        f"({st.fit}, LANCZOS); metrics on the saved 8-bit images."
    ]
    against = {
        "style": "against the style image",
        "content": "against the content image",
        "reference": "against the GT target (paired datasets) or the content image (unpaired)",
    }
    for key, text in against.items():
        labels = [METRICS[n].label for n in names if METRICS[n].against == key]
        if labels:
            notes.append(f"{', '.join(labels)}: {text}.")
    if "fid" in names:
        net = (
            "pytorch-fid's FID Inception (the published FID network)"
            if ev.suite.fid_inception == "pytorch-fid"
            else "torchvision's ImageNet Inception-v3 (comparable only with itself)"
        )
        notes.append(f"FID: {net}, pool features of the outputs vs their style images.")
    if "fid_art" in names or "artfid" in names:
        notes.append(
            "FID (art): ArtFID's art_inception features, outputs vs their style images; ArtFID = "
            "(1 + LPIPS-Alex to the content)·(1 + FID (art)) (Wright & Ommer 2022)."
        )
    if {"fid", "fid_art", "artfid"} & set(names):
        n = max((e["n"] for e in results), default=0)
        notes.append(
            f"Every FID here is over at most {n} images per method: biased upwards at small n, compare only at "
            "equal n (docs/evaluation.md)."
        )
    notes.append("Best per dataset in bold (reference methods, in italics, are never marked).")
    tk = timing_keys(results)
    if tk:
        devs = sorted({e["timing"].get("device", "?") for e in results if e.get("timing")})
        notes.append(
            f"Timing: seconds per image on {', '.join(devs)}, warm-up excluded, device synchronised, on the "
            f"first {st.timing_samples} images of each dataset."
        )
    if partial:
        notes.insert(0, "PARTIAL: the run was interrupted; rerun the same command to complete it.")
    written["md"] = out / "summary.md"
    atomic_write_text(written["md"], markdown_table(results, names, title="stylevar evaluation", notes=notes))
    for b in ev.benchmarks:
        sheet = sample_sheet(ev, b, st.sheet_samples)
        if sheet is not None:
            written[f"sheet:{b.name}"] = save_image_atomic(sheet, out / "sheets" / f"{b.slug}.png")
    if bar_chart(results, names, out / "metrics.png"):
        written["chart"] = out / "metrics.png"
    return written
