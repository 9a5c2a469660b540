"""``--devices``, ``--num-nodes`` and ``--strategy``: the options of commands that run on several devices."""

from __future__ import annotations

import argparse


def devices_value(value: str) -> int | str:
    """``--devices``: a count (``4``), or a Lightning string such as ``auto`` or ``0,1``."""
    return int(value) if value.isdigit() else value


def add_device_arguments(parser: argparse.ArgumentParser, from_file: bool = False) -> None:
    """Add the three options; their default is ``None`` (the caller applies its own defaults).

    Args:
        parser: The command's parser.
        from_file: The command reads these settings from a config file, which the options override.
    """

    def note(default: str) -> str:
        return "overrides the file" if from_file else f"default {default}"

    parser.add_argument(
        "--devices",
        type=devices_value,
        help=f"devices per node, e.g. 4, auto or 0,1 ({note('1')}); with more than one every step runs on "
        "all of them (DDP); torchrun and srun launches work too",
    )
    parser.add_argument("--num-nodes", type=int, help=f"nodes of a multi-node job ({note('1')})")
    parser.add_argument(
        "--strategy", help=f"Lightning strategy ({note('auto: DDP with more than one device')})"
    )
