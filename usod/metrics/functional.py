"""Batched, per-image SOD metric kernels that reproduce pysodmetrics 1.6.2.

Every function here takes a batch of quantised predictions ``pred`` (``uint8`` Bx``H``x``W``, 0..255) and
binary ground truths ``gt`` (``bool`` BxHxW) and returns one number (or one 256-vector) per image. The
metric classes in :mod:`usod.metrics.sod` average these over images.

Conventions (all taken from ``py_sod_metrics`` 1.6.2, ``sod_metrics.py`` and ``utils.py``):

* Ground truth is ``gt > 128`` on the 8-bit mask.
* The prediction is ``pred / 255`` and then min-max normalised, unless it is constant
  (MATLAB's ``mapminmax(im2double(pred))``).
* Threshold curves use the normalised prediction re-quantised with ``(pred * 255).astype(uint8)``
  (truncation) and a pixel is foreground at threshold ``t`` when its quantised value is ``>= t``,
  ``t = 0..255``. **usod returns curves in ascending threshold order** (index ``t`` is threshold
  ``t``); pysodmetrics stores them reversed (its index ``i`` is threshold ``255 - i``).
* F-measure uses ``beta^2 = 0.3``; where precision and recall are both 0 the F value is 0; a
  threshold with no predicted pixels has precision 0 (the denominator is set to 1).
* The adaptive threshold is ``min(2 * mean(pred), 1)`` on the *unquantised* normalised prediction and
  a pixel is foreground when ``pred >= threshold``. Adaptive F is 0 when the intersection is empty.
* E-measure: the closed form over the four (pred, gt) parts from pysodmetrics' histogram method;
  for an empty GT the enhanced sum is the number of predicted-background pixels, for a full GT the
  number of predicted-foreground pixels; everything is divided by ``H * W - 1 + eps``.
* S-measure: ``alpha = 0.5``; object score with ``std(ddof=1)`` (0 for a single pixel); region score
  splits at the rounded GT centroid plus one (MATLAB indexing) and uses pysodmetrics' SSIM with
  ``N - 1 + eps`` denominators; an empty GT gives ``1 - mean(pred)``, a full GT ``mean(pred)``.
* Weighted F-measure: Margolin et al. with ``beta = 1`` (pysodmetrics' default for it), a 7x7
  MATLAB ``fspecial('gaussian', 7, 5)`` kernel with zero padding and the Euclidean distance transform
  with nearest-foreground indices; an empty GT gives 0.

Inputs: pysodmetrics takes the 8-bit maps users save; a float prediction in [0, 1] is therefore
first turned into that map, ``round(p * 255)`` (:func:`quantize_prediction`), and a float target is
quantised the same way before ``> 128``. An 8-bit input is used as is.

What "exact" means here: the normalisation, quantisation, histograms and per-pixel values are the
same IEEE float64 operations in the same order as pysodmetrics, so the histograms and curves' inputs
are bit-identical. Only sums are formed in a different order (from 256-bin histograms instead of
pixel by pixel), which changes per-image results by round-off (about 1e-15); the metric classes add
at most ~1e-11 by accumulating in fixed point. Measured against pysodmetrics: at most 3e-13 on
average scores of real masks (DUTS, DAVIS), 1e-9 is what the tests demand.

Where usod deviates on purpose:

* The S-measure SSIM of a region in which both prediction and GT are constant is 0/0. pysodmetrics
  decides it by whether numpy's round-off in ``np.mean`` leaves a tiny variance (score 0) or not
  (score 1). usod reproduces that decision by evaluating the same numpy expression on a constant
  array of the same shape (:func:`_numpy_constant_mean_is_exact`), because the choice moves the score
  by up to a quadrant's weight.
* When the centroid falls in the last row or column a quadrant is empty; pysodmetrics then returns
  NaN (mean of an empty array). usod gives that quadrant (whose weight is 0) a score of 0.
* Ties of the adaptive threshold with a prediction value (within round-off of ``2 * mean``) may be
  decided differently, because the mean is summed in a different order.

Devices: every kernel works on a whole batch. The per-pixel stage (quantisation, the joint
value/GT histograms per image and per S-measure quadrant) runs with ``torch.bincount`` on GPUs and
with numpy / ``cv2.calcHist`` on CPU tensors (much faster there than torch's CPU kernels); all later
work is on 256-bin histograms, in torch. The weighted F-measure needs a Euclidean distance transform
with nearest-pixel indices; it always runs on the CPU with ``scipy.ndimage.distance_transform_edt``
(the same routine, hence the same tie-breaking, as pysodmetrics) and ``cv2.filter2D`` for the
Gaussian (faster than ``scipy.ndimage.convolve``; same result up to round-off).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

#: ``np.spacing(1)``, the epsilon used by pysodmetrics.
EPS: float = float(np.spacing(1))
#: ``beta^2`` of the F-measure.
F_BETA2: float = 0.3
#: ``beta`` of the weighted F-measure (pysodmetrics' ``WeightedFmeasure`` default).
WF_BETA: float = 1.0
#: ``alpha`` of the S-measure.
S_ALPHA: float = 0.5
#: Number of thresholds / histogram bins.
NUM_BINS: int = 256

__all__ = [
    "EPS",
    "F_BETA2",
    "NUM_BINS",
    "S_ALPHA",
    "WF_BETA",
    "adaptive_emeasure",
    "adaptive_fmeasure",
    "adaptive_threshold_counts",
    "binarize_target",
    "emeasure_curve",
    "enhanced_alignment",
    "fmeasure_curves",
    "mae",
    "normalization_lut",
    "pixel_histogram",
    "prepare_batch",
    "quadrant_histogram",
    "quantize_prediction",
    "smeasure",
    "smeasure_from_quadrants",
    "threshold_histograms",
    "weighted_fmeasure",
]


def _use_numpy(x: Tensor) -> bool:
    """Per-pixel work on CPU tensors goes through numpy/OpenCV: several times faster than torch's CPU
    kernels (``torch.bincount`` especially) on few cores. Other devices use the torch code."""
    return x.device.type == "cpu"


def _to_bhw(x: Tensor, name: str) -> Tensor:
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name} must be Bx1xHxW or BxHxW, got shape {tuple(x.shape)}")
        return x[:, 0]
    if x.ndim == 3:
        return x
    if x.ndim == 2:
        return x.unsqueeze(0)
    raise ValueError(f"{name} must be Bx1xHxW, BxHxW or HxW, got shape {tuple(x.shape)}")


def _range_error(kind: str, lo: float, hi: float, what: str) -> ValueError:
    if kind == "float":
        return ValueError(
            f"float {what} must be in [0, 1] (apply a sigmoid to logits), got range [{lo:.4g}, {hi:.4g}]"
        )
    return ValueError(f"integer {what} must be in 0..255, got range [{int(lo)}, {int(hi)}]")


def quantize_prediction(preds: Tensor, what: str = "predictions") -> Tensor:
    """Turn a saliency map into the 8-bit map a user would save as PNG.

    Float maps must lie in [0, 1] and become ``round(p * 255)`` (round half to even, like
    ``cv2.imwrite`` / ``cv2.convertScaleAbs`` on a ``p * 255`` float map). Integer maps must lie in
    0..255 and are kept as they are. CPU tensors are processed with numpy (much faster than torch's
    elementwise kernels on few shared cores).

    Args:
        preds: Prediction of any shape, float in [0, 1] or integer in 0..255.
        what: Name used in error messages.

    Returns:
        ``uint8`` tensor of the same shape.

    Raises:
        ValueError: If values are out of range or not finite.
    """
    if preds.dtype == torch.uint8:
        return preds
    if preds.dtype == torch.bool:
        return preds.to(torch.uint8) * 255
    if preds.numel() == 0:
        return preds.to(torch.uint8)
    if preds.dtype in (torch.float16, torch.bfloat16):  # mixed-precision outputs; numpy has no bfloat16
        preds = preds.float()
    if _use_numpy(preds):
        arr = preds.detach().numpy()
        lo, hi = float(arr.min()), float(arr.max())
    else:
        arr = None
        lo, hi = float(preds.min()), float(preds.max())
    if preds.is_floating_point():
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"{what} contain NaN or infinite values")
        if lo < 0.0 or hi > 1.0:
            raise _range_error("float", lo, hi, what)
        if arr is not None:
            return torch.from_numpy(np.round(arr.astype(np.float64) * 255.0).astype(np.uint8))
        return torch.round(preds.double() * 255.0).to(torch.uint8)
    if lo < 0 or hi > 255:
        raise _range_error("int", lo, hi, what)
    return preds.to(torch.uint8)


def binarize_target(target: Tensor) -> Tensor:
    """Binarise a ground truth the way pysodmetrics does: ``gt > 128`` on the 8-bit mask.

    ``bool`` targets are kept; float targets in [0, 1] are first quantised like predictions
    (``round(t * 255)``), so a float mask and the PNG it came from give the same GT.

    Args:
        target: Ground truth of any shape: ``bool``, ``uint8``/integer 0..255, or float in [0, 1].

    Returns:
        ``bool`` tensor of the same shape.

    Raises:
        ValueError: If values are out of range or not finite, or an integer target holds only 0 and 1.
    """
    if target.dtype == torch.bool:
        return target
    if not target.is_floating_point() and target.numel() and int(target.max()) == 1:
        # integer 0/1 masks would all be background under "> 128": almost surely not meant
        raise ValueError(
            f"integer targets ({target.dtype}) must be 0..255 masks, got values in 0..1: pass them as bool "
            "or multiply by 255 (usod.data.io.read_mask rescales 0/1 mask files itself)"
        )
    target = quantize_prediction(target, "targets")
    if _use_numpy(target):
        return torch.from_numpy(target.numpy() > 128)
    return target > 128


def prepare_batch(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and convert one ``update`` batch.

    Args:
        preds: Bx1xHxW or BxHxW (or HxW), float in [0, 1] or uint8 0..255.
        target: Same shape; uint8 0..255, float in [0, 1] or bool.

    Returns:
        ``(pred, gt)``: ``uint8`` and ``bool`` BxHxW tensors on the device of ``preds``.

    Raises:
        ValueError: On shape mismatch or values out of range.
    """
    p = _to_bhw(preds, "preds")
    t = _to_bhw(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"preds and target shapes differ: {tuple(preds.shape)} vs {tuple(target.shape)}")
    if p.shape[-1] * p.shape[-2] < 2:
        raise ValueError(f"images must have at least 2 pixels, got shape {tuple(preds.shape)}")
    return quantize_prediction(p), binarize_target(t).to(p.device)


def pixel_histogram(pred: Tensor, gt: Tensor) -> Tensor:
    """Joint histogram of raw 8-bit prediction values and GT per image.

    Args:
        pred: ``uint8`` BxHxW.
        gt: ``bool`` BxHxW.

    Returns:
        int64 Bx256x2: ``hist[b, v, g]`` = pixels of image ``b`` with value ``v`` and GT ``g``.
    """
    b = pred.shape[0]
    if _use_numpy(pred):
        p, g = pred.numpy(), gt.numpy()
        return torch.from_numpy(np.stack([_np_hist(p[i], g[i]) for i in range(b)]))
    return _pixel_histogram_torch(pred, gt)


def _pixel_histogram_torch(pred: Tensor, gt: Tensor) -> Tensor:
    """:func:`pixel_histogram` with one batched ``torch.bincount`` (any device)."""
    b = pred.shape[0]
    offset = torch.arange(b, device=pred.device).view(b, 1, 1) * (2 * NUM_BINS)
    idx = offset + pred.long() * 2 + gt.long()
    return torch.bincount(idx.reshape(-1), minlength=b * 2 * NUM_BINS).view(b, NUM_BINS, 2)


def _pixel_codes(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``value * 2 + gt`` as int16 (0..511)."""
    code = pred.astype(np.int16)
    code <<= 1
    code |= gt
    return code


def _np_hist(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """256x2 int64 value/GT histogram of one 2-D (possibly strided) block, on the CPU."""
    if pred.size == 0:
        return np.zeros((NUM_BINS, 2), dtype=np.int64)
    if pred.size < 2**24:
        # cv2.calcHist is the fastest CPU histogram; float32 counts are exact below 2**24
        hist = cv2.calcHist([pred, gt.view(np.uint8)], [0, 1], None, [NUM_BINS, 2], [0, NUM_BINS, 0, 2])
        return hist.astype(np.int64)
    return np.bincount(_pixel_codes(pred, gt).ravel(), minlength=2 * NUM_BINS).reshape(NUM_BINS, 2)


def _centroid_split(gt: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column (MATLAB 1-based, i.e. rounded centroid + 1) where the S-measure splits."""
    b, h, w = gt.shape
    if _use_numpy(gt):
        g = gt.numpy()
        row_count = torch.from_numpy(np.count_nonzero(g, axis=2))
        col_count = torch.from_numpy(np.count_nonzero(g, axis=1))
    else:
        row_count = gt.sum(dim=2)
        col_count = gt.sum(dim=1)
    n_fg = row_count.sum(dim=1)
    row_sum = (row_count * torch.arange(h, device=gt.device)).sum(dim=1)
    col_sum = (col_count * torch.arange(w, device=gt.device)).sum(dim=1)
    safe = n_fg.clamp_min(1).double()
    # integer sums are exact in float64, so this is numpy's argwhere(gt).mean(0).round()
    # Python's round() is round-half-even like np.round (only used for an empty GT)
    cy = torch.where(n_fg > 0, torch.round(row_sum.double() / safe), float(round(h / 2)))
    cx = torch.where(n_fg > 0, torch.round(col_sum.double() / safe), float(round(w / 2)))
    return cy.long() + 1, cx.long() + 1


def quadrant_histogram(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Joint value/GT histograms of the four S-measure quadrants of each image.

    Args:
        pred: ``uint8`` BxHxW.
        gt: ``bool`` BxHxW.

    Returns:
        ``(hist, cy, cx)``: int64 Bx4x256x2 histograms for the quadrants (left-top, right-top,
        left-bottom, right-bottom) and the split row/column per image. Summing over the
        quadrants gives :func:`pixel_histogram`.
    """
    b, h, w = pred.shape
    cy, cx = _centroid_split(gt)
    if _use_numpy(pred):
        p, g = pred.numpy(), gt.numpy()
        hist = np.zeros((b, 4, NUM_BINS, 2), dtype=np.int64)
        for i, (r, c) in enumerate(zip(cy.tolist(), cx.tolist(), strict=True)):
            blocks = (
                (slice(0, r), slice(0, c)),
                (slice(0, r), slice(c, w)),
                (slice(r, h), slice(0, c)),
                (slice(r, h), slice(c, w)),
            )
            for q, (rows, cols) in enumerate(blocks):
                hist[i, q] = _np_hist(p[i, rows, cols], g[i, rows, cols])
        return torch.from_numpy(hist), cy, cx
    return _quadrant_histogram_torch(pred, gt, cy, cx), cy, cx


def _quadrant_histogram_torch(pred: Tensor, gt: Tensor, cy: Tensor, cx: Tensor) -> Tensor:
    """The histograms of :func:`quadrant_histogram` with one batched ``torch.bincount`` (any device)."""
    b, h, w = pred.shape
    bottom = torch.arange(h, device=pred.device).view(1, h, 1) >= cy.view(b, 1, 1)
    right = torch.arange(w, device=pred.device).view(1, 1, w) >= cx.view(b, 1, 1)
    quad = bottom.long() * 2 + right.long()
    offset = torch.arange(b, device=pred.device).view(b, 1, 1) * 4
    idx = ((offset + quad) * NUM_BINS + pred.long()) * 2 + gt.long()
    return torch.bincount(idx.reshape(-1), minlength=b * 4 * NUM_BINS * 2).view(b, 4, NUM_BINS, 2)


def normalization_lut(hist: Tensor) -> Tensor:
    """Per-image lookup table from raw 8-bit value to pysodmetrics' normalised float64 value.

    Reproduces ``pred / 255`` followed by min-max normalisation (skipped for constant maps) with
    the same float64 operations, so ``lut[b, v]`` is bit-identical to pysodmetrics' value.

    Args:
        hist: Bx256x2 histogram from :func:`pixel_histogram`.

    Returns:
        float64 Bx256.
    """
    present = hist.sum(dim=-1) > 0
    vals = torch.arange(NUM_BINS, device=hist.device, dtype=torch.float64) / 255.0
    lo = present.long().argmax(dim=1)
    hi = NUM_BINS - 1 - present.flip(1).long().argmax(dim=1)
    pmin = vals[lo].unsqueeze(1)
    pmax = vals[hi].unsqueeze(1)
    span = pmax - pmin
    constant = span == 0
    normed = (vals.unsqueeze(0) - pmin) / torch.where(constant, torch.ones_like(span), span)
    return torch.where(constant, vals.unsqueeze(0).expand_as(normed), normed)


def mae(hist: Tensor, lut: Tensor) -> Tensor:
    """Mean absolute error per image.

    Args:
        hist: Bx256x2 histogram.
        lut: Bx256 normalised values.

    Returns:
        float64 B.
    """
    n = hist.sum(dim=(1, 2)).double()
    err = hist[..., 0].double() * lut + hist[..., 1].double() * (1.0 - lut)
    return err.sum(dim=1) / n


def threshold_histograms(hist: Tensor, lut: Tensor) -> tuple[Tensor, Tensor]:
    """Histograms of the re-quantised prediction in GT foreground and background.

    Args:
        hist: Bx256x2 histogram of raw values.
        lut: Bx256 normalised values.

    Returns:
        ``(fg, bg)``: int64 Bx256 counts per quantised value ``floor(lut * 255)``.
    """
    # values absent from an image can normalise outside [0, 1]; they have zero counts
    qbin = torch.floor(lut * 255.0).long().clamp_(0, NUM_BINS - 1)
    fg = torch.zeros_like(hist[..., 1]).scatter_add_(1, qbin, hist[..., 1])
    bg = torch.zeros_like(hist[..., 0]).scatter_add_(1, qbin, hist[..., 0])
    return fg, bg


def _at_or_above(counts: Tensor) -> Tensor:
    return counts.flip(-1).cumsum(-1).flip(-1)


def fmeasure_curves(fg: Tensor, bg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Precision, recall and F-measure at thresholds 0..255 per image.

    Args:
        fg: Bx256 quantised counts inside the GT.
        bg: Bx256 quantised counts outside the GT.

    Returns:
        ``(precision, recall, f)``: float64 Bx256, index ``t`` = threshold ``t``.
    """
    tp = _at_or_above(fg)
    pos = tp + _at_or_above(bg)
    pos = torch.where(pos == 0, torch.ones_like(pos), pos)
    total = fg.sum(dim=1, keepdim=True).clamp_min(1)
    precision = tp.double() / pos.double()
    recall = tp.double() / total.double()
    num = (1 + F_BETA2) * precision * recall
    den = torch.where(num == 0, torch.ones_like(num), F_BETA2 * precision + recall)
    return precision, recall, num / den


def enhanced_alignment(fg_fg: Tensor, fg_bg: Tensor, gt_fg: Tensor, size: int) -> Tensor:
    """E-measure from counts, pysodmetrics' closed form (``generate_parts_numel_combinations``).

    Args:
        fg_fg: Predicted-foreground pixels inside the GT (int64, any shape ``S``).
        fg_bg: Predicted-foreground pixels outside the GT (same shape).
        gt_fg: GT foreground pixels, broadcastable to ``S``.
        size: Pixels per image.

    Returns:
        float64 E-measure, shape ``S``.
    """
    gt_fg = gt_fg.expand_as(fg_fg)
    fg_all = fg_fg + fg_bg
    bg_all = size - fg_all
    bg_fg = gt_fg - fg_fg
    bg_bg = bg_all - bg_fg
    mean_pred = fg_all.double() / size
    mean_gt = gt_fg.double() / size
    dp_fg, dp_bg = 1 - mean_pred, 0 - mean_pred
    dg_fg, dg_bg = 1 - mean_gt, 0 - mean_gt
    total = None
    for numel, a, b in (
        (fg_fg, dp_fg, dg_fg),
        (fg_bg, dp_fg, dg_bg),
        (bg_fg, dp_bg, dg_fg),
        (bg_bg, dp_bg, dg_bg),
    ):
        align = 2 * (a * b) / (a * a + b * b + EPS)
        part = (align + 1) * (align + 1) / 4 * numel.double()
        total = part if total is None else total + part
    total = torch.where(gt_fg == 0, bg_all.double(), total)
    total = torch.where(gt_fg == size, fg_all.double(), total)
    return total / (size - 1 + EPS)


def emeasure_curve(fg: Tensor, bg: Tensor) -> Tensor:
    """E-measure at thresholds 0..255 per image.

    Args:
        fg: Bx256 quantised counts inside the GT.
        bg: Bx256 quantised counts outside the GT.

    Returns:
        float64 Bx256, index ``t`` = threshold ``t``.
    """
    size = int(fg[0].sum() + bg[0].sum())
    gt_fg = fg.sum(dim=1, keepdim=True)
    return enhanced_alignment(_at_or_above(fg), _at_or_above(bg), gt_fg, size)


def adaptive_threshold_counts(hist: Tensor, lut: Tensor) -> tuple[Tensor, Tensor]:
    """Counts at the adaptive threshold ``min(2 * mean(pred), 1)``.

    Args:
        hist: Bx256x2 histogram.
        lut: Bx256 normalised values.

    Returns:
        ``(fg_fg, fg_bg)``: int64 B, predicted-foreground pixels inside and outside the GT.
    """
    count = hist.sum(dim=-1)
    n = count.sum(dim=1).double()
    mean = (count.double() * lut).sum(dim=1) / n
    thr = torch.clamp(2 * mean, max=1.0).unsqueeze(1)
    on = lut >= thr
    fg_fg = (hist[..., 1] * on).sum(dim=1)
    fg_bg = (hist[..., 0] * on).sum(dim=1)
    return fg_fg, fg_bg


def adaptive_fmeasure(fg_fg: Tensor, fg_bg: Tensor, gt_fg: Tensor) -> Tensor:
    """Adaptive F-measure from the counts at the adaptive threshold.

    Args:
        fg_fg: B predicted-foreground pixels inside the GT.
        fg_bg: B predicted-foreground pixels outside the GT.
        gt_fg: B GT foreground pixels.

    Returns:
        float64 B.
    """
    inter = fg_fg.double()
    pre = inter / (fg_fg + fg_bg).clamp_min(1).double()
    rec = inter / gt_fg.clamp_min(1).double()
    fm = (1 + F_BETA2) * pre * rec / (F_BETA2 * pre + rec)
    return torch.where(fg_fg == 0, torch.zeros_like(fm), fm)


def adaptive_emeasure(fg_fg: Tensor, fg_bg: Tensor, gt_fg: Tensor, size: int) -> Tensor:
    """Adaptive E-measure from the counts at the adaptive threshold.

    Args:
        fg_fg: B predicted-foreground pixels inside the GT.
        fg_bg: B predicted-foreground pixels outside the GT.
        gt_fg: B GT foreground pixels.
        size: Pixels per image.

    Returns:
        float64 B.
    """
    return enhanced_alignment(fg_fg, fg_bg, gt_fg, size)


@lru_cache(maxsize=4096)
def _numpy_constant_mean_is_exact(
    value: float, shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]
) -> bool:
    """Whether numpy's ``mean`` of a constant quadrant view returns the constant exactly.

    pysodmetrics computes the SSIM of ``pred[r0:r1, c0:c1]`` of a C-contiguous float64 image;
    numpy's pairwise summation order depends only on the view's shape and strides, so the same
    view of a constant array reproduces its round-off.
    """
    full = np.full(shape, value, dtype=np.float64)
    return bool(full[rows[0] : rows[1], cols[0] : cols[1]].mean() == value)


def _ssim_from_hist(hq: Tensor, lut: Tensor) -> Tensor:
    """pysodmetrics' SSIM of each quadrant from its joint histogram (Bx4x256x2 -> Bx4)."""
    cnt = hq.sum(dim=-1).double()
    h1 = hq[..., 1].double()
    h0 = hq[..., 0].double()
    n = cnt.sum(dim=-1)
    n1 = h1.sum(dim=-1)
    n0 = h0.sum(dim=-1)
    safe_n = torch.where(n == 0, torch.ones_like(n), n)
    lut4 = lut.unsqueeze(1)
    x = (cnt * lut4).sum(dim=-1) / safe_n
    y = n1 / safe_n
    dx = lut4 - x.unsqueeze(-1)
    denom = n - 1 + EPS
    sigma_x = (cnt * dx * dx).sum(dim=-1) / denom
    sigma_y = (n1 * (1 - y) * (1 - y) + n0 * y * y) / denom
    sigma_xy = ((h1 * dx).sum(dim=-1) * (1 - y) + (h0 * dx).sum(dim=-1) * (0 - y)) / denom
    alpha = 4 * x * y * sigma_xy
    beta = (x * x + y * y) * (sigma_x + sigma_y)
    degenerate = torch.where(beta == 0, torch.ones_like(beta), torch.zeros_like(beta))
    score = torch.where(alpha != 0, alpha / (beta + EPS), degenerate)
    return torch.where(n == 0, torch.zeros_like(score), score)


def smeasure(pred: Tensor, gt: Tensor, lut: Tensor | None = None) -> Tensor:
    """S-measure (alpha = 0.5) per image.

    Args:
        pred: ``uint8`` BxHxW.
        gt: ``bool`` BxHxW.
        lut: Optional Bx256 normalised values (computed when missing).

    Returns:
        float64 B.
    """
    hq, cy, cx = quadrant_histogram(pred, gt)
    if lut is None:
        lut = normalization_lut(hq.sum(dim=1))
    return smeasure_from_quadrants(hq, cy, cx, lut, (pred.shape[1], pred.shape[2]))


def smeasure_from_quadrants(
    hq: Tensor, cy: Tensor, cx: Tensor, lut: Tensor, shape: tuple[int, int]
) -> Tensor:
    """S-measure per image from the outputs of :func:`quadrant_histogram`.

    Args:
        hq: Bx4x256x2 quadrant histograms.
        cy: B split rows.
        cx: B split columns.
        lut: Bx256 normalised values.
        shape: ``(H, W)`` of the images.

    Returns:
        float64 B.
    """
    h, w = shape
    area = h * w
    hist = hq.sum(dim=1)
    h1 = hist[..., 1].double()
    h0 = hist[..., 0].double()
    n1 = h1.sum(dim=1)
    n0 = h0.sum(dim=1)
    y = n1 / area

    # object score: foreground on pred, background on 1 - pred
    def s_object(weights: Tensor, values: Tensor, n: Tensor) -> Tensor:
        safe = n.clamp_min(1)
        mean = (weights * values).sum(dim=1) / safe
        var = (weights * (values - mean.unsqueeze(1)) ** 2).sum(dim=1) / (n - 1).clamp_min(1)
        std = torch.where(n > 1, torch.sqrt(var), torch.zeros_like(var))
        return 2 * mean / (mean * mean + 1 + std + EPS)

    obj = s_object(h1, lut, n1) * y + s_object(h0, 1 - lut, n0) * (1 - y)

    ssim = _ssim_from_hist(hq, lut)
    ssim = _fix_constant_quadrants(ssim, hq, lut, cy, cx, (h, w))
    w_lt = (cx * cy).double() / area
    w_rt = (cy * (w - cx)).double() / area
    w_lb = ((h - cy) * cx).double() / area
    w_rb = 1 - w_lt - w_rt - w_lb
    region = ssim[:, 0] * w_lt + ssim[:, 1] * w_rt + ssim[:, 2] * w_lb + ssim[:, 3] * w_rb

    sm = torch.clamp(obj * S_ALPHA + region * (1 - S_ALPHA), min=0)
    mean_pred = (hist.sum(dim=-1).double() * lut).sum(dim=1) / area
    sm = torch.where(n1 == 0, 1 - mean_pred, sm)
    return torch.where(n0 == 0, mean_pred, sm)


def _fix_constant_quadrants(
    ssim: Tensor, hq: Tensor, lut: Tensor, cy: Tensor, cx: Tensor, shape: tuple[int, int]
) -> Tensor:
    """Resolve 0/0 SSIMs (constant pred and constant GT in a quadrant) the way numpy does."""
    cnt = hq.sum(dim=-1)
    n = cnt.sum(dim=-1)
    n1 = hq[..., 1].sum(dim=-1)
    one_value = (cnt > 0).sum(dim=-1) == 1
    const_gt = (n1 == 0) | (n1 == n)
    value = (cnt.double() * lut.unsqueeze(1)).sum(dim=-1) / n.clamp_min(1).double()
    # a constant 0 is summed exactly by numpy as well; only non-zero constants are ambiguous
    suspect = one_value & const_gt & (n > 0) & (value != 0)
    if not bool(suspect.any()):
        return ssim
    h, w = shape
    ssim = ssim.clone()
    for bi, qi in suspect.nonzero().tolist():
        r = int(cy[bi])
        c = int(cx[bi])
        rows = (0, r) if qi < 2 else (r, h)
        cols = (0, c) if qi % 2 == 0 else (c, w)
        v = float(lut[bi, int((cnt[bi, qi] > 0).nonzero()[0])])
        ssim[bi, qi] = 1.0 if _numpy_constant_mean_is_exact(v, (h, w), rows, cols) else 0.0
    return ssim


@lru_cache(maxsize=1)
def _matlab_gauss7() -> np.ndarray:
    """``fspecial('gaussian', 7, 5)`` as in pysodmetrics' ``matlab_style_gauss2D``."""
    m = 3.0
    yy, xx = np.ogrid[-m : m + 1, -m : m + 1]
    k = np.exp(-(xx * xx + yy * yy) / (2 * 5.0 * 5.0))
    k[k < np.finfo(k.dtype).eps * k.max()] = 0
    return k / k.sum()


_LOG_HALF_OVER_5 = float(np.log(0.5) / 5)


def _weighted_fmeasure_one(pred: np.ndarray, gt: np.ndarray, lut: np.ndarray) -> float:
    """pysodmetrics' ``WeightedFmeasure.cal_wfm`` on one image, rearranged for speed.

    Same quantities, fewer full-size temporaries: the error map is gathered once, the distance
    weights are only evaluated outside the GT (the only place they are used), and the distances are
    rebuilt from the feature transform exactly as scipy does (square root of an integer sum).
    """
    n_fg = np.count_nonzero(gt)
    if n_fg == 0:
        return 0.0
    h, w = gt.shape
    bg = ~gt
    ft = distance_transform_edt(bg, return_distances=False, return_indices=True)
    value = cv2.LUT(pred, lut)  # the normalised prediction, bit-identical to lut[pred]
    err = np.subtract(1.0, value, where=gt, out=value.copy())  # == |pred - gt|
    # every pixel takes the error of its nearest GT pixel (a GT pixel is its own nearest)
    fy, fx = ft[0], ft[1]
    flat = fy.astype(np.intp)
    flat *= w
    flat += fx
    err_t = np.take(err.ravel(), flat)
    ea = cv2.filter2D(err_t, cv2.CV_64F, _matlab_gauss7(), borderType=cv2.BORDER_CONSTANT)
    # inside the GT: min(E, EA)
    ew_fg_sum = np.minimum(ea, err, out=ea)[gt].sum()
    # outside: E * (2 - 0.5 ** (dist / 5))
    fy -= np.arange(h, dtype=fy.dtype)[:, None]
    fx -= np.arange(w, dtype=fx.dtype)[None, :]
    fy *= fy
    fx *= fx
    fy += fx
    weight = fy[bg].astype(np.float64)
    np.sqrt(weight, out=weight)
    weight *= _LOG_HALF_OVER_5
    np.exp(weight, out=weight)
    np.subtract(2.0, weight, out=weight)
    weight *= err[bg]
    fpw = weight.sum()
    tpw = n_fg - ew_fg_sum
    recall = 1 - ew_fg_sum / n_fg
    precision = tpw / (tpw + fpw + EPS)
    return float((1 + WF_BETA) * recall * precision / (recall + WF_BETA * precision + EPS))


def weighted_fmeasure(pred: Tensor, gt: Tensor, lut: Tensor | None = None) -> Tensor:
    """Weighted F-measure (beta = 1) per image, computed on the CPU with scipy and OpenCV.

    Args:
        pred: ``uint8`` BxHxW.
        gt: ``bool`` BxHxW.
        lut: Optional Bx256 normalised values (computed when missing).

    Returns:
        float64 B on the device of ``pred``.
    """
    if lut is None:
        lut = normalization_lut(pixel_histogram(pred, gt))
    pred_np = pred.cpu().numpy()
    gt_np = gt.cpu().numpy()
    lut_np = lut.cpu().numpy()
    out = [_weighted_fmeasure_one(pred_np[i], gt_np[i], lut_np[i]) for i in range(pred_np.shape[0])]
    return torch.tensor(out, dtype=torch.float64, device=pred.device)
