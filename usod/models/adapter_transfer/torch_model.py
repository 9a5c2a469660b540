"""Parallel adapters on the deep layers of a frozen encoder (plain PyTorch, no Lightning).

Seed 000 transfers a saliency model trained on natural still images (NSI) to non-NSI tasks (video, remote
sensing) by adapter tuning: a deep layer ``T`` of the frozen model gets a small trainable branch ``T_a`` in
parallel, ``F' = T(F) + T_a(F)`` instead of ``F' = T(F)``. Here:

* the layers ``T`` are the encoder *units* (timm stages or blocks) that produce the deepest ``levels`` feature
  levels (:func:`encoder_units`): ``layer3``/``layer4`` of a ResNet, ``blocks.3``-``blocks.6`` of an
  EfficientNet;
* each ``T_a`` is a bottleneck :class:`ParallelAdapter` (1x1 down-projection, depthwise 3x3, GELU, 1x1
  up-projection initialised to zero, so that training starts exactly from the base model), attached with a
  forward hook (:class:`EncoderAdapters`), so the base network and its state-dict keys stay untouched;
* optionally the adapter also sees an auxiliary image (e.g. optical flow for video): that image first goes
  through the same frozen encoder with the adapters idle, the input of every adapted unit is recorded, and
  the adapter adds its own down-projection of it, ``T_a(F, F_aux) = up(act(dw(down(F) + down_aux(F_aux))))``.
  This is how a base trained on RGB alone gets a motion cue (our design; seed 000 does not say how flow
  enters the transferred model).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EncoderAdapters", "ParallelAdapter", "encoder_units"]

MODES: tuple[str, ...] = ("on", "off", "capture")


class ParallelAdapter(nn.Module):
    """``T_a``: a bottleneck branch whose output is added to that of the layer it runs beside.

    Args:
        in_channels: Channels of the layer's input ``F``.
        out_channels: Channels of the layer's output ``T(F)``.
        hidden: Bottleneck width.
        aux: Add a second down-projection for the auxiliary stream's input to the same layer.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, aux: bool = False) -> None:
        super().__init__()
        if min(in_channels, out_channels, hidden) < 1:
            raise ValueError(
                f"adapter channels must be positive, got {in_channels}, {out_channels}, {hidden}"
            )
        self.down = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.aux_down = nn.Conv2d(in_channels, hidden, kernel_size=1) if aux else None
        self.mix = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.up = nn.Conv2d(hidden, out_channels, kernel_size=1)
        nn.init.zeros_(self.up.weight)  # T_a = 0 at the start: the adapted model is the base model
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor, size: Sequence[int], aux: Tensor | None = None) -> Tensor:
        """``T_a(F)`` at the spatial ``size`` of ``T(F)`` (inputs are average-pooled when the layer strides).

        Args:
            x: The layer's input, BxC_inxHxW.
            size: (h, w) of the layer's output.
            aux: The auxiliary stream's input to the same layer (same shape as ``x``), if the adapter has an
                auxiliary branch; ``None`` leaves that branch out.
        """
        size = (int(size[0]), int(size[1]))
        if tuple(x.shape[-2:]) != size:
            x = F.adaptive_avg_pool2d(x, size)
        h = self.down(x)
        if self.aux_down is not None and aux is not None:
            if tuple(aux.shape[-2:]) != size:
                aux = F.adaptive_avg_pool2d(aux, size)
            h = h + self.aux_down(aux)
        return self.up(self.act(self.mix(h)))


def _timm_body(encoder: nn.Module) -> nn.Module:
    """The timm feature extractor inside a usod :class:`~usod.models.backbones.Encoder` (or the module)."""
    body = getattr(encoder, "model", None)
    return body if isinstance(body, nn.Module) and hasattr(body, "feature_info") else encoder


def encoder_units(encoder: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """The sequentially executed units of a timm ``features_only`` encoder and the level each one ends in.

    Supported: timm's ``FeatureListNet``/``FeatureDictNet`` (ResNets, ConvNeXts, ...: the top-level children)
    and the EfficientNet/MobileNet feature classes (``conv_stem``, ``bn1`` and every stage of ``blocks``).

    Args:
        encoder: A usod :class:`~usod.models.backbones.Encoder` or a timm ``features_only`` model.

    Returns:
        ``(name, module, level)`` in execution order; ``level`` is the index of the first returned feature
        level computed at or after the unit (so the units of level ``i`` are those between the outputs of
        levels ``i - 1`` and ``i``). Units after the last level are left out.

    Raises:
        ValueError: The encoder is not a timm feature extractor of a supported kind.
    """
    body = _timm_body(encoder)
    info = getattr(body, "feature_info", None)
    if info is None or not hasattr(info, "module_name"):
        raise ValueError(f"adapters need a timm features_only encoder, got {type(body).__name__}")
    if isinstance(getattr(body, "blocks", None), nn.Sequential) and hasattr(body, "conv_stem"):
        units = [("conv_stem", body.conv_stem), ("bn1", body.bn1)]
        units += [(f"blocks.{i}", b) for i, b in enumerate(body.blocks)]
    else:
        units = list(body.named_children())
    names = [n for n, _ in units]
    out: list[tuple[str, nn.Module, int]] = []
    start = 0
    for level, feature_name in enumerate(info.module_name()):
        for candidate in (feature_name, feature_name.replace(".", "_")):
            if candidate in names[start:]:
                end = names.index(candidate, start) + 1
                break
        else:
            raise ValueError(
                f"cannot place adapters in {type(body).__name__}: feature module {feature_name!r} is not one "
                f"of its sequential units {names}"
            )
        out.extend((name, module, level) for name, module in units[start:end])
        start = end
    return out


class EncoderAdapters(nn.Module):
    """Parallel adapters hooked onto the units of the deepest ``levels`` levels of an encoder.

    The adapters live here (state-dict keys ``adapters.<unit>``); the encoder only gets forward hooks, so its
    own parameters and keys do not change. :attr:`mode` selects what the hooks do: ``"on"`` adds the adapter
    outputs, ``"off"`` leaves the encoder as it is (the base model), ``"capture"`` leaves it as it is and
    records each adapted unit's input for the auxiliary branch (see :meth:`capture_aux`).

    Args:
        encoder: A usod :class:`~usod.models.backbones.Encoder` (or a timm ``features_only`` model).
        levels: How many of the deepest feature levels get adapters.
        ratio: Bottleneck width as a fraction of each unit's output channels (at least ``min_hidden``).
        aux: Give every adapter an auxiliary branch.
        min_hidden: Smallest bottleneck width.
        probe_size: Side of the dummy image used once to read each unit's channels.
    """

    def __init__(
        self,
        encoder: nn.Module,
        levels: int = 2,
        ratio: float = 0.25,
        aux: bool = False,
        min_hidden: int = 8,
        probe_size: int = 64,
    ) -> None:
        super().__init__()
        units = encoder_units(encoder)
        n_levels = max(level for _, _, level in units) + 1
        if not 1 <= levels <= n_levels:
            raise ValueError(f"levels must be in [1, {n_levels}] for this encoder, got {levels}")
        if ratio <= 0:
            raise ValueError(f"ratio must be positive, got {ratio}")
        self.unit_names = [name for name, _, level in units if level >= n_levels - levels]
        modules = {name: module for name, module, _ in units}
        shapes = self._probe(encoder, [modules[n] for n in self.unit_names], probe_size)
        self.adapters = nn.ModuleDict()
        for name, (c_in, c_out) in zip(self.unit_names, shapes, strict=True):
            hidden = max(min_hidden, round(ratio * c_out))
            self.adapters[self._key(name)] = ParallelAdapter(c_in, c_out, hidden, aux=aux)
        self.has_aux = aux
        self.mode = "on"
        self._captured: dict[str, Tensor] = {}
        self._aux_inputs: dict[str, Tensor] = {}
        self._handles = [
            modules[name].register_forward_hook(functools.partial(self._hook, name))
            for name in self.unit_names
        ]

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "_")

    @staticmethod
    @torch.no_grad()
    def _probe(encoder: nn.Module, modules: list[nn.Module], size: int) -> list[tuple[int, int]]:
        shapes: dict[int, tuple[int, int]] = {}

        def record(i: int, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            shapes[i] = (int(args[0].shape[1]), int(output.shape[1]))

        handles = [m.register_forward_hook(functools.partial(record, i)) for i, m in enumerate(modules)]
        was_training = encoder.training
        try:
            encoder.eval()
            param = next(encoder.parameters())
            encoder(torch.zeros(1, 3, size, size, dtype=param.dtype, device=param.device))
        finally:
            for h in handles:
                h.remove()
            encoder.train(was_training)
        return [shapes[i] for i in range(len(modules))]

    def _hook(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        if self.mode == "off":
            return None
        x = args[0]
        if self.mode == "capture":
            self._captured[name] = x.detach()
            return None
        aux = self._aux_inputs.get(name) if self.has_aux else None
        return output + self.adapters[self._key(name)](x, output.shape[-2:], aux)

    def set_mode(self, mode: str) -> None:
        """Set :attr:`mode` (``"on"``, ``"off"`` or ``"capture"``)."""
        if mode not in MODES:
            raise ValueError(f"unknown adapter mode {mode!r}; expected one of {MODES}")
        self.mode = mode

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model: adapters idle inside the block."""
        previous, self.mode = self.mode, "off"
        try:
            yield
        finally:
            self.mode = previous

    @contextlib.contextmanager
    def aux_context(self, run_encoder: Callable[[Tensor], Any], aux: Tensor | None) -> Iterator[None]:
        """Inside the block, adapters see the auxiliary stream's inputs recorded from ``run_encoder(aux)``.

        Args:
            run_encoder: Runs the frozen encoder on an image batch (called once, without gradients, with
                the adapters idle).
            aux: The auxiliary images (Bx3xHxW), or ``None`` for no auxiliary input (the block is a no-op).
        """
        if aux is None or not self.has_aux:
            yield
            return
        previous, self.mode = self.mode, "capture"
        self._captured = {}
        try:
            with torch.no_grad():
                run_encoder(aux)
        finally:
            self.mode = previous
        self._aux_inputs, self._captured = self._captured, {}
        try:
            yield
        finally:
            self._aux_inputs = {}

    def num_parameters(self) -> int:
        """Number of adapter parameters."""
        return sum(p.numel() for p in self.adapters.parameters())

    def remove_hooks(self) -> None:
        """Detach the adapters from the encoder for good."""
        for h in self._handles:
            h.remove()
        self._handles = []
