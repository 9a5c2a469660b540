"""Rank, world size and barriers for code that runs on every rank of a distributed job.

The Lightning modules get their rank from the trainer. Multi-step drivers (``usod pipeline``, ``usod label``,
the DeepUSPS driver) run between trainers, where these helpers answer instead:

* while a ``torch.distributed`` process group is initialised (a Lightning DDP trainer made one, or the job
  did), its rank and size;
* before that, the launcher's environment: ``RANK`` / ``WORLD_SIZE`` (``torchrun``), ``SLURM_PROCID`` /
  ``SLURM_NTASKS`` (``srun``), or ``NODE_RANK`` / ``LOCAL_RANK`` (Lightning's own launcher, which restarts
  the command once per extra device with ``LOCAL_RANK`` set).

Lightning keeps its process group after ``fit``/``predict`` (until the process exits), so a driver can call
:func:`barrier` between trainers. A driver whose first step is not a trainer (the DeepUSPS handcrafted maps)
calls :func:`init_from_launcher` first: under ``torchrun`` or ``srun`` it creates the process group that
Lightning then takes over, so that the ranks can share out that step and wait for each other.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "barrier",
    "collective_device",
    "init_from_launcher",
    "is_rank_zero",
    "local_rank",
    "rank_world",
    "shard",
]


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _env_int(*keys: str) -> int | None:
    for key in keys:
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return None


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: the process group's when initialised, else ``(0, 1)``.

    Only the initialised process group counts here: code that shards work by rank must not shard before
    the other ranks exist.
    """
    if _initialized():
        import torch.distributed as dist

        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank_zero() -> bool:
    """Whether this process is global rank 0, also before the process group exists (from the launcher's
    environment: ``RANK``, ``SLURM_PROCID``, else ``NODE_RANK`` and ``LOCAL_RANK`` both 0)."""
    if _initialized():
        return rank_world()[0] == 0
    rank = _env_int("RANK", "SLURM_PROCID")
    if rank is not None:
        return rank == 0
    return not _env_int("NODE_RANK") and not _env_int("LOCAL_RANK")


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK``, ``SLURM_LOCALID``, else 0): its GPU."""
    return _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0


def shard(size: int) -> range:
    """The indices ``rank, rank + world, ...`` of ``range(size)`` this process handles (all of them alone)."""
    rank, world = rank_world()
    return range(rank, size, world)


def collective_device() -> torch.device:
    """Where tensors of a collective (e.g. torchmetrics' state sync) must live: this rank's GPU under
    NCCL, else the CPU."""
    import torch

    if _initialized():
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", local_rank())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank when a process group with more than one rank is initialised; else return."""
    if _initialized() and rank_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def init_from_launcher(accelerator: str = "auto") -> bool:
    """Create the process group now when ``torchrun`` or ``srun`` started several processes.

    Lightning's DDP strategy finds the group initialised and uses it, so the same job can run steps without
    a trainer first. Nothing happens in a single process, under Lightning's own launcher (the other
    processes do not exist before the first trainer starts them) or when a group exists.

    Args:
        accelerator: The job's Lightning accelerator: ``nccl`` for GPUs (``gpu``/``cuda``, or ``auto`` with
            CUDA available), else ``gloo``, as Lightning chooses.

    Returns:
        Whether a group was created.
    """
    import torch
    import torch.distributed as dist
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    destroy_group_at_exit()  # also the group Lightning's launcher makes later in this process
    if not dist.is_available() or dist.is_initialized():
        return False
    environment = next((e() for e in (TorchElasticEnvironment, SLURMEnvironment) if e.detect()), None)
    if environment is None or environment.world_size() < 2:
        return False
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    backend = "nccl" if gpu and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(environment.local_rank())
    os.environ["MASTER_ADDR"] = environment.main_address
    os.environ["MASTER_PORT"] = str(environment.main_port)
    dist.init_process_group(backend, rank=environment.global_rank(), world_size=environment.world_size())
    return True


_DESTROY_REGISTERED = False


def destroy_group_at_exit() -> None:
    """Take the default process group down when the process exits, whoever made it (once per process).

    A group left at exit is torn down by static destructors, which can abort the process ("terminate called
    without an active exception", seen on a Lightning-launched gloo rank) and makes torch warn about NCCL.
    """
    global _DESTROY_REGISTERED
    if not _DESTROY_REGISTERED:
        import atexit

        atexit.register(_destroy_group)
        _DESTROY_REGISTERED = True


def _destroy_group() -> None:
    import sys

    dist = sys.modules.get("torch.distributed")  # never imported: no group to take down
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
