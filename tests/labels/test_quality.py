"""Pseudo-label quality: scores of label rounds against ground truth, also split over DDP ranks."""

from __future__ import annotations

import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from usod.data.synth import write_dataset
from usod.evaluation import score_labels
from usod.labels.quality import PseudoLabelQuality
from usod.metrics import SODMetrics


def _labels_and_masks(folder: Path, n: int = 5) -> dict[str, np.ndarray]:
    """Random half-resolution labels for ``n`` blob masks written to ``folder`` as ``s<i>.png``."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for i in range(n):
        mask = np.zeros((30, 40), np.uint8)
        mask[5 + i : 20, 8 + i : 30] = 255
        cv2.imwrite(str(folder / f"s{i}.png"), mask)
        labels[f"s{i}"] = rng.integers(0, 256, size=(15, 20), dtype=np.uint8)
    return labels


class _Module:
    """What the callback reads from a module with label updates."""

    device = torch.device("cpu")
    trainer = None

    def __init__(self, labels: dict[str, np.ndarray]) -> None:
        self.labels = labels
        self.label_listeners: list = []
        self.logged: dict[str, float] = {}

    def export_labels(self, original_size: bool = False) -> dict[str, np.ndarray]:
        return self.labels

    def log(self, key: str, value: float, **kwargs) -> None:
        # every rank holds the synchronised scores: logged as such, without Lightning's sync warning
        assert kwargs == {"sync_dist": True, "reduce_fx": "max"}, key
        self.logged[key] = value


def test_label_quality_scores_labels_like_the_metrics(tmp_path: Path) -> None:
    """The callback's scores equal SODMetrics on the same labels resized to the masks' size."""
    masks_dir = tmp_path / "masks"
    labels = _labels_and_masks(masks_dir)
    expected = SODMetrics()
    for sid, label in labels.items():
        mask = cv2.imread(str(masks_dir / f"{sid}.png"), cv2.IMREAD_GRAYSCALE)
        up = cv2.resize(label, (40, 30), interpolation=cv2.INTER_LINEAR)
        expected.update(torch.from_numpy(up)[None], torch.from_numpy(mask)[None])
    want = expected.compute()
    got = score_labels(labels, {s: masks_dir / f"{s}.png" for s in labels}).compute()
    assert all(float(got[k]) == pytest.approx(float(want[k])) for k in want)

    callback = PseudoLabelQuality(masks=masks_dir, weighted_f=True)
    module = _Module(labels)
    callback.setup(None, module, "fit")  # type: ignore[arg-type]
    assert module.label_listeners == [callback.score]
    assert callback.score(module, 3, []) is None  # no update, nothing scored
    entry = module.label_listeners[0](module, 3, ["s0"])
    assert entry["epoch"] == 3 and module.logged["label_epoch"] == 3.0
    assert module.logged["label_max_f"] == pytest.approx(float(want["max_f"]))
    assert module.logged["label_w_f"] == pytest.approx(float(want["w_f"]))
    with pytest.raises(FileNotFoundError, match="mask folder not found"):
        PseudoLabelQuality(masks=tmp_path / "nope").setup(None, _Module({}), "fit")  # type: ignore[arg-type]
    # a module without label updates is left alone
    plain = PseudoLabelQuality(masks=masks_dir)
    plain.setup(None, object(), "fit")  # type: ignore[arg-type]
    assert plain.masks is None


def test_training_masks_only_when_the_training_images_have_ground_truth(tmp_path: Path) -> None:
    import shutil

    from usod.data.datamodules import RGBDataModule
    from usod.labels.quality import training_masks

    root = write_dataset(tmp_path / "data", "rgb", 3, size=(32, 32))
    masks = training_masks(RGBDataModule(dataset="folder", root=root))
    assert masks is not None and sorted(masks) == ["synth_00000", "synth_00001", "synth_00002"]
    assert all(p.parent.name == "masks" for p in masks.values())
    shutil.rmtree(root / "masks")
    assert training_masks(RGBDataModule(dataset="folder", root=root)) is None
    assert training_masks(object()) is None


WORLD = 2


def _worker(rank: int, port: int, folder: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        labels = _labels_and_masks(Path(folder) / f"rank{rank}")  # the same labels on every rank
        callback = PseudoLabelQuality(masks=Path(folder) / f"rank{rank}", weighted_f=True)
        module = _Module(labels)
        callback.setup(None, module, "fit")  # type: ignore[arg-type]
        entry = module.label_listeners[0](module, 1, sorted(labels))
        torch.save(entry, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_label_quality_under_ddp_equals_one_process(tmp_path: Path) -> None:
    """Each rank scores half of the ids; the summed states give every rank the single-process scores."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path), str(tmp_path)), nprocs=WORLD, join=True)
    single = _Module(_labels_and_masks(tmp_path / "single"))
    callback = PseudoLabelQuality(masks=tmp_path / "single", weighted_f=True)
    callback.setup(None, single, "fit")  # type: ignore[arg-type]
    want = callback.score(single, 1, ["s0"])
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got == pytest.approx(want)
