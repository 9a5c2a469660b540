"""Pseudo-label quality: score label rounds against ground truth when the dataset has it.

Training never reads ground truth; these helpers only measure how good the pseudo labels are (the "label
quality" curves of A2S, DeepUSPS and seed 000), for logs and reports.

* :func:`score_labels`: every SOD metric of ``{id: label}`` against ``{id: mask file}``;
* :func:`training_masks`: the mask files of a datamodule's training images, or ``None`` without them;
* :class:`PseudoLabelQuality`: a callback that scores a module's labels after each label update (OLR/SPR of
  :class:`~usod.models.saliency_detector.SaliencyDetector` and
  :class:`~usod.models.adapter_transfer.AdapterTransfer`, the moving averages of
  :class:`~usod.models.deepusps.DeepUSPSRefiner`) and logs ``label_mae``, ``label_max_f``, ... and a PR
  curve ``label_pr_curve`` (wandb).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from usod.data.datasets import get_dataset
from usod.data.io import IMAGE_EXTENSIONS, InvalidInputError
from usod.distributed import rank_world
from usod.evaluation import score_labels
from usod.loggers import log_curves, train_epoch_end_step
from usod.metrics import SOD_KEYS, SODMetrics

__all__ = ["LABEL_QUALITY_KEYS", "PseudoLabelQuality", "training_masks"]

log = logging.getLogger(__name__)

#: Scores logged per label round (as ``label_<key>``).
LABEL_QUALITY_KEYS: tuple[str, ...] = SOD_KEYS


def training_masks(datamodule: Any) -> dict[str, Path] | None:
    """``id -> mask file`` of a usod datamodule's training images, or ``None`` when they have no masks."""
    name = getattr(datamodule, "dataset_name", None)
    root = getattr(datamodule, "root", None)
    if name is None or root is None:
        return None

    try:
        dataset = get_dataset(name, root=root, split=getattr(datamodule, "split", None), with_masks=True)
    except (InvalidInputError, FileNotFoundError, NotADirectoryError, ValueError, TypeError) as err:
        log.info("no ground truth for the training images of %s (%s)", name, err)
        return None
    files = getattr(dataset, "files", [])
    if not files or any(f.mask is None for f in files):
        return None
    return {f.id: Path(f.mask) for f in files}


class PseudoLabelQuality(pl.Callback):
    """Score a module's pseudo labels against ground truth after every label update and log the scores.

    Works with modules that call ``label_listeners`` after their label updates and have
    ``export_labels(original_size=True)``: :class:`~usod.models.saliency_detector.SaliencyDetector` and
    :class:`~usod.models.adapter_transfer.AdapterTransfer` (OLR/SPR rounds) and
    :class:`~usod.models.deepusps.DeepUSPSRefiner` (MVA). After each epoch that changed labels it logs
    ``label_<key>`` for :data:`LABEL_QUALITY_KEYS` (on every logger), ``label_epoch`` and a PR-curve table
    ``label_pr_curve`` (wandb). Under DDP each rank scores a disjoint share of the ids; the metric states
    are summed across ranks.

    Args:
        masks: ``id -> mask file``, a folder of masks named ``<id>.<ext>``, or ``None`` to take the
            training images' masks from the datamodule (:func:`training_masks`). Without ground truth the
            callback does nothing.
        weighted_f: Also compute the weighted F-measure (``label_w_f``; CPU, about 5 ms per image, so off
            by default: the reports of ``usod pipeline`` and DeepUSPS score every round with it).

    Attributes:
        history: ``{"epoch", **scores}`` per scored update (every rank).
    """

    def __init__(self, masks: Mapping[str, str | Path] | str | Path | None = None, weighted_f: bool = False):
        self._masks_arg = masks
        self.masks: dict[str, Path] | None = None
        self.weighted_f = weighted_f
        self.history: list[dict[str, float]] = []

    @staticmethod
    def _folder_masks(folder: Path) -> dict[str, Path]:

        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: ground-truth mask folder not found")
        return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        listeners = getattr(pl_module, "label_listeners", None)
        if not isinstance(listeners, list) or not hasattr(pl_module, "export_labels"):
            log.info("%s updates no pseudo labels; label quality is not logged", type(pl_module).__name__)
            return
        arg = self._masks_arg
        if arg is None:
            self.masks = training_masks(getattr(trainer, "datamodule", None))
        elif isinstance(arg, (str, Path)):
            self.masks = self._folder_masks(Path(arg))
        else:
            self.masks = {str(k): Path(v) for k, v in arg.items()}
        if self.masks and self.score not in listeners:
            listeners.append(self.score)

    def score(self, module: Any, epoch: int, updated_ids: list[str]) -> dict[str, float] | None:
        """Score the module's current labels (a listener; a collective under DDP: runs on every rank)."""
        if not updated_ids or not self.masks:
            return None

        labels = module.export_labels(original_size=True)
        ids = sorted(set(labels) & set(self.masks))
        rank, world = rank_world()
        metric = SODMetrics(weighted_f=self.weighted_f).to(module.device)
        score_labels(labels, self.masks, ids=ids[rank::world], metric=metric)
        scores = {k: float(v) for k, v in metric.compute().items() if k != "n"}
        curves = metric.curves()
        # the metric states were synchronised in compute(): every rank holds the same scores, and "max" of
        # equal values logs them unchanged (without Lightning's unsynchronised-logging warning under DDP)
        for key in LABEL_QUALITY_KEYS:
            if key in scores:
                module.log(f"label_{key}", scores[key], sync_dist=True, reduce_fx="max")
        module.log("label_epoch", float(epoch), sync_dist=True, reduce_fx="max")
        # listeners run in the training epoch's end: the curve goes to the step of the label_* scalars
        log_curves(module.trainer, "label_pr_curve", curves, step=train_epoch_end_step(module.trainer))
        entry = {"epoch": float(epoch), **scores}
        self.history.append(entry)
        return entry
