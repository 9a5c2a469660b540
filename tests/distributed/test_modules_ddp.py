"""Every usod module under Lightning DDP: 2 gloo ranks on the CPU against 1 process.

For each module one scenario fits (with validation), validates and predicts, on 2 ranks and on 1 process:

* online label updates (OLR, SPR, DeepUSPS's MVA, adapter-transfer SPR) give the same labels as 1 process,
  on both ranks, and the label rounds written by :class:`LabelRoundWriter` hold
  them, each label written once across ranks;
* validation and test metrics (synchronised through the metric states) equal the 1-process values;
* prediction through :class:`PseudoLabelWriter` writes each sample exactly once and the same maps;
* manifests and checkpoints are written by rank 0 only, only rank 0 logs, and no logged value is left
  unsynchronised.

Predictions are made independent of how samples are split over ranks: learning rate 0 (the weights never
change), batch size 1 (BatchNorm statistics per image), no random flips, one thread per process. The 5
images do not split evenly over 2 ranks on purpose (padding in training, none in evaluation).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from tests.helpers.models import TINY
from usod.data.datamodules import RGBDataModule
from usod.data.synth import write_dataset
from usod.labels import PseudoLabelStore, PseudoLabelWriter
from usod.models.base import SOD_LOG_KEYS

from ._harness import WORLD, read_warnings, read_writes, run_ddp, run_single, trainer

pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),
    pytest.mark.filterwarnings("ignore:.*in eval mode at the start of training.*"),
    pytest.mark.filterwarnings("ignore:.*self.trainer` reference is not registered.*"),
]

N_IMAGES = 5
SIZE = 64
VAL_KEYS = (
    "val_mae",
    "val_max_f",
    "val_mean_f",
    "val_adp_f",
    "val_max_e",
    "val_mean_e",
    "val_adp_e",
    "val_s_measure",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 synthetic RGB images with masks; the masks double as the training pseudo labels."""
    return write_dataset(tmp_path_factory.mktemp("ddp") / "rgb", "rgb", N_IMAGES, size=(40, 48))


def datamodule(data: Path, pseudo: bool = True) -> RGBDataModule:
    return RGBDataModule(
        dataset="folder",
        root=str(data),
        pseudo_dir=str(data / "masks") if pseudo else None,
        image_size=SIZE,
        batch_size=1,
        num_workers=0,
        augment=False,
    )


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(path, **{k.replace("/", "|"): v for k, v in arrays.items()})


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as loaded:
        return {k.replace("|", "/"): loaded[k] for k in loaded.files}


def scenario(
    rank: int,
    world: int,
    out: Path,
    *,
    data: Path,
    make_model: Callable[[], Any],
    epochs: int = 1,
    pseudo: bool = True,
    label_callback: Callable[[PseudoLabelStore], Any] | None = None,
    export: Callable[[Any], dict[str, np.ndarray]] | None = None,
    val_keys: tuple[str, ...] = VAL_KEYS,
) -> None:
    """Fit (labels, checkpoint, logs), validate and predict; saves this rank's results under ``out``."""
    store = PseudoLabelStore(out / "store")
    torch.manual_seed(0)
    model = make_model()
    callbacks: list[Any] = [ModelCheckpoint(dirpath=out / "ckpt", save_last=True)]
    if label_callback is not None:
        callbacks.append(label_callback(store))
    fit = trainer(
        world,
        out,
        max_epochs=epochs,
        callbacks=callbacks,
        enable_checkpointing=True,
        logger=CSVLogger(out / "logs"),
    )
    fit.fit(model, datamodule=datamodule(data, pseudo))
    results: dict[str, Any] = {}
    if export is not None:
        _save_npz(out / f"labels_rank{rank}.npz", export(model))

    torch.manual_seed(0)
    fresh = make_model()
    results["validate"] = trainer(world).validate(fresh, datamodule=datamodule(data, pseudo), verbose=False)
    results["test"] = trainer(world).test(fresh, datamodule=datamodule(data, pseudo), verbose=False)
    results["val_keys"] = val_keys
    writer = PseudoLabelWriter(store, "pred")
    predict = trainer(world, callbacks=[writer])
    predict.predict(fresh, datamodule=datamodule(data, pseudo), return_predictions=False)
    results["num_written"] = writer.num_written
    torch.save(results, out / f"results_rank{rank}.pt")


def _round_labels(store: PseudoLabelStore, name: str) -> dict[str, np.ndarray]:
    return {sid: store.read(sid, name) for sid in sorted(store.finished_ids(name))}


def check(tmp_path: Path, data: Path, rounds: tuple[str, ...] = (), **kwargs: Any) -> None:
    """Run the scenario on 2 ranks and on 1 process and compare everything.

    ``rounds``: the label rounds that fitting must write (a label round is only written after labels changed).
    """
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run_ddp(scenario, ddp, data=data, **kwargs)
    run_single(scenario, single, data=data, **kwargs)
    ids = [p.stem for p in sorted((data / "images").iterdir())]

    # labels: the same as 1 process, on both ranks
    if kwargs.get("export") is not None:
        expected = _load_npz(single / "labels_rank0.npz")
        assert sorted(expected) == ids
        for rank in range(WORLD):
            got = _load_npz(ddp / f"labels_rank{rank}.npz")
            assert sorted(got) == ids, rank
            for sid in ids:
                np.testing.assert_array_equal(got[sid], expected[sid], err_msg=f"rank {rank}, {sid}")

    # label rounds and the prediction round: same files, the same rounds in the manifest
    ddp_store, single_store = PseudoLabelStore(ddp / "store"), PseudoLabelStore(single / "store")
    rounds_written = [r["name"] for r in single_store.rounds()]
    assert rounds_written == [*rounds, "pred"]
    rounds = rounds_written
    assert [r["name"] for r in ddp_store.rounds()] == rounds
    assert ddp_store.current_round() == single_store.current_round()
    for name in rounds:
        got, want = _round_labels(ddp_store, name), _round_labels(single_store, name)
        assert sorted(got) == sorted(want) == ids, name
        for sid in ids:
            np.testing.assert_array_equal(got[sid], want[sid], err_msg=f"round {name}, {sid}")

    # every label written once across ranks; manifests and checkpoints by rank 0 only
    writes = read_writes(ddp)
    labels = [path for _, kind, path in writes if kind == "label"]
    assert len(labels) == len(set(labels)) == len(rounds) * N_IMAGES
    others = {(rank, kind) for rank, kind, _ in writes if kind != "label"}
    assert others == {(0, "manifest"), (0, "checkpoint")}
    # (the step in the checkpoint name differs: each rank makes 3 steps per epoch, 1 process 5)
    assert len(list((ddp / "ckpt").iterdir())) == len(list((single / "ckpt").iterdir())) == 2
    assert [p.name for p in (ddp / "logs" / "lightning_logs").iterdir()] == ["version_0"]
    assert (ddp / "logs" / "lightning_logs" / "version_0" / "metrics.csv").is_file()

    # no value is logged unsynchronised (Lightning warns about those under DDP)
    assert not [w for w in read_warnings(ddp) if "sync_dist" in w]

    # prediction: each sample once, split over the ranks
    results = [torch.load(ddp / f"results_rank{r}.pt", weights_only=False) for r in range(WORLD)]
    reference = torch.load(single / "results_rank0.pt", weights_only=False)
    assert reference["num_written"] == N_IMAGES
    assert sum(r["num_written"] for r in results) == N_IMAGES and all(r["num_written"] > 0 for r in results)

    # validation and test metrics synchronised over the ranks: equal to 1 process (sums of floats: 1e-6)
    val_keys = set(reference["val_keys"])
    assert set(reference["validate"][0]) == val_keys
    # testing scores every SOD metric (weighted F included) through the shared USODModule.test_step
    assert set(reference["test"][0]) == {f"test_{key}" for key in SOD_LOG_KEYS}
    for stage in ("validate", "test"):
        want = reference[stage][0]
        for rank, result in enumerate(results):
            got = result[stage][0]
            assert got.keys() == want.keys(), (stage, rank)
            for key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), (stage, rank, key)


# ---------------------------------------------------------------------------------------------- modules
def _detector(label_update: str, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        from usod.models.saliency_detector import SaliencyDetector

        return SaliencyDetector(
            backbone=TINY,
            channels=8,
            label_update=label_update,
            olr_warmup_epochs=0,
            spr_warmup_epochs=0,
            hflip=False,
            lr=0.0,
            lr_milestones=(),
            **kwargs,
        )

    return make


def _label_round_writer(store: PseudoLabelStore) -> Any:
    from usod.labels import LabelRoundWriter

    return LabelRoundWriter(store)


@pytest.mark.parametrize("label_update", ["olr", "spr"])
def test_saliency_detector_labels_metrics_and_files(tmp_path: Path, data: Path, label_update: str) -> None:
    check(
        tmp_path,
        data,
        make_model=_detector(label_update, par_iters=2),
        epochs=2,
        label_callback=_label_round_writer,
        export=lambda model: model.export_labels(),
        rounds=("stage2-epoch0", "stage2-epoch1"),
    )


def test_deepusps_mva_metrics_and_files(tmp_path: Path, data: Path) -> None:
    def make() -> Any:
        from usod.models.deepusps import DeepUSPSRefiner

        crf = {"n_iters": 2}
        return DeepUSPSRefiner(backbone=TINY, channels=8, target_threshold=0.5, crf=crf, hflip=False, lr=0.0)

    def mva_writer(store: PseudoLabelStore) -> Any:
        from usod.labels import LabelRoundWriter

        return LabelRoundWriter(store, "mva", at="end")

    check(
        tmp_path,
        data,
        make_model=make,
        epochs=2,
        label_callback=mva_writer,
        export=lambda model: model.export_mva(),
        rounds=("mva",),
    )


@pytest.fixture(scope="module")
def detector_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from usod.models.base import save_module
    from usod.models.saliency_detector import SaliencyDetector

    torch.manual_seed(0)
    module = SaliencyDetector(backbone=TINY, channels=8, label_update="none")
    return save_module(module, tmp_path_factory.mktemp("base") / "base.ckpt")


def test_adapter_transfer_spr_rounds_metrics_and_files(
    tmp_path: Path, data: Path, detector_ckpt: Path
) -> None:
    def make() -> Any:
        from usod.models.adapter_transfer import AdapterTransfer

        return AdapterTransfer(
            base=str(detector_ckpt),
            label_update="spr",
            spr_warmup_epochs=0,
            hflip=False,
            lr=0.0,
            lr_milestones=(),
        )

    # no pseudo labels: the first labels are the base model's CRF-refined predictions, made on each rank
    check(
        tmp_path,
        data,
        make_model=make,
        epochs=2,
        pseudo=False,
        label_callback=_label_round_writer,
        export=lambda model: model.export_labels(),
        rounds=("stage2-epoch0", "stage2-epoch1"),
    )


def test_cue_extractor_metrics_and_files(tmp_path: Path, data: Path) -> None:
    def make() -> Any:
        from usod.models.cue_extractor import CueExtractor

        return CueExtractor(backbone=TINY, head_channels=8, lr=0.0, lr_milestones=())

    check(tmp_path, data, make_model=make, pseudo=False, val_keys=("val_loss", *VAL_KEYS))


def test_sdg_fused_metrics_and_files(tmp_path: Path, data: Path) -> None:
    def make() -> Any:
        from tests.helpers.models import tiny_sdg

        return tiny_sdg(["a red square", "a blue star"], SIZE, max_caption_length=6, lr=0.0)

    check(tmp_path, data, make_model=make)
