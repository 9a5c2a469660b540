"""DeepUSPS (Nguyen et al., NeurIPS 2019, seed 002): refine handcrafted saliency maps per method with
inter-image consistency, CRF'd historical moving averages and iterative self-supervision, then fuse them."""

from __future__ import annotations

from usod.models.deepusps.data import StackedLabelDataModule, StackedLabels
from usod.models.deepusps.driver import DeepUSPSConfig, run_deepusps
from usod.models.deepusps.lightning_model import DEFAULT_MVA_CRF, DeepUSPSRefiner, MVARoundWriter
from usod.models.deepusps.loss import FBetaLoss, binarize_targets, soft_f_beta
from usod.models.deepusps.torch_model import DeepUSPSModel

__all__ = [
    "DEFAULT_MVA_CRF",
    "DeepUSPSConfig",
    "DeepUSPSModel",
    "DeepUSPSRefiner",
    "FBetaLoss",
    "MVARoundWriter",
    "StackedLabelDataModule",
    "StackedLabels",
    "binarize_targets",
    "run_deepusps",
    "soft_f_beta",
]
