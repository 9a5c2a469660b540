"""Every example script runs (on its smallest settings), so examples can never rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
API = REPO / "examples" / "api"


def _run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(API / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_api_example_is_tested() -> None:
    text = Path(__file__).read_text()
    for script in API.glob("*.py"):
        assert f'"{script.name}"' in text, f"{script.name} has no test"
        assert "--tiny" in script.read_text(), f"{script.name} needs a --tiny smoke setting"


def test_api_stage1_example_runs(tmp_path) -> None:
    stdout = _run("stage1_pseudo_labels.py", "--tiny", "--out", str(tmp_path / "run"))
    assert "'max_f'" in stdout
    assert len(list((tmp_path / "run" / "labels" / "rounds" / "stage1-raw").glob("*.png"))) == 6


def test_api_datamodule_example_runs(tmp_path) -> None:
    stdout = _run("datamodule_from_registry.py", "--tiny", "--out", str(tmp_path / "run"))
    for modality, dataset, datamodule in (
        ("rgb", "folder", "RGBDataModule"),
        ("rgbd", "nju2k", "RGBDDataModule"),
        ("video", "davis", "VideoDataModule"),
    ):
        assert f"{modality} ({dataset}, {datamodule})" in stdout
    assert "depth (2, 3, 32, 32)" in stdout and "flow (2, 3, 32, 32)" in stdout


@pytest.mark.slow
def test_api_stage2_example_runs(tmp_path) -> None:
    out = tmp_path / "run"
    stdout = _run("train_stage2.py", "--tiny", "--out", str(out))
    assert (out / "stage2.ckpt").is_file()
    rows = [line.split()[0] for line in stdout.splitlines() if line[:1].isalpha()]
    assert "rbd" in rows and "stage2-epoch1" in rows, stdout  # initial labels, then a rectified round
    assert len(list((out / "labels" / "rounds" / "stage2-epoch1").glob("*.png"))) == 6


@pytest.mark.slow
def test_api_deepusps_example_runs(tmp_path) -> None:
    out = tmp_path / "run"
    stdout = _run("deepusps_refine.py", "--tiny", "--out", str(out))
    assert (out / "fused.ckpt").is_file()
    assert "fused-pred" in stdout and "rbd-r1-mva" in stdout
    assert json.loads((out / "report.json").read_text())["metrics"]["fused-pred"]["n"] == 6


def test_api_evaluate_example_runs(tmp_path) -> None:
    from usod.cli import main

    out = tmp_path / "run"
    _run("evaluate_folder.py", "--tiny", "--out", str(out))
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) == {"RBD", "MR"} and scores["MR"]["n"] == 4
    assert (out / "curves.png").stat().st_size > 0
    # the same numbers as `usod evaluate` on the same folders
    cli_json = tmp_path / "cli.json"
    gt, maps = out / "data" / "masks", out / "maps"
    assert main(["evaluate", "--gt", str(gt), "--pred", f"MR={maps / 'mr'}", "--json", str(cli_json)]) == 0
    assert json.loads(cli_json.read_text())["MR"] == scores["MR"]
    # and with explicit --gt / --pred
    _run("evaluate_folder.py", "--gt", str(gt), "--pred", f"X={maps / 'rbd'}", "--out", str(tmp_path / "x"))
    assert json.loads((tmp_path / "x" / "scores.json").read_text())["X"] == scores["RBD"]
