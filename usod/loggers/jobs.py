"""Jobs of several trainers (``usod pipeline``: A2S, DeepUSPS) logging to one wandb run.

:func:`wandb_job` starts the run for a block, :func:`stage_loggers` gives each stage's trainer a
:class:`StageWandbLogger` on it (metrics prefixed ``<stage>-``) and :func:`log_results` adds tables of scores
and curves. :func:`logger_settings` checks a pipeline's ``logger`` setting.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger

from usod.loggers.naming import dataset_label, make_identity

__all__ = [
    "LOGGER_TYPES",
    "StageWandbLogger",
    "active_run",
    "log_results",
    "logger_settings",
    "stage_loggers",
    "wandb_job",
]

#: Logger types of the ``logger`` setting of ``usod pipeline``.
LOGGER_TYPES: tuple[str, ...] = ("csv", "wandb")
_LOGGER_KEYS = {"type", "project", "name", "group", "tags", "entity", "save_dir", "offline", "notes"}

#: The wandb run of the multi-stage job that is running (:func:`wandb_job`), else None.
_RUN: contextvars.ContextVar[Any] = contextvars.ContextVar("usod_wandb_job", default=None)


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
