"""Image operations used around the models: dense CRF and median-filter post-processing."""

from __future__ import annotations

from usod.ops.crf import (
    CRFParams,
    PostProcessConfig,
    dense_crf,
    median_filter,
    postprocess,
    postprocess_files,
    postprocess_folder,
    postprocess_many,
)

__all__ = [
    "CRFParams",
    "PostProcessConfig",
    "dense_crf",
    "median_filter",
    "postprocess",
    "postprocess_files",
    "postprocess_folder",
    "postprocess_many",
]
