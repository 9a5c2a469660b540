"""Datamodules on every registered dataset's real layout: tensors, no ground truth in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.layouts import NATIVE_WRITERS
from usod.data.datamodules import (
    DATAMODULES,
    RGBDataModule,
    RGBDDataModule,
    SODDataModule,
    VideoDataModule,
    get_datamodule,
)
from usod.data.datasets import DATASETS
from usod.data.transforms import EvalTransform, GPUAugmentation, TrainTransform

EXTRA_KEY = {"rgbd": "depth", "rgbt": "thermal"}


def test_every_dataset_has_a_datamodule() -> None:
    assert set(DATAMODULES) == set(DATASETS)
    for name, cls in DATAMODULES.items():
        assert cls.modality == DATASETS[name].modality


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_datamodule_batches_on_native_layout(name: str, tmp_path) -> None:
    written = NATIVE_WRITERS[name](tmp_path / name)
    dm = get_datamodule(
        name,
        root=written.root,
        split=written.split,
        val_split=written.split,
        image_size=(16, 20),
        batch_size=2,
        num_workers=0,
        **({"with_flow": True} if "flow" in written.extra else {}),
    )
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert "mask" not in train, "training batches must never carry ground truth"
    assert train["image"].shape == (2, 3, 16, 20) and train["image"].dtype == torch.float32
    assert float(train["image"].min()) >= 0.0 and float(train["image"].max()) <= 1.0
    assert train["size"].shape == (2, 2) and train["size"].dtype == torch.long
    assert len(train["id"]) == 2
    modality = DATASETS[name].modality
    if modality in EXTRA_KEY:
        assert train[EXTRA_KEY[modality]].shape == (2, 3, 16, 20)
    if "flow" in written.extra:
        assert train["flow"].shape == (2, 3, 16, 20)
    val = next(iter(dm.val_dataloader()))
    assert val["mask"].shape == (2, 1, 16, 20)
    assert float(val["mask"].max()) <= 1.0


def test_pseudo_labels_are_read_in_training_and_resized(tmp_path) -> None:
    written = NATIVE_WRITERS["folder"](tmp_path / "folder")
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    from PIL import Image

    for i, sample_id in enumerate(written.ids):
        Image.fromarray(np.full((24, 32), 40 * i, np.uint8)).save(pseudo / f"{sample_id}.png")
    dm = RGBDataModule(
        root=written.root, pseudo_dir=pseudo, image_size=8, batch_size=8, num_workers=0, augment=False
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pseudo"].shape[1:] == (1, 8, 8)
    for sample_id, label in zip(batch["id"], batch["pseudo"], strict=True):
        expected = 40 * written.ids.index(sample_id) / 255
        assert torch.allclose(label, torch.full_like(label, expected), atol=1e-6)


def test_modality_mismatch_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="rgbd datasets"):
        RGBDDataModule(dataset="folder", root=tmp_path)
    with pytest.raises(ValueError, match="with_flow"):
        SODDataModule(dataset="folder", root=tmp_path, with_flow=True)
    with pytest.raises(KeyError, match="unknown dataset"):
        SODDataModule(dataset="nope", root=tmp_path)


def test_predict_runs_over_training_images_without_masks(tmp_path) -> None:
    written = NATIVE_WRITERS["davis"](tmp_path / "davis")
    dm = VideoDataModule(dataset="davis", root=written.root, image_size=16, batch_size=4, num_workers=0)
    dm.setup("predict")
    ids = [i for batch in dm.predict_dataloader() for i in batch["id"]]
    assert ids == written.ids
    batch = next(iter(dm.predict_dataloader()))
    assert "mask" not in batch and batch["sequence"][0] in ("bear", "car-turn")


def test_train_transform_moves_labels_with_the_image() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = 255  # left half white
    pseudo = np.zeros((40, 60), np.uint8)
    pseudo[:, :30] = 255
    depth = (pseudo / 255).astype(np.float32)
    sample = {"image": image, "pseudo": pseudo, "depth": depth, "id": "x", "size": (40, 60)}
    transform = TrainTransform((20, 30), scale=(0.3, 1.0), hflip=0.5, color_jitter=0.0)
    for _ in range(10):
        out = transform(dict(sample, image=image.copy()))
        # whatever crop/flip was drawn, image, depth and pseudo stay aligned
        assert torch.allclose(out["image"][0], out["pseudo"][0], atol=0.02)
        assert torch.allclose(out["depth"][0], out["pseudo"][0], atol=0.02)
        assert out["size"].tolist() == [40, 60]
    del rng


def test_eval_transform_resizes_and_keeps_ids() -> None:
    sample = {
        "image": np.zeros((10, 12, 3), np.uint8),
        "mask": np.full((10, 12), 255, np.uint8),
        "id": "a/b",
        "sequence": "a",
        "frame": "b",
        "size": (10, 12),
    }
    out = EvalTransform(6)(sample)
    assert out["image"].shape == (3, 6, 6) and out["mask"].shape == (1, 6, 6)
    assert (out["id"], out["sequence"], out["frame"]) == ("a/b", "a", "b")
    assert torch.all(out["mask"] == 1.0)


def test_gpu_augmentation_keeps_maps_aligned() -> None:
    torch.manual_seed(0)
    image = torch.zeros(4, 3, 16, 16)
    image[..., :8] = 1.0
    batch = {"image": image, "pseudo": image[:, :1].clone(), "id": ["a", "b", "c", "d"]}
    out = GPUAugmentation(hflip=1.0, crop_scale=(0.5, 1.0), color_jitter=0.0)(batch)
    assert out["image"].shape == (4, 3, 16, 16) and out["pseudo"].shape == (4, 1, 16, 16)
    assert torch.allclose(out["image"][:, :1], out["pseudo"], atol=1e-5)
    assert not torch.allclose(out["image"], image)  # flipped with p=1
    assert out["id"] == batch["id"]


def test_training_images_without_masks_train_without_validation(tmp_path) -> None:
    import shutil

    from usod.data.datamodules import get_datamodule
    from usod.data.io import NoMasksError
    from usod.data.synth import write_dataset

    root = write_dataset(tmp_path / "d", "rgb", 3, size=(32, 32))
    shutil.rmtree(root / "masks")
    dm = get_datamodule("folder", root=root, image_size=32, num_workers=0, batch_size=2)
    with pytest.warns(UserWarning, match="no validation: .* has no ground-truth masks"):
        dm.setup("fit")
    assert len(dm.train_set) == 3 and dm.val_dataloader() == []
    with pytest.raises(NoMasksError):  # validating or testing without ground truth stays an error
        dm.setup("validate")
