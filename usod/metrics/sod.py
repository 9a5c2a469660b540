"""Salient object detection metrics as torchmetrics ``Metric`` classes.

Each ``update(preds, target)`` takes a batch (Bx1xHxW or BxHxW) of predictions (float in [0, 1] or
uint8 0..255) and targets (uint8 0..255, float in [0, 1] or bool). Every image is one sample, scored
with the pysodmetrics 1.6.2 conventions described in :mod:`usod.metrics.functional`, and the
per-image numbers (and per-image curves) are averaged over images; ``max_f``/``mean_f`` and
``max_e``/``mean_e`` are the max and mean of the *average* curve, as in pysodmetrics.

Float predictions are quantised to ``round(p * 255)`` first, i.e. scored as the 8-bit PNG a user
would save; use :func:`usod.metrics.quantize_prediction` when writing prediction PNGs so that
``usod evaluate`` on the files gives the numbers logged during validation.

States are DDP-safe: per-image values are accumulated as int64 fixed-point sums (``2**-36``
resolution, i.e. at most 7.3e-12 rounding error per image) with ``dist_reduce_fx="sum"``. Integer addition is
associative, so the result does not depend on how images are split over batches or processes:
2 processes give bit-for-bit what 1 process gives. The fixed-point sums hold up to about 60 million
images.

Examples:
    >>> metric = SODMetrics()
    >>> metric.update(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32) > 0.5)
    >>> sorted(metric.compute())[:3]
    ['adp_e', 'adp_f', 'mae']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from usod.metrics import functional as F

__all__ = ["EMeasure", "FMeasure", "MAE", "SMeasure", "SODMetrics", "WeightedFMeasure"]

_SCALE_BITS = 36
_SCALE = float(2**_SCALE_BITS)


def _fixed(values: Tensor) -> Tensor:
    """float64 per-image values (B or Bx256) -> their int64 fixed-point sum over the batch."""
    return torch.round(values * _SCALE).to(torch.int64).sum(dim=0)


class _SODMetric(Metric):
    """Shared plumbing: input checks, the image count and fixed-point states."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("n", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def _scalar_state(self, name: str) -> None:
        self.add_state(name, torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def _curve_state(self, name: str) -> None:
        self.add_state(name, torch.zeros(F.NUM_BINS, dtype=torch.int64), dist_reduce_fx="sum")

    def _accumulate(self, name: str, values: Tensor) -> None:
        state = getattr(self, name)
        setattr(self, name, state + _fixed(values).to(state.device))

    def _mean(self, name: str) -> Tensor:
        return getattr(self, name).double() / _SCALE / self.n.double()

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Score a batch.

        Args:
            preds: Bx1xHxW or BxHxW, float in [0, 1] or uint8 0..255.
            target: Same shape; uint8 0..255 (foreground is ``> 128``), float in [0, 1] or bool.

        Raises:
            ValueError: On shape mismatch or values out of range.
        """
        pred, gt = F.prepare_batch(preds, target)
        self._update(pred, gt)
        self.n += pred.shape[0]

    def _update(self, pred: Tensor, gt: Tensor) -> None:
        raise NotImplementedError

    def _synced(self, fn: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """Run ``fn`` on states reduced over processes (like ``compute`` does)."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            return fn()


class MAE(_SODMetric):
    """Mean absolute error between the normalised prediction and the binary GT (lower is better)."""

    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._scalar_state("mae_sum")

    def _update(self, pred: Tensor, gt: Tensor) -> None:
        hist = F.pixel_histogram(pred, gt)
        self._accumulate("mae_sum", F.mae(hist, F.normalization_lut(hist)))

    def compute(self) -> Tensor:
        """Mean MAE over images (float64)."""
        return self._mean("mae_sum")


class FMeasure(_SODMetric):
    """F-measure (beta^2 = 0.3): adaptive, mean and max over 256 thresholds, and the curves."""

    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._scalar_state("adp_f_sum")
        for name in ("precision_sum", "recall_sum", "f_sum"):
            self._curve_state(name)

    def _update(self, pred: Tensor, gt: Tensor) -> None:
        hist = F.pixel_histogram(pred, gt)
        lut = F.normalization_lut(hist)
        fg, bg = F.threshold_histograms(hist, lut)
        precision, recall, f = F.fmeasure_curves(fg, bg)
        fg_fg, fg_bg = F.adaptive_threshold_counts(hist, lut)
        self._accumulate("adp_f_sum", F.adaptive_fmeasure(fg_fg, fg_bg, fg.sum(dim=1)))
        self._accumulate("precision_sum", precision)
        self._accumulate("recall_sum", recall)
        self._accumulate("f_sum", f)

    def compute(self) -> dict[str, Tensor]:
        """``{"adp_f", "mean_f", "max_f"}`` as float64 scalars."""
        curve = self._mean("f_sum")
        return {"adp_f": self._mean("adp_f_sum"), "mean_f": curve.mean(), "max_f": curve.max()}

    def curves(self) -> dict[str, Tensor]:
        """Average ``precision``, ``recall`` and ``f`` curves, float64 (256,), index = threshold."""
        return self._synced(
            lambda: {
                "precision": self._mean("precision_sum"),
                "recall": self._mean("recall_sum"),
                "f": self._mean("f_sum"),
            }
        )


class EMeasure(_SODMetric):
    """E-measure: adaptive, mean and max over 256 thresholds, and the curve."""

    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._scalar_state("adp_e_sum")
        self._curve_state("e_sum")

    def _update(self, pred: Tensor, gt: Tensor) -> None:
        hist = F.pixel_histogram(pred, gt)
        lut = F.normalization_lut(hist)
        fg, bg = F.threshold_histograms(hist, lut)
        fg_fg, fg_bg = F.adaptive_threshold_counts(hist, lut)
        size = pred.shape[1] * pred.shape[2]
        self._accumulate("adp_e_sum", F.adaptive_emeasure(fg_fg, fg_bg, fg.sum(dim=1), size))
        self._accumulate("e_sum", F.emeasure_curve(fg, bg))

    def compute(self) -> dict[str, Tensor]:
        """``{"adp_e", "mean_e", "max_e"}`` as float64 scalars."""
        curve = self._mean("e_sum")
        return {"adp_e": self._mean("adp_e_sum"), "mean_e": curve.mean(), "max_e": curve.max()}

    def curves(self) -> dict[str, Tensor]:
        """Average ``e`` curve, float64 (256,), index = threshold."""
        return self._synced(lambda: {"e": self._mean("e_sum")})


class SMeasure(_SODMetric):
    """Structure measure (alpha = 0.5)."""

    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._scalar_state("s_sum")

    def _update(self, pred: Tensor, gt: Tensor) -> None:
        self._accumulate("s_sum", F.smeasure(pred, gt))

    def compute(self) -> Tensor:
        """Mean S-measure over images (float64)."""
        return self._mean("s_sum")


class WeightedFMeasure(_SODMetric):
    """Weighted F-measure (beta = 1). Computed on the CPU (scipy distance transform, OpenCV filter)."""

    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._scalar_state("w_f_sum")

    def _update(self, pred: Tensor, gt: Tensor) -> None:
        self._accumulate("w_f_sum", F.weighted_fmeasure(pred, gt))

    def compute(self) -> Tensor:
        """Mean weighted F-measure over images (float64)."""
        return self._mean("w_f_sum")


class SODMetrics(_SODMetric):
    """All SOD metrics from one pass over the data (the histograms are shared).

    ``compute()`` returns a flat dict of float64 scalars ``mae, max_f, mean_f, adp_f, max_e, mean_e,
    adp_e, s_measure, w_f`` and the int64 image count ``n``; :meth:`curves` returns the average
    precision, recall, F and E curves.

    Args:
        weighted_f: Also compute the weighted F-measure (``w_f``), the only metric that needs the
            CPU; leave it out for cheap validation on a GPU.
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = None  # mixed: lower is better for mae only

    def __init__(self, weighted_f: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weighted_f = weighted_f
        for name in ("mae_sum", "adp_f_sum", "adp_e_sum", "s_sum", "w_f_sum"):
            self._scalar_state(name)
        for name in ("precision_sum", "recall_sum", "f_sum", "e_sum"):
            self._curve_state(name)

    def _update(self, pred: Tensor, gt: Tensor) -> None:
        hq, cy, cx = F.quadrant_histogram(pred, gt)
        hist = hq.sum(dim=1)
        lut = F.normalization_lut(hist)
        size = pred.shape[1] * pred.shape[2]
        fg, bg = F.threshold_histograms(hist, lut)
        gt_fg = fg.sum(dim=1)
        precision, recall, f = F.fmeasure_curves(fg, bg)
        fg_fg, fg_bg = F.adaptive_threshold_counts(hist, lut)
        self._accumulate("mae_sum", F.mae(hist, lut))
        self._accumulate("adp_f_sum", F.adaptive_fmeasure(fg_fg, fg_bg, gt_fg))
        self._accumulate("adp_e_sum", F.adaptive_emeasure(fg_fg, fg_bg, gt_fg, size))
        self._accumulate("s_sum", F.smeasure_from_quadrants(hq, cy, cx, lut, (pred.shape[1], pred.shape[2])))
        self._accumulate("precision_sum", precision)
        self._accumulate("recall_sum", recall)
        self._accumulate("f_sum", f)
        self._accumulate("e_sum", F.emeasure_curve(fg, bg))
        if self.weighted_f:
            self._accumulate("w_f_sum", F.weighted_fmeasure(pred, gt, lut))

    def compute(self) -> dict[str, Tensor]:
        """Flat dict of the averaged scores and ``n``."""
        f_curve = self._mean("f_sum")
        e_curve = self._mean("e_sum")
        out = {
            "mae": self._mean("mae_sum"),
            "max_f": f_curve.max(),
            "mean_f": f_curve.mean(),
            "adp_f": self._mean("adp_f_sum"),
            "max_e": e_curve.max(),
            "mean_e": e_curve.mean(),
            "adp_e": self._mean("adp_e_sum"),
            "s_measure": self._mean("s_sum"),
        }
        if self.weighted_f:
            out["w_f"] = self._mean("w_f_sum")
        out["n"] = self.n.clone()
        return out

    def curves(self) -> dict[str, Tensor]:
        """Average ``precision``, ``recall``, ``f`` and ``e`` curves, float64 (256,), index = threshold."""
        return self._synced(
            lambda: {
                "precision": self._mean("precision_sum"),
                "recall": self._mean("recall_sum"),
                "f": self._mean("f_sum"),
                "e": self._mean("e_sum"),
            }
        )
