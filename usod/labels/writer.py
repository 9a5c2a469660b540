"""Writing pseudo labels through Lightning's prediction loop, and resuming interrupted rounds.

``Trainer.predict`` uses an unrepeated distributed sampler, so under DDP each sample is predicted exactly once
across ranks; :class:`PseudoLabelWriter` writes each rank's predictions straight into a
:class:`~usod.labels.store.PseudoLabelStore` round. To resume an interrupted round, predict on
``remaining(dataset, store, round_name)`` instead of ``dataset``: finished samples are skipped and their files
are left untouched.

The model's ``predict_step`` must return a dict with:

* ``saliency``: Bx1xhxw float tensor in [0, 1] (at the network's resolution);
* ``id``: list of B sample ids, and ``size``: Bx2 original (H, W) -- both are taken from the batch when the
  prediction does not carry them;
* optionally ``image_path`` (list of B paths) or ``image`` (Bx3xhxw float in [0, 1], or a list of HxWx3 uint8
  arrays), used only by a ``postprocess`` callable such as ``functools.partial(usod.ops.postprocess,
  config=...)``. Without them the writer reads each sample's original image from the predict dataset's
  ``files`` (every usod dataset has them), else resizes the batch's ``image`` back to the original size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import Dataset, Subset

from usod.data.io import imread_cv2, read_image
from usod.labels.store import PseudoLabelStore

log = logging.getLogger(__name__)

PostProcessFn = Callable[[np.ndarray | None, np.ndarray], np.ndarray]


def dataset_ids(dataset: Dataset) -> list[str]:
    """Sample ids of a dataset, in index order.

    Uses the dataset's ``ids`` attribute (list[str], one per index) when present; a
    :class:`torch.utils.data.Subset` maps its indices through its parent's ids. Otherwise falls back to
    ``dataset[i]["id"]``, which loads every sample and is slow: give datasets an ``ids`` attribute.

    Args:
        dataset: A map-style dataset.

    Returns:
        The ids, ``len(dataset)`` of them.
    """
    ids = getattr(dataset, "ids", None)
    if ids is not None:
        ids = list(ids)
        if len(ids) != len(dataset):
            raise ValueError(
                f"{type(dataset).__name__}.ids has {len(ids)} entries but the dataset has {len(dataset)}"
            )
        return [str(i) for i in ids]
    if isinstance(dataset, Subset):
        parent = dataset_ids(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    log.warning("%s has no 'ids' attribute; loading every sample to read its id", type(dataset).__name__)
    return [str(dataset[i]["id"]) for i in range(len(dataset))]


class IdSubset(Subset):
    """A :class:`~torch.utils.data.Subset` that knows its own ids and the full dataset's ids.

    Attributes:
        ids: Ids of the samples in this subset, in order.
        all_ids: Ids of the whole parent dataset (what a resumed round must contain in the end).
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], all_ids: list[str]) -> None:
        super().__init__(dataset, list(indices))
        self.all_ids = all_ids
        self.ids = [all_ids[i] for i in self.indices]


def exclude_ids(dataset: Dataset, ids: Iterable[str]) -> IdSubset:
    """The samples of ``dataset`` whose id is not in ``ids`` (order kept)."""
    skip = set(ids)
    all_ids = dataset_ids(dataset)
    keep = [i for i, sample_id in enumerate(all_ids) if sample_id not in skip]
    return IdSubset(dataset, keep, all_ids)


def remaining(dataset: Dataset, store: PseudoLabelStore, round_name: str) -> IdSubset:
    """The samples of ``dataset`` that have no label yet in ``round_name`` (for resuming a round).

    Args:
        dataset: Map-style dataset, ideally with an ``ids`` attribute (see :func:`dataset_ids`).
        store: The pseudo-label store.
        round_name: The round being produced.

    Returns:
        An :class:`IdSubset`; its ``all_ids`` still lists the whole dataset so that
        :class:`PseudoLabelWriter` checks the complete round against every sample.
    """
    return exclude_ids(dataset, store.finished_ids(round_name))


def _image_for(prediction: dict[str, Any], index: int, size: tuple[int, int]) -> np.ndarray | None:
    """The sample's RGB uint8 image at its original size, or None when the prediction carries none."""
    height, width = size
    paths = prediction.get("image_path")
    if paths is not None:
        path = str(paths[index])
        bgr = imread_cv2(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"could not read image {path} for post-processing")
        if bgr.shape[:2] != (height, width):
            raise ValueError(
                f"image {path} has size {bgr.shape[:2]} but the sample's original size is {size}"
            )
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    images = prediction.get("image")
    if images is None:
        return None
    image = images[index]
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"prediction['image'] must be Bx3xHxW, got sample shape {tuple(image.shape)}")
        image = image.detach().float().cpu()
        if image.shape[-2:] != (height, width):
            image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"prediction['image'] entries must be HxWx3 uint8, got {image.shape} {image.dtype}")
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image


def _dataset_images(trainer: pl.Trainer) -> dict[str, Path]:
    """``{sample id: image path}`` of the predict loaders' usod datasets (through subsets); may be empty."""
    loaders = trainer.predict_dataloaders
    loaders = [] if loaders is None else loaders if isinstance(loaders, (list, tuple)) else [loaders]
    found: dict[str, Path] = {}
    for loader in loaders:
        dataset = getattr(loader, "dataset", None)
        while dataset is not None and getattr(dataset, "files", None) is None:
            dataset = getattr(dataset, "dataset", None)  # Subset, IdSubset, CachedDataset...
        for files in getattr(dataset, "files", None) or []:
            image = getattr(files, "image", None)
            if image is not None:
                found[str(files.id)] = Path(image)
    return found


class PseudoLabelWriter(BasePredictionWriter):
    """Writes predicted saliency maps into a pseudo-label round, one PNG per sample at original size.

    On ``on_predict_start`` it begins the round (so every rank must run it under DDP); after each batch (or
    at epoch end with ``write_interval="epoch"``) it resizes each map bilinearly to the sample's original
    size, applies ``postprocess`` and writes it; on ``on_predict_end`` it completes the round, checking that
    every expected id has a label.

    Args:
        store: The store, or its root directory.
        round_name: Round to write.
        postprocess: Optional ``f(image_uint8_or_None, prob_float_hw) -> uint8 HxW``.
        write_interval: ``"batch"`` (default; no predictions kept in memory) or ``"epoch"``.
        meta: Recorded in the manifest for this round.
        resume: Passed to :meth:`PseudoLabelStore.begin_round`.
        overwrite: Passed to :meth:`PseudoLabelStore.begin_round`.
        same: Passed to :meth:`PseudoLabelStore.begin_round`: keys of ``meta`` an existing round must have
            recorded with the same values (checked under the manifest lock).
        complete_on_end: Complete the round when prediction ends.
        expected_ids: Ids the finished round must contain. ``None`` takes them from the predict
            dataloader's dataset (``all_ids`` of an :class:`IdSubset` from :func:`remaining`, else
            :func:`dataset_ids`); if that fails, only requires some labels.

    Note:
        The post-processing runs in the predicting process, one sample at a time. For CRF over a large set,
        write raw maps and post-process afterwards with :func:`usod.ops.postprocess_folder` in parallel.
    """

    def __init__(
        self,
        store: PseudoLabelStore | str | Path,
        round_name: str,
        postprocess: PostProcessFn | None = None,
        write_interval: str = "batch",
        *,
        meta: dict[str, Any] | None = None,
        resume: bool = True,
        overwrite: bool = False,
        complete_on_end: bool = True,
        expected_ids: Iterable[str] | None = None,
        same: Sequence[str] = (),
    ) -> None:
        if write_interval not in ("batch", "epoch"):
            raise ValueError(f"write_interval must be 'batch' or 'epoch', got {write_interval!r}")
        super().__init__(write_interval=write_interval)
        self.store = store if isinstance(store, PseudoLabelStore) else PseudoLabelStore(store)
        self.round_name = round_name
        self.postprocess = postprocess
        self.meta = meta
        self.resume = resume
        self.overwrite = overwrite
        self.same = tuple(same)
        self.complete_on_end = complete_on_end
        self.expected_ids = list(expected_ids) if expected_ids is not None else None
        self.num_written = 0
        self._image_files: dict[str, Path] = {}

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.store.begin_round(
            self.round_name, self.meta, resume=self.resume, overwrite=self.overwrite, same=self.same
        )
        self.num_written = 0
        self._image_files = _dataset_images(trainer) if self.postprocess is not None else {}

    def _image(
        self, prediction: dict[str, Any], batch: Any, index: int, sample_id: str, size: tuple[int, int]
    ) -> np.ndarray | None:
        """The RGB image ``postprocess`` gets: the prediction's, else the file on disk, else the batch's."""
        image = _image_for(prediction, index, size)
        if image is None and sample_id in self._image_files:
            image = read_image(self._image_files[sample_id])
            if image.shape[:2] != size:
                image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        if image is None and isinstance(batch, dict) and ("image" in batch or "image_path" in batch):
            image = _image_for(batch, index, size)
        return image

    def write_prediction(self, prediction: dict[str, Any], batch: Any = None) -> list[Path]:
        """Writes every sample of one batch prediction; returns the written paths."""
        if not isinstance(prediction, dict) or "saliency" not in prediction:
            raise ValueError("predict_step must return a dict with a 'saliency' Bx1xhxw tensor")
        saliency = prediction["saliency"]
        if not isinstance(saliency, torch.Tensor) or saliency.ndim != 4 or saliency.shape[1] != 1:
            shape = tuple(saliency.shape) if hasattr(saliency, "shape") else type(saliency).__name__
            raise ValueError(f"prediction['saliency'] must be a Bx1xhxw tensor, got {shape}")
        ids = prediction.get("id", batch.get("id") if isinstance(batch, dict) else None)
        sizes = prediction.get("size", batch.get("size") if isinstance(batch, dict) else None)
        if ids is None or sizes is None:
            raise ValueError(
                "prediction (or batch) must carry 'id' (list[str]) and 'size' (Bx2 original H, W)"
            )
        sizes = torch.as_tensor(sizes).reshape(-1, 2).tolist()
        if not (len(ids) == len(sizes) == saliency.shape[0]):
            raise ValueError(
                f"batch mismatch: {len(ids)} ids, {len(sizes)} sizes, {saliency.shape[0]} saliency maps"
            )
        saliency = saliency.detach().float().cpu()
        paths = []
        for index, (sample_id, (height, width)) in enumerate(zip(ids, sizes, strict=True)):
            prob = saliency[index : index + 1]
            if prob.shape[-2:] != (height, width):
                prob = F.interpolate(
                    prob, size=(int(height), int(width)), mode="bilinear", align_corners=False
                )
            prob = prob[0, 0].clamp(0, 1).numpy()
            if self.postprocess is not None:
                image = self._image(prediction, batch, index, str(sample_id), (int(height), int(width)))
                label = self.postprocess(image, prob)
            else:
                label = prob
            paths.append(self.store.write(self.round_name, str(sample_id), label))
        self.num_written += len(paths)
        return paths

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self.write_prediction(prediction, batch)

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        # One list per dataloader when there are several, else a flat list of batch outputs.
        for item in predictions:
            for prediction in item if isinstance(item, list) else [item]:
                self.write_prediction(prediction)

    def _expected_ids(self, trainer: pl.Trainer) -> list[str] | None:
        if self.expected_ids is not None:
            return self.expected_ids
        loaders = trainer.predict_dataloaders
        if loaders is None:
            return None
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        expected: list[str] = []
        for loader in loaders:
            dataset = getattr(loader, "dataset", None)
            if dataset is None:
                return None
            all_ids = getattr(dataset, "all_ids", None)
            try:
                expected.extend(all_ids if all_ids is not None else dataset_ids(dataset))
            except (KeyError, TypeError, ValueError):
                return None
        return expected

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.complete_on_end:
            self.store.complete_round(self.round_name, self._expected_ids(trainer))
