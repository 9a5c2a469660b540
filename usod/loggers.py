"""Experiment logging: runs named by method and dataset, and media (PR curves, sample panels) for wandb.

Scalars (losses, SOD metrics, pseudo-label quality) go through ``LightningModule.log`` and reach every
logger. Media need a logger that shows them: :func:`log_curves` and :func:`log_panels` write to every
:class:`~pytorch_lightning.loggers.WandbLogger` of a trainer (a table plus a line plot, and images), on
rank zero only, and do nothing for other loggers.

:class:`UsodWandbLogger` is a ``WandbLogger`` whose runs are named ``<method>-<dataset>``, grouped by
dataset and tagged with the method, dataset and modality, so that a wandb dashboard grouped by run group
compares methods per dataset. The ``usod fit|validate|test`` CLI fills these in from the model and
datamodule before the run starts (``configs/logger/wandb.yaml``); from Python call
:meth:`UsodWandbLogger.describe` before ``trainer.fit``.

Jobs of several trainers (``usod pipeline``, the DeepUSPS driver) log to one run: :func:`wandb_job` starts
it for a block, :func:`stage_loggers` gives each stage's trainer a :class:`StageWandbLogger` on it
(metrics prefixed ``<stage>-``) and :func:`log_results` adds tables of scores and curves.

Example:
    >>> logger = UsodWandbLogger(project="usod")  # doctest: +SKIP
    >>> logger.describe(model, datamodule)  # doctest: +SKIP
    >>> pl.Trainer(logger=logger).fit(model, datamodule=datamodule)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

__all__ = [
    "LOGGER_TYPES",
    "PANEL_ORDER",
    "RunIdentity",
    "StageWandbLogger",
    "UsodWandbLogger",
    "active_run",
    "dataset_label",
    "log_curves",
    "log_panels",
    "log_results",
    "logger_settings",
    "make_identity",
    "media_loggers",
    "method_name",
    "panel_strip",
    "run_identity",
    "stage_loggers",
    "wandb_job",
]

#: Logger types of the ``logger`` setting of ``usod pipeline`` and the DeepUSPS driver.
LOGGER_TYPES: tuple[str, ...] = ("csv", "wandb")
_LOGGER_KEYS = {"type", "project", "name", "group", "tags", "entity", "save_dir", "offline", "notes"}

#: The wandb run of the multi-stage job that is running (:func:`wandb_job`), else None.
_RUN: contextvars.ContextVar[Any] = contextvars.ContextVar("usod_wandb_job", default=None)

#: Column order of the sample panels (maps missing from a call are left out).
PANEL_ORDER: tuple[str, ...] = ("image", "aux", "depth", "thermal", "flow", "pseudo", "prediction", "mask")
_PANEL_TITLES = {"image": "image", "aux": "aux", "depth": "depth", "thermal": "thermal", "flow": "flow",
                 "pseudo": "pseudo label", "prediction": "prediction", "mask": "ground truth"}  # fmt: skip


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def method_name(model: Any) -> str:
    """The method name of a usod module (its class's ``method``, as ``usod list models`` shows it; subclasses
    inherit it), else its class name in snake case."""
    return getattr(type(model), "method", "") or _snake(type(model).__name__)


def dataset_label(name: str, root: str | Path | None = None) -> tuple[str, str | None]:
    """``(label, modality)`` of a registered dataset; a ``folder`` dataset is labelled after its root."""
    modality = None
    try:
        from usod.data.datasets import get_dataset_class

        modality = get_dataset_class(name).modality
    except (KeyError, ValueError):
        pass
    if name == "folder" and root is not None:
        name = f"folder-{Path(root).name}"
    return str(name), modality


def _dataset_of(datamodule: Any) -> tuple[str | None, str | None]:
    """``(dataset label, modality)`` of a usod datamodule (``None``s for another datamodule)."""
    name = getattr(datamodule, "dataset_name", None)
    if name is None:
        return None, None
    return dataset_label(name, getattr(datamodule, "root", None))


@dataclass
class RunIdentity:
    """Name, group, tags and config of a run (see :func:`run_identity`)."""

    name: str
    group: str | None
    job_type: str
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def run_identity(model: Any, datamodule: Any = None) -> RunIdentity:
    """Who a run is: method (registry name), dataset and modality.

    The run is named ``<method>-<dataset>``, grouped by dataset and tagged ``method``, ``dataset``,
    ``modality`` (and the label-update rule of a detector), with ``method``, ``dataset_name`` and
    ``modality`` in its config as well.

    Args:
        model: The LightningModule.
        datamodule: The datamodule (a :class:`~usod.data.datamodules.SODDataModule` gives the dataset).
    """
    dataset, modality = _dataset_of(datamodule)
    hparams = getattr(model, "hparams", {}) or {}
    aux = hparams.get("aux_modality")
    if aux and aux not in ("none", "auto"):
        modality = modality or aux
    label_update = hparams.get("label_update")
    return make_identity(method_name(model), dataset, modality, label_update)


def make_identity(
    method: str, dataset: str | None = None, modality: str | None = None, label_update: str | None = None
) -> RunIdentity:
    """A :class:`RunIdentity` from its parts (see :func:`run_identity`)."""
    tags = [method]
    config: dict[str, Any] = {"method": method}
    if dataset:
        tags.append(dataset)
        config["dataset_name"] = dataset  # not "dataset": the datamodule's own hyper-parameter has that key
    if modality:
        tags.append(modality)
        config["modality"] = modality
    if isinstance(label_update, str) and label_update != "none":
        tags.append(label_update)
    name = f"{method}-{dataset}" if dataset else method
    return RunIdentity(name=name, group=dataset, job_type=method, tags=tags, config=config)


class UsodWandbLogger(WandbLogger):
    """A ``WandbLogger`` that names, groups and tags its run after the method and dataset.

    Arguments left ``None`` (``name``, ``group``, ``job_type``) are filled by :meth:`describe`; ``tags``
    are extended. Without network, set ``WANDB_MODE=offline`` (or ``offline: true``): the run is written
    under ``save_dir/wandb`` and can be uploaded later with ``wandb sync``.

    Args:
        name: Run name (default ``<method>-<dataset>``).
        project: wandb project.
        group: Run group (default: the dataset name).
        job_type: Job type (default: the method name).
        tags: Extra tags.
        notes: Run notes.
        save_dir: Folder of the local run files.
        offline: Do not sync (same as ``WANDB_MODE=offline``).
        log_model: Upload checkpoints as artifacts (see ``WandbLogger``).
        prefix: Prefix of every metric key.
        entity: wandb entity (user or team).
        **kwargs: Further ``WandbLogger`` / ``wandb.init`` arguments.
    """

    def __init__(
        self,
        name: str | None = None,
        project: str = "usod",
        group: str | None = None,
        job_type: str | None = None,
        tags: Sequence[str] | None = None,
        notes: str | None = None,
        save_dir: str = ".",
        offline: bool = False,
        log_model: bool | str = False,
        prefix: str = "",
        entity: str | None = None,
        **kwargs: Any,
    ) -> None:
        extra = {"group": group, "job_type": job_type, "notes": notes, "entity": entity}
        extra = {k: v for k, v in extra.items() if v is not None}
        super().__init__(
            name=name,
            project=project,
            save_dir=save_dir,
            offline=offline,
            log_model=log_model,
            prefix=prefix,
            tags=list(tags or []),
            **extra,
            **kwargs,
        )
        if self._wandb_init.get("anonymous") is None:  # recent wandb warns about the unused setting
            self._wandb_init.pop("anonymous", None)
        self.identity: RunIdentity | None = None

    def finalize(self, status: str) -> None:
        """Lightning's end of a run; a failed one is finished with exit code 1, so dashboards show it failed.

        (``WandbLogger`` leaves the run open and wandb then closes it at exit with code 0, which showed a
        crashed run as finished.)
        """
        super().finalize(status)
        if status == "failed" and self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=1)

    def describe(self, model: Any, datamodule: Any = None) -> RunIdentity:
        """Name, group and tag the run after ``model`` and ``datamodule`` (call before the run starts).

        Values given to the constructor are kept. When the run already started (wandb was initialised),
        only its name, tags and config are updated.
        """
        identity = run_identity(model, datamodule)
        self.identity = identity
        init = self._wandb_init
        init["name"] = init.get("name") or identity.name
        init.setdefault("group", identity.group)
        init.setdefault("job_type", identity.job_type)
        tags = list(init.get("tags") or [])
        init["tags"] = tags + [t for t in identity.tags if t not in tags]
        config = dict(init.get("config") or {})
        init["config"] = {**identity.config, **config}
        if self._experiment is not None and hasattr(self._experiment, "config"):
            run = self._experiment
            run.name = init["name"]
            run.tags = tuple(init["tags"])
            run.config.update(init["config"], allow_val_change=True)
        return identity


def media_loggers(trainer: Any) -> list[WandbLogger]:
    """The trainer's loggers that take media (wandb), or an empty list without a trainer."""
    if trainer is None:
        return []
    return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, WandbLogger)]


def _is_global_zero(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


def _step(trainer: Any) -> int | None:
    """The step Lightning gives logged scalars (optimizer steps taken), so media line up with them."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return int(step) if step is not None else getattr(trainer, "global_step", None)


def train_epoch_end_step(trainer: Any) -> int | None:
    """The step Lightning gives the metrics logged in a training epoch's end hooks: one less than
    :func:`_step` there (Lightning decrements its counter while it logs epoch-end metrics), so media logged
    from those hooks line up with the epoch's scalars."""
    step = _step(trainer)
    return None if step is None else max(0, step - 1)


def log_curves(
    trainer: Any, key: str, curves: Mapping[str, Tensor | Sequence[float]], step: int | None = None
) -> bool:
    """Log average SOD curves (``precision``, ``recall``, ``f``, ``e`` over 256 thresholds) to wandb.

    Writes a table ``key`` (threshold, precision, recall, f, e) and a precision-recall line plot
    ``key`` + ``_plot``. Rank zero only (the curves must already be synchronised); no-op without a wandb
    logger.

    Returns:
        Whether anything was logged.
    """
    loggers = media_loggers(trainer)
    if not loggers or not _is_global_zero(trainer):
        return False
    import wandb

    columns = ["threshold"] + [c for c in ("precision", "recall", "f", "e") if c in curves]
    values = {c: np.asarray(torch.as_tensor(curves[c]).detach().cpu(), dtype=np.float64) for c in columns[1:]}
    n = len(next(iter(values.values()))) if values else 0
    rows = [[t] + [float(values[c][t]) for c in columns[1:]] for t in range(n)]
    step = _step(trainer) if step is None else step
    for logger in loggers:
        table = wandb.Table(columns=columns, data=rows)
        metrics: dict[str, Any] = {key: table}
        if "precision" in values and "recall" in values:
            metrics[f"{key}_plot"] = wandb.plot.line(table, "recall", "precision", title=f"{key} (PR curve)")
        logger.log_metrics(metrics, step=step)
    return True


def _to_hwc_uint8(value: Tensor | np.ndarray) -> np.ndarray:
    """CxHxW / HxW / HxWxC float in [0, 1] (or uint8) -> HxWx3 uint8; two channels (flow) get a third."""
    arr = value.detach().float().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[0] in (1, 2, 3) and arr.shape[-1] not in (1, 2, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 2:
        arr = np.concatenate([arr, np.zeros_like(arr[..., :1])], axis=-1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def panel_strip(maps: Mapping[str, Tensor | np.ndarray], size: int = 128) -> tuple[np.ndarray, list[str]]:
    """One sample's maps side by side (``PANEL_ORDER``), each resized to ``size`` x ``size``.

    Returns:
        The HxWx3 uint8 strip and the titles of its columns.
    """
    import cv2

    tiles, titles = [], []
    for key in PANEL_ORDER:
        if maps.get(key) is None:
            continue
        tile = _to_hwc_uint8(maps[key])
        tiles.append(cv2.resize(tile, (size, size), interpolation=cv2.INTER_LINEAR))
        titles.append(_PANEL_TITLES[key])
    if not tiles:
        raise ValueError(f"no maps to show; expected some of {PANEL_ORDER}")
    return np.concatenate(tiles, axis=1), titles


def log_panels(
    trainer: Any,
    key: str,
    maps: Mapping[str, Tensor | None],
    ids: Sequence[Any] | None = None,
    max_samples: int = 4,
    step: int | None = None,
) -> bool:
    """Log panels (image | pseudo label | prediction | ground truth) of the first samples of a batch.

    Args:
        trainer: The trainer (its wandb loggers receive the images; rank zero only).
        key: Key of the image list, e.g. ``"val_panels"``.
        maps: Batches (BxCxHxW, float in [0, 1]) named as in :data:`PANEL_ORDER` (``None``: skipped).
        ids: Sample ids for the captions.
        max_samples: Samples to show.
        step: Step (default: the trainer's global step).

    Returns:
        Whether anything was logged.
    """
    loggers = media_loggers(trainer)
    if not loggers or not _is_global_zero(trainer):
        return False
    present = {k: v for k, v in maps.items() if v is not None}
    if not present:
        return False
    n = min(max_samples, *(int(v.shape[0]) for v in present.values()))
    strips, captions = [], []
    for i in range(n):
        strip, titles = panel_strip({k: v[i] for k, v in present.items()})
        strips.append(strip)
        sample = f"{ids[i]}: " if ids is not None and i < len(ids) else ""
        captions.append(sample + " | ".join(titles))
    step = _step(trainer) if step is None else step
    for logger in loggers:
        logger.log_image(key, strips, step=step, caption=captions)
    return True


class StageWandbLogger(WandbLogger):
    """A ``WandbLogger`` on a shared run for one stage of a multi-stage job (``usod pipeline``).

    Metrics get the prefix ``<stage>-`` and the stage's hyper-parameters go under ``config[<stage>]``, so
    stages that share a run do not overwrite each other's settings.

    Args:
        run: The started wandb run (``wandb.init``).
        stage: Stage name (the prefix).
    """

    def __init__(self, run: Any, stage: str) -> None:
        super().__init__(experiment=run, prefix=stage)
        self.stage = stage

    def log_hyperparams(self, params: Any) -> None:
        """Log the stage's hyper-parameters under ``config[<stage>]`` (rank zero only)."""
        from lightning_fabric.utilities.logger import (
            _convert_json_serializable,
            _convert_params,
            _sanitize_callable_params,
        )
        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank != 0:
            return
        params = _convert_json_serializable(_sanitize_callable_params(_convert_params(params)))
        self.experiment.config.update({self.stage: params}, allow_val_change=True)


def log_results(run: Any, key: str, results: Mapping[str, Mapping[str, Any]]) -> None:
    """Log ``{name: {"scores": {...}, "curves": {...}}}`` (e.g. label rounds) to a wandb run.

    Writes each score as ``<key>/<name>/<metric>`` (and into the run summary), a table ``<key>_scores``
    (one row per name) and a long-form curve table ``<key>_curves`` (name, threshold, precision, recall,
    f) with a PR line plot per name.
    """
    import wandb

    if not results:
        return
    metrics: dict[str, Any] = {}
    score_keys: list[str] = []
    for result in results.values():
        score_keys += [k for k in result.get("scores", {}) if k not in score_keys]
    rows = []
    for name, result in results.items():
        scores = result.get("scores", {})
        rows.append([name] + [scores.get(k) for k in score_keys])
        for metric, value in scores.items():
            metrics[f"{key}/{name}/{metric}"] = value
    metrics[f"{key}_scores"] = wandb.Table(columns=["name", *score_keys], data=rows)
    curve_rows = []
    for name, result in results.items():
        curves = result.get("curves") or {}
        if "precision" not in curves or "recall" not in curves:
            continue
        f = curves.get("f", [None] * len(curves["precision"]))
        for t, (p, r, fv) in enumerate(zip(curves["precision"], curves["recall"], f, strict=True)):
            curve_rows.append([name, t, float(p), float(r), None if fv is None else float(fv)])
    if curve_rows:
        table = wandb.Table(columns=["name", "threshold", "precision", "recall", "f"], data=curve_rows)
        metrics[f"{key}_curves"] = table
        metrics[f"{key}_pr_plot"] = wandb.plot.line(
            table, "recall", "precision", stroke="name", title=f"{key}: PR curves"
        )
    run.log(metrics)


# ------------------------------------------------------------------------------------ multi-stage jobs
def logger_settings(value: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A job's ``logger`` setting as ``{"type": "wandb", ...}``, or ``None`` for CSV logs only.

    Accepts ``None``, ``"csv"``, ``"wandb"`` or a mapping with ``type`` (default ``"wandb"``), ``project``,
    ``name``, ``group``, ``tags``, ``entity``, ``save_dir``, ``offline`` and ``notes``.

    Raises:
        ValueError: An unknown logger type or setting.
    """
    if value is None:
        return None
    settings = {"type": value} if isinstance(value, str) else dict(value)
    kind = str(settings.get("type", "wandb")).lower()
    if kind not in LOGGER_TYPES:
        raise ValueError(f"unknown logger {kind!r}; expected one of {LOGGER_TYPES}")
    unknown = sorted(set(settings) - _LOGGER_KEYS)
    if unknown:
        raise ValueError(f"unknown logger settings {unknown}; known: {sorted(_LOGGER_KEYS)}")
    if kind == "csv":
        return None
    return {**settings, "type": kind}


@contextlib.contextmanager
def wandb_job(
    settings: Mapping[str, Any] | None,
    method: str,
    dataset: str,
    root: str | Path | None,
    out: str | Path,
    config: Mapping[str, Any] | None = None,
    label_update: str | None = None,
) -> Iterator[Any]:
    """One wandb run for a multi-stage job (``usod pipeline``, DeepUSPS), active for the block.

    Inside the block :func:`active_run` returns the run and :func:`stage_loggers` gives each stage's
    trainer a logger on it. Without ``settings`` (CSV only) nothing is started. The run is named
    ``<method>-<dataset>`` and grouped by dataset unless the settings say otherwise; its files go under
    ``save_dir`` (default ``out``); it is finished when the block ends.

    Args:
        settings: :func:`logger_settings` output.
        method: Method name of the job.
        dataset: Registered dataset name of the training images.
        root: Dataset root (names ``folder`` datasets).
        out: The job's output folder.
        config: The job's settings, logged under ``config["job"]``.
        label_update: Label-update rule, as a tag.
    """
    if not settings:
        yield None
        return
    import wandb

    identity = make_identity(method, *dataset_label(dataset, root), label_update)
    save_dir = Path(settings.get("save_dir") or out)
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=settings.get("project", "usod"),
        entity=settings.get("entity"),
        name=settings.get("name") or identity.name,
        group=settings.get("group") or identity.group,
        job_type=identity.job_type,
        tags=identity.tags + [t for t in settings.get("tags", []) if t not in identity.tags],
        notes=settings.get("notes"),
        dir=str(save_dir),
        mode="offline" if settings.get("offline") else None,
        config={**identity.config, "job": dict(config or {})},
        reinit="create_new",
    )
    token = _RUN.set(run)
    failed = True
    try:
        yield run
        failed = False
    finally:
        _RUN.reset(token)
        run.finish(exit_code=1 if failed else 0)  # a job that raised shows as failed on the dashboard


def active_run() -> Any:
    """The run of the :func:`wandb_job` block being executed, else ``None``."""
    return _RUN.get()


def stage_loggers(stage: str) -> list[Any]:
    """``[StageWandbLogger(run, stage)]`` inside a :func:`wandb_job` block, else ``[]``."""
    run = _RUN.get()
    return [] if run is None else [StageWandbLogger(run, stage)]
