"""The DeepUSPS pipeline as resumable steps in one output folder.

Steps, each skipped when its output exists (an interrupted run resumes where it stopped):

1. **handcrafted**: every method of ``methods`` (:data:`usod.handcrafted.HANDCRAFTED`) over the training
   images, in worker processes, into the pseudo-label round ``hc-<method>`` (maps that exist are kept);
2. **refinement** of each method, round ``k = 0 .. rounds``: a freshly initialised
   :class:`~usod.models.deepusps.DeepUSPSRefiner` trained on ``hc-<method>`` binarised at 1.5 x each map's
   mean (``k = 0``, inter-image consistency) or on the previous round's moving averages binarised at 0.5
   (``k >= 1``, self-supervision, with the learning rate multiplied by ``lr_growth`` each round as in the
   paper). Its moving averages become the round ``<method>-r<k>-mva`` and the checkpoint
   ``OUT/refine/<method>-r<k>.ckpt``; with ``write_predictions`` the network's own maps are written too
   (``<method>-r<k>-pred``);
3. **fusion**: one network trained on the last moving averages of every method with the mean of the
   per-method ``L_beta`` -> ``OUT/fused.ckpt`` (usable by ``usod predict``) and its maps ``fused-pred``;
4. **report**: when the dataset has ground truth, every round is scored (pseudo-label quality on the
   training images, as in the paper's Fig. 6) -> ``OUT/report.json``.

Every round lives in the store ``OUT/labels`` (see :class:`~usod.labels.PseudoLabelStore`), so each can be
inspected (``usod evaluate --pred OUT/labels/rounds/<round>``).

Several GPUs or nodes (``devices``, ``num_nodes``): call :func:`run_deepusps` in every process, as started
by ``torchrun``/``srun`` or by Lightning (a script run once with ``devices > 1``; Lightning starts it again
for the other devices). The handcrafted maps are shared out over the ranks, every network trains and
predicts under DDP (each label written once, the moving averages equal to a 1-process run), the rounds are
scored by all ranks, and rank 0 writes the checkpoints, the manifests and the report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from usod.data.datamodules import StackedLabelDataModule
from usod.data.io import InvalidInputError, atomic_write_bytes
from usod.distributed import barrier, init_from_launcher, is_rank_zero, rank_world
from usod.evaluation import score_round
from usod.handcrafted import get_method, run_files
from usod.labels import PseudoLabelStore
from usod.labels.quality import PseudoLabelQuality
from usod.labels.rounds import LabelRoundWriter, write_label_round
from usod.loggers import active_run, log_results, wandb_job
from usod.models.backbones import check_backbone
from usod.models.deepusps import DeepUSPSRefiner
from usod.pipelines.steps import (
    RunSettings,
    check_arguments,
    predict_settings,
    save_step_checkpoint,
    step_trainer,
)

log = logging.getLogger(__name__)

FUSED_ROUND = "fused-pred"


def handcrafted_round(method: str) -> str:
    """Store round of a method's raw handcrafted maps."""
    return f"hc-{method}"


def mva_round(method: str, k: int) -> str:
    """Store round of the moving averages of refinement round ``k``."""
    return f"{method}-r{k}-mva"


def pred_round(method: str, k: int) -> str:
    """Store round of the network maps of refinement round ``k``."""
    return f"{method}-r{k}-pred"


@dataclass(kw_only=True)
class DeepUSPSConfig(RunSettings):
    """Settings of :func:`run_deepusps`: the fields of :class:`~usod.pipelines.steps.RunSettings` (``out``:
    ``labels/``, ``refine/``, ``fused.ckpt``, ``report.json``, ``logs/``; ``dataset``, an RGB dataset;
    ``root``, ``split``, ``image_size``, ``batch_size``, ``num_workers``, ``accelerator``, ``devices``,
    ``num_nodes``, ``strategy``, ``precision``, ``performance``, ``seed``, ``log_every_n_steps``, ``logger``)
    and the following.

    Attributes:
        methods: Handcrafted methods to refine.
        handcrafted_workers: Processes computing the handcrafted maps.
        handcrafted_options: Per-method keyword arguments, ``{method: {...}}``.
        rounds: Self-supervision iterations after the inter-image-consistency round (paper: 2).
        epochs: Epochs of every refinement round (paper: 25).
        fusion_epochs: Epochs of the fusion network (paper: 200).
        refiner: Further :class:`DeepUSPSRefiner` arguments of the refinement networks (``backbone``, ``lr``,
            ``crf``...).
        fusion: Further :class:`DeepUSPSRefiner` arguments of the fusion network (defaults to ``refiner``'s
            backbone, channels and learning rate).
        lr_growth: Learning-rate factor per self-supervision round (paper: 2).
        write_predictions: Also write the network maps of every refinement round.
        logger: (see :class:`~usod.pipelines.steps.RunSettings`): one wandb run ``deepusps-<dataset>`` with
            every network's losses (``<method>-r<k>-train_loss``, ``fusion-train_loss``), the quality of
            the moving averages after every epoch (``<method>-r<k>-label_max_f``, ... when the training
            images have ground truth) and the report's round scores.
    """

    methods: tuple[str, ...] = ("rbd", "mc", "dsr", "mr")
    handcrafted_workers: int = 2
    handcrafted_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    rounds: int = 2
    epochs: int = 10
    fusion_epochs: int = 20
    refiner: dict[str, Any] = field(default_factory=dict)
    fusion: dict[str, Any] = field(default_factory=dict)
    lr_growth: float = 2.0
    write_predictions: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.methods = tuple(m.lower() for m in self.methods)
        for method in self.methods:
            get_method(method)
        if not self.methods:
            raise ValueError("DeepUSPS needs at least one handcrafted method")
        if self.rounds < 0 or self.epochs < 1 or self.fusion_epochs < 1:
            raise ValueError("rounds must be >= 0 and epochs, fusion_epochs >= 1")
        check_arguments("refiner", DeepUSPSRefiner, self.refiner)
        check_arguments("fusion", DeepUSPSRefiner, self.fusion)
        check_backbone(self.refiner.get("backbone"), "refiner.backbone")
        check_backbone(self.fusion.get("backbone"), "fusion.backbone")
        start = int(self.refiner.get("mva_start_epoch", 0))
        if start >= self.epochs:
            raise ValueError(
                f"refiner mva_start_epoch ({start}) must be < epochs ({self.epochs}), or no moving "
                "average would be accumulated"
            )

    @property
    def store_root(self) -> Path:
        """The pseudo-label store."""
        return self.out / "labels"

    def refine_ckpt(self, method: str, k: int) -> Path:
        """Checkpoint of refinement round ``k`` of ``method``."""
        return self.out / "refine" / f"{method}-r{k}.ckpt"

    @property
    def fused_ckpt(self) -> Path:
        """Checkpoint of the fusion network."""
        return self.out / "fused.ckpt"


def _datamodule(config: DeepUSPSConfig, label_dirs: list[str] | None = None) -> Any:
    return StackedLabelDataModule(
        label_dirs=label_dirs or [],
        dataset=config.dataset,
        root=config.root,
        split=config.split,
        image_size=config.image_size,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        seed=config.seed,
    )


def _predict_set(config: DeepUSPSConfig) -> Any:
    dm = _datamodule(config)
    dm.setup("predict")
    return dm.predict_set


def write_handcrafted(config: DeepUSPSConfig, method: str, store: Any, dataset: Any) -> int:
    """Compute ``method`` for every training image into round ``hc-<method>``; returns the maps this
    process wrote (under DDP each rank computes its share)."""
    name = handcrafted_round(method)
    ids = [f.id for f in dataset.files]
    done = store.is_complete(name, ids)
    barrier()  # every rank has read the store before rank 0 changes it
    if done:
        return 0
    options = dict(config.handcrafted_options.get(method, {}))
    store.begin_round(name, {"producer": "handcrafted", "method": method, "options": options})
    rank, world = rank_world()
    tasks = [(f.image, store.label_path(name, f.id)) for f in dataset.files]
    written = run_files(
        method,
        tasks[rank::world],  # each rank its share
        workers=config.handcrafted_workers,
        options=options,
        skip_existing=True,
        progress=True,
    )
    store.complete_round(name, expected_ids=ids)
    return len(written)


def train_refinement_round(
    config: DeepUSPSConfig, method: str, k: int, store: Any, ids: list[str]
) -> tuple[Path, bool]:
    """Train round ``k`` of ``method`` unless its checkpoint and moving averages exist.

    Returns:
        The checkpoint, and whether it was trained now (False: resumed).
    """
    ckpt = config.refine_ckpt(method, k)
    target = mva_round(method, k)
    if ckpt.is_file() and store.is_complete(target, ids):
        log.info("deepusps: %s exists, skipping %s round %d", ckpt, method, k)
        return ckpt, False
    source = handcrafted_round(method) if k == 0 else mva_round(method, k - 1)
    kwargs: dict[str, Any] = dict(config.refiner)
    kwargs["lr"] = float(kwargs.get("lr", 1e-3)) * config.lr_growth**k
    kwargs.update(num_targets=1, mva=True, target_threshold=None if k == 0 else 0.5)
    model = DeepUSPSRefiner(**kwargs)
    writer = LabelRoundWriter(
        store, target, at="end", meta={"method": method, "round": k, "from": source}, expected_ids=ids
    )
    # the moving averages are scored after every epoch when the training images have ground truth
    trainer = step_trainer(config, config.epochs, f"{method}-r{k}", [writer, PseudoLabelQuality()])
    trainer.fit(model, datamodule=_datamodule(config, [str(store.round_dir(source))]))
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    save_step_checkpoint(trainer, ckpt)  # after the MVA round: a checkpoint means the round is complete
    return ckpt, True


def train_fusion(config: DeepUSPSConfig, store: Any) -> tuple[Path, bool]:
    """Train the fusion network on every method's last moving averages unless ``fused.ckpt`` exists.

    Returns:
        The checkpoint, and whether it was trained now.
    """
    ckpt = config.fused_ckpt
    if ckpt.is_file():
        log.info("deepusps: %s exists, skipping fusion", ckpt)
        return ckpt, False
    dirs = [str(store.round_dir(mva_round(m, config.rounds))) for m in config.methods]
    base = {
        k: v for k, v in config.refiner.items() if k in ("backbone", "channels", "lr", "encoder_lr_ratio")
    }
    kwargs = {**base, **config.fusion, "num_targets": len(dirs), "mva": False, "target_threshold": 0.5}
    model = DeepUSPSRefiner(**kwargs)
    trainer = step_trainer(config, config.fusion_epochs, "fusion", [])
    trainer.fit(model, datamodule=_datamodule(config, dirs))
    save_step_checkpoint(trainer, ckpt)
    return ckpt, True


def _write_predictions(
    config: DeepUSPSConfig, dataset: Any, ckpt: Path, store: Any, name: str, overwrite: bool
) -> None:
    """The network maps of ``ckpt`` as round ``name`` (resumable; ``overwrite`` after retraining)."""
    write_label_round(
        dataset,
        ckpt,
        store,
        name,
        None,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        **predict_settings(config),
        overwrite=overwrite,
        progress=False,
    )


def score_rounds(config: DeepUSPSConfig, names: list[str]) -> dict[str, dict[str, float]]:
    """Scores of store rounds against the training images' ground truth (empty without ground truth).

    In a DDP job every rank calls this and scores its share of the images (the scores are of all of them).
    """
    try:
        dataset = config.training_set()
    except InvalidInputError:
        return {}  # no ground truth: nothing to score against
    scores = {}
    for name in names:
        result = score_round(config.store_root, dataset, name, distributed=True)
        if result is None:
            return {}
        scores[name] = result["scores"]
    return scores


def round_names(config: DeepUSPSConfig) -> list[str]:
    """Every round the pipeline writes, in order."""
    names = []
    for method in config.methods:
        names.append(handcrafted_round(method))
        for k in range(config.rounds + 1):
            names.append(mva_round(method, k))
            if config.write_predictions:
                names.append(pred_round(method, k))
    return [*names, FUSED_ROUND]


def run_deepusps(config: DeepUSPSConfig) -> dict[str, Any] | None:
    """Run every step (resuming finished ones); return ``{"config", "timings_s", "metrics"}``.

    ``timings_s`` holds the seconds spent in this call per step (``hc-<method>``, ``<method>-r<k>``,
    ``fusion``, ``report``); steps skipped on resume take about 0 s. The summary is also written to
    ``OUT/report.json``. In a multi-process job every rank calls this; rank 0 writes the report and returns
    the summary, the other ranks return ``None``.
    """
    init_from_launcher(config.accelerator)  # torchrun/srun: the ranks share the handcrafted maps
    pl.seed_everything(config.seed, workers=True, verbose=False)
    config.out.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps(asdict(config), default=str))
    logger = config.logger if is_rank_zero() else None
    with wandb_job(logger, "deepusps", config.dataset, config.root, config.out, config=settings):
        return _run_steps(config)


def _run_steps(config: DeepUSPSConfig) -> dict[str, Any] | None:
    store = PseudoLabelStore(config.store_root)
    dataset = _predict_set(config)
    ids = [f.id for f in dataset.files]
    timings: dict[str, float] = {}

    def timed(key: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args)
        timings[key] = round(time.perf_counter() - start, 2)
        return result

    for method in config.methods:
        timed(handcrafted_round(method), write_handcrafted, config, method, store, dataset)
    for method in config.methods:
        for k in range(config.rounds + 1):
            pl.seed_everything(config.seed + k, workers=True, verbose=False)  # a fresh initialisation
            ckpt, trained = timed(f"{method}-r{k}", train_refinement_round, config, method, k, store, ids)
            if config.write_predictions:
                name = pred_round(method, k)
                timed(
                    f"{method}-r{k}-predict", _write_predictions, config, dataset, ckpt, store, name, trained
                )
    pl.seed_everything(config.seed, workers=True, verbose=False)
    fused, trained = timed("fusion", train_fusion, config, store)
    timed("fusion-predict", _write_predictions, config, dataset, fused, store, FUSED_ROUND, trained)
    metrics = timed("report", score_rounds, config, round_names(config))  # every rank scores its share
    if not is_rank_zero():
        return None  # rank 0 writes the report
    summary = {
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "timings_s": timings,
        "metrics": metrics,
    }
    atomic_write_bytes(config.out / "report.json", json.dumps(summary, indent=2).encode())
    run = active_run()
    if run is not None:
        log_results(run, "labels", {name: {"scores": scores} for name, scores in metrics.items()})
        run.summary.update({f"timings_s/{k}": v for k, v in timings.items()})
    return summary
