"""The DeepUSPS pipeline: a tiny run end to end, its wandb run, resume, a lost round redone, predict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers.models import RESNET18 as BACKBONE
from usod.cli import main
from usod.data.synth import write_dataset
from usod.labels import PseudoLabelStore
from usod.models.base import load_module
from usod.models.deepusps import DeepUSPSRefiner
from usod.pipelines import DeepUSPSConfig, run_deepusps
from usod.pipelines.deepusps import mva_round, round_names

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*self.trainer` reference is not registered.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("deepusps") / "data", "rgb", 6, size=(48, 56))


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_and_resume(synth: Path, tmp_path: Path, monkeypatch) -> None:
    import wandb

    wandb.teardown()  # wandb reads the environment once per process
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = DeepUSPSConfig(
        out=tmp_path / "run",
        root=synth,
        methods=("rbd", "mr"),
        handcrafted_workers=0,
        rounds=1,
        epochs=1,
        fusion_epochs=1,
        image_size=32,
        batch_size=3,
        num_workers=0,
        refiner={"backbone": BACKBONE, "channels": 16, "crf": {"n_iters": 2}},
        accelerator="cpu",
        logger={"type": "wandb", "offline": True},
        log_every_n_steps=1,
    )
    summary = run_deepusps(config)
    store = PseudoLabelStore(config.store_root)
    complete = {r["name"] for r in store.rounds() if r["complete"]}
    assert set(round_names(config)) <= complete
    ids = {p.stem for p in (synth / "images").iterdir()}
    for name in round_names(config):
        assert store.finished_ids(name) == ids
    label = store.read("synth_00000", mva_round("rbd", 1))
    assert label.shape == (48, 56)  # original size
    for method in config.methods:
        for k in range(2):
            assert config.refine_ckpt(method, k).is_file()
    # The self-supervision round trained on the previous moving averages with a doubled learning rate.
    r1 = load_module(config.refine_ckpt("mr", 1))
    assert r1.hparams.target_threshold == 0.5 and r1.hparams.lr == pytest.approx(2e-3)
    fused = load_module(config.fused_ckpt)
    assert isinstance(fused, DeepUSPSRefiner) and fused.hparams.num_targets == 2
    report = json.loads((config.out / "report.json").read_text())
    assert set(report["metrics"]) == set(round_names(config))
    assert set(summary["metrics"]["fused-pred"]) >= {"mae", "max_f"}
    assert "rbd-r1" in summary["timings_s"] and "fusion" in summary["timings_s"]
    # One offline wandb run: every network's loss, the MVA quality per epoch and the report's round scores.
    from tests.helpers.wandb_offline import offline_runs

    (run,) = offline_runs(config.out)
    assert run.name == "deepusps-folder-data" and run.group == "folder-data"
    keys = run.keys()
    assert {"rbd-r0-train_loss", "mr-r1-train_loss", "fusion-train_loss", "rbd-r0-label_max_f"} <= keys
    assert run.values("labels/fused-pred/mae") == [pytest.approx(summary["metrics"]["fused-pred"]["mae"])]
    config.logger = None  # the resumed runs below log to CSV only
    wandb.teardown()

    # Resume: nothing is trained or computed again.
    stamps = {p: os.stat(p).st_mtime_ns for p in config.out.rglob("*.ckpt")}
    hc = store.label_path("hc-rbd", "synth_00000")
    hc_stamp = os.stat(hc).st_mtime_ns
    run_deepusps(config)
    assert {p: os.stat(p).st_mtime_ns for p in config.out.rglob("*.ckpt")} == stamps
    assert os.stat(hc).st_mtime_ns == hc_stamp

    # A lost round is redone: delete the last MVA round's checkpoint, only that round is retrained.
    config.refine_ckpt("mr", 1).unlink()
    run_deepusps(config)
    assert config.refine_ckpt("mr", 1).is_file()
    assert os.stat(config.refine_ckpt("rbd", 1)).st_mtime_ns == stamps[config.refine_ckpt("rbd", 1)]

    # The fused checkpoint works with `usod predict`.
    out = tmp_path / "pred"
    args = [
        "predict",
        "--ckpt",
        str(config.fused_ckpt),
        "--input",
        str(synth / "images"),
        "--output",
        str(out),
    ]
    assert main([*args, "--num-workers", "0", "--device", "cpu"]) == 0
    assert len(list(out.glob("*.png"))) == len(ids)


def test_usod_pipeline_runs_deepusps_from_its_yaml(synth: Path, tmp_path: Path, capsys) -> None:
    """``method: deepusps`` picks the DeepUSPS pipeline; command-line values override the shipped file."""
    out = tmp_path / "run"
    refiner = "{backbone: {name: test_resnet, weights: none}, channels: 8, crf: {n_iters: 1}}"
    tiny = {
        "methods": "[rbd]",
        "rounds": "0",
        "epochs": "1",
        "fusion_epochs": "1",
        "image_size": "32",
        "batch_size": "3",
        "num_workers": "0",
        "handcrafted_workers": "0",
        "refiner": refiner,
    }
    argv = [
        "pipeline",
        "--config",
        "configs/pipeline/deepusps_synth.yaml",
        "--out",
        str(out),
        "--root",
        str(synth),
    ]
    argv += [item for key, value in tiny.items() for item in (f"--{key}", value)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["metrics"]) == {"hc-rbd", "rbd-r0-mva", "rbd-r0-pred", "fused-pred"}
    assert "fused-pred" in capsys.readouterr().out  # the summary table
    assert (out / "fused.ckpt").is_file()
