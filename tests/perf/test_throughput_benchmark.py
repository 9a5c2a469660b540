"""Smoke test of benchmarks/throughput.py: its main() at the tiniest settings, every module and mode."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.perf.tiny import WARNINGS

pytestmark = [pytest.mark.filterwarnings(w) for w in WARNINGS]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


def load_benchmark():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("usod_benchmark_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_throughput_benchmark_runs_every_module(tmp_path: Path) -> None:
    bench = load_benchmark()
    out = tmp_path / "throughput.json"
    args = ["--device", "cpu", "--image-size", "32", "--backbone", "test_resnet", "--batch-size", "2"]
    args += ["--steps", "1", "--warmup", "1", "--threads", "1", "--json", str(out)]
    report = bench.main(args)
    saved = json.loads(out.read_text())
    assert saved["settings"]["image_size"] == 32 and saved["settings"]["precision"] == "32-true"
    assert saved["environment"]["torch"] and saved["environment"]["device_name"]
    combos = {(r["module"], r["phase"], r["mode"]) for r in report["results"]}
    assert combos == {(m, p, k) for m in bench.MODULES for p in bench.PHASES for k in bench.MODES}
    for r in saved["results"]:
        assert r["images"] == 2 and r["images_per_s"] > 0 and r["seconds"] > 0, r
    assert "| cue_extractor | train |" in bench.table(report["results"])


def test_throughput_benchmark_rejects_unknown_names() -> None:
    bench = load_benchmark()
    with pytest.raises(SystemExit):
        bench.parse_args(["--modules", "cue_extractor,unet"])


def test_gpu_check_script_parses_and_passes_known_options(capsys) -> None:
    """benchmarks/gpu_check.sh (the prepared GPU run): valid bash, every option one the benchmark takes."""
    import re
    import shutil
    import subprocess

    script = SCRIPT.parent / "gpu_check.sh"
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    subprocess.run([bash, "-n", str(script)], check=True)
    with pytest.raises(SystemExit):
        load_benchmark().parse_args(["--help"])
    known = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", capsys.readouterr().out))
    used = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", script.read_text()))
    assert {"--device", "--compile", "--json"} <= used <= known, sorted(used - known)
