"""Who a run is: runs named ``<method>-<dataset>``, grouped by dataset, tagged with method and modality.

:class:`UsodWandbLogger` is a ``WandbLogger`` whose runs are named ``<method>-<dataset>``, grouped by
dataset and tagged with the method, dataset and modality, so that a wandb dashboard grouped by run group
compares methods per dataset. The method name is the module class's ``method`` attribute.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger

from usod.data.datasets import get_dataset_class

__all__ = ["RunIdentity", "UsodWandbLogger", "dataset_label", "make_identity", "method_name", "run_identity"]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def method_name(model: Any) -> str:
    """The method name of a usod module (its class's ``method``, as ``usod list models`` shows it; subclasses
    inherit it), else its class name in snake case."""
    return getattr(type(model), "method", "") or _snake(type(model).__name__)


def dataset_label(name: str, root: str | Path | None = None) -> tuple[str, str | None]:
    """``(label, modality)`` of a registered dataset; a ``folder`` dataset is labelled after its root."""
    modality = None
    with contextlib.suppress(KeyError, ValueError):
        modality = get_dataset_class(name).modality
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
