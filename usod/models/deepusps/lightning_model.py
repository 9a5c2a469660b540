"""Lightning module of DeepUSPS: pseudo-label refinement with historical moving averages, and fusion.

One class serves every network of the DeepUSPS pipeline (Nguyen et al., 2019, seed 002):

* **inter-image consistency** (Sec. 3.1): trained on one handcrafted method's maps, binarised at 1.5 times
  each map's mean (``target_threshold=None``), with the image-level loss ``L_beta = 1 - F_beta``;
* **self-supervision** (Sec. 3.2): a freshly initialised module trained on the last round's MVA maps
  (``target_threshold=0.5``);
* **fusion** (Sec. 3.3): ``K`` target maps per image (the refined maps of every method) and the mean of the
  per-method ``L_beta`` (``L_en``); the MVA is not needed there (``mva=False``).

Historical moving averages (MVA, Sec. 3.1): after every forward pass of training, each prediction (the
flip undone) is refined by a fully connected CRF on the training-resolution image and folded into a
per-image average, ``MVA <- (1 - alpha) CRF(y) + alpha MVA`` with ``alpha = 0.7``; the first CRF output of
an image starts its average. No extra forward pass is needed. The averages live in a
:class:`~usod.labels.LabelBank` (id -> HxW uint8 at training resolution, on the CPU, not
in checkpoints): updates are staged during the epoch and applied at its end, all-gathered across DDP ranks,
so each image gets one update per epoch (the paper's ``MVA(x, p, k)`` over epochs ``k``).
:class:`~usod.labels.LabelRoundWriter` (``at="end"``) writes the final averages to a pseudo-label store as a
round.

The training transform must be deterministic (resize only; ``augment=False``): the module flips images
itself and the averages are aligned with the un-augmented image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usod.labels.bank import LabelBank
from usod.models.backbones import build_encoder
from usod.models.base import USODModule
from usod.models.deepusps.loss import FBetaLoss, binarize_targets
from usod.models.deepusps.torch_model import DeepUSPSModel
from usod.ops.crf import dense_crf

__all__ = ["DEFAULT_MVA_CRF", "DeepUSPSRefiner"]

#: CRF of the moving averages: usod's dense CRF kernels with a soft unary (the network's probabilities),
#: five mean-field iterations (the averages need no more; the CRF runs on every training sample).
DEFAULT_MVA_CRF: dict[str, Any] = {
    "n_iters": 5,
    "sxy_gaussian": 3.0,
    "compat_gaussian": 3.0,
    "sxy_bilateral": 50.0,
    "srgb_bilateral": 5.0,
    "compat_bilateral": 10.0,
    "unary_confidence": None,
}


class DeepUSPSRefiner(USODModule):
    """DeepUSPS saliency network trained on pseudo labels with ``L_beta``, accumulating CRF'd MVA maps.

    Training batches need ``image`` (Bx3xHxW in [0, 1]), ``pseudo`` (BxKxHxW in [0, 1], ``K = num_targets``),
    ``id`` and ``size``; ``mask`` is never read in training. Validation batches with ``mask`` log
    ``val_mae`` and the SOD metrics (``val_max_f``, ... ``val_s_measure``).
    ``predict_step`` returns ``{"id", "size", "saliency"}``.

    Args:
        backbone: :class:`usod.models.backbones.BackboneConfig` fields (``None``: the bundled
            EfficientNet-Lite0). Fine-tuned.
        channels: Decoder width.
        num_targets: Target maps per image (1 for refinement, the number of methods for fusion).
        beta2: ``beta^2`` of the loss (0.3).
        target_threshold: ``None`` binarises each target map at ``adaptive_factor`` times its mean (the
            handcrafted maps, Sec. 3.1); a number binarises at that value (0.5 for MVA maps).
        adaptive_factor: The ``1.5`` of ``gamma = 1.5 mu``.
        mva: Accumulate the CRF'd moving averages during training.
        mva_alpha: ``alpha`` of the moving average (0.7).
        mva_start_epoch: First (0-based) epoch whose predictions enter the average. The paper starts at once
            (0) and trains 25 epochs, after which the first epochs weigh little (``0.7^24``); with a few
            epochs, starting later keeps the untrained network's first maps out of the labels.
        crf: Dense CRF settings for the moving averages (:func:`usod.ops.crf.dense_crf` arguments; missing
            keys from :data:`DEFAULT_MVA_CRF`), or ``None`` to average the raw predictions (the paper's
            "No CRF" ablation).
        hflip: Random horizontal flips (p = 0.5) done by the module, undone before the MVA update.
        lr: Adam learning rate of the decoder.
        encoder_lr_ratio: Encoder learning rate relative to ``lr``.
        weight_decay: Adam weight decay.
        encoder: An already built encoder instead of ``backbone`` (not saved in the hyperparameters).
    """

    method = "deepusps_refiner"

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        channels: int = 64,
        num_targets: int = 1,
        beta2: float = 0.3,
        target_threshold: float | None = None,
        adaptive_factor: float = 1.5,
        mva: bool = True,
        mva_alpha: float = 0.7,
        mva_start_epoch: int = 0,
        crf: dict[str, Any] | None = DEFAULT_MVA_CRF,  # noqa: B006 - read only
        hflip: bool = True,
        lr: float = 1e-3,
        encoder_lr_ratio: float = 0.1,
        weight_decay: float = 0.0,
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder"])
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        if not 0.0 <= mva_alpha < 1.0:
            raise ValueError(f"mva_alpha must be in [0, 1), got {mva_alpha}")
        if mva_start_epoch < 0:
            raise ValueError(f"mva_start_epoch must be >= 0, got {mva_start_epoch}")
        if target_threshold is not None and not 0.0 <= target_threshold < 1.0:
            raise ValueError(f"target_threshold must be None or in [0, 1), got {target_threshold}")
        if adaptive_factor <= 0:
            raise ValueError(f"adaptive_factor must be positive, got {adaptive_factor}")
        self.crf_params = None if crf is None else {**DEFAULT_MVA_CRF, **dict(crf)}
        if encoder is None:
            encoder = build_encoder(backbone)
        self.model = DeepUSPSModel(encoder, channels=channels)
        self.loss_fn = FBetaLoss(beta2)
        #: Moving averages of the CRF'd training predictions, id -> HxW uint8 at training resolution.
        self.mva_bank = LabelBank()
        #: Called on every rank after each epoch's MVA update as ``fn(module, epoch, updated_ids)``.
        self.label_listeners: list[Any] = []

    # ------------------------------------------------------------------ targets and MVA
    def training_targets(self, batch: dict[str, Any]) -> Tensor:
        """The batch's ``pseudo`` maps (BxKxHxW), binarised as configured, at the image resolution."""
        images = self._images(batch)
        pseudo = batch.get("pseudo")
        k = int(self.hparams.num_targets)
        if not isinstance(pseudo, Tensor) or pseudo.ndim != 4 or pseudo.shape[1] != k:
            shape = tuple(pseudo.shape) if isinstance(pseudo, Tensor) else None
            raise ValueError(
                f"training batches need 'pseudo' of shape Bx{k}xHxW (num_targets={k}), got {shape}; attach "
                "pseudo labels to the datamodule (see usod.data.datamodules.StackedLabelDataModule)"
            )
        pseudo = pseudo.float()
        if pseudo.shape[-2:] != images.shape[-2:]:
            pseudo = F.interpolate(pseudo, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return binarize_targets(pseudo, self.hparams.target_threshold, self.hparams.adaptive_factor)

    @torch.no_grad()
    def refine(self, images: Tensor, probs: Tensor) -> Tensor:
        """``CRF(y)`` of Bx1xHxW probabilities along their Bx3xHxW images (``y`` itself without ``crf``)."""
        if self.crf_params is None:
            return probs.float()

        rgb = (images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        rgb = rgb.permute(0, 2, 3, 1).cpu().numpy()
        prob = probs.detach().float()[:, 0].clamp(0, 1).cpu().numpy()
        out = [dense_crf(np.ascontiguousarray(rgb[i]), prob[i], **self.crf_params) for i in range(len(prob))]
        return torch.from_numpy(np.stack(out))[:, None].to(probs.device)

    @torch.no_grad()
    def update_mva(self, ids: Sequence[str], images: Tensor, probs: Tensor, sizes: Tensor | None) -> Tensor:
        """Stage ``(1 - alpha) CRF(y) + alpha MVA`` for every image of a batch; returns the staged maps."""
        refined = self.refine(images, probs).cpu()
        alpha = float(self.hparams.mva_alpha)
        new = []
        for i, sid in enumerate(ids):
            old = self.mva_bank.labels.get(sid)
            value = refined[i]
            if old is not None:
                prev = torch.from_numpy(old).float()[None] / 255.0
                if prev.shape[-2:] != value.shape[-2:]:
                    raise RuntimeError(
                        f"training image {sid!r} changed size between epochs ({tuple(prev.shape[-2:])} -> "
                        f"{tuple(value.shape[-2:])}); the moving averages need a fixed training resolution"
                    )
                value = (1.0 - alpha) * value + alpha * prev
            new.append(value)
            if sizes is not None and sid not in self.mva_bank.sizes:
                self.mva_bank.sizes[sid] = (int(sizes[i][0]), int(sizes[i][1]))
        staged = torch.stack(new).clamp(0, 1)
        self.mva_bank.stage(list(ids), staged)
        return staged

    def export_mva(self, original_size: bool = False) -> dict[str, np.ndarray]:
        """The moving averages, ``id -> HxW uint8`` (training resolution, or each image's original size)."""
        return self.mva_bank.export(original_size=original_size)

    def export_labels(self, original_size: bool = False) -> dict[str, np.ndarray]:
        """The pseudo labels this module produces: its moving averages (as :meth:`export_mva`)."""
        return self.export_mva(original_size=original_size)

    def label_round_meta(self) -> dict[str, Any]:
        """What a round of the moving averages records besides its producer."""
        return {"mva_alpha": self.hparams.mva_alpha}

    # ------------------------------------------------------------------ lightning hooks
    def forward(self, images: Tensor) -> Tensor:
        """Saliency logits Bx1xHxW for Bx3xHxW images in [0, 1]."""
        return self.model(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """``L_beta`` (or ``L_en``) on flipped views, then the MVA update from this same prediction."""
        images = self._images(batch)
        target = self.training_targets(batch)
        b = images.shape[0]
        if self.hparams.hflip:
            flips = (torch.rand(b) < 0.5).to(images.device).view(-1, 1, 1, 1)
        else:
            flips = torch.zeros(b, 1, 1, 1, dtype=torch.bool, device=images.device)
        views = torch.where(flips, images.flip(-1), images)
        target_v = torch.where(flips, target.flip(-1), target)
        probs = torch.sigmoid(self.model(views))
        loss = self.loss_fn(probs, target_v)
        self.log("train_loss", loss, prog_bar=True, batch_size=b)
        if self.wants_panels(batch_idx):
            self.log_panels("train", batch_idx, batch, image=views, pseudo=target_v, prediction=probs)
        if self.hparams.mva and self.current_epoch >= self.hparams.mva_start_epoch:
            ids = batch.get("id")
            if ids is None or len(ids) != b:
                raise ValueError("the moving averages need batch['id'] (one sample id per image)")
            unflipped = torch.where(flips, probs.detach().flip(-1), probs.detach())
            self.update_mva([str(i) for i in ids], images, unflipped, batch.get("size"))
        return loss

    def on_train_epoch_end(self) -> None:
        """Apply the epoch's MVA updates on every rank (a collective under DDP), then notify listeners."""
        if self.hparams.mva:
            updated = self.mva_bank.commit()
            for listener in list(self.label_listeners):
                listener(self, self.current_epoch, updated)

    def predict_saliency(self, images: Tensor) -> Tensor:
        """Bx1xHxW float32 saliency in [0, 1] of Bx3xHxW RGB images in [0, 1] (as the other modules')."""
        return torch.sigmoid(self.model(images).float())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """MAE and the SOD metrics against ``mask`` when the batch has one."""
        if batch.get("mask") is not None:
            images = self._images(batch)
            self.score_validation(batch, batch_idx, self.predict_saliency(images), images)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam (betas 0.9, 0.999), the encoder at ``encoder_lr_ratio * lr``."""
        hp = self.hparams
        groups = [
            {
                "params": [p for p in self.model.encoder_parameters() if p.requires_grad],
                "lr": hp.lr * hp.encoder_lr_ratio,
            },
            {"params": [p for p in self.model.decoder_parameters() if p.requires_grad], "lr": hp.lr},
        ]
        return torch.optim.Adam([g for g in groups if g["params"]], lr=hp.lr, weight_decay=hp.weight_decay)
