"""Training on a label bank with online label updates (OLR, SPR): the mixin of the label-updating modules.

See :mod:`usod.labels.bank` for how the bank's labels are staged, committed and shared across DDP ranks, and
:class:`usod.labels.LabelRoundWriter` for writing them to a pseudo-label store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from usod.models.aux_input import flip_allowed

__all__ = ["LabelListener", "OnlineLabelTraining"]

#: Called on every rank after each epoch's label update as ``fn(module, epoch, updated_ids)``.
LabelListener = Callable[[Any, int, list[str]], None]


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
        if getattr(self.loss_fn, "multi_scale", False):
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

    def label_round_meta(self) -> dict[str, Any]:
        """What a label round written from this module's bank records besides its producer."""
        return {"label_update": self.hparams.label_update}

    def commit_label_updates(self) -> None:
        """Apply the epoch's staged labels on every rank, then notify ``label_listeners``."""
        updated = self.label_bank.commit()
        self.last_updated_ids = updated
        if updated:
            self.label_epoch = self.current_epoch
        for listener in list(self.label_listeners):
            listener(self, self.current_epoch, updated)
