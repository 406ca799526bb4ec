"""How fast the ``stylevar`` command answers when it has nothing to compute: ``--help``, a subcommand's
``--help``, an argument error. Goal: under 1 s wall on a 2-core machine (none of these imports torch).

    python benchmarks/bench_cli.py            # 10 runs each, cold imports in a fresh process every time
    python benchmarks/bench_cli.py --runs 20

Each run is a new process (``python -m stylevar ...``), as a user's shell would start it; the
installed ``stylevar`` script is timed too when it is on PATH. Prints median / max wall seconds, and
whether torch was imported (``-X importtime``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

CASES = [
    ("stylevar --help", ["--help"]),
    ("stylevar sft --help", ["sft", "--help"]),
    ("stylevar grpo --help", ["grpo", "--help"]),
    ("stylevar stylize (argument error)", ["stylize", "a.png", "b.png", "-o", "x", "--num_samples", "2"]),
]


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=False)
    return time.perf_counter() - t0


def imports_torch(args: list[str]) -> bool:
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "stylevar", *args], capture_output=True, text=True
    )
    return any(line.split("|")[-1].strip() == "torch" for line in res.stderr.splitlines() if "|" in line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    n = ap.parse_args().runs
    script = shutil.which("stylevar")
    print(f"python {sys.version.split()[0]}, {n} runs each (fresh process per run)\n")
    print(f"{'command':40s} {'how':18s} {'median s':>9s} {'max s':>7s}  torch imported")
    for label, args in CASES:
        launchers = [("python -m stylevar", [sys.executable, "-m", "stylevar", *args])]
        if script:
            launchers.append(("installed script", [script, *args]))
        torch = imports_torch(args)
        for how, cmd in launchers:
            wall(cmd)  # warm the file cache
            times = [wall(cmd) for _ in range(n)]
            print(f"{label:40s} {how:18s} {statistics.median(times):9.3f} {max(times):7.3f}  {torch}")


if __name__ == "__main__":
    main()
