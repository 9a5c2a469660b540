"""An in-memory cache of decoded, resized samples, for datasets whose transform is deterministic.

Decoding a JPEG and resizing it costs a few milliseconds of CPU per image; a GPU at bf16 trains a
ResNet-50 detector on hundreds of images a second, so with few CPU cores the workers, not the GPU, set the
pace. When the training transform is deterministic (resize only: ``augment=False``, or augmentation moved
to the GPU with ``gpu_augment=True``) every epoch decodes the same pixels again; :class:`CachedDataset`
keeps them in memory instead.

Samples are stored as uint8 wherever that is exact: an image or label map that was decoded from 8 bits and
resized (``x = k / 255`` in float32) is stored as ``k`` and turned back into the identical float32 tensor
on access, so the cache holds ``3 * H * W`` bytes per RGB image (0.3 MB at 320x320, 3.2 GB for the 10,553
DUTS-TR images) instead of four times that. Maps that are not of that form (e.g. resized soft pseudo
labels) are kept as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["CachedDataset"]


def _identity(sample: Any) -> Any:
    return sample


def _pack(value: Any) -> Any:
    """A float tensor of multiples of 1/255 as ``("u8", uint8 tensor)``; anything else unchanged."""
    if not isinstance(value, Tensor):
        return value
    if value.dtype == torch.float32 and value.numel() > 0 and value.min() >= 0.0 and value.max() <= 1.0:
        levels = (value * 255.0).round().to(torch.uint8)
        if torch.equal(levels.to(torch.float32) / 255.0, value):
            return ("u8", levels)
    # a private copy: tensors from DataLoader workers live in shared memory, one file handle each
    return value.clone()


def _unpack(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "u8" and isinstance(value[1], Tensor):
        return value[1].to(torch.float32) / 255.0
    return value


class CachedDataset(Dataset):
    """A dataset wrapper that returns cached copies of the wrapped dataset's (transformed) samples.

    :meth:`fill` reads every sample once (in parallel worker processes when asked) in the calling process;
    DataLoader workers forked afterwards share the filled cache copy-on-write. Samples not cached yet are
    read from the wrapped dataset and stored on first access (in the process that reads them). Other
    attributes (``ids``, ``files``, ...) are the wrapped dataset's.

    Only wrap datasets whose transform is deterministic: a random crop, flip or colour jitter would be
    frozen at its first draw.

    Args:
        dataset: A map-style dataset returning dict samples (tensors, strings, ...).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "_cache"):  # not set yet (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def num_cached(self) -> int:
        """Samples held in memory."""
        return len(self._cache)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data held in memory."""
        total = 0
        for sample in self._cache.values():
            for value in sample.values():
                tensor = value[1] if isinstance(value, tuple) and len(value) == 2 else value
                if isinstance(tensor, Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total

    def _store(self, index: int, sample: dict[str, Any]) -> None:
        if not isinstance(sample, dict):
            raise TypeError(f"CachedDataset needs dict samples, got {type(sample).__name__} at index {index}")
        self._cache[index] = {k: _pack(v) for k, v in sample.items()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        packed = self._cache.get(index)
        if packed is None:
            sample = self.dataset[index]
            self._store(index, sample)
            packed = self._cache[index]
        return {k: _unpack(v) for k, v in packed.items()}

    def fill(self, num_workers: int = 0, indices: Sequence[int] | None = None) -> CachedDataset:
        """Read and cache every sample (or those of ``indices``) not cached yet with ``num_workers``
        decoding processes; return self."""
        wanted = range(len(self)) if indices is None else indices
        todo = [i for i in wanted if i not in self._cache]
        if not todo:
            return self
        subset = torch.utils.data.Subset(self.dataset, todo)
        loader = DataLoader(subset, batch_size=None, num_workers=num_workers, collate_fn=_identity)
        for index, sample in zip(todo, loader, strict=True):
            self._store(index, sample)
        return self
