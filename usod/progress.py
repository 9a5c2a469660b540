"""Progress bars for long steps: tqdm on rank zero, on a terminal, unless switched off.

``USOD_PROGRESS=0`` switches every bar off, ``USOD_PROGRESS=1`` shows them even when stderr is not a
terminal (e.g. a log file); by default a bar is shown when stderr is a terminal. Processes other than
rank zero of a distributed run never show one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from usod.distributed import is_rank_zero

__all__ = ["ENV_VAR", "progress_bar", "progress_enabled"]

#: Environment variable that switches progress bars off (``0``) or forces them on (``1``).
ENV_VAR = "USOD_PROGRESS"


def progress_enabled(enabled: bool | None = None) -> bool:
    """Whether a bar is shown: ``enabled`` False never; rank zero only; ``USOD_PROGRESS``; else a TTY.

    Args:
        enabled: ``False`` hides the bar; ``True`` or ``None`` show it on a terminal (``USOD_PROGRESS=1``:
            also elsewhere).
    """
    if enabled is False or not is_rank_zero():
        return False
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    enabled: bool | None = None,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar on stderr, disabled as :func:`progress_enabled` says (then it only iterates).

    Args:
        iterable: What to iterate (or ``None`` and call ``update``).
        total: Number of steps (default: ``len(iterable)``).
        desc: Label of the bar.
        unit: Unit of a step.
        enabled: ``False`` switches the bar off (see :func:`progress_enabled`).
        **kwargs: Further tqdm arguments.
    """
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=not progress_enabled(enabled),
        file=kwargs.pop("file", sys.stderr),
        dynamic_ncols=True,
        **kwargs,
    )
