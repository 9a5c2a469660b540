"""MkDocs hooks: the repository's READMEs become site pages, and reference tables come from the code.

One source of truth: the method READMEs (``usod/models/<method>/README.md``), ``README.md``,
``benchmarks/README.md`` and the examples' READMEs are not copied into ``docs/``; :func:`on_files` adds them
as generated pages (:data:`MIRRORS`) and rewrites their relative links: a link to another mirrored README
points at its page, a link to any other file of the repository becomes its path in code font (the site
does not serve source files), and a link to a missing file is left alone so that ``mkdocs build --strict``
fails on it. Markers in the hand-written pages are replaced by generated text (:data:`MARKERS`): the help of
every ``usod`` command and the dataset registry with its folder layouts.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import posixpath
import re
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]

#: Repository file -> page (``docs_dir`` relative). Optional ones are mirrored when they exist.
MIRRORS: dict[str, str] = {
    "README.md": "index.md",
    "usod/models/cue_extractor/README.md": "methods/cue_extractor.md",
    "usod/models/saliency_detector/README.md": "methods/saliency_detector.md",
    "usod/models/adapter_transfer/README.md": "methods/adapter_transfer.md",
    "usod/models/deepusps/README.md": "methods/deepusps.md",
    "usod/models/sdg/README.md": "methods/sdg.md",
    "benchmarks/README.md": "benchmarks.md",
    "examples/README.md": "examples.md",
}
OPTIONAL_MIRRORS: dict[str, tuple[str, str]] = {
    # source -> (page, nav title); added to the nav under "Examples" when the file exists.
    "examples/cli/README.md": ("examples/cli.md", "Command-line scripts"),
    "examples/notebooks/README.md": ("examples/notebooks.md", "Notebooks"),
}

_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]+)\]\((?P<target>[^)\s]+)\)")


def _mirrors() -> dict[str, str]:
    found = dict(MIRRORS)
    for source, (page, _) in OPTIONAL_MIRRORS.items():
        if (REPO / source).is_file():
            found[source] = page
    return found


def rewrite_links(text: str, source: str, page: str, mirrors: dict[str, str]) -> str:
    """Point the relative links of ``source`` (a repository path) at the site, as seen from ``page``.

    Args:
        text: Markdown of the file.
        source: Its path in the repository, ``/``-separated.
        page: The page it becomes, relative to ``docs_dir``.
        mirrors: Repository path -> page of every mirrored file.

    Returns:
        The Markdown with rewritten links.
    """

    def replace(match: re.Match[str]) -> str:
        text, target = match["text"], match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match[0]
        path, _, anchor = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        if resolved in mirrors:
            new = posixpath.relpath(mirrors[resolved], posixpath.dirname(page) or ".")
            return f"[{text}]({new}{'#' + anchor if anchor else ''})"
        if resolved.startswith("docs/") and (REPO / resolved).is_file():
            new = posixpath.relpath(resolved[len("docs/") :], posixpath.dirname(page) or ".")
            return f"[{text}]({new}{'#' + anchor if anchor else ''})"
        if (REPO / resolved).exists():
            shown = resolved + ("/" if (REPO / resolved).is_dir() else "")
            if text.strip("`") in (shown.rstrip("/"), posixpath.basename(resolved)):
                return f"`{shown}`"
            return f"{text} (`{shown}`)"
        return match[0]  # missing: mkdocs --strict reports it

    return _LINK.sub(replace, text)


def on_config(config: Any) -> Any:
    """Add the optional mirrored pages that exist to the nav, under "Examples"."""
    nav = config["nav"]
    for source, (page, title) in OPTIONAL_MIRRORS.items():
        if not (REPO / source).is_file():
            continue
        for i, entry in enumerate(nav):
            if isinstance(entry, dict) and "Examples" in entry:
                value = entry["Examples"]
                items = value if isinstance(value, list) else [{"Overview": value}]
                items.append({title: page})
                nav[i] = {"Examples": items}
    return config


def on_files(files: Files, config: Any) -> Files:
    """Add every mirrored README as a generated page."""
    mirrors = _mirrors()
    for source, page in mirrors.items():
        text = (REPO / source).read_text(encoding="utf-8")
        content = rewrite_links(text, source, page, mirrors)
        if files.get_file_from_path(page) is not None:
            raise ValueError(f"docs/{page} exists but is generated from {source}; delete docs/{page}")
        files.append(File.generated(config, page, content=content))
    return files


def cli_reference() -> str:
    """The ``--help`` of every ``usod`` command except the Lightning ones, as Markdown."""
    from usod.cli import COMMANDS, FOLDER_PREDICT

    commands = [(path, module, help_text) for path, (module, help_text) in COMMANDS.items()]
    commands.insert(3, (("predict",), *FOLDER_PREDICT))
    out = []
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal width; fix it for the docs
    try:
        for path, module_name, help_text in commands:
            name = "usod " + " ".join(path)
            parser = argparse.ArgumentParser(prog=name, description=help_text)
            importlib.import_module(module_name).add_arguments(parser)
            out.append(f"### `{name}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(out)


def dataset_layouts() -> str:
    """``usod list datasets --layouts`` as Markdown: one section per dataset with its docstring tree."""
    from usod.commands import list_cmd
    from usod.data.datasets import ALIASES

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        list_cmd.run(argparse.Namespace(what="datasets", layouts=True))
    aliases = ", ".join(f"`{alias}` -> `{name}`" for alias, name in sorted(ALIASES.items()))
    return f"```text\n{buffer.getvalue().rstrip()}\n```\n\nAliases: {aliases}.\n"


#: Marker comment in a hand-written page -> function that returns its replacement.
MARKERS: dict[str, Callable[[], str]] = {
    "<!-- usod:cli-reference -->": cli_reference,
    "<!-- usod:dataset-layouts -->": dataset_layouts,
}


_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):<code>(?P<tilde>~?)(?P<name>[\w.]+)</code>")
_ANCHOR = re.compile(r'id="(usod\.[\w.]+)"')


def sphinx_roles_to_links(html: str) -> str:
    """Turn the Sphinx roles of the docstrings (``:class:`~usod.x.Y```), which Markdown leaves as text, into
    cross-references that mkdocs-autorefs resolves (``optional``: an unknown name stays plain code).

    A dotted ``usod.`` path is used as it is; a short name (``Encoder``, ``Store.write``) links to the one
    object of the same page whose path ends with it, if there is exactly one.
    """
    anchors = set(_ANCHOR.findall(html))

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        title = name.rsplit(".", 1)[-1] if match["tilde"] else name
        if name.startswith("usod."):
            identifier = name
        else:
            found = [a for a in anchors if a.endswith("." + name)]
            if len(found) != 1:
                return f"<code>{title}</code>"
            identifier = found[0]
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    return _ROLE.sub(replace, html)


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Link the Sphinx roles of the API pages (see :func:`sphinx_roles_to_links`)."""
    return sphinx_roles_to_links(html)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace the markers of :data:`MARKERS` with generated text."""
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
