"""The multi-step drivers on 2 DDP ranks against 1 process: ``usod pipeline`` (also through the CLI with
Lightning's own launcher) and the DeepUSPS driver.

The ranks run every step (pipeline: stage 1, labels, CRF, stage 2, stage-2 predictions; DeepUSPS: handcrafted
maps, refinement rounds, fusion, predictions) and scores its share of the images for the report (the metric
states reduced: ``n`` would double if both ranks scored everything); rank 0 alone writes the report.
As in ``test_modules_ddp``, results are made independent of how samples are split over ranks: learning rate
0, batch size 1, no flips, one thread per process, 5 images (an uneven split on purpose).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml

from tests.helpers.models import TINY
from usod.data.synth import write_dataset
from usod.labels import PseudoLabelStore

from ._harness import read_warnings, read_writes, run_ddp, run_single

pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*in eval mode at the start of training.*"),
]

N_IMAGES = 5
REPO = Path(__file__).resolve().parents[2]


def settings(data: Path, out: Path) -> dict[str, Any]:
    return {
        "out": str(out),
        "dataset": "folder",
        "root": str(data),
        "image_size": 64,
        "batch_size": 1,
        "num_workers": 0,
        "postprocess_workers": 0,
        "stage1_epochs": 1,
        "stage1": {"backbone": TINY, "lr": 0.0},
        "stage2_epochs": 2,
        "stage2_image_size": 48,
        "stage2": {
            "backbone": TINY,
            "channels": 8,
            "label_update": "olr",
            "olr_warmup_epochs": 0,
            "lr": 0.0,
            "lr_milestones": [],
            "hflip": False,
        },
        "eval": [{"name": "heldout", "dataset": "folder", "root": str(data.parent / "heldout")}],
        "accelerator": "cpu",
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training set; a held-out set lies beside it in ``heldout/``."""
    folder = tmp_path_factory.mktemp("pipeline-ddp")
    write_dataset(folder / "heldout", "rgb", 3, seed=7, size=(40, 48))
    return write_dataset(folder / "rgb", "rgb", N_IMAGES, size=(40, 48))


def scenario(rank: int, world: int, out: Path, *, data: Path) -> None:
    from usod.pipelines import PipelineConfig, run_pipeline

    config = PipelineConfig(
        **settings(data, out / "run"), devices=world, strategy="ddp" if world > 1 else "auto"
    )
    summary = run_pipeline(config)
    (out / f"summary_rank{rank}.json").write_text(json.dumps(summary))


def _labels(store: PseudoLabelStore, name: str) -> dict[str, np.ndarray]:
    return {sid: store.read(sid, name) for sid in sorted(store.finished_ids(name))}


def compare_with_one_process(
    ddp: Path, single: Path, data: Path, rounds: list[str], shared_round: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checks of a driver's 2-rank run against its 1-process run; returns both summaries (rank 0's, 1's).

    The same rounds, complete, in order; equal labels (not in the ``*-pred`` rounds: prediction runs in eval
    mode on BatchNorm running statistics, which the lr-0 training forwards still update, in another order on
    2 ranks than on 1); every label written once; ``shared_round``'s work split 3 + 2 over the ranks;
    manifests and checkpoints by rank 0; rank 1 returns no summary.
    """
    ids = [p.stem for p in sorted((data / "images").iterdir())]
    got_store, want_store = (
        PseudoLabelStore(ddp / "run" / "labels"),
        PseudoLabelStore(single / "run" / "labels"),
    )
    assert [r["name"] for r in want_store.rounds()] == rounds
    assert [r["name"] for r in got_store.rounds()] == rounds
    assert all(r["complete"] for r in got_store.rounds())
    for name in rounds:
        got, want = _labels(got_store, name), _labels(want_store, name)
        assert sorted(got) == sorted(want) == ids, name
        if not name.endswith("-pred"):
            for sid in ids:
                np.testing.assert_array_equal(got[sid], want[sid], err_msg=f"round {name}, {sid}")

    writes = read_writes(ddp)
    labels = [path for _, kind, path in writes if kind == "label"]
    assert len(labels) == len(set(labels)) == len(rounds) * N_IMAGES
    shared = str((ddp / "run" / "labels" / "rounds" / shared_round).resolve())
    shares = Counter(rank for rank, kind, path in writes if kind == "label" and path.startswith(shared + "/"))
    assert shares == {0: 3, 1: 2}
    assert {(rank, kind) for rank, kind, _ in writes if kind != "label"} == {
        (0, "manifest"),
        (0, "checkpoint"),
    }
    assert json.loads((ddp / "summary_rank1.json").read_text()) is None
    got = json.loads((ddp / "summary_rank0.json").read_text())
    return got, json.loads((single / "summary_rank0.json").read_text())


@pytest.mark.slow
def test_pipeline_on_two_ranks_equals_one_process(tmp_path: Path, data: Path) -> None:
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run_ddp(scenario, ddp, data=data)
    run_single(scenario, single, data=data)
    rounds = ["stage1-raw", "stage1", "stage2-epoch0", "stage2-epoch1", "stage2-pred"]
    # the CRF is the work shared out over the ranks
    got, want = compare_with_one_process(ddp, single, data, rounds, shared_round="stage1")
    got_store, want_store = (
        PseudoLabelStore(ddp / "run" / "labels"),
        PseudoLabelStore(single / "run" / "labels"),
    )
    assert got_store.current_round() == want_store.current_round() == "stage2-pred"
    assert not [w for w in read_warnings(ddp) if "sync_dist" in w]

    # rank 0 reports (rank 1 returns None); the scores that do not involve stage 2's running statistics
    # equal the 1-process report
    assert set(got["metrics"]) == set(want["metrics"]) and set(got["eval"]) == set(want["eval"])
    for section, name in (("metrics", "stage1-raw"), ("metrics", "stage1"), ("eval", "heldout/stage1")):
        for key, value in want[section][name].items():
            assert got[section][name][key] == pytest.approx(value, abs=1e-9), (section, name, key)
    assert json.loads((ddp / "run" / "report" / "metrics.json").read_text())["metrics"] == got["metrics"]


@pytest.mark.slow
def test_cli_with_two_devices_starts_the_second_process_itself(tmp_path: Path, data: Path) -> None:
    """``usod pipeline --devices 2``: Lightning restarts the command as rank 1, which takes the same steps."""
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(settings(data, tmp_path / "run")))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("MASTER_PORT", None)
    command = [sys.executable, "-m", "usod.cli", "pipeline", "--config", str(config)]
    result = subprocess.run(
        [*command, "--devices", "2", "--strategy", "ddp"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("held-out sets") == 1  # one report, printed by rank 0
    store = PseudoLabelStore(tmp_path / "run" / "labels")
    assert all(r["complete"] for r in store.rounds()) and store.current_round() == "stage2-pred"
    assert len(store.finished_ids("stage2-pred")) == N_IMAGES
    assert torch.load(tmp_path / "run" / "stage2.ckpt", weights_only=True)["state_dict"]

    # resuming with everything finished starts no process group (no trainer) and only reports again
    stamp = (tmp_path / "run" / "stage2.ckpt").stat().st_mtime_ns
    result = subprocess.run(
        [*command, "--devices", "2", "--strategy", "ddp"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("held-out sets") == 1
    assert (tmp_path / "run" / "stage2.ckpt").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_label_cli_with_two_devices_writes_every_label_once(tmp_path: Path, data: Path) -> None:
    """``usod label --devices 2``: work shared out, one report line, the same labels as 1 process."""
    from usod.models.base import save_module
    from usod.models.cue_extractor import CueExtractor

    torch.manual_seed(0)
    ckpt = save_module(CueExtractor(backbone=TINY), tmp_path / "cue.ckpt")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    base = [sys.executable, "-m", "usod.cli", "label", "--ckpt", str(ckpt), "--dataset", "folder"]
    base += ["--root", str(data), "--image-size", "64", "--batch-size", "1", "--workers", "0"]
    base += ["--accelerator", "cpu"]
    outputs = {}
    for devices in (2, 1):
        store = tmp_path / f"labels{devices}"
        command = [*base, "--out", str(store), "--devices", str(devices)]
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[devices] = result.stdout
    assert outputs[2].count("predicted into") == 1  # rank 0 reports
    assert f"{N_IMAGES} samples: {N_IMAGES} predicted" in outputs[2]
    got, want = PseudoLabelStore(tmp_path / "labels2"), PseudoLabelStore(tmp_path / "labels1")
    assert got.current_round() == want.current_round() == "stage1"
    for name in ("stage1-raw", "stage1"):
        labels, expected = _labels(got, name), _labels(want, name)
        assert sorted(labels) == sorted(expected) and len(labels) == N_IMAGES
        for sid, label in labels.items():
            np.testing.assert_array_equal(label, expected[sid], err_msg=f"{name}, {sid}")


def deepusps_scenario(rank: int, world: int, out: Path, *, data: Path) -> None:
    from usod.pipelines import DeepUSPSConfig, run_deepusps

    config = DeepUSPSConfig(
        out=out / "run",
        root=data,
        methods=("rbd",),
        handcrafted_workers=0,
        rounds=1,
        epochs=1,
        fusion_epochs=1,
        image_size=64,
        batch_size=1,
        num_workers=0,
        refiner={"backbone": TINY, "channels": 8, "crf": {"n_iters": 2}, "lr": 0.0, "hflip": False},
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
    )
    summary = run_deepusps(config)
    (out / f"summary_rank{rank}.json").write_text(json.dumps(summary))


@pytest.mark.slow
def test_deepusps_on_two_ranks_equals_one_process(tmp_path: Path, data: Path) -> None:
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run_ddp(deepusps_scenario, ddp, data=data)
    run_single(deepusps_scenario, single, data=data)
    rounds = ["hc-rbd", "rbd-r0-mva", "rbd-r0-pred", "rbd-r1-mva", "rbd-r1-pred", "fused-pred"]
    # the handcrafted maps are the work shared out over the ranks
    got, want = compare_with_one_process(ddp, single, data, rounds, shared_round="hc-rbd")
    assert set(got["metrics"]) == set(want["metrics"]) == set(rounds)
    for name in ("hc-rbd", "rbd-r0-mva", "rbd-r1-mva"):
        for key, value in want["metrics"][name].items():
            assert got["metrics"][name][key] == pytest.approx(value, abs=1e-9), (name, key)
