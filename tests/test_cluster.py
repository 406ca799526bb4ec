"""``stylevar stylize --ray``: a local Ray instance (2 CPUs), the same files as one process, a killed worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import write_smooth_pngs
from stylevar.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def grid_pics(tmp_path_factory):
    d = tmp_path_factory.mktemp("raypics")
    contents = write_smooth_pngs(d / "content", [(64, 64), (80, 60), (60, 80), (70, 70)], seed=51, stem="c")
    styles = write_smooth_pngs(d / "style", [(64, 64), (90, 64), (64, 90), (66, 66)], seed=52, stem="s")
    return contents, styles


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_ray_writes_the_one_process_files_and_survives_a_killed_worker(
    ray_session, grid_pics, ours_dir, tmp_path, capsys
):
    from stylevar.stylize.cluster import stylize_on_ray
    from stylevar.stylize.pairs import folder_pairs

    contents, styles = grid_pics
    c_dir, s_dir = str(contents[0].parent), str(styles[0].parent)
    ck = [
        "--checkpoint",
        str(ours_dir),
        "--device",
        "cpu",
        "--seed",
        "7",
        "--batch-size",
        "2",
        "--window",
        "2",
        "-q",
    ]
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker (1 CPU each): CPU kernels split their sums by thread count
    try:
        assert main(["stylize", c_dir, s_dir, "-o", str(one), *ck]) == 0
    finally:
        torch.set_num_threads(threads)
    want = _files(one)
    assert len(want) == 16

    # the same command on Ray (the test's session is used as it is): the same bytes
    on_ray = tmp_path / "ray"
    assert main(["stylize", c_dir, s_dir, "-o", str(on_ray), *ck, "--ray", "--ray-workers", "2"]) == 0
    assert "16 written, 0 skipped" in capsys.readouterr().out
    assert _files(on_ray) == want
    log = [json.loads(line) for line in (on_ray / "stylevar_runs.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in log) == list(range(7, 23))
    assert not (on_ray / ".stylevar-ray").exists()

    # resume across runs: delete three outputs, only those are made again
    for name in sorted(want)[:3]:
        (on_ray / name).unlink()
    assert main(["stylize", c_dir, s_dir, "-o", str(on_ray), *ck, "--ray", "--skip-existing"]) == 0
    assert "3 written, 0 skipped (unreadable input), 13 already there" in capsys.readouterr().out
    assert _files(on_ray) == want

    # a worker killed right after writing its first image: Ray restarts it and retries its window;
    # nothing is lost, nothing duplicated, the bytes are the same
    killed = tmp_path / "killed"
    marker = tmp_path / "crashed-once"
    names = [p.stem for p in contents], [p.stem for p in styles]
    rows = list(
        stylize_on_ray(
            folder_pairs(contents, styles, *names),
            {"pretrained": str(ours_dir), "device": "cpu"},
            {"seed": 7, "batch_size": 2, "window": 2},
            out_dir=killed,
            target=lambda i, pair, k: killed / f"{pair.name}.png",
            workers=2,
            progress=False,
            fault_marker=str(marker),
        )
    )
    assert marker.exists(), "the fault was not injected"
    assert len(rows) == 16 and len({r["output"] for r in rows}) == 16 and all("error" not in r for r in rows)
    assert _files(killed) == want
