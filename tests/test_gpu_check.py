"""benchmarks/gpu_check.sh runs its CPU-safe part here (--smoke: tiny models, every step of the real check),
so the script a GPU session runs first cannot rot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    # its own process group, so a timeout stops the benchmark scripts too, not only bash
    proc = subprocess.Popen(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", str(tmp_path / "out")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail("gpu_check.sh --smoke ran past 600 s:\n" + out[-3000:])
    assert proc.returncode == 0, out[-3000:]
    doc = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    names = [s["name"] for s in doc["steps"]]
    assert names == [
        "environment",
        "cuda_tests",
        "generate_fp32",
        "generate_bf16",
        "generate_bf16_graphs",
        "grpo_step",
    ]
    assert all(s["exit"] == 0 for s in doc["steps"])
    for name in ("generate_fp32", "generate_bf16", "generate_bf16_graphs"):
        rows = doc["generate"][name]["rows"]
        assert [row["batch"] for row in rows] == [1, 2] and all(row["s_per_sample"] > 0 for row in rows)
        assert doc["generate"][name]["phases"]  # the per-phase table
    assert doc["grpo_step"]["rows"]
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| generate_bf16_graphs | 2 |" in md
