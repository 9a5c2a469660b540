"""The datamodules' evaluation sampler under DDP: every validation/test sample on exactly one rank."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from usod.data.datamodules import RGBDataModule
from usod.data.synth import write_dataset


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory: pytest.TempPathFactory) -> RGBDataModule:
    root = write_dataset(tmp_path_factory.mktemp("sampler") / "rgb", "rgb", 5, size=(32, 32))
    dm = RGBDataModule(dataset="folder", root=str(root), image_size=16, batch_size=2, num_workers=0)
    dm.setup("validate")
    return dm


def _attach(dm: RGBDataModule, world: int, rank: int, use_distributed_sampler: bool = True) -> None:
    connector = SimpleNamespace(use_distributed_sampler=use_distributed_sampler)
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, _accelerator_connector=connector)


def _ids(loader) -> list[str]:
    return [sample_id for batch in loader for sample_id in batch["id"]]


def test_each_sample_on_one_rank_without_padding(datamodule: RGBDataModule) -> None:
    everything = datamodule.val_set.ids
    per_rank = []
    for rank in range(2):
        _attach(datamodule, 2, rank)
        assert _ids(datamodule.test_dataloader()) == _ids(datamodule.val_dataloader())
        per_rank.append(_ids(datamodule.val_dataloader()))
    assert [len(ids) for ids in per_rank] == [3, 2]  # uneven, nothing repeated
    assert sorted(per_rank[0] + per_rank[1]) == sorted(everything)
    # training keeps Lightning's padded DistributedSampler (DDP needs equal step counts there)
    _attach(datamodule, 2, 0)
    datamodule.train_set = datamodule.val_set
    assert datamodule.train_dataloader().sampler.__class__.__name__ == "RandomSampler"
    # ... unless the module asks for fixed shards (a CueExtractor with its feature cache)
    datamodule.trainer.lightning_module = SimpleNamespace(fixed_train_shards=True)
    sampler = datamodule.train_dataloader().sampler
    assert sampler.__class__.__name__ == "FixedShardSampler" and sampler.shard == [0, 2, 4]


@pytest.mark.parametrize(
    ("world", "use_distributed_sampler"), [(1, True), (2, False), (6, True)], ids=["1-rank", "off", "n<world"]
)
def test_lightning_default_otherwise(
    datamodule: RGBDataModule, world: int, use_distributed_sampler: bool
) -> None:
    _attach(datamodule, world, 0, use_distributed_sampler)
    assert datamodule.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"
