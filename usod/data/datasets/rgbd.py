"""RGB-D salient object detection datasets: NJU2K, NLPR, SIP, STERE, DES.

All of them are usually distributed in the common RGB-D SOD release layout ``<root>/{RGB,depth,GT}`` (also
used by the A2S code family), which every class accepts along with a few capitalisation variants
(:data:`COMMON_RGBD_LAYOUTS`). Images, depth maps and masks are paired by file stem. When the release is split
into training and test parts, ``split="train"``/``"test"`` loads ``<root>/train/...`` or ``<root>/test/...``
(also ``Train``/``Test`` and ``train_data``/``test_data``); without a split the root itself is the set.
"""

from __future__ import annotations

from typing import ClassVar

from usod.data.datasets.base import FolderLayout, PairedFolderDataset

__all__ = ["COMMON_RGBD_LAYOUTS", "DES", "NJU2K", "NLPR", "SIP", "STERE"]

#: Layouts accepted by every RGB-D dataset, in order of preference.
COMMON_RGBD_LAYOUTS: tuple[FolderLayout, ...] = (
    FolderLayout("RGB", depth=("depth", "Depth"), mask=("GT", "gt")),
    FolderLayout("Image", depth=("Depth", "depth"), mask=("GT", "Mask", "mask")),
    FolderLayout("image", depth=("depth",), mask=("mask", "gt", "GT")),
    FolderLayout("images", depth=("depths", "depth"), mask=("masks", "gt", "GT")),
    FolderLayout("Imgs", depth=("Depth", "depth"), mask=("GT",)),
)

_TREE = """

    Dataset format::

        <root>/                  # or <root>/{train,test}/ when the release is split
            RGB/*.jpg
            depth/*.png          # 8- or 16-bit, paired by stem
            GT/*.png

    Also accepted: ``Image/``+``Depth/``+``GT/``, ``image/``+``depth/``+``mask/``,
    ``images/``+``depths/``+``masks/``, ``Imgs/``+``Depth/``+``GT/`` (see :data:`COMMON_RGBD_LAYOUTS` for
    alternatives of each folder).
    """


class _RGBDDataset(PairedFolderDataset):
    modality: ClassVar[str] = "rgbd"
    requires: ClassVar[tuple[str, ...]] = ("depth",)
    variants: ClassVar[tuple[FolderLayout, ...]] = COMMON_RGBD_LAYOUTS
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    split_dirs: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("train", "Train", "train_data"),
        "test": ("test", "Test", "test_data"),
    }
    layout: ClassVar[str] = "RGB/, depth/, GT/ (optionally under train/ and test/)"


class NJU2K(_RGBDDataset):
    __doc__ = (
        "NJU2K (Ju et al., ICIP 2014): 1,985 stereo images with estimated depth (alias ``njud``)." + _TREE
    )
    name = "nju2k"


class NLPR(_RGBDDataset):
    __doc__ = (
        "NLPR (Peng et al., ECCV 2014): 1,000 Kinect RGB-D images. The native ``groundtruth/`` mask folder "
        "is accepted as well." + _TREE
    )
    name = "nlpr"
    variants = tuple(
        FolderLayout(v.image, depth=v.depth, mask=(*v.mask, "groundtruth")) for v in COMMON_RGBD_LAYOUTS
    )


class SIP(_RGBDDataset):
    __doc__ = "SIP (Fan et al., TNNLS 2020): 929 images of people captured with a phone." + _TREE
    name = "sip"


class STERE(_RGBDDataset):
    __doc__ = "STERE (Niu et al., CVPR 2012): 1,000 stereo pairs with disparity as depth." + _TREE
    name = "stere"


class DES(_RGBDDataset):
    __doc__ = (
        "DES / RGBD135 (Cheng et al., ICIMCS 2014): 135 indoor Kinect images (alias ``rgbd135``)." + _TREE
    )
    name = "des"
