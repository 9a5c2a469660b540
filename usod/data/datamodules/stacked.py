"""Training data of DeepUSPS: the images with one or more pseudo-label maps stacked as ``pseudo``.

Refinement trains on one map per image (a handcrafted method's, or the last round's moving averages), fusion
on one map per method. :class:`StackedLabels` reads ``<dir>/<id>.png`` from each folder (pseudo-label store
rounds, e.g. ``store.round_dir("rbd-r1-mva")``) and resizes it to the transformed image;
:class:`StackedLabelDataModule` is the RGB datamodule whose training set does that.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from usod.data.datamodules.modalities import RGBDataModule
from usod.data.io import read_mask

__all__ = ["StackedLabelDataModule", "StackedLabels"]


class StackedLabels(Dataset):
    """A dataset's samples with ``pseudo`` = KxHxW float maps in [0, 1] from ``K`` label folders.

    The base dataset's transform must only resize (the maps are resized to the transformed image, not
    augmented with it).

    Args:
        base: A usod dataset (its items have ``image`` and ``id``).
        label_dirs: Folders holding ``<id>.png`` (8-bit, any size), one map per folder.

    Raises:
        InvalidInputError: A label file is missing or unreadable (when the sample is loaded).
    """

    def __init__(self, base: Dataset, label_dirs: Sequence[str | Path]) -> None:
        if not label_dirs:
            raise ValueError("StackedLabels needs at least one label folder")
        self.base = base
        self.label_dirs = [Path(d) for d in label_dirs]

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # ``files``, ``ids``... of the wrapped dataset (used by the label writers).
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, index: int) -> dict[str, Any]:

        sample = dict(self.base[index])
        h, w = (int(s) for s in sample["image"].shape[-2:])
        maps = []
        for folder in self.label_dirs:
            label = read_mask(folder / f"{sample['id']}.png")
            if label.shape != (h, w):
                label = cv2.resize(label, (w, h), interpolation=cv2.INTER_LINEAR)
            maps.append(label)
        sample["pseudo"] = torch.from_numpy(np.stack(maps).astype(np.float32) / 255.0)
        return sample


class StackedLabelDataModule(RGBDataModule):
    """RGB datamodule whose training samples carry the maps of ``label_dirs`` as ``pseudo`` (KxHxW).

    Training uses a plain resize (``augment=False`` is the default and required: DeepUSPS's moving averages
    are aligned with the un-augmented image and the module flips images itself). Validation, test and
    prediction are those of :class:`~usod.data.datamodules.SODDataModule`.

    Args:
        label_dirs: Label folders, one target map per folder (e.g. pseudo-label store rounds).
        augment: Must stay False.
        **kwargs: :class:`~usod.data.datamodules.SODDataModule` arguments (``dataset``, ``root``,
            ``image_size``, ``batch_size``...).
    """

    def __init__(self, label_dirs: Sequence[str] = (), augment: bool = False, **kwargs: Any) -> None:
        if augment:
            raise ValueError(
                "StackedLabelDataModule needs augment=False (resize only); the model flips itself"
            )
        kwargs.pop("pseudo_dir", None)
        # Plain strings in the saved hyper-parameters keep checkpoints loadable with weights_only=True.
        label_dirs = [str(d) for d in label_dirs]
        for key in ("root", "val_root"):
            if kwargs.get(key) is not None:
                kwargs[key] = str(kwargs[key])
        super().__init__(augment=False, **kwargs)
        self.label_dirs = label_dirs

    def build_train_set(self, pseudo_dir: Path | None = None, transform: Any = None) -> Dataset:
        """The training images; in fitting (no ``transform`` given) with the stacked maps."""
        base = super().build_train_set(None, transform)
        if transform is not None or not self.label_dirs:
            return base
        return StackedLabels(base, self.label_dirs)
