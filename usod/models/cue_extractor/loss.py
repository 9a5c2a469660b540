"""Losses for the saliency cue extractor (stage 1 of A2S and of the unified USOD framework).

Both losses take *decision values* ``theta`` (Bx1xhxw, the channel sum of a mean-centred feature map, see
:func:`usod.models.cue_extractor.torch_model.adaptive_decision_values`) and push every pixel away from the
adaptive decision boundary ``theta = 0``; neither uses any label.

* :class:`ADBLoss`: eq. 4 of A2S (Zhou et al., "Activation to Saliency", seed 001).
* :class:`PCLSDLoss`: the progressive-curriculum saliency distilling loss of seed 000 (Yuan et al., "Unified
  Unsupervised Salient Object Detection via Knowledge Transfer").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from usod.models.precision import float32_autocast_off


def _as_list(thetas: Tensor | Sequence[Tensor]) -> list[Tensor]:
    maps = [thetas] if isinstance(thetas, Tensor) else list(thetas)
    if not maps:
        raise ValueError("expected at least one decision-value map, got an empty sequence")
    for i, theta in enumerate(maps):
        if theta.ndim != 4 or theta.shape[1] != 1:
            raise ValueError(f"decision-value map {i} must have shape Bx1xHxW, got {tuple(theta.shape)}")
    return maps


def keep_random_pixels(values: Tensor, drop_ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """Drop a fixed fraction of the pixels of every sample at random.

    Exactly ``max(1, round(N * (1 - drop_ratio)))`` of the ``N`` pixels of each sample are kept (a random
    subset drawn independently per sample), so the kept count does not fluctuate between steps.

    Args:
        values: Per-pixel values, shape Bx1xHxW (or any BxN... shape).
        drop_ratio: Fraction of pixels to drop, in [0, 1).
        generator: Optional random generator (for reproducible tests).

    Returns:
        The kept values, shape Bxk.
    """
    if not 0.0 <= drop_ratio < 1.0:
        raise ValueError(f"drop_ratio must be in [0, 1), got {drop_ratio}")
    flat = values.flatten(1)
    if drop_ratio == 0.0:
        return flat
    n = flat.shape[1]
    k = max(1, int(round(n * (1.0 - drop_ratio))))
    scores = torch.rand(flat.shape, generator=generator, device=flat.device if generator is None else "cpu")
    idx = scores.to(flat.device).topk(k, dim=1).indices
    return flat.gather(1, idx)


class ADBLoss(nn.Module):
    """Adaptive Decision Boundary loss (A2S, eq. 4).

    For decision values ``theta`` (eq. 3), ``D = |sigmoid(theta) - sigmoid(0)| = |sigmoid(theta) - 0.5|`` and

        ``L = -mean_n(D_n^2 + alpha * D_n)``

    summed over the supplied maps (A2S supervises ``F_3``, ``F_4``, ``F_5`` and the fused ``F`` with equal
    weight). The squared term rewards pixels already far from the boundary; the linear term keeps a gradient
    for hard pixels near it. In each call a fraction ``drop_ratio`` of the pixels of every map is dropped at
    random (the paper drops half "to alleviate overfitting"). The loss lies in
    ``[-(0.25 + 0.5 * alpha) * n_maps, 0]``.

    Args:
        alpha: Weight of the L1 term (0.1 in the paper, chosen by its ablation, Tab. V).
        drop_ratio: Fraction of pixels dropped at random per map and sample; 0 disables dropping.
    """

    def __init__(self, alpha: float = 0.1, drop_ratio: float = 0.5) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not 0.0 <= drop_ratio < 1.0:
            raise ValueError(f"drop_ratio must be in [0, 1), got {drop_ratio}")
        self.alpha = alpha
        self.drop_ratio = drop_ratio

    @float32_autocast_off
    def forward(self, thetas: Tensor | Sequence[Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Compute the loss.

        Args:
            thetas: One decision-value map or a sequence of them, each Bx1xHxW (sizes may differ).
            generator: Optional random generator for the pixel drop.

        Returns:
            Scalar loss (sum over maps of the per-map mean).
        """
        total = None
        drop = self.drop_ratio if self.training else 0.0
        for theta in _as_list(thetas):
            d = (torch.sigmoid(theta) - 0.5).abs()
            d = keep_random_pixels(d, drop, generator)
            term = -(d.pow(2) + self.alpha * d).mean()
            total = term if total is None else total + term
        assert total is not None
        return total


def pcl_threshold(progress: float, p0: float = 0.2, ramp: float = 1.0 / 3.0) -> float:
    """Hard-pixel threshold ``p`` of PCL-SD at a point of training.

    ``p = max(0, p0 * (1 - progress / ramp))``: linear from ``p0`` at the start down to 0 once a fraction
    ``ramp`` of training is done, then 0 (every pixel included). Seed 000 only says that hard pixels are
    "rigidly excluded at the early stages and gradually incorporated"; the defaults reproduce the schedule of
    the authors' released code (``p = 0.2 - 0.6 * epoch / epochs``, i.e. 0 at one third of training), made
    explicit and clamped at 0.

    Args:
        progress: Fraction of training done, in [0, 1] (e.g. ``epoch / max_epochs``).
        p0: Initial threshold in [0, 0.5).
        ramp: Fraction of training after which ``p`` reaches 0, in (0, 1].

    Returns:
        The threshold ``p``.
    """
    if not 0.0 <= p0 < 0.5:
        raise ValueError(f"p0 must be in [0, 0.5), got {p0}")
    if not 0.0 < ramp <= 1.0:
        raise ValueError(f"ramp must be in (0, 1], got {ramp}")
    if not math.isfinite(progress):
        raise ValueError(f"progress must be finite, got {progress}")
    return max(0.0, p0 * (1.0 - max(progress, 0.0) / ramp))


class PCLSDLoss(nn.Module):
    """Progressive Curriculum Learning-based Saliency Distilling loss (seed 000).

    With ``S = sigmoid(theta)`` and the hard-pixel mask ``M = 0 where |S - 0.5| < p, 1 otherwise``:

        ``L = 0.5 - mean_i |M_i * S_i - 0.5| = mean_i M_i * (0.5 - |S_i - 0.5|)``

    (a masked pixel gives ``|0 - 0.5| = 0.5`` and so contributes 0 with no gradient). The mean runs over all
    pixels, as in the seed's formula. ``M`` is computed without gradient. ``p`` follows
    :func:`pcl_threshold`. Like :class:`ADBLoss`, the loss is summed over the supplied maps, and an optional
    random pixel drop is applied (not in seed 000; keep ``drop_ratio=0`` for the plain formula).

    Args:
        p0: Initial hard-pixel threshold.
        ramp: Fraction of training after which the threshold reaches 0.
        drop_ratio: Fraction of pixels dropped at random per map and sample.
    """

    def __init__(self, p0: float = 0.2, ramp: float = 1.0 / 3.0, drop_ratio: float = 0.0) -> None:
        super().__init__()
        pcl_threshold(0.0, p0, ramp)  # validates p0 and ramp
        if not 0.0 <= drop_ratio < 1.0:
            raise ValueError(f"drop_ratio must be in [0, 1), got {drop_ratio}")
        self.p0 = p0
        self.ramp = ramp
        self.drop_ratio = drop_ratio

    def threshold(self, progress: float) -> float:
        """Return ``p`` for a fraction ``progress`` of training done."""
        return pcl_threshold(progress, self.p0, self.ramp)

    @float32_autocast_off
    def forward(
        self,
        thetas: Tensor | Sequence[Tensor],
        progress: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Compute the loss.

        Args:
            thetas: One decision-value map or a sequence of them, each Bx1xHxW.
            progress: Fraction of training done, in [0, 1]; sets the threshold ``p``.
            generator: Optional random generator for the pixel drop.

        Returns:
            Scalar loss (sum over maps of the per-map mean).
        """
        p = self.threshold(progress)
        drop = self.drop_ratio if self.training else 0.0
        total = None
        for theta in _as_list(thetas):
            dist = (torch.sigmoid(theta) - 0.5).abs()
            keep = (dist.detach() >= p).to(dist.dtype)
            per_pixel = keep * (0.5 - dist)
            term = keep_random_pixels(per_pixel, drop, generator).mean()
            total = term if total is None else total + term
        assert total is not None
        return total
