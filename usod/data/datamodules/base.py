"""The shared LightningDataModule behind every registered dataset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from usod.data.cache import CachedDataset
from usod.data.datasets import get_dataset, get_dataset_class
from usod.data.io import NoMasksError, SettingsError
from usod.data.transforms import (
    DEFAULT_IMAGE_SIZE,
    EvalTransform,
    GPUAugmentation,
    TrainTransform,
    check_image_size,
)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from torch's per-worker seed.

    Albumentations draws from numpy/``random``; without this, forked workers would repeat the parent's
    random stream and every worker would apply the same augmentations.
    """
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class FixedShardSampler(DistributedSampler):
    """A training sampler for DDP in which every rank trains on the same shard of the data every epoch.

    Rank ``r`` of ``R`` owns the samples ``r, r + R, r + 2R, ...`` for the whole run and visits them in a
    new random order each epoch (``seed + epoch``); a rank with one sample fewer repeats one of its own, so
    all ranks make the same number of steps. Each step still averages gradients over all ranks, i.e. over
    samples from every shard.

    Lightning's default, a ``DistributedSampler`` reshuffled over the whole set each epoch, hands every rank
    different samples each epoch. Per-sample caches on the ranks (the frozen-encoder feature cache of
    :class:`~usod.models.cue_extractor.CueExtractor`) then miss most of the time from the second epoch on
    (with 8 ranks, 7 in 8 samples are new to a rank) and end up holding the whole set on every rank. With
    fixed shards each rank caches ``1/R`` of the set and hits on every sample after the first epoch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        size = len(dataset)  # type: ignore[arg-type]
        if size < num_replicas:
            raise ValueError(f"{size} samples cannot be sharded over {num_replicas} ranks")
        self.shard = list(range(rank, size, num_replicas))
        self.num_samples = -(-size // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self):  # noqa: ANN204 - an iterator of indices, as DistributedSampler's
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = [self.shard[i] for i in torch.randperm(len(self.shard), generator=generator).tolist()]
        order += order[: self.num_samples - len(order)]
        return iter(order)

    def __len__(self) -> int:
        return self.num_samples


class SODDataModule(pl.LightningDataModule):
    """Data for unsupervised SOD: unlabelled training images, labelled evaluation images.

    Works with every registered dataset; the family subclasses (:class:`RGBDataModule`, ...) only add a check
    that the dataset belongs to their modality, so that a config says what it feeds the model.

    The training split never reads ground truth: it yields ``image`` (plus the auxiliary modalities) and,
    when a pseudo-label directory is attached, ``pseudo``. Validation and test splits read ``mask``.
    Prediction runs over the training images by default (that is how pseudo labels are written).
    Under DDP, validation and test give each sample to exactly one rank (no padded repeats), so the metrics,
    synchronised through their states, equal a single-process run; training uses Lightning's reshuffled
    ``DistributedSampler``, or a :class:`FixedShardSampler` when the LightningModule asks for fixed shards
    (``fixed_train_shards``, e.g. a ``CueExtractor`` that caches its encoder features).

    Args:
        dataset: registered dataset name for training (see ``usod list datasets``).
        root: dataset root folder.
        split: training split name (``None``: the dataset's default).
        val_dataset: dataset name for validation/test (default: ``dataset``).
        val_root: root for validation/test (default: ``root``; evaluating on the training images is the usual
            way to measure pseudo-label quality in USOD).
        val_split: validation/test split name.
        predict_on: which images ``predict`` runs on: ``"train"`` or ``"val"``.
        pseudo_dir: folder of pseudo labels (``<id>.png``) read as ``pseudo`` in training.
        image_size: model input size, an int or ``(height, width)``.
        batch_size: batch size for every stage.
        num_workers: DataLoader workers (kept alive between epochs).
        pin_memory: pin host memory, so that host-to-GPU copies run asynchronously; ``None`` (default) pins
            when the trainer runs on a CUDA GPU.
        prefetch_factor: batches each worker loads ahead (``None``: PyTorch's default, 2); raise it when a
            fast GPU waits on irregular decode times.
        cache_images: keep decoded, resized samples in memory (see :class:`~usod.data.cache.CachedDataset`):
            the validation/test set always (filled as it is read, by each persistent worker for its
            share), the training set when its transform is deterministic (``augment=False`` or
            ``gpu_augment=True``; otherwise a warning says it is not cached), filled in :meth:`setup` with
            ``num_workers`` processes (under DDP with fixed training shards, only the rank's shard). The
            cache holds what was read then: pseudo labels written later need a new :meth:`setup`.
        augment: random resized crop, flip and colour jitter in training; ``False`` gives resize only
            (required by frozen-encoder feature caching).
        crop_scale: area range of the random resized crop.
        with_flow: add optical flow for video datasets.
        flow_source: where flow comes from with ``with_flow``: ``"auto"`` (default: the dataset's flow images
            where a sequence has them, else computed once with OpenCV and cached), ``"files"`` (only the
            dataset's, an error when missing) or ``"compute"`` (see ``VideoDataset``).
        flow_cache: cache folder of computed flow (default ``<root>/.usod_flow``, or a user cache folder when
            the root is read-only).
        flow_method: ``"dis"`` or ``"farneback"`` for computed flow.
        skip_invalid: leave out samples with a missing or undecodable file instead of raising (every file is
            decoded once at setup to find them).
        gpu_augment: augment training batches with kornia on the device (after transfer) instead of with
            albumentations in the workers; the workers then only resize.
        seed: seed of the training shuffle.
    """

    #: Modality every dataset of this datamodule must have (``None``: any).
    modality: str | None = None

    def __init__(
        self,
        dataset: str = "folder",
        root: str | Path = "data/synth/rgb",
        split: str | None = None,
        val_dataset: str | None = None,
        val_root: str | Path | None = None,
        val_split: str | None = None,
        predict_on: str = "train",
        pseudo_dir: str | Path | None = None,
        image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
        batch_size: int = 8,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        augment: bool = True,
        crop_scale: Sequence[float] = (0.6, 1.0),
        with_flow: bool = False,
        skip_invalid: bool = False,
        gpu_augment: bool = False,
        seed: int = 0,
        flow_source: str = "auto",
        flow_cache: str | Path | None = None,
        flow_method: str = "dis",
        prefetch_factor: int | None = None,
        cache_images: bool = False,
    ) -> None:
        super().__init__()
        for name in (dataset, val_dataset or dataset):
            found = get_dataset_class(name).modality
            if self.modality is not None and found != self.modality:
                raise ValueError(
                    f"{type(self).__name__} takes {self.modality} datasets, but {name!r} is {found}; "
                    "use SODDataModule or the datamodule of that modality"
                )
            if with_flow and found != "video":
                raise ValueError(f"with_flow=True needs a video dataset, but {name!r} is {found}")
        if prefetch_factor is not None and prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
        if predict_on not in ("train", "val"):
            raise ValueError(f"predict_on must be 'train' or 'val', got {predict_on!r}")
        # Plain strings in the saved hyper-parameters keep checkpoints loadable with weights_only=True.
        root, val_root, pseudo_dir, flow_cache = (
            None if p is None else str(p) for p in (root, val_root, pseudo_dir, flow_cache)
        )
        self.save_hyperparameters()
        check_image_size("image_size", image_size)
        for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SettingsError(f"{name} must be an integer >= {low}, got {value!r}")
        self.dataset_name = dataset
        self.root = Path(root)
        self.split = split
        self.val_dataset_name = val_dataset or dataset
        self.val_root = Path(val_root) if val_root is not None else self.root
        self.val_split = val_split
        self.predict_on = predict_on
        self.pseudo_dir = Path(pseudo_dir) if pseudo_dir is not None else None
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.cache_images = cache_images
        self.augment = augment
        self.crop_scale = tuple(crop_scale)
        self.with_flow = with_flow
        self.flow_source = flow_source
        self.flow_cache = flow_cache
        self.flow_method = flow_method
        self.skip_invalid = skip_invalid
        self.gpu_augment = GPUAugmentation(crop_scale=self.crop_scale) if (gpu_augment and augment) else None
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.predict_set: Dataset | None = None

    # -- datasets -------------------------------------------------------------------------------------------
    def _extra_kwargs(self) -> dict[str, Any]:
        if not self.with_flow:
            return {}
        return {
            "with_flow": True,
            "flow_source": self.flow_source,
            "flow_cache": self.flow_cache,
            "flow_method": self.flow_method,
        }

    def train_transform(self) -> TrainTransform:
        if not self.augment or self.gpu_augment is not None:
            return TrainTransform(self.image_size, scale=(1.0, 1.0), hflip=0.0, color_jitter=0.0)
        return TrainTransform(self.image_size, scale=self.crop_scale)

    def build_train_set(self, pseudo_dir: Path | None = None, transform: Any = None) -> Dataset:
        """The training images (never ground truth), with pseudo labels when a directory is attached."""
        return get_dataset(
            self.dataset_name,
            root=self.root,
            split=self.split,
            with_masks=False,
            pseudo_dir=pseudo_dir,
            transform=transform if transform is not None else self.train_transform(),
            skip_invalid=self.skip_invalid,
            **self._extra_kwargs(),
        )

    def build_eval_set(self, with_masks: bool = True) -> Dataset:
        """The validation/test images, with ground-truth masks."""
        return get_dataset(
            self.val_dataset_name,
            root=self.val_root,
            split=self.val_split,
            with_masks=with_masks,
            transform=EvalTransform(self.image_size),
            skip_invalid=self.skip_invalid,
            **self._extra_kwargs(),
        )

    def train_transform_is_deterministic(self) -> bool:
        """Whether the training samples are the same every epoch (the precondition of caching them)."""
        return not self.augment or self.gpu_augment is not None

    def _cached(self, dataset: Dataset, deterministic: bool = True, fill: bool = True) -> Dataset:
        if not self.cache_images:
            return dataset
        if not deterministic:
            rank_zero_warn(
                "cache_images=True: the training set is not cached because its transform is random "
                "(set augment=False, or gpu_augment=True to augment on the device instead)"
            )
            return dataset
        cached = CachedDataset(dataset)
        if not fill:
            return cached
        shard = self._fixed_shard(len(dataset))  # type: ignore[arg-type]
        indices = None if shard is None else range(shard[0], len(dataset), shard[1])  # type: ignore[arg-type]
        return cached.fill(self.num_workers, indices)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_set = self._cached(
                self.build_train_set(self.pseudo_dir), self.train_transform_is_deterministic()
            )
        if stage in (None, "fit", "validate", "test"):
            # filled lazily: an unshuffled loader sends each persistent worker the same batches every epoch,
            # so each worker caches its share, and runs without validation decode nothing
            try:
                self.val_set = self._cached(self.build_eval_set(), fill=False)
            except NoMasksError as err:
                if stage != "fit":
                    raise
                # unsupervised training needs no ground truth: train on unlabelled images, skip validation
                rank_zero_warn(
                    f"no validation: {err.path} has no ground-truth masks ({err.problem.split(';')[0]})"
                )
                self.val_set = None
        if stage in (None, "predict"):
            if self.predict_on == "train":
                self.predict_set = self.build_train_set(None, transform=EvalTransform(self.image_size))
            else:
                self.predict_set = self.build_eval_set(with_masks=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if self.gpu_augment is not None and trainer is not None and trainer.training:
            batch = self.gpu_augment(batch)
        return batch

    # -- loaders --------------------------------------------------------------------------------------------
    def _evaluation_sampler(self, dataset: Dataset) -> Sampler | None:
        """Under DDP, a sampler that gives every evaluation sample to exactly one rank (no padding).

        Lightning's default for validation and test, a ``DistributedSampler``, pads the split with repeated
        samples to a multiple of the world size, which counts those samples twice in the metrics. This one
        splits the samples without repeats (ranks differ by at most one batch), so metrics synchronised
        through their states equal a single-process run. Only used when every rank gets at least one sample
        and Lightning's ``use_distributed_sampler`` is on; otherwise Lightning's default applies.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        connector = getattr(trainer, "_accelerator_connector", None)
        if not getattr(connector, "use_distributed_sampler", True):
            return None
        if len(dataset) < trainer.world_size:  # type: ignore[arg-type]
            return None
        from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

        return UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    def _fixed_shard(self, size: int) -> tuple[int, int] | None:
        """``(rank, world_size)`` when training runs on fixed shards (DDP, Lightning's distributed sampling
        on, a module with ``fixed_train_shards``, at least one sample per rank); else ``None``."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1 or size < trainer.world_size:
            return None
        connector = getattr(trainer, "_accelerator_connector", None)
        if not getattr(connector, "use_distributed_sampler", True):
            return None
        if not getattr(getattr(trainer, "lightning_module", None), "fixed_train_shards", False):
            return None
        return trainer.global_rank, trainer.world_size

    def _training_sampler(self, dataset: Dataset) -> Sampler | None:
        """Under DDP, a :class:`FixedShardSampler` when the module asks for fixed shards; else ``None``."""
        shard = self._fixed_shard(len(dataset))  # type: ignore[arg-type]
        if shard is None:
            return None
        return FixedShardSampler(dataset, shard[1], shard[0], seed=self.seed)

    def use_pin_memory(self) -> bool:
        """``pin_memory``, with ``None`` resolved: pin when the trainer runs on a CUDA GPU."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        trainer = self.trainer
        root_device = getattr(getattr(trainer, "strategy", None), "root_device", None)
        return root_device is not None and root_device.type == "cuda"

    def _loader(self, dataset: Dataset | None, shuffle: bool, evaluation: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() has not built this split yet")
        sampler = self._evaluation_sampler(dataset) if evaluation else None
        if shuffle and (sampler := self._training_sampler(dataset)) is not None:
            shuffle = False  # the sampler shuffles within its shard
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        extra = {"prefetch_factor": self.prefetch_factor} if self.num_workers > 0 else {}
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.use_pin_memory(),
            persistent_workers=self.num_workers > 0,
            **extra,
            worker_init_fn=seed_worker,
            generator=generator,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation loader; none (validation skipped) when the validation images have no masks."""
        if self.val_set is None:
            return []
        return self._loader(self.val_set, shuffle=False, evaluation=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False, evaluation=True)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, shuffle=False)
