"""benchmarks/gpu_check.sh runs its CPU-safe part here (--smoke: tiny models, every step of the real check),
so the script a GPU session runs first cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
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
