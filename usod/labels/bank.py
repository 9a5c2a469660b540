"""The in-memory bank of current pseudo labels that online label updates train on and change.

With ``label_update="olr"`` or ``"spr"`` a module (:class:`~usod.models.saliency_detector.SaliencyDetector`,
:class:`~usod.models.adapter_transfer.AdapterTransfer`) keeps the *current* label of every training image in a
:class:`LabelBank`: a plain in-memory dict ``id -> HxW uint8`` at training resolution on the CPU (not a
module buffer, not in checkpoints). How it works:

* A label enters the bank the first time its id is seen, from the batch's ``pseudo`` (the stage-1 labels, or
  the last written round when resuming), or up front through :meth:`SaliencyDetector.load_labels`.
* Every training step trains on the bank's labels ``G^j`` (flipped along with the image by the module's own
  random horizontal flip) and computes the new label of each image of the batch from the prediction of
  this same step (no extra forward pass), with the flip undone. New labels are only *staged*.
* At the end of the epoch (:meth:`SaliencyDetector.on_train_epoch_end`) the staged labels (and labels first
  seen in this epoch) are all-gathered across DDP ranks (``torch.distributed.all_gather_object``) and
  applied, so the whole epoch trains on ``G^j`` and every rank holds the same bank afterwards. An id staged
  twice (DistributedSampler padding repeats ids) takes the value of the last copy in rank order.
* An id that was not seen in an epoch (e.g. ``limit_train_batches``, ``drop_last``) keeps its label.

The training transform must be deterministic (resize only: ``augment=False`` in the datamodule), since the
bank's labels are aligned with the un-augmented image; the module does the horizontal flips itself. Every
id's image is fingerprinted (a 4x4 thumbnail) the first time it is seen, and a different image later raises.

Persisting: after each epoch's update, every function in :attr:`SaliencyDetector.label_listeners` is called
with ``(module, epoch, updated_ids)`` on every rank; :class:`LabelRoundWriter` is such a listener that
writes the bank to a :class:`~usod.labels.PseudoLabelStore` as round ``stage2-epoch{epoch}`` (original

DeepUSPS keeps its historical moving averages in a bank too (:class:`~usod.models.deepusps.DeepUSPSRefiner`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from usod.distributed import rank_world
from usod.labels.store import to_uint8_label

__all__ = ["LabelBank"]


def _to_uint8(values: Tensor) -> np.ndarray:
    """HxW float tensor in [0, 1] -> HxW uint8 numpy (rounded)."""
    return (values.detach().float() * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


class LabelBank:
    """The current pseudo label of every training image seen so far (see the module docstring).

    Memory: ``H * W`` bytes per image at training resolution (0.1 MB at 320x320, 1.1 GB for the 10,553
    DUTS-TR images); the epoch-end all-gather moves each rank's share once (pickled).

    Attributes:
        labels: ``id -> HxW uint8`` current labels.
        sizes: ``id -> (H, W)`` original image sizes (from the batch's ``size``), for export.
    """

    def __init__(self) -> None:
        self.labels: dict[str, np.ndarray] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        self._thumbs: dict[str, Tensor] = {}
        self._staged: dict[str, np.ndarray] = {}
        self._fresh: set[str] = set()

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self.labels

    @staticmethod
    def thumbnail(images: Tensor) -> Tensor:
        """Bx48 CPU fingerprints: 4x4 average pool of each image (the size is checked separately)."""
        return F.adaptive_avg_pool2d(images.detach().float(), 4).flatten(1).cpu()

    def targets(
        self, ids: Sequence[str], images: Tensor, pseudo: Tensor | None, sizes: Tensor | None = None
    ) -> Tensor:
        """The current labels of ``ids`` as a Bx1xHxW float tensor in [0, 1] on the images' device.

        Ids not in the bank are added from ``pseudo`` (Bx1xhxw in [0, 1]). Labels of another resolution
        (e.g. loaded at original size) are resized to the images' size once, bilinearly.

        Raises:
            ValueError: A new id comes without ``pseudo``.
            RuntimeError: The image of an id differs from the one first seen (a random training transform).
        """
        h, w = (int(s) for s in images.shape[-2:])
        thumbs = self.thumbnail(images)
        out = []
        for i, sid in enumerate(ids):
            label = self.labels.get(sid)
            if label is None:
                if pseudo is None:
                    raise ValueError(
                        f"training sample {sid!r} has no pseudo label: the batch has no 'pseudo' entry "
                        "(attach a pseudo-label directory to the datamodule, pseudo_dir=...) and none was "
                        "loaded with load_labels()"
                    )
                p = pseudo[i : i + 1].float()
                if p.shape[-2:] != (h, w):
                    p = F.interpolate(p, size=(h, w), mode="bilinear")
                label = _to_uint8(p[0, 0])
                self.labels[sid] = label
                self._fresh.add(sid)
            elif label.shape != (h, w):
                label = np.ascontiguousarray(cv2.resize(label, (w, h), interpolation=cv2.INTER_LINEAR))
                self.labels[sid] = label
            thumb = self._thumbs.get(sid)
            if thumb is None:
                self._thumbs[sid] = thumbs[i].clone()
            elif thumb.shape != thumbs[i].shape or float((thumb - thumbs[i]).abs().max()) > 1e-4:
                raise RuntimeError(
                    f"training image {sid!r} differs from the one seen earlier; online label updates "
                    "(label_update='olr'/'spr') need a deterministic training transform (datamodule "
                    "augment=False: resize only). The module does the horizontal flips itself."
                )
            if sizes is not None and sid not in self.sizes:
                self.sizes[sid] = (int(sizes[i][0]), int(sizes[i][1]))
            out.append(torch.from_numpy(label))
        return torch.stack(out).unsqueeze(1).to(images.device, torch.float32) / 255.0

    def stage(self, ids: Sequence[str], new_labels: Tensor) -> None:
        """Stage Bx1xHxW labels in [0, 1] for :meth:`commit` (the current labels do not change yet)."""
        if new_labels.ndim != 4 or new_labels.shape[1] != 1 or new_labels.shape[0] != len(ids):
            raise ValueError(f"expected {len(ids)}x1xHxW new labels, got {tuple(new_labels.shape)}")
        for sid, lab in zip(ids, new_labels, strict=True):
            self._staged[sid] = _to_uint8(lab[0])

    def commit(self) -> list[str]:
        """Apply the staged labels on every rank (a collective under DDP: call it on all ranks).

        Labels first seen in this epoch are shared too, so all ranks end with the same bank.

        Returns:
            The sorted ids whose labels were updated (staged on any rank).
        """
        items = [(sid, lab, self.sizes.get(sid), True) for sid, lab in self._staged.items()]
        items += [
            (sid, self.labels[sid], self.sizes.get(sid), False) for sid in self._fresh - set(self._staged)
        ]
        self._staged, self._fresh = {}, set()
        _, world = rank_world()
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, items)
            items = [item for part in gathered for item in part]
        updated: set[str] = set()
        for sid, lab, size, is_update in items:
            if size is not None:
                self.sizes.setdefault(sid, tuple(size))
            if is_update:
                self.labels[sid] = lab
                updated.add(sid)
            elif sid not in updated:
                self.labels.setdefault(sid, lab)
        return sorted(updated)

    def export(self, original_size: bool = False) -> dict[str, np.ndarray]:
        """Copies of the current labels (``original_size=True``: resized to each image's original size)."""
        out = {}
        for sid, lab in self.labels.items():
            if original_size:
                size = self.sizes.get(sid)
                if size is None:
                    raise KeyError(f"original size of {sid!r} is unknown (the batch had no 'size')")
                if lab.shape != size:
                    lab = cv2.resize(lab, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            out[sid] = np.array(lab, dtype=np.uint8, copy=True)
        return out

    def load(self, labels: Mapping[str, Any], sizes: Mapping[str, Sequence[int]] | None = None) -> None:
        """Set labels (uint8, bool or float in [0, 1]; any resolution) and optionally original sizes."""
        for sid, lab in labels.items():
            self.labels[str(sid)] = to_uint8_label(lab, name=f"label of {sid!r}")
            self._staged.pop(str(sid), None)
        for sid, size in (sizes or {}).items():
            self.sizes[str(sid)] = (int(size[0]), int(size[1]))
