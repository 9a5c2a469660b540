"""One thin datamodule per modality on the shared base, and the dataset name -> datamodule table."""

from __future__ import annotations

from typing import Any

from usod.data.datamodules.base import SODDataModule
from usod.data.datasets import DATASETS, get_dataset_class

__all__ = [
    "DATAMODULES",
    "RGBDDataModule",
    "RGBDataModule",
    "RGBTDataModule",
    "RemoteSensingDataModule",
    "VideoDataModule",
    "get_datamodule",
]


class RGBDataModule(SODDataModule):
    """RGB still images (DUTS, ECSSD, DUT-OMRON, HKU-IS, PASCAL-S, MSRA-B, SOD, folder)."""

    modality = "rgb"


class RGBDDataModule(SODDataModule):
    """RGB-D images: ``depth`` rendered as a 3-channel map beside ``image`` (NJU2K, NLPR, SIP, STERE, DES)."""

    modality = "rgbd"


class RGBTDataModule(SODDataModule):
    """RGB-thermal pairs: ``thermal`` beside ``image`` (VT821, VT1000, VT5000)."""

    modality = "rgbt"


class VideoDataModule(SODDataModule):
    """Video frames, optionally with optical flow (DAVIS, DAVSOD, SegTrack-V2, FBMS)."""

    modality = "video"


class RemoteSensingDataModule(SODDataModule):
    """Optical remote-sensing images (ORSSD, EORSSD, ORS-4199)."""

    modality = "rs"


_BY_MODALITY: dict[str, type[SODDataModule]] = {
    cls.modality: cls  # type: ignore[misc]
    for cls in (RGBDataModule, RGBDDataModule, RGBTDataModule, VideoDataModule, RemoteSensingDataModule)
}

#: Dataset name -> the datamodule class serving it.
DATAMODULES: dict[str, type[SODDataModule]] = {
    name: _BY_MODALITY[cls.modality] for name, cls in DATASETS.items()
}


def get_datamodule(dataset: str, **kwargs: Any) -> SODDataModule:
    """Build the datamodule of the dataset registered as ``dataset`` (aliases allowed)."""
    cls = _BY_MODALITY[get_dataset_class(dataset).modality]
    return cls(dataset=dataset, **kwargs)
