"""The documentation stays true: the site builds without warnings, every path it names exists, every command
in its ``bash`` blocks parses against the real parsers, and every Python block is valid Python.

Checked files: ``README.md``, the method READMEs, ``benchmarks/README.md``, the examples' READMEs and
``docs/**/*.md``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("usod_docs_hooks", REPO / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = _hooks()


def _doc_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "benchmarks" / "README.md"]
    files += sorted((REPO / "usod" / "models").glob("*/README.md"))
    files += sorted((REPO / "examples").rglob("README.md"))
    files += sorted((REPO / "docs").rglob("*.md"))
    return files


DOC_FILES = _doc_files()
_IDS = [str(p.relative_to(REPO)) for p in DOC_FILES]

_FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```", re.S | re.M)
_LINK = re.compile(r"(?<!!)\[[^\]\n]+\]\((?P<target>[^)\s]+)\)")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_REPO_PATH = re.compile(
    r"^(?:configs|usod|benchmarks|examples|tests|docs|\.ci)/[\w./-]*$|^[\w-]+\.(?:yml|toml)$"
)
_PLACEHOLDER = re.compile(r"[<>*{}]|\.\.\.")


def _blocks(text: str, lang: str) -> list[str]:
    return [m["body"] for m in _FENCE.finditer(text) if m["lang"] == lang]


def _prose(text: str) -> str:
    """The text outside fenced blocks."""
    return _FENCE.sub("", text)


def _exists(path: str) -> bool:
    path = path.rstrip("/")
    return (REPO / path).exists()


# -- paths and links ---------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOC_FILES, ids=_IDS)
def test_relative_links_resolve(doc: Path) -> None:
    pages = {page for page in HOOKS._mirrors().values()}
    missing = []
    for match in _LINK.finditer(_prose(doc.read_text())):
        target = match["target"].split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        resolved = (doc.parent / target).resolve()
        rel = resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else str(resolved)
        in_docs = doc.is_relative_to(REPO / "docs") and rel.startswith("docs/")
        if resolved.exists() or _exists(rel) or (in_docs and rel[len("docs/") :] in pages):
            continue
        missing.append(match["target"])
    assert not missing, f"{doc.relative_to(REPO)}: links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOC_FILES, ids=_IDS)
def test_repository_paths_in_code_spans_exist(doc: Path) -> None:
    spans = [s.strip() for s in _CODE_SPAN.findall(_prose(doc.read_text()))]
    paths = [s for s in spans if _REPO_PATH.match(s) and not _PLACEHOLDER.search(s)]
    missing = [p for p in paths if not _exists(p.rstrip("/"))]
    assert not missing, f"{doc.relative_to(REPO)}: names missing paths: {missing}"


def test_every_method_readme_is_on_the_site_and_has_the_required_sections() -> None:
    readmes = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "usod" / "models").glob("*/README.md"))
    assert readmes and set(readmes) <= set(HOOKS.MIRRORS)
    for readme in readmes:
        text = (REPO / readme).read_text()
        for heading in ("## Paper", "## What is implemented", "## Configs", "## Deviations", "## Results"):
            assert re.search(f"^{heading}", text, re.M), f"{readme}: no '{heading}' section"
        assert "https://" in text.split("## What is implemented")[0], f"{readme}: the paper has no link"
        assert re.search(r"CPU|GPU", text.split("## Results", 1)[1]), f"{readme}: results name no hardware"


# -- commands -----------------------------------------------------------------------------------------


def _commands(doc: Path) -> list[list[str]]:
    """Shell commands of the ``bash`` blocks: continuations joined, comments dropped, split at ``&&``,
    ``;`` and ``|``, leading ``VAR=value`` assignments and ``srun`` removed."""
    out = []
    for block in _blocks(doc.read_text(), "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            current: list[str] = []
            for token in [*tokens, "&&"]:
                if token in ("&&", ";", "|", "||"):
                    while current and (re.match(r"^[A-Z_]+=", current[0]) or current[0] == "srun"):
                        current.pop(0)
                    if current:
                        out.append(current)
                    current = []
                else:
                    current.append(token)
    return out


def _usod_args(command: list[str]) -> list[str] | None:
    """The arguments after ``usod`` (also ``.venv/bin/usod``, ``python -m usod.cli``, ``torchrun ... -m
    usod.cli``), or None when the command is not a usod command."""
    if Path(command[0]).name == "usod":
        return command[1:]
    if "usod.cli" in command and command[command.index("usod.cli") - 1] in ("-m", "--module"):
        return command[command.index("usod.cli") + 1 :]
    return None


def _script(command: list[str]) -> tuple[str, list[str]] | None:
    if Path(command[0]).name in ("python", "python3") and len(command) > 1 and command[1].endswith(".py"):
        return command[1], command[2:]
    return None


DOC_COMMANDS = [(doc, cmd) for doc in DOC_FILES for cmd in _commands(doc)]
USOD_COMMANDS = [(d, a) for d, c in DOC_COMMANDS if (a := _usod_args(c)) is not None]
SCRIPT_COMMANDS = [(d, s) for d, c in DOC_COMMANDS if (s := _script(c)) is not None]


def test_docs_have_commands_to_check() -> None:
    assert len(USOD_COMMANDS) > 30 and len(SCRIPT_COMMANDS) >= 6
    from usod.cli import COMMANDS, LIGHTNING_SUBCOMMANDS

    used = {tuple(args[:2]) for _, args in USOD_COMMANDS} | {tuple(args[:1]) for _, args in USOD_COMMANDS}
    for path in [*COMMANDS, ("fit",), ("predict",)]:
        assert path in used, f"no documented example of `usod {' '.join(path)}`"
    assert LIGHTNING_SUBCOMMANDS


class _Parsed(Exception):
    """Raised by the patched ``parse_args``: the arguments parsed, stop before the script does any work."""


def _parse_lightning(args: list[str]) -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    import usod.models.registry  # noqa: F401  (the model classes, as `usod fit` imports them)

    class ParseOnlyCLI(LightningCLI):
        def _set_seed(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def _run_subcommand(self, subcommand: str) -> None:
            pass

    ParseOnlyCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
    )


def _parse_usod(args: list[str]) -> None:
    from usod import cli

    if args and args[0] in cli.LIGHTNING_SUBCOMMANDS and not cli._is_folder_predict(args):
        _parse_lightning(args)
        return
    if cli._is_folder_predict(args):
        path: tuple[str, ...] = ("predict",)
        module_name = cli.FOLDER_PREDICT[0]
    else:
        known, _ = cli.build_parser().parse_known_args(args)
        module_name = getattr(known, "_module", None)
        assert module_name is not None, f"`usod {' '.join(args)}`: no such command"
        path = next(p for p, (m, _) in cli.COMMANDS.items() if m == module_name)
    parser = argparse.ArgumentParser(prog="usod " + " ".join(path))
    importlib.import_module(module_name).add_arguments(parser)
    parsed = parser.parse_args(args[len(path) :])
    config = getattr(parsed, "config", None)
    if config is not None and not _PLACEHOLDER.search(str(config)):
        assert _exists(str(config)), f"{config}: no such config"


def _error_lines(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines()]
    keep = [line for line in lines if re.search(r"error|not accepted|Problem|does not exist", line)]
    return " | ".join(keep or lines[-1:])


@pytest.mark.slow
def test_usod_commands_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``usod`` command of the docs parses: its subcommand exists, its options exist and take the given
    values, its config files exist and validate against the classes they name (Lightning commands are
    parsed by the real LightningCLI, without instantiating anything)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["usod"])  # LightningCLI warns when both argv and args are given
    failures = []
    for doc, args in USOD_COMMANDS:
        shown = f"{doc.relative_to(REPO)}: usod {' '.join(args)}"
        err = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                _parse_usod(args)
        except SystemExit as exc:  # argparse / jsonargparse: 0 after --help or --print_config
            if exc.code not in (0, None):
                failures.append(f"{shown}\n    {_error_lines(err.getvalue())}")
        except AssertionError as exc:
            failures.append(f"{shown}\n    {exc}")
    assert not failures, "commands in the docs that do not parse:\n" + "\n".join(failures)


def test_script_commands_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``python SCRIPT.py ...`` of the docs names an existing script whose argument parser accepts the
    given options (the script's ``main`` runs until ``parse_args`` returns, then stops)."""
    monkeypatch.chdir(REPO)
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, args: object = None, namespace: object = None) -> None:
        real_parse_args(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    failures = []
    for doc, (script, args) in SCRIPT_COMMANDS:
        shown = f"{doc.relative_to(REPO)}: python {script} {' '.join(args)}"
        if not (REPO / script).is_file():
            failures.append(f"{shown}\n    no such script")
            continue
        spec = importlib.util.spec_from_file_location(f"_doc_script_{Path(script).stem}", REPO / script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        monkeypatch.setattr(sys, "argv", [script, *args])
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                module.main()
            failures.append(f"{shown}\n    main() returned without parsing arguments")
        except _Parsed:
            pass
        except SystemExit:
            failures.append(f"{shown}\n    {_error_lines(err.getvalue())}")
    assert not failures, "script commands in the docs that do not parse:\n" + "\n".join(failures)


@pytest.mark.parametrize("doc", DOC_FILES, ids=_IDS)
def test_bash_blocks_have_no_angle_bracket_placeholders(doc: Path) -> None:
    """``<file>`` in a shell command is a redirection: placeholders must be words (``CKPT``) or globs."""
    bad = []
    for block in _blocks(doc.read_text(), "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            code = " ".join(shlex.split(line, comments=True))
            if re.search(r"[<>]", code):
                bad.append(line.strip())
    assert not bad, f"{doc.relative_to(REPO)}: {bad}"


@pytest.mark.parametrize("doc", DOC_FILES, ids=_IDS)
def test_python_blocks_are_valid_python(doc: Path) -> None:
    for block in _blocks(doc.read_text(), "python"):
        ast.parse(block, filename=str(doc))


# -- the site -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict``: no warning (broken link, griffe docstring problem, missing page)."""
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    cue = (site / "methods" / "cue_extractor" / "index.html").read_text()
    assert "What is implemented" in cue and "ADBLoss" in cue
    cli_page = (site / "cli" / "index.html").read_text()
    assert "usod label" in cli_page and "--ckpt" in cli_page
    assert "nju2k" in (site / "datasets" / "index.html").read_text()
    assert "SODMetrics" in (site / "api" / "metrics" / "index.html").read_text()


def test_rewrite_links_points_readme_links_at_pages() -> None:
    mirrors = {"README.md": "index.md", "usod/models/sdg/README.md": "methods/sdg.md"}
    text = "[sdg](../sdg/README.md#x) [cfg](../../../configs/model/cue_extractor.yaml) [gone](nope.md)"
    source, page = "usod/models/cue_extractor/README.md", "methods/cue_extractor.md"
    out = HOOKS.rewrite_links(text, source, page, mirrors)
    assert "[sdg](sdg.md#x)" in out
    assert "cfg (`configs/model/cue_extractor.yaml`)" in out
    assert "[gone](nope.md)" in out  # left for mkdocs --strict to report


def test_sphinx_roles_become_cross_references() -> None:
    html = (
        '<h2 id="usod.labels.store.PseudoLabelStore"></h2>'
        '<h3 id="usod.labels.store.PseudoLabelStore.write"></h3>'
        "<p>:class:<code>~usod.ops.crf.CRFParams</code> :meth:<code>PseudoLabelStore.write</code> "
        ":func:<code>unknown</code></p>"
    )
    out = HOOKS.sphinx_roles_to_links(html)
    assert '<autoref identifier="usod.ops.crf.CRFParams" optional><code>CRFParams</code></autoref>' in out
    assert 'identifier="usod.labels.store.PseudoLabelStore.write"' in out
    assert "<code>unknown</code>" in out and ":func:" not in out
