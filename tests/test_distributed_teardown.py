"""``distributed.destroy`` frees the gloo process group while the interpreter is alive.

A group that outlives it keeps gloo's worker threads running into interpreter shutdown, where one
that drops a finished collective's tensors takes the GIL; Python 3.11-3.13 ends such a thread with
``pthread_exit``, whose unwinding through a C++ destructor aborts the process ("terminate called
without an active exception"): the rare SIGABRT of the torchrun tests. Here, deterministically: no
gloo thread may be left after ``destroy()``. One gloo process (world size 1), in a fresh interpreter
so that the imports happen in the order of a real run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import os, socket, sys
import torch, torch.distributed as dist
from stylevar.training import distributed as D

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")
import torchvision  # noqa: F401  (as building a StyleVAR does: torch.distributed.nn after the group exists)

model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
if sys.argv[1] == "fsdp":
    D.shard_fsdp(model, list(model), torch.device("cpu"))
    model(torch.ones(2, 4)).sum().backward()
    D.full_state_dict(model, 0)
t = torch.ones(3)
dist.all_reduce(t)
del t, model
D.destroy()
tasks = f"/proc/{os.getpid()}/task"
print([n for n in (open(f"{tasks}/{i}/comm").read().strip() for i in os.listdir(tasks)) if "gloo" in n])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc")
@pytest.mark.parametrize("mode", ["plain", "fsdp"])
def test_destroy_frees_the_group_and_joins_gloo_threads(mode):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120, env=env
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout  # threads still running: the group leaked
