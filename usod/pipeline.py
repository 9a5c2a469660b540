"""The unsupervised A2S pipeline as resumable steps in one output folder.

Steps (each skipped when its output already exists, so an interrupted run resumes where it stopped):

1. ``stage1``: train the :class:`~usod.models.cue_extractor.CueExtractor` on the training images only
   -> ``OUT/stage1.ckpt``;
2. ``label``: predict raw saliency cues into the pseudo-label round ``stage1-raw`` (each sample once, an
   interrupted round resumes), then denseCRF + median filter (A2S eq. 6) them in parallel worker processes
   into the round ``stage1``, which becomes the store's current round -> ``OUT/labels/``;
3. ``stage2`` (when ``stage2_epochs > 0``): train the :class:`~usod.models.saliency_detector.SaliencyDetector`
   on the ``stage1`` labels with online label updates (each epoch's labels become a round ``stage2-epoch<j>``)
   -> ``OUT/stage2.ckpt``, then write its predictions on the training images as the round ``stage2-pred``;
4. ``report``: score the rounds against ground truth when the dataset has it (pseudo-label quality), score
   each stage's checkpoint on the held-out ``eval`` sets, and write ``OUT/report/metrics.json``,
   ``pr_curves*.png`` and ``grid.png`` (image / labels / prediction / ground truth).

``OUT/pipeline.json`` records the settings the steps were made with. A resumed run refuses settings that
would change a finished step (the training set, stage 1, the post-processing; stage 2 once it is trained)
and names them; settings of later, unfinished steps (e.g. ``stage2_epochs`` after a stage-1-only run) may
change. A stage that trains again (its checkpoint was deleted) rewrites what depends on it: its label rounds
start over and a later stage's checkpoint is moved to ``OUT/retired/``, nothing is deleted.

Every training stage logs to ``OUT/logs/<stage>/`` (CSV). With ``logger: wandb`` the whole pipeline is one
wandb run as well (named ``a2s_pipeline-<dataset>``, grouped by dataset): the stages' losses as
``stage1-train_loss``, ``stage2-train_loss``, the quality of every stage-2 label round
(``stage2-label_max_f``, ...) and, from the report, every round's and held-out set's scores, PR curves and
the sample grid.

Several GPUs and nodes: set ``devices`` / ``num_nodes`` (``strategy`` defaults to Lightning's choice, DDP)
and start the command as usual on one machine (Lightning starts a process per extra device), or once per
device with ``torchrun`` or ``srun`` (see ``examples/cli/``). Every training and prediction step then runs on
all ranks: the label stores are written once per sample and the stage-2 label updates equal a 1-process
run; the denseCRF post-processing is shared out over the ranks; checkpoints, manifests and the report are
written by rank 0 (``OUT`` must be on a file system every node sees). The report's scoring and held-out
evaluation are shared out too (each rank its share of the images, the metric states reduced); rank 0 writes
it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from usod.data.io import atomic_write_bytes, write_png_atomic
from usod.ops.crf import PostProcessConfig

log = logging.getLogger(__name__)

RAW_ROUND = "stage1-raw"
LABEL_ROUND = "stage1"
STAGE2_ROUND = "stage2-pred"
#: Method name of pipeline runs in wandb.
PIPELINE_METHOD = "a2s_pipeline"


@dataclass
class PipelineConfig:
    """Settings of :func:`run_pipeline`.

    Attributes:
        out: Output folder (checkpoints, labels, report).
        dataset: Registered dataset name of the training images.
        root: Dataset root.
        split: Training split (``None``: default).
        image_size: Network input size of stage 1 (and of stage 2 unless ``stage2_image_size`` is set).
        batch_size: Batch size of every step.
        num_workers: DataLoader workers.
        postprocess_workers: Processes for the CRF (0: in this process).
        stage1_epochs: CueExtractor epochs.
        stage1: Further :class:`CueExtractor` arguments (``backbone``, ``lr``, ``loss``...).
        stage2_image_size: Network input size of stage 2 (``None``: ``image_size``); the pseudo labels are
            stored at original size, so the stages need not agree.
        stage2_epochs: SaliencyDetector epochs; 0 stops the pipeline after the stage-1 labels.
        stage2: Further :class:`SaliencyDetector` arguments (``backbone``, ``label_update``, ``lr``...).
        postprocess: denseCRF / median filter settings for the pseudo labels.
        eval: Held-out test sets, ``{"name", "dataset", "root", "split"}`` each (``name`` defaults to the
            dataset name): every trained stage's predictions are scored on them in the report (the images
            are never used for training).
        accelerator: Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``).
        devices: Devices per node for every training and prediction step (Lightning's ``devices``: a
            number, ``"auto"`` or a list of GPU indices).
        num_nodes: Nodes of a multi-node job.
        strategy: Lightning strategy (``"auto"``: DDP when there is more than one device).
        precision: Lightning precision of both stages (``"32-true"``; ``"bf16-mixed"`` on a GPU).
        performance: :class:`~usod.callbacks.PerformanceOptions` arguments for both stages, e.g.
            ``{"channels_last": true, "compile": true}``.
        cache_images: Keep decoded, resized images in memory (see ``SODDataModule``).
        skip_invalid: Leave out samples with a missing or unreadable file (image, mask, depth...) in the
            training and eval sets instead of stopping (see ``SODDataset``); ``usod data inspect`` lists them.
        seed: Global seed; stage 1 starts from ``seed`` and stage 2 from ``seed + 1``, whatever ran before
            in the process (a resumed pipeline trains each stage as an uninterrupted one).
        log_every_n_steps: Training steps between logged losses.
        logger: ``None`` or ``"csv"`` (CSV logs in ``OUT/logs`` only), ``"wandb"``, or a mapping
            ``{"type": "wandb", "project", "name", "group", "tags", "entity", "save_dir", "offline",
            "notes"}``: also log everything to one wandb run (project ``usod``; name
            ``a2s_pipeline-<dataset>`` and group ``<dataset>`` unless given; files under ``OUT`` unless
            ``save_dir``). ``WANDB_MODE=offline`` works without network.
    """

    out: Path
    dataset: str = "folder"
    root: Path = Path("data/synth/rgb")
    split: str | None = None
    image_size: int = 224
    batch_size: int = 16
    num_workers: int = 2
    postprocess_workers: int = 2
    stage1_epochs: int = 8
    stage1: dict[str, Any] = field(default_factory=dict)
    stage2_epochs: int = 0
    stage2_image_size: int | None = None
    stage2: dict[str, Any] = field(default_factory=dict)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)
    eval: list[dict[str, Any]] = field(default_factory=list)
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    log_every_n_steps: int = 5
    logger: str | dict[str, Any] | None = None
    precision: str = "32-true"
    performance: dict[str, Any] = field(default_factory=dict)
    cache_images: bool = False
    skip_invalid: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.root = Path(self.root)
        from usod.loggers import logger_settings

        self.logger = logger_settings(self.logger)
        if isinstance(self.postprocess, dict):
            self.postprocess = PostProcessConfig(**self.postprocess)
        for index, entry in enumerate(self.eval):
            unknown = set(entry) - {"name", "dataset", "root", "split"}
            if unknown or "dataset" not in entry or "root" not in entry:
                raise ValueError(
                    f"eval[{index}] needs 'dataset' and 'root' (optional name, split), got {sorted(entry)}"
                )
        names = [eval_name(e) for e in self.eval]
        if len(set(names)) != len(names):
            raise ValueError(f"eval set names must be unique, got {names}; give each a 'name'")
        self._check_values()

    def _check_values(self) -> None:
        """Catch what would otherwise fail after minutes or hours of training, before any work."""
        from usod.data.datasets import DATASETS

        for name, low in (
            ("batch_size", 1), ("stage1_epochs", 1), ("stage2_epochs", 0), ("num_workers", 0),
            ("postprocess_workers", 0), ("num_nodes", 1),
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("image_size", "stage2_image_size"):
            value = getattr(self, name)
            sizes = value if isinstance(value, (list, tuple)) else [value]
            if (value is None and name == "stage2_image_size") or (
                sizes and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes)
            ):
                continue
            raise ValueError(f"{name} must be a positive integer (or [height, width]), got {value!r}")
        sets = [("", self.dataset, self.root)] + [
            (f"eval[{i}].", e["dataset"], Path(e["root"])) for i, e in enumerate(self.eval)
        ]
        for where, dataset, root in sets:
            if dataset not in DATASETS:
                raise ValueError(f"{where}dataset: unknown {dataset!r}; registered: {sorted(DATASETS)}")
            if where and not root.exists():  # the training root is read first anyway; eval roots at the end
                raise ValueError(f"{where}root: {str(root)!r} does not exist")
            if where and root.resolve() == self.root.resolve():
                raise ValueError(
                    f"{where}root is the training root: a held-out set must hold other images (the report "
                    "scores the pseudo labels on the training images already)"
                )
        from usod.data.io import InvalidInputError

        for index, entry in enumerate(self.eval):  # opened now (file lists only), read after training
            try:
                _scored_set(self, entry)
            except InvalidInputError as err:
                raise ValueError(f"eval[{index}]: {err}") from None
        blocker = next((p for p in (self.out, *self.out.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ValueError(f"out: {str(blocker)!r} is a file, not a folder")
        from usod.models.cue_extractor import CueExtractor
        from usod.models.saliency_detector import SaliencyDetector

        _check_arguments("stage1", CueExtractor, self.stage1)
        _check_arguments("stage2", SaliencyDetector, self.stage2)


def _check_arguments(where: str, cls: type, kwargs: Any) -> None:
    """``kwargs`` must name parameters of ``cls`` and keep ``Literal`` parameters to their values."""
    import inspect
    import typing

    if not isinstance(kwargs, dict):
        raise ValueError(f"{where} must be a mapping of {cls.__name__} arguments, got {kwargs!r}")
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(params) - {"self"})
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


def eval_name(entry: dict[str, Any]) -> str:
    """Name of a held-out test set in reports."""
    return str(entry.get("name") or entry["dataset"])


def _scored_set(config: PipelineConfig, entry: dict[str, Any] | None = None, with_masks: bool = True) -> Any:
    """The training set (``entry=None``) or an ``eval`` entry's set, with masks, as every step reads it."""
    from usod.data.datasets import get_dataset

    name, root, split = (
        (config.dataset, config.root, config.split)
        if entry is None
        else (entry["dataset"], entry["root"], entry.get("split"))
    )
    return get_dataset(name, root=root, split=split, with_masks=with_masks, skip_invalid=config.skip_invalid)


def _portable(path: str | Path, base: Path, tag: str) -> str:
    """``path`` resolved, or ``<tag>/<relative path>`` when it lies inside ``base`` (so ``base`` can move)."""
    path, base = Path(path).resolve(), base.resolve()
    return f"{tag}/{path.relative_to(base).as_posix()}" if base in path.parents else str(path)


def _datamodule(config: PipelineConfig, pseudo_dir: Path | None = None, stage: int = 1) -> Any:
    from usod.data.datamodules import get_datamodule

    # Resize only: stage 1 caches frozen-encoder features, and stage 2 flips by itself so that it can map
    # its predictions back onto the labels it rectifies.
    return get_datamodule(
        config.dataset,
        root=config.root,
        split=config.split,
        image_size=config.stage2_image_size or config.image_size if stage == 2 else config.image_size,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        augment=False,
        pseudo_dir=pseudo_dir,
        seed=config.seed,
        cache_images=config.cache_images,
        skip_invalid=config.skip_invalid,
    )


def step_trainer(config: Any, max_epochs: int, name: str, callbacks: list[Any] | None = None) -> Any:
    """The trainer of one training step of a multi-step driver (the A2S pipeline, DeepUSPS).

    ``config`` is a :class:`PipelineConfig` or a :class:`~usod.models.deepusps.DeepUSPSConfig` (the fields
    ``out``, ``accelerator``, ``devices``, ``num_nodes``, ``strategy``, ``precision``, ``performance`` and
    ``log_every_n_steps``). Logs go to ``OUT/logs/<name>/`` (CSV) and, inside a wandb job, to its run with
    the prefix ``<name>-``; no checkpoints (the driver saves one when the step is finished).
    """
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from usod.callbacks import PerformanceOptions
    from usod.loggers import stage_loggers
    from usod.progress import progress_enabled

    callbacks = [*(callbacks or []), PerformanceOptions(**config.performance)]
    return pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        max_epochs=max_epochs,
        logger=[CSVLogger(config.out / "logs", name=name), *stage_loggers(name)],
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=config.log_every_n_steps,
        callbacks=callbacks,
        enable_progress_bar=progress_enabled(),
    )


def save_step_checkpoint(trainer: Any, path: Path) -> None:
    """Save weights and hyper-parameters atomically (rank 0 writes; every rank returns once it exists)."""
    from usod.distributed import barrier

    tmp = path.with_name(f".{path.name}.tmp")
    # Weights and hyper-parameters only: the step is finished, so there is no optimizer state to resume.
    trainer.save_checkpoint(tmp, weights_only=True)  # rank 0 writes, then the ranks synchronise
    if trainer.is_global_zero:
        os.replace(tmp, path)  # a crash never leaves a truncated checkpoint under the final name
    barrier()


def train_stage1(config: PipelineConfig) -> Path:
    """Train the cue extractor unless ``OUT/stage1.ckpt`` exists; return the checkpoint path."""
    from usod.models.cue_extractor import CueExtractor

    ckpt = config.out / "stage1.ckpt"
    if ckpt.is_file():
        log.info("stage 1: %s exists, skipping training", ckpt)
        return ckpt
    import pytorch_lightning as pl

    # each training step starts from its own seed, so a resumed pipeline trains it as an uninterrupted one
    pl.seed_everything(config.seed, workers=True, verbose=False)
    kwargs = {"feature_cache": True, **config.stage1}
    model = CueExtractor(**kwargs)
    trainer = step_trainer(config, config.stage1_epochs, "stage1")
    trainer.fit(model, datamodule=_datamodule(config))
    save_step_checkpoint(trainer, ckpt)
    return ckpt


@dataclass
class LabelRoundResult:
    """What :func:`write_label_round` did.

    Attributes:
        store_root: The pseudo-label store.
        raw_round: Round holding the raw network maps (equal to ``round`` without post-processing).
        round: The final round, now the store's current round.
        predicted: Samples the network predicted in this call (0 when the raw round was already complete).
        postprocessed: Labels post-processed in this call by this process (finished ones are skipped;
            under DDP each rank counts its share).
    """

    store_root: Path
    raw_round: str
    round: str
    predicted: int
    postprocessed: int


def _round_entry(store: Any, name: str) -> dict[str, Any] | None:
    return next((r for r in store.rounds() if r["name"] == name), None)


def _check_same_settings(store: Any, name: str, meta: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Refuse to resume (or reuse) a round written with other settings: its labels would mix two models."""
    entry = _round_entry(store, name)
    if entry is None:
        return
    old = entry.get("meta") or {}
    differ = [k for k in keys if k in old and old[k] != meta[k]]
    if differ:
        details = "; ".join(f"{k}: {old[k]!r} in the store, {meta[k]!r} now" for k in differ)
        raise FileExistsError(
            f"pseudo-label round {name!r} in {store.root} was written with other settings ({details}); "
            "choose another round name or overwrite it"
        )


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's content (a checkpoint's identity, whatever its path or time stamps)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _input_identity(dataset: Any, base: Path) -> dict[str, Any]:
    """What a label round was predicted from besides the model: dataset root, split and input size.

    A root inside ``base`` (the folder holding the store, e.g. a run folder with its own data) is recorded
    relative to it, so that the folder can move.
    """
    root = getattr(dataset, "root", None)
    size = getattr(getattr(dataset, "transform", None), "image_size", None)
    return {
        "root": _portable(root, base, "<store>/..") if root is not None else None,
        "split": getattr(dataset, "split", None),
        "image_size": list(size) if size is not None else None,
    }


def _round_state(store: Any, name: str, ids: list[str]) -> tuple[bool, list[str]]:
    """``(marked complete, ids without a label file)`` of a round."""
    entry = _round_entry(store, name)
    done = store.finished_ids(name)
    return bool(entry and entry.get("complete")), [i for i in ids if i not in done]


def write_label_round(
    dataset: Any,
    ckpt: str | Path,
    store: Any,
    round_name: str,
    postprocess: PostProcessConfig | None = None,
    *,
    raw_round: str | None = None,
    batch_size: int = 16,
    num_workers: int = 2,
    postprocess_workers: int = 2,
    accelerator: str = "auto",
    devices: int | str | list[int] = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> LabelRoundResult:
    """Write one round of pseudo labels with a trained usod module; resumable.

    1. The module's raw saliency maps go into ``raw_round`` (default ``<round_name>-raw``) through
       ``Trainer.predict`` and :class:`~usod.labels.PseudoLabelWriter` (each sample once, also under DDP).
       Samples that already have a raw label are not predicted again.
    2. ``postprocess`` (denseCRF + median filter, A2S eq. 6) turns them into ``round_name`` in
       ``postprocess_workers`` processes, skipping labels that exist; the round is completed and becomes the
       store's current round. With ``postprocess=None`` the raw maps are written straight into
       ``round_name`` and there is no second round.

    A round the manifest marks complete is skipped when all its labels are on disk; when some were deleted,
    only those are written again (a complete raw round that lost files is predicted again as a whole, since
    the store does not reopen complete rounds; its old files are moved to ``retired/``). Rounds written with
    another checkpoint or other post-processing settings are refused unless ``overwrite`` is set, in which
    case both rounds start over (old files retired, not deleted).

    Under DDP (``devices``/``num_nodes`` above one, or started by ``torchrun``/``srun``) every rank must
    call this with the same arguments: the prediction is split over the ranks (each sample written once),
    so is the post-processing, and rank 0 writes the manifest.

    Args:
        dataset: The samples to label, with the network's input transform (e.g. a datamodule's
            ``predict_set``): a :class:`~usod.data.datasets.SODDataset`, whose ``files`` give the images
            for the CRF.
        ckpt: Checkpoint of any usod module (see :func:`usod.models.base.load_module`).
        store: A :class:`~usod.labels.PseudoLabelStore` or its root folder.
        round_name: Name of the final round.
        postprocess: Post-processing settings, or ``None`` for raw labels only.
        raw_round: Name of the raw round (default ``<round_name>-raw``).
        batch_size: Prediction batch size.
        num_workers: DataLoader workers.
        postprocess_workers: CRF processes (0: in this process).
        accelerator: Lightning accelerator of the prediction.
        devices: Lightning ``devices`` of the prediction.
        num_nodes: Lightning ``num_nodes`` of the prediction.
        strategy: Lightning ``strategy`` of the prediction.
        overwrite: Start both rounds over even when they exist.
        progress: Show progress bars (on rank zero, on a terminal; see :mod:`usod.progress`).

    Returns:
        A :class:`LabelRoundResult`.

    Raises:
        FileNotFoundError: The checkpoint does not exist.
        FileExistsError: A round exists with other settings and ``overwrite`` is False.
        TypeError: ``dataset`` has no ``files`` (image paths for the CRF).
    """
    import pytorch_lightning as pl

    from usod.distributed import barrier, rank_world
    from usod.labels import PseudoLabelStore, PseudoLabelWriter, dataset_ids
    from usod.labels.writer import IdSubset
    from usod.models.base import load_module
    from usod.ops.crf import postprocess_files
    from usod.progress import progress_enabled

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: checkpoint not found")
    files = getattr(dataset, "files", None)
    if files is None:
        raise TypeError(f"{type(dataset).__name__} has no 'files'; pass a usod SODDataset")
    store = store if isinstance(store, PseudoLabelStore) else PseudoLabelStore(store)
    final_only = postprocess is None
    raw_round = round_name if final_only else (raw_round or f"{round_name}-raw")
    ids = dataset_ids(dataset)
    raw_meta = {
        "ckpt": str(ckpt.resolve()),
        "ckpt_sha256": file_sha256(ckpt),
        "input": _input_identity(dataset, store.root.parent),
        "postprocess": None,
    }
    post_meta = None if final_only else {"from": raw_round, "postprocess": postprocess.to_dict()}
    if not overwrite:
        # the checkpoint's content, not its path: a moved run folder resumes, a retrained model does not
        _check_same_settings(store, raw_round, raw_meta, ("ckpt_sha256", "input"))
        if post_meta is not None:
            _check_same_settings(store, round_name, post_meta, ("from", "postprocess"))

    predicted = 0
    complete, missing = _round_state(store, raw_round, ids)
    restart = overwrite or (complete and bool(missing))
    if not (restart or missing or complete):
        # Every label is on disk but the round was never marked complete (a kill between the last label
        # and the manifest update, or a lost manifest): nothing to predict, only the manifest to finish.
        store.begin_round(raw_round, raw_meta)
        store.complete_round(raw_round, ids)
    elif restart or missing or not complete:
        if complete and missing and not overwrite:
            log.warning(
                "round %r is marked complete but %d labels are missing; predicting it again",
                raw_round,
                len(missing),
            )
        index = {sample_id: i for i, sample_id in enumerate(ids)}
        todo = dataset if restart else IdSubset(dataset, [index[i] for i in missing], ids)
        writer = PseudoLabelWriter(store, raw_round, meta=raw_meta, overwrite=restart, expected_ids=ids)
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            logger=False,
            callbacks=[writer],
            enable_model_summary=False,
            enable_progress_bar=progress_enabled(progress),
        )
        loader = torch.utils.data.DataLoader(todo, batch_size=batch_size, num_workers=num_workers)
        trainer.predict(load_module(ckpt), loader, return_predictions=False)
        predicted = len(todo)
    if final_only:
        if not predicted:
            store.set_current(raw_round)
        return LabelRoundResult(store.root, raw_round, round_name, predicted, 0)

    complete, missing = _round_state(store, round_name, ids)
    barrier()  # every rank has read the round's state before rank 0 changes the manifest
    if overwrite or not complete:
        store.begin_round(round_name, post_meta, overwrite=overwrite)
        if overwrite:
            missing = ids
    elif missing:
        # Complete rounds are never reopened; the lost labels are recomputed in place, identical to before.
        log.warning("round %r is complete but %d labels are missing; writing them", round_name, len(missing))
    todo_ids = set(missing)
    tasks = [
        (f.image, store.label_path(raw_round, f.id), store.label_path(round_name, f.id))
        for f in files
        if f.id in todo_ids
    ]
    rank, world = rank_world()
    written = postprocess_files(
        tasks[rank::world], postprocess, workers=postprocess_workers, progress=progress, skip_existing=True
    )
    if todo_ids or not complete:  # the same decision on every rank: complete_round synchronises them
        store.complete_round(round_name, ids)
    else:
        store.set_current(round_name)
    return LabelRoundResult(store.root, raw_round, round_name, predicted, len(written))


def predict_settings(config: Any) -> dict[str, Any]:
    """Device settings of a driver's prediction steps (see :func:`step_trainer` for ``config``)."""
    return {
        "accelerator": config.accelerator,
        "devices": config.devices,
        "num_nodes": config.num_nodes,
        "strategy": config.strategy,
    }


def _has_round(config: PipelineConfig, name: str) -> bool:
    """Whether the run's label store has round ``name`` (in the manifest)."""
    from usod.labels import PseudoLabelStore

    if not (config.out / "labels").is_dir():
        return False
    return _round_entry(PseudoLabelStore(config.out / "labels"), name) is not None


def write_stage1_labels(config: PipelineConfig, ckpt: Path, overwrite: bool = False) -> Path:
    """Write the raw (``stage1-raw``) and post-processed (``stage1``) rounds; return the store root.

    ``overwrite`` starts both rounds over (old labels retired), for a retrained stage 1.
    """
    dm = _datamodule(config)
    dm.setup("predict")
    result = write_label_round(
        dm.predict_set,
        ckpt,
        config.out / "labels",
        LABEL_ROUND,
        config.postprocess,
        raw_round=RAW_ROUND,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        postprocess_workers=config.postprocess_workers,
        overwrite=overwrite,
        **predict_settings(config),
    )
    return result.store_root


def train_stage2(config: PipelineConfig) -> Path:
    """Train the saliency detector on the stage-1 labels with online label updates (``OUT/stage2.ckpt``).

    Each epoch's rectified labels are written to the store as ``stage2-epoch<j>`` rounds and, when the
    training images have ground truth, scored (``label_*`` in the stage's logs).
    """
    from usod.labels import PseudoLabelStore
    from usod.labels.quality import PseudoLabelQuality
    from usod.models.saliency_detector import LabelRoundWriter, SaliencyDetector

    ckpt = config.out / "stage2.ckpt"
    if ckpt.is_file():
        log.info("stage 2: %s exists, skipping training", ckpt)
        return ckpt
    import pytorch_lightning as pl

    # its own seed: the initialisation and data order do not depend on how stage 1 ran (or whether it ran
    # in this process at all, when the pipeline resumes), nor on the number of ranks
    pl.seed_everything(config.seed + 1, workers=True, verbose=False)
    store = PseudoLabelStore(config.out / "labels")
    model = SaliencyDetector(**{"backbone": config.stage1.get("backbone"), **config.stage2})
    callbacks = [LabelRoundWriter(store), PseudoLabelQuality()]
    trainer = step_trainer(config, config.stage2_epochs, "stage2", callbacks=callbacks)
    trainer.fit(model, datamodule=_datamodule(config, pseudo_dir=store.round_dir(LABEL_ROUND), stage=2))
    save_step_checkpoint(trainer, ckpt)
    return ckpt


def write_stage2_predictions(config: PipelineConfig, ckpt: Path, overwrite: bool = False) -> Path:
    """Write the detector's predictions on the training images as the round ``stage2-pred``.

    ``overwrite`` starts the round over (old maps retired), for a retrained stage 2.
    """
    dm = _datamodule(config, stage=2)
    dm.setup("predict")
    result = write_label_round(
        dm.predict_set,
        ckpt,
        config.out / "labels",
        STAGE2_ROUND,
        None,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        overwrite=overwrite,
        **predict_settings(config),
    )
    return result.store_root


def score_round(config: PipelineConfig, round_name: str, distributed: bool = False) -> dict[str, Any] | None:
    """Scores of a pseudo-label round against the training images' ground truth (``None`` without it).

    With ``distributed`` every rank of a DDP job must call this: each scores its share of the images and the
    metric states are reduced, so every rank returns the scores of the whole round (equal to one process).
    """
    from usod.data.io import InvalidInputError
    from usod.distributed import collective_device, shard
    from usod.labels import PseudoLabelStore
    from usod.metrics import SODMetrics

    try:
        dataset = _scored_set(config)
    except InvalidInputError:
        return None  # no ground truth: nothing to score against
    if any(files.mask is None for files in dataset.files):
        return None
    from usod.progress import progress_bar

    store = PseudoLabelStore(config.out / "labels")
    device = collective_device() if distributed else torch.device("cpu")
    metric = SODMetrics(sync_on_compute=distributed).to(device)
    todo = shard(len(dataset.files)) if distributed else range(len(dataset.files))
    for index in progress_bar(todo, desc=f"score {round_name}", unit="img"):
        files = dataset.files[index]
        sample = dataset.load_raw(index)
        label = torch.tensor(store.read(files.id, round_name), device=device)
        metric.update(label[None], torch.tensor(sample["mask"], device=device)[None])
    scores = {k: float(v) if k != "n" else int(v) for k, v in metric.compute().items()}
    curves = {k: v.tolist() for k, v in metric.curves().items()}
    return {"scores": scores, "curves": curves}


@torch.no_grad()
def evaluate_checkpoint(
    ckpt: str | Path,
    dataset: Any,
    *,
    image_size: int | None = None,
    batch_size: int = 16,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
    distributed: bool = False,
) -> dict[str, Any]:
    """Score a usod checkpoint's predictions on a dataset with ground truth.

    Predictions are resized to each mask's original size and quantised to 8 bits, exactly as
    ``usod predict`` writes them, so the scores equal ``usod evaluate`` on its output.

    Args:
        ckpt: Checkpoint of any usod module.
        dataset: A :class:`~usod.data.datasets.SODDataset` built with ``with_masks=True``; its transform is
            replaced by a plain resize to ``image_size``.
        image_size: Network input size (default: the one the checkpoint was trained with, else 320).
        batch_size: Prediction batch size.
        num_workers: DataLoader workers.
        device: Where the network runs.
        progress: Show a progress bar.
        distributed: Every rank of a DDP job calls this and predicts its share of the images (on its own
            ``device``); the metric states are reduced, so every rank returns the scores of the whole set.

    Returns:
        ``{"scores": {...}, "curves": {...}}`` as :func:`score_round`.
    """
    from torch.utils.data import DataLoader

    from usod.data.io import read_mask
    from usod.data.transforms import EvalTransform
    from usod.distributed import collective_device, shard
    from usod.metrics import SODMetrics
    from usod.models.base import load_module, trained_image_size
    from usod.progress import progress_bar

    model = load_module(ckpt, map_location=device)
    size = image_size or trained_image_size(ckpt) or 320
    dataset.transform = EvalTransform(size)
    masks = {f.id: f.mask for f in dataset.files}
    subset = torch.utils.data.Subset(dataset, shard(len(dataset))) if distributed else dataset
    loader = DataLoader(subset, batch_size=batch_size, num_workers=num_workers)
    metric_device = collective_device() if distributed else torch.device("cpu")
    metric = SODMetrics(sync_on_compute=distributed).to(metric_device)
    for batch in progress_bar(loader, desc=f"evaluate {Path(ckpt).name}", unit="batch", enabled=progress):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        saliency = model.predict_step(batch, 0)["saliency"].float().cpu()
        for i, sample_id in enumerate(batch["id"]):
            mask = read_mask(masks[sample_id])
            pred = F.interpolate(saliency[i : i + 1], size=mask.shape, mode="bilinear", align_corners=False)
            pred = (pred[0].clamp(0, 1) * 255).round().to(torch.uint8)
            # torch.tensor copies: cached masks are read-only
            metric.update(pred.to(metric_device), torch.tensor(mask, device=metric_device)[None])
    scores = {k: float(v) if k != "n" else int(v) for k, v in metric.compute().items()}
    curves = {k: v.tolist() for k, v in metric.curves().items()}
    return {"scores": scores, "curves": curves}


def _eval_device(accelerator: str, devices: int | str | list[int] = 1) -> str:
    """Where a rank evaluates: the GPU it trained on when the job trains on GPUs (or ``auto`` finds one; with
    ``devices`` a list or ``"2,3"``, the entry of its local rank), else the CPU."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        from usod.distributed import local_rank

        ids = devices
        if isinstance(ids, str) and "," in ids:
            ids = [int(i) for i in ids.split(",") if i.strip()]
        rank = local_rank()
        return f"cuda:{ids[rank % len(ids)] if isinstance(ids, list) and ids else rank}"
    return "cpu"


def evaluate_stages(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Scores of every trained stage on every held-out set: ``{"<set>/<stage>": result}``.

    In a DDP job every rank calls this and evaluates its share of each set (see :func:`evaluate_checkpoint`).
    """

    results = {}
    for entry in config.eval:
        for stage in ("stage1", "stage2"):
            ckpt = config.out / f"{stage}.ckpt"
            if not ckpt.is_file():
                continue
            dataset = _scored_set(config, entry)
            results[f"{eval_name(entry)}/{stage}"] = evaluate_checkpoint(
                ckpt,
                dataset,
                image_size=config.stage2_image_size or config.image_size
                if stage == "stage2"
                else config.image_size,
                batch_size=config.batch_size,
                num_workers=config.num_workers,
                device=_eval_device(config.accelerator, config.devices),
                distributed=True,
            )
    return results


def _plot_curves(results: dict[str, dict[str, Any]], path: Path) -> None:
    # Figure + Agg canvas, no pyplot: switching the backend would stop a notebook from showing figures
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_pr, ax_f = fig.subplots(1, 2)
    for name, result in results.items():
        curves = result["curves"]
        ax_pr.plot(curves["recall"], curves["precision"], label=name)
        ax_f.plot(np.arange(256), curves["f"], label=name)
    ax_pr.set(xlabel="recall", ylabel="precision", title="PR curve", xlim=(0, 1), ylim=(0, 1.02))
    ax_f.set(
        xlabel="threshold", ylabel="F-measure", title="F-measure vs threshold", xlim=(0, 255), ylim=(0, 1)
    )
    for ax in (ax_pr, ax_f):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _grid(config: PipelineConfig, rounds: list[str], path: Path, n: int = 6) -> None:
    """Rows of image / each round's label / ground truth for the first ``n`` samples."""
    import cv2

    from usod.labels import PseudoLabelStore

    store = PseudoLabelStore(config.out / "labels")
    try:
        dataset = _scored_set(config)
    except Exception:  # noqa: BLE001 - no masks: show what exists
        dataset = _scored_set(config, with_masks=False)
    cell = 128
    rows = []
    for index in range(min(n, len(dataset))):
        sample = dataset.load_raw(index)
        tiles = [sample["image"]]
        tiles += [np.repeat(store.read(sample["id"], r)[..., None], 3, axis=2) for r in rounds]
        if "mask" in sample:
            tiles.append(np.repeat(sample["mask"][..., None], 3, axis=2))
        rows.append(np.concatenate([cv2.resize(t, (cell, cell)) for t in tiles], axis=1))
    grid = np.concatenate(rows, axis=0)
    write_png_atomic(path, grid)  # any folder name (cv2.imwrite crashes on names that are not UTF-8)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_report(config: PipelineConfig, timings: dict[str, float]) -> dict[str, Any] | None:
    """Score every label round, plot curves and a sample grid; write ``OUT/report/``.

    In a DDP job every rank calls this and scores its share of the images; rank 0 writes the report and
    returns the summary, the other ranks return ``None``.
    """
    from usod.distributed import is_rank_zero

    rounds = [RAW_ROUND, LABEL_ROUND]
    if (config.out / "stage2.ckpt").is_file():
        rounds.append(STAGE2_ROUND)
    results = {r: res for r in rounds if (res := score_round(config, r, distributed=True)) is not None}
    start = time.perf_counter()
    held_out = evaluate_stages(config)
    timings = dict(timings)
    if held_out:
        timings["eval"] = time.perf_counter() - start
    if not is_rank_zero():
        return None
    report_dir = config.out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "timings_s": timings,
        "metrics": {name: res["scores"] for name, res in results.items()},
        "eval": {name: res["scores"] for name, res in held_out.items()},
    }
    atomic_write_bytes(report_dir / "metrics.json", json.dumps(summary, indent=2).encode())
    if results:
        _plot_curves(results, report_dir / "pr_curves.png")
    for entry in config.eval:
        name = eval_name(entry)
        curves = {k.split("/", 1)[1]: v for k, v in held_out.items() if k.split("/", 1)[0] == name}
        if curves:
            _plot_curves(curves, report_dir / f"pr_curves_{_safe(name)}.png")
    _grid(config, rounds, report_dir / "grid.png")
    from usod.loggers import active_run, log_results

    run = active_run()
    if run is not None:
        import wandb

        log_results(run, "labels", results)
        log_results(run, "eval", held_out)
        run.log({"report/grid": wandb.Image(str(report_dir / "grid.png"))})
        run.summary.update({f"timings_s/{k}": v for k, v in timings.items()})
    return summary


#: Settings that decide each step's output (the others only say where and how fast it runs).
STAGE1_SETTINGS = (
    "dataset", "root", "split", "image_size", "batch_size", "stage1_epochs", "stage1", "postprocess", "seed",
    "precision", "skip_invalid",
)  # fmt: skip
STAGE2_SETTINGS = ("stage2_epochs", "stage2_image_size", "stage2")


def _step_settings(config: PipelineConfig) -> dict[str, Any]:
    values = {key: getattr(config, key) for key in STAGE1_SETTINGS + STAGE2_SETTINGS}
    values["root"] = _portable(values["root"], config.out, "<out>")  # usod demo keeps its data in OUT
    values["postprocess"] = config.postprocess.to_dict()
    return json.loads(json.dumps(values, default=str))


def check_resume_settings(config: PipelineConfig) -> None:
    """Compare ``config`` with the settings ``OUT/pipeline.json`` recorded, then record them (rank 0).

    Raises:
        InvalidInputError: A setting of a finished step changed (stage 1 and the labels once
            ``stage1.ckpt`` exists, stage 2 once ``stage2.ckpt`` exists).
    """
    from usod.data.io import InvalidInputError
    from usod.distributed import barrier, is_rank_zero

    path = config.out / "pipeline.json"
    now = _step_settings(config)
    if path.is_file():
        try:
            before = json.loads(path.read_text())["settings"]
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidInputError(
                path, f"unreadable pipeline record ({err}); move it away to go on"
            ) from None
        finished = list(STAGE1_SETTINGS) if (config.out / "stage1.ckpt").is_file() else []
        if (config.out / "stage2.ckpt").is_file():
            finished += STAGE2_SETTINGS
        changed = [k for k in finished if k in before and before[k] != now[k]]
        if changed:
            details = "; ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed)
            raise InvalidInputError(
                config.out,
                f"this run folder holds finished steps made with other settings ({details}). Use another "
                "`out`, or delete the checkpoints of the steps to redo (stage1.ckpt, stage2.ckpt) to retrain "
                "them (their labels are then rewritten; old files are kept under retired/)",
            )
    barrier()  # every rank compared with the old record before rank 0 replaces it
    if is_rank_zero():
        atomic_write_bytes(path, (json.dumps({"settings": now}, indent=2) + "\n").encode())


def _retire(path: Path) -> None:
    """Move a stale step output to ``OUT/retired/<name>-<time>`` (rank 0), never deleting it."""
    from usod.distributed import barrier, is_rank_zero

    if is_rank_zero() and path.exists():
        target = path.parent / "retired" / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        log.warning("%s was made from an earlier stage that has been retrained: moved to %s", path, target)
    barrier()


def run_pipeline(config: PipelineConfig) -> dict[str, Any] | None:
    """Run every step (resuming finished ones) and return the report summary.

    In a multi-process job every rank calls this; rank 0 writes the report and returns the summary, the
    other ranks return ``None`` once the last training or prediction step is done.
    """
    import pytorch_lightning as pl

    from usod.distributed import init_from_launcher, is_rank_zero
    from usod.loggers import wandb_job

    init_from_launcher(config.accelerator)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    config.out.mkdir(parents=True, exist_ok=True)
    label_update = config.stage2.get("label_update", "olr") if config.stage2_epochs > 0 else None
    job = wandb_job(
        config.logger if is_rank_zero() else None,
        PIPELINE_METHOD,
        config.dataset,
        config.root,
        config.out,
        config=json.loads(json.dumps(asdict(config), default=str)),
        label_update=label_update,
    )
    check_resume_settings(config)
    with job:
        return _run_steps(config)


def _run_steps(config: PipelineConfig) -> dict[str, Any] | None:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    retrain1 = not (config.out / "stage1.ckpt").is_file()
    if retrain1 and (config.out / "stage2.ckpt").is_file():
        _retire(config.out / "stage2.ckpt")  # trained on the labels of the stage 1 about to be replaced
    ckpt = train_stage1(config)
    timings["stage1"] = time.perf_counter() - start
    start = time.perf_counter()
    write_stage1_labels(config, ckpt, overwrite=retrain1 and _has_round(config, RAW_ROUND))
    timings["label"] = time.perf_counter() - start
    if config.stage2_epochs > 0:
        start = time.perf_counter()
        retrain2 = not (config.out / "stage2.ckpt").is_file()
        stage2 = train_stage2(config)
        write_stage2_predictions(config, stage2, overwrite=retrain2 and _has_round(config, STAGE2_ROUND))
        timings["stage2"] = time.perf_counter() - start
    start = time.perf_counter()
    summary = write_report(config, timings)  # every rank scores its share; rank 0 writes
    if summary is None:
        return None
    summary["timings_s"]["report"] = time.perf_counter() - start
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The report's tables: label rounds on the training images, then each stage on the held-out sets."""
    parts = []
    if summary.get("metrics"):
        parts.append("training images (pseudo labels / predictions vs ground truth):")
        parts.append(format_scores(summary["metrics"]))
    if summary.get("eval"):
        parts.append("\nheld-out sets (never trained on):")
        parts.append(format_scores(summary["eval"]))
    timings = summary.get("timings_s") or {}
    if timings:
        parts.append("\nstep times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return "\n".join(parts)


def format_scores(metrics: dict[str, dict[str, float]]) -> str:
    """A small text table of ``{name: scores}``."""
    keys = ("mae", "max_f", "mean_f", "adp_f", "max_e", "s_measure", "w_f")
    width = max([len(n) for n in metrics] + [6])
    lines = [f"{'':<{width}}  " + "  ".join(f"{k:>9}" for k in keys)]
    for name, scores in metrics.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{scores.get(k, float('nan')):>9.4f}" for k in keys))
    return "\n".join(lines)
