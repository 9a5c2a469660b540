"""Bad files inside datasets and bad settings: a one-line error naming the file, or the documented skip.

Each case generates its bad input, runs the affected command, and checks the exit status, that the error
names the file and the problem without a traceback, and that the inputs are unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import yaml

from tests.helpers.models import TINY
from usod.cli import main
from usod.data.synth import write_dataset


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _pipeline_config(path: Path, root: Path, out: Path, **extra) -> Path:
    settings = {
        "out": str(out), "root": str(root), "image_size": 64, "batch_size": 2, "num_workers": 0,
        "postprocess_workers": 0, "stage1_epochs": 1, "stage1": {"backbone": TINY}, "stage2_epochs": 1,
        "stage2": {"backbone": TINY}, "accelerator": "cpu", **extra,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def truncated(tmp_path: Path) -> tuple[Path, Path]:
    root = write_dataset(tmp_path / "data", "rgb", 5, size=(40, 40))
    bad = sorted((root / "images").iterdir())[1]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # a header that parses, pixels that do not
    return root, bad


def test_skip_invalid_leaves_out_an_undecodable_image(truncated, tmp_path, capsys, caplog) -> None:
    root, bad = truncated
    before = _hashes(root)
    strict = _pipeline_config(tmp_path / "strict.yaml", root, tmp_path / "strict")
    assert main(["pipeline", "--config", str(strict)]) == 2
    err = capsys.readouterr().err
    assert bad.name in err and "Traceback" not in err

    lenient = _pipeline_config(tmp_path / "skip.yaml", root, tmp_path / "skip", skip_invalid=True)
    with caplog.at_level(logging.WARNING, logger="usod.data.datasets.base"):
        assert main(["pipeline", "--config", str(lenient)]) == 0
    assert any(bad.name in r.getMessage() and "left out 1 sample" in r.getMessage() for r in caplog.records)
    labels = tmp_path / "skip" / "labels" / "rounds" / "stage1"
    assert sorted(p.stem for p in labels.glob("*.png")) == sorted(
        p.stem for p in (root / "images").iterdir() if p != bad
    )
    assert _hashes(root) == before


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from usod.models.base import save_module
    from usod.models.cue_extractor import CueExtractor

    return save_module(CueExtractor(backbone=TINY), tmp_path_factory.mktemp("ckpt") / "stage1.ckpt")


def _label(ckpt: Path, root: Path, out: Path) -> int:
    argv = ["label", "--ckpt", str(ckpt), "--dataset", "folder", "--root", str(root), "--out", str(out)]
    return main([*argv, "--image-size", "32", "--workers", "0", "--accelerator", "cpu"])


def test_a_symbolic_link_loop_is_reported_and_left_out(stage1_ckpt, tmp_path, capsys) -> None:
    root = write_dataset(tmp_path / "data", "rgb", 3, size=(32, 32))
    loop = root / "images" / "loop.jpg"
    loop.symlink_to(loop)  # points at itself: ELOOP on every stat
    assert main(["data", "inspect", "--name", "folder", "--root", str(root)]) == 1  # problems found
    out = capsys.readouterr().out
    assert "loop.jpg" in out and "cannot be followed" in out
    assert _label(stage1_ckpt, root, tmp_path / "labels") == 0
    assert len(list((tmp_path / "labels" / "rounds" / "stage1").glob("*.png"))) == 3


def test_a_backslash_in_a_file_name_is_refused_before_any_label(stage1_ckpt, tmp_path, capsys) -> None:
    root = write_dataset(tmp_path / "data", "rgb", 3, size=(32, 32))
    for folder, ext in (("images", ".jpg"), ("masks", ".png")):
        first = sorted((root / folder).iterdir())[0]
        first.rename(first.with_name("a\\b" + ext))
    assert main(["data", "inspect", "--name", "folder", "--root", str(root)]) == 1  # problems found
    assert "a\\b.jpg" in capsys.readouterr().out  # a problem inspect reports
    assert _label(stage1_ckpt, root, tmp_path / "labels") == 2
    err = capsys.readouterr().err
    assert "a\\b.jpg" in err and "rename" in err and "Traceback" not in err
    assert not (tmp_path / "labels" / "rounds").exists()  # refused before the round started


def test_a_one_pixel_image_stops_the_pipeline_before_training(tmp_path, capsys) -> None:
    import cv2
    import numpy as np

    root = write_dataset(tmp_path / "data", "rgb", 4, size=(40, 40))
    cv2.imwrite(str(root / "images" / "synth_00000.jpg"), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(root / "masks" / "synth_00000.png"), np.zeros((1, 1), np.uint8))
    assert main(["data", "inspect", "--name", "folder", "--root", str(root)]) == 1  # problems found
    assert "is 1x1 pixels" in capsys.readouterr().out
    config = _pipeline_config(tmp_path / "p.yaml", root, tmp_path / "out")
    assert main(["pipeline", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "synth_00000.jpg" in err and "1x1" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "stage1.ckpt").exists()
    skip = _pipeline_config(tmp_path / "s.yaml", root, tmp_path / "skip", skip_invalid=True)
    assert main(["pipeline", "--config", str(skip)]) == 0  # left out, and the report is written
    assert (tmp_path / "skip" / "report" / "metrics.json").is_file()


# ------------------------------------------------------------------------------------------ the Lightning CLI
STAGE1 = "configs/experiment/a2s_stage1_synth.yaml"


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import pickle

    import torch

    from usod.models.base import save_module
    from usod.models.saliency_detector import SaliencyDetector

    folder = tmp_path_factory.mktemp("bad")
    good = save_module(SaliencyDetector(backbone=TINY, channels=8), folder / "good.ckpt")
    files = {"good": good, "text": folder / "text.ckpt", "truncated": folder / "truncated.ckpt"}
    files["text"].write_text("these are not weights\n")
    files["truncated"].write_bytes(good.read_bytes()[:4000])
    files["pickled"] = folder / "pickled.ckpt"
    files["pickled"].write_bytes(pickle.dumps({"state_dict": {}, "x": slice(1, 2)}))
    files["object"] = folder / "object.ckpt"
    torch.save({"state_dict": {}, "when": __import__("datetime").date(2020, 1, 1)}, files["object"])
    return files


def _fit(root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", STAGE1, "--data.init_args.root", str(root), "--trainer.max_epochs", "1",
            "--model.init_args.backbone", "{name: test_resnet, weights: none}", *extra]  # fmt: skip


@pytest.mark.parametrize("case", ["text", "truncated", "pickled", "object"])
def test_fit_refuses_a_bad_checkpoint_in_one_line(case, bad_files, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    root = write_dataset(tmp_path / "data", "rgb", 2, size=(32, 32))
    assert main(_fit(root, "--ckpt_path", str(bad_files[case]))) == 2
    err = capsys.readouterr().err.strip()
    assert bad_files[case].name in err and "Traceback" not in err, err
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err  # never that advice


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--data.init_args.image_size", "-4"], "image_size must be a positive integer"),
        (["--data.init_args.batch_size", "-2"], "batch_size must be an integer >= 1"),
        (["--model.init_args.backbone", "{name: resnet18, weights: WEIGHTS}"], "not a readable weights file"),
    ],
)
def test_fit_refuses_bad_settings_in_one_line(
    extra, problem, bad_files, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    root = write_dataset(tmp_path / "data", "rgb", 2, size=(32, 32))
    extra = [e.replace("WEIGHTS", str(bad_files["text"])) for e in extra]
    assert main(_fit(root, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err


def test_a_truncated_adapter_base_is_refused_in_one_line(bad_files, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    root = write_dataset(tmp_path / "video", "video", 2, size=(32, 32), frames=3)
    config = "configs/experiment/adapter_video_synth.yaml"
    argv = ["fit", "--config", config, "--data.init_args.root", str(root), "--model.init_args.base",
            str(bad_files["truncated"]), "--trainer.max_epochs", "1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "truncated.ckpt" in err and "Traceback" not in err, err


# ---------------------------------------------------------------------------------------- the machine's state
@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_a_full_or_read_only_disk_stops_labelling_in_one_line_and_resumes(
    code, stage1_ckpt, tmp_path, capsys, monkeypatch
) -> None:
    import errno
    import os

    import usod.data.io

    root = write_dataset(tmp_path / "data", "rgb", 4, size=(32, 32))
    real_replace, calls = os.replace, []

    def fail_after_two(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) > 2:
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(usod.data.io.os, "replace", fail_after_two)
    out = tmp_path / "labels"
    assert _label(stage1_ckpt, root, out) == 2
    err = capsys.readouterr().err.strip()
    assert os.strerror(getattr(errno, code)) in err and "run the same command again" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    monkeypatch.setattr(usod.data.io.os, "replace", real_replace)
    assert _label(stage1_ckpt, root, out) == 0  # resumes; what was written is kept
    assert len(list((out / "rounds" / "stage1").glob("*.png"))) == 4


# --------------------------------------------------------------------------------------------- large images
def test_the_crf_of_a_large_image_runs_at_a_bounded_working_resolution() -> None:
    """Above ``max_pixels`` the CRF and median filter run downscaled; the label keeps the original size and
    agrees with the full-resolution one."""
    import cv2
    import numpy as np

    from usod.ops.crf import PostProcessConfig, postprocess

    yy, xx = np.mgrid[0:300, 0:400]
    inside = (yy - 150) ** 2 + (xx - 200) ** 2 < 90**2
    image = np.where(inside[..., None], np.uint8([220, 180, 40]), np.uint8([30, 60, 90])).astype(np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 3)
    prob = cv2.GaussianBlur(inside.astype(np.float32) * 0.8 + 0.1, (0, 0), 12)
    full = postprocess(image, prob, PostProcessConfig())
    small = postprocess(image, prob, PostProcessConfig(), max_pixels=20_000)  # 1/6 of the pixels
    assert small.shape == full.shape == (300, 400) and set(np.unique(small)) <= {0, 255}
    iou = np.logical_and(small > 0, full > 0).sum() / np.logical_or(small > 0, full > 0).sum()
    assert iou > 0.95, iou
    untouched = postprocess(image, prob, PostProcessConfig(), max_pixels=300 * 400)  # at the limit: as before
    assert np.array_equal(untouched, full)


def test_an_unreadable_input_folder_says_so(tmp_path, capsys, monkeypatch) -> None:
    """Not "no images found": the folder could not be listed (simulated; the tests may run as root)."""
    import os

    import usod.data.io

    folder = tmp_path / "locked"
    folder.mkdir()
    real = os.scandir

    def scandir(path=".", *args):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args)

    monkeypatch.setattr(usod.data.io.os, "scandir", scandir)
    argv = ["handcrafted", "--method", "rbd", "--input", str(folder), "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "locked: cannot be read: permission denied" in err and "no images" not in err


def test_unreadable_files_and_folders_are_named_by_evaluate_and_inspect(
    tmp_path, capsys, monkeypatch
) -> None:
    """Permission errors (simulated: the tests may run as root) in one line that names the file."""
    import os

    import numpy as np

    import usod.data.datasets.base
    import usod.evaluation

    root = write_dataset(tmp_path / "data", "rgb", 3, size=(32, 32))
    locked = sorted((root / "masks").iterdir())[1]
    real_fromfile = np.fromfile

    def fromfile(name, *args, **kwargs):
        if Path(name) == locked:
            raise PermissionError(13, "Permission denied", str(name))
        return real_fromfile(name, *args, **kwargs)

    monkeypatch.setattr(usod.evaluation.np, "fromfile", fromfile)
    assert main(["evaluate", "--gt", str(root / "masks"), "--pred", str(root / "masks")]) == 2
    err = capsys.readouterr().err
    assert f"{locked}: cannot be read: permission denied" in err and "Traceback" not in err
    monkeypatch.undo()

    real_scandir = os.scandir

    def scandir(path=".", *args):
        if Path(path) == root / "masks":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(usod.data.datasets.base.os, "scandir", scandir)
    code = main(["data", "inspect", "--name", "folder", "--root", str(root)])
    captured = capsys.readouterr()
    assert code in (1, 2) and "masks: cannot be read: permission denied" in captured.out + captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"stage1": {"backbone": {"name": "no_such_net", "weights": "none"}}}, "is not a timm model"),
        ({"stage2": {"backbone": {"name": "resnet18", "weights": "/no/such.pth"}}}, "is not a file"),
        ({"stage1": {"backbone": {"name": "resnet18", "weights": "bundled"}}}, "'bundled' weights"),
    ],
)
def test_pipeline_backbone_settings_are_checked_before_any_step(extra, problem, tmp_path, capsys) -> None:
    root = write_dataset(tmp_path / "data", "rgb", 2, size=(32, 32))
    config = _pipeline_config(tmp_path / "p.yaml", root, tmp_path / "out", **extra)
    assert main(["pipeline", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert problem in err and "p.yaml" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_pipeline_yaml_that_is_not_utf8_is_named(tmp_path, capsys) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes("out: r\u00e9sultats\n".encode("latin-1"))
    assert main(["pipeline", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "latin1.yaml: not UTF-8 text" in err and "Traceback" not in err
