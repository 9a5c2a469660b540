"""A datamodule whose samples carry captions, for caption-guided SOD (SDG-SOD, seed 003)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from usod.data.captions import CaptionedDataset, CaptionFlip, CaptionIndex
from usod.data.datamodules.base import SODDataModule
from usod.data.datasets import get_dataset
from usod.data.io import InvalidInputError
from usod.data.transforms import EvalTransform, GPUAugmentation, TrainTransform

__all__ = ["CaptionDataModule"]


class CaptionDataModule(SODDataModule):
    """:class:`~usod.data.datamodules.SODDataModule` plus a ``caption`` string per sample.

    Captions come from a COCO-captions JSON file (see :mod:`usod.data.captions`); the synthetic data writes
    one as ``captions.json`` in the dataset root. A training sample gets one of its image's captions at
    random, an evaluation sample its first. Horizontal flips swap "left" and "right" in the caption, so they
    are done after the albumentations/kornia augmentation, by :class:`~usod.data.captions.CaptionFlip`.

    Two supervision settings:

    * ``supervised=False`` (default, the unsupervised setting): the training split never reads ground truth;
      attach pseudo labels with ``pseudo_dir`` (``pseudo`` key) as with every usod datamodule.
    * ``supervised=True`` (the paper's supervised setting): the training split reads the ground-truth masks
      (``mask`` key). Use it only to reproduce supervised SDG-SOD.

    Args:
        captions: Caption file of the training images; a relative path is taken under ``root``. ``None``: no
            captions (samples get ``caption = ""``).
        val_captions: Caption file of the validation/test images (relative to ``val_root``). Default: the same
            file name under ``val_root`` if it exists there, else no validation captions.
        require_captions: Raise at setup when a training image has no caption (every image needs one to train
            the captioner).
        supervised: Train on ground-truth masks instead of pseudo labels (see above).

        **kwargs: The arguments of :class:`~usod.data.datamodules.SODDataModule` (``dataset``, ``root``,
            ``image_size``, ``batch_size``, ``pseudo_dir``...).
    """

    def __init__(
        self,
        captions: str | None = "captions.json",
        val_captions: str | None = None,
        require_captions: bool = True,
        supervised: bool = False,
        **kwargs: Any,
    ) -> None:
        # Plain strings: Lightning saves this frame's arguments too, and checkpoints must load with
        # weights_only=True.
        for key in ("root", "val_root", "pseudo_dir", "flow_cache"):
            if kwargs.get(key) is not None:
                kwargs[key] = str(kwargs[key])
        super().__init__(**kwargs)
        self.captions_file = captions
        self.val_captions_file = val_captions
        self.require_captions = require_captions
        self.supervised = supervised
        if self.gpu_augment is not None:  # flips happen in the workers, where the caption can follow
            self.gpu_augment = GPUAugmentation(hflip=0.0, crop_scale=self.crop_scale)
        self._train_index: CaptionIndex | None = None
        self._val_index: CaptionIndex | None = None

    # -- captions -------------------------------------------------------------------------------------------
    @staticmethod
    def _resolve(name: str | None, root: Path) -> Path | None:
        if name is None:
            return None
        path = Path(name).expanduser()
        return path if path.is_absolute() else root / path

    def train_captions(self) -> CaptionIndex:
        """The captions of the training images (empty when ``captions`` is ``None``)."""
        if self._train_index is None:
            path = self._resolve(self.captions_file, self.root)
            self._train_index = CaptionIndex.from_file(path) if path is not None else CaptionIndex({})
        return self._train_index

    def val_captions(self) -> CaptionIndex:
        """The captions of the validation/test images (possibly empty)."""
        if self._val_index is None:
            if self.val_captions_file is not None:
                self._val_index = CaptionIndex.from_file(self._resolve(self.val_captions_file, self.val_root))
            elif self.captions_file is not None and self.val_root == self.root:
                self._val_index = self.train_captions()
            else:
                name = Path(self.captions_file).name if self.captions_file is not None else None
                path = self._resolve(name, self.val_root)
                found = path is not None and path.is_file()
                self._val_index = CaptionIndex.from_file(path) if found else CaptionIndex({})  # type: ignore[arg-type]
        return self._val_index

    # -- datasets -------------------------------------------------------------------------------------------
    def train_transform_is_deterministic(self) -> bool:
        """Never: each training image draws one of its captions at random (and is flipped with it)."""
        return False

    def train_transform(self) -> Any:
        flip = 0.5 if self.augment else 0.0
        scale = (1.0, 1.0) if (not self.augment or self.gpu_augment is not None) else self.crop_scale
        jitter = 0.2 if (self.augment and self.gpu_augment is None) else 0.0
        inner = TrainTransform(self.image_size, scale=scale, hflip=0.0, color_jitter=jitter)
        return CaptionFlip(inner, p=flip)

    def build_train_set(self, pseudo_dir: Path | None = None, transform: Any = None) -> Dataset:
        """The training images with captions; ground truth only when ``supervised``."""
        base = get_dataset(
            self.dataset_name,
            root=self.root,
            split=self.split,
            with_masks=self.supervised,
            pseudo_dir=pseudo_dir,
            transform=None,
            skip_invalid=self.skip_invalid,
            **self._extra_kwargs(),
        )
        index = self.train_captions()
        if self.require_captions and self.captions_file is not None:
            missing = index.missing(base.ids)
            if missing:
                raise InvalidInputError(
                    index.source or self.root,
                    f"no caption for {len(missing)} of {len(base)} training images (e.g. {missing[:3]}); "
                    "captions are matched by image id or file name (require_captions=False to allow this)",
                )
        return CaptionedDataset(
            base, index, transform if transform is not None else self.train_transform(), sample="random"
        )

    def build_eval_set(self, with_masks: bool = True) -> Dataset:
        """The validation/test images with ground truth and their first caption (``""`` if none)."""
        base = get_dataset(
            self.val_dataset_name,
            root=self.val_root,
            split=self.val_split,
            with_masks=with_masks,
            transform=None,
            skip_invalid=self.skip_invalid,
            **self._extra_kwargs(),
        )
        return CaptionedDataset(base, self.val_captions(), EvalTransform(self.image_size), sample="first")
