"""The commands of ``examples/cli/README.md`` stay correct.

Every command parses (``usod <command> --help``), every config path exists and every ``usod fit`` line
validates its whole configuration (``--print_config``). The A2S, handcrafted/DeepUSPS and evaluation commands
also run, verbatim but on tiny settings: small synthetic sets, one epoch, a tiny random backbone, 32 px.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from usod.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "examples" / "cli" / "README.md"
CKPT = re.compile(r'"\$\(last_ckpt ([^)]+)\)"')

pytestmark = pytest.mark.filterwarnings("ignore")


def _sections() -> dict[str, list[str]]:
    """``{section title: usod command lines}`` of the README's bash blocks."""
    out: dict[str, list[str]] = {}
    for section in README.read_text().split("\n## ")[1:]:
        title = section.splitlines()[0].strip()
        for block in re.findall(r"```bash\n(.+?)\n```", section, flags=re.S):
            lines = block.replace("\\\n", " ").splitlines()
            out.setdefault(title, []).extend(line for line in lines if line.startswith("usod "))
    return out


def _commands() -> list[str]:
    return [line for lines in _sections().values() for line in lines]


def test_readme_covers_every_command() -> None:
    from usod.cli import COMMANDS

    text = " ".join(_commands())
    for path in [*COMMANDS, ("fit",), ("predict",)]:
        if path != ("demo",):  # the demo is the top-level README's quick start
            assert "usod " + " ".join(path) in text, path
    assert "slurm_multinode.sh" in README.read_text() and "torchrun.sh" in README.read_text()


def test_config_paths_exist() -> None:
    paths = re.findall(r"(?:configs|examples/cli)/[\w/.-]+\.yaml", README.read_text())
    assert paths
    for path in paths:
        assert (REPO / path).is_file(), path


def test_every_command_parses(capsys) -> None:
    paths = {tuple(t for t in shlex.split(c)[1:3] if not t.startswith("-")) for c in _commands()}
    for path in sorted(paths):
        path = path[:2] if path[0] == "data" else path[:1]
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code in (0, None), path
        assert "usage" in capsys.readouterr().out.lower(), path


def test_fit_configs_validate(capsys, tmp_path, monkeypatch) -> None:
    """``--print_config`` parses and type-checks every section of each ``usod fit`` line's configuration."""
    monkeypatch.chdir(REPO)
    fits = [c for c in _commands() if c.startswith("usod fit ")]
    assert len(fits) >= 6
    for line in fits:
        args = shlex.split(CKPT.sub(str(tmp_path / "some.ckpt"), line))[1:]
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--print_config"])
        assert exit_info.value.code in (0, None), line
        assert "class_path" in capsys.readouterr().out, line


# ------------------------------------------------------------------------------------------- tiny runs
TINY_FIT = (
    " --trainer.max_epochs 1 --trainer.enable_progress_bar false --trainer.log_every_n_steps 1"
    " --model.init_args.backbone '{name: test_resnet, weights: none}'"
    " --data.init_args.image_size 32 --data.init_args.batch_size 4 --data.init_args.num_workers 0"
)


def _tiny(line: str) -> str:
    """The README line on tiny settings (the command itself, its config and its paths unchanged)."""
    if line.startswith("usod data synth"):
        return re.sub(r"--n \d+", "--n 6", line) + " --size 40 40"
    if line.startswith("usod fit"):
        return line + TINY_FIT
    if line.startswith(("usod predict", "usod label")):
        line = re.sub(r"--image-size \d+", "--image-size 32", line)
        workers = "--num-workers 0" if line.startswith("usod predict") else "--workers 0"
        return f"{line} {workers}"
    if line.startswith("usod handcrafted"):
        return line + " --workers 0"
    return line


@pytest.mark.slow
def test_readme_commands_run_on_tiny_settings(tmp_path) -> None:
    sections = _sections()
    lines = [line for line in sections["Data"] if "synth" in line]
    lines += sections["A2S, two stages"][1:]  # the step-by-step commands (the pipeline file has no tiny mode)
    lines += sections["Handcrafted methods and DeepUSPS"]
    script = [
        "set -euo pipefail",
        'last_ckpt() { ls -t "$1"/lightning_logs/version_*/checkpoints/*.ckpt | head -n 1; }',
        f"usod() {{ {shlex.quote(sys.executable)} -c 'import sys; from usod.cli import main; "
        'sys.exit(main(sys.argv[1:]))\' "$@"; }',
        f"cp -r {shlex.quote(str(REPO / 'configs'))} {shlex.quote(str(REPO / 'examples'))} .",
        *[_tiny(line) for line in lines],
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    runs = tmp_path / "runs" / "cli"
    assert len(list((runs / "labels" / "rounds" / "stage1").glob("*.png"))) == 6
    for name in ("a2s", "deepusps-rbd", "handcrafted/rbd", "handcrafted/dsr"):
        assert len(list((runs / "preds" / name).glob("*.png"))) == 6, name
    assert (runs / "curves.png").is_file()
    assert '"A2S"' in (runs / "scores.json").read_text()
