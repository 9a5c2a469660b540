"""Malicious and mismatched checkpoints: no code runs from a file; every command refuses in one line.

A checkpoint that ``torch.load(weights_only=True)`` accepts is plain data, but usod used to import the class
it named and call it with its hyper-parameters. Each case below writes such a file whose "class" would
create a marker file if it were ever called, runs every entry point that reads checkpoints, and checks that
the marker never appears, that the error names the file, and that the command exits 2 without a traceback.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.models import TINY
from usod.cli import main
from usod.data.io import InvalidInputError
from usod.data.synth import write_dataset
from usod.models.base import CLASS_KEY, load_module, save_module
from usod.models.cue_extractor import CueExtractor
from usod.models.registry import MODEL_PATHS, UnknownModelError, model_class, register_model

REPO = Path(__file__).resolve().parents[2]


def _shell(marker: Path) -> dict[str, Any]:
    return {"args": f"touch {marker}", "shell": True}


def _evil_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    """Files a weights-only ``torch.load`` accepts, each naming code that would touch ``marker``."""
    detector = "usod.models.saliency_detector.lightning_model.SaliencyDetector"
    cases: dict[str, dict[str, Any]] = {
        "usod_class": {"state_dict": {}, CLASS_KEY: "subprocess.run", "hyper_parameters": _shell(marker)},
        "os_system": {
            "state_dict": {},
            CLASS_KEY: "os.system",
            "hyper_parameters": {"command": f"touch {marker}"},
        },
        "cli_class_path": {
            "state_dict": {},
            CLASS_KEY: detector,
            "hyper_parameters": {"_class_path": "subprocess.Popen", **_shell(marker)},
        },
        "adapter_base_class": {
            "state_dict": {},
            CLASS_KEY: MODEL_PATHS["adapter_transfer"],
            "hyper_parameters": {"base_class": "subprocess.run", "base_hparams": _shell(marker)},
        },
        "unknown_argument": {"state_dict": {}, CLASS_KEY: detector, "hyper_parameters": {"no_such_arg": 1}},
        "hparams_not_a_dict": {"state_dict": {}, CLASS_KEY: detector, "hyper_parameters": [1, 2]},
        "class_not_a_string": {"state_dict": {}, CLASS_KEY: 7, "hyper_parameters": {}},
    }
    paths = {}
    for name, content in cases.items():
        paths[name] = folder / f"{name}.ckpt"
        torch.save(content, paths[name])
    return paths


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "pwned"
    return _evil_checkpoints(folder, marker), marker


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(
    "case",
    ["usod_class", "os_system", "cli_class_path", "adapter_base_class", "unknown_argument",
     "hparams_not_a_dict", "class_not_a_string"],
)  # fmt: skip
def test_load_module_runs_no_code_from_a_checkpoint(evil, case: str) -> None:
    paths, marker = evil
    with pytest.raises(InvalidInputError) as err:
        load_module(paths[case])
    assert str(paths[case]) in str(err.value)
    assert not marker.exists()


def test_adapter_transfer_resolves_its_base_through_the_registry(evil, tmp_path: Path) -> None:
    from usod.models.adapter_transfer import AdapterTransfer

    paths, marker = evil
    with pytest.raises(InvalidInputError, match="not a usod module class"):
        AdapterTransfer(base_class="subprocess.run", base_hparams=_shell(marker))
    with pytest.raises(InvalidInputError, match="not a usod module class"):
        AdapterTransfer(base=str(paths["usod_class"]))
    # a registered class that is no base is refused before it is built
    with pytest.raises(ValueError, match="SaliencyDetector or a CueExtractor"):
        AdapterTransfer(base_class=MODEL_PATHS["sdg_caption_guided"], base_hparams={})
    assert not marker.exists()


def test_registry_names_only_usod_classes_and_accepts_registered_ones() -> None:
    assert model_class("cue_extractor") is CueExtractor
    assert model_class("usod.models.cue_extractor.CueExtractor") is CueExtractor  # package-level path
    assert model_class(MODEL_PATHS["cue_extractor"]) is CueExtractor  # as checkpoints record it
    for name in ("subprocess.run", "os.system", "builtins.eval", "usod.models.base.load_module", ""):
        with pytest.raises(UnknownModelError):
            model_class(name)

    class Mine(CueExtractor):
        pass

    with pytest.raises(UnknownModelError):
        model_class(f"{Mine.__module__}.{Mine.__qualname__}")
    register_model(Mine)
    assert model_class(f"{Mine.__module__}.{Mine.__qualname__}") is Mine
    assert Mine.method == "cue_extractor"  # inherited: runs are named after the method
    with pytest.raises(TypeError):
        register_model(dict)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "rgb"
    write_dataset(root, modality="rgb", n=2, size=(32, 32), seed=0)
    return root


def _data_args(root: Path) -> list[str]:
    return [
        "--config", str(REPO / "configs" / "data" / "synth_rgb.yaml"), "--data.init_args.root", str(root),
        "--data.init_args.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
    ]  # fmt: skip


def _one_line_error(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("usod: error:"))
    assert str(path) in line
    return line


@pytest.mark.parametrize("case", ["usod_class", "cli_class_path", "adapter_base_class"])
def test_commands_refuse_malicious_checkpoints_in_one_line(evil, images, tmp_path, capsys, case) -> None:
    paths, marker = evil
    ckpt = paths[case]
    before = _hashes(images)
    config = REPO / "configs" / "model" / "saliency_detector.yaml"
    runs = [
        ["predict", "--ckpt", str(ckpt), "--input", str(images / "images"), "--output", str(tmp_path / "p")],
        [
            "label",
            "--ckpt",
            str(ckpt),
            "--dataset",
            "folder",
            "--root",
            str(images),
            "--out",
            str(tmp_path / "l"),
        ],
        ["validate", "--config", str(config), *_data_args(images), "--ckpt_path", str(ckpt)],
    ]
    for argv in runs:
        assert main(argv) == 2, argv
        _one_line_error(capsys, ckpt)
    assert not marker.exists()
    assert _hashes(images) == before  # no input touched


def test_validate_refuses_a_checkpoint_of_another_class_than_the_config(images, tmp_path, capsys) -> None:
    ckpt = save_module(CueExtractor(backbone=TINY), tmp_path / "cue.ckpt")
    config = REPO / "configs" / "model" / "saliency_detector.yaml"
    assert main(["validate", "--config", str(config), *_data_args(images), "--ckpt_path", str(ckpt)]) == 2
    line = _one_line_error(capsys, ckpt)
    assert "CueExtractor" in line and "SaliencyDetector" in line


def test_a_text_file_as_checkpoint_gets_no_advice_to_unpickle(tmp_path, capsys) -> None:
    ckpt = tmp_path / "notes.ckpt"
    ckpt.write_text("not a checkpoint\n")
    with pytest.raises(InvalidInputError) as err:
        load_module(ckpt)
    assert "weights_only=False" not in str(err.value) and str(ckpt) in str(err.value)
