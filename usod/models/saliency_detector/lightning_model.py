"""Lightning module for the stage-2 saliency detector (A2S: RAM detector + OLR; seed 000: SPR and L_ms).

Pseudo-label updates
--------------------
With ``label_update="olr"`` or ``"spr"`` the module keeps the *current* label of every training image in a
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
image size, each rank writing a disjoint share). :meth:`SaliencyDetector.export_labels` returns the bank.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usod.distributed import rank_world
from usod.models.aux_input import batch_aux, check_aux_modality, flip_allowed
from usod.models.base import USODModule
from usod.models.saliency_detector.loss import BCESSIMIoULoss, IoUMultiScaleLoss
from usod.models.saliency_detector.refine import PixelAdaptiveRefiner
from usod.models.saliency_detector.torch_model import SaliencyDetectorModel

__all__ = ["LABEL_UPDATES", "LOSSES", "LabelBank", "LabelRoundWriter", "SaliencyDetector"]

LOSSES: tuple[str, ...] = ("bce_ssim_iou", "iou_ms")
LABEL_UPDATES: tuple[str, ...] = ("none", "olr", "spr")
SPR_INPUTS: tuple[str, ...] = ("label", "prediction")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")

LabelListener = Callable[["SaliencyDetector", int, list[str]], None]


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
        from usod.labels.store import to_uint8_label

        for sid, lab in labels.items():
            self.labels[str(sid)] = to_uint8_label(lab, name=f"label of {sid!r}")
            self._staged.pop(str(sid), None)
        for sid, size in (sizes or {}).items():
            self.sizes[str(sid)] = (int(size[0]), int(size[1]))


class OnlineLabelTraining:
    """Training on a :class:`LabelBank` with online label updates, for ``USODModule`` subclasses.

    Shared by :class:`SaliencyDetector` and the detector mode of
    :class:`~usod.models.adapter_transfer.AdapterTransfer`: OLR (A2S eq. 14), SPR (seed 000), the training
    step with the module's own random horizontal flips, the BCE + SSIM + IoU or IoU + multi-scale loss, and
    the epoch-end commit of the staged labels. The module provides ``hparams`` (``label_update``,
    ``olr_lambda``, ``olr_warmup_epochs``, ``spr_weights``, ``spr_warmup_epochs``, ``hflip``, optionally
    ``spr_refine_input``), ``label_bank``, ``label_listeners``, ``loss_fn``, ``refiner`` (for SPR) and
    ``_scaled_size(size)`` (the input size of the multi-scale consistency term).
    """

    @property
    def needs_fixed_training_images(self) -> bool:
        """The label bank keeps each sample's label aligned with its (un-augmented) image."""
        return True

    def olr_lambda_at(self, epoch: int) -> float:
        """``lambda`` of OLR in (0-based) ``epoch``: 1 during the warm-up, then ``olr_lambda``."""
        return 1.0 if epoch < self.hparams.olr_warmup_epochs else float(self.hparams.olr_lambda)

    def updates_labels_at(self, epoch: int) -> bool:
        """Whether labels change at the end of (0-based) ``epoch``."""
        mode = self.hparams.label_update
        if mode == "olr":
            return self.olr_lambda_at(epoch) < 1.0
        if mode == "spr":
            return epoch >= self.hparams.spr_warmup_epochs
        return False

    @torch.no_grad()
    def updated_labels(self, images: Tensor, labels: Tensor, predictions: Tensor, epoch: int) -> Tensor:
        """New labels from the current ones and this step's predictions (all Bx1xHxW in [0, 1]).

        OLR: ``lambda G + (1 - lambda) Y``. SPR: ``(l1 R_pri + l2 Y + l3 G) / (l1 + l2 + l3)`` with ``R_pri``
        the pixel-adaptive refinement of ``G`` (or ``Y``, see ``spr_refine_input``) along ``images``.
        """
        mode = self.hparams.label_update
        if mode == "olr":
            lam = self.olr_lambda_at(epoch)
            return lam * labels + (1.0 - lam) * predictions
        if mode == "spr":
            l1, l2, l3 = (float(w) for w in self.hparams.spr_weights)
            source = labels if self.hparams.get("spr_refine_input", "label") == "label" else predictions
            prior = self.refiner(images, source)
            return ((l1 * prior + l2 * predictions + l3 * labels) / (l1 + l2 + l3)).clamp(0.0, 1.0)
        return labels

    def train_on_labels(
        self,
        batch: dict[str, Any],
        batch_idx: int,
        images: Tensor,
        aux: Tensor | None,
        key: str | None,
        target: Tensor,
        forward: Callable[[Tensor, Tensor | None], Tensor],
    ) -> Tensor:
        """One training step on ``target`` (the bank's labels, Bx1xHxW); stages this step's label updates.

        Args:
            batch: The training batch (``id``; panels read it too).
            batch_idx: Index of the batch.
            images: Bx3xHxW images in [0, 1].
            aux: The auxiliary image, or ``None``.
            key: The auxiliary modality (flow is never flipped).
            target: The labels the step trains on, aligned with ``images``.
            forward: ``(images, aux) -> logits`` of the network being trained.
        """
        b = images.shape[0]
        if self.hparams.hflip and flip_allowed(key):
            flips = (torch.rand(b) < 0.5).to(images.device).view(-1, 1, 1, 1)
        else:
            flips = torch.zeros(b, 1, 1, 1, dtype=torch.bool, device=images.device)
        views = torch.where(flips, images.flip(-1), images)
        aux_v = None if aux is None else torch.where(flips, aux.flip(-1), aux)
        target_v = torch.where(flips, target.flip(-1), target)
        logits = forward(views, aux_v)
        if isinstance(self.loss_fn, IoUMultiScaleLoss):
            size = self._scaled_size(views.shape[-2:])
            scaled = F.interpolate(views, size=size, mode="bilinear", align_corners=True)
            aux_scaled = (
                None
                if aux_v is None
                else F.interpolate(aux_v, size=size, mode="bilinear", align_corners=True)
            )
            terms = self.loss_fn.terms(logits, target_v, forward(scaled, aux_scaled))
        else:
            terms = self.loss_fn.terms(logits, target_v)
        loss = sum(terms.values())
        self.log("train_loss", loss, prog_bar=True, batch_size=b)
        for name, value in terms.items():
            self.log(f"train_{name}", value, batch_size=b)

        if self.wants_panels(batch_idx):
            pred_v = logits.detach().sigmoid()
            self.log_panels("train", batch_idx, batch, image=views, pseudo=target_v, prediction=pred_v)
        if self.updates_labels_at(self.current_epoch):
            with torch.no_grad():
                pred = torch.sigmoid(logits.detach().float())
                pred = torch.where(flips, pred.flip(-1), pred)  # back to the image's orientation
                new = self.updated_labels(images, target, pred, self.current_epoch)
            self.label_bank.stage([str(i) for i in batch["id"]], new)
        return loss

    def commit_label_updates(self) -> None:
        """Apply the epoch's staged labels on every rank, then notify ``label_listeners``."""
        updated = self.label_bank.commit()
        self.last_updated_ids = updated
        if updated:
            self.label_epoch = self.current_epoch
        for listener in list(self.label_listeners):
            listener(self, self.current_epoch, updated)


class SaliencyDetector(OnlineLabelTraining, USODModule):
    """A2S stage 2: train the RAM saliency detector on pseudo labels while rectifying them online.

    Training batches need ``image`` (Bx3xHxW in [0, 1]), ``pseudo`` (Bx1xHxW in [0, 1]), ``id`` and
    ``size``; ``mask`` is never read in training. With ``aux_modality`` other than ``"none"`` every batch
    also carries the auxiliary image (``depth``, ``thermal`` or ``flow``; see :mod:`usod.models.aux_input`).
    Validation batches with ``mask`` log ``val_mae`` and the SOD metrics (``val_max_f``, ``val_mean_f``,
    ``val_adp_f``, ``val_max_e``, ``val_mean_e``, ``val_adp_e``, ``val_s_measure``; weighted F is skipped
    for speed). ``predict_step`` returns
    ``{"id", "size", "saliency"}``.

    Args:
        backbone: :class:`usod.models.backbones.BackboneConfig` fields; ``None`` gives the default encoder.
            It is fine-tuned (``frozen: true`` freezes it).
        channels: Channels of the reduced levels and RAMs (64 in A2S).
        loss: ``"bce_ssim_iou"`` (A2S eq. 12) or ``"iou_ms"`` (IoU + multi-scale consistency, seed 000).
        binarize_target: Threshold targets at 0.5 in the loss (the authors' code does).
        ms_scales: For ``"iou_ms"``: relative sizes of the second view, one drawn per step (the reference
            code draws 320 + {-128, -64, 64, 128} pixels); sizes are rounded to the encoder's largest stride.
        ms_scale_weight: Weight of the IoU loss of the second view.
        ms_consistency_weight: Weight of the consistency term.
        label_update: ``"none"``, ``"olr"`` (A2S eq. 14) or ``"spr"`` (seed 000).
        olr_lambda: ``lambda`` of OLR after the warm-up (A2S: 0.4).
        olr_warmup_epochs: Epochs with ``lambda = 1`` (labels unchanged; A2S: 2).
        spr_weights: ``(l1, l2, l3)`` of ``G_ref = l1 R_pri + l2 R_post + l3 G_pre``, divided by their sum.
            Seed 000 gives no values; the default ``(0.1, 0.7, 0.2)`` is the authors' code (A2S-v3).
        spr_warmup_epochs: Epochs without SPR updates (the authors' code updates from the second epoch on).
        spr_refine_input: What the pixel-adaptive refiner rectifies into ``R_pri``: ``"label"`` (the
            current label ``G_pre``) or ``"prediction"`` (as in the authors' code).
        par_dilations: Dilations of the refiner.
        par_iters: Iterations of the refiner.
        hflip: Random horizontal flip (p = 0.5) of each training image and its label, done by the module and
            undone before the label update.
        predict_flip: Average predictions with those of the mirrored image.
        optimizer: ``"sgd"`` (A2S: Nesterov, momentum 0.9) or ``"adam"``.
        lr: Learning rate of the decoder (A2S: 0.005).
        encoder_lr_ratio: Encoder learning rate relative to ``lr`` (the authors' code: 0.1).
        momentum: SGD momentum.
        weight_decay: Weight decay.
        lr_milestones: Epoch fractions at which the learning rate is multiplied by ``lr_gamma`` (A2S decays
            at epochs 15 and 20 of 25).
        lr_gamma: Decay factor.
        aux_modality: ``"none"`` (RGB, default), ``"depth"``, ``"thermal"``, ``"flow"`` or ``"auto"``: a
            second encoder stream (built like the first one, fine-tuned) for the auxiliary image, added to
            the RGB features level by level (see :class:`SaliencyDetectorModel`). No horizontal flips are
            made with flow.
        encoder: An already built encoder to use instead of ``backbone`` (not saved in the hyperparameters;
            with ``aux_modality`` its deep copy is the auxiliary encoder).
    """

    method = "saliency_detector"

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        channels: int = 64,
        loss: Literal["bce_ssim_iou", "iou_ms"] = "bce_ssim_iou",
        binarize_target: bool = True,
        ms_scales: Sequence[float] = (0.6, 0.8, 1.2, 1.4),
        ms_scale_weight: float = 0.5,
        ms_consistency_weight: float = 1.0,
        label_update: Literal["none", "olr", "spr"] = "olr",
        olr_lambda: float = 0.4,
        olr_warmup_epochs: int = 2,
        spr_weights: Sequence[float] = (0.1, 0.7, 0.2),
        spr_warmup_epochs: int = 1,
        spr_refine_input: Literal["label", "prediction"] = "label",
        par_dilations: Sequence[int] = (1, 2, 4, 8),
        par_iters: int = 6,
        hflip: bool = True,
        predict_flip: bool = False,
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.005,
        encoder_lr_ratio: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: Sequence[float] = (0.6, 0.8),
        lr_gamma: float = 0.1,
        aux_modality: Literal["none", "auto", "depth", "thermal", "flow"] = "none",
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder"])
        check_aux_modality(aux_modality)
        for name, value, allowed in (
            ("loss", loss, LOSSES),
            ("label_update", label_update, LABEL_UPDATES),
            ("spr_refine_input", spr_refine_input, SPR_INPUTS),
            ("optimizer", optimizer, OPTIMIZERS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
        if not 0.0 <= olr_lambda <= 1.0:
            raise ValueError(f"olr_lambda must be in [0, 1], got {olr_lambda}")
        if len(spr_weights) != 3 or min(spr_weights) < 0 or sum(spr_weights) <= 0:
            raise ValueError(
                f"spr_weights must be 3 non-negative numbers with a positive sum, got {spr_weights}"
            )
        if not ms_scales or min(ms_scales) <= 0:
            raise ValueError(f"ms_scales must be positive relative sizes, got {list(ms_scales)}")
        if any(not 0.0 < m <= 1.0 for m in lr_milestones):
            raise ValueError(f"lr_milestones must be epoch fractions in (0, 1], got {list(lr_milestones)}")
        if olr_warmup_epochs < 0 or spr_warmup_epochs < 0:
            raise ValueError("warm-up epochs must be >= 0")
        aux_encoder = None
        if encoder is None:
            from usod.models.backbones import build_encoder

            encoder = build_encoder(backbone)
            if aux_modality != "none":
                aux_encoder = build_encoder(backbone)
        elif aux_modality != "none":
            import copy

            aux_encoder = copy.deepcopy(encoder)
        self.model = SaliencyDetectorModel(encoder, channels=channels, aux_encoder=aux_encoder)
        self.loss_fn: BCESSIMIoULoss | IoUMultiScaleLoss
        if loss == "bce_ssim_iou":
            self.loss_fn = BCESSIMIoULoss(binarize=binarize_target)
        else:
            self.loss_fn = IoUMultiScaleLoss(ms_scale_weight, ms_consistency_weight, binarize=binarize_target)
        self.refiner = PixelAdaptiveRefiner(par_dilations, par_iters)
        self.label_bank = LabelBank()
        #: Called on every rank after each epoch's label update as ``fn(module, epoch, updated_ids)``.
        self.label_listeners: list[LabelListener] = []
        #: Epoch (0-based) whose end last applied label updates, and the ids it updated.
        self.label_epoch: int | None = None
        self.last_updated_ids: list[str] = []

    # ------------------------------------------------------------------ labels
    def export_labels(self, original_size: bool = False) -> dict[str, np.ndarray]:
        """The current labels, ``id -> HxW uint8`` (training resolution, or each image's original size)."""
        return self.label_bank.export(original_size=original_size)

    def load_labels(
        self, labels: Mapping[str, Any], sizes: Mapping[str, Sequence[int]] | None = None
    ) -> None:
        """Set current labels, e.g. from the last pseudo-label round when resuming (any resolution)."""
        self.label_bank.load(labels, sizes)

    # ------------------------------------------------------------------ helpers
    def forward(self, images: Tensor, aux: Tensor | None = None) -> Tensor:
        """Saliency logits Bx1xHxW for Bx3xHxW images in [0, 1] (and the auxiliary image, if used)."""
        return self.model(images, aux)

    def _aux(self, batch: dict[str, Any], images: Tensor) -> tuple[str | None, Tensor | None]:
        return batch_aux(batch, self.hparams.aux_modality, images)

    def _scaled_size(self, size: Sequence[int]) -> tuple[int, int]:
        stride = int(max(getattr(self.model.encoder, "strides", [32]) or [32]))
        scale = random.choice(list(self.hparams.ms_scales))
        return tuple(max(stride, round(int(s) * scale / stride) * stride) for s in size)  # type: ignore[return-value]

    def training_targets(self, batch: dict[str, Any]) -> Tensor:
        """Targets of a training batch: the label bank's (online updates) or the batch's ``pseudo``."""
        images = self._images(batch)
        pseudo = batch.get("pseudo")
        if self.hparams.label_update == "none":
            if not isinstance(pseudo, Tensor):
                raise ValueError(
                    "training batches need 'pseudo' labels (Bx1xHxW); attach a pseudo-label directory to the "
                    "datamodule (pseudo_dir=...)"
                )
            target = pseudo.float()
            if target.shape[-2:] != images.shape[-2:]:
                target = F.interpolate(target, size=images.shape[-2:], mode="bilinear")
            return target
        ids = batch.get("id")
        if ids is None or len(ids) != images.shape[0]:
            raise ValueError("online label updates need batch['id'] (one sample id per image)")
        return self.label_bank.targets([str(i) for i in ids], images, pseudo, batch.get("size"))

    # ------------------------------------------------------------------ lightning hooks
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Train on the current labels and stage this step's label updates."""
        images = self._images(batch)
        key, aux = self._aux(batch, images)
        return self.train_on_labels(
            batch, batch_idx, images, aux, key, self.training_targets(batch), self.model
        )

    def on_train_epoch_end(self) -> None:
        """Apply the epoch's label updates on every rank, then notify :attr:`label_listeners`."""
        if self.hparams.label_update != "none":
            self.commit_label_updates()

    def predict_saliency(self, images: Tensor, aux: Tensor | None = None, allow_flip: bool = True) -> Tensor:
        """Bx1xHxW saliency in [0, 1], flip-averaged if ``predict_flip`` (and allowed)."""
        sal = torch.sigmoid(self.model(images, aux))
        if self.hparams.predict_flip and allow_flip:
            aux_flipped = None if aux is None else aux.flip(-1)
            sal = 0.5 * (sal + torch.sigmoid(self.model(images.flip(-1), aux_flipped)).flip(-1))
        return sal.float()  # float32 under autocast too, for numpy, CRF and PNGs

    def _batch_saliency(self, batch: dict[str, Any]) -> Tensor:
        images = self._images(batch)
        key, aux = self._aux(batch, images)
        return self.predict_saliency(images, aux, allow_flip=flip_allowed(key))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Score the saliency against ``mask`` when the batch has one."""
        if batch.get("mask") is not None:
            self.score_validation(batch, batch_idx, self._batch_saliency(batch), self._images(batch))

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Return ``{"id", "size", "saliency"}`` for the pseudo-label writer."""
        return {"id": batch.get("id"), "size": batch.get("size"), "saliency": self._batch_saliency(batch)}

    def configure_optimizers(self) -> Any:
        """SGD (Nesterov) or Adam, encoder at ``encoder_lr_ratio * lr``, step decay at epoch fractions."""
        hp = self.hparams
        groups = [
            {
                "params": [p for p in self.model.encoder_parameters() if p.requires_grad],
                "lr": hp.lr * hp.encoder_lr_ratio,
            },
            {"params": [p for p in self.model.decoder_parameters() if p.requires_grad], "lr": hp.lr},
        ]
        groups = [g for g in groups if g["params"]]
        if hp.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=hp.momentum > 0
            )
        else:
            optimizer = torch.optim.Adam(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        return self.step_decay(optimizer, hp.lr_milestones, hp.lr_gamma)


class LabelRoundWriter(pl.Callback):
    """Write the :class:`SaliencyDetector`'s labels to a pseudo-label store after every label update.

    Registers itself as a label listener when fitting starts. After each epoch that changed labels, the
    whole bank (every id seen, updated or not) is written at original size as round
    ``round_template.format(epoch=epoch)`` (0-based epoch), each DDP rank writing the ids
    ``sorted(ids)[rank::world_size]``; the round is then completed and becomes the store's current round.
    A round of that name that is already complete (e.g. after resuming) is replaced.

    Args:
        store: A :class:`~usod.labels.PseudoLabelStore` or its root folder.
        round_template: Round name pattern with an ``{epoch}`` field.
    """

    def __init__(self, store: Any, round_template: str = "stage2-epoch{epoch}") -> None:
        from usod.labels import PseudoLabelStore

        self.store = store if isinstance(store, PseudoLabelStore) else PseudoLabelStore(Path(store))
        self.round_template = round_template
        self.written: list[str] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # any module with a label bank and listeners (SaliencyDetector, AdapterTransfer)
        has_labels = isinstance(getattr(pl_module, "label_listeners", None), list)
        if stage == "fit" and has_labels and self.write not in pl_module.label_listeners:
            pl_module.label_listeners.append(self.write)

    def write(self, module: SaliencyDetector, epoch: int, updated_ids: list[str]) -> None:
        """Write the current bank as a new round (a no-op after an epoch without updates)."""
        if not updated_ids:
            return
        name = self.round_template.format(epoch=epoch)
        rank, world = rank_world()
        labels = module.export_labels(original_size=True)
        ids = sorted(labels)
        meta = {
            "producer": type(module).__name__,
            "label_update": module.hparams.label_update,
            "epoch": epoch,
        }
        self.store.begin_round(name, meta=meta, overwrite=True)
        for sid in ids[rank::world]:
            self.store.write(name, sid, labels[sid])
        self.store.complete_round(name, expected_ids=ids)
        self.written.append(name)
