"""Small ``usod`` subcommands; each module has ``add_arguments(parser)`` and ``run(args) -> int``.

Shared here: argparse types that reject bad values with a usage error before any work.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def round_name(text: str) -> str:
    """argparse type: a pseudo-label round name (letters, digits, ``.``, ``_``, ``-``)."""
    from usod.labels.store import _validate_round_name

    try:
        return _validate_round_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def dataset_name(text: str) -> str:
    """argparse type: a registered dataset name or alias (see ``usod list datasets``)."""
    from usod.data.datasets import get_dataset_class

    try:
        get_dataset_class(text)
    except KeyError as err:
        raise argparse.ArgumentTypeError(err.args[0]) from None
    return text
