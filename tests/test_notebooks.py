"""The notebooks in ``examples/notebooks`` run top to bottom (on their smallest settings), so they never rot.

Each notebook is executed with nbclient in a kernel of *this* interpreter (a temporary kernel spec pointing at
``sys.executable``, with this checkout first on ``PYTHONPATH``), in a temporary working directory, with
``USOD_NOTEBOOK_SMALL=1`` (tiny data, random-weight test backbones, one epoch) and ``USOD_NOTEBOOK_OUT`` in
``tmp_path``. The committed notebooks must carry no outputs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "examples" / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
# Seconds-long on their own; the training notebooks take longer together, so they are marked slow.
FAST = {"evaluate_predictions.ipynb"}
KERNEL = "usod-notebook-test"


def test_every_method_has_a_notebook() -> None:
    expected = {
        "a2s_two_stage.ipynb",
        "adapter_transfer.ipynb",
        "deepusps.ipynb",
        "sdg_caption_guided.ipynb",
        "evaluate_predictions.ipynb",
    }
    assert expected <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean(name: str) -> None:
    """No outputs or execution counts in git (they bloat diffs and go stale); a parameters cell first."""
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{name}: cell {index} has outputs; clear them before committing"
            assert cell.execution_count is None, f"{name}: cell {index} has an execution count"
    code = [c for c in nb.cells if c.cell_type == "code"]
    tags = code[0].metadata.get("tags", [])
    assert "parameters" in tags, f"{name}: the first code cell must be tagged 'parameters'"
    assert "USOD_NOTEBOOK_SMALL" in code[0].source and "USOD_NOTEBOOK_OUT" in code[0].source
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernel spec running this interpreter, the small settings, and a scratch working directory."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "usod test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("USOD_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("USOD_NOTEBOOK_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    work = tmp_path / "work"
    work.mkdir()
    return work


def _params(name: str):
    marks = [] if name in FAST else [pytest.mark.slow]
    return pytest.param(name, marks=marks, id=name.removesuffix(".ipynb"))


@pytest.mark.parametrize("name", [_params(n) for n in NOTEBOOKS])
def test_notebook_runs(name: str, kernel_env: Path) -> None:
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=KERNEL, resources={"metadata": {"path": str(kernel_env)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the failing cell
    elapsed = time.perf_counter() - start
    figures = sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert figures >= 2, f"{name} shows {figures} figures"
    assert not list(kernel_env.iterdir()) or all(p.name != "runs" for p in kernel_env.iterdir())
    assert (kernel_env.parent / "runs").is_dir(), "outputs go to USOD_NOTEBOOK_OUT"
    print(f"{name}: {elapsed:.1f} s")
