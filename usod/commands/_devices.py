"""``--devices``, ``--num-nodes`` and ``--strategy``: the options of commands that run on several devices."""

from __future__ import annotations

import argparse


def devices_value(value: str) -> int | str:
    """``--devices``: a count (``4``), or a Lightning string such as ``auto`` or ``0,1``."""
    return int(value) if value.isdigit() else value


def add_device_arguments(parser: argparse.ArgumentParser, default_note: str) -> None:
    """Add the three options (default ``None``: ``default_note`` says what applies then)."""
    parser.add_argument(
        "--devices",
        type=devices_value,
        help=f"devices per node, e.g. 4, auto or 0,1 ({default_note}); more than one runs every step "
        "on all of them (DDP); torchrun and srun launches work too",
    )
    parser.add_argument("--num-nodes", type=int, help=f"nodes of a multi-node job ({default_note})")
    parser.add_argument("--strategy", help=f"Lightning strategy, e.g. ddp ({default_note})")
