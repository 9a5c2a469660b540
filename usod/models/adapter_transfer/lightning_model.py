"""Lightning module for adapter tuning: transfer an NSI saliency model to another domain (seed 000).

A :class:`~usod.models.saliency_detector.SaliencyDetector` (or a
:class:`~usod.models.cue_extractor.CueExtractor`) trained on natural still images is loaded and frozen whole
(weights, BatchNorm statistics); parallel adapters are hooked onto the deep layers of its encoder
(:class:`~usod.models.adapter_transfer.EncoderAdapters`) and only they are trained, without any label, on
the target images (video frames, optionally with optical flow; remote-sensing images; ...):

* **Detector base** (stage 2): the target's pseudo labels start as the base model's own predictions, made
  once per image the first time it is seen (adapters idle) and refined with denseCRF + median filter (A2S
  eq. 6) unless ``initial_labels="raw"``, or come from the batch's ``pseudo`` when the datamodule has a
  pseudo-label folder (e.g. written by ``usod label --ckpt base.ckpt``). The adapters learn them with the
  stage-2 loss while SPR (or OLR) rectifies them after every epoch, exactly as in
  :class:`~usod.models.saliency_detector.SaliencyDetector` (same :class:`LabelBank`, the same
  :class:`LabelRoundWriter` writes them to a pseudo-label store).
* **Cue-extractor base** (stage 1): the adapters are trained with the base's own unsupervised loss (ADB or
  PCL-SD) on the target images; no label is involved.

The checkpoint is self-contained: the base's class and hyper-parameters are stored in the hyper-parameters
(``base_class``, ``base_hparams``) and its weights in the state dict (``base.``), so
:func:`usod.models.base.load_module` rebuilds the adapted model without the base file, and ``usod predict``
and ``usod label`` work with it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from usod.data.io import InvalidInputError
from usod.labels.bank import LabelBank
from usod.models.adapter_transfer.torch_model import EncoderAdapters
from usod.models.aux_input import batch_aux, check_aux_modality, flip_allowed
from usod.models.base import USODModule, checked_arguments, checkpoint_class, load_module, read_checkpoint
from usod.models.cue_extractor.loss import PCLSDLoss
from usod.models.online_labels import LabelListener, OnlineLabelTraining
from usod.models.registry import UnknownModelError, model_class
from usod.models.saliency_detector.loss import BCESSIMIoULoss, IoUMultiScaleLoss
from usod.models.saliency_detector.refine import PixelAdaptiveRefiner
from usod.ops.crf import PostProcessConfig, postprocess

__all__ = ["AdapterTransfer", "load_base"]

LOSSES: tuple[str, ...] = ("bce_ssim_iou", "iou_ms")
LABEL_UPDATES: tuple[str, ...] = ("none", "olr", "spr")
INITIAL_LABELS: tuple[str, ...] = ("crf", "raw")


def _plain(value: Any) -> Any:
    """Hyper-parameters as plain Python containers (checkpoints are read with ``weights_only=True``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _rebuildable(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A base's hyper-parameters for rebuilding it from its class: no private keys, no weight files (the
    weights come from the state dict) and no feature cache (the transfer never uses the base's training
    path)."""
    out = {k: _plain(v) for k, v in hparams.items() if not str(k).startswith("_")}
    for key, value in out.items():
        if key.endswith("backbone") and isinstance(value, dict) and "weights" in value:
            out[key] = {**value, "weights": "none"}
    if "feature_cache" in out:
        out["feature_cache"] = False
    return out


@contextlib.contextmanager
def _own_hyperparameters() -> Iterator[None]:
    """Build a nested LightningModule with its own hyper-parameters.

    While ``LightningCLI`` instantiates the model, Lightning hands the CLI's init arguments (those of the
    AdapterTransfer) to *every* ``save_hyperparameters()`` call; the base built inside would record them
    instead of its own. This clears that context for the block.
    """
    try:
        from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - other Lightning versions
        yield
        return
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


def load_base(path: str | Path) -> tuple[USODModule, str, dict[str, Any]]:
    """Load a base checkpoint: the module, its class path and its rebuildable hyper-parameters."""
    path = Path(path)
    cls = checkpoint_class(read_checkpoint(path), path)  # checked before anything is built
    if cls.method == "adapter_transfer":
        raise InvalidInputError(path, "is already an adapted model; transfer from its base instead")
    if cls.method not in BASE_METHODS:
        raise InvalidInputError(
            path, f"the base must be a SaliencyDetector or a CueExtractor, got {cls.__name__}"
        )
    with _own_hyperparameters():
        module = load_module(path)
    class_path = f"{type(module).__module__}.{type(module).__qualname__}"
    return module, class_path, _rebuildable(module.hparams)


#: Methods an adapter transfers from (``USODModule.method`` of the base).
BASE_METHODS: tuple[str, ...] = ("saliency_detector", "cue_extractor")


class AdapterTransfer(OnlineLabelTraining, USODModule):
    """Adapter tuning of a frozen NSI saliency model on a target domain (seed 000, ``F' = T(F) + T_a(F)``).

    Batches are those of the base model: ``image``, ``id``, ``size``, optionally ``pseudo``, the auxiliary
    image and, in validation, ``mask`` (which logs ``val_mae`` and the SOD metrics like the detector).
    ``predict_step`` returns ``{"id", "size", "saliency"}``.

    Auxiliary input: with a base that has its own auxiliary stream (trained with ``aux_modality``), the
    batch's auxiliary image goes into that stream (``aux_modality`` here defaults to the base's). With an RGB
    base and ``aux_modality`` set (e.g. ``"flow"`` for video), the auxiliary image enters the adapters instead
    (see :mod:`usod.models.adapter_transfer.torch_model`).

    Args:
        base: Checkpoint of the base model (a ``SaliencyDetector`` or ``CueExtractor`` trained on still
            images). Only read when ``base_class``/``base_hparams`` are not given, i.e. when the transfer
            starts; kept in the hyper-parameters for the record.
        base_class: Import path of the base's class (filled in from ``base``).
        base_hparams: The base's hyper-parameters (filled in from ``base``).
        adapt_levels: How many of the deepest encoder feature levels get adapters (2: e.g. ResNet
            ``layer3``/``layer4``).
        adapter_ratio: Adapter bottleneck width relative to each adapted unit's output channels.
        aux_modality: ``None`` takes the base's; ``"none"``, ``"depth"``, ``"thermal"``, ``"flow"`` or
            ``"auto"`` (see :mod:`usod.models.aux_input`).
        loss: Detector base: ``"bce_ssim_iou"`` (A2S) or ``"iou_ms"`` (seed 000); ``None`` takes the base's.
        label_update: Detector base: ``"spr"`` (default), ``"olr"`` or ``"none"``.
        initial_labels: Detector base, without ``pseudo`` in the batch: ``"crf"`` (base prediction + denseCRF
            + median filter, A2S eq. 6) or ``"raw"`` (the base prediction itself).
        spr_weights: ``(l1, l2, l3)`` of ``G_ref = l1 R_pri + l2 R_post + l3 G_pre`` (normalised).
        spr_warmup_epochs: Epochs without SPR updates.
        olr_lambda: ``lambda`` of OLR after its warm-up.
        olr_warmup_epochs: Epochs with ``lambda = 1`` (2, as in A2S and :class:`SaliencyDetector`).
        hflip: Random horizontal flips made by the module (never with flow).
        predict_flip: Average predictions with those of the mirrored input (never with flow).
        optimizer: ``"adam"`` (default) or ``"sgd"`` (Nesterov, momentum 0.9).
        lr: Learning rate of the adapters.
        weight_decay: Weight decay of the adapters.
        lr_milestones: Epoch fractions at which the learning rate is multiplied by ``lr_gamma``.
        lr_gamma: Decay factor.
    """

    method = "adapter_transfer"

    def __init__(
        self,
        base: str | None = None,
        base_class: str | None = None,
        base_hparams: dict[str, Any] | None = None,
        adapt_levels: int = 2,
        adapter_ratio: float = 0.25,
        aux_modality: Literal["none", "auto", "depth", "thermal", "flow"] | None = None,
        loss: Literal["bce_ssim_iou", "iou_ms"] | None = None,
        label_update: Literal["none", "olr", "spr"] = "spr",
        initial_labels: Literal["crf", "raw"] = "crf",
        spr_weights: Sequence[float] = (0.1, 0.7, 0.2),
        spr_warmup_epochs: int = 1,
        olr_lambda: float = 0.4,
        olr_warmup_epochs: int = 2,
        hflip: bool = True,
        predict_flip: bool = False,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_milestones: Sequence[float] = (0.6, 0.8),
        lr_gamma: float = 0.1,
    ) -> None:
        super().__init__()
        if base_class is None or base_hparams is None:
            if base is None:
                raise ValueError("AdapterTransfer needs `base`, the checkpoint of the model to transfer")
            module, base_class, base_hparams = load_base(base)
        else:
            # from usod's registry only: base_class comes from a checkpoint, which must not name code to run
            try:
                cls = model_class(base_class)
            except UnknownModelError as err:
                raise InvalidInputError(str(base) if base is not None else "base_class", str(err)) from None
            if cls.method not in BASE_METHODS:
                raise ValueError(f"the base must be a SaliencyDetector or a CueExtractor, got {cls.__name__}")
            base_hparams = checked_arguments(
                cls, base_hparams, str(base) if base is not None else "base_hparams"
            )
            with _own_hyperparameters():
                module = cls(**base_hparams)
        if module.method not in BASE_METHODS:
            raise ValueError(
                f"the base must be a SaliencyDetector or a CueExtractor, got {type(module).__name__}"
            )
        base_aux = str(base_hparams.get("aux_modality", "none"))
        if aux_modality is None:
            aux_modality = base_aux  # type: ignore[assignment]
        check_aux_modality(str(aux_modality))
        if base_aux != "none" and aux_modality == "none":
            raise ValueError(f"the base has a {base_aux!r} stream; aux_modality='none' cannot feed it")
        if loss is None:
            loss = base_hparams.get("loss", "bce_ssim_iou") if module.method == "saliency_detector" else None
        for name, value, allowed in (
            ("label_update", label_update, LABEL_UPDATES),
            ("initial_labels", initial_labels, INITIAL_LABELS),
            ("optimizer", optimizer, ("adam", "sgd")),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
        if (module.method == "saliency_detector") and loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        if len(spr_weights) != 3 or min(spr_weights) < 0 or sum(spr_weights) <= 0:
            raise ValueError(
                f"spr_weights must be 3 non-negative numbers with a positive sum, got {spr_weights}"
            )
        if not 0.0 <= olr_lambda <= 1.0:
            raise ValueError(f"olr_lambda must be in [0, 1], got {olr_lambda}")
        if any(not 0.0 < m <= 1.0 for m in lr_milestones):
            raise ValueError(f"lr_milestones must be epoch fractions in (0, 1], got {list(lr_milestones)}")
        self.save_hyperparameters(
            {
                "base": None if base is None else str(base),
                "base_class": base_class,
                "base_hparams": _plain(base_hparams),
                "adapt_levels": adapt_levels,
                "adapter_ratio": adapter_ratio,
                "aux_modality": aux_modality,
                "loss": loss,
                "label_update": label_update,
                "initial_labels": initial_labels,
                "spr_weights": list(spr_weights),
                "spr_warmup_epochs": spr_warmup_epochs,
                "olr_lambda": olr_lambda,
                "olr_warmup_epochs": olr_warmup_epochs,
                "hflip": hflip,
                "predict_flip": predict_flip,
                "optimizer": optimizer,
                "lr": lr,
                "weight_decay": weight_decay,
                "lr_milestones": list(lr_milestones),
                "lr_gamma": lr_gamma,
            }
        )
        self.base = module
        self.is_detector = module.method == "saliency_detector"
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.base.eval()
        #: Where the auxiliary image goes: "none", "base" (the base's own stream) or "adapters".
        self.aux_route = "none" if aux_modality == "none" else ("base" if base_aux != "none" else "adapters")
        self.adapters = EncoderAdapters(
            self.base.model.encoder,
            levels=adapt_levels,
            ratio=adapter_ratio,
            aux=self.aux_route == "adapters",
        )
        self.loss_fn: Any = None
        if self.is_detector:
            binarize = bool(base_hparams.get("binarize_target", True))
            if loss == "bce_ssim_iou":
                self.loss_fn = BCESSIMIoULoss(binarize=binarize)
            else:
                self.loss_fn = IoUMultiScaleLoss(
                    float(base_hparams.get("ms_scale_weight", 0.5)),
                    float(base_hparams.get("ms_consistency_weight", 1.0)),
                    binarize=binarize,
                )
            self.refiner = PixelAdaptiveRefiner(
                base_hparams.get("par_dilations", (1, 2, 4, 8)), int(base_hparams.get("par_iters", 6))
            )
        self.label_bank = LabelBank()
        #: Called on every rank after each epoch's label update as ``fn(module, epoch, updated_ids)``.
        self.label_listeners: list[LabelListener] = []
        self.label_epoch: int | None = None
        self.last_updated_ids: list[str] = []

    # ------------------------------------------------------------------ structure
    def train(self, mode: bool = True) -> AdapterTransfer:
        """Set train/eval mode on the adapters; the frozen base network always stays in eval mode.

        The loss of a stage-1 base follows ``mode`` (it drops half the pixels in training only, A2S Sec.
        III-A); it has no parameters or statistics.
        """
        super().train(mode)
        self.base.eval()
        base_loss = getattr(self.base, "loss_fn", None)
        if not self.is_detector and isinstance(base_loss, torch.nn.Module):
            base_loss.train(mode)
        return self

    @property
    def needs_fixed_training_images(self) -> bool:
        """A detector base trains on the label bank (see :class:`OnlineLabelTraining`)."""
        return self.is_detector

    def compile_targets(self) -> list[torch.nn.Module]:
        """The base network, with the adapters in their hooks (traced as part of each encoder stage)."""
        return self.base.compile_targets()

    def adapter_parameters(self) -> list[torch.nn.Parameter]:
        """The trained parameters (the adapters)."""
        return list(self.adapters.parameters())

    def parameter_counts(self) -> dict[str, int]:
        """``{"trained": adapter parameters, "base": base parameters, "total": both}``."""
        trained = sum(p.numel() for p in self.adapter_parameters())
        base = sum(p.numel() for p in self.base.parameters())
        return {"trained": trained, "base": base, "total": trained + base}

    # ------------------------------------------------------------------ forward
    def _aux(self, batch: dict[str, Any], images: Tensor) -> tuple[str | None, Tensor | None]:
        return batch_aux(batch, self.hparams.aux_modality, images)

    def _raw(self, images: Tensor, aux: Tensor | None) -> Any:
        """The base network's output with the adapters in their current mode: detector logits, or the
        cue extractor's :class:`CueExtractorOutput`."""
        base_aux = aux if self.aux_route == "base" else None
        with self.adapters.aux_context(
            self.base.model.encoder, aux if self.aux_route == "adapters" else None
        ):
            if self.is_detector:
                return self.base.model(images, base_aux)
            model = self.base.model
            return model.decode(model.features(images, base_aux), images.shape[-2:])

    def _saliency_of(self, raw: Any) -> Tensor:
        return torch.sigmoid(raw) if self.is_detector else raw.saliency

    def forward(self, images: Tensor, aux: Tensor | None = None) -> Tensor:
        """Adapted saliency Bx1xHxW in [0, 1] (``aux``: the auxiliary image, when the model uses one)."""
        return self._saliency_of(self._raw(images, aux))

    @torch.no_grad()
    def base_saliency(self, images: Tensor, aux: Tensor | None = None) -> Tensor:
        """The base model's saliency (adapters idle), Bx1xHxW in [0, 1]."""
        with self.adapters.disabled():
            return self._saliency_of(self._raw(images, aux))

    def predict_saliency(self, images: Tensor, aux: Tensor | None = None, allow_flip: bool = True) -> Tensor:
        """Bx1xHxW adapted saliency, flip-averaged if ``predict_flip`` (and allowed)."""
        sal = self(images, aux)
        if self.hparams.predict_flip and allow_flip:
            sal = 0.5 * (sal + self(images.flip(-1), None if aux is None else aux.flip(-1)).flip(-1))
        return sal.float()  # float32 under autocast too, for numpy, CRF and PNGs

    def batch_saliency(self, batch: dict[str, Any]) -> Tensor:
        images = self._images(batch)
        key, aux = self._aux(batch, images)
        return self.predict_saliency(images, aux, allow_flip=flip_allowed(key))

    # ------------------------------------------------------------------ labels (detector base)
    def export_labels(self, original_size: bool = False) -> dict[str, np.ndarray]:
        """The current target-domain labels, ``id -> HxW uint8``."""
        return self.label_bank.export(original_size=original_size)

    def initial_labels(self, images: Tensor, aux: Tensor | None) -> Tensor:
        """First labels of target images: the base prediction, CRF + median filtered unless ``"raw"``."""
        prob = self.base_saliency(images, aux).float()
        if self.hparams.initial_labels == "raw":
            return prob

        config = PostProcessConfig()
        rgb = (
            (images.detach().float().clamp(0, 1) * 255)
            .round()
            .to(torch.uint8)
            .permute(0, 2, 3, 1)
            .cpu()
            .numpy()
        )
        probs = prob[:, 0].cpu().numpy()
        labels = [postprocess(np.ascontiguousarray(rgb[i]), probs[i], config) for i in range(len(probs))]
        return torch.from_numpy(np.stack(labels)).unsqueeze(1).to(images.device, torch.float32) / 255.0

    def training_targets(self, batch: dict[str, Any], images: Tensor, aux: Tensor | None) -> Tensor:
        """The current labels of the batch (new ids get the batch's ``pseudo`` or :meth:`initial_labels`)."""
        ids = batch.get("id")
        if ids is None or len(ids) != images.shape[0]:
            raise ValueError("adapter transfer needs batch['id'] (one sample id per image)")
        ids = [str(i) for i in ids]
        pseudo = batch.get("pseudo")
        if not isinstance(pseudo, Tensor) and any(i not in self.label_bank for i in ids):
            pseudo = self.initial_labels(images, aux)
        return self.label_bank.targets(
            ids, images, pseudo if isinstance(pseudo, Tensor) else None, batch.get("size")
        )

    # ------------------------------------------------------------------ lightning hooks
    def on_fit_start(self) -> None:
        super().on_fit_start()
        counts = self.parameter_counts()
        self.print(
            f"AdapterTransfer: training {counts['trained']:,} adapter parameters "
            f"({100.0 * counts['trained'] / counts['total']:.2f} % of {counts['total']:,}); "
            f"adapted units: {', '.join(self.adapters.unit_names)}"
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Unsupervised adapter step: no ground truth is read."""
        images = self._images(batch)
        key, aux = self._aux(batch, images)
        b = images.shape[0]
        if not self.is_detector:
            out = self._raw(images, aux)
            loss = self.base.loss_fn(out.all_thetas, **self._stage1_loss_kwargs())
            self.log("train_loss", loss, prog_bar=True, batch_size=b)
            return loss
        target = self.training_targets(batch, images, aux)
        return self.train_on_labels(batch, batch_idx, images, aux, key, target, self._raw)

    def _stage1_loss_kwargs(self) -> dict[str, Any]:

        if isinstance(self.base.loss_fn, PCLSDLoss):
            return {"progress": self.training_progress()}
        return {}

    def _scaled_size(self, size: Sequence[int]) -> tuple[int, int]:
        stride = int(max(getattr(self.base.model.encoder, "strides", [32]) or [32]))
        scale = random.choice(list(self.base.hparams.get("ms_scales", (0.6, 0.8, 1.2, 1.4))))
        return tuple(max(stride, round(int(s) * scale / stride) * stride) for s in size)  # type: ignore[return-value]

    def on_train_epoch_end(self) -> None:
        """Apply the epoch's label updates on every rank, then notify :attr:`label_listeners`."""
        if self.is_detector:
            self.commit_label_updates()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Score the adapted saliency against ``mask`` when the batch has one."""
        if batch.get("mask") is not None:
            self.score_validation(batch, batch_idx, self.batch_saliency(batch))

    def configure_optimizers(self) -> Any:
        """Adam (or Nesterov SGD) on the adapters only, with step decay at epoch fractions."""
        hp = self.hparams
        params = self.adapter_parameters()
        if hp.optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=hp.lr, weight_decay=hp.weight_decay
            )
        else:
            optimizer = torch.optim.SGD(
                params, lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay
            )
        return self.step_decay(optimizer, hp.lr_milestones, hp.lr_gamma)
