"""Base class of usod's LightningModules and the checkpoint loader shared by every command."""

from __future__ import annotations

import inspect
import io
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from usod import loggers
from usod.data.io import InvalidInputError, atomic_write_bytes
from usod.metrics import SOD_KEYS, SODMetrics
from usod.models.files import load_torch_file
from usod.models.registry import UnknownModelError, model_class

#: Checkpoint key holding the import path of the module class that wrote it.
CLASS_KEY = "usod_class"

#: SOD metrics logged as ``<stage>_<key>`` by :meth:`USODModule.log_sod_scores` (``w_f`` when computed).
SOD_LOG_KEYS: tuple[str, ...] = SOD_KEYS


class USODModule(pl.LightningModule):
    """A LightningModule whose checkpoints say which class wrote them.

    ``predict_step`` of every usod module returns ``{"id", "size", "saliency"}`` (saliency Bx1xhxw in
    [0, 1]), which :class:`~usod.labels.PseudoLabelWriter` and ``usod predict`` consume.

    Evaluation shared by every module:

    * :meth:`score_validation` (called by each module's ``validation_step`` with its saliency) updates
      the SOD metrics against the batch's ``mask``; ``on_validation_epoch_end`` logs ``val_mae``,
      ``val_max_f``, ... ``val_s_measure`` once the validation set had masks (weighted F only in test, it
      is the slow one);
    * ``test_step`` scores ``predict_step``'s saliency against the batch's ``mask`` with every SOD metric
      (weighted F included) and logs ``test_mae``, ``test_max_f``, ... ``test_w_f`` at the end of the test;
    * :meth:`log_sod_scores` logs a :class:`~usod.metrics.SODMetrics`' scores as ``<stage>_<key>`` and its
      average curves as a PR-curve table (wandb), from states synchronised across DDP ranks;
    * :meth:`log_panels` shows image / pseudo label / prediction / ground truth of a few samples of the
      first batch of an epoch (rank zero, wandb only).
    """

    #: Samples per panel of :meth:`log_panels`.
    num_panels: int = 4

    #: Short name of the method (``usod list models``, wandb run names); empty: the class name in snake case.
    method: str = ""

    @property
    def fixed_train_shards(self) -> bool:
        """Whether, under DDP, each rank should train on the same shard of the data every epoch.

        ``True`` for modules with per-sample caches; the usod datamodules then train with a
        :class:`~usod.data.datamodules.base.FixedShardSampler` instead of Lightning's reshuffling one.
        """
        return False

    @property
    def needs_fixed_training_images(self) -> bool:
        """Whether training needs each sample's image to be the same every epoch (no random augmentation):
        modules that keep per-sample state keyed by id (a label bank, a feature cache). Checked when fitting
        starts against the datamodule's transform, instead of failing when a sample comes back changed."""
        return False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # metrics, not ``self.log(..., sync_dist=True)``: their states are reduced over DDP ranks, which stays
        # exact when ranks score different numbers of images
        self.val_metrics = SODMetrics(weighted_f=False)
        self._val_has_mask = False
        self.test_metrics = SODMetrics()
        self._test_has_mask = False

    # ------------------------------------------------------------------ evaluation and logging helpers
    def log_sod_scores(
        self, stage: str, metrics: SODMetrics, skip: tuple[str, ...] = (), prog_bar_key: str = "max_f"
    ) -> dict[str, Tensor]:
        """Log ``metrics``' scores as ``<stage>_<key>`` and its curves as ``<stage>_pr_curve``; reset it.

        Call it on every rank (computing the scores and curves synchronises the states across processes).

        Args:
            stage: Key prefix (``"val"``, ``"test"``).
            metrics: The accumulated metrics.
            skip: Keys not to log (e.g. ``"mae"`` when the module logs its own ``val_mae``).
            prog_bar_key: Key shown in the progress bar.

        Returns:
            The computed scores.
        """
        scores = metrics.compute()
        curves = metrics.curves()
        for key in SOD_LOG_KEYS:
            if key in scores and key not in skip:
                # already reduced over DDP ranks (the same on all): "max" keeps them exact and tells Lightning
                # that they are synchronised
                self.log(
                    f"{stage}_{key}",
                    scores[key].float(),
                    prog_bar=key == prog_bar_key,
                    sync_dist=True,
                    reduce_fx="max",
                )
        if not self._sanity_checking():
            loggers.log_curves(self._trainer, f"{stage}_pr_curve", curves)
        metrics.reset()
        return scores

    def _sanity_checking(self) -> bool:
        return bool(self._trainer is not None and getattr(self._trainer, "sanity_checking", False))

    def wants_panels(self, batch_idx: int) -> bool:
        """Whether :meth:`log_panels` would log for this batch (first batch, rank zero, a wandb logger)."""
        trainer = self._trainer
        return (
            batch_idx == 0
            and trainer is not None
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and bool(loggers.media_loggers(trainer))
        )

    @torch.no_grad()
    def log_panels(
        self, stage: str, batch_idx: int, batch: dict[str, Any] | None = None, **maps: Any
    ) -> bool:
        """Log ``<stage>_panels``: image / pseudo label / prediction / ground truth of a few samples.

        Only for the first batch of an epoch, on rank zero, with a wandb logger (cheap otherwise).

        Args:
            stage: Key prefix.
            batch_idx: Index of the batch.
            batch: The batch, for its ``id`` (captions).
            **maps: Bx?xHxW maps in [0, 1]: ``image``, ``aux``, ``pseudo``, ``prediction``, ``mask``. In
                validation and test the batch's ``depth``, ``thermal`` or ``flow`` is shown too.
        """
        if not self.wants_panels(batch_idx):
            return False

        n = self.num_panels
        if stage in ("val", "test") and isinstance(batch, dict) and "aux" not in maps:
            # the auxiliary input as its own column (evaluation batches are not flipped: it matches the image)
            maps = {
                **{k: batch[k] for k in ("depth", "thermal", "flow") if isinstance(batch.get(k), Tensor)},
                **maps,
            }
        # to the CPU; a multi-target pseudo label (DeepUSPS fusion) shows its first map
        shown = {}
        for key, value in maps.items():
            if isinstance(value, Tensor) and value.ndim == 4:
                channels = 3 if key in ("image", "aux", "depth", "thermal", "flow") else 1
                shown[key] = value[:n, :channels].detach().float().cpu()
        ids = batch.get("id") if isinstance(batch, dict) else None
        return loggers.log_panels(self._trainer, f"{stage}_panels", shown, ids=ids, max_samples=n)

    # ------------------------------------------------------------------ validation
    def score_validation(
        self, batch: dict[str, Any], batch_idx: int, saliency: Tensor, image: Tensor | None = None
    ) -> bool:
        """Score a validation batch's ``saliency`` (Bx1xhxw in [0, 1]) against its ``mask``, if it has one.

        Updates the SOD metrics (logged at the end of validation as ``val_mae``, ``val_max_f``, ...: the
        pysodmetrics conventions, the same numbers ``test_*`` and ``usod evaluate`` give) and shows panels of
        ``image`` / prediction / mask. The mask is resized to the saliency's size (bilinear).

        Returns:
            Whether the batch had a mask.
        """
        mask = batch.get("mask")
        if mask is None:
            return False
        mask = mask.float()
        if mask.shape[-2:] != saliency.shape[-2:]:
            mask = F.interpolate(mask, size=saliency.shape[-2:], mode="bilinear", align_corners=False)
        self.val_metrics.update(saliency, mask)
        self._val_has_mask = True
        image = batch.get("image") if image is None else image
        self.log_panels("val", batch_idx, batch, image=image, prediction=saliency, mask=mask)
        return True

    def on_validation_epoch_end(self) -> None:
        """Log the SOD metrics accumulated over the validation set (synchronised across ranks)."""
        if self._val_has_mask:
            self.log_sod_scores("val", self.val_metrics)
        self._val_has_mask = False

    # ------------------------------------------------------------------ prediction
    def batch_saliency(self, batch: dict[str, Any]) -> Tensor:
        """Bx1xHxW saliency in [0, 1] of a batch: ``predict_saliency`` on its images by default; modules with
        an auxiliary input (depth, thermal, flow) pass it on."""
        return self.predict_saliency(self._images(batch))

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``{"id", "size", "saliency"}`` for ``usod predict`` and the pseudo-label writer (see
        :meth:`batch_saliency`)."""
        return {"id": batch.get("id"), "size": batch.get("size"), "saliency": self.batch_saliency(batch)}

    # ------------------------------------------------------------------ test
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Score ``predict_step``'s saliency against ``mask`` (every SOD metric, weighted F included).

        Raises:
            ValueError: The batch has no ``mask`` (the test set needs ground truth).
        """
        mask = batch.get("mask")
        if not isinstance(mask, Tensor):
            raise ValueError(
                "test batches need 'mask' (ground-truth masks); the test set of the datamodule has none"
            )
        sal = self.predict_step(batch, batch_idx)["saliency"].float()
        mask = mask.float()
        if mask.shape[-2:] != sal.shape[-2:]:
            mask = F.interpolate(mask, size=sal.shape[-2:], mode="bilinear", align_corners=False)
        self.test_metrics.update(sal, mask)
        self._test_has_mask = True
        self.log_panels("test", batch_idx, batch, image=batch.get("image"), prediction=sal, mask=mask)

    def on_test_epoch_end(self) -> None:
        """Log ``test_<metric>`` for every SOD metric and the test PR curve."""
        if self._test_has_mask:
            self.log_sod_scores("test", self.test_metrics)
        self._test_has_mask = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        class_path = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[CLASS_KEY] = class_path
        # LightningCLI (``usod validate|test --ckpt_path``) rebuilds a subclass-mode model from
        # ``hyper_parameters["_class_path"]``; modules built in Python (``usod pipeline``, notebooks) lack it.
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict) and "_class_path" not in hparams:
            hparams["_class_path"] = class_path

    def on_train_epoch_start(self) -> None:
        """Log the epoch's learning rate: ``lr``, the largest over the parameter groups (the module's rate;
        encoders often train at a fraction of it), and ``lr_group<i>`` of each group when there are several.

        Schedules (``step_decay``) change it during training; dashboards then show where it dropped.
        """
        trainer = self._trainer
        if trainer is None or not trainer.optimizers:
            return
        rates = [float(group["lr"]) for group in trainer.optimizers[0].param_groups]
        named = {
            "lr": max(rates),
            **({f"lr_group{i}": r for i, r in enumerate(rates)} if len(rates) > 1 else {}),
        }
        for key, rate in named.items():  # the same on every rank: "max" keeps it and marks it synchronised
            self.log(key, rate, on_step=False, on_epoch=True, batch_size=1, sync_dist=True, reduce_fx="max")

    def on_fit_start(self) -> None:
        """Refuse an augmenting datamodule when ``needs_fixed_training_images``, and silence Lightning's
        "modules in eval mode" warning when only frozen parts are in eval mode.

        usod keeps frozen encoders and branches in eval mode on purpose (their BatchNorm statistics must not
        move). Lightning warns about any module in eval mode at the start of training; the warning is kept
        when a module in eval mode has trainable parameters, which would be a mistake.
        """
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if self.needs_fixed_training_images and getattr(datamodule, "augment", False):
            raise ValueError(
                f"{type(self).__name__} keeps per-sample state (online labels or cached features), so it "
                "needs a sample's image to be the same every epoch, but the datamodule augments at random: "
                "set the datamodule's augment=False (resize only; the module flips images itself)"
            )
        in_eval = [m for m in self.modules() if not m.training]
        if in_eval and not any(p.requires_grad for m in in_eval for p in m.parameters()):
            import warnings

            warnings.filterwarnings(
                "ignore", message=rf"Found {len(in_eval)} module\(s\) in eval mode at the start of training"
            )

    @staticmethod
    def _images(batch: dict[str, Any]) -> Tensor:
        """``batch["image"]``, checked to be a Bx3xHxW floating-point tensor (RGB in [0, 1])."""
        images = batch.get("image")
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"batch['image'] must be a Bx3xHxW float tensor, got {shape}")
        if not images.is_floating_point():  # uint8 images would be normalised into NaN by the encoders
            raise ValueError(
                f"batch['image'] must be floating point RGB in [0, 1], got {images.dtype} (e.g. images / 255)"
            )
        return images

    # ------------------------------------------------------------------ schedules

    def _training_length(self) -> tuple[str, int] | None:
        """``("epoch", max_epochs)``, else ``("step", max_steps)``, else ``None`` (no finite end)."""
        trainer = self._trainer
        if trainer is None:
            return None
        max_epochs = getattr(trainer, "max_epochs", None)
        if max_epochs is not None and max_epochs > 0:
            return "epoch", int(max_epochs)
        max_steps = getattr(trainer, "max_steps", -1)
        if max_steps is not None and max_steps > 0:
            return "step", int(max_steps)
        return None

    def training_progress(self) -> float:
        """How far training is, in (0, 1]: ``(epoch + 1) / max_epochs`` during an epoch.

        The epoch is counted from 1, as the training loops of the A2S code count it (their PCL-SD threshold
        is ``0.2 - 0.6 * epoch / E`` with ``epoch`` in 1..E). A trainer stopped by ``max_steps`` only
        (``max_epochs=-1``) gives ``(global_step + 1) / max_steps``; without a trainer or a finite end, 0.
        """
        length = self._training_length()
        if length is None:
            return 0.0
        unit, total = length
        done = self.current_epoch if unit == "epoch" else self.trainer.global_step
        return min(1.0, (done + 1) / total)

    def step_decay(
        self, optimizer: torch.optim.Optimizer, milestones: Any, gamma: float
    ) -> torch.optim.Optimizer | dict[str, Any]:
        """``optimizer`` with a step decay by ``gamma`` at ``milestones`` (fractions of training).

        With ``max_epochs`` the milestones are epochs ``round(f * max_epochs)`` (at least 1) and the rate is
        decayed after that many epochs, as ``MultiStepLR`` stepped at the end of every epoch in the A2S code
        (``sche.step()`` after each epoch); with ``max_steps`` only, they are optimizer steps. Without a
        finite end (or without milestones) the rate stays constant.
        """
        length = self._training_length()
        if length is None or not milestones:
            if milestones and self._trainer is not None:
                from pytorch_lightning.utilities import rank_zero_warn

                rank_zero_warn(
                    f"{type(self).__name__}: the trainer has neither max_epochs nor max_steps, so the "
                    f"learning-rate milestones {list(milestones)} (fractions of training) are not applied"
                )
            return optimizer
        unit, total = length
        steps = sorted({max(1, round(float(f) * total)) for f in milestones})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": unit}}

    def compile_targets(self) -> list[torch.nn.Module]:
        """The sub-modules :class:`~usod.callbacks.PerformanceOptions` compiles with ``torch.compile``.

        The default is the plain network ``self.model``; modules that call parts of it through methods other
        than ``forward`` (which ``nn.Module.compile`` does not reach) name those parts instead.
        """
        model = getattr(self, "model", None)
        return [model] if isinstance(model, torch.nn.Module) else []


def _without_weight_files(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters with backbone weight files switched off: the checkpoint holds every weight already,
    and the original file may not exist on the machine that loads it."""
    if not isinstance(hparams, dict):
        return hparams  # refused by checked_arguments
    # LightningCLI adds private entries such as ``_class_path``; they are not constructor arguments.
    out = {k: v for k, v in hparams.items() if not str(k).startswith("_")}
    for key, value in out.items():
        if key.endswith("backbone") and isinstance(value, dict) and "weights" in value:
            out[key] = {**value, "weights": "none"}
    return out


def checked_arguments(cls: type, kwargs: Any, source: str | Path) -> dict[str, Any]:
    """``kwargs`` of a checkpoint, checked to be constructor arguments of ``cls`` before anything is called.

    Raises:
        InvalidInputError: Not a mapping of string keys, or a key that ``cls.__init__`` does not take.
    """
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidInputError(
            source, f"hyper-parameters must be a mapping of names, got {type(kwargs).__name__}"
        )
    unknown = unknown_arguments(cls, kwargs)
    if unknown:
        raise InvalidInputError(source, f"hyper-parameters {unknown[:5]} are not arguments of {cls.__name__}")
    return kwargs


def unknown_arguments(cls: type, kwargs: dict[str, Any]) -> list[str]:
    """The keys of ``kwargs`` that ``cls.__init__`` does not take (none if it takes ``**kwargs``), sorted."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return sorted(set(kwargs) - set(params) - {"self"})


def checkpoint_class(ckpt: dict[str, Any], source: str | Path) -> type[USODModule]:
    """The registered usod module class a checkpoint names (``usod_class``), never imported from the file.

    Raises:
        InvalidInputError: The checkpoint names no class, or one that is not a registered usod module.
    """
    class_path = ckpt.get(CLASS_KEY)
    if not class_path:
        raise InvalidInputError(source, f"not written by a usod module (no '{CLASS_KEY}' entry)")
    try:
        return model_class(class_path)
    except UnknownModelError as err:
        raise InvalidInputError(source, str(err)) from None


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> USODModule:
    """Rebuild a usod LightningModule from its checkpoint (``torch.load(weights_only=True)``).

    The class comes from usod's registry (:mod:`usod.models.registry`), never from an import path in the
    file, and the hyper-parameters are checked to be its constructor arguments before it is called.

    Raises:
        FileNotFoundError: No file at ``path``.
        InvalidInputError: The file is not a usod checkpoint, names a class usod does not know, or does not
            match its class.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    if not isinstance(ckpt.get("state_dict"), dict):
        raise InvalidInputError(path, "not a Lightning checkpoint (no 'state_dict')")
    cls = checkpoint_class(ckpt, path)
    hparams = checked_arguments(cls, _without_weight_files(ckpt.get("hyper_parameters") or {}), path)
    try:
        model = cls(**hparams)
    except (ValueError, TypeError) as err:  # InvalidInputError included: a nested file (adapter base)
        raise InvalidInputError(path, f"cannot rebuild its {cls.__name__} ({err})") from None
    model.on_load_checkpoint(ckpt)  # as Lightning's load_from_checkpoint: the module's own restore hook
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise InvalidInputError(
            path,
            f"weights do not match {cls.__name__}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})",
        )
    model.eval()
    return model


def save_module(module: USODModule, path: str | Path) -> Path:
    """Write ``module`` as a checkpoint that :func:`load_module` and ``usod predict`` read, without a Trainer.

    The file holds the weights, the hyper-parameters and the class (what ``Trainer.save_checkpoint`` with
    ``weights_only=True`` writes for a usod module, through the same ``on_save_checkpoint`` hook). It is
    written atomically: a crash never leaves a truncated file under ``path``.

    Returns:
        ``path``.
    """
    checkpoint: dict[str, Any] = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a checkpoint file, with errors that name the file.

    Raises:
        FileNotFoundError: There is no such file.
        InvalidInputError: It is not a readable checkpoint (empty, truncated, not a torch file, or holding
            objects other than tensors and plain containers).
    """
    path = Path(path)
    ckpt = load_torch_file(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict):
        raise InvalidInputError(path, f"not a checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def trained_image_size(path: str | Path) -> int | list[int] | None:
    """The ``image_size`` of the datamodule a checkpoint was trained with, if it recorded one."""
    ckpt = read_checkpoint(path)
    for key in ("datamodule_hyper_parameters", "hyper_parameters"):
        size = (ckpt.get(key) or {}).get("image_size")
        if size is not None:
            return size
    return None
