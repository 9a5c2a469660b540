"""LightningDataModules: one shared base, one thin subclass per modality, and their registry.

``DATAMODULES`` maps every registered dataset name to the datamodule class that serves it, so that
``usod list datamodules`` and configs agree on one name -> class table.
"""

from __future__ import annotations

from usod.data.datamodules.base import SODDataModule
from usod.data.datamodules.captions import CaptionDataModule
from usod.data.datamodules.modalities import (
    DATAMODULES,
    RemoteSensingDataModule,
    RGBDataModule,
    RGBDDataModule,
    RGBTDataModule,
    VideoDataModule,
    get_datamodule,
)
from usod.data.datamodules.stacked import StackedLabelDataModule, StackedLabels

__all__ = [
    "DATAMODULES",
    "CaptionDataModule",
    "RGBDDataModule",
    "RGBDataModule",
    "RGBTDataModule",
    "RemoteSensingDataModule",
    "SODDataModule",
    "StackedLabelDataModule",
    "StackedLabels",
    "VideoDataModule",
    "get_datamodule",
]
