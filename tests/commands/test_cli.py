"""The ``usod`` command line: dispatch, help, user errors, and the Lightning CLI on tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from usod.cli import COMMANDS, main
from usod.data.synth import write_dataset

REPO = Path(__file__).resolve().parents[2]


def test_every_command_module_has_the_interface() -> None:
    import importlib

    for module_name, _ in COMMANDS.values():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), module_name


def test_help_and_unknown_command(capsys) -> None:
    assert main([]) == 0
    assert "evaluate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--help"])
    assert exc.value.code == 0
    assert "--gt" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["no-such-command"])


def test_list_datasets_and_models(capsys) -> None:
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("duts", "nju2k", "vt5000", "davis", "orssd", "folder"):
        assert name in out
    assert "or images/ + masks" not in out
    assert main(["list", "datasets", "--layouts"]) == 0
    layouts = capsys.readouterr().out.split("\necssd")[0]  # the duts rows
    assert "DUTS-TR/" in layouts and "or images/ + masks|gt|GT|labels/" in layouts
    assert main(["list", "models"]) == 0
    assert "CueExtractor" in capsys.readouterr().out


def test_synth_then_inspect(tmp_path, capsys) -> None:
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "d"),
                "--modality",
                "rgb",
                "--n",
                "5",
                "--size",
                "32",
                "32",
            ]
        )
        == 0
    )
    assert main(["data", "inspect", "--name", "folder", "--root", str(tmp_path / "d")]) == 0
    assert "samples: 5" in capsys.readouterr().out


def test_user_errors_are_one_line_not_a_traceback(tmp_path, capsys) -> None:
    rc = main(
        [
            "predict",
            "--ckpt",
            str(tmp_path / "missing.ckpt"),
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "missing.ckpt" in err and "Traceback" not in err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    rc = main(["predict", "--ckpt", str(bad), "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert rc == 2 and "bad.ckpt" in capsys.readouterr().err


def _tiny_experiment(tmp_path: Path) -> Path:
    config = yaml.safe_load((REPO / "configs/experiment/a2s_stage1_synth.yaml").read_text())
    data = write_dataset(tmp_path / "data", "rgb", 6, size=(48, 48))
    config["model"]["init_args"]["backbone"] = {"name": "resnet18", "weights": "none"}
    config["data"]["init_args"].update(root=str(data), image_size=32, batch_size=3, num_workers=0)
    config["trainer"].update(max_epochs=1, default_root_dir=str(tmp_path / "runs"), enable_progress_bar=False)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_lightning_cli_fits_and_predict_command_writes_maps(tmp_path) -> None:
    config = _tiny_experiment(tmp_path)
    main(["fit", "--config", str(config)])
    ckpts = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert ckpts, "fit must leave a checkpoint"
    out = tmp_path / "pred"
    images = tmp_path / "data" / "images"
    assert (
        main(
            [
                "predict",
                "--ckpt",
                str(ckpts[-1]),
                "--input",
                str(images),
                "--output",
                str(out),
                "--num-workers",
                "0",
                "--overlay",
            ]
        )
        == 0
    )
    from PIL import Image

    for image_path in images.glob("*.jpg"):
        pred = Image.open(out / f"{image_path.stem}.png")
        assert pred.size == Image.open(image_path).size and pred.mode == "L"
        assert (out / "overlay" / f"{image_path.stem}.jpg").is_file()


def test_unreadable_images_are_named_in_one_line_and_predict_writes_the_rest(tmp_path, capsys) -> None:
    config = _tiny_experiment(tmp_path)
    images = sorted((tmp_path / "data" / "images").glob("*.jpg"))
    broken = images[1]
    broken.write_bytes(b"not an image")
    # Training: the worker's error reaches the user as one line naming the file (not a worker traceback).
    assert main(["fit", "--config", str(config), "--data.init_args.num_workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: not a readable image" in err and "Traceback" not in err
    # Prediction: every other map is written, the broken file is reported, the exit status says so.
    images[0].write_bytes(b"")
    from usod.models.base import save_module
    from usod.models.cue_extractor import CueExtractor

    ckpt = save_module(CueExtractor(backbone={"name": "resnet18", "weights": "none"}), tmp_path / "m.ckpt")
    out = tmp_path / "pred"
    argv = ["predict", "--ckpt", str(ckpt), "--input", str(broken.parent), "--output", str(out)]
    assert main([*argv, "--num-workers", "1", "--batch-size", "2", "--image-size", "32"]) == 1
    captured = capsys.readouterr()
    assert "skipped 2 unreadable input(s)" in captured.err
    assert f"{broken}: not a readable image" in captured.err and "file is empty" in captured.err
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(p.stem for p in images[2:])


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp"])
def test_trainer_configs_parse(name: str) -> None:
    config = yaml.safe_load((REPO / f"configs/trainer/{name}.yaml").read_text())
    import inspect

    import pytorch_lightning as pl

    known = set(inspect.signature(pl.Trainer.__init__).parameters)
    assert {key.rstrip("+") for key in config["trainer"]} <= known  # `callbacks+`: appended


def test_every_registered_model_has_a_config() -> None:
    from usod.models.registry import MODELS

    for name, cls in MODELS.items():
        config = yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())
        assert config["model"]["class_path"] == f"{cls.__module__.rsplit('.', 1)[0]}.{cls.__name__}"


def test_checkpoint_of_a_module_built_in_python_validates_through_the_cli(tmp_path) -> None:
    """Modules built in Python (usod pipeline, notebooks): ``--ckpt_path`` must accept their checkpoints."""
    import pytorch_lightning as pl

    from usod.models.cue_extractor import CueExtractor

    config = _tiny_experiment(tmp_path)
    model = CueExtractor(backbone={"name": "resnet18", "weights": "none"})
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    ckpt = tmp_path / "python.ckpt"
    trainer.save_checkpoint(ckpt, weights_only=True)
    main(["validate", "--config", str(config), "--ckpt_path", str(ckpt)])


def test_demo_runs_both_stages_and_writes_the_report(tmp_path) -> None:
    """The README's main job, at tiny settings: both checkpoints, the label store and the report."""
    import json

    out = tmp_path / "demo"
    args = ["--n", "12", "--epochs", "1", "--stage2-epochs", "1", "--image-size", "48", "--workers", "0"]
    assert main(["demo", "--out", str(out), *args]) == 0
    files = ("stage1.ckpt", "stage2.ckpt", "report/grid.png", "report/pr_curves.png", "labels/manifest.json")
    for name in files:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "report" / "metrics.json").read_text())["metrics"]
    assert {"stage1-raw", "stage1", "stage2-pred"} <= set(metrics)
    assert all(0.0 <= m["mae"] <= 1.0 for m in metrics.values())


def test_map_commands_refuse_to_write_over_their_inputs(tmp_path, capsys) -> None:
    images = write_dataset(tmp_path / "d", "rgb", 2, size=(32, 32)) / "images"
    before = {p: p.read_bytes() for p in images.iterdir()}
    for out in (images, images / "maps"):
        assert main(["handcrafted", "--method", "rbd", "--input", str(images), "--output", str(out)]) == 2
        assert "output folder is the input folder" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in images.iterdir()} == before  # nothing written, nothing replaced


def test_predict_on_a_truncated_video_writes_what_decodes_and_says_so(tmp_path, capsys) -> None:
    import cv2
    import numpy as np

    from usod.models.base import save_module
    from usod.models.cue_extractor import CueExtractor

    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 32))
    for i in range(6):
        writer.write(np.full((32, 32, 3), 40 * i, np.uint8))
    writer.release()
    truncated = tmp_path / "t.avi"
    truncated.write_bytes(video.read_bytes()[: int(video.stat().st_size * 0.9)])
    ckpt = save_module(CueExtractor(backbone={"name": "resnet18", "weights": "none"}), tmp_path / "m.ckpt")
    argv = ["predict", "--ckpt", str(ckpt), "--output", str(tmp_path / "out"), "--image-size", "32"]
    assert main([*argv, "--input", str(video)]) == 0
    assert len(list((tmp_path / "out").glob("frame_*.png"))) == 6
    assert main([*argv[:4], str(tmp_path / "out_t"), *argv[5:], "--input", str(truncated)]) == 1
    err = capsys.readouterr().err
    assert f"{truncated}: " in err and "of its 6 frames decoded (a truncated or damaged video)" in err
    not_video = tmp_path / "empty.mp4"
    not_video.write_bytes(b"")
    assert main([*argv, "--input", str(not_video)]) == 2
    assert "empty.mp4" in capsys.readouterr().err
    empty_ckpt = tmp_path / "empty.ckpt"
    empty_ckpt.write_bytes(b"")
    assert main(["predict", "--ckpt", str(empty_ckpt), "--input", str(video), "--output", str(tmp_path)]) == 2
    assert "empty.ckpt: not a readable checkpoint (the file is empty)" in capsys.readouterr().err


def test_demo_rewrites_interrupted_data_and_refuses_other_settings(tmp_path, capsys, monkeypatch) -> None:
    import json

    import usod.pipelines.a2s

    class Stop(Exception):
        pass

    def stop(config):
        raise Stop(config.root)

    monkeypatch.setattr(usod.pipelines.a2s, "run_pipeline", stop)
    data = tmp_path / "demo" / "data" / "rgb"
    write_dataset(data, "rgb", 3, size=(32, 32))
    record = json.loads((data / "synth.json").read_text())
    (data / "synth.json").write_text(json.dumps({**record, "complete": False}))  # killed while writing
    argv = ["demo", "--out", str(tmp_path / "demo"), "--n", "4", "--image-size", "32"]
    with pytest.raises(Stop):
        main(argv)
    assert json.loads((data / "synth.json").read_text())["complete"]
    assert len(list((data / "images").iterdir())) == 4
    assert main([*argv[:-1], "48"]) == 2
    assert "other data settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["label", "--ckpt", "c", "--out", "o", "--round", "my round"], "invalid round name 'my round'"),
        (["label", "--ckpt", "c", "--out", "o", "--dataset", "notaset"], "unknown dataset 'notaset'"),
        (["label", "--ckpt", "c", "--out", "o", "--image-size", "0"], "--image-size: must be >= 1, got 0"),
        (["predict", "--ckpt", "c", "--input", "i", "--output", "o", "--batch-size", "0"], "must be >= 1"),
        (["demo", "--n", "x"], "'x' is not an integer"),
        (["evaluate", "--gt", "g", "--pred", "p", "--workers", "-1"], "must be >= 0, got -1"),
    ],
)
def test_bad_option_values_are_usage_errors(argv, problem, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and problem in capsys.readouterr().err


def test_evaluate_checks_its_output_paths_before_scoring(tmp_path, capsys) -> None:
    masks = write_dataset(tmp_path / "d", "rgb", 2, size=(32, 32)) / "masks"
    base = ["evaluate", "--gt", str(masks), "--pred", str(masks)]
    assert main([*base, "--plot", str(tmp_path / "curves.xyz")]) == 2
    assert "unsupported plot format" in capsys.readouterr().err
    assert main([*base, "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "order", [("trainer/gpu.yaml", "logger/wandb.yaml"), ("logger/wandb.yaml", "trainer/gpu.yaml")]
)
def test_combined_configs_keep_every_callback(order, capsys, monkeypatch) -> None:
    """A trainer and a logger config after an experiment: both add their callbacks, in either order."""
    monkeypatch.chdir(REPO)
    configs = ["configs/experiment/a2s_stage1_synth.yaml", *(f"configs/{name}" for name in order)]
    argv = ["fit", *(item for path in configs for item in ("--config", path)), "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert (
        "usod.callbacks.PerformanceOptions" in printed and "usod.labels.quality.PseudoLabelQuality" in printed
    )
