"""Lightning module for the stage-2 saliency detector (A2S: RAM detector + OLR; seed 000: SPR and L_ms).

With ``label_update="olr"`` or ``"spr"`` the module trains on the current label of every training image, kept
in a :class:`~usod.labels.LabelBank` and updated online at the end of every epoch (see
:mod:`usod.labels.bank`; the training step and the updates are
:class:`~usod.models.online_labels.OnlineLabelTraining`).
:class:`~usod.labels.LabelRoundWriter` writes each epoch's labels to a pseudo-label store;
:meth:`SaliencyDetector.export_labels` returns them.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usod.labels.bank import LabelBank
from usod.models.aux_input import batch_aux, check_aux_modality, flip_allowed
from usod.models.backbones import build_encoder
from usod.models.base import USODModule
from usod.models.online_labels import LabelListener, OnlineLabelTraining
from usod.models.saliency_detector.loss import BCESSIMIoULoss, IoUMultiScaleLoss
from usod.models.saliency_detector.refine import PixelAdaptiveRefiner
from usod.models.saliency_detector.torch_model import SaliencyDetectorModel

__all__ = ["LABEL_UPDATES", "LOSSES", "SaliencyDetector"]

LOSSES: tuple[str, ...] = ("bce_ssim_iou", "iou_ms")
LABEL_UPDATES: tuple[str, ...] = ("none", "olr", "spr")
SPR_INPUTS: tuple[str, ...] = ("label", "prediction")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


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
            encoder = build_encoder(backbone)
            if aux_modality != "none":
                aux_encoder = build_encoder(backbone)
        elif aux_modality != "none":
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

    def batch_saliency(self, batch: dict[str, Any]) -> Tensor:
        images = self._images(batch)
        key, aux = self._aux(batch, images)
        return self.predict_saliency(images, aux, allow_flip=flip_allowed(key))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Score the saliency against ``mask`` when the batch has one."""
        if batch.get("mask") is not None:
            self.score_validation(batch, batch_idx, self.batch_saliency(batch), self._images(batch))

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
