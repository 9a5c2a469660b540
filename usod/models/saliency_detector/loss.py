"""Losses of the stage-2 saliency detector.

* :class:`BCESSIMIoULoss`: ``L_det = L_B + L_S + L_I`` of A2S (eq. 12, after BASNet): binary cross-entropy,
  ``1 - SSIM`` (11x11 Gaussian window, sigma 1.5, ``C1 = 0.01^2``, ``C2 = 0.03^2``, zero padding) and the
  soft IoU loss ``1 - sum(p g) / sum(p + g - p g)``, each averaged over the batch.
* :class:`IoUMultiScaleLoss`: IoU + multi-scale consistency ``L_ms`` of the unified USOD framework (seed
  000). The seed names ``L_ms`` without a formula; this follows the authors' code (``A2S-v3``,
  ``methods/midnet/loss.py``): the image is also predicted at a second scale and

      ``L = IoU(Y, G) + w_s * IoU(Y_s, G_s) + w_c * mean((Y_s - resize(Y).detach())^2)``

  with ``G_s`` the nearest-neighbour resized label and ``resize(Y)`` the bilinearly resized logits of the
  full-scale view (then ``sigmoid``), detached so the consistency term only moves the rescaled view.
  Defaults ``w_s = 0.5``, ``w_c = 1`` are the reference code's.

All losses take *logits* (``Y`` before the sigmoid); the sigmoid is applied inside (BCE uses the
numerically stable ``binary_cross_entropy_with_logits``, equal to ``BCE(sigmoid(Y), G)``). Like the authors'
code, targets are binarised at 0.5 by default (``binarize=True``): online-updated labels are soft, and the
loss trains on their 0.5 level set. ``binarize=False`` trains on the soft values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usod.models.precision import float32_autocast_off

__all__ = ["BCESSIMIoULoss", "IoUMultiScaleLoss", "gaussian_window", "iou_loss", "ssim_map"]


def _check(pred: Tensor, target: Tensor) -> None:
    if pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(f"predictions must have shape Bx1xHxW, got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target shape {tuple(target.shape)} differs from prediction {tuple(pred.shape)}")


def gaussian_window(size: int = 11, sigma: float = 1.5, device: torch.device | None = None) -> Tensor:
    """Normalised 2-D Gaussian window, shape 1x1xsize x size."""
    x = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_map(x: Tensor, y: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-pixel SSIM of two Bx1xHxW maps in [0, 1] (Gaussian-weighted local statistics, zero padding)."""
    window = gaussian_window(window_size, sigma, x.device).to(x.dtype)
    pad = window_size // 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window, padding=pad)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def iou_loss(prob: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """Soft IoU loss ``1 - sum(p g) / (sum(p + g - p g) + eps)`` per image, averaged over the batch."""
    inter = (prob * target).sum(dim=(1, 2, 3))
    union = (prob + target - prob * target).sum(dim=(1, 2, 3))
    return (1.0 - inter / (union + eps)).mean()


def _target(target: Tensor, binarize: bool) -> Tensor:
    target = target.float()
    return (target > 0.5).float() if binarize else target


class BCESSIMIoULoss(nn.Module):
    """``L_det = BCE + (1 - SSIM) + IoU`` (A2S eq. 12).

    Args:
        binarize: Threshold the target at 0.5 first (the authors' code does).
        window_size: SSIM window size.
    """

    #: The training step needs no second, rescaled view.
    multi_scale = False

    def __init__(self, binarize: bool = True, window_size: int = 11) -> None:
        super().__init__()
        self.binarize = binarize
        self.window_size = window_size

    @float32_autocast_off
    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The three terms ``bce``, ``ssim`` (``1 - mean SSIM``) and ``iou``."""
        _check(logits, target)
        g = _target(target, self.binarize)
        prob = torch.sigmoid(logits)
        return {
            "bce": F.binary_cross_entropy_with_logits(logits, g),
            "ssim": 1.0 - ssim_map(prob, g, self.window_size).mean(),
            "iou": iou_loss(prob, g),
        }

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of Bx1xHxW logits against a Bx1xHxW target in [0, 1]."""
        return sum(self.terms(logits, target).values())  # type: ignore[return-value]


class IoUMultiScaleLoss(nn.Module):
    """IoU + multi-scale consistency (``L_iou + L_ms`` of seed 000, as in the authors' code).

    Args:
        scale_weight: Weight ``w_s`` of the IoU loss of the rescaled view.
        consistency_weight: Weight ``w_c`` of the squared difference between the two views.
        binarize: Threshold the target at 0.5 first (the authors' code does).
    """

    #: The training step passes the logits of a second, rescaled view to :meth:`terms`.
    multi_scale = True

    def __init__(self, scale_weight: float = 0.5, consistency_weight: float = 1.0, binarize: bool = True):
        super().__init__()
        if scale_weight < 0 or consistency_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got {scale_weight}, {consistency_weight}")
        self.scale_weight = scale_weight
        self.consistency_weight = consistency_weight
        self.binarize = binarize

    @float32_autocast_off
    def terms(self, logits: Tensor, target: Tensor, logits_scaled: Tensor | None) -> dict[str, Tensor]:
        """``iou`` of the main view and, with a rescaled view, ``iou_scaled`` and ``consistency``."""
        _check(logits, target)
        g = _target(target, self.binarize)
        out = {"iou": iou_loss(torch.sigmoid(logits), g)}
        if logits_scaled is None:
            return out
        if logits_scaled.ndim != 4 or logits_scaled.shape[:2] != logits.shape[:2]:
            raise ValueError(
                f"rescaled logits must have shape {tuple(logits.shape[:2])}xhxw, "
                f"got {tuple(logits_scaled.shape)}"
            )
        size = logits_scaled.shape[-2:]
        g_s = _target(F.interpolate(target.float(), size=size, mode="nearest"), self.binarize)
        prob_s = torch.sigmoid(logits_scaled)
        ref = torch.sigmoid(F.interpolate(logits.detach(), size=size, mode="bilinear", align_corners=True))
        out["iou_scaled"] = self.scale_weight * iou_loss(prob_s, g_s)
        out["consistency"] = self.consistency_weight * ((prob_s - ref) ** 2).mean()
        return out

    def forward(self, logits: Tensor, target: Tensor, logits_scaled: Tensor | None = None) -> Tensor:
        """Loss of the main view (and of a rescaled view of the same images, if given)."""
        return sum(self.terms(logits, target, logits_scaled).values())  # type: ignore[return-value]
