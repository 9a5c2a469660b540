"""``usod data inspect``: check a dataset on disk and print what is wrong with it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from usod.data.inspect import inspect_dataset
from usod.data.io import InvalidInputError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``data inspect`` options to ``parser``."""
    parser.add_argument("--name", required=True, help="registered dataset name (see `usod list datasets`)")
    parser.add_argument("--root", required=True, type=Path, help="dataset root folder")
    parser.add_argument("--split", default=None, help="split to inspect (default: the dataset's default)")
    parser.add_argument("--json", default=None, type=Path, help="also write the full report as JSON here")
    parser.add_argument("--workers", default=8, type=int, help="reader threads (default: 8)")


def run(args: argparse.Namespace) -> int:
    """Inspect the dataset and print a report.

    Returns:
        0 when no problems were found, 1 when some were (they are printed), 2 when the dataset cannot be
        opened.
    """
    try:
        report = inspect_dataset(args.name, args.root, split=args.split, workers=args.workers)
    except (InvalidInputError, KeyError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"usod data inspect: error: {msg}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.to_json() + "\n")
        print(f"report written to {args.json}")
    return 0 if report.ok else 1
