"""The README's quick start stays in sync with CI and the code."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    install_and_run, test = commands
    assert "usod demo" in install_and_run and "pip install" in install_and_run
    assert "pytest" in test
    ci = (REPO / ".ci" / "run").read_text()
    assert test in ci.splitlines(), "the README's test command must be in .ci/run verbatim"


def test_readme_mentions_every_cli_command() -> None:
    from usod.cli import COMMANDS

    text = (REPO / "README.md").read_text()
    for path in COMMANDS:
        assert "usod " + " ".join(path) in text, path


def test_readme_config_paths_exist() -> None:
    text = (REPO / "README.md").read_text()
    for path in re.findall(r"configs/[\w/.-]+\.yaml", text):
        assert (REPO / path).is_file(), path
