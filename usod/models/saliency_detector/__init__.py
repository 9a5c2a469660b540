"""Saliency detector: stage 2 of A2S (RAM detector, OLR), with the SPR and L_ms options of seed 000."""

from __future__ import annotations

from usod.models.saliency_detector.lightning_model import (
    LABEL_UPDATES,
    LOSSES,
    SaliencyDetector,
)
from usod.models.saliency_detector.loss import (
    BCESSIMIoULoss,
    IoUMultiScaleLoss,
    gaussian_window,
    iou_loss,
    ssim_map,
)
from usod.models.saliency_detector.refine import PixelAdaptiveRefiner
from usod.models.saliency_detector.torch_model import (
    ConvBlock,
    ResidualAttentionModule,
    SaliencyDetectorModel,
    split_levels,
)

__all__ = [
    "LABEL_UPDATES",
    "LOSSES",
    "BCESSIMIoULoss",
    "ConvBlock",
    "IoUMultiScaleLoss",
    "PixelAdaptiveRefiner",
    "ResidualAttentionModule",
    "SaliencyDetector",
    "SaliencyDetectorModel",
    "gaussian_window",
    "iou_loss",
    "split_levels",
    "ssim_map",
]
