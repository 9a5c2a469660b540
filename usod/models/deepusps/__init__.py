"""DeepUSPS (Nguyen et al., NeurIPS 2019, seed 002): refine handcrafted saliency maps per method with
inter-image consistency, CRF'd historical moving averages and iterative self-supervision, then fuse them.

The module is :class:`DeepUSPSRefiner`; the pipeline that trains every network is
:mod:`usod.pipelines.deepusps` (``usod pipeline --config configs/pipeline/deepusps_synth.yaml``).
"""

from __future__ import annotations

from usod.models.deepusps.lightning_model import DEFAULT_MVA_CRF, DeepUSPSRefiner
from usod.models.deepusps.loss import FBetaLoss, binarize_targets, soft_f_beta
from usod.models.deepusps.torch_model import DeepUSPSModel

__all__ = [
    "DEFAULT_MVA_CRF",
    "DeepUSPSModel",
    "DeepUSPSRefiner",
    "FBetaLoss",
    "binarize_targets",
    "soft_f_beta",
]
