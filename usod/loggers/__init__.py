"""Experiment logging: run names (:mod:`~usod.loggers.naming`), media such as PR curves and sample panels
(:mod:`~usod.loggers.media`), and jobs of several trainers on one run (:mod:`~usod.loggers.jobs`).

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

from usod.loggers.jobs import (
    LOGGER_TYPES,
    StageWandbLogger,
    active_run,
    log_results,
    logger_settings,
    stage_loggers,
    wandb_job,
)
from usod.loggers.media import (
    PANEL_ORDER,
    log_curves,
    log_panels,
    media_loggers,
    panel_strip,
    train_epoch_end_step,
)
from usod.loggers.naming import (
    RunIdentity,
    UsodWandbLogger,
    dataset_label,
    make_identity,
    method_name,
    run_identity,
)

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
    "train_epoch_end_step",
    "wandb_job",
]
