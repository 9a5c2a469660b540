"""What every multi-step pipeline shares: run settings, the trainer of a step, step checkpoints, retiring.

A pipeline (:mod:`usod.pipelines.a2s`, :mod:`usod.pipelines.deepusps`) is a sequence of steps in one output
folder, each skipped when its output exists, so that an interrupted run resumes where it stopped. Its
config is a dataclass that inherits :class:`RunSettings` (where and how the steps run) and adds what the
steps make.
"""

from __future__ import annotations

import logging
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT
from pytorch_lightning.accelerators import AcceleratorRegistry
from pytorch_lightning.loggers import CSVLogger

from usod.callbacks import PerformanceOptions
from usod.data.datasets import DATASETS, get_dataset
from usod.data.transforms import DEFAULT_IMAGE_SIZE, check_image_size
from usod.distributed import barrier, is_rank_zero
from usod.loggers import logger_settings, stage_loggers
from usod.models.base import unknown_arguments
from usod.progress import progress_enabled

__all__ = [
    "PRECISIONS",
    "RunSettings",
    "check_arguments",
    "predict_settings",
    "retire",
    "save_step_checkpoint",
    "step_trainer",
]

log = logging.getLogger(__name__)


def _flat_literals(hint: Any) -> list[Any]:
    args = typing.get_args(hint)
    return [v for a in args for v in _flat_literals(a)] if args else [hint]


#: Lightning's ``precision`` values.
PRECISIONS: tuple[Any, ...] = tuple(_flat_literals(_PRECISION_INPUT))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_devices(value: Any) -> None:
    """Lightning's ``devices``: a count >= 1 (or -1: all), ``"auto"``, ``"0,1"`` or a list of indices."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    parts = value.split(",") if isinstance(value, str) and "," in value else None
    ok = (
        (_is_int(value) and (value >= 1 or value == -1))
        or value == "auto"
        or (parts is not None and all(p.strip().isdigit() for p in parts if p.strip()))
        or (isinstance(value, list) and bool(value) and all(_is_int(v) and v >= 0 for v in value))
    )
    if not ok:
        raise ValueError(
            "devices must be a count >= 1 (or -1 for all), 'auto', '0,1' or a list of device indices, "
            f"got {value!r}"
        )


@dataclass(kw_only=True)
class RunSettings:
    """Settings of every pipeline: its output folder, its training images, and where its steps run.

    Attributes:
        out: Output folder (checkpoints, labels, report, logs).
        dataset: Registered dataset name of the training images.
        root: Dataset root.
        split: Training split (``None``: default).
        image_size: Network input size (an int or ``[height, width]``).
        batch_size: Batch size of every training and prediction step.
        num_workers: DataLoader workers.
        accelerator: Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``).
        devices: Devices per node for every training and prediction step (Lightning's ``devices``: a
            number, ``"auto"`` or a list of GPU indices).
        num_nodes: Nodes of a multi-node job.
        strategy: Lightning strategy (``"auto"``: DDP when there is more than one device).
        precision: Lightning precision of every network (``"32-true"``; ``"bf16-mixed"`` on a GPU).
        performance: :class:`~usod.callbacks.PerformanceOptions` arguments for every network, e.g.
            ``{"channels_last": true, "compile": true}``.
        seed: Global seed.
        log_every_n_steps: Training steps between logged losses.
        logger: ``None`` or ``"csv"`` (CSV logs in ``OUT/logs`` only), ``"wandb"``, or a mapping
            ``{"type": "wandb", "project", "name", "group", "tags", "entity", "save_dir", "offline",
            "notes"}``: also log everything to one wandb run (see :func:`usod.loggers.logger_settings`).
            ``WANDB_MODE=offline`` works without network.
    """

    out: Path
    dataset: str = "folder"
    root: Path = Path("data/synth/rgb")
    split: str | None = None
    image_size: int | list[int] = DEFAULT_IMAGE_SIZE
    batch_size: int = 16
    num_workers: int = 2
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    performance: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    log_every_n_steps: int = 5
    logger: str | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.root = Path(self.root)
        self.logger = logger_settings(self.logger)
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: unknown {self.dataset!r}; registered: {sorted(DATASETS)}")
        check_image_size("image_size", self.image_size)
        for name, low in (
            ("batch_size", 1), ("num_workers", 0), ("num_nodes", 1), ("seed", 0), ("log_every_n_steps", 1),
        ):  # fmt: skip
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        accelerators = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
        if self.accelerator not in accelerators:
            raise ValueError(f"accelerator must be one of {accelerators}, got {self.accelerator!r}")
        _check_devices(self.devices)
        if self.precision not in PRECISIONS:
            shown = sorted({str(p) for p in PRECISIONS})
            raise ValueError(f"precision must be one of {shown}, got {self.precision!r}")
        if not isinstance(self.strategy, str):
            raise ValueError(f"strategy must be a Lightning strategy name, e.g. 'ddp', got {self.strategy!r}")
        if not isinstance(self.performance, dict):
            raise ValueError(
                f"performance must be a mapping of PerformanceOptions arguments, got {self.performance!r}"
            )
        check_arguments("performance", PerformanceOptions, self.performance)
        blocker = next((p for p in (self.out, *self.out.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ValueError(f"out: {str(blocker)!r} is a file, not a folder")

    def training_set(self, with_masks: bool = True, skip_invalid: bool = False) -> Any:
        """The training images as a :class:`~usod.data.datasets.SODDataset` (file lists only, read lazily)."""
        return get_dataset(
            self.dataset, root=self.root, split=self.split, with_masks=with_masks, skip_invalid=skip_invalid
        )


def check_arguments(where: str, cls: type, kwargs: Any) -> None:
    """``kwargs`` must name parameters of ``cls`` and keep ``Literal`` parameters to their values."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where} must be a mapping of {cls.__name__} arguments, got {kwargs!r}")
    unknown = unknown_arguments(cls, kwargs)
    if unknown:
        raise ValueError(f"{where}: {cls.__name__} has no argument(s) {unknown}")
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: the class checks its arguments itself
        return
    for key, value in kwargs.items():
        hint = hints.get(key)
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
        if choices and value not in choices:
            raise ValueError(f"{where}.{key} must be one of {list(choices)}, got {value!r}")


def step_trainer(
    settings: RunSettings, max_epochs: int, name: str, callbacks: list[Any] | None = None
) -> pl.Trainer:
    """The trainer of one training step of a pipeline.

    Logs go to ``OUT/logs/<name>/`` (CSV) and, inside a wandb job, to its run with the prefix ``<name>-``;
    no checkpoints (the pipeline saves one when the step is finished, :func:`save_step_checkpoint`).
    """
    callbacks = [*(callbacks or []), PerformanceOptions(**settings.performance)]
    return pl.Trainer(
        accelerator=settings.accelerator,
        devices=settings.devices,
        num_nodes=settings.num_nodes,
        strategy=settings.strategy,
        precision=settings.precision,
        max_epochs=max_epochs,
        logger=[CSVLogger(settings.out / "logs", name=name), *stage_loggers(name)],
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=settings.log_every_n_steps,
        callbacks=callbacks,
        enable_progress_bar=progress_enabled(),
    )


def predict_settings(settings: RunSettings) -> dict[str, Any]:
    """Device settings of a pipeline's prediction steps (keyword arguments of ``write_label_round``)."""
    return {
        "accelerator": settings.accelerator,
        "devices": settings.devices,
        "num_nodes": settings.num_nodes,
        "strategy": settings.strategy,
    }


def save_step_checkpoint(trainer: pl.Trainer, path: Path) -> None:
    """Save weights and hyper-parameters atomically (rank 0 writes; every rank returns once it exists)."""
    tmp = path.with_name(f".{path.name}.tmp")
    # Weights and hyper-parameters only: the step is finished, so there is no optimizer state to resume.
    trainer.save_checkpoint(tmp, weights_only=True)  # rank 0 writes, then the ranks synchronise
    if trainer.is_global_zero:
        os.replace(tmp, path)  # a crash never leaves a truncated checkpoint under the final name
    barrier()


def retire(path: Path) -> None:
    """Move a stale step output to ``<its folder>/retired/<name>-<time>`` (rank 0), never deleting it."""
    if is_rank_zero() and path.exists():
        target = path.parent / "retired" / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        log.warning("%s was made from an earlier stage that has been retrained: moved to %s", path, target)
    barrier()
