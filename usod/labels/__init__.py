"""Pseudo labels on disk: a round-based store and a Lightning prediction writer.

The writer pulls in Lightning, so it is imported lazily: worker processes that only need the store (for
example the CRF post-processing pool) start quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from usod.labels.store import (
    ManifestError,
    PseudoLabelStore,
    atomic_write_bytes,
    read_png_gray,
    to_uint8_label,
    write_png_atomic,
)

if TYPE_CHECKING:
    from usod.labels.writer import IdSubset, PseudoLabelWriter, dataset_ids, exclude_ids, remaining

_WRITER_NAMES = ("IdSubset", "PseudoLabelWriter", "dataset_ids", "exclude_ids", "remaining")

__all__ = [
    "IdSubset",
    "ManifestError",
    "PseudoLabelStore",
    "PseudoLabelWriter",
    "atomic_write_bytes",
    "dataset_ids",
    "exclude_ids",
    "read_png_gray",
    "remaining",
    "to_uint8_label",
    "write_png_atomic",
]


def __getattr__(name: str) -> Any:
    if name in _WRITER_NAMES:
        from usod.labels import writer

        return getattr(writer, name)
    raise AttributeError(f"module 'usod.labels' has no attribute {name!r}")
