"""CPU threads on a shared machine (stylevar.threads, docs/speed.md "On a shared machine"): the count
follows the affinity mask and the cgroup quota, the user's variables win, the wait policy is set only
when the user set none, and a process started with fewer CPUs runs that many threads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stylevar import threads
from stylevar.errors import ConfigError

#: the variables a user may set; cleared so that each test starts from "set by nobody"
USER_VARS = (threads.ENV_THREADS, "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", *threads.WAIT_KNOBS)


@pytest.fixture
def clean_env(monkeypatch):
    for k in USER_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(threads, "_applied", None)
    return monkeypatch


def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> dict:
    """A fake cgroup tree under tmp_path/fs and a fake /proc/self/cgroup; kwargs for the functions."""
    root = tmp_path / "fs"
    root.mkdir()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "cgroup"
    proc.write_text(proc_line + "\n")
    return {"root": root, "proc_cgroup": proc}


# ------------------------------------------------------------------------------ how many CPUs
def test_cgroup_v2_quota_limits_the_affinity_mask(tmp_path):
    fs = _cgroup(tmp_path, "0::/", {"cpu.max": "150000 100000\n"})
    assert threads.cgroup_cpu_limit(**fs) == 1.5
    assert threads.available_cpus(8, **fs) == (2, "cgroup quota")  # 1.5 CPUs' worth: 2 threads
    assert threads.available_cpus(1, **fs) == (1, "affinity")  # the mask is the smaller


def test_cgroup_v2_takes_the_smallest_quota_on_the_path(tmp_path):
    fs = _cgroup(
        tmp_path,
        "0::/job/step",
        {"job/step/cpu.max": "max 100000\n", "job/cpu.max": "300000 100000\n", "cpu.max": "max 100000\n"},
    )
    assert threads.cgroup_cpu_limit(**fs) == 3.0
    assert threads.thread_count({}, affinity=16, **fs) == (3, "cgroup quota", 3)


def test_cgroup_v1_cfs_quota(tmp_path):
    base = "cpu,cpuacct/docker/abc"
    fs = _cgroup(
        tmp_path,
        "4:cpu,cpuacct:/docker/abc",
        {f"{base}/cpu.cfs_quota_us": "200000\n", f"{base}/cpu.cfs_period_us": "100000\n"},
    )
    assert threads.cgroup_cpu_limit(**fs) == 2.0
    assert threads.available_cpus(64, **fs) == (2, "cgroup quota")
    (fs["root"] / base / "cpu.cfs_quota_us").write_text("-1\n")  # no limit
    assert threads.cgroup_cpu_limit(**fs) is None
    assert threads.available_cpus(64, **fs) == (64, "affinity")


def test_no_cgroup_files_means_no_quota(tmp_path):
    fs = _cgroup(tmp_path, "0::/", {})
    assert threads.cgroup_cpu_limit(**fs) is None
    assert threads.available_cpus(3, **fs) == (3, "affinity")
    missing = {"root": tmp_path / "nowhere", "proc_cgroup": tmp_path / "nothing"}
    assert threads.available_cpus(3, **missing) == (3, "affinity")


def test_the_real_machine_gives_at_least_one_cpu():
    cpus, why = threads.available_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0)) and why in ("affinity", "cgroup quota")


# ------------------------------------------------------------------------------ the user's choice
def test_the_users_variables_win_stylevar_threads_first(tmp_path):
    fs = _cgroup(tmp_path, "0::/", {"cpu.max": "100000 100000\n"})  # 1 CPU's worth
    both = {"STYLEVAR_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert threads.thread_count(both, affinity=8, **fs) == (3, "STYLEVAR_THREADS", 1)
    assert threads.thread_count({"OMP_NUM_THREADS": "5"}, affinity=8, **fs) == (5, "OMP_NUM_THREADS", 1)
    assert threads.thread_count({"OMP_NUM_THREADS": "4,2"}, affinity=8, **fs)[0] == 4  # per nesting level
    assert threads.thread_count({"OMP_NUM_THREADS": "lots"}, affinity=8, **fs)[:2] == (1, "cgroup quota")
    with pytest.raises(ConfigError, match="STYLEVAR_THREADS"):
        threads.thread_count({"STYLEVAR_THREADS": "0"}, affinity=8, **fs)
    with pytest.raises(ConfigError, match="STYLEVAR_THREADS"):
        threads.thread_count({"STYLEVAR_THREADS": "two"}, affinity=8, **fs)


def test_processes_of_one_job_share_the_cpus(tmp_path):
    fs = _cgroup(tmp_path, "0::/", {})
    assert threads.thread_count({"LOCAL_WORLD_SIZE": "3"}, affinity=8, **fs)[0] == 2
    assert threads.thread_count({"LOCAL_WORLD_SIZE": "4"}, affinity=2, **fs)[0] == 1  # never 0
    assert threads.thread_count({}, processes=2, affinity=8, **fs)[0] == 4
    # STYLEVAR_THREADS is the job's on this machine: the processes that inherit it share it (OMP_NUM_THREADS
    # is per process, as OpenMP means it)
    assert threads.thread_count({"STYLEVAR_THREADS": "4", "LOCAL_WORLD_SIZE": "2"}, affinity=8, **fs)[0] == 2
    assert threads.thread_count({"STYLEVAR_THREADS": "1", "LOCAL_WORLD_SIZE": "4"}, affinity=8, **fs)[0] == 1
    assert threads.thread_count({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}, affinity=8, **fs)[0] == 3
    # torchrun sets OMP_NUM_THREADS=1 in every process; STYLEVAR_THREADS=auto takes stylevar's share instead
    torchrun = {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    assert threads.thread_count(torchrun, affinity=8, **fs)[:2] == (1, "OMP_NUM_THREADS")
    assert threads.thread_count({**torchrun, "STYLEVAR_THREADS": "auto"}, affinity=8, **fs)[:2] == (
        4,
        "affinity",
    )


def test_the_wait_policy_is_set_only_when_the_user_set_none():
    env: dict[str, str] = {}
    assert threads.wait_policy_env(env) == {"GOMP_SPINCOUNT": str(threads.SPIN_COUNT)}
    assert env == {"GOMP_SPINCOUNT": str(threads.SPIN_COUNT)}
    for knob, value in [
        ("OMP_WAIT_POLICY", "ACTIVE"),
        ("GOMP_SPINCOUNT", "300000"),
        ("KMP_BLOCKTIME", "200"),
    ]:
        env = {knob: value}
        assert threads.wait_policy_env(env) == {} and env == {knob: value}, knob


# ------------------------------------------------------------------------------ in this process
def test_small_work_runs_on_one_thread_unless_the_user_chose(clean_env):
    before = torch.get_num_threads()
    assert threads.threads_for(threads.SMALL_WORK - 1) == 1
    assert threads.threads_for(threads.SMALL_WORK) == before
    clean_env.setenv("OMP_NUM_THREADS", "2")
    assert threads.threads_for(10) == before
    with threads.limited(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with threads.limited(before + 4) as n:  # a limit, never more threads
        assert n == before and torch.get_num_threads() == before


def test_apply_with_torch_loaded_keeps_a_lower_count(clean_env):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        clean_env.setenv("LOCAL_WORLD_SIZE", "1")
        s = threads.apply()
        assert (
            s.threads == 1 and torch.get_num_threads() == 1 and not s.wait_env_effective and s.wait_env == {}
        )
        assert threads.apply() is s  # once
        s = threads.apply(force=True, keep_lower=False)  # under torchrun: the count as computed
        assert s.threads == threads.available_cpus()[0] == torch.get_num_threads()
        clean_env.setenv("STYLEVAR_THREADS", "1")
        s = threads.apply(force=True)
        assert (s.threads, s.source) == (1, "STYLEVAR_THREADS") and torch.get_num_threads() == 1
        assert threads.user_chose_threads()
    finally:
        torch.set_num_threads(before)


def test_the_tokenizer_trains_a_small_model_on_one_thread(tmp_path, clean_env):
    from stylevar.config import VQVAEConfig
    from stylevar.models import VQVAE
    from stylevar.training.config import TokenizerConfig
    from stylevar.training.tokenizer import TokenizerTrainer

    seen: list[int] = []

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            seen.append(torch.get_num_threads())
            return torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(i)) * 2 - 1

    vqcfg = dict(vocab_size=16, z_channels=4, ch=8, ch_mult=(1, 1), patch_nums=(1, 2, 4), num_res_blocks=1)
    vae = VQVAE(VQVAEConfig(**vqcfg, using_sa=False, using_mid_sa=False, norm_groups=1))
    cfg = TokenizerConfig(max_steps=1, batch=2, save_every=0, num_workers=0, warmup_steps=0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        TokenizerTrainer(vae, Images(), tmp_path / "run", cfg).fit(progress=False)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2  # restored
        seen.clear()
        clean_env.setenv("STYLEVAR_THREADS", "2")  # the user's count is kept
        TokenizerTrainer(vae, Images(), tmp_path / "run2", cfg).fit(progress=False)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------ a fresh process
CLI_PROBE = """
import os
from stylevar.cli import main
main(["info", os.devnull + "-missing"])  # any command: the CLI sets the threads before torch loads
"""
APPLY_PROBE = """
from stylevar import threads
threads.apply()
"""
REPORT = """
import os, torch
print("RESULT", torch.get_num_threads(), os.environ.get("GOMP_SPINCOUNT"), os.environ.get("OMP_NUM_THREADS"))
"""


def _probe(code: str, cpus: set[int] | None, **env: str) -> tuple[list[str], str]:
    """Run ``code`` in a fresh Python (on ``cpus``, with ``env`` and none of the user's variables), then
    report torch's threads and the variables; returns the report's fields and libgomp's startup log."""
    base = {k: v for k, v in os.environ.items() if k not in USER_VARS}
    base.update(env, OMP_DISPLAY_ENV="VERBOSE")  # libgomp prints what it read when it starts
    res = subprocess.run(
        [sys.executable, "-c", code + REPORT],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT")]
    assert line, res.stdout[-2000:] + res.stderr[-2000:]
    return line[-1].split()[1:], res.stderr


def test_a_process_started_on_one_cpu_runs_one_thread_with_a_short_spin():
    one = {min(os.sched_getaffinity(0))}
    (n, spin, omp), log = _probe(CLI_PROBE, one)
    assert (n, spin, omp) == ("1", str(threads.SPIN_COUNT), "None")
    # libgomp itself read the spin count: the variable was set before torch loaded it
    assert f"GOMP_SPINCOUNT = '{threads.SPIN_COUNT}'" in log


def test_a_fresh_process_keeps_the_users_settings():
    (n, spin, _), log = _probe(APPLY_PROBE, None, OMP_WAIT_POLICY="ACTIVE", STYLEVAR_THREADS="1")
    assert (n, spin) == ("1", "None") and "OMP_WAIT_POLICY = 'ACTIVE'" in log


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_two_processes_of_a_job_on_two_cpus_get_one_thread_each():
    two = set(sorted(os.sched_getaffinity(0))[:2])
    (n, _, omp), _ = _probe(APPLY_PROBE, two, LOCAL_WORLD_SIZE="2")
    assert (n, omp) == ("1", "1")  # OMP_NUM_THREADS set for libgomp to read when torch loads
