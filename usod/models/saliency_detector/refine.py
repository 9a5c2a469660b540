"""Pixel-adaptive refinement (PAR): the fast "prior rectification" of SPR (seed 000).

Seed 000 combines its labels with a "real-time pixel refiner"; the authors' code (``A2S-v3``, ``par.py``)
takes it from AFA (Ru et al., "Learning Affinity from Attention", CVPR 2022). Each pixel is repeatedly
replaced by an affinity-weighted average of its 8 neighbours at several dilations; affinities combine
colour similarity (normalised by the local colour spread) and spatial distance:

    ``a_col(k) = softmax_k(-mean_c(|I_k - I| / (std_k(I_k) + eps) / w_col)^2)``
    ``a_pos(k) = softmax_k(-(d_k / std_k(d_k) / w_col)^2)``, ``d_k`` the neighbour's distance
    ``a(k) = (a_col(k) + w_pos * a_pos(k)) / (1 + w_pos)``
    ``m <- sum_k a(k) m_k``, repeated ``num_iter`` times.

Defaults are the reference code's (``dilations = (1, 2, 4, 8)``, ``num_iter = 6``, ``w_col = 0.3``,
``w_pos = 0.01``). Deviation: the affinities are divided by ``1 + w_pos`` so they sum to 1; each iteration
is then a convex combination and the output stays in [0, 1] (the reference lets the map grow by
``(1 + w_pos)`` per iteration and divides by its maximum afterwards). Everything runs on the batch tensors'
device; images are the [0, 1] RGB batch (the colour term is scale-invariant, so normalisation does not
matter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usod.models.precision import float32_autocast_off

__all__ = ["PixelAdaptiveRefiner"]

# The 8 neighbours of a pixel, in (dy, dx) steps.
_OFFSETS: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


class PixelAdaptiveRefiner(nn.Module):
    """Refine soft maps so that they follow colour regions of their images.

    Args:
        dilations: Neighbourhood dilations (in pixels).
        num_iter: Propagation iterations.
        w_col: Temperature of the colour (and position) affinity.
        w_pos: Weight of the position affinity.
    """

    def __init__(
        self,
        dilations: Sequence[int] = (1, 2, 4, 8),
        num_iter: int = 6,
        w_col: float = 0.3,
        w_pos: float = 0.01,
    ) -> None:
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"dilations must be positive integers, got {list(dilations)}")
        if num_iter < 0 or w_col <= 0 or w_pos < 0:
            raise ValueError(f"need num_iter >= 0, w_col > 0, w_pos >= 0; got {num_iter}, {w_col}, {w_pos}")
        self.num_iter = int(num_iter)
        self.w_col = float(w_col)
        self.w_pos = float(w_pos)
        dist = [d * math.hypot(dy, dx) for d in self.dilations for dy, dx in _OFFSETS]
        self.register_buffer("distances", torch.tensor(dist).view(1, 1, -1, 1, 1), persistent=False)

    def neighbours(self, x: Tensor) -> Tensor:
        """BxCxKxHxW: the ``K = 8 * len(dilations)`` neighbours of every pixel (replicate padding)."""
        h, w = x.shape[-2:]
        out = []
        for d in self.dilations:
            padded = F.pad(x, [d, d, d, d], mode="replicate")
            for dy, dx in _OFFSETS:
                out.append(padded[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w])
        return torch.stack(out, dim=2)

    def affinity(self, images: Tensor) -> Tensor:
        """Bx1xKxHxW neighbour weights (summing to 1 over K) of Bx3xHxW images."""
        nb = self.neighbours(images)
        diff = (nb - images.unsqueeze(2)).abs() / (nb.std(dim=2, keepdim=True) + 1e-8) / self.w_col
        col = F.softmax(-(diff**2).mean(dim=1, keepdim=True), dim=2)
        dist = self.distances.to(images.dtype)
        pos = F.softmax(-((dist / dist.std(dim=2, keepdim=True) / self.w_col) ** 2), dim=2)
        return (col + self.w_pos * pos) / (1.0 + self.w_pos)

    @float32_autocast_off
    def forward(self, images: Tensor, maps: Tensor) -> Tensor:
        """Refine ``maps`` (Bx1xhxw in [0, 1], resized to the images if needed) along ``images``.

        Args:
            images: Bx3xHxW images in [0, 1].
            maps: Bx1xhxw soft maps.

        Returns:
            Bx1xHxW refined maps in [0, 1].
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape Bx3xHxW, got {tuple(images.shape)}")
        if maps.ndim != 4 or maps.shape[1] != 1 or maps.shape[0] != images.shape[0]:
            raise ValueError(f"maps must have shape {images.shape[0]}x1xHxW, got {tuple(maps.shape)}")
        images = images.float()
        maps = maps.float()
        if maps.shape[-2:] != images.shape[-2:]:
            maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=True)
        aff = self.affinity(images)
        for _ in range(self.num_iter):
            maps = (self.neighbours(maps) * aff).sum(dim=2)
        return maps.clamp(0.0, 1.0)
