"""Speed options for every usod module: channels-last memory format and ``torch.compile``.

Mixed precision is not here: it is the Trainer's ``precision="bf16-mixed"`` (``configs/trainer/gpu.yaml``),
which every usod module supports (losses run in float32, see :mod:`usod.models.precision`).

``configs/trainer/gpu.yaml`` and ``ddp.yaml`` add it with channels-last on; from the CLI::

    usod fit --config EXPERIMENT.yaml --config configs/trainer/gpu.yaml --trainer.callbacks.compile=true
    usod fit --config EXPERIMENT.yaml --trainer.callbacks+=usod.callbacks.PerformanceOptions \\
        --trainer.callbacks.channels_last=true

from ``usod pipeline`` with ``precision: bf16-mixed`` and ``performance: {channels_last: true}``, and from
Python with ``Trainer(callbacks=[PerformanceOptions(channels_last=True, compile=True)])``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

__all__ = ["PerformanceOptions", "compile_targets", "to_channels_last"]

COMPILE_MODES: tuple[str | None, ...] = (
    None,
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)


def to_channels_last(batch: Any) -> Any:
    """Convert every 4-D floating-point tensor of a batch dict to channels-last in place; return it."""
    if isinstance(batch, dict):
        for key, value in batch.items():
            if isinstance(value, Tensor) and value.ndim == 4 and value.is_floating_point():
                batch[key] = value.contiguous(memory_format=torch.channels_last)
    return batch


def _channels_last_4d(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t


def compile_targets(module: nn.Module) -> list[nn.Module]:
    """The sub-modules of a usod LightningModule that ``torch.compile`` should compile.

    A module names them with a ``compile_targets()`` method (see :class:`usod.models.base.USODModule`);
    anything else compiles its ``model`` attribute, if it has one.
    """
    method = getattr(module, "compile_targets", None)
    if callable(method):
        return list(method())
    model = getattr(module, "model", None)
    return [model] if isinstance(model, nn.Module) else []


class PerformanceOptions(pl.Callback):
    """Channels-last weights and inputs, and ``torch.compile`` of the module's network.

    * ``channels_last``: the module's weights and every 4-D float tensor of each batch (images, labels)
      use ``torch.channels_last``, the layout that tensor cores run convolutions in (typically 10-30%
      faster on a GPU under bf16; no gain on CPU). Outputs are the same up to float rounding.
    * ``compile``: ``nn.Module.compile`` (in place, so checkpoints keep their keys) of the sub-modules the
      module names in ``compile_targets()``: the whole network for the detectors, the encoder and heads of
      the cue extractor (whose feature cache bypasses the encoder), the encoders of SDG (its caption
      generation loop has data-dependent lengths). The first steps are slow while graphs compile.

    Args:
        channels_last: Use the channels-last memory format.
        compile: Compile the network with ``torch.compile``.
        compile_mode: ``torch.compile`` mode (``None``/``"default"``, ``"reduce-overhead"``,
            ``"max-autotune"``, ``"max-autotune-no-cudagraphs"``).
        compile_backend: ``torch.compile`` backend (``"inductor"``; ``"eager"`` only traces, for tests).
        compile_dynamic: ``torch.compile``'s ``dynamic`` (``None``: decided by torch).
        float32_matmul_precision: Passed to ``torch.set_float32_matmul_precision`` when set (``"high"``
            enables TF32 for float32 matrix products on Ampere and later GPUs).
    """

    def __init__(
        self,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
        compile_dynamic: bool | None = None,
        float32_matmul_precision: str | None = None,
    ) -> None:
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile_mode {compile_mode!r}; expected one of {COMPILE_MODES}")
        if float32_matmul_precision not in (None, "highest", "high", "medium"):
            raise ValueError(
                "float32_matmul_precision must be 'highest', 'high' or 'medium', "
                f"got {float32_matmul_precision!r}"
            )
        self.channels_last = channels_last
        self.compile = compile
        self.compile_mode = None if compile_mode == "default" else compile_mode
        self.compile_backend = compile_backend
        self.compile_dynamic = compile_dynamic
        self.float32_matmul_precision = float32_matmul_precision
        #: The sub-modules compiled so far.
        self.compiled: list[nn.Module] = []

    def apply(self, pl_module: nn.Module) -> nn.Module:
        """Apply the options to a module (also usable without a Trainer); return it."""
        if self.float32_matmul_precision is not None:
            torch.set_float32_matmul_precision(self.float32_matmul_precision)
        if self.channels_last:
            # not Module.to(memory_format=...): it rejects the 5-D buffers some modules hold
            pl_module._apply(_channels_last_4d)
        if self.compile:
            targets = compile_targets(pl_module)
            if not targets:
                name = type(pl_module).__name__
                rank_zero_warn(f"{name} names nothing to compile; compile=True has no effect")
            for target in targets:
                if getattr(target, "_compiled_call_impl", None) is None:  # not compiled yet
                    target.compile(
                        mode=self.compile_mode, backend=self.compile_backend, dynamic=self.compile_dynamic
                    )
                    self.compiled.append(target)
        return pl_module

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.apply(pl_module)

    def _batch(self, batch: Any) -> None:
        if self.channels_last:
            to_channels_last(batch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._batch(batch)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._batch(batch)

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._batch(batch)

    def on_predict_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._batch(batch)
