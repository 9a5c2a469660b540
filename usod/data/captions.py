"""Image captions in the COCO-captions JSON format, attached to SOD samples by id.

Caption-guided SOD (SDG-SOD, seed 003) trains an image captioner next to the saliency network, so its samples
carry a ``caption`` string. Captions live in one JSON file in the COCO-captions format, the format of
``captions_train2017.json`` and of the ``captions.json`` that :func:`usod.data.synth.write_dataset` writes::

    {"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", ...}, ...],
     "annotations": [{"id": 0, "image_id": 391895, "caption": "A man riding a bike."}, ...]}

An image may have several captions (COCO has five). A sample finds its captions by its dataset id, tried as
the image ``id`` (as a string), then as the ``file_name`` without extension (relative path, e.g.
``images/synth_00000``) and as the ``file_name`` stem (e.g. ``COCO_val2014_000000391895``, which is the
sample id of an image folder holding COCO images). ``images`` may be absent, in which case ids alone match.

Horizontal flips must swap "left" and "right" in the caption, as VirTex does: :func:`swap_left_right`, used by
:class:`CaptionFlip`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from usod.data.io import InvalidInputError

__all__ = [
    "CaptionFlip",
    "CaptionIndex",
    "CaptionedDataset",
    "swap_left_right",
]

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(caption: str) -> str:
    """Swap the words "left" and "right" (whole words, keeping their case), for mirrored images."""

    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _LEFT_RIGHT.sub(swap, caption)


class CaptionIndex:
    """Captions of a COCO-captions JSON file, looked up by sample id.

    Args:
        captions: ``image key -> captions``; keys are image ids (as strings), file names without extension and
            file stems (see the module docstring). Build it with :meth:`from_file`.
        source: The file the captions came from (for messages).

    Attributes:
        by_key: The lookup table.
        source: The file (or ``None``).
    """

    def __init__(self, captions: Mapping[str, Sequence[str]], source: Path | None = None) -> None:
        # keys of one image share one list (captions() counts each image once)
        self.by_key = {str(k): v if isinstance(v, list) else list(v) for k, v in captions.items()}
        self.source = source

    @classmethod
    def from_file(cls, path: str | Path) -> CaptionIndex:
        """Read a COCO-captions JSON file.

        Raises:
            FileNotFoundError: No file at ``path``.
            InvalidInputError: The file is not JSON or not in the COCO-captions format.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: caption file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidInputError(path, f"not a JSON file ({err})") from err
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise InvalidInputError(path, "not COCO captions: expected an object with an 'annotations' list")
        images = data.get("images") or []
        if not isinstance(images, list):
            raise InvalidInputError(path, "not COCO captions: 'images' must be a list")
        by_id: dict[str, list[str]] = {}
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
                raise InvalidInputError(
                    path, f"annotation {i} needs an 'image_id' and a string 'caption', got {ann!r:.80}"
                )
            by_id.setdefault(str(ann["image_id"]), []).append(ann["caption"].strip())
        keys: dict[str, list[str]] = dict(by_id)
        for i, image in enumerate(images):
            if not isinstance(image, dict) or "id" not in image:
                raise InvalidInputError(path, f"image {i} has no 'id'")
            caps = by_id.get(str(image["id"]))
            name = image.get("file_name")
            if caps is None or not isinstance(name, str):
                continue
            rel = Path(name).with_suffix("").as_posix()
            for key in (rel, Path(name).stem):
                keys.setdefault(key, caps)
        return cls(keys, source=path)

    def __len__(self) -> int:
        return len(self.by_key)

    def get(self, sample_id: str) -> list[str]:
        """Captions of ``sample_id`` (empty list when it has none)."""
        return self.by_key.get(str(sample_id), [])

    def captions(self) -> list[str]:
        """Every distinct caption once (for building a vocabulary)."""
        seen: dict[int, list[str]] = {}
        for caps in self.by_key.values():
            seen.setdefault(id(caps), caps)
        return [c for caps in seen.values() for c in caps]

    def missing(self, sample_ids: Sequence[str]) -> list[str]:
        """The ids among ``sample_ids`` without any caption."""
        return [sid for sid in sample_ids if not self.get(sid)]


class CaptionedDataset(Dataset):
    """An SOD dataset whose samples also carry a ``caption`` string.

    The wrapped dataset's raw sample (before its transform) gets ``caption``: one of the image's captions
    drawn at random (``sample="random"``, numpy's global generator, seeded per DataLoader worker) or its
    first (``sample="first"``); ``""`` when the image has none. The ``transform`` then runs (``caption``
    passes through :mod:`usod.data.transforms`). Other attributes (``ids``, ``files``, ...) are the wrapped
    dataset's.

    Args:
        dataset: An :class:`~usod.data.datasets.SODDataset` built with ``transform=None``.
        captions: Where the captions come from.
        transform: Applied to each sample dict after the caption is added.
        sample: ``"random"`` (training) or ``"first"`` (evaluation).
    """

    def __init__(
        self,
        dataset: Any,
        captions: CaptionIndex,
        transform: Callable[[dict], dict] | None = None,
        sample: str = "random",
    ) -> None:
        if sample not in ("random", "first"):
            raise ValueError(f"sample must be 'random' or 'first', got {sample!r}")
        self.dataset = dataset
        self.captions = captions
        self.transform = transform
        self.sample = sample

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset.load_raw(index)
        caps = self.captions.get(sample["id"])
        if not caps:
            sample["caption"] = ""
        elif self.sample == "first" or len(caps) == 1:
            sample["caption"] = caps[0]
        else:
            sample["caption"] = caps[int(np.random.randint(len(caps)))]
        return self.transform(sample) if self.transform is not None else sample


class CaptionFlip:
    """Random horizontal flip of a tensor sample that swaps "left" and "right" in its caption.

    Runs after a transform that produced tensors (:class:`~usod.data.transforms.TrainTransform` with
    ``hflip=0``): every CxHxW tensor except ``size`` is mirrored along its width. Samples with optical
    flow are never flipped (a mirrored colour-coded flow encodes the wrong direction).

    Args:
        transform: The tensor-producing transform to run first.
        p: Flip probability.
    """

    def __init__(self, transform: Callable[[dict], dict], p: float = 0.5) -> None:
        self.transform = transform
        self.p = float(p)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.transform(sample)
        if "flow" in out or self.p <= 0 or np.random.random() >= self.p:
            return out
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and value.ndim == 3 and key != "size":
                out[key] = value.flip(-1)
        if isinstance(out.get("caption"), str):
            out["caption"] = swap_left_right(out["caption"])
        return out
