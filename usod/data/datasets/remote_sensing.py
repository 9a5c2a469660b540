"""Optical remote sensing (ORSI) salient object detection datasets: ORSSD, EORSSD, ORSI-4199.

Images and masks are paired by file stem. Both ORSSD-style releases and the ORSI-4199 release are split into a
training and a test part; ``split=None`` means ``train``.
"""

from __future__ import annotations

from typing import ClassVar

from usod.data.datasets.base import FolderLayout, PairedFolderDataset

__all__ = ["EORSSD", "ORS4199", "ORSSD"]


class _ORSSDStyle(PairedFolderDataset):
    modality: ClassVar[str] = "rs"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    default_split: ClassVar[str | None] = "train"
    layout: ClassVar[str] = "{train,test}-images/, {train,test}-labels/"

    def candidate_layouts(self, split: str | None) -> list[FolderLayout]:
        s = split or "train"
        return [
            FolderLayout(f"{s}-images", mask=(f"{s}-labels", f"{s}-masks")),
            FolderLayout(f"{s}/images", mask=(f"{s}/labels", f"{s}/gt", f"{s}/masks")),
        ]


class ORSSD(_ORSSDStyle):
    """ORSSD (Li et al., TGRS 2019): 600 training and 200 test remote sensing images.

    Dataset format::

        <root>/
            train-images/*.jpg
            train-labels/*.png
            test-images/*.jpg
            test-labels/*.png

    ``<root>/{train,test}/{images,labels}/`` is accepted too.
    """

    name = "orssd"


class EORSSD(_ORSSDStyle):
    """EORSSD (Zhang et al., TIP 2021): 1,400 training and 600 test remote sensing images.

    Dataset format::

        <root>/
            train-images/*.jpg
            train-labels/*.png
            test-images/*.jpg
            test-labels/*.png

    ``<root>/{train,test}/{images,labels}/`` is accepted too.
    """

    name = "eorssd"


class ORS4199(PairedFolderDataset):
    """ORSI-4199 (Tu et al., TGRS 2022): 2,000 training and 2,199 test remote sensing images.

    Dataset format::

        <root>/
            train/                   # or trainset/
                images/*.jpg         # or Images/, imgs/
                gt/*.png             # or GT/, masks/, labels/
            test/                    # or testset/
                images/ gt/

    ``root`` may also be the split folder itself. Splits ``train`` (default) and ``test``.
    """

    name = "ors-4199"
    modality = "rs"
    splits = ("train", "test")
    default_split = "train"
    split_dirs: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("train", "trainset"),
        "test": ("test", "testset"),
    }
    variants = (
        FolderLayout("images", mask=("gt", "GT", "masks", "labels")),
        FolderLayout("Images", mask=("GT", "gt", "Masks")),
        FolderLayout("imgs", mask=("gt", "GT")),
    )
    root_may_be_split = True
    layout = "{train,test}/{images,gt}/"
