"""The saliency cue extractor network of A2S stage 1 (plain PyTorch, no Lightning).

A frozen pretrained encoder feeds its three deepest stages ``E_3, E_4, E_5`` to small trainable heads
(A2S eq. 1)::

    F_i = SE_i(E_i),  i = 3, 4, 5          (conv3x3 -> GroupNorm -> ReLU -> squeeze-and-excitation)
    F   = SE_0(concat(up(F_3), up(F_4), up(F_5)))

Every map is turned into decision values by the adaptive decision boundary (eq. 3),
``theta^n = 1^T (f^n - mean_n f^n)``, and the saliency map is ``sigmoid(sign * theta)`` with the sign chosen
by a foreground prior (eq. 5 or a corner/border rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SignRule = Literal["area", "corner", "border"]
SIGN_RULES: tuple[str, ...] = ("area", "corner", "border")


def adaptive_decision_values(features: Tensor) -> Tensor:
    """Adaptive decision boundary (A2S eq. 3): channel sum of the spatially mean-centred features.

    ``theta^n = 1^T (f^n - (1/N) sum_m f^m)`` where ``n`` runs over the ``N = H * W`` pixels of one image.

    Args:
        features: BxCxHxW feature map.

    Returns:
        Bx1xHxW decision values; each image's map has zero spatial mean.
    """
    if features.ndim != 4:
        raise ValueError(f"features must have shape BxCxHxW, got {tuple(features.shape)}")
    centred = features - features.mean(dim=(2, 3), keepdim=True)
    return centred.sum(dim=1, keepdim=True)


def _fraction_to_sign(fraction: Tensor, fallback: Tensor) -> Tensor:
    """-1 where more than half is positive, +1 where less, ``fallback`` on an exact tie."""
    sign = torch.where(fraction > 0.5, -torch.ones_like(fraction), torch.ones_like(fraction))
    return torch.where(fraction == 0.5, fallback, sign)


def foreground_sign(theta: Tensor, rule: SignRule = "area") -> Tensor:
    """Sign that makes positive decision values the foreground.

    * ``"area"`` (A2S eq. 5): with ``S_0 = {theta < 0}`` and ``S_1 = {theta >= 0}``, the sign is +1 if
      ``|S_0| >= |S_1|`` and -1 otherwise, i.e. the larger region is taken as background.
    * ``"corner"``: flip when more than two of the four corner pixels are positive (corners are usually
      background). The A2S-v2 code also flips on a 2-2 tie; here a tie falls back to the area rule, which
      breaks it with more evidence.
    * ``"border"``: flip when more than half of the one-pixel image border is positive; ties fall back to
      the area rule.

    Args:
        theta: Bx1xHxW decision values.
        rule: ``"area"``, ``"corner"`` or ``"border"``.

    Returns:
        Bx1x1x1 tensor of +1/-1 in ``theta``'s dtype.
    """
    if theta.ndim != 4 or theta.shape[1] != 1:
        raise ValueError(f"theta must have shape Bx1xHxW, got {tuple(theta.shape)}")
    if rule not in SIGN_RULES:
        raise ValueError(f"unknown sign rule {rule!r}; expected one of {SIGN_RULES}")
    positive = (theta >= 0).to(theta.dtype)
    area_fraction = positive.mean(dim=(1, 2, 3), keepdim=True)
    ones = torch.ones_like(area_fraction)
    area_sign = torch.where(area_fraction > 0.5, -ones, ones)
    if rule == "area":
        return area_sign
    if rule == "corner":
        corners = positive[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
        return _fraction_to_sign(corners.mean(dim=(1, 2), keepdim=True).unsqueeze(-1), area_sign)
    h, w = theta.shape[-2:]
    border = torch.ones(h, w, dtype=torch.bool, device=theta.device)
    if h > 2 and w > 2:
        border[1:-1, 1:-1] = False
    fraction = positive[:, :, border].mean(dim=(1, 2)).view(-1, 1, 1, 1)
    return _fraction_to_sign(fraction, area_sign)


def saliency_from_activation(
    theta: Tensor, rule: SignRule = "area", size: Sequence[int] | None = None
) -> Tensor:
    """Saliency map ``sigmoid(sign(theta) * theta)`` (the part of A2S eq. 6 before CRF and median filter).

    The sign is decided on ``theta`` at its own resolution; when ``size`` is given the signed decision
    values are resized bilinearly before the sigmoid, as in the reference implementation.

    Args:
        theta: Bx1xHxW decision values.
        rule: Foreground sign rule, see :func:`foreground_sign`.
        size: Optional output (height, width).

    Returns:
        Bx1xHxW (or Bx1x``size``) saliency in [0, 1], foreground high.
    """
    signed = theta * foreground_sign(theta, rule)
    if size is not None and tuple(signed.shape[-2:]) != tuple(size):
        signed = F.interpolate(signed, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.sigmoid(signed)


class SEBlock(nn.Module):
    """Squeeze-and-excitation gate: ``x * sigmoid(conv1x1(avgpool(x)))``.

    As in the A2S reference code the excitation is a single CxC 1x1 convolution (no bottleneck), a deviation
    from the original SE block kept because the heads are tiny.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Gate the channels of ``x`` (BxCxHxW)."""
        return x * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))


class AdaptationHead(nn.Module):
    """conv3x3 -> GroupNorm -> ReLU -> SE: the trainable block of A2S eq. 1."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int = 1) -> None:
        super().__init__()
        if out_channels % norm_groups != 0:
            raise ValueError(f"head channels ({out_channels}) must be divisible by norm_groups={norm_groups}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(norm_groups, out_channels)
        self.act = nn.ReLU(inplace=True)
        self.se = SEBlock(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """Map BxC_inxHxW to BxC_outxHxW."""
        return self.se(self.act(self.norm(self.conv(x))))


@dataclass
class CueExtractorOutput:
    """What :class:`CueExtractorModel` returns.

    Attributes:
        stage_thetas: Decision values of ``F_3, F_4, F_5`` (shallow to deep), each Bx1xh_ixw_i at its
            stage's resolution.
        fused_theta: Decision values of the fused map ``F``, Bx1xhxw at the fusion resolution.
        saliency: ``sigmoid(sign * fused_theta)`` resized to the input size, Bx1xHxW in [0, 1].
        sign: The foreground sign applied to ``fused_theta``, Bx1x1x1.
    """

    stage_thetas: list[Tensor]
    fused_theta: Tensor
    saliency: Tensor
    sign: Tensor

    @property
    def all_thetas(self) -> list[Tensor]:
        """The per-stage maps followed by the fused one: everything the stage-1 losses supervise."""
        return [*self.stage_thetas, self.fused_theta]


class CueExtractorModel(nn.Module):
    """Frozen encoder + A2S adaptation heads producing activation (decision-value) maps and saliency.

    Args:
        encoder: Feature extractor whose ``forward`` returns a list of feature maps (shallow to deep) and
            which exposes ``channels`` and ``strides`` lists (see :mod:`usod.models.backbones`). It is frozen
            here: no gradients, kept in eval mode (BatchNorm statistics fixed) even when the model trains.
        head_channels: Channels of every head (A2S uses the channel count of the encoder's first stage, 64
            for ResNet-50).
        norm_groups: GroupNorm groups in the heads (1, as in the reference code).
        fuse_stride: Stride (w.r.t. the input) of the fused map. ``None`` uses the smallest stride the
            encoder reports, as the reference code fuses at the resolution of the first encoder stage.
        sign_rule: Foreground sign rule used for ``saliency`` (``"area"``, ``"corner"`` or ``"border"``).
        num_stages: Number of deepest encoder stages used (3 in the paper).
        aux_input: Two-stream model for RGB + an auxiliary 3-channel image (depth, thermal or flow, seed 000's
            modality-agnostic design): the auxiliary image goes through the same frozen encoder as a stream
            of its own and each stage head sees the concatenation ``[E_i(rgb), E_i(aux)]`` (twice the input
            channels). A separate copy of a frozen encoder would compute exactly the same features, so the
            weights are shared. ``False`` (default) is the RGB model of A2S, unchanged.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head_channels: int = 64,
        norm_groups: int = 1,
        fuse_stride: int | None = None,
        sign_rule: SignRule = "area",
        num_stages: int = 3,
        aux_input: bool = False,
    ) -> None:
        super().__init__()
        channels = list(getattr(encoder, "channels", []))
        strides = list(getattr(encoder, "strides", []))
        if len(channels) < num_stages or len(strides) != len(channels):
            raise ValueError(
                f"encoder must expose `channels` and `strides` for at least {num_stages} stages, "
                f"got channels={channels}, strides={strides}"
            )
        if sign_rule not in SIGN_RULES:
            raise ValueError(f"unknown sign rule {sign_rule!r}; expected one of {SIGN_RULES}")
        self.encoder = encoder
        self._freeze_encoder()
        self.num_stages = num_stages
        self.stage_channels = channels[-num_stages:]
        self.stage_strides = strides[-num_stages:]
        self.fuse_stride = int(fuse_stride) if fuse_stride is not None else int(min(strides))
        if self.fuse_stride < 1:
            raise ValueError(f"fuse_stride must be >= 1, got {fuse_stride}")
        self.sign_rule: SignRule = sign_rule
        self.aux_input = bool(aux_input)
        #: Input channels of each stage head (doubled by the auxiliary stream).
        self.head_in_channels = [c * (2 if self.aux_input else 1) for c in self.stage_channels]
        self.stage_heads = nn.ModuleList(
            AdaptationHead(c, head_channels, norm_groups) for c in self.head_in_channels
        )
        self.fusion_head = AdaptationHead(head_channels * num_stages, head_channels, norm_groups)

    def _freeze_encoder(self) -> None:
        freeze = getattr(self.encoder, "freeze", None)
        if callable(freeze):
            freeze()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> CueExtractorModel:
        """Set train/eval mode on the heads; the frozen encoder always stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (the heads; the encoder is frozen)."""
        return [*self.stage_heads.parameters(), *self.fusion_head.parameters()]

    def features(self, images: Tensor, aux: Tensor | None = None) -> list[Tensor]:
        """Encoder features of the stages the heads use, with gradients (for adapters inside the encoder).

        Args:
            images: Bx3xHxW in [0, 1] (the encoder normalises internally).
            aux: Bx3xHxW auxiliary image; required by (and only used by) an ``aux_input`` model.

        Returns:
            The ``num_stages`` deepest feature maps, shallow to deep; with ``aux_input`` each is the
            channel concatenation of the RGB and auxiliary features.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape Bx3xHxW, got {tuple(images.shape)}")
        if self.aux_input:
            if aux is None or aux.shape != images.shape:
                got = None if aux is None else tuple(aux.shape)
                raise ValueError(f"this model needs an auxiliary image shaped like the images, got {got}")
            images = torch.cat([images, aux])  # one encoder pass for both streams
        feats = list(self.encoder(images))
        if len(feats) != len(self.encoder.channels):
            raise RuntimeError(
                f"encoder returned {len(feats)} feature maps, expected {len(self.encoder.channels)}"
            )
        feats = feats[-self.num_stages :]
        if self.aux_input:
            feats = [torch.cat(f.chunk(2), dim=1) for f in feats]
        return feats

    @torch.no_grad()
    def encode(self, images: Tensor, aux: Tensor | None = None) -> list[Tensor]:
        """Frozen-encoder features of the stages the heads use (no gradients; see :meth:`features`)."""
        return [f.detach() for f in self.features(images, aux)]

    def fusion_size(self, image_size: Sequence[int]) -> tuple[int, int]:
        """Spatial size of the fused map for an input of ``image_size`` (H, W)."""
        h, w = int(image_size[0]), int(image_size[1])
        return math.ceil(h / self.fuse_stride), math.ceil(w / self.fuse_stride)

    def decode(self, features: Sequence[Tensor], image_size: Sequence[int]) -> CueExtractorOutput:
        """Run the heads on (possibly cached) encoder features.

        Args:
            features: The ``num_stages`` deepest encoder features, shallow to deep.
            image_size: (H, W) of the input images, for the fusion and saliency resolutions.

        Returns:
            The decision-value maps and the saliency map.
        """
        if len(features) != self.num_stages:
            raise ValueError(f"expected {self.num_stages} feature maps, got {len(features)}")
        stage_feats = []
        for i, (head, feat) in enumerate(zip(self.stage_heads, features, strict=True)):
            if feat.shape[1] != self.head_in_channels[i]:
                raise ValueError(
                    f"feature map {i} has {feat.shape[1]} channels, "
                    f"the head expects {self.head_in_channels[i]}"
                )
            stage_feats.append(head(feat.float()))
        fuse_size = self.fusion_size(image_size)
        upsampled = [
            f if tuple(f.shape[-2:]) == fuse_size else F.interpolate(f, fuse_size, mode="bilinear")
            for f in stage_feats
        ]
        fused = self.fusion_head(torch.cat(upsampled, dim=1))
        stage_thetas = [adaptive_decision_values(f) for f in stage_feats]
        fused_theta = adaptive_decision_values(fused)
        sign = foreground_sign(fused_theta, self.sign_rule)
        saliency = saliency_from_activation(fused_theta, self.sign_rule, size=tuple(image_size))
        return CueExtractorOutput(stage_thetas, fused_theta, saliency, sign)

    def forward(self, images: Tensor, aux: Tensor | None = None) -> CueExtractorOutput:
        """Encode ``images`` (Bx3xHxW in [0, 1]; ``aux`` too for an ``aux_input`` model), run the heads."""
        return self.decode(self.encode(images, aux), images.shape[-2:])
