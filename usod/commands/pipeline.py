"""``usod pipeline --config FILE``: a paper's pipeline (A2S or DeepUSPS), resumable, in one output folder.

The file's ``method`` key picks it: ``a2s`` (the default) or ``deepusps`` (see :mod:`usod.pipelines`).

A2S: stage 1 (cue extractor) -> pseudo labels (raw + denseCRF/median) -> stage 2 (saliency detector with
online label updates) -> evaluation on the training images' ground truth and on held-out sets -> report. Every
finished step is kept, so rerunning the same command after an interruption continues where it stopped.

The YAML holds the fields of :class:`usod.pipelines.PipelineConfig` (or, with ``method: deepusps``, of
:class:`usod.pipelines.DeepUSPSConfig`: handcrafted maps -> refinement rounds -> fusion -> report); see
``configs/pipeline/*.yaml``::

    out: runs/a2s-duts
    dataset: folder
    root: ../shared/data/duts-tr-499
    image_size: 320
    stage1_epochs: 8
    stage1: {backbone: {name: tf_efficientnet_lite0, weights: bundled}}
    stage2_epochs: 10
    stage2: {label_update: olr}
    eval: [{name: davis, dataset: davis, root: ../shared/data/davis-2016-val-5}]

Relative paths in the file are taken relative to the current directory. The file is read with jsonargparse,
so every field can be overridden on the command line (``--stage1_epochs 2``, ``--stage2.lr 0.01``,
``--postprocess.n_iters 5``, ``--out runs/x``; ``--num-nodes`` also works) and ``--print_config`` prints the
settings the run would use (file, overrides and defaults) without running anything. With more than one
device (or under ``torchrun``/``srun``) every step runs on all of them (see :mod:`usod.pipelines`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import typing
from pathlib import Path
from typing import Any

import yaml

from usod.data.io import InvalidInputError

__all__ = ["add_arguments", "load_config", "load_settings", "parse_args", "run"]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pipeline config not found")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InvalidInputError(path, f"not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        raise InvalidInputError(path, f"not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise InvalidInputError(path, "expected a mapping of pipeline settings")
    return raw


def _config_class(path: Path, raw: dict[str, Any]) -> type:
    from usod.pipelines import PIPELINES

    method = raw.get("method", "a2s")
    if method not in PIPELINES:
        raise InvalidInputError(path, f"unknown method {method!r}; known: {sorted(PIPELINES)}")
    return PIPELINES[method][0]


def _plain(value: Any) -> Any:
    """A field default as the YAML value that means it (paths as strings, dataclasses as mappings)."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _yaml_value(text: str) -> Any:
    """A command-line value read as YAML (``2`` -> 2, ``0,1`` stays a string), as jsonargparse reads it."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _field_help(config_class: type) -> dict[str, str]:
    """``field -> first sentence`` from the ``Attributes:`` sections of the config class and its bases."""
    helps: dict[str, str] = {}
    for cls in reversed(config_class.__mro__):
        doc = (cls.__doc__ or "").split("Attributes:", 1)
        if len(doc) < 2:
            continue
        name = None
        for line in doc[1].splitlines():
            match = re.match(r"^ {8}(\w+): (.*)", line)
            if match:
                name, text = match.groups()
                helps[name] = text
            elif name and line.startswith(" " * 12) and not helps[name].endswith("."):
                helps[name] += " " + line.strip()

    def plain(text: str) -> str:  # reST markup out: ``x`` -> x, :class:`~a.B` -> B
        text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", text)
        return text.replace("``", "").split(". ")[0].rstrip(".")

    return {k: plain(v) for k, v in helps.items()}


def add_arguments(parser: argparse.ArgumentParser, config_class: type | None = None) -> None:
    """``--config``, ``--method`` and one option per field of ``config_class`` (default: the fields of every
    pipeline, for ``--help`` and the docs).

    On a jsonargparse parser (as :func:`parse_args` builds) ``--config`` is a config file action and the field
    options are typed: mappings (``stage1``, ``postprocess``...) as such, so that ``--stage1.lr 0.1`` sets one
    key; every other value is read as YAML and checked by the config class, whose messages say what is
    expected. On a plain argparse parser (``--help``, the docs) values are read as YAML too.
    """
    from jsonargparse import ActionConfigFile
    from jsonargparse import ArgumentParser as JsonParser

    from usod.pipelines import PIPELINES

    typed = isinstance(parser, JsonParser)
    about = "pipeline YAML (`method` and its fields)"
    if typed:
        parser.add_argument("--config", action=ActionConfigFile, help=about)
    else:
        parser.add_argument("--config", type=Path, required=True, help=about)
        parser.add_argument(
            "--print_config", action="store_true", help="print the checked settings and stop (nothing runs)"
        )
    parser.add_argument(
        "--method", default="a2s", help=f"{' or '.join(PIPELINES)} (default: a2s): the fields below are its"
    )
    # one class's fields when parsing; for --help and the docs every pipeline's, marked by pipeline
    classes = {"": config_class} if config_class else {m: c for m, (c, _) in PIPELINES.items()}
    declared: set[str] = set()
    for method, cls in classes.items():
        hints = typing.get_type_hints(cls)
        helps = _field_help(cls)
        for field in dataclasses.fields(cls):
            if field.name in declared:
                continue
            declared.add(field.name)
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = None
            names = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
            only = f" ({method})" if method and method != "a2s" else ""
            kwargs: dict[str, Any] = {"default": _plain(default), "help": helps.get(field.name, "") + only}
            if typed:
                mapping = typing.get_origin(hints[field.name]) is dict or dataclasses.is_dataclass(default)
                kwargs["type"] = dict[str, Any] if mapping else Any
            else:
                kwargs.update(type=_yaml_value, metavar=field.name.upper())
            parser.add_argument(*names, **kwargs)


def _settings_parser(config_class: type, prog: str) -> Any:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=prog, description=__doc__.splitlines()[0], exit_on_error=False)
    add_arguments(parser, config_class)
    return parser


def parse_args(prog: str, argv: list[str]) -> argparse.Namespace:
    """``config``: the pipeline config built from ``--config`` and the overrides (``print_config`` set
    instead when the settings were printed)."""
    pre = argparse.ArgumentParser(prog=prog, add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config is None or any(a in ("-h", "--help") for a in argv):
        help_parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
        add_arguments(help_parser)
        help_parser.parse_args(argv)  # --help: prints and exits; no --config: says it is required, exits 2
    raw = _read_yaml(known.config)
    parser = _settings_parser(_config_class(known.config, raw), prog)
    show = "--print_config" in argv  # printed here, after the settings are checked
    try:
        settings = parser.parse_args([a for a in argv if a != "--print_config"])
    except Exception as err:  # noqa: BLE001 - jsonargparse's ArgumentError: one line naming the file
        raise InvalidInputError(known.config, str(err).splitlines()[0]) from None
    values = settings.as_dict()
    values.pop("config", None)
    values.pop("__path__", None)
    config = load_settings(known.config, values, {k for k, v in values.items() if v is not None})
    if show:
        settings.pop("config", None)
        print(parser.dump(settings, skip_check=True), end="")
        return argparse.Namespace(config=None)
    return argparse.Namespace(config=config)


def load_settings(path: Path, values: dict[str, Any], given: set[str] | None = None) -> Any:
    """The pipeline config of ``values`` (field -> value, ``method``: the class); errors name ``path``."""
    values = dict(values)
    config_class = _config_class(path, {"method": values.pop("method", None) or "a2s"})
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInputError(path, f"unknown settings {unknown}; known: {sorted(known)}")
    if values.get("out") is None:
        raise InvalidInputError(path, "no `out` folder (set it in the file or pass --out)")
    try:
        return config_class(**{k: v for k, v in values.items() if given is None or k in given})
    except (TypeError, ValueError) as err:
        raise InvalidInputError(path, str(err)) from None


def load_config(path: Path, **overrides: Any) -> Any:
    """Read a pipeline config (of the class its ``method`` names) from YAML; errors name the file.

    ``overrides`` (field -> value; ``None`` values are ignored) replace the file's values.
    """
    raw = _read_yaml(path)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return load_settings(path, raw)


def run(args: argparse.Namespace) -> int:
    from usod.pipelines import PIPELINES, format_summary

    config = args.config
    if config is None:  # --help / --print_config
        return 0
    start = time.perf_counter()
    run_pipeline = next(run for cls, run in PIPELINES.values() if type(config) is cls)
    summary = run_pipeline(config)
    if summary is None:  # a rank other than 0 of a multi-process job: rank 0 reports
        return 0
    print()
    print(format_summary(summary))
    report = config.out / ("report" if (config.out / "report").is_dir() else "report.json")
    print(f"\nreport: {report} ({time.perf_counter() - start:.0f} s)", file=sys.stdout)
    return 0
