"""Media for wandb: PR curves and sample panels, written to every ``WandbLogger`` of a trainer on rank zero.

Scalars (losses, SOD metrics, pseudo-label quality) go through ``LightningModule.log`` and reach every
logger. Media need a logger that shows them: :func:`log_curves` and :func:`log_panels` write to every
:class:`~pytorch_lightning.loggers.WandbLogger` of a trainer (a table plus a line plot, and images), on
rank zero only, and do nothing for other loggers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

__all__ = ["PANEL_ORDER", "log_curves", "log_panels", "media_loggers", "panel_strip", "train_epoch_end_step"]

#: Column order of the sample panels (maps missing from a call are left out).
PANEL_ORDER: tuple[str, ...] = ("image", "aux", "depth", "thermal", "flow", "pseudo", "prediction", "mask")
_PANEL_TITLES = {"image": "image", "aux": "aux", "depth": "depth", "thermal": "thermal", "flow": "flow",
                 "pseudo": "pseudo label", "prediction": "prediction", "mask": "ground truth"}  # fmt: skip


def media_loggers(trainer: Any) -> list[WandbLogger]:
    """The trainer's loggers that take media (wandb), or an empty list without a trainer."""
    if trainer is None:
        return []
    return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, WandbLogger)]


def _is_global_zero(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


def _step(trainer: Any) -> int | None:
    """The step Lightning gives logged scalars (optimizer steps taken), so media line up with them."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return int(step) if step is not None else getattr(trainer, "global_step", None)


def train_epoch_end_step(trainer: Any) -> int | None:
    """The step Lightning gives the metrics logged in a training epoch's end hooks: one less than
    :func:`_step` there (Lightning decrements its counter while it logs epoch-end metrics), so media logged
    from those hooks line up with the epoch's scalars."""
    step = _step(trainer)
    return None if step is None else max(0, step - 1)


def log_curves(
    trainer: Any, key: str, curves: Mapping[str, Tensor | Sequence[float]], step: int | None = None
) -> bool:
    """Log average SOD curves (``precision``, ``recall``, ``f``, ``e`` over 256 thresholds) to wandb.

    Writes a table ``key`` (threshold, precision, recall, f, e) and a precision-recall line plot
    ``key`` + ``_plot``. Rank zero only (the curves must already be synchronised); no-op without a wandb
    logger.

    Returns:
        Whether anything was logged.
    """
    loggers = media_loggers(trainer)
    if not loggers or not _is_global_zero(trainer):
        return False
    import wandb

    columns = ["threshold"] + [c for c in ("precision", "recall", "f", "e") if c in curves]
    values = {c: np.asarray(torch.as_tensor(curves[c]).detach().cpu(), dtype=np.float64) for c in columns[1:]}
    n = len(next(iter(values.values()))) if values else 0
    rows = [[t] + [float(values[c][t]) for c in columns[1:]] for t in range(n)]
    step = _step(trainer) if step is None else step
    for logger in loggers:
        table = wandb.Table(columns=columns, data=rows)
        metrics: dict[str, Any] = {key: table}
        if "precision" in values and "recall" in values:
            metrics[f"{key}_plot"] = wandb.plot.line(table, "recall", "precision", title=f"{key} (PR curve)")
        logger.log_metrics(metrics, step=step)
    return True


def _to_hwc_uint8(value: Tensor | np.ndarray) -> np.ndarray:
    """CxHxW / HxW / HxWxC float in [0, 1] (or uint8) -> HxWx3 uint8; two channels (flow) get a third."""
    arr = value.detach().float().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[0] in (1, 2, 3) and arr.shape[-1] not in (1, 2, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 2:
        arr = np.concatenate([arr, np.zeros_like(arr[..., :1])], axis=-1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def panel_strip(maps: Mapping[str, Tensor | np.ndarray], size: int = 128) -> tuple[np.ndarray, list[str]]:
    """One sample's maps side by side (``PANEL_ORDER``), each resized to ``size`` x ``size``.

    Returns:
        The HxWx3 uint8 strip and the titles of its columns.
    """
    import cv2

    tiles, titles = [], []
    for key in PANEL_ORDER:
        if maps.get(key) is None:
            continue
        tile = _to_hwc_uint8(maps[key])
        tiles.append(cv2.resize(tile, (size, size), interpolation=cv2.INTER_LINEAR))
        titles.append(_PANEL_TITLES[key])
    if not tiles:
        raise ValueError(f"no maps to show; expected some of {PANEL_ORDER}")
    return np.concatenate(tiles, axis=1), titles


def log_panels(
    trainer: Any,
    key: str,
    maps: Mapping[str, Tensor | None],
    ids: Sequence[Any] | None = None,
    max_samples: int = 4,
    step: int | None = None,
) -> bool:
    """Log panels (image | pseudo label | prediction | ground truth) of the first samples of a batch.

    Args:
        trainer: The trainer (its wandb loggers receive the images; rank zero only).
        key: Key of the image list, e.g. ``"val_panels"``.
        maps: Batches (BxCxHxW, float in [0, 1]) named as in :data:`PANEL_ORDER` (``None``: skipped).
        ids: Sample ids for the captions.
        max_samples: Samples to show.
        step: Step (default: the trainer's global step).

    Returns:
        Whether anything was logged.
    """
    loggers = media_loggers(trainer)
    if not loggers or not _is_global_zero(trainer):
        return False
    present = {k: v for k, v in maps.items() if v is not None}
    if not present:
        return False
    n = min(max_samples, *(int(v.shape[0]) for v in present.values()))
    strips, captions = [], []
    for i in range(n):
        strip, titles = panel_strip({k: v[i] for k, v in present.items()})
        strips.append(strip)
        sample = f"{ids[i]}: " if ids is not None and i < len(ids) else ""
        captions.append(sample + " | ".join(titles))
    step = _step(trainer) if step is None else step
    for logger in loggers:
        logger.log_image(key, strips, step=step, caption=captions)
    return True
