"""Salient object detection metrics (torchmetrics), matching pysodmetrics 1.6.2.

See :mod:`usod.metrics.functional` for the exact conventions and :mod:`usod.metrics.sod` for the
``Metric`` classes.
"""

from __future__ import annotations

from usod.metrics.functional import binarize_target, quantize_prediction
from usod.metrics.sod import MAE, EMeasure, FMeasure, SMeasure, SODMetrics, WeightedFMeasure

#: The SOD scores, in the order tables show them (logged as ``val_<key>``, ``test_<key>``, ``label_<key>``).
SOD_KEYS: tuple[str, ...] = (
    "mae",
    "max_f",
    "mean_f",
    "adp_f",
    "max_e",
    "mean_e",
    "adp_e",
    "s_measure",
    "w_f",
)

#: Keys of ``SODMetrics().compute()`` and of the per-method dicts written by ``usod evaluate``.
SCORE_KEYS: tuple[str, ...] = (*SOD_KEYS, "n")

__all__ = [
    "MAE",
    "SCORE_KEYS",
    "SOD_KEYS",
    "EMeasure",
    "FMeasure",
    "SMeasure",
    "SODMetrics",
    "WeightedFMeasure",
    "binarize_target",
    "quantize_prediction",
]
