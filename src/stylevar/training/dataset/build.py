"""``stylevar triplets`` as a call: :func:`build_triplets` makes (or completes) a triplet dataset.

The output folder (docs/triplets.md, "What it writes")::

    OUT/content/<id>_<k>.png   OUT/style/<id>_<k>.png (or ms26-<b>_<crop>.png)     the crops, R x R
    OUT/target/<content>&&<style>.png   the kept targets (OmniStyle-150K's names: OUT is an OmniStyle root)
    OUT/dropped/...            the targets the filter dropped, for a look
    OUT/train_files.txt, val_files.txt      the split by key, which ``stylevar sft OUT`` honours
    OUT/manifest.csv           every kept triplet with its split; train.csv, val.csv, val_unseen_style.csv
    OUT/split.json             train / val (and val_unseen_style) as ``save_split`` writes it
    OUT/records.jsonl          one line per target made: the filter's numbers and the teacher's seconds
    OUT/filter_report.jsonl, filter_report.json      every decision with its reasons; the counts
    OUT/build.json             the settings, the inputs' and the teacher's fingerprints

Order of work: the settings and the output folder are checked, every input image is decoded once and
the teacher's networks are loaded, all before the first file is written. Then the crops, the style
references (multistyle26), the targets, and the lists. Every file is written atomically (a temporary file
renamed); ``records.jsonl`` gets one fsynced line per target. A rerun of the same command skips every
file already there (the crops and targets keep their bytes) and makes the rest; a folder built with other
settings or inputs is refused, naming what changed. The filter's thresholds may change between runs: the
decisions are taken again from ``records.jsonl`` and the targets moved between ``target/`` and
``dropped/`` without running the teacher.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...data.photos import random_crops
from ...data.triplets import Triplet, save_split
from ...errors import ConfigError
from ...files import atomic_write_json, atomic_write_text
from ...images import load_image, save_image_atomic, tensor_to_pil
from .config import ARBITRARY, MULTISTYLE, TripletBuildConfig
from .filters import measure, reasons, summarise
from .sources import (
    SPLITS,
    Plan,
    PlannedTriplet,
    Source,
    check_output,
    check_sources,
    content_sources,
    inputs_fingerprint,
    make_plan,
    style_sources,
)
from .teachers import make_teacher, read_unit, timed

SCHEMA = 1


@dataclass
class BuildResult:
    """What a build made: the folder, the counts per split (kept triplets), the filter's summary."""

    out: Path
    planned: int
    made_now: int
    splits: dict[str, int] = field(default_factory=dict)
    filter: dict[str, Any] = field(default_factory=dict)
    teacher_seconds: float | None = None  #: mean seconds per target made in this run


def _quiet(_msg: str) -> None:
    pass


def build_triplets(cfg: TripletBuildConfig, say: Callable[[str], None] = _quiet) -> BuildResult:
    """Build (or complete) the dataset ``cfg`` describes in ``cfg.output`` (module doc)."""
    out = check_output(cfg)
    contents = content_sources(cfg)
    styles = style_sources(cfg, contents)
    check_sources(contents + [s for s in styles if s.path not in {c.path for c in contents}])
    plan = make_plan(cfg, contents, styles)
    teacher = make_teacher(cfg)
    fingerprint = {
        "settings": cfg.fingerprint(),
        "inputs": inputs_fingerprint([*contents, *styles]),
        "teacher": teacher.identity(),
    }
    _check_resume(out, fingerprint)
    atomic_write_json(out / "build.json", {"schema": SCHEMA, **fingerprint, "config": cfg.to_dict()})
    say(
        f"{len(contents)} content images, {len(styles) or len(cfg.builtin_styles)} styles"
        f"{' (built in)' if cfg.spec.kind == MULTISTYLE else ''} -> {len(plan.triplets)} triplets planned "
        f"({', '.join(f'{n} {s}' for s, n in _counts(plan.triplets).items())}); teacher {cfg.spec}"
    )

    made = 0
    try:
        _write_crops(out, plan, cfg)
        if cfg.spec.kind == MULTISTYLE:
            for ref in plan.references:
                if not (out / ref.file).is_file():
                    save_image_atomic(tensor_to_pil(teacher.reference(out, ref)), out / ref.file)
        records = _read_records(out / "records.jsonl")
        todo = [t for t in plan.triplets if not _done(out, t, records)]
        seconds: list[float] = []
        bar = _bar(cfg, len(plan.triplets), len(plan.triplets) - len(todo))
        style_net = teacher.net if cfg.spec.kind == ARBITRARY else _style_net(cfg)
        try:
            with open(out / "records.jsonl", "a") as log:
                for t, img, secs in timed(teacher.targets(out, todo)):
                    seconds.append(secs)
                    row = _record(out, t, img, secs, style_net)
                    kept = not cfg.filter or not reasons(row, cfg.min_structure, cfg.min_colour_shift)
                    save_image_atomic(tensor_to_pil(img), out / ("target" if kept else "dropped") / t.key)
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                    records[t.key] = row
                    made += 1
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    except BaseException:
        say(
            f"stopped after {made} new targets ({len(plan.triplets)} planned); what is written is kept: rerun "
            "the same command to continue"
        )
        raise
    result = _finish(out, cfg, plan, records)
    result.made_now = made
    result.teacher_seconds = statistics.fmean(seconds) if seconds else None
    return result


# ---------------------------------------------------------------------------------------- resume
def _check_resume(out: Path, fingerprint: dict[str, Any]) -> None:
    path = out / "build.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable: written again below
    changed = []
    for part in ("settings", "inputs", "teacher"):
        a, b = old.get(part), fingerprint[part]
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed += sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        else:
            changed.append("the input images" if part == "inputs" else part)
    if changed:
        raise ConfigError(
            f"{out} holds triplets built with other settings ({', '.join(changed)} changed); rerun with the "
            "same ones to complete it, or give another -o/--output (the filter's thresholds may change freely)"
        )


def _read_records(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                out[row["key"]] = row
            except (ValueError, KeyError, TypeError):  # a line cut by an interruption: that target is redone
                continue
    return out


def _done(out: Path, t: PlannedTriplet, records: dict[str, dict]) -> bool:
    return t.key in records and ((out / "target" / t.key).is_file() or (out / "dropped" / t.key).is_file())


# ---------------------------------------------------------------------------------------- the work
def _write_crops(out: Path, plan: Plan, cfg: TripletBuildConfig) -> None:
    """The content and style crops not yet on disk (each source read once for all its crops)."""
    by_source: dict[tuple[str, Path], list] = {}
    for crop in [*plan.content_crops, *plan.style_crops]:
        if not (out / crop.file).is_file():
            by_source.setdefault((crop.source.role, crop.source.path), []).append(crop)
    for (role, path), crops in by_source.items():
        img = load_image(path, role=role)
        source: Source = crops[0].source
        n = max(c.index for c in crops) + 1
        images = random_crops(img, f"{role}:{source.id}", n, cfg.resolution, cfg.seed)
        for c in crops:
            save_image_atomic(images[c.index], out / c.file)


def _record(out: Path, t: PlannedTriplet, img, seconds: float, style_net) -> dict[str, Any]:
    content, style = read_unit(out / t.content.file), read_unit(out / t.style.file)
    row = {
        "key": t.key,
        "split": t.split,
        "content": t.content.file,
        "style": t.style.file,
        "style_id": t.style_id,
    }
    row.update(measure(img.unsqueeze(0), content, style, style_net))
    row["seconds"] = round(seconds, 4)
    return row


def _style_net(cfg: TripletBuildConfig):
    """The arbitrary network for the report's style distance, when the teachers extra is installed."""
    from ...errors import StyleVARError
    from ...perceptual.magenta import MagentaArbitrary

    try:
        return MagentaArbitrary(cfg.models)
    except StyleVARError:
        return None


def _bar(cfg: TripletBuildConfig, total: int, done: int):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="img", desc=f"targets ({cfg.spec.kind})")


def _counts(triplets) -> dict[str, int]:
    return {s: n for s in SPLITS if (n := sum(t.split == s for t in triplets))}


# ---------------------------------------------------------------------------------------- the lists
def _finish(out: Path, cfg: TripletBuildConfig, plan: Plan, records: dict[str, dict]) -> BuildResult:
    """Decide every target from its record, put its file where the decision says, write the lists."""
    report, kept = [], []
    for t in plan.triplets:
        row = dict(records[t.key])
        why = reasons(row, cfg.min_structure, cfg.min_colour_shift) if cfg.filter else []
        row["kept"], row["reasons"] = not why, why
        report.append(row)
        here, there = ("dropped", "target") if row["kept"] else ("target", "dropped")
        if (out / here / t.key).is_file():  # a threshold changed since the file was written
            (out / there).mkdir(exist_ok=True)
            os.replace(out / here / t.key, out / there / t.key)
        if row["kept"]:
            kept.append(t)
    summary = summarise(
        report, enabled=cfg.filter, min_structure=cfg.min_structure, min_colour_shift=cfg.min_colour_shift
    )
    atomic_write_text(out / "filter_report.jsonl", "".join(json.dumps(r) + "\n" for r in report))
    atomic_write_json(out / "filter_report.json", summary)

    by_split = {s: [t for t in kept if t.split == s] for s in SPLITS}
    _write_manifest(out / "manifest.csv", kept, with_split=True)
    for s in SPLITS:
        _write_manifest(out / f"{s}.csv", by_split[s])
    atomic_write_text(out / "train_files.txt", "".join(f"{t.key}\n" for t in by_split["train"]))
    atomic_write_text(out / "val_files.txt", "".join(f"{t.key}\n" for t in by_split["val"]))

    def triplets(ts):
        return [
            Triplet(t.key, out / t.content.file, out / t.style.file, out / t.target, out.name) for t in ts
        ]

    unseen = [
        {"key": t.key, "source": t.source, **{r: str(p) for r, p in t.paths().items()}}
        for t in triplets(by_split["val_unseen_style"])
    ]
    save_split(
        out / "split.json",
        triplets(by_split["train"]),
        triplets(by_split["val"]),
        val_unseen_style=unseen,
        val_contents=plan.val_contents,
        held_out_styles=plan.held_out_styles,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        sources=[str(out)],
    )
    return BuildResult(out, len(plan.triplets), 0, {s: len(v) for s, v in by_split.items()}, summary)


def _write_manifest(path: Path, triplets: list[PlannedTriplet], *, with_split: bool = False) -> None:
    """A CSV that :func:`stylevar.data.read_manifest` reads, paths relative to the folder (it can move)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["key", "content", "style", "target", *(["split"] if with_split else [])])
    for t in triplets:
        w.writerow([t.key, t.content.file, t.style.file, t.target, *([t.split] if with_split else [])])
    atomic_write_text(path, buf.getvalue())
