"""Run a scenario on 2 gloo ranks (forked, launched like torchrun would) and on 1 process, for comparison.

Each DDP rank is a forked process with the environment a launcher gives it (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``), so Lightning's ``strategy="ddp"`` takes the processes as
launched externally and uses the gloo group made here, the code path of ``torchrun`` and ``srun`` launches.
One fork runs a whole scenario (several ``Trainer`` runs), which keeps the tests fast.

In the DDP ranks every file written by the pseudo-label store (labels, manifests) and every checkpoint is
recorded as ``rank<TAB>kind<TAB>path`` in ``<out>/writes.log`` (small ``O_APPEND`` writes do not interleave),
and the warnings each rank raised are written to ``<out>/warnings_rank<r>.txt``.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytorch_lightning as pl
import torch
import torch.distributed as dist

WORLD = 2
WRITES = "writes.log"

Scenario = Callable[..., None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def trainer(world: int, root: Path | None = None, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU trainer: DDP over the existing gloo group when ``world > 1``, else one process."""
    from tests.helpers.training import quiet_trainer

    defaults: dict[str, Any] = {
        "devices": world,
        "strategy": "ddp" if world > 1 else "auto",
        "num_sanity_val_steps": 0,
    }
    if root is not None:
        defaults["default_root_dir"] = str(root)
    return quiet_trainer(**{**defaults, **kwargs})


def _log_writes(out: Path, rank: int) -> list[Any]:
    """Patches that record store and checkpoint writes of this rank in ``out/writes.log``."""
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    import usod.labels.store as store_mod

    log = out / WRITES

    def record(kind: str, path: Any) -> None:
        with open(log, "a") as handle:
            handle.write(f"{rank}\t{kind}\t{Path(path).resolve()}\n")

    png, atomic = store_mod.write_label_png, store_mod.atomic_write_bytes
    save_ckpt = TorchCheckpointIO.save_checkpoint

    def png_logged(path: Any, label: Any) -> Path:
        record("label", path)
        return png(path, label)

    def atomic_logged(path: Any, data: bytes) -> Any:
        record("manifest", path)
        return atomic(path, data)

    def ckpt_logged(self: Any, checkpoint: Any, path: Any, storage_options: Any = None) -> None:
        record("checkpoint", path)
        return save_ckpt(self, checkpoint, path, storage_options)

    import usod.handcrafted as handcrafted_mod
    import usod.ops.crf as crf_mod

    return [
        mock.patch.object(store_mod, "write_label_png", png_logged),
        # the CRF module binds the store's function at import (which may come before these patches)
        mock.patch.object(crf_mod, "write_label_png", png_logged),
        mock.patch.object(handcrafted_mod, "write_label_png", png_logged),
        mock.patch.object(store_mod, "atomic_write_bytes", atomic_logged),
        mock.patch.object(TorchCheckpointIO, "save_checkpoint", ckpt_logged),
    ]


def _worker(rank: int, port: int, out: str, scenario: Scenario, kwargs: dict[str, Any]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        WORLD_SIZE=str(WORLD),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)  # the 1-process reference runs with one thread too: same float sums
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=90),
    )
    patches = _log_writes(Path(out), rank)
    try:
        for patch in patches:
            patch.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                scenario(rank=rank, world=WORLD, out=Path(out), **kwargs)
            finally:
                text = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
                (Path(out) / f"warnings_rank{rank}.txt").write_text(text)
    finally:
        for patch in patches:
            patch.stop()
        dist.destroy_process_group()


def run_ddp(scenario: Scenario, out: Path, **kwargs: Any) -> None:
    """Run ``scenario(rank=, world=2, out=, **kwargs)`` on 2 forked gloo ranks; raises if a rank fails."""
    out.mkdir(parents=True, exist_ok=True)
    torch.multiprocessing.start_processes(
        _worker, args=(free_port(), str(out), scenario, kwargs), nprocs=WORLD, join=True, start_method="fork"
    )


def run_single(scenario: Scenario, out: Path, **kwargs: Any) -> None:
    """Run ``scenario(rank=0, world=1, out=, **kwargs)`` in this process, with one thread like the ranks."""
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scenario(rank=0, world=1, out=out, **kwargs)
    finally:
        torch.set_num_threads(threads)


def read_warnings(out: Path) -> list[str]:
    """The warnings raised on the DDP ranks, one line each."""
    return [line for r in range(WORLD) for line in (out / f"warnings_rank{r}.txt").read_text().splitlines()]


def read_writes(out: Path) -> list[tuple[int, str, str]]:
    """``(rank, kind, path)`` of every recorded write of a DDP run."""
    path = out / WRITES
    if not path.exists():
        return []
    return [(int(r), k, p) for r, k, p in (line.split("\t") for line in path.read_text().splitlines())]
