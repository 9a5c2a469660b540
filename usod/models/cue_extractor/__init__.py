"""Saliency cue extractor: stage 1 of A2S (ADB loss), with the PCL-SD loss of the unified USOD framework."""

from __future__ import annotations

from usod.models.cue_extractor.lightning_model import CueExtractor, FeatureCache
from usod.models.cue_extractor.loss import ADBLoss, PCLSDLoss, keep_random_pixels, pcl_threshold
from usod.models.cue_extractor.torch_model import (
    SIGN_RULES,
    AdaptationHead,
    CueExtractorModel,
    CueExtractorOutput,
    SEBlock,
    adaptive_decision_values,
    foreground_sign,
    saliency_from_activation,
)

__all__ = [
    "SIGN_RULES",
    "ADBLoss",
    "AdaptationHead",
    "CueExtractor",
    "CueExtractorModel",
    "CueExtractorOutput",
    "FeatureCache",
    "PCLSDLoss",
    "SEBlock",
    "adaptive_decision_values",
    "foreground_sign",
    "keep_random_pixels",
    "pcl_threshold",
    "saliency_from_activation",
]
