"""``usod pipeline``: both stages, label rounds, held-out evaluation, report, resume and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.models import RESNET18 as TINY
from usod.cli import main
from usod.data.io import InvalidInputError
from usod.data.synth import write_dataset
from usod.labels import PseudoLabelStore

N, SIZE = 8, 64


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """``(train_root, heldout_root)``: two disjoint generated sets."""
    tmp = tmp_path_factory.mktemp("pipeline-data")
    train = write_dataset(tmp / "train", "rgb", N, seed=1, size=(SIZE, SIZE))
    heldout = write_dataset(tmp / "heldout", "rgb", 4, seed=2, size=(SIZE, SIZE))
    return train, heldout


def _config(path: Path, train: Path, heldout: Path, out: Path, **extra) -> Path:
    settings = {
        "out": str(out),
        "dataset": "folder",
        "root": str(train),
        "image_size": SIZE,
        "batch_size": 4,
        "num_workers": 0,
        "postprocess_workers": 0,
        "stage1_epochs": 1,
        "stage1": {"backbone": TINY},
        "stage2_epochs": 2,
        "stage2_image_size": 48,
        "stage2": {"label_update": "olr", "olr_warmup_epochs": 1},
        "eval": [{"name": "heldout", "dataset": "folder", "root": str(heldout)}],
        "accelerator": "cpu",
        **extra,
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def _small_run(train: Path) -> dict:
    """PipelineConfig settings of a quick run on ``train`` (add ``out`` and ``stage2_epochs``)."""
    return {
        "root": train,
        "image_size": 32,
        "batch_size": 4,
        "num_workers": 0,
        "postprocess_workers": 0,
        "stage1_epochs": 1,
        "stage1": {"backbone": TINY},
        "stage2": {"label_update": "none"},
        "accelerator": "cpu",
    }


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


@pytest.mark.slow
def test_pipeline_runs_both_stages_reports_and_resumes(data, tmp_path, capsys) -> None:
    train, heldout = data
    out = tmp_path / "run"
    config = _config(tmp_path / "pipeline.yaml", train, heldout, out)
    assert main(["pipeline", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "held-out sets" in printed and "heldout/stage2" in printed

    from usod.models.base import trained_image_size

    # stage 2 may train at another size: the labels are stored at the images' original size
    assert trained_image_size(out / "stage1.ckpt") == SIZE
    assert trained_image_size(out / "stage2.ckpt") == 48
    store = PseudoLabelStore(out / "labels")
    rounds = [r["name"] for r in store.rounds()]
    # stage-1 raw and CRF rounds, one rectified round per stage-2 epoch, then the detector's predictions
    assert rounds[:2] == ["stage1-raw", "stage1"]
    assert "stage2-pred" in rounds and any(r.startswith("stage2-epoch") for r in rounds)
    assert store.current_round() == "stage2-pred"
    assert len(store.finished_ids("stage2-pred")) == N

    summary = json.loads((out / "report" / "metrics.json").read_text())
    assert set(summary["metrics"]) == {"stage1-raw", "stage1", "stage2-pred"}
    assert set(summary["eval"]) == {"heldout/stage1", "heldout/stage2"}
    for scores in [*summary["metrics"].values(), *summary["eval"].values()]:
        assert 0.0 <= scores["mae"] <= 1.0 and 0.0 <= scores["max_f"] <= 1.0
    assert summary["eval"]["heldout/stage1"]["n"] == 4
    for plot in ("pr_curves.png", "pr_curves_heldout.png", "grid.png"):
        assert (out / "report" / plot).stat().st_size > 0

    # A rerun trains nothing and rewrites no label: every step is found finished.
    stamps = {
        p: _mtime(p) for p in [out / "stage1.ckpt", out / "stage2.ckpt", *store.round_dir("stage1").iterdir()]
    }
    assert main(["pipeline", "--config", str(config)]) == 0
    assert {p: _mtime(p) for p in stamps} == stamps

    # Losing the stage-2 checkpoint retrains stage 2 only.
    (out / "stage2.ckpt").unlink()
    assert main(["pipeline", "--config", str(config)]) == 0
    assert (out / "stage2.ckpt").is_file()
    assert _mtime(out / "stage1.ckpt") == stamps[out / "stage1.ckpt"]


def test_held_out_scores_equal_usod_evaluate_on_predicted_maps(data, tmp_path, capsys) -> None:
    """The report's held-out numbers are the ones `usod predict` + `usod evaluate` give."""
    from usod.data.datasets import get_dataset
    from usod.evaluation import evaluate_checkpoint
    from usod.pipelines.a2s import PipelineConfig, train_stage1

    train, heldout = data
    config = PipelineConfig(
        out=tmp_path / "run",
        root=train,
        image_size=SIZE,
        batch_size=4,
        num_workers=0,
        stage1_epochs=1,
        stage1={"backbone": TINY},
        accelerator="cpu",
    )
    ckpt = train_stage1(config)
    dataset = get_dataset("folder", root=heldout, with_masks=True)
    ours = evaluate_checkpoint(ckpt, dataset, image_size=SIZE, num_workers=0, progress=False)["scores"]

    preds = tmp_path / "preds"
    args = ["predict", "--ckpt", str(ckpt), "--input", str(heldout / "images"), "--output", str(preds)]
    assert main([*args, "--image-size", str(SIZE)]) == 0
    report = tmp_path / "eval.json"
    assert (
        main(["evaluate", "--pred", str(preds), "--gt", str(heldout / "masks"), "--json", str(report)]) == 0
    )
    (theirs,) = json.loads(report.read_text()).values()
    for key in ("mae", "max_f", "s_measure"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key


def test_a_resumed_pipeline_trains_stage_2_as_an_uninterrupted_one(data, tmp_path) -> None:
    """Each stage starts from its own seed: stopping after stage 1 and resuming gives the same stage 2."""
    import torch

    from usod.pipelines.a2s import PipelineConfig, run_pipeline, train_stage2

    train, _ = data
    base = _small_run(train)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_pipeline(PipelineConfig(out=whole, stage2_epochs=1, **base))
    run_pipeline(PipelineConfig(out=resumed, stage2_epochs=0, **base))  # stops after the stage-1 labels
    torch.manual_seed(12345)  # a new process resuming here starts with other random states
    train_stage2(PipelineConfig(out=resumed, stage2_epochs=1, **base))
    want = torch.load(whole / "stage2.ckpt", weights_only=True)["state_dict"]
    got = torch.load(resumed / "stage2.ckpt", weights_only=True)["state_dict"]
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


def test_config_errors_name_the_file(data, tmp_path, capsys) -> None:
    train, heldout = data
    bad = _config(tmp_path / "bad.yaml", train, heldout, tmp_path / "out", stage3_epochs=1)
    assert main(["pipeline", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "stage3_epochs" in err and "Traceback" not in err

    no_out = tmp_path / "no_out.yaml"
    no_out.write_text(yaml.safe_dump({"root": str(train)}))
    assert main(["pipeline", "--config", str(no_out)]) == 2
    assert "out" in capsys.readouterr().err

    bad_eval = _config(tmp_path / "eval.yaml", train, heldout, tmp_path / "out", eval=[{"root": "x"}])
    assert main(["pipeline", "--config", str(bad_eval)]) == 2
    assert "eval[0]" in capsys.readouterr().err

    assert main(["pipeline", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err

    # Mistakes that would surface only after training are found before any work.
    for extra, problem in [
        ({"stage1_epochs": -1}, "stage1_epochs must be an integer >= 1"),
        ({"stage2": {"label_update": "bogus"}}, "stage2.label_update must be one of ['none', 'olr', 'spr']"),
        ({"stage2": {"lr_typo": 0.1}}, "SaliencyDetector has no argument(s) ['lr_typo']"),
        ({"stage1": {"bogus_arg": 1}}, "CueExtractor has no argument(s) ['bogus_arg']"),
        ({"image_size": "sixty"}, "image_size must be a positive integer"),
        ({"eval": [{"dataset": "folder", "root": str(tmp_path / "nope")}]}, "eval[0].root"),
        ({"eval": [{"dataset": "nope", "root": str(heldout)}]}, "eval[0].dataset: unknown 'nope'"),
        ({"eval": [{"dataset": "folder", "root": str(train)}]}, "eval[0].root is the training root"),
    ]:
        config = _config(tmp_path / "early.yaml", train, heldout, tmp_path / "early", **extra)
        assert main(["pipeline", "--config", str(config)]) == 2, extra
        err = capsys.readouterr().err
        assert problem in err and "early.yaml" in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "early").exists()


@pytest.mark.parametrize("path", sorted(Path("configs/pipeline").glob("a2s_*.yaml")), ids=lambda p: p.name)
def test_shipped_pipeline_configs_load(path: Path, tmp_path: Path) -> None:
    from tests.helpers.layouts import on_generated_data
    from usod.commands.pipeline import load_settings

    config = load_settings(path, on_generated_data(yaml.safe_load(path.read_text()), tmp_path))
    assert config.stage1_epochs > 0 and config.stage2_epochs > 0
    assert config.stage1["backbone"]["weights"] == "bundled"


def test_shipped_deepusps_config_loads_as_deepusps() -> None:
    from usod.commands.pipeline import load_config
    from usod.pipelines import DeepUSPSConfig

    config = load_config(Path("configs/pipeline/deepusps_synth.yaml"))
    assert isinstance(config, DeepUSPSConfig) and config.methods == ("rbd", "mc", "dsr", "mr")
    assert config.refiner["backbone"]["weights"] == "bundled"


def test_pipeline_settings_are_overridden_on_the_command_line_and_printed(data, tmp_path, capsys) -> None:
    train, heldout = data
    config = _config(tmp_path / "run.yaml", train, heldout, tmp_path / "out")
    argv = [
        "pipeline",
        "--config",
        str(config),
        "--stage1_epochs",
        "3",
        "--stage2.lr",
        "0.25",
        "--print_config",
    ]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["stage1_epochs"] == 3 and printed["stage2"]["lr"] == 0.25
    assert printed["postprocess"]["crf"] is True  # defaults are printed too
    assert not (tmp_path / "out").exists()  # printing runs nothing
    for bad, problem in [
        (["--seed", "abc"], "seed must be an integer"),
        (["--accelerator", "tpu9"], "accelerator must be one of"),
        (["--devices", "-3"], "devices must be a count"),
        (["--precision", "99"], "precision must be one of"),
        (["--stage3_epochs", "1"], "stage3_epochs"),
    ]:
        assert main(["pipeline", "--config", str(config), *bad]) == 2, bad
        err = capsys.readouterr().err
        assert problem in err and "run.yaml" in err and "Traceback" not in err, (bad, err)
    assert not (tmp_path / "out").exists()


def test_report_plots_leave_the_matplotlib_backend_alone(tmp_path) -> None:
    """A notebook's inline backend must survive run_pipeline's report (it used to be switched to Agg)."""
    import matplotlib
    import numpy as np

    from usod.evaluation import plot_curves

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        curves = {"precision": np.linspace(1, 0, 256), "recall": np.linspace(0, 1, 256), "f": np.zeros(256)}
        plot_curves({"a": {"curves": curves}}, tmp_path / "curves.png")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "curves.png").stat().st_size > 0
    finally:
        matplotlib.use(before)


@pytest.mark.parametrize(
    "accelerator,devices,local_rank,expected",
    [
        ("gpu", 4, "1", "cuda:1"),
        ("gpu", [2, 3], "1", "cuda:3"),
        ("gpu", "2,3", "0", "cuda:2"),
        ("auto", 1, "0", "cuda:0"),
        ("cpu", 2, "1", "cpu"),
    ],
)
def test_held_out_evaluation_runs_on_the_ranks_training_device(
    monkeypatch, accelerator, devices, local_rank, expected
) -> None:
    from usod.evaluation import eval_device

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert eval_device(accelerator, devices) == expected


def test_resume_refuses_changed_settings_and_redoes_what_a_retrained_stage_feeds(data, tmp_path) -> None:
    import shutil

    from usod.data.io import InvalidInputError
    from usod.pipelines import PipelineConfig, run_pipeline

    train, heldout = data
    base = _small_run(train)
    out = tmp_path / "run"
    run_pipeline(PipelineConfig(out=out, stage2_epochs=0, **base))
    assert json.loads((out / "pipeline.json").read_text())["settings"]["root"] == str(train.resolve())
    # A finished step's setting changed: refused before any work, naming it.
    with pytest.raises(InvalidInputError, match=r"other settings \(root: .*; image_size: 32 -> 48\)"):
        run_pipeline(PipelineConfig(out=out, stage2_epochs=0, **{**base, "root": heldout, "image_size": 48}))
    # A later, unfinished step may change: stage 2 is added to a stage-1-only run.
    run_pipeline(PipelineConfig(out=out, stage2_epochs=1, **base))
    store = PseudoLabelStore(out / "labels")
    stage1_labels = {p: _mtime(p) for p in store.round_dir("stage1").iterdir()}

    # A moved run folder resumes without relabelling (rounds know their checkpoint by content, not path).
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    moved_store = PseudoLabelStore(moved / "labels")
    before = {p.name: _mtime(p) for p in moved_store.round_dir("stage1-raw").iterdir()}
    # ... and a round whose labels are all on disk but which was never marked complete gets completed.
    manifest = json.loads((moved / "labels" / "manifest.json").read_text())
    next(r for r in manifest["rounds"] if r["name"] == "stage1-raw")["complete"] = False
    (moved / "labels" / "manifest.json").write_text(json.dumps(manifest))
    run_pipeline(PipelineConfig(out=moved, stage2_epochs=1, **base))
    assert {p.name: _mtime(p) for p in moved_store.round_dir("stage1-raw").iterdir()} == before
    assert next(r for r in moved_store.rounds() if r["name"] == "stage1-raw")["complete"]

    # Data inside the run folder (as usod demo writes it) is recorded relative to it: the folder can move.
    inside = tmp_path / "self-contained"
    shutil.copytree(train, inside / "data")
    run_pipeline(PipelineConfig(out=inside, stage2_epochs=0, **{**base, "root": inside / "data"}))
    assert json.loads((inside / "pipeline.json").read_text())["settings"]["root"] == "<out>/data"
    inside.rename(tmp_path / "moved-again")
    moved_again = tmp_path / "moved-again"
    run_pipeline(PipelineConfig(out=moved_again, stage2_epochs=0, **{**base, "root": moved_again / "data"}))

    # Retraining stage 1 rewrites its labels and retires the stage-2 checkpoint trained on the old ones.
    (out / "stage1.ckpt").unlink()
    run_pipeline(PipelineConfig(out=out, stage2_epochs=1, **base))
    assert all(_mtime(p) > stamp for p, stamp in stage1_labels.items())
    assert [p.name.split("-")[0] for p in (out / "retired").glob("*.ckpt")] == ["stage2"]
    assert (out / "stage2.ckpt").is_file() and any((out / "labels" / "retired").iterdir())


def test_skip_invalid_leaves_broken_eval_samples_out(tmp_path) -> None:
    import shutil

    from usod.pipelines import PipelineConfig, run_pipeline

    train = write_dataset(tmp_path / "train", "rgb", 4, seed=1, size=(32, 32))
    heldout = tmp_path / "heldout"
    shutil.copytree(write_dataset(tmp_path / "h", "rgb", 3, seed=2, size=(32, 32)), heldout)
    sorted((heldout / "masks").iterdir())[0].unlink()  # an eval image without its mask
    settings = {
        **_small_run(train),
        "stage2_epochs": 0,
        "eval": [{"name": "h", "dataset": "folder", "root": str(heldout)}],
    }
    with pytest.raises(ValueError, match=r"eval\[0\]: .*skip_invalid: true` in a pipeline config"):
        PipelineConfig(out=tmp_path / "strict", **settings)  # found before training
    assert not (tmp_path / "strict").exists()
    summary = run_pipeline(PipelineConfig(out=tmp_path / "lenient", skip_invalid=True, **settings))
    assert summary["eval"]["h/stage1"]["n"] == 2


def test_both_drivers_train_on_images_without_masks(tmp_path) -> None:
    """Unsupervised: a folder of images alone is enough (nothing is scored, nothing fails)."""
    import shutil

    from usod.pipelines import DeepUSPSConfig, PipelineConfig, run_deepusps, run_pipeline

    root = write_dataset(tmp_path / "data", "rgb", 4, size=(32, 32))
    shutil.rmtree(root / "masks")
    common = {"root": root, "image_size": 32, "batch_size": 2, "num_workers": 0, "accelerator": "cpu"}
    summary = run_pipeline(
        PipelineConfig(
            out=tmp_path / "a2s",
            postprocess_workers=0,
            stage1_epochs=1,
            stage1={"backbone": TINY},
            stage2_epochs=1,
            stage2={"label_update": "olr", "olr_warmup_epochs": 0},
            **common,
        )
    )
    assert (tmp_path / "a2s" / "stage2.ckpt").is_file() and summary["metrics"] == {}
    assert len(PseudoLabelStore(tmp_path / "a2s" / "labels").finished_ids("stage2-pred")) == 4
    config = DeepUSPSConfig(
        out=tmp_path / "deepusps",
        methods=("rbd",),
        handcrafted_workers=0,
        rounds=0,
        epochs=1,
        fusion_epochs=1,
        refiner={"backbone": TINY, "channels": 8, "crf": {"n_iters": 1}},
        **common,
    )
    run_deepusps(config)
    assert config.fused_ckpt.is_file()


def test_a_held_out_split_of_the_training_root_must_share_no_image(tmp_path) -> None:
    from tests.helpers.layouts import write_msra_b
    from usod.commands.pipeline import load_settings

    root = tmp_path / "MSRA-B"
    write_msra_b(root)
    base = {"out": str(tmp_path / "out"), "dataset": "msra-b", "root": str(root), "split": "train"}
    ok = load_settings(
        tmp_path / "p.yaml", {**base, "eval": [{"dataset": "msra-b", "root": str(root), "split": "test"}]}
    )
    assert ok.eval[0]["split"] == "test"
    overlap = {**base, "eval": [{"dataset": "msra-b", "root": str(root), "split": "trainval"}]}
    with pytest.raises(InvalidInputError, match="shares 2 images with the training split 'train'"):
        load_settings(tmp_path / "p.yaml", overlap)
