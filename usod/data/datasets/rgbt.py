"""RGB-T (visible + thermal) salient object detection datasets: VT821, VT1000, VT5000.

The releases store aligned visible and thermal images in parallel folders ``<root>/{RGB,T,GT}``, paired by
file stem; VT5000 is split into ``Train/`` and ``Test/``. Capitalisation variants are accepted
(:data:`COMMON_RGBT_LAYOUTS`). Thermal images are read like RGB images (HxWx3 uint8); ground truth may be JPEG
(VT821) or PNG.
"""

from __future__ import annotations

from typing import ClassVar

from usod.data.datasets.base import FolderLayout, PairedFolderDataset

__all__ = ["COMMON_RGBT_LAYOUTS", "VT821", "VT1000", "VT5000"]

#: Layouts accepted by every RGB-T dataset, in order of preference.
COMMON_RGBT_LAYOUTS: tuple[FolderLayout, ...] = (
    FolderLayout("RGB", thermal=("T", "t", "Thermal", "thermal"), mask=("GT", "gt")),
    FolderLayout("Image", thermal=("T", "Thermal"), mask=("GT", "Mask")),
    FolderLayout("image", thermal=("t", "thermal", "T"), mask=("mask", "gt", "GT")),
    FolderLayout("images", thermal=("thermal", "T"), mask=("masks", "gt", "GT")),
)


class _RGBTDataset(PairedFolderDataset):
    modality: ClassVar[str] = "rgbt"
    requires: ClassVar[tuple[str, ...]] = ("thermal",)
    variants: ClassVar[tuple[FolderLayout, ...]] = COMMON_RGBT_LAYOUTS
    layout: ClassVar[str] = "RGB/, T/, GT/"


class VT821(_RGBTDataset):
    """VT821 (Wang et al., IGTA 2018): 821 registered visible-thermal pairs.

    Dataset format::

        <root>/
            RGB/*.jpg
            T/*.jpg
            GT/*.jpg|png

    Also accepted: ``Image/``+``T/``+``GT/``, ``image/``+``t/``+``mask/``,
    ``images/``+``thermal/``+``masks/``.
    """

    name = "vt821"


class VT1000(_RGBTDataset):
    """VT1000 (Tu et al., TMM 2019): 1,000 visible-thermal pairs.

    Dataset format::

        <root>/
            RGB/*.jpg
            T/*.jpg
            GT/*.png

    Also accepted: ``Image/``+``T/``+``GT/``, ``image/``+``t/``+``mask/``,
    ``images/``+``thermal/``+``masks/``.
    """

    name = "vt1000"


class VT5000(_RGBTDataset):
    """VT5000 (Tu et al., TMM 2022): 2,500 training and 2,500 test visible-thermal pairs.

    Dataset format::

        <root>/
            Train/
                RGB/*.jpg
                T/*.jpg
                GT/*.png
            Test/
                RGB/ T/ GT/

    Splits ``train`` (default) and ``test``; ``root`` may also be ``Train``/``Test`` itself. Lower-case
    ``train/``/``test/`` and the folder variants of VT821 are accepted.
    """

    name = "vt5000"
    splits = ("train", "test")
    default_split = "train"
    split_dirs: ClassVar[dict[str, tuple[str, ...]]] = {"train": ("Train", "train"), "test": ("Test", "test")}
    root_may_be_split = True
    layout = "{Train,Test}/{RGB,T,GT}/"
