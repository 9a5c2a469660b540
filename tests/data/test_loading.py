"""Data loading for a busy GPU: the decoded-image cache, pinned memory, prefetching, GPU augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from tests.helpers.layouts import NATIVE_WRITERS
from usod.data.cache import CachedDataset
from usod.data.datamodules import RGBDataModule, RGBDDataModule


def assert_same_samples(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype, key
            assert torch.equal(a[key], b[key]), key  # bit-identical, not just close
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("num_workers", [0, 1])
def test_cached_samples_equal_uncached(tmp_path, num_workers: int) -> None:
    written = NATIVE_WRITERS["nju2k"](tmp_path / "nju2k")  # image + depth + mask
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    rng = np.random.default_rng(0)
    for sample_id in written.ids:  # soft labels, resized to a size they do not divide
        Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8)).save(pseudo / f"{sample_id}.png")
    kwargs = dict(root=written.root, split=written.split, val_split=written.split, image_size=(13, 17))
    kwargs |= dict(dataset="nju2k", pseudo_dir=pseudo, augment=False, num_workers=num_workers)
    plain = RGBDDataModule(**kwargs)
    cached = RGBDDataModule(**kwargs, cache_images=True)
    plain.setup("fit")
    cached.setup("fit")
    for split in ("train_set", "val_set"):
        a, b = getattr(plain, split), getattr(cached, split)
        assert isinstance(b, CachedDataset) and len(b) == len(a) > 0
        assert b.num_cached == (len(b) if split == "train_set" else 0)  # validation fills lazily
        for i in range(len(a)):
            assert_same_samples(b[i], a[i])
            assert_same_samples(b[i], a[i])  # a second read from the cache too
        assert b.num_cached == len(b)
    # image and mask are held as uint8 (exact); depth (normalised from 16 bits here) stays float32
    per_sample = 3 * 13 * 17 + 13 * 17 + 3 * 13 * 17 * 4 + 2 * 8
    assert cached.val_set.nbytes == per_sample * len(cached.val_set)
    # attributes of the wrapped dataset (ids for the label writer) pass through
    assert cached.train_set.ids == plain.train_set.ids
    batch = next(iter(cached.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 13, 17) and "mask" not in batch


def test_cache_skips_random_training_transforms_with_a_warning(tmp_path) -> None:
    written = NATIVE_WRITERS["folder"](tmp_path / "folder")
    dm = RGBDataModule(root=written.root, image_size=8, num_workers=0, augment=True, cache_images=True)
    with pytest.warns(UserWarning, match="not cached because its transform is random"):
        dm.setup("fit")
    assert not isinstance(dm.train_set, CachedDataset) and isinstance(dm.val_set, CachedDataset)
    gpu = RGBDataModule(root=written.root, image_size=8, num_workers=0, gpu_augment=True, cache_images=True)
    gpu.setup("fit")  # workers only resize: cacheable, augmentation happens after transfer
    assert isinstance(gpu.train_set, CachedDataset)


def test_cached_dataset_needs_dict_samples() -> None:
    with pytest.raises(TypeError, match="dict samples"):
        CachedDataset([torch.zeros(2)])[0]


def test_loader_options(tmp_path) -> None:
    written = NATIVE_WRITERS["folder"](tmp_path / "folder")
    dm = RGBDataModule(root=written.root, image_size=8, num_workers=1, prefetch_factor=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.prefetch_factor == 4 and loader.persistent_workers
    assert not loader.pin_memory  # auto: no trainer on a GPU
    dm.trainer = pl.Trainer(accelerator="cpu", logger=False)
    assert not dm.train_dataloader().pin_memory
    assert RGBDataModule(root=written.root, pin_memory=True, num_workers=0).use_pin_memory()
    with pytest.raises(ValueError, match="prefetch_factor"):
        RGBDataModule(root=written.root, prefetch_factor=0)


class _Batches(pl.LightningModule):
    """Records the training batches it receives (after the datamodule's on_after_batch_transfer)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[dict] = []

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.seen.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        return (self.weight * batch["image"].mean()).sum()

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_gpu_augmentation_runs_after_transfer_in_training(tmp_path) -> None:
    written = NATIVE_WRITERS["folder"](tmp_path / "folder")
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    for sample_id in written.ids:
        label = np.zeros((24, 32), np.uint8)
        label[:, :16] = 255  # left half: a horizontal flip moves it
        Image.fromarray(label).save(pseudo / f"{sample_id}.png")
    kwargs = dict(root=written.root, pseudo_dir=pseudo, image_size=16, batch_size=4, num_workers=0, seed=0)
    plain = RGBDataModule(**kwargs, augment=False)
    plain.setup("fit")
    raw = next(iter(plain.train_dataloader()))
    torch.manual_seed(3)
    dm = RGBDataModule(**kwargs, gpu_augment=True, cache_images=True)
    module = _Batches()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    (seen,) = module.seen
    assert seen["id"] == raw["id"]
    assert seen["image"].shape == raw["image"].shape
    assert not torch.equal(seen["pseudo"], raw["pseudo"])  # augmented on the device side
    # the workers only resized: same input as the plain datamodule, augmentation came after the transfer
    assert torch.equal(dm.train_set[0]["image"], plain.train_set[0]["image"])
