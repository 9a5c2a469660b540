"""Every example script runs (on its smallest settings), so examples can never rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_api_stage1_example_runs(tmp_path) -> None:
    script = REPO / "examples" / "api" / "stage1_pseudo_labels.py"
    result = subprocess.run(
        [sys.executable, str(script), "--tiny", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'max_f'" in result.stdout
    assert len(list((tmp_path / "run" / "labels" / "rounds" / "stage1-raw").glob("*.png"))) == 6
