"""Commands never write over files they did not write, and an interrupted ``usod predict`` resumes.

``usod predict`` and ``usod handcrafted`` leave a record (``.usod-output.json``) in their output folder; a
folder with other files (a dataset's ground truth) or another command's record is refused unless
``--overwrite``. ``usod evaluate --json/--plot`` replace only files that ``usod evaluate`` wrote.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.models import TINY
from usod.cli import main
from usod.data.io import OUTPUT_RECORD
from usod.data.synth import write_dataset
from usod.models.base import save_module
from usod.models.saliency_detector import SaliencyDetector


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("outputs")
    data = write_dataset(root / "data", "rgb", 4, size=(32, 40))
    ckpt = save_module(SaliencyDetector(backbone=TINY, channels=8), root / "model.ckpt")
    return data, ckpt


def _predict(data: Path, ckpt: Path, out: Path, *extra: str) -> int:
    return main(["predict", "--ckpt", str(ckpt), "--input", str(data / "images"), "--output", str(out),
                 "--device", "cpu", "--num-workers", "0", "--image-size", "32", *extra])  # fmt: skip


def test_predict_refuses_to_replace_ground_truth(setup, capsys) -> None:
    data, ckpt = setup
    before = _hashes(data)
    assert _predict(data, ckpt, data / "masks") == 2
    err = capsys.readouterr().err
    assert "masks" in err and "--overwrite" in err and "Traceback" not in err
    assert _hashes(data) == before  # the ground truth is untouched


def test_predict_overwrite_claims_the_folder(setup, tmp_path, capsys) -> None:
    data, ckpt = setup
    out = tmp_path / "maps"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _predict(data, ckpt, out) == 2
    assert _predict(data, ckpt, out, "--overwrite") == 0
    assert len(list(out.glob("*.png"))) == 4 and (out / OUTPUT_RECORD).is_file()


def test_predict_resumes_and_refuses_another_model(setup, tmp_path, capsys) -> None:
    data, ckpt = setup
    out = tmp_path / "maps"
    assert _predict(data, ckpt, out) == 0
    maps = sorted(out.glob("*.png"))
    assert len(maps) == 4
    first = _hashes(out)
    maps[0].unlink()  # as if killed before its map was written
    capsys.readouterr()
    assert _predict(data, ckpt, out) == 0
    assert "wrote 1 saliency map" in capsys.readouterr().out  # only the missing one
    assert _hashes(out) == first  # identical to an uninterrupted run

    other = save_module(
        SaliencyDetector(backbone=TINY, channels=8, predict_flip=True), tmp_path / "other.ckpt"
    )
    assert _predict(data, other, out) == 2
    assert "other settings" in capsys.readouterr().err
    assert _hashes(out) == first
    assert _predict(data, other, out, "--overwrite") == 0
    assert len(list(out.glob("*.png"))) == 4


def test_handcrafted_refuses_a_folder_it_did_not_write(setup, tmp_path, capsys) -> None:
    data, _ = setup
    before = _hashes(data)
    argv = ["handcrafted", "--method", "rbd", "--input", str(data / "images"), "--workers", "0"]
    assert main([*argv, "--output", str(data / "masks")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _hashes(data) == before
    out = tmp_path / "rbd"
    assert main([*argv, "--output", str(out)]) == 0
    assert main([*argv, "--output", str(out)]) == 0  # its own folder: rerun is fine
    assert main(["handcrafted", "--method", "mc", "--input", str(data / "images"), "--workers", "0",
                 "--output", str(out)]) == 2  # fmt: skip


def test_evaluate_replaces_only_its_own_outputs(setup, tmp_path, capsys) -> None:
    data, _ = setup
    preds = data / "masks"
    precious = tmp_path / "notes.json"
    precious.write_text('{"mine": 1}')
    picture = tmp_path / "photo.png"
    cv2.imwrite(str(picture), np.zeros((4, 4, 3), np.uint8))
    before = _hashes(tmp_path)
    base = ["evaluate", "--gt", str(data / "masks"), "--pred", f"m={preds}"]
    assert main([*base, "--json", str(precious)]) == 2
    assert main([*base, "--plot", str(picture)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert _hashes(tmp_path) == before
    ours_json, ours_plot = tmp_path / "scores.json", tmp_path / "curves.png"
    assert main([*base, "--json", str(ours_json), "--plot", str(ours_plot)]) == 0
    assert main([*base, "--json", str(ours_json), "--plot", str(ours_plot)]) == 0  # its own files
    assert json.loads(ours_json.read_text())["m"]["n"] == 4
    assert main([*base, "--json", str(precious), "--overwrite"]) == 0


def test_video_predict_resumes_at_the_first_frame_without_a_map(setup, tmp_path, capsys) -> None:
    _, ckpt = setup
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 32))
    for i in range(5):
        writer.write(np.full((32, 32, 3), 40 * i, np.uint8))
    writer.release()
    out = tmp_path / "maps"
    argv = ["predict", "--ckpt", str(ckpt), "--input", str(video), "--output", str(out), "--device", "cpu",
            "--batch-size", "2"]  # fmt: skip
    assert main(argv) == 0
    first = _hashes(out)
    (out / "frame_00003.png").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 saliency maps" in printed and "(4 already there)" in printed
    assert _hashes(out) == first
