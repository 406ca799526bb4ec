"""Stylizing many pairs on a Ray cluster: Ray Data streams the jobs through a pool of pipeline actors.

    stylevar stylize --pairs pairs.csv -o /shared/out --ray               # a running cluster, or a local one
    stylevar stylize contents/ styles/ -o /shared/out --ray ray://head:10001

How it works (docs/batch.md): the driver turns the pairs into jobs (one per image, each with
its final seed and output path; ``--skip-existing`` drops finished ones without reading them) and
writes them to ``OUT/.stylevar-ray/jobs.jsonl``, one line per window of the one-process loop
(``batch_size * window`` images); Ray Data reads that file in blocks and ``map_batches`` hands the
windows to a pool of actors, each holding one
:class:`~stylevar.stylize.pipeline.StyleVARPipeline` (one GPU per actor on GPU nodes, ``cpus_per_worker``
CPUs on CPU nodes). Each actor stylizes its batch with the same streaming loop as one process and
writes the images itself (atomically); the driver only collects one small row per image for the
log and the summary. An image depends only on its inputs, settings and seed, so the files are the
same as a one-process run's. A worker that dies is restarted by Ray and its batch retried: the
retry writes the same bytes to the same paths, so nothing is lost or duplicated. The output folder
(and the inputs) must be on storage that every node sees.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_write
from .pairs import Blend, Pair, image_seed, log_row
from .settings import StylizeSettings

#: per-pair settings carried by a job (None is written as the empty string / NaN / -1)
_FLOAT_FIELDS = ("style_strength", "top_p", "temperature")


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--ray needs Ray Data: pip install 'stylevar[ray]' (or 'ray[data]')") from None
    return ray


def job_rows(
    pairs: Iterable[Pair],
    *,
    num_samples: int,
    seed: int,
    target: Callable[[int, Pair, int], Path],
    skip: Callable[[int, Pair, int], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """One flat row per image still to make: paths as strings, the image's final seed, its output path.

    Seeds follow :meth:`~stylevar.stylize.pipeline.StyleVARPipeline.stylize_pairs` (pair ``i``, sample ``k``:
    ``pair.seed + k`` or ``seed + i * num_samples + k``), so a worker stylizing one row with
    ``num_samples=1`` makes exactly the image a one-process run makes.
    """
    for i, pair in enumerate(pairs):
        for k in range(num_samples):
            if skip is not None and skip(i, pair, k):
                continue
            blend = pair.style if isinstance(pair.style, Blend) else None
            row = {
                "index": i,
                "sample": k,
                "seed": image_seed(pair, i, k, num_samples, seed),
                "content": os.fspath(pair.content),
                "style": os.fspath(blend.images[0] if blend else pair.style),
                "blend": json.dumps([[os.fspath(p), float(w)] for p, w in zip(blend.images, blend.weights)])
                if blend
                else "",
                "preserve_color": pair.preserve_color or "",
                "top_k": -1 if pair.top_k is None else int(pair.top_k),
                "source": pair.source or "",
                "output": os.fspath(target(i, pair, k)),
            }
            for f in _FLOAT_FIELDS:
                v = getattr(pair, f)
                row[f] = math.nan if v is None else float(v)
            yield row


def _row_pair(row: dict[str, Any]) -> Pair:
    """The :class:`Pair` of one job row (its seed is the image's own: stylize it with num_samples=1)."""

    def opt_float(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    style: Any = str(row["style"])
    if row.get("blend"):
        parts = json.loads(row["blend"])
        style = Blend(tuple(p for p, _ in parts), tuple(w for _, w in parts))
    return Pair(
        content=str(row["content"]),
        style=style,
        seed=int(row["seed"]),
        preserve_color=str(row["preserve_color"]) or None,
        top_k=None if int(row["top_k"]) < 0 else int(row["top_k"]),
        style_strength=opt_float(row["style_strength"]),
        top_p=opt_float(row["top_p"]),
        temperature=opt_float(row["temperature"]),
        source=str(row["source"]) or None,
    )


class PipelineWorker:
    """A Ray Data actor: one pipeline, stylizing batches of job rows and writing their images.

    ``fault_marker`` is a test hook: when given and the file does not exist yet, the worker creates it
    and kills its own process right after writing the batch's first image (a worker lost mid-batch).
    """

    def __init__(
        self,
        load_kwargs: dict[str, Any],
        settings: dict[str, Any],
        threads: int = 0,
        fault_marker: str | None = None,
    ):
        import torch

        from .pipeline import StyleVARPipeline

        if threads > 0:
            torch.set_num_threads(threads)
        self.pipe = StyleVARPipeline.from_pretrained(**load_kwargs)
        # the run's settings, with this checkpoint's sampling defaults, through the one validation
        self.settings = self.pipe.settings(**settings)
        self.fault_marker = fault_marker

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        """``batch["window"]``: JSON lists of job rows, each list one window of the one-process loop
        (so each image is made in the same batch, with the same neighbours, as there)."""
        from ..images import save_image_atomic

        out: dict[str, list] = {"row": []}
        for text in batch["window"]:
            rows = json.loads(str(text))
            pairs = [_row_pair(r) for r in rows]
            # each row has its image's own seed; the window is one window here too
            settings = self.settings.with_(window=len(rows), num_samples=1, seed=0)
            for r in self.pipe.stylize_pairs(pairs, settings, progress=False):
                row = dict(rows[r.index])
                if r.ok:
                    row["output"] = str(save_image_atomic(r.image, row["output"]))
                    if self.fault_marker and not os.path.exists(self.fault_marker):
                        Path(self.fault_marker).touch()
                        os._exit(1)  # the process dies mid-batch, as a lost node would
                else:
                    row["output"] = ""
                row["error"] = r.error or ""
                out["row"].append(json.dumps(row))
        return out


def stylize_on_ray(
    pairs: Iterable[Pair],
    load_kwargs: dict[str, Any],
    settings: dict[str, Any],
    *,
    out_dir: str | os.PathLike,
    target: Callable[[int, Pair, int], Path],
    skip: Callable[[int, Pair, int], bool] | None = None,
    address: str = "auto",
    workers: int = 0,
    cpus_per_worker: int = 1,
    progress: bool = True,
    total: int | None = None,
    fault_marker: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Stylize ``pairs`` on Ray; yields one log row per image (:func:`stylevar.stylize.pairs.log_row` with
    ``output``, or ``error`` for a pair whose input could not be read), in completion order.

    ``load_kwargs``: :meth:`StyleVARPipeline.from_pretrained` arguments (each actor loads the model
    itself; ``device`` defaults to ``cuda`` on GPU actors, ``cpu`` otherwise). ``settings``: the run's
    settings as keywords (fields of :class:`~stylevar.stylize.settings.StylizeSettings`, JSON-ready values; ``seed``
    must be set: every worker derives the same seeds from it). They are checked here, before any worker
    starts, and each worker makes the same settings object of them with its checkpoint's sampling
    defaults for what is not given (:meth:`~stylevar.stylize.pipeline.StyleVARPipeline.settings`). ``address``:
    ``auto`` joins a
    running cluster (``RAY_ADDRESS``, or one started by ``ray start`` on this machine) or starts a local
    one; otherwise a head node's address. A Ray session already initialised by the caller is used
    as it is. ``workers``: actors (0: one per GPU, or one per ``cpus_per_worker`` CPUs).
    """
    ray = _require_ray()
    settings = dict(settings)
    checked = StylizeSettings().with_(**settings)  # refused here, before any worker starts
    if checked.sampling.seed is None:
        raise ConfigError(
            "stylize_on_ray needs a base seed in settings (every worker derives the seeds from it)"
        )
    base_seed = checked.sampling.seed
    num_samples = checked.run.num_samples
    settings.pop("seed")
    settings.pop("num_samples", None)
    if not ray.is_initialized():
        ray.init(address=None if address in ("auto", "", None) else address, log_to_driver=False)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    use_gpu = gpus > 0
    if workers <= 0:
        workers = gpus if use_gpu else max(1, cpus // max(1, cpus_per_worker))
    load_kwargs = {"device": "cuda" if use_gpu else "cpu", **load_kwargs}

    work = Path(out_dir) / ".stylevar-ray"
    work.mkdir(parents=True, exist_ok=True)
    jobs_file = work / "jobs.jsonl"
    n_jobs = 0

    batch_size = checked.run.batch_size
    per_window = batch_size * checked.run.window
    n_windows = considered = 0
    refused: list[dict[str, Any]] = []  # refused manifest rows: reported by the driver, sent to no worker

    def counted_skip(i: int, pair: Pair, k: int) -> bool:
        nonlocal considered
        considered += 1
        if skip is not None and skip(i, pair, k):
            return True
        if pair.error is not None:
            refused.append(
                {**log_row(pair, k, image_seed(pair, i, k, num_samples, base_seed)), "error": pair.error}
            )
            return True
        return False

    def write_jobs(f) -> None:  # one line per window of the one-process loop
        nonlocal n_jobs, n_windows
        window: list[dict] = []
        rows = job_rows(pairs, num_samples=num_samples, seed=base_seed, target=target, skip=counted_skip)
        for row in itertools.chain(rows, [None]):
            if row is not None:
                window.append(row)
                n_jobs += 1
            if window and (row is None or len(window) == per_window):
                f.write((json.dumps({"window": json.dumps(window)}) + "\n").encode())
                n_windows += 1
                window = []

    atomic_write(jobs_file, write_jobs)
    yield from refused
    if n_jobs == 0:
        return
    # batches padded as in one process (a run of at least one batch), so every image has its bytes
    if checked.run.pad_batches is None:
        settings["pad_batches"] = considered >= batch_size
    # reading a small text file needs no CPU of its own: the actors may hold every CPU of the cluster
    ds = ray.data.read_json(
        str(jobs_file),
        lines=True,
        override_num_blocks=max(1, min(n_windows, 4 * workers)),
        num_cpus=0,
    )
    compute = dict(num_gpus=1) if use_gpu else dict(num_cpus=cpus_per_worker)
    mapped = ds.map_batches(
        PipelineWorker,
        fn_constructor_kwargs=dict(
            load_kwargs=load_kwargs,
            settings=settings,
            threads=0 if use_gpu else cpus_per_worker,
            fault_marker=fault_marker,
        ),
        batch_size=1,
        batch_format="numpy",
        concurrency=workers,
        **compute,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_jobs, unit="img", desc=f"stylizing on Ray ({workers} workers)")
    try:
        for item in mapped.iter_rows():
            row = json.loads(item["row"])
            if bar is not None:
                bar.update(1)
            log = log_row(_row_pair(row), int(row["sample"]), int(row["seed"]))
            if row["error"]:
                log["error"] = str(row["error"])
            else:
                log["output"] = str(row["output"])
            yield log
    finally:
        if bar is not None:
            bar.close()
    jobs_file.unlink(missing_ok=True)
    try:
        work.rmdir()
    except OSError:
        pass
