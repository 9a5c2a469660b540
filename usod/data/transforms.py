"""Joint transforms for every modality, from numpy samples to model-ready tensors.

Datasets return numpy samples (see :mod:`usod.data.datasets`); these transforms apply the same geometric
augmentation to the image, its auxiliary modalities (depth, thermal, flow) and its label maps (mask, pseudo
label) with albumentations, colour augmentation to the RGB image alone, and convert everything to tensors:

* ``image``: float32 3xHxW in [0, 1] (not mean/std normalised: encoders normalise internally, because the
  right statistics depend on the weights they loaded);
* ``depth``: float32 3xHxW in [0, 1] (the one-channel map replicated, so that an auxiliary stream can use a
  pretrained RGB encoder, as in seed 000's modality-agnostic design);
* ``thermal`` / ``flow``: float32 3xHxW in [0, 1];
* ``mask`` / ``pseudo``: float32 1xHxW in [0, 1] (resized bilinearly: pseudo labels may be soft);
* ``size``: int64 tensor ``[H, W]`` of the original image; ``id``, ``caption`` and the video keys pass
  through.

Optical flow is not flipped: a mirrored colour-coded flow image would encode the wrong direction, so the
training transform disables horizontal flips for samples that carry ``flow``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from usod.data.io import SettingsError

IMAGE_KEYS = ("image", "depth", "thermal", "flow")
LABEL_KEYS = ("mask", "pseudo")
PASSTHROUGH_KEYS = ("id", "sequence", "frame", "caption")

#: The network input size wherever none is given: A2S's 320 x 320 (datamodules, pipelines, and the commands
#: that predict with a checkpoint that does not record its training size).
DEFAULT_IMAGE_SIZE = 320


def check_image_size(name: str, value: Any) -> None:
    """A network input size: a positive integer or ``[height, width]``.

    Raises:
        SettingsError: Naming ``name``.
    """
    sizes = value if isinstance(value, (list, tuple)) else [value]
    ok = bool(sizes) and len(sizes) <= 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes)
    if not ok:
        raise SettingsError(f"{name} must be a positive integer (or [height, width]), got {value!r}")


def _size_tuple(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _additional_targets(sample: dict[str, Any]) -> dict[str, str]:
    targets = {k: "image" for k in IMAGE_KEYS[1:] if k in sample}
    targets.update({k: "mask" for k in LABEL_KEYS if k in sample})
    return targets


def to_tensors(sample: dict[str, Any], original_size: tuple[int, int]) -> dict[str, Any]:
    """Convert a (transformed) numpy sample to tensors following the module docstring's conventions."""
    out: dict[str, Any] = {k: sample[k] for k in PASSTHROUGH_KEYS if k in sample}
    for key in IMAGE_KEYS:
        if key not in sample:
            continue
        arr = np.asarray(sample[key])
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        arr = arr.astype(np.float32, copy=False)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        out[key] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    for key in LABEL_KEYS:
        if key not in sample:
            continue
        arr = np.asarray(sample[key])
        arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
        out[key] = torch.from_numpy(np.ascontiguousarray(arr))[None]
    out["size"] = torch.tensor(original_size, dtype=torch.long)
    return out


class _BaseTransform:
    def __init__(self, image_size: int | Sequence[int]) -> None:
        self.image_size = _size_tuple(image_size)
        self._composes: dict[tuple, A.Compose] = {}

    def _geometric(self, flip_allowed: bool) -> list[A.BasicTransform]:
        raise NotImplementedError

    def _photometric(self) -> A.BasicTransform | None:
        return None

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        original = tuple(int(s) for s in sample.get("size", sample["image"].shape[:2]))
        arrays = {k: sample[k] for k in IMAGE_KEYS + LABEL_KEYS if k in sample}
        targets = _additional_targets(sample)
        key = tuple(sorted(targets.items()))
        compose = self._composes.get(key)
        if compose is None:  # building a Compose is slow next to applying it
            compose = A.Compose(
                self._geometric(flip_allowed="flow" not in sample), additional_targets=targets
            )
            self._composes[key] = compose
        result = compose(**arrays)
        photometric = self._photometric()
        if photometric is not None:
            result["image"] = photometric(image=result["image"])["image"]
        merged = {**{k: sample[k] for k in PASSTHROUGH_KEYS if k in sample}, **result}
        return to_tensors(merged, original)  # type: ignore[arg-type]


class TrainTransform(_BaseTransform):
    """Training augmentation: random resized crop, horizontal flip and colour jitter.

    Args:
        image_size: output size, an int or ``(height, width)``.
        scale: area range of the random resized crop; ``(1.0, 1.0)`` gives a plain resize.
        hflip: probability of a horizontal flip (ignored for samples with optical flow).
        color_jitter: strength of brightness/contrast/saturation jitter on the RGB image; 0 disables it.
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
        scale: Sequence[float] = (0.6, 1.0),
        hflip: float = 0.5,
        color_jitter: float = 0.2,
    ) -> None:
        super().__init__(image_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.hflip = hflip
        self.color_jitter = color_jitter

    def _geometric(self, flip_allowed: bool) -> list[A.BasicTransform]:
        h, w = self.image_size
        if self.scale == (1.0, 1.0):
            ops: list[A.BasicTransform] = [
                A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_LINEAR)
            ]
        else:
            ops = [
                A.RandomResizedCrop(
                    (h, w),
                    scale=self.scale,
                    ratio=(0.75, 1.333),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_LINEAR,
                )
            ]
        if flip_allowed and self.hflip > 0:
            ops.append(A.HorizontalFlip(p=self.hflip))
        return ops

    def _photometric(self) -> A.BasicTransform | None:
        if self.color_jitter <= 0:
            return None
        j = self.color_jitter
        return A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=0.8)


class EvalTransform(_BaseTransform):
    """Evaluation/prediction transform: a plain bilinear resize of every map to ``image_size``."""

    def _geometric(self, flip_allowed: bool) -> list[A.BasicTransform]:
        h, w = self.image_size
        return [A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_LINEAR)]


class GPUAugmentation(torch.nn.Module):
    """Batch augmentation with kornia, run on the device after the batch is transferred.

    The same random flip and resized crop are applied to the image, the auxiliary modalities and the label
    maps (they are stacked along channels, so one set of parameters covers them all); colour jitter touches
    the RGB image alone. Batches with optical flow are not flipped (see the module docstring).

    Args:
        hflip: probability of a horizontal flip.
        crop_scale: area range of the random resized crop; ``(1.0, 1.0)`` disables it.
        color_jitter: brightness/contrast/saturation jitter strength; 0 disables it.
    """

    def __init__(
        self, hflip: float = 0.5, crop_scale: Sequence[float] = (0.6, 1.0), color_jitter: float = 0.2
    ) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.hflip = hflip
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.color = (
            K.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=0.8) if color_jitter > 0 else None
        )
        self._K = K

    @torch.no_grad()
    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        keys = [k for k in IMAGE_KEYS + LABEL_KEYS if isinstance(batch.get(k), torch.Tensor)]
        stacked = torch.cat([batch[k].float() for k in keys], dim=1)
        h, w = stacked.shape[-2:]
        ops = []
        if self.crop_scale != (1.0, 1.0):
            ops.append(self._K.RandomResizedCrop((h, w), scale=self.crop_scale))
        if self.hflip > 0 and "flow" not in batch:
            ops.append(self._K.RandomHorizontalFlip(p=self.hflip))
        if ops:
            stacked = self._K.AugmentationSequential(*ops)(stacked)
        out = dict(batch)
        start = 0
        for k in keys:
            c = batch[k].shape[1]
            out[k] = stacked[:, start : start + c]
            start += c
        if self.color is not None:
            out["image"] = self.color(out["image"]).clamp(0, 1)
        return out
