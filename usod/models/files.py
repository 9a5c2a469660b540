"""Reading torch files safely: ``weights_only=True`` always, and errors that say what is wrong with the file.

Every checkpoint and weights file usod reads goes through :func:`load_torch_file`. A file is plain data
(tensors, numbers, strings, lists, dicts); anything else is refused, and the refusal never suggests loading
the file with ``weights_only=False`` (which would let the file run code).
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from usod.data.io import InvalidInputError

__all__ = ["load_torch_file"]


def _reason(err: BaseException) -> str:
    """What a failed ``torch.load(weights_only=True)`` says about the file, in one line."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if isinstance(err, pickle.UnpicklingError) and found:
        return (
            f"it holds a Python object ({found.group(1)}) besides tensors and plain containers, and usod "
            "loads only plain data from files (a pickled object can run code when loaded)"
        )
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
        return "not a torch file of tensors (a plain pickle, or another format)"
    if isinstance(err, (pickle.UnpicklingError, KeyError, EOFError)) or "invalid load key" in text:
        return "not a torch file (no pickle or zip archive of tensors)"
    if isinstance(err, (RuntimeError, OSError, zipfile.BadZipFile)):
        return f"truncated or corrupt ({next(iter(text.splitlines()), type(err).__name__)})"
    return next(iter(text.splitlines()), "") or type(err).__name__


def load_torch_file(path: str | Path, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the problem.

    Args:
        path: The file.
        what: What the file should be, for messages (``"checkpoint"``, ``"weights file"``).
        map_location: Passed to ``torch.load``.

    Raises:
        FileNotFoundError: There is no such file.
        InvalidInputError: It is empty, not a torch file, truncated, or holds more than plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise InvalidInputError(path, f"not a readable {what} (the file is empty)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the pickle-protocol notice before a refusal
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        raise InvalidInputError(path, f"not a readable {what} ({_reason(err)})") from None
