"""Run methods over benchmarks, keep every result on disk as it comes, and resume where a run stopped.

Layout of the output folder::

    OUT/config.json                        what was evaluated (samples, methods and their settings)
    OUT/samples/<benchmark>.jsonl          the selected samples (index, key, files)
    OUT/images/<benchmark>/<method>/0007.png   each generated image (8-bit, atomic writes)
    OUT/records/<benchmark>/<method>.jsonl     one line per image: index, key, seed, per-image metrics
    OUT/records/<benchmark>/<method>.timing.json
    OUT/summary.json, summary.csv, summary.md, sheets/<benchmark>.png, metrics.png   (see report.py)

Per-image metrics are computed on the 8-bit image that is saved, so a resumed run (which reads saved
images back for FID) and an uninterrupted one give the same numbers. Rerunning the same command skips
every image already recorded; a changed setting that would mix two configurations in one table is
refused (use another output folder or ``overwrite=True``).

Timing (reported beside the metrics, never used as a test): on the first ``timing_samples`` images
of each benchmark, already in memory (data loading excluded), after ``warmup`` untimed calls, with
device synchronisation before and after each call; once at batch size 1 and once at
``timing_batch_size``. A call covers what upstream timed: tokenising style and content with the
VQ-VAE, both ResNets, the scale loop and decoding.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import Serialisable
from ..errors import ConfigError
from ..files import atomic_write_text
from ..images import save_image_atomic, tensor_to_pil
from .data import Benchmark, BenchmarkImages, dump_samples, read_image, slugify, to_uint8
from .methods import Method
from .suite import METRICS, MetricSuite

logger = logging.getLogger(__name__)
SCHEMA = 1


@dataclass
class EvalSettings(Serialisable):
    """Run settings. ``seed``, ``fit`` and ``resolution`` change the results; the others only speed
    and reporting."""

    seed: int = 42
    fit: str = "squash"
    resolution: int = 256
    batch_size: int = 8
    timing_samples: int = 8
    timing_batch_size: int = 8
    warmup: int = 3
    sheet_samples: int = 8

    def result_affecting(self) -> dict[str, Any]:
        return {"seed": self.seed, "fit": self.fit, "resolution": self.resolution}


@dataclass
class MethodEntry:
    """A method to evaluate, built when its turn comes (one StyleVAR model in memory at a time)."""

    name: str
    kind: str
    build: Callable[[], Method]
    settings: dict[str, Any] = field(default_factory=dict)
    reference: bool = False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {
        "mean": statistics.fmean(vals),
        "median": statistics.median(vals),
        "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
    }


def time_method(
    method: Method,
    content: torch.Tensor,
    style: torch.Tensor,
    seeds: Sequence[int],
    *,
    batch_size: int,
    warmup: int,
    device: torch.device,
) -> dict[str, Any]:
    """Seconds per image of ``method`` on in-memory inputs: ``warmup`` untimed calls, then each call timed
    between two device synchronisations. Only full batches are timed (a CUDA graph is captured per size)."""
    n = content.shape[0]
    bs = max(1, min(batch_size, n))
    calls = max(1, n // bs)
    for _ in range(warmup):
        method(content[:bs], style[:bs], seeds[:bs])
    _sync(device)
    per_image = []
    for k in range(calls):
        sl = slice(k * bs, (k + 1) * bs)
        _sync(device)
        t0 = time.perf_counter()
        method(content[sl], style[sl], seeds[sl])
        _sync(device)
        per_image.append((time.perf_counter() - t0) / bs)
    return {"batch_size": bs, "calls": calls, "warmup": warmup, "per_image_s": _stats(per_image)}


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by an interruption: that image is redone
            continue
    return rows


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))


class Evaluation:
    """``methods`` x ``benchmarks`` into ``out_dir`` (module doc); :meth:`run` returns the results."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        benchmarks: Sequence[Benchmark],
        methods: Sequence[MethodEntry],
        suite: MetricSuite,
        settings: EvalSettings | None = None,
        *,
        device: str | torch.device = "cpu",
        overwrite: bool = False,
        progress: bool = True,
        say: Callable[[str], None] = print,
    ):
        if not benchmarks:
            raise ConfigError("nothing to evaluate on: give at least one dataset")
        if not methods:
            raise ConfigError("nothing to evaluate: give at least one --model, --adain or --content-copy")
        for what, names in (
            ("benchmark", [b.name for b in benchmarks]),
            ("method", [m.name for m in methods]),
        ):
            slugs = [slugify(n) for n in names]
            if len(set(slugs)) != len(slugs):
                raise ConfigError(f"two {what}s share a name ({', '.join(names)}); name them apart")
        self.out = Path(out_dir).expanduser()
        self.benchmarks = list(benchmarks)
        self.methods = list(methods)
        self.suite = suite
        self.settings = settings or EvalSettings()
        self.device = torch.device(device)
        self.progress = progress
        self.say = say
        if overwrite:
            for sub in ("records", "images", "samples", "sheets"):
                shutil.rmtree(self.out / sub, ignore_errors=True)
            (self.out / "config.json").unlink(missing_ok=True)
        self._images = {
            b.name: BenchmarkImages(b, self.settings.resolution, self.settings.fit) for b in self.benchmarks
        }
        self._previous: dict[str, Any] = {}  # the config.json already in the folder, if any
        self._check_resume()

    # ------------------------------------------------------------------ bookkeeping
    def config(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "settings": self.settings.to_dict(),
            "metrics": list(self.suite.names),
            "benchmarks": {
                b.name: {
                    "paired": b.paired,
                    "reference": b.reference,
                    "source": b.source,
                    "n": len(b.samples),
                    "fingerprint": b.fingerprint(),
                    "selection": b.selection,
                }
                for b in self.benchmarks
            },
            "methods": {
                m.name: {"kind": m.kind, "reference": m.reference, **m.settings} for m in self.methods
            },
        }

    def _check_resume(self) -> None:
        path = self.out / "config.json"
        if not path.is_file():
            return
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return
        self._previous = old
        new = self.config()
        diffs = []
        old_set = old.get("settings", {})
        for k, v in self.settings.result_affecting().items():
            if k in old_set and old_set[k] != v:
                diffs.append(f"{k} {old_set[k]} -> {v}")
        for name, b in new["benchmarks"].items():
            ob = old.get("benchmarks", {}).get(name)
            if ob and ob.get("fingerprint") != b["fingerprint"]:
                diffs.append(f"the samples of {name} (another -n, --seed, dataset or split)")
        for name, m in new["methods"].items():
            om = old.get("methods", {}).get(name)
            if om and om != m:
                changed = sorted(k for k in set(om) | set(m) if om.get(k) != m.get(k))
                diffs.append(f"method {name} ({', '.join(changed)})")
        if diffs:
            raise ConfigError(
                f"{self.out} holds an evaluation with other settings: {'; '.join(diffs)}; use another --output, "
                "or --overwrite to discard the saved results"
            )

    def _paths(self, bench: Benchmark, method_name: str) -> tuple[Path, Path, Path]:
        rec = self.out / "records" / bench.slug
        return (
            rec / f"{slugify(method_name)}.jsonl",
            rec / f"{slugify(method_name)}.timing.json",
            self.out / "images" / bench.slug / slugify(method_name),
        )

    def image_path(self, bench: Benchmark, method_name: str, index: int) -> Path:
        return self._paths(bench, method_name)[2] / f"{index:04d}.png"

    def done_records(self, bench: Benchmark, method_name: str) -> dict[int, dict]:
        """Recorded images whose file exists, by sample index (the latest record of an index wins)."""
        rec_path = self._paths(bench, method_name)[0]
        want = {s.index: s.key for s in bench.samples}
        out = {}
        for r in _read_jsonl(rec_path):
            i = r.get("index")
            if i in want and r.get("key") == want[i] and self.image_path(bench, method_name, i).is_file():
                out[i] = r
        return out

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Generate, score and time everything not yet on disk; then write the reports. Ctrl-C keeps
        what is done (rerun the same command to go on) and still writes the partial reports."""
        from .report import write_reports

        cfg = self.config()
        for key in ("benchmarks", "methods"):  # keep what earlier calls evaluated in this folder
            for name, v in self._previous.get(key, {}).items():
                cfg[key].setdefault(name, v)
        _write_json(self.out / "config.json", cfg)
        for b in self.benchmarks:
            dump_samples(b, self.out / "samples" / f"{b.slug}.jsonl")
        interrupted = None
        try:
            for entry in self.methods:
                todo = [
                    b
                    for b in self.benchmarks
                    if len(self.done_records(b, entry.name)) < len(b.samples)
                    or (self.settings.timing_samples > 0 and not self._paths(b, entry.name)[1].is_file())
                ]
                if not todo:
                    self.say(f"{entry.name}: every benchmark already done")
                    continue
                method = entry.build()
                try:
                    for b in todo:
                        self._generate(method, b, self.images(b))
                        self._time(method, b, self.images(b))
                finally:
                    del method
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
        except KeyboardInterrupt:
            interrupted = True
            self.say("interrupted: the images done so far are kept; rerun the same command to continue")
        results = self.results()
        write_reports(self, results, partial=bool(interrupted))
        if interrupted:
            raise KeyboardInterrupt
        return results

    def _generate(self, method: Method, bench: Benchmark, data: BenchmarkImages) -> None:
        done = self.done_records(bench, method.name)
        todo = [s for s in bench.samples if s.index not in done]
        if not todo:
            return
        rec_path, _, img_dir = self._paths(bench, method.name)
        rec_path.parent.mkdir(parents=True, exist_ok=True)
        img_dir.mkdir(parents=True, exist_ok=True)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=len(bench.samples), initial=len(done), unit="img", desc=f"{method.name} / {bench.name}"
            )
        bs = max(1, self.settings.batch_size)
        try:
            with open(rec_path, "a") as log:
                for start in range(0, len(todo), bs):
                    chunk = todo[start : start + bs]
                    content, style, target = data.batch(chunk)
                    seeds = [self.settings.seed + s.index for s in chunk]
                    out = method(content, style, seeds)
                    out8 = to_uint8(out.cpu())
                    values = self.suite.per_image(out8.float().div(255), content, style, target)
                    for j, s in enumerate(chunk):
                        save_image_atomic(
                            tensor_to_pil(out8[j].float().div(255)), img_dir / f"{s.index:04d}.png"
                        )
                        row = {
                            "index": s.index,
                            "key": s.key,
                            "seed": seeds[j],
                            **{k: v[j] for k, v in values.items()},
                        }
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                        os.fsync(log.fileno())
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()

    def _time(self, method: Method, bench: Benchmark, data: BenchmarkImages) -> None:
        st = self.settings
        _, timing_path, _ = self._paths(bench, method.name)
        if st.timing_samples <= 0 or timing_path.is_file():
            return
        chunk = bench.samples[: st.timing_samples]
        content, style, _ = data.batch(chunk)
        seeds = [st.seed + s.index for s in chunk]
        dev = getattr(method, "device", self.device)
        dev = torch.device(dev)
        content, style = content.to(dev), style.to(dev)
        result = {"device": _device_name(dev), "images": len(chunk)}
        sizes = sorted({1, max(1, st.timing_batch_size)})
        for bs in sizes:
            result[f"b{bs}"] = time_method(
                method, content, style, seeds, batch_size=bs, warmup=st.warmup, device=dev
            )
        _write_json(timing_path, result)

    # ------------------------------------------------------------------ results
    def results(self) -> list[dict[str, Any]]:
        """One entry per (benchmark, method) with per-metric mean/median/std, set metrics and timing."""
        out = []
        style_feats: dict[str, torch.Tensor] = {}
        for b in self.benchmarks:
            for m in self.methods:
                done = self.done_records(b, m.name)
                if not done:
                    continue
                rows = [done[i] for i in sorted(done)]
                entry: dict[str, Any] = {
                    "benchmark": b.name,
                    "method": m.name,
                    "kind": m.kind,
                    "reference_method": m.reference,
                    "compared_to": b.reference,
                    "n": len(rows),
                    "n_planned": len(b.samples),
                    "metrics": {},
                }
                for name in self.suite.names:
                    if not METRICS[name].per_image:
                        continue
                    entry["metrics"][name] = _stats([r.get(name) for r in rows])
                if self.suite.needs_set_features:
                    if b.name not in style_feats:
                        style_feats[b.name] = self._style_features(b)
                    idx = sorted(done)
                    imgs = torch.stack(
                        [
                            read_image(self.image_path(b, m.name, i), self.settings.resolution, "squash")
                            for i in idx
                        ]
                    )
                    feats = self.suite.features(imgs.float().div(255))
                    pos = {s.index: k for k, s in enumerate(b.samples)}
                    sty = {role: f[[pos[i] for i in idx]] for role, f in style_feats[b.name].items()}
                    lp = [r["lpips_alex"] for r in rows if r.get("lpips_alex") is not None]
                    entry["set_metrics"] = self.suite.set_metrics(feats, sty, lp)
                timing_path = self._paths(b, m.name)[1]
                if timing_path.is_file():
                    entry["timing"] = json.loads(timing_path.read_text())
                out.append(entry)
        return out

    def images(self, bench: Benchmark) -> BenchmarkImages:
        """The benchmark's input images at the evaluation's resolution, read once per run."""
        return self._images[bench.name]

    def _style_features(self, bench: Benchmark) -> dict[str, torch.Tensor]:
        _, style, _ = self.images(bench).batch(bench.samples)
        return self.suite.features(style)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return dev.type
