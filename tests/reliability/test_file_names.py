"""File names that are not valid UTF-8 (surrogate-escaped by Python): every reader and writer copes.

``cv2.imread`` / ``cv2.VideoCapture`` crash the process on such names, so these tests run the commands in a
child process: a crash is a failure here instead of taking the test session down.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.models import TINY
from usod.data.synth import write_dataset
from usod.models.base import save_module
from usod.models.cue_extractor import CueExtractor

ODD = os.fsdecode(b"odd-\xff\xfe-name")  # not UTF-8: Python keeps it as surrogate escapes

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="byte file names are a POSIX matter")


def _usod(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "usod.cli", *argv],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=600,
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_module(CueExtractor(backbone=TINY), tmp_path_factory.mktemp("ckpt") / "cue.ckpt")


def test_label_round_over_an_image_with_a_non_utf8_name(tmp_path: Path, ckpt: Path) -> None:
    root = write_dataset(tmp_path / "data", "rgb", 3, size=(40, 40))
    image = next((root / "images").iterdir())
    os.rename(image, image.with_name(ODD + image.suffix))
    mask = root / "masks" / f"{image.stem}.png"
    os.rename(mask, mask.with_name(ODD + ".png"))
    store = tmp_path / "labels"
    argv = ["label", "--ckpt", str(ckpt), "--dataset", "folder", "--root", str(root), "--out", str(store)]
    result = _usod(*argv, "--image-size", "32", "--workers", "0", "--accelerator", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    labels = sorted(os.listdir(store / "rounds" / "stage1"))
    assert ODD + ".png" in labels and len(labels) == 3
    again = _usod(*argv, "--image-size", "32", "--workers", "0", "--accelerator", "cpu")  # resume
    assert again.returncode == 0, again.stderr[-2000:]


def test_video_predict_with_a_non_utf8_name(tmp_path: Path, ckpt: Path) -> None:
    plain = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(plain), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 32))
    for i in range(3):
        writer.write(np.full((32, 32, 3), 40 * i, np.uint8))
    writer.release()
    video = tmp_path / (ODD + ".avi")
    os.rename(plain, video)
    out = tmp_path / (ODD + "-maps")
    result = _usod(
        "predict", "--ckpt", str(ckpt), "--input", str(video), "--output", str(out), "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(out.rglob("*.png"))) == 3
