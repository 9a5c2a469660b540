"""Registry of the named SOD datasets (five modalities: rgb, rgbd, rgbt, video, rs)."""

from __future__ import annotations

from typing import Any

from usod.data.datasets.base import FolderLayout, PairedFolderDataset, SampleFiles, SODDataset
from usod.data.datasets.remote_sensing import EORSSD, ORS4199, ORSSD
from usod.data.datasets.rgb import DUTOMRON, DUTS, ECSSD, HKUIS, MSRAB, PASCALS, SOD, ImageFolder
from usod.data.datasets.rgbd import DES, NJU2K, NLPR, SIP, STERE
from usod.data.datasets.rgbt import VT821, VT1000, VT5000
from usod.data.datasets.video import DAVIS, DAVSOD, FBMS, SegTrackV2, VideoDataset

__all__ = [
    "ALIASES",
    "DATASETS",
    "FolderLayout",
    "PairedFolderDataset",
    "SODDataset",
    "SampleFiles",
    "VideoDataset",
    "get_dataset",
    "get_dataset_class",
    "list_datasets",
]

#: Lower-case dataset name -> class.
DATASETS: dict[str, type[SODDataset]] = {
    cls.name: cls
    for cls in (
        # rgb
        DUTS,
        ECSSD,
        DUTOMRON,
        HKUIS,
        PASCALS,
        MSRAB,
        SOD,
        ImageFolder,
        # rgbd
        NJU2K,
        NLPR,
        SIP,
        STERE,
        DES,
        # rgbt
        VT821,
        VT1000,
        VT5000,
        # video
        DAVIS,
        DAVSOD,
        SegTrackV2,
        FBMS,
        # remote sensing
        ORSSD,
        EORSSD,
        ORS4199,
    )
}

#: Alternative name -> registered name.
ALIASES: dict[str, str] = {
    "njud": "nju2k",
    "nju2000": "nju2k",
    "rgbd135": "des",
    "dut-te": "duts",
    "dutomron": "dut-omron",
    "hkuis": "hku-is",
    "pascals": "pascal-s",
    "msrab": "msra-b",
    "segtrackv2": "segtrack-v2",
    "fbms-59": "fbms",
    "davis2016": "davis",
    "orsi-4199": "ors-4199",
    "ors4199": "ors-4199",
    "image-folder": "folder",
}


def get_dataset_class(name: str) -> type[SODDataset]:
    """The dataset class registered under ``name`` or one of its aliases (case-insensitive).

    Raises:
        KeyError: Unknown name; the message lists the known names.
    """
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise KeyError(
            f"unknown dataset {name!r}; known datasets: {known} (aliases: {', '.join(sorted(ALIASES))})"
        )
    return DATASETS[key]


def get_dataset(name: str, **kwargs: Any) -> SODDataset:
    """Build the dataset registered under ``name``; ``kwargs`` go to its constructor (``root``, ``split``,
    ...)."""
    return get_dataset_class(name)(**kwargs)


def list_datasets() -> list[tuple[str, str, str]]:
    """``(name, modality, layout)`` for every registered dataset, in registry order."""
    return [(name, cls.modality, cls.layout) for name, cls in DATASETS.items()]
