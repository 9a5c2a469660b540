"""SOD metrics under DDP: 2 gloo processes on the CPU give exactly what 1 process gives."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from usod.metrics import MAE, EMeasure, FMeasure, SMeasure, SODMetrics, WeightedFMeasure

from ._reference import blob_mask, make_prediction

WORLD = 2
# uneven on purpose: rank 0 scores 5 images in batches of 2, rank 1 scores 4 one by one
SPLITS = {0: [[0, 1], [2, 3], [4]], 1: [[5], [6], [7], [8]]}


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(42)
    gts = np.stack([blob_mask(rng, 26, 34) for _ in range(9)])
    gts[3] = 0  # an empty GT in the mix
    kinds = ("random", "blur", "noisy", "narrow", "binary")
    preds = np.stack([make_prediction(rng, g, kinds[i % 5]) for i, g in enumerate(gts)])
    return torch.from_numpy(preds)[:, None], torch.from_numpy(gts)[:, None]


def _metrics() -> dict[str, torch.nn.Module]:
    return {
        "all": SODMetrics(),
        "mae": MAE(),
        "f": FMeasure(),
        "e": EMeasure(),
        "s": SMeasure(),
        "w": WeightedFMeasure(),
    }


def _results(metrics: dict) -> dict[str, object]:
    out = {name: metric.compute() for name, metric in metrics.items()}
    out["curves_all"] = metrics["all"].curves()
    out["curves_f"] = metrics["f"].curves()
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        preds, gts = _data()
        metrics = _metrics()
        for batch in SPLITS[rank]:
            for metric in metrics.values():
                metric.update(preds[batch], gts[batch])
        torch.save(_results(metrics), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_equal(a: object, b: object, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    else:
        assert torch.equal(a, b), (where, a, b)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_processes_equal_one(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    preds, gts = _data()
    single = _metrics()
    for i in range(preds.shape[0]):
        for metric in single.values():
            metric.update(preds[i : i + 1], gts[i : i + 1])
    expected = _results(single)
    assert int(expected["all"]["n"]) == 9
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        _assert_equal(got, expected, f"rank{rank}")
