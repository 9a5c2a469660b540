"""Fixed training shards under DDP: the sampler, and the rank's caches (CueExtractor features, decoded
images) holding only its shard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch.distributed as dist

from tests.helpers.models import TINY
from usod.data.datamodules import RGBDataModule
from usod.data.datamodules.base import FixedShardSampler
from usod.data.synth import write_dataset

from ._harness import run_ddp, trainer

N_IMAGES = 5


@pytest.mark.parametrize("size,world", [(5, 2), (8, 4), (7, 3), (3, 3)])
def test_shards_are_fixed_disjoint_and_even(size: int, world: int) -> None:
    data = list(range(size))
    samplers = [FixedShardSampler(data, world, rank, seed=1) for rank in range(world)]
    epochs = []
    for epoch in range(3):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        epochs.append([list(sampler) for sampler in samplers])
    lengths = {len(order) for orders in epochs for order in orders}
    assert lengths == {-(-size // world)} == {len(s) for s in samplers}  # every rank makes as many steps
    for orders in epochs:
        shards = [set(order) for order in orders]
        assert set().union(*shards) == set(data)
        assert sum(len(s) for s in shards) == size  # disjoint (padding repeats a rank's own sample)
        assert shards == [set(range(rank, size, world)) for rank in range(world)]  # the same every epoch
    if size // world > 2:
        assert epochs[0] != epochs[1]  # a new order within the shard each epoch


def test_more_ranks_than_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 samples cannot be sharded over 3 ranks"):
        FixedShardSampler([0, 1], 3, 0)


class CacheLog(pl.Callback):
    """Writes the ids in the rank's feature cache after every training epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.epochs: list[list[str]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        features = sorted({key[0] for key in module.feature_cache._entries})
        train_set = trainer.datamodule.train_set  # a CachedDataset (cache_images=True)
        images = sorted(train_set.dataset.ids[i] for i in train_set._cache)
        self.epochs.append({"features": features, "images": images})
        self.path.write_text(json.dumps(self.epochs))


def cache_scenario(rank: int, world: int, out: Path, *, data: Path) -> None:
    from usod.models.cue_extractor import CueExtractor

    module = CueExtractor(backbone=TINY, head_channels=8, lr_milestones=(), feature_cache=True)
    assert module.fixed_train_shards
    dm = RGBDataModule(
        dataset="folder",
        root=str(data),
        image_size=64,
        batch_size=1,
        num_workers=0,
        augment=False,
        cache_images=True,
    )
    trainer(world, max_epochs=3, callbacks=[CacheLog(out / f"cache_rank{rank}.json")]).fit(
        module, datamodule=dm
    )


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_feature_cache_holds_only_the_ranks_shard(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "rgb", "rgb", N_IMAGES, size=(40, 48))
    run_ddp(cache_scenario, tmp_path / "ddp", data=data)
    ids = sorted(p.stem for p in (data / "images").iterdir())
    caches = [json.loads((tmp_path / "ddp" / f"cache_rank{r}.json").read_text()) for r in range(2)]
    for rank, epochs in enumerate(caches):
        assert len(epochs) == 3
        assert epochs[0] == epochs[1] == epochs[2], rank  # filled in epoch 1, only hits afterwards
        # the frozen-encoder features and the decoded images (cache_images): the rank's shard only
        assert epochs[0] == {"features": ids[rank::2], "images": ids[rank::2]}, rank
