"""The image-level soft F-beta loss of DeepUSPS (appendix A) and the pseudo-label binarisation (Sec. 3.1).

For a prediction ``p`` in [0, 1] and a binary target ``t`` of one image (sums over its pixels)::

    TP = sum(p t),  FP = sum(p (1 - t)),  FN = sum((1 - p) t)
    precision = TP / (TP + FP),  recall = TP / (TP + FN)
    F_beta = (1 + beta^2) precision recall / (beta^2 precision + recall),  L_beta = 1 - F_beta

The appendix calls ``FN`` "TN" but defines it as ``sum((1 - p) t)``, the missed salient pixels, which is
what recall needs; that definition is used. ``beta^2 = 0.3`` as in the paper's evaluation. ``F_beta`` is
computed in the equivalent form ``(1 + beta^2) TP / ((1 + beta^2) TP + beta^2 FN + FP)``, which stays
finite when a target or a prediction is empty (an empty target gives ``F = 0`` and no gradient).

With several targets per image (the fusion step, Sec. 3.3) the loss is ``L_en = mean_i L_beta^i`` over the
methods ``i``, then averaged over the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from usod.models.precision import float32_autocast_off

__all__ = ["FBetaLoss", "binarize_targets", "soft_f_beta"]


def soft_f_beta(pred: Tensor, target: Tensor, beta2: float = 0.3, eps: float = 1e-7) -> Tensor:
    """Soft F-beta of every image and target map.

    Args:
        pred: Bx1xHxW (or BxKxHxW) predictions in [0, 1].
        target: BxKxHxW targets (binary for the paper's loss; soft values are accepted).
        beta2: ``beta^2``.
        eps: Added to the denominator.

    Returns:
        BxK F-beta values in [0, 1].
    """
    if pred.ndim != 4 or target.ndim != 4:
        raise ValueError(f"expected 4-D tensors, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.shape[0] != target.shape[0] or pred.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} do not match")
    if pred.shape[1] not in (1, target.shape[1]):
        raise ValueError(f"prediction has {pred.shape[1]} channels, target {target.shape[1]}")
    pred, target = pred.float(), target.float()
    tp = (pred * target).sum(dim=(2, 3))
    fp = (pred * (1.0 - target)).sum(dim=(2, 3))
    fn = ((1.0 - pred) * target).sum(dim=(2, 3))
    return (1.0 + beta2) * tp / ((1.0 + beta2) * tp + beta2 * fn + fp + eps)


class FBetaLoss(nn.Module):
    """``L = 1 - F_beta`` per image, averaged over the target maps (``L_en``) and the batch.

    Args:
        beta2: ``beta^2`` (0.3).
    """

    def __init__(self, beta2: float = 0.3) -> None:
        super().__init__()
        if beta2 <= 0:
            raise ValueError(f"beta2 must be positive, got {beta2}")
        self.beta2 = float(beta2)

    @float32_autocast_off
    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Loss of Bx1xHxW probabilities against BxKxHxW binary targets."""
        return (1.0 - soft_f_beta(pred, target, self.beta2)).mean()


@torch.no_grad()
def binarize_targets(maps: Tensor, threshold: float | None = None, factor: float = 1.5) -> Tensor:
    """Binary targets from BxKxHxW maps in [0, 1].

    ``threshold=None`` is the paper's rule for handcrafted maps, ``l = 1`` where ``M > gamma`` with
    ``gamma = factor * mean(M)`` of each map (``factor = 1.5``); a number thresholds every map at it (0.5 for
    the MVA maps of later rounds).
    """
    if threshold is None:
        gamma = factor * maps.float().mean(dim=(2, 3), keepdim=True)
        return (maps > gamma).float()
    return (maps > threshold).float()
