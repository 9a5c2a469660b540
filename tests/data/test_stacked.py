"""``StackedLabelDataModule``: the images with one map per label folder stacked as ``pseudo``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from usod.data.datamodules import StackedLabelDataModule, StackedLabels
from usod.data.synth import write_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("stacked") / "data", "rgb", 6, size=(48, 56))


def test_stacked_labels(synth: Path, tmp_path: Path) -> None:
    ids = sorted(p.stem for p in (synth / "images").iterdir())
    dirs = []
    for k, value in enumerate((40, 200)):
        folder = tmp_path / f"r{k}"
        folder.mkdir()
        for sid in ids:
            cv2.imwrite(str(folder / f"{sid}.png"), np.full((48, 56), value, np.uint8))
        dirs.append(folder)
    dm = StackedLabelDataModule(label_dirs=dirs, root=synth, image_size=32, batch_size=2, num_workers=0)
    dm.setup("fit")
    assert isinstance(dm.train_set, StackedLabels)
    sample = dm.train_set[0]
    assert sample["pseudo"].shape == (2, 32, 32) and "mask" not in sample
    assert torch.allclose(sample["pseudo"][0], torch.tensor(40 / 255))
    assert torch.allclose(sample["pseudo"][1], torch.tensor(200 / 255))
    assert dm.train_set.files == dm.train_set.base.files
    with pytest.raises(ValueError, match="augment"):
        StackedLabelDataModule(label_dirs=dirs, root=synth, augment=True)
