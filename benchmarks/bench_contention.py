"""Is stylevar fair on a shared machine? Each stage alone, then next to CPU-bound competitors.

Stages (each timed in a fresh process that sets its threads as the ``stylevar`` command does,
:func:`stylevar.threads.apply`, before torch is imported):

* **tokenizer**: the demo's tokenizer stage at ``stylevar demo --quick``'s size (40 steps of 16 images,
  32 px), through the demo's own function;
* **sft**: the demo's SFT stage at the same size (40 steps of 32 triplets, in the demo's number of
  processes), on a tokenizer trained once beforehand (untimed);
* **generate**: one d20 stylization at batch 1, 256 px, random weights (``bench_generate.build``),
  fp32; the median of the timed calls after one warm-up call.

Each is timed alone and then with ``--competitors`` processes that spin on a CPU (``while True: pass``,
each in a session of its own, as another user's work is: Linux schedules sessions as groups; started by
this script, killed when the measurement ends, and ending by themselves after 30 minutes at most),
alternately, ``--reps`` times; the table gives the median seconds alone and contended and their ratio
(target: at most 2.5x). Other users' load spoils both: ``other load`` is the CPUs' worth of time that
processes other than the stage's and the competitors' took during the measurements (``/proc/stat``; idle
CPUs that others used count too). On a busy machine, ``--autogroup-nice -15`` (root) runs the stages and the
competitors at a scheduling weight that outweighs everyone else's, which approximates a quiet machine.

    python benchmarks/bench_contention.py                        # all stages, 3 reps
    python benchmarks/bench_contention.py --quick                # fewer steps, 1 rep: does it work
    python benchmarks/bench_contention.py --stages tokenizer --env GOMP_SPINCOUNT=300000 \\
        --env STYLEVAR_THREADS=2                                 # stylevar's thread policy off (the old way)
    python benchmarks/bench_contention.py --json contention.json --autogroup-nice -15   # on a busy machine

``--env KEY=VALUE`` sets a variable in the stages' processes (not the competitors'): a wait policy
(``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) or a thread count (``STYLEVAR_THREADS``) the user chose
replaces stylevar's (docs/speed.md, "On a shared machine").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("tokenizer", "sft", "generate")
#: a competitor: one CPU-bound Python process that ends by itself after this many seconds at most
COMPETITOR_LIMIT_S = 1800
COMPETITOR = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end: pass"
#: ``stylevar demo --quick``'s sizes (stylevar/cli/demo.py)
QUICK_DEMO = dict(
    num_contents=60, num_styles=60, num_triplets=400, num_heldout=16, tokenizer_steps=40, sft_steps=40
)


# ------------------------------------------------------------------------------ the stages (child side)
def _demo_api() -> dict:
    """The demo's functions (stylevar.demo and its stages module)."""
    from stylevar.demo import DemoConfig, resolve_precision, sft_processes
    from stylevar.demo.stages import sft_trainer, spawn_sft, train_tokenizer

    return dict(
        DemoConfig=DemoConfig,
        resolve_precision=resolve_precision,
        sft_processes=sft_processes,
        train_tokenizer=train_tokenizer,
        sft_trainer=sft_trainer,
        spawn_sft=spawn_sft,
    )


def _demo_config(api: dict, quick: bool):
    cfg = api["DemoConfig"](seed=0, **QUICK_DEMO)
    if quick:  # the plumbing of this script: fewer steps
        cfg.tokenizer_steps, cfg.sft_steps = 20, 10
    return cfg


def _paths(work: Path) -> dict[str, Path]:
    return {"train": work / "data" / "train", "held": work / "data" / "heldout", "tok": work / "prepared"}


def prepare(work: Path, quick: bool) -> None:
    """Untimed: the synthetic data and one trained tokenizer (for the SFT stage)."""
    import torch

    from stylevar.data.synthetic import make_synthetic

    api = _demo_api()
    cfg = _demo_config(api, quick)
    p = _paths(work)
    for root, n, seed in ((p["train"], None, cfg.seed), (p["held"], cfg.num_heldout, cfg.seed + 1)):
        make_synthetic(
            root,
            num_contents=n or cfg.num_contents,
            num_styles=n or cfg.num_styles,
            num_triplets=n or cfg.num_triplets,
            size=cfg.size,
            period=cfg.period,
            seed=seed,
        )
    precision = _precision(api, cfg)
    api["train_tokenizer"](cfg, _images(p["train"]), p["tok"], precision, torch.device("cpu"), False, _quiet)


def _images(train: Path) -> list[Path]:
    """The tokenizer's images, as run_demo gives them: every image of the training triplets."""
    return [train / r for r in ("target", "content", "style")]


def _quiet(_line: str) -> None:
    pass


def _precision(api: dict, cfg) -> dict:
    import torch

    dev = torch.device("cpu")
    return {
        "tokenizer": api["resolve_precision"](cfg.tokenizer_precision, dev),
        "sft": api["resolve_precision"](cfg.sft_precision, dev),
    }


def run_stage(stage: str, work: Path, quick: bool, out: Path) -> dict:
    """Run one stage once; ``{"seconds": ..., ...}``."""
    import torch

    dev = torch.device("cpu")
    info: dict = {}
    if stage in ("tokenizer", "sft"):
        api = _demo_api()
        cfg = _demo_config(api, quick)
        p = _paths(work)
        precision = _precision(api, cfg)
        info["precision"] = precision[stage]
        from stylevar import threads

        if stage == "tokenizer":  # the trainer's own rule (TokenizerTrainer.fit), for the report
            info["threads_in_stage"] = str(
                threads.threads_for(cfg.tokenizer_batch * cfg.tokenizer_ch * cfg.size**2)
            )
            t0 = time.perf_counter()
            api["train_tokenizer"](cfg, _images(p["train"]), out, precision, dev, False, _quiet)
            seconds = time.perf_counter() - t0
        else:
            shutil.copytree(p["tok"] / "tokenizer" / "final", out / "tokenizer" / "final")
            procs = api["sft_processes"](cfg, dev)
            info["processes"] = procs
            info["threads_in_stage"] = (
                f"{procs} x {max(1, torch.get_num_threads() // procs)}"  # as spawn_sft shares them
            )
            t0 = time.perf_counter()  # as run_demo times its SFT stage
            if procs == 1:
                sft, _ = api["sft_trainer"](
                    cfg, _load_vae(out), p["train"], p["held"], out, precision, dev, 1
                )
                sft.fit(progress=False)
            else:
                api["spawn_sft"](cfg, procs, out, p["train"], p["held"], precision, False)
            seconds = time.perf_counter() - t0
    else:
        seconds, info = _generate(quick)
    return {"seconds": seconds, **info}


def _load_vae(out: Path):
    from stylevar.io import load_vqvae

    return load_vqvae(out / "tokenizer" / "final").eval().requires_grad_(False)


def _generate(quick: bool) -> tuple[float, dict]:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_generate import build, run_once

    model, vae = build(torch.device("cpu"), "d20")
    R = vae.config.resolution
    img = torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(1)) * 2 - 1
    style, content = img[:1], img[1:]
    run_once(model, vae, style, content, "ours", None)  # warm-up
    times = []
    for _ in range(1 if quick else 2):
        t0 = time.perf_counter()
        run_once(model, vae, style, content, "ours", None)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), {"calls": len(times), "threads_in_stage": str(torch.get_num_threads())}


def child(args: argparse.Namespace) -> None:
    from stylevar import threads

    threads.apply()  # as the stylevar command does, before torch is imported
    import resource

    from stylevar.devices import cpu_name

    work = Path(args.workdir)
    if args.child == "prepare":
        prepare(work, args.quick)
        print(json.dumps({"prepared": True}))
        return
    out = Path(tempfile.mkdtemp(prefix=f"{args.child}-", dir=work))
    try:
        result = run_stage(args.child, work, args.quick, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    result["cpu_s"] = sum(u.ru_utime + u.ru_stime for u in usage)
    result["threads"] = threads.describe()
    result["cpu_name"] = cpu_name()
    print(json.dumps(result))


# ------------------------------------------------------------------------------ measuring (parent side)
def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    return sum(v) - v[3] - v[4], sum(v)


def _proc_jiffies(pid: int) -> int:
    """User + system jiffies of a live process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def _session(autogroup_nice: int | None):
    """A ``preexec_fn`` for a process in a new session (Linux gives each session its own scheduling
    autogroup, as another user's login has), with that autogroup's nice value when given."""

    def enter() -> None:
        if autogroup_nice is not None:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(autogroup_nice))

    return enter


def start_competitors(n: int, autogroup_nice: int | None = None) -> list[subprocess.Popen]:
    """``n`` CPU-bound processes, each in a session of its own: another user's work."""
    code = COMPETITOR.format(limit=COMPETITOR_LIMIT_S)
    return [
        subprocess.Popen(
            [sys.executable, "-c", code], start_new_session=True, preexec_fn=_session(autogroup_nice)
        )
        for _ in range(n)
    ]


def stop_competitors(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def measure(stage: str, args, work: Path, env: dict, competitors: int) -> dict:
    """One timed run of ``stage`` in a fresh process, next to ``competitors`` spinning processes."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--workdir", str(work)]
    if args.quick:
        cmd.append("--quick")
    rivals: list[subprocess.Popen] = []
    try:
        rivals = start_competitors(competitors, args.autogroup_nice)
        time.sleep(0.2)
        rival0 = sum(_proc_jiffies(p.pid) for p in rivals)
        busy0, _ = _busy_jiffies()
        t0 = time.perf_counter()
        done = subprocess.run(
            cmd,
            env=env,
            capture_output=True,
            text=True,
            start_new_session=args.autogroup_nice is not None,
            preexec_fn=_session(args.autogroup_nice),
        )
        wall = time.perf_counter() - t0
        busy1, _ = _busy_jiffies()
        rival1 = sum(_proc_jiffies(p.pid) for p in rivals)
    finally:
        stop_competitors(rivals)
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {stage} stage failed (exit {done.returncode})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    others = (busy1 - busy0 - (rival1 - rival0)) / hz - result["cpu_s"]
    result["other_load_cpus"] = max(0.0, others / wall)
    return result


def report(rows: list[dict], meta: dict) -> str:
    lines = [
        f"CPU: {meta['cpu_name']} ({meta['cpus']} CPUs usable); torch {meta['torch']}; "
        f"competitors: {meta['competitors']} spinning process(es); median of {meta['reps']} rep(s)"
        + ("; --quick" if meta["quick"] else "")
        + (f"; autogroup nice {meta['autogroup_nice']}" if meta["autogroup_nice"] is not None else ""),
        f"threads: {json.dumps(meta['threads'])}",
        f"load average before: {meta['load_before']}, after: {meta['load_after']}",
        "",
        "| stage | threads | alone (s) | contended (s) | ratio | CPU s alone | CPU s contended | other load (CPUs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r.get('threads_in_stage', '?')} | {r['alone_s']:.2f} | {r['contended_s']:.2f} | {r['ratio']:.2f}x | "
            f"{r['alone_cpu_s']:.1f} | {r['contended_cpu_s']:.1f} | {r['other_load_cpus']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument(
        "--competitors", type=int, default=1, help="spinning processes next to a stage (default 1)"
    )
    ap.add_argument(
        "--reps", type=int, default=None, help="alone/contended pairs per stage (default 3, --quick 1)"
    )
    ap.add_argument("--quick", action="store_true", help="fewer steps and one rep: checks that it works")
    ap.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="set in the stages' processes"
    )
    ap.add_argument(
        "--autogroup-nice",
        type=int,
        default=None,
        metavar="N",
        help="run the stages and the competitors each in a session whose scheduling autogroup has nice N "
        "(Linux, root for N < 0): -15 shields both from other users' load on a busy machine, as if it were "
        "quiet (default: the stages in this session, niced as it is)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    ap.add_argument("--child", choices=("prepare", *STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    reps = args.reps or (1 if args.quick else 3)
    env = dict(os.environ)
    for kv in args.env:
        key, sep, value = kv.partition("=")
        if not sep:
            ap.error(f"--env {kv!r}: expected KEY=VALUE")
        env[key] = value
    load_before = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="bench-contention-"))
    try:
        prep = [sys.executable, str(Path(__file__).resolve()), "--child", "prepare", "--workdir", str(work)]
        subprocess.run(
            prep + (["--quick"] if args.quick else []), env=env, check=True, stdout=subprocess.DEVNULL
        )
        rows, raw, last = [], {}, {}
        for stage in args.stages:
            runs: dict[str, list[dict]] = {"alone": [], "contended": []}
            for rep in range(reps):
                for mode, n in (("alone", 0), ("contended", args.competitors)):
                    r = measure(stage, args, work, env, n)
                    runs[mode].append(r)
                    print(f"  {stage} {mode} rep {rep + 1}: {r['seconds']:.2f} s "
                          f"(other load {r['other_load_cpus']:.2f} CPUs)", flush=True)  # fmt: skip
                    last = r
            alone = statistics.median(r["seconds"] for r in runs["alone"])
            contended = statistics.median(r["seconds"] for r in runs["contended"])
            every = runs["alone"] + runs["contended"]
            rows.append({
                "stage": stage,
                "alone_s": alone,
                "contended_s": contended,
                "ratio": contended / alone,
                "alone_cpu_s": statistics.median(r["cpu_s"] for r in runs["alone"]),
                "contended_cpu_s": statistics.median(r["cpu_s"] for r in runs["contended"]),
                "other_load_cpus": statistics.mean(r["other_load_cpus"] for r in every),
                **{k: last[k] for k in ("precision", "processes", "threads_in_stage") if k in last},
            })  # fmt: skip
            raw[stage] = runs
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu_name": last.get("cpu_name", "unknown CPU"),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": _torch_version(),
        "competitors": args.competitors,
        "reps": reps,
        "quick": args.quick,
        "env": args.env,
        "autogroup_nice": args.autogroup_nice,
        "threads": last.get("threads", {}),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    print()
    print(report(rows, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "stages": rows, "runs": raw}, indent=1))


def _torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    main()
