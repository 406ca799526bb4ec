"""CPU threads: how many a process uses, and how idle ones wait (docs/speed.md, "On a shared machine").

torch runs its CPU kernels on an OpenMP team (torch 2.14's wheels ship GCC's libgomp; MKL and oneDNN
use the same team). Two of its defaults go wrong on a shared machine:

* **How many threads.** torch starts one per CPU in the process's affinity mask, but a container's
  CFS quota (cgroup ``cpu.max``, v1 ``cpu.cfs_quota_us``) may grant fewer CPUs' worth of time than
  the mask lists; threads beyond the quota only take turns. :func:`thread_count` is the minimum of
  both, shared among the processes of one job on the machine (``LOCAL_WORLD_SIZE`` under torchrun),
  unless the user chose: ``STYLEVAR_THREADS`` (the threads stylevar may use on this machine, shared
  the same way, so that a job's processes inherit it safely), then ``OMP_NUM_THREADS`` (per process).
* **How idle threads wait.** Between parallel regions, and at each region's closing barrier, a
  libgomp thread spins ``GOMP_SPINCOUNT`` times (300000 by default: milliseconds) before it sleeps.
  When another process holds a core, the spinning thread burns the time slice its descheduled
  partner needs. :func:`wait_policy_env` lowers the spin to :data:`SPIN_COUNT` (about 0.1 ms)
  unless the user set a wait policy of their own (:data:`WAIT_KNOBS`). libgomp reads it once, when
  torch is imported, so :func:`apply` sets it only when torch is not loaded yet. (libgomp ignores
  ``KMP_BLOCKTIME``, the knob of Intel's and LLVM's OpenMP.)

Small work gains little from several threads and loses most on a busy machine: every parallel
region needs all of its threads on a CPU at once, and when one of them waits for a time slice the
others wait with it. :func:`threads_for` gives such work one thread (the demo's tokenizer, whose
~1000 parallel regions per step made it 67x slower on a loaded machine; docs/speed.md).

Only entry points that own the process call :func:`apply` (the CLI, training processes under
torchrun); a library import changes nothing.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError

#: the environment variable that sets the threads stylevar may use on this machine (over ``OMP_NUM_THREADS``)
ENV_THREADS = "STYLEVAR_THREADS"
#: libgomp's spins before an idle thread sleeps when the user set no wait policy: ~0.1 ms here, against
#: 300000 (~3.5 ms) by default; as fast alone, 3.5-9x faster next to a busy process (docs/speed.md)
SPIN_COUNT = 10000
#: the user's wait-policy knobs (libgomp's; Intel's and LLVM's OpenMP): any of them set, stylevar sets none
WAIT_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "KMP_LIBRARY")
#: work below this many elements per parallel op runs on one thread (:func:`threads_for`)
SMALL_WORK = 1 << 20

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class ThreadSettings:
    """What :func:`apply` chose (for reports: ``asdict``)."""

    threads: int  #: torch's intra-op threads
    cpus: int  #: CPUs the process may use (affinity and quota)
    source: str  #: where ``threads`` came from: STYLEVAR_THREADS, OMP_NUM_THREADS, affinity, cgroup quota
    local_processes: int  #: processes sharing those CPUs
    wait_env: dict  #: the wait-policy variables stylevar set ({} when the user set one or torch was loaded)
    wait_env_effective: bool  #: False when torch (and its OpenMP runtime) was loaded before apply


_applied: ThreadSettings | None = None


# ------------------------------------------------------------------------------ how many CPUs
def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _quota_v2(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")
    if text is None:
        return None
    parts = text.split()
    if len(parts) < 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int((quota or "").strip()), int((period or "").strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # -1: no limit


def _ancestors(root: Path, rel: str) -> list[Path]:
    """``root/rel`` and each folder above it up to ``root`` (the effective limit is their minimum)."""
    parts = [p for p in rel.strip().split("/") if p and p not in (".", "..")]
    return [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs' worth of time the process's cgroups grant (the smallest quota on its path), None: no quota.

    cgroup v2: ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") in the unified hierarchy (``root``, or
    ``root/unified`` on hybrid systems); v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in the cpu
    controller's hierarchy. ``proc_cgroup`` (``/proc/self/cgroup``) gives the process's cgroup path;
    in a container with its own cgroup namespace that path is ``/`` and ``root`` is the container's.
    """
    text = _read(proc_cgroup) or ""
    limits: list[float] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hier, controllers, rel = fields
        if hier == "0" and controllers == "":
            bases, read = [root, root / "unified"], _quota_v2
        elif "cpu" in controllers.split(","):
            names = [controllers, "cpu,cpuacct", "cpuacct,cpu", "cpu"]
            bases, read = [root / n for n in dict.fromkeys(names)], _quota_v1
        else:
            continue
        for base in bases:
            if base.is_dir():
                limits += [q for d in _ancestors(base, rel) if (q := read(d)) is not None]
    return min(limits) if limits else None


def affinity_cpus() -> int:
    """CPUs in the process's affinity mask (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def available_cpus(
    affinity: int | None = None, root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> tuple[int, str]:
    """``(CPUs, what limits them)``: the affinity mask's size, or the cgroup quota rounded up when smaller."""
    cpus = affinity_cpus() if affinity is None else max(1, int(affinity))
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None and math.ceil(quota) < cpus:
        return max(1, math.ceil(quota)), "cgroup quota"
    return cpus, "affinity"


# ------------------------------------------------------------------------------ the user's choice
def _positive_int(text: str) -> int | None:
    try:
        n = int(text.strip().split(",")[0])  # OMP_NUM_THREADS may list one count per nesting level
    except ValueError:
        return None
    return n if n > 0 else None


def explicit_threads(environ: Mapping[str, str] | None = None) -> tuple[int, str] | None:
    """The thread count the user asked for: ``(n, variable)`` from ``STYLEVAR_THREADS``, else
    ``OMP_NUM_THREADS``; None when neither is set, or when ``STYLEVAR_THREADS=auto`` (stylevar's own
    count even where ``OMP_NUM_THREADS`` is set, e.g. by ``torchrun``, which sets 1). An invalid
    ``STYLEVAR_THREADS`` is an error; an invalid ``OMP_NUM_THREADS`` is ignored, as libgomp ignores it."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_THREADS, "").strip()
    if text.lower() == "auto":
        return None
    if text:
        n = _positive_int(text)
        if n is None or "," in text:
            raise ConfigError(f"{ENV_THREADS}={text!r}: expected a positive whole number of threads, or auto")
        return n, ENV_THREADS
    text = env.get("OMP_NUM_THREADS", "").strip()
    n = _positive_int(text) if text else None
    return (n, "OMP_NUM_THREADS") if n is not None else None


def local_processes(environ: Mapping[str, str] | None = None) -> int:
    """Processes of one job on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 without it)."""
    env = os.environ if environ is None else environ
    n = _positive_int(env.get("LOCAL_WORLD_SIZE", "1") or "1")
    return n or 1


def thread_count(
    environ: Mapping[str, str] | None = None,
    *,
    processes: int | None = None,
    affinity: int | None = None,
    root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_CGROUP,
) -> tuple[int, str, int]:
    """``(threads, source, cpus)`` for one process: ``OMP_NUM_THREADS`` when the user set it (and not
    ``STYLEVAR_THREADS``), else ``STYLEVAR_THREADS`` or the CPUs the process may use
    (:func:`available_cpus`), divided among ``processes`` (default :func:`local_processes`); at least 1."""
    cpus, why = available_cpus(affinity, root, proc_cgroup)
    chosen = explicit_threads(environ)
    if chosen is not None and chosen[1] == "OMP_NUM_THREADS":
        return chosen[0], chosen[1], cpus
    procs = local_processes(environ) if processes is None else max(1, int(processes))
    total, why = chosen if chosen is not None else (cpus, why)
    return max(1, total // procs), why, cpus


# ------------------------------------------------------------------------------ how threads wait
def wait_policy_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Bound libgomp's spinning in ``environ`` (default ``os.environ``): ``GOMP_SPINCOUNT`` =
    :data:`SPIN_COUNT`, unless the user set a wait-policy variable (:data:`WAIT_KNOBS`). Returns what it
    set. Takes effect only in a process whose OpenMP runtime starts afterwards: before ``import torch``,
    or in child processes."""
    env = os.environ if environ is None else environ
    if any(k in env for k in WAIT_KNOBS):
        return {}
    values = {"GOMP_SPINCOUNT": str(SPIN_COUNT)}
    env.update(values)
    return values


# ------------------------------------------------------------------------------ the process
def apply(*, processes: int | None = None, force: bool = False, keep_lower: bool = True) -> ThreadSettings:
    """Set this process's threads once (later calls return the first result unless ``force``).

    Before torch is imported (the CLI): the wait policy's variables (:func:`wait_policy_env`) and, where
    :func:`thread_count` differs from the affinity mask that libgomp would follow by itself,
    ``OMP_NUM_THREADS``, so that torch starts with that many threads and no torch import is needed
    here (``stylevar --help`` stays light). Afterwards (torch already loaded): torch's intra-op
    threads and, while torch still allows it, its inter-op threads; the wait policy is then fixed.
    With ``keep_lower`` a lower count the process set before is kept (not a count the user chose).
    """
    global _applied
    if _applied is not None and not force:
        return _applied
    torch_loaded = "torch" in sys.modules
    threads, source, cpus = thread_count(processes=processes)
    procs = local_processes() if processes is None else max(1, int(processes))
    wait: dict[str, str] = {}
    if torch_loaded:
        import torch

        if keep_lower and source not in (ENV_THREADS, "OMP_NUM_THREADS"):
            threads = min(threads, torch.get_num_threads())
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # allowed only before the inter-op pool has started
            torch.set_num_interop_threads(threads)
    else:
        wait = wait_policy_env()
        if source != "OMP_NUM_THREADS" and (threads != affinity_cpus() or source == ENV_THREADS):
            os.environ["OMP_NUM_THREADS"] = str(threads)  # read by libgomp and MKL when torch loads
    _applied = ThreadSettings(threads, cpus, source, procs, wait, not torch_loaded)
    return _applied


def user_chose_threads() -> bool:
    """Did the user choose the thread count (``STYLEVAR_THREADS``, ``OMP_NUM_THREADS``)? As :func:`apply`
    found it when it ran (it may set ``OMP_NUM_THREADS`` itself), else from the environment now."""
    if _applied is not None:
        return _applied.source in (ENV_THREADS, "OMP_NUM_THREADS")
    return explicit_threads() is not None


def applied() -> ThreadSettings | None:
    """What :func:`apply` set in this process (None before it ran)."""
    return _applied


def describe() -> dict:
    """The thread settings in force, for benchmark reports."""
    import torch

    out = {
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        **{k: os.environ.get(k) for k in (ENV_THREADS, "OMP_NUM_THREADS", *WAIT_KNOBS)},
    }
    if _applied is not None:
        out["applied"] = asdict(_applied)
    return out


def threads_for(elements: int) -> int:
    """Threads for work whose parallel ops each touch about ``elements`` values: 1 below
    :data:`SMALL_WORK` (docs/speed.md: the demo's tokenizer), else torch's current count. A count the
    user chose (:func:`user_chose_threads`) is kept either way."""
    import torch

    if user_chose_threads() or elements >= SMALL_WORK:
        return torch.get_num_threads()
    return 1


@contextlib.contextmanager
def limited(threads: int) -> Iterator[int]:
    """torch's intra-op threads at most ``threads`` inside the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    now = max(1, min(before, int(threads)))
    if now != before:
        torch.set_num_threads(now)
    try:
        yield now
    finally:
        if now != before:
            torch.set_num_threads(before)
