"""Numerics under mixed precision: losses and label arithmetic in float32.

With ``Trainer(precision="bf16-mixed")`` (or ``"16-mixed"``) Lightning runs every step under
:func:`torch.autocast`, which computes convolutions and matrix products in 16 bits. That is what makes a GPU
fast, but losses that sum over every pixel (soft IoU, SSIM, F-beta, the ADB loss) and label updates stored
as 8-bit PNGs need more than bf16's 8 mantissa bits: a sum of 100k bf16 terms is off by ~0.4%, and a label
of 0.998 rounds to 1.0. :func:`float32_autocast_off` runs a function with autocast disabled and its
floating-point tensor arguments cast to float32; every usod loss is wrapped in it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["autocast_disabled", "float32_autocast_off", "to_float32"]

_Fn = TypeVar("_Fn", bound=Callable[..., Any])

_DEVICE_TYPES = ("cuda", "cpu", "xpu", "mps")


def to_float32(value: Any) -> Any:
    """``value`` with every floating-point tensor (also inside lists, tuples and dicts) cast to float32."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(to_float32(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: to_float32(v) for k, v in value.items()}
    return value


@contextlib.contextmanager
def autocast_disabled() -> Iterator[None]:
    """Disable autocast on every device type on which it is active (a no-op when none is)."""
    with contextlib.ExitStack() as stack:
        for device_type in _DEVICE_TYPES:
            try:
                enabled = torch.is_autocast_enabled(device_type)
            except (RuntimeError, TypeError, ValueError):  # device type unknown to this build
                continue
            if enabled:
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


def float32_autocast_off(fn: _Fn) -> _Fn:
    """Decorator: run ``fn`` with autocast disabled and its floating-point tensor arguments in float32.

    Gradients flow through the casts, so a loss decorated this way trains the bf16 network normally.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with autocast_disabled():
            return fn(*to_float32(args), **to_float32(kwargs))

    return wrapper  # type: ignore[return-value]
