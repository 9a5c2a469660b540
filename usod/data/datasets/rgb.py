"""RGB salient object detection datasets: DUTS, ECSSD, DUT-OMRON, HKU-IS, PASCAL-S, MSRA-B, SOD and plain
folders.

Besides each dataset's native layout, every class accepts the A2S code-family layout ``<root>/{RGB,GT}`` and
the folder pairs common in SOD benchmark re-releases (:data:`COMMON_RGB_LAYOUTS`). Images and masks are paired
by file stem; masks may be PNG, BMP, JPEG or TIFF.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from usod.data.datasets.base import FolderLayout, PairedFolderDataset

__all__ = [
    "COMMON_RGB_LAYOUTS",
    "DUTOMRON",
    "DUTS",
    "ECSSD",
    "HKUIS",
    "MSRAB",
    "PASCALS",
    "SOD",
    "ImageFolder",
]

#: Layouts shared by all RGB datasets (A2S family first, then common re-release pairs).
COMMON_RGB_LAYOUTS: tuple[FolderLayout, ...] = (
    FolderLayout("RGB", mask=("GT", "gt", "masks")),
    FolderLayout("images", mask=("masks", "gt", "GT", "labels")),
    FolderLayout("Imgs", mask=("GT", "Masks", "gt")),
    FolderLayout("imgs", mask=("gt", "masks", "GT")),
    FolderLayout("image", mask=("mask", "gt", "GT")),
    FolderLayout("Image", mask=("GT", "Mask", "mask")),
    FolderLayout("img", mask=("gt", "mask", "GT")),
)

_COMMON_TREE = """
    Also accepted, as ``<root>/<images>/`` + ``<root>/<masks>/`` (A2S family and common re-releases):
    ``RGB/``+``GT/``, ``images/``+``masks/``, ``Imgs/``+``GT/``, ``imgs/``+``gt/``, ``image/``+``mask/``,
    ``Image/``+``GT/``, ``img/``+``gt/`` (see :data:`COMMON_RGB_LAYOUTS` for the mask-folder alternatives)."""


class _RGBDataset(PairedFolderDataset):
    modality: ClassVar[str] = "rgb"
    native: ClassVar[tuple[FolderLayout, ...]] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "variants" not in cls.__dict__:
            cls.variants = cls.native + COMMON_RGB_LAYOUTS


class DUTS(_RGBDataset):
    """DUTS (Wang et al., CVPR 2017): 10,553 training and 5,019 test images.

    Dataset format::

        <root>/
            DUTS-TR/
                DUTS-TR-Image/*.jpg
                DUTS-TR-Mask/*.png
            DUTS-TE/
                DUTS-TE-Image/*.jpg
                DUTS-TE-Mask/*.png

    ``root`` may also be ``DUTS-TR`` (or ``DUTS-TE``) itself, or a split folder in one of the common layouts
    (e.g. ``DUTS-TR/{RGB,GT}``). Splits: ``train`` (default) and ``test``.
    """

    name = "duts"
    splits = ("train", "test")
    default_split = "train"
    layout = "DUTS-TR/{DUTS-TR-Image,DUTS-TR-Mask}/, DUTS-TE/{DUTS-TE-Image,DUTS-TE-Mask}/"

    def candidate_layouts(self, split: str | None) -> list[FolderLayout]:
        tag = "TE" if split == "test" else "TR"
        native = FolderLayout(f"DUTS-{tag}-Image", mask=(f"DUTS-{tag}-Mask",))
        out = []
        for prefix in (f"DUTS-{tag}", ""):
            out.append(native.under(prefix))
            out.extend(v.under(prefix) for v in COMMON_RGB_LAYOUTS)
        return out


class ECSSD(_RGBDataset):
    """ECSSD (Yan et al., CVPR 2013): 1,000 images with complex scenes.

    Dataset format::

        <root>/
            images/*.jpg
            ground_truth_mask/*.png
    """

    name = "ecssd"
    native = (FolderLayout("images", mask=("ground_truth_mask",)),)
    layout = "images/, ground_truth_mask/"
    __doc__ = (__doc__ or "") + _COMMON_TREE


class DUTOMRON(_RGBDataset):
    """DUT-OMRON (Yang et al., CVPR 2013): 5,168 images.

    Dataset format::

        <root>/
            DUT-OMRON-image/*.jpg
            pixelwiseGT-new-PNG/*.png
    """

    name = "dut-omron"
    native = (FolderLayout("DUT-OMRON-image", mask=("pixelwiseGT-new-PNG", "pixelwiseGT")),)
    layout = "DUT-OMRON-image/, pixelwiseGT-new-PNG/"
    __doc__ = (__doc__ or "") + _COMMON_TREE


class HKUIS(_RGBDataset):
    """HKU-IS (Li and Yu, CVPR 2015): 4,447 images, many with several salient objects.

    Dataset format::

        <root>/
            imgs/*.png
            gt/*.png
    """

    name = "hku-is"
    native = (FolderLayout("imgs", mask=("gt",)),)
    layout = "imgs/, gt/"
    __doc__ = (__doc__ or "") + _COMMON_TREE


class PASCALS(_RGBDataset):
    """PASCAL-S (Li et al., CVPR 2014): 850 images from PASCAL VOC 2010 val.

    Dataset format (no single canonical layout; the original release and the common re-release are accepted)::

        <root>/                        <root>/
            Imgs/*.jpg                     datasets/imgs/pascal/*.jpg
            Masks/*.png                    datasets/masks/pascal/*.png
    """

    name = "pascal-s"
    native = (
        FolderLayout("Imgs", mask=("Masks", "GT")),
        FolderLayout("datasets/imgs/pascal", mask=("datasets/masks/pascal",)),
        FolderLayout("imgs/pascal", mask=("masks/pascal",)),
    )
    layout = "Imgs/, Masks/ (or datasets/{imgs,masks}/pascal/)"
    __doc__ = (__doc__ or "") + _COMMON_TREE


class SOD(_RGBDataset):
    """SOD (Movahedi and Elder, CVPRW 2010): 300 images from the Berkeley segmentation set.

    Dataset format (no single canonical layout; the common re-release is)::

        <root>/
            Imgs/*.jpg
            GT/*.png
    """

    name = "sod"
    layout = "Imgs/, GT/"
    __doc__ = (__doc__ or "") + _COMMON_TREE


class MSRAB(_RGBDataset):
    """MSRA-B (Liu et al., CVPR 2007; pixel masks by Jiang et al., CVPR 2013): 5,000 images.

    Dataset format: the widely used release keeps images and masks in one folder, with the split lists of
    Jiang et al.::

        <root>/
            <id>.jpg                 # image
            <id>.png                 # mask
            train_cvpr2013.txt       # optional: one image name per line
            valid_cvpr2013.txt
            test_cvpr2013.txt

    Splits ``train``, ``val`` and ``test`` select the names in those list files (file extensions in the lists
    are ignored); ``trainval`` is the union of ``train`` and ``val`` (the 3,000 training images of A2S);
    without a split all images are used. The common layouts below are accepted too, with the same split lists
    at ``<root>``.
    """

    name = "msra-b"
    splits = ("train", "val", "trainval", "test")
    split_files: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("train_cvpr2013.txt",),
        "val": ("valid_cvpr2013.txt",),
        "trainval": ("train_cvpr2013.txt", "valid_cvpr2013.txt"),
        "test": ("test_cvpr2013.txt",),
    }
    native = (FolderLayout(".", mask=(".",), image_exts=(".jpg", ".jpeg"), mask_exts=(".png", ".bmp")),)
    layout = "<id>.jpg + <id>.png in one folder [+ {train,valid,test}_cvpr2013.txt]"
    __doc__ = (__doc__ or "") + _COMMON_TREE

    def candidate_layouts(self, split: str | None) -> list[FolderLayout]:
        # splits come from list files, not folders: every split uses the root
        return list(self.variants)

    def _select_stems(self, stems: list[str]) -> list[str]:
        if self.split is None:
            return stems
        wanted: set[str] = set()
        present = set(stems)
        for name in self.split_files[self.split]:
            list_file = self.root / name
            if not list_file.is_file():
                raise self._layout_error(
                    [f"{name} (split list)"], what=f"split {self.split!r} needs {list_file}"
                )
            listed = {Path(line.strip()).stem for line in list_file.read_text().splitlines() if line.strip()}
            for stem in sorted(listed - present):
                self._missing(list_file, f"lists {stem!r} but no such image exists")
            wanted |= listed
        return [s for s in stems if s in wanted]


class ImageFolder(_RGBDataset):
    """Any folder of images, with optional masks paired by stem.

    This is the layout the synthetic data generator writes; ``captions.json`` and other non-image files are
    ignored.

    Dataset format::

        <root>/
            images/*.jpg
            masks/*.png        # optional; only needed with with_masks=True
    """

    name = "folder"
    layout = "images/, masks/ (optional)"
    __doc__ = (__doc__ or "") + _COMMON_TREE
