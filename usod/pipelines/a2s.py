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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl

from usod.data.datamodules import get_datamodule
from usod.data.datasets import DATASETS, get_dataset
from usod.data.io import InvalidInputError, atomic_write_bytes, write_png_atomic
from usod.data.transforms import check_image_size
from usod.distributed import barrier, init_from_launcher, is_rank_zero
from usod.evaluation import eval_device, evaluate_checkpoint, format_table, plot_curves, score_round
from usod.labels import PseudoLabelStore
from usod.labels.quality import PseudoLabelQuality
from usod.labels.rounds import LabelRoundWriter, portable_path, write_label_round
from usod.loggers import active_run, log_results, wandb_job
from usod.models.backbones import check_backbone
from usod.models.cue_extractor import CueExtractor
from usod.models.saliency_detector import SaliencyDetector
from usod.ops.crf import PostProcessConfig
from usod.pipelines.steps import (
    RunSettings,
    check_arguments,
    predict_settings,
    retire,
    save_step_checkpoint,
    step_trainer,
)

log = logging.getLogger(__name__)

RAW_ROUND = "stage1-raw"
LABEL_ROUND = "stage1"
STAGE2_ROUND = "stage2-pred"
#: Method name of pipeline runs in wandb.
PIPELINE_METHOD = "a2s_pipeline"


@dataclass(kw_only=True)
class PipelineConfig(RunSettings):
    """Settings of :func:`run_pipeline`: the fields of :class:`~usod.pipelines.steps.RunSettings` (``out``,
    ``dataset``, ``root``, ``split``, ``image_size``, ``batch_size``, ``num_workers``, ``accelerator``,
    ``devices``, ``num_nodes``, ``strategy``, ``precision``, ``performance``, ``seed``,
    ``log_every_n_steps``, ``logger``) and the following.

    ``image_size`` is the network input size of stage 1, and of stage 2 unless ``stage2_image_size`` is set.

    Attributes:
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
        cache_images: Keep decoded, resized images in memory (see ``SODDataModule``).
        skip_invalid: Leave out samples with a missing or unreadable file (image, mask, depth...) in the
            training and eval sets instead of stopping (see ``SODDataset``); ``usod data inspect`` lists them.
        seed: Global seed; stage 1 starts from ``seed`` and stage 2 from ``seed + 1``, whatever ran before
            in the process (a resumed pipeline trains each stage as an uninterrupted one).
        logger: (see :class:`~usod.pipelines.steps.RunSettings`): the wandb run is named
            ``a2s_pipeline-<dataset>`` and grouped by dataset unless the mapping says otherwise.
    """

    postprocess_workers: int = 2
    stage1_epochs: int = 8
    stage1: dict[str, Any] = field(default_factory=dict)
    stage2_epochs: int = 0
    stage2_image_size: int | None = None
    stage2: dict[str, Any] = field(default_factory=dict)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)
    eval: list[dict[str, Any]] = field(default_factory=list)
    cache_images: bool = False
    skip_invalid: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
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
        for name, low in (
            ("stage1_epochs", 1), ("stage2_epochs", 0), ("postprocess_workers", 0),
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.stage2_image_size is not None:
            check_image_size("stage2_image_size", self.stage2_image_size)
        training_images: set[Path] | None = None  # listed once, when a held-out set shares the root
        for index, entry in enumerate(self.eval):
            where, dataset, root = f"eval[{index}].", entry["dataset"], Path(entry["root"])
            if dataset not in DATASETS:
                raise ValueError(f"{where}dataset: unknown {dataset!r}; registered: {sorted(DATASETS)}")
            if not root.exists():  # the training root is read first anyway; eval roots at the end
                raise ValueError(f"{where}root: {str(root)!r} does not exist")
            try:  # opened now (file lists only), read after training
                held_out = {f.image for f in _scored_set(self, entry).files}
            except InvalidInputError as err:
                raise ValueError(f"eval[{index}]: {err}") from None
            if root.resolve() != self.root.resolve():
                continue
            if training_images is None:
                training_images = {f.image for f in self.training_set(with_masks=False).files}
            shared = held_out & training_images
            if shared == held_out:
                raise ValueError(
                    f"{where}root is the training root: a held-out set must hold other images (the report "
                    "scores the pseudo labels on the training images already)"
                )
            if shared:  # another split of the training root that overlaps it
                raise ValueError(
                    f"eval[{index}]: split {entry.get('split')!r} shares {len(shared)} images with the "
                    f"training split {self.split!r} (e.g. {sorted(shared)[0]}); a held-out set must hold "
                    "other images"
                )
        check_arguments("stage1", CueExtractor, self.stage1)
        check_arguments("stage2", SaliencyDetector, self.stage2)
        check_backbone(self.stage1.get("backbone"), "stage1.backbone")
        check_backbone(self.stage2.get("backbone", self.stage1.get("backbone")), "stage2.backbone")


def eval_name(entry: dict[str, Any]) -> str:
    """Name of a held-out test set in reports."""
    return str(entry.get("name") or entry["dataset"])


def _scored_set(config: PipelineConfig, entry: dict[str, Any] | None = None, with_masks: bool = True) -> Any:
    """The training set (``entry=None``) or an ``eval`` entry's set, with masks, as every step reads it."""
    if entry is None:
        return config.training_set(with_masks=with_masks, skip_invalid=config.skip_invalid)
    return get_dataset(
        entry["dataset"],
        root=entry["root"],
        split=entry.get("split"),
        with_masks=with_masks,
        skip_invalid=config.skip_invalid,
    )


def _datamodule(config: PipelineConfig, pseudo_dir: Path | None = None, stage: int = 1) -> Any:
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


def train_stage1(config: PipelineConfig) -> Path:
    """Train the cue extractor unless ``OUT/stage1.ckpt`` exists; return the checkpoint path."""
    ckpt = config.out / "stage1.ckpt"
    if ckpt.is_file():
        log.info("stage 1: %s exists, skipping training", ckpt)
        return ckpt
    # each training step starts from its own seed, so a resumed pipeline trains it as an uninterrupted one
    pl.seed_everything(config.seed, workers=True, verbose=False)
    kwargs = {"feature_cache": True, **config.stage1}
    model = CueExtractor(**kwargs)
    trainer = step_trainer(config, config.stage1_epochs, "stage1")
    trainer.fit(model, datamodule=_datamodule(config))
    save_step_checkpoint(trainer, ckpt)
    return ckpt


def _has_round(config: PipelineConfig, name: str) -> bool:
    """Whether the run's label store has round ``name`` (in the manifest)."""
    if not (config.out / "labels").is_dir():
        return False
    return PseudoLabelStore(config.out / "labels").round(name) is not None


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
    ckpt = config.out / "stage2.ckpt"
    if ckpt.is_file():
        log.info("stage 2: %s exists, skipping training", ckpt)
        return ckpt
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
                device=eval_device(config.accelerator, config.devices),
                distributed=True,
            )
    return results


def _grid(config: PipelineConfig, rounds: list[str], path: Path, n: int = 6) -> None:
    """Rows of image / each round's label / ground truth for the first ``n`` samples."""
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


def _score_rounds(config: PipelineConfig, rounds: list[str]) -> dict[str, dict[str, Any]]:
    """Scores of label rounds on the training images (empty without ground truth); every rank its share."""
    try:
        dataset = _scored_set(config)
    except InvalidInputError:
        return {}  # no ground truth: nothing to score against
    results = {}
    for name in rounds:
        result = score_round(config.out / "labels", dataset, name, distributed=True)
        if result is None:
            return {}
        results[name] = result
    return results


def write_report(config: PipelineConfig, timings: dict[str, float]) -> dict[str, Any] | None:
    """Score every label round, plot curves and a sample grid; write ``OUT/report/``.

    In a DDP job every rank calls this and scores its share of the images; rank 0 writes the report and
    returns the summary, the other ranks return ``None``.
    """
    rounds = [RAW_ROUND, LABEL_ROUND]
    if (config.out / "stage2.ckpt").is_file():
        rounds.append(STAGE2_ROUND)
    results = _score_rounds(config, rounds)
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
        plot_curves(results, report_dir / "pr_curves.png")
    for entry in config.eval:
        name = eval_name(entry)
        curves = {k.split("/", 1)[1]: v for k, v in held_out.items() if k.split("/", 1)[0] == name}
        if curves:
            plot_curves(curves, report_dir / f"pr_curves_{_safe(name)}.png")
    _grid(config, rounds, report_dir / "grid.png")
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
    values["root"] = portable_path(values["root"], config.out, "<out>")  # usod demo keeps its data in OUT
    values["postprocess"] = config.postprocess.to_dict()
    return json.loads(json.dumps(values, default=str))


def check_resume_settings(config: PipelineConfig) -> None:
    """Compare ``config`` with the settings ``OUT/pipeline.json`` recorded, then record them (rank 0).

    Raises:
        InvalidInputError: A setting of a finished step changed (stage 1 and the labels once
            ``stage1.ckpt`` exists, stage 2 once ``stage2.ckpt`` exists).
    """
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


def run_pipeline(config: PipelineConfig) -> dict[str, Any] | None:
    """Run every step (resuming finished ones) and return the report summary.

    In a multi-process job every rank calls this; rank 0 writes the report and returns the summary, the
    other ranks return ``None`` once the last training or prediction step is done.
    """
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
        retire(config.out / "stage2.ckpt")  # trained on the labels of the stage 1 about to be replaced
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
        parts.append(format_table(summary["metrics"], header="round"))
    if summary.get("eval"):
        parts.append("\nheld-out sets (never trained on):")
        parts.append(format_table(summary["eval"], header="set/stage"))
    timings = summary.get("timings_s") or {}
    if timings:
        parts.append("\nstep times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return "\n".join(parts)
