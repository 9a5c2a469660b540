"""Pseudo labels: the on-disk store, the life of a label round, the in-memory bank of online updates, writers.

* :mod:`usod.labels.store`: :class:`PseudoLabelStore`, rounds of one PNG per sample with a manifest;
* :mod:`usod.labels.writer`: :class:`PseudoLabelWriter`, a Lightning prediction writer into a round;
* :mod:`usod.labels.rounds`: :func:`write_label_round` (predict + post-process a round, resumable) and
  :class:`LabelRoundWriter` (a module's label bank as a round);
* :mod:`usod.labels.bank`: :class:`LabelBank`, the current labels that online label updates change;
* :mod:`usod.labels.quality`: scoring label rounds against ground truth while training.

Everything but the store pulls in Lightning or torch, so it is imported lazily: worker processes that only
need the store (for example the CRF post-processing pool) start quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from usod.labels.store import (
    ManifestError,
    PseudoLabelStore,
    atomic_write_bytes,
    read_png_gray,
    to_uint8_label,
    write_label_png,
)

if TYPE_CHECKING:
    from usod.labels.bank import LabelBank
    from usod.labels.rounds import LabelRoundResult, LabelRoundWriter, write_label_round
    from usod.labels.writer import IdSubset, PseudoLabelWriter, dataset_ids, exclude_ids, remaining

#: Lazily exported name -> its module.
_LAZY = {
    "IdSubset": "writer",
    "PseudoLabelWriter": "writer",
    "dataset_ids": "writer",
    "exclude_ids": "writer",
    "remaining": "writer",
    "LabelBank": "bank",
    "LabelRoundResult": "rounds",
    "LabelRoundWriter": "rounds",
    "write_label_round": "rounds",
}

__all__ = [
    "IdSubset",
    "LabelBank",
    "LabelRoundResult",
    "LabelRoundWriter",
    "ManifestError",
    "PseudoLabelStore",
    "PseudoLabelWriter",
    "atomic_write_bytes",
    "dataset_ids",
    "exclude_ids",
    "read_png_gray",
    "remaining",
    "to_uint8_label",
    "write_label_round",
    "write_label_png",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"usod.labels.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'usod.labels' has no attribute {name!r}")
