"""Process groups under ``torchrun`` and the FSDP plumbing of the SFT trainer.

* :func:`launch`: how every training command runs -- the device (``cuda:LOCAL_RANK`` under
  ``torchrun``), the default process group created from torchrun's environment (NCCL on CUDA, gloo
  on the CPU) and torn down at the end (:func:`init_from_env` / :func:`destroy`);
  :func:`on_rank0` runs one-off preparation (folder checks, data scans) on rank 0 only.
* :func:`shard_fsdp`: PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``, torch >= 2.6):
  each transformer block is one unit (its parameters, gradients and optimizer state are
  sharded over the ranks and all-gathered only while the block runs), the rest of the model
  (ResNet encoders, embeddings, head) is the root unit. With bf16 the blocks' parameters are
  all-gathered and used in bf16 and their gradients reduced in fp32 (``MixedPrecisionPolicy``);
  the root unit stays fp32, like the parts the model deliberately keeps in fp32 under autocast.
* Full (unsharded) state dicts of a sharded model and its optimizer, gathered one tensor at a
  time onto rank 0's CPU, and the way back: checkpoints written under FSDP have the same format
  as single-process and DDP ones, so a run resumes with another world size, with or without FSDP.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .. import threads
from ..errors import ConfigError, OtherRankFailed
from .runs import world

T = TypeVar("T")

logger = logging.getLogger(__name__)

if dist.is_available():
    # torch.distributed.nn.functional binds its defaults (``group=group.WORLD``) when first imported.
    # Imported after init_process_group (torchvision imports it through torch._dynamo when the first
    # model is built), they keep the default group alive past destroy_process_group, and its gloo
    # threads run on into interpreter shutdown, where one that drops a finished collective's tensors
    # takes the GIL and aborts the process ("terminate called without an active exception").
    # Imported here, before any group exists, the defaults are None (docs/architecture.md §4).
    import torch.distributed.nn  # noqa: F401


# ------------------------------------------------------------------------------ process group
def under_torchrun() -> bool:
    """True when this process was started by ``torchrun`` (its environment variables are set)."""
    return all(k in os.environ for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE"))


def resolve_device(device: str | None = "auto") -> torch.device:
    """The training device: ``auto``/None = ``cuda:LOCAL_RANK`` when CUDA is present, else ``cpu``.

    Under torchrun a bare ``cuda`` also becomes ``cuda:LOCAL_RANK`` (one GPU per process);
    an explicit ``cuda:N`` is kept.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if under_torchrun() else 0
    text = (device or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda":
        text = f"cuda:{local_rank}"
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {dev}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                "start at most that many processes per node"
            )
    return dev


def init_from_env(device: torch.device) -> bool:
    """Initialise the default process group from torchrun's environment (NCCL on CUDA, gloo otherwise).

    Returns True when this call created the group (the caller then calls :func:`destroy`), False
    when not under torchrun or when a group already exists.
    """
    if not under_torchrun() or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run without torchrun")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    logger.info(
        "process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend()
    )
    return True


def destroy(wait: bool = True) -> None:
    """Tear the process group down. ``wait`` (on a normal finish) first waits at a barrier for every
    rank, so that no rank tears gloo down while a peer is still working (rank 0 saving its last
    files). After an error, pass False: the other ranks may be gone, and a barrier would wait out
    the group's timeout.

    The group is freed here, while the interpreter is fully alive, once nothing else holds it (a
    DDP/FSDP model still alive frees it when it goes): gloo joins its worker threads then. A group
    that outlives this into interpreter shutdown can abort the process (see the import above)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        _clear_dtensor_caches()
        dist.destroy_process_group()
        gc.collect()


def _clear_dtensor_caches() -> None:
    """Empty DTensor's sharding and redistribution caches (filled under FSDP): their keys hold the
    DeviceMesh, and the mesh the process group. Private torch APIs (2.14), so best effort."""
    if "torch.distributed.tensor" not in sys.modules:
        return
    try:
        from torch.distributed.tensor import _collective_utils, _redistribute, debug
        from torch.distributed.tensor._sharding_prop import ShardingPropagator

        debug._clear_sharding_prop_cache()
        _redistribute._gen_transform_infos.cache_clear()
        _redistribute.clear_redistribute_planner_cache()
        ShardingPropagator._propagate_tensor_meta_cached.cache_clear()
        _collective_utils.MeshTopoInfo.build_from_mesh.cache_clear()
    except (ImportError, AttributeError):  # another torch version: other caches
        logger.debug("could not clear DTensor's caches", exc_info=True)


def launch(body: Callable[[torch.device, int, int], T], device: str | None = "auto") -> T:
    """``body(device, rank, world_size)`` inside the ``torchrun`` process group (created from the
    environment when present, destroyed afterwards; alone: rank 0 of 1). ``device`` as
    :func:`resolve_device` takes it. Under torchrun the process's threads are set first
    (:func:`stylevar.threads.apply`: the CPUs it may use shared among the machine's processes of the job)."""
    if under_torchrun():
        threads.apply(keep_lower=False)
    dev = resolve_device(device)
    created = init_from_env(dev)
    try:
        rank, size = world()
        result = body(dev, rank, size)
    except BaseException:
        if created:
            destroy(wait=False)
        raise
    if created:
        destroy()
    return result


def on_rank0(fn: Callable[[], T], rank: int, world_size: int) -> T:
    """``fn()`` on rank 0 (checking the run folder, scanning data), its result broadcast to the other
    ranks, which wait with a long timeout; a failure there raises :class:`OtherRankFailed` on the others."""
    if world_size == 1:
        return fn()
    group = patient_group()
    outcome: Any = None
    if rank == 0:
        try:
            outcome = ("ok", fn())
        except Exception as e:  # tell the other ranks, then report it here
            broadcast_object(("error", f"{type(e).__name__}: {e}"), group)
            raise
    outcome = broadcast_object(outcome, group)
    if outcome[0] == "error":
        raise OtherRankFailed(f"rank 0 failed while preparing the run ({outcome[1]})")
    return outcome[1]


def patient_group(hours: float = 12.0) -> Any:
    """A gloo group with a long timeout, for ranks waiting on rank 0's long one-off work (data checks)."""
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=hours))


def broadcast_object(obj: Any, group: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


# ------------------------------------------------------------------------------ FSDP
def _fsdp_api():
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6
        raise ConfigError(
            f"FSDP needs torch >= 2.6 (torch.distributed.fsdp.fully_shard); this is torch {torch.__version__}"
        ) from None
    return fully_shard, MixedPrecisionPolicy, init_device_mesh


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (FSDP, unlike DDP, does not)."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def shard_fsdp(
    root: nn.Module, units: Iterable[nn.Module], device: torch.device, precision: str = "fp32"
) -> nn.Module:
    """Shard ``root`` with FSDP2: one unit per module of ``units`` (the transformer blocks), then the root.

    Every rank must hold the same weights beforehand (see :func:`broadcast_module`). With
    ``precision="bf16"`` the units compute with bf16 parameters and reduce gradients in fp32; the
    inputs are not cast (autocast does that per op), and the root stays fp32. Returns ``root``,
    now an ``FSDPModule`` (``set_requires_gradient_sync`` for accumulation, ``reshard``).
    """
    fully_shard, MixedPrecisionPolicy, init_device_mesh = _fsdp_api()
    if precision == "fp16":
        raise ConfigError(
            "precision fp16 is not supported with FSDP (its grad scaler would need a sharded inf check); "
            "use bf16 or fp32"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if precision == "bf16":
        unit_mp = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False
        )
    else:
        unit_mp = MixedPrecisionPolicy()
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=unit_mp)
    fully_shard(root, mesh=mesh)
    return root


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4: no FSDP2 either
        return False
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) one; a collective for DTensors (every rank calls it)."""
    return t.full_tensor() if _is_dtensor(t) else t


def full_state_dict(module: nn.Module, rank: int) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every sharded tensor gathered; on rank 0 CPU tensors, elsewhere ``{}``.

    A collective under FSDP: every rank calls it. Tensors are gathered one at a time, so the
    peak extra device memory is one full tensor.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in module.state_dict().items():
        v = full_tensor(v).detach()
        if rank == 0:
            out[k] = v.cpu()
    return out


def full_optimizer_state(optimizer: torch.optim.Optimizer, rank: int) -> dict:
    """``optimizer.state_dict()`` with sharded state gathered (rank 0; ``{}`` elsewhere). A collective."""
    osd = optimizer.state_dict()
    state: dict = {}
    for idx, s in osd["state"].items():
        gathered = {k: (full_tensor(v).detach().cpu() if torch.is_tensor(v) else v) for k, v in s.items()}
        if rank == 0:
            state[idx] = gathered
    return {"state": state, "param_groups": osd["param_groups"]} if rank == 0 else {}


def _like(full: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``local``: sharded the same way when ``local`` is a DTensor."""
    if not _is_dtensor(local):
        return full
    from torch.distributed.tensor import distribute_tensor

    if tuple(full.shape) != tuple(local.shape):
        return full  # let load_state_dict report the mismatch
    # every rank holds the same full tensor: each takes its own shard, no communication
    return distribute_tensor(
        full.to(device=local.device, dtype=local.dtype),
        local.device_mesh,
        local.placements,
        src_data_rank=None,
    )


def load_full_state_dict(module: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Load a full state dict (every rank passes the same one) into a possibly sharded module, strictly."""
    local = module.state_dict()
    module.load_state_dict({k: (_like(v, local[k]) if k in local else v) for k, v in sd.items()})


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, osd: Mapping) -> None:
    """Load a full optimizer state dict into an optimizer over possibly sharded parameters."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for idx, s in osd["state"].items():
        p = params[int(idx)] if int(idx) < len(params) else None
        state[idx] = {
            k: (_like(v, p) if p is not None and torch.is_tensor(v) and v.ndim > 0 else v)
            for k, v in s.items()
        }
    optimizer.load_state_dict({"state": state, "param_groups": osd["param_groups"]})
