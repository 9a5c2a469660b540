"""The A2S stage-2 saliency detector: a fine-tuned encoder and two Residual Attention Modules (RAMs).

Follows section III-B of A2S (Zhou et al., seed 001), eqs. 7-11:

* every encoder level ``E_i`` is reduced to 64 channels, ``H_i = conv_i(E_i)`` (eq. 8);
* a RAM enhances the topmost map ``H_5`` with two lower levels: ``H'_i = H_i * sigmoid(conv(H_i - H_5))``
  (eq. 9) and ``R = conv(concat(H'_a, H'_b, H_5))`` (eq. 10); the *local* RAM takes ``H_1, H_2``, the
  *regional* RAM ``H_3, H_4``;
* the logit map is ``Y = sum_c(R_l * R_r)`` (eq. 11), upsampled to the input size.

Where the paper is silent, this follows the authors' code (``moothes/A2S-USOD``, ``methods/cornet``):
``conv_i`` is conv3x3 + GroupNorm(32 groups) + ReLU; inside each RAM ``H_5`` first passes a conv3x3 +
GroupNorm + ReLU block (so eq. 9 subtracts ``conv(H_5)``, not ``H_5`` itself) and is upsampled to the
resolution of the RAM's first input; the attention convolutions and the fusion are plain 3x3 convolutions;
before the local RAM ``H_5`` goes through a second block (two conv3x3 + GroupNorm + ReLU, each followed by
x2 bilinear upsampling). ``Y`` is formed at the resolution of ``H_1`` and upsampled bilinearly.

Multimodal input (opt-in, seed 000's modality-agnostic design): with an ``aux_encoder`` the auxiliary image
(depth, thermal or optical flow rendered as 3 channels) runs through that second encoder stream, is reduced
per level by its own ``conv_i^aux`` and added to the RGB level, ``H_i = conv_i(E_i) + conv_i^aux(A_i)``,
before the RAMs. Without it the network is the RGB one above, unchanged.

Encoders with other level counts: the topmost level plays ``H_5``; the lower ``n - 1`` levels are split into
a local group (the first ``ceil((n - 1) / 2)``, finest) and a regional group (the rest). For ``n = 5`` this
is the paper's split; ``n = 4`` gives local ``H_1, H_2`` and regional ``H_3``. At least 3 levels are needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBlock", "ResidualAttentionModule", "SaliencyDetectorModel", "split_levels"]


class ConvBlock(nn.Sequential):
    """conv3x3 -> GroupNorm -> ReLU, the reference code's ``up_conv(..., up=False)``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        groups: GroupNorm groups (``None``: ``out_channels // 2``, as in the reference code).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int | None = None) -> None:
        groups = groups or max(1, out_channels // 2)
        if out_channels % groups != 0:
            raise ValueError(f"out_channels={out_channels} is not divisible by GroupNorm groups={groups}")
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualAttentionModule(nn.Module):
    """RAM (A2S eqs. 9-10): enhance a global map with the residual cues of one or more lower levels.

    Args:
        channels: Channels of every input (64 in A2S).
        num_inputs: Number of lower-level maps (2 in A2S).
    """

    def __init__(self, channels: int = 64, num_inputs: int = 2) -> None:
        super().__init__()
        if num_inputs < 1:
            raise ValueError(f"a RAM needs at least one lower-level input, got {num_inputs}")
        self.num_inputs = num_inputs
        self.global_conv = ConvBlock(channels, channels)
        self.attention = nn.ModuleList(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1) for _ in range(num_inputs)
        )
        self.fuse = nn.Conv2d(channels * (num_inputs + 1), channels, kernel_size=3, padding=1)

    def forward(self, features: Sequence[Tensor], global_feature: Tensor) -> Tensor:
        """Return ``R`` at the resolution of ``features[0]``.

        Args:
            features: The lower-level maps ``H_i`` (BxCxh_ixw_i), finest first.
            global_feature: ``H_5`` (BxCxhxw).
        """
        if len(features) != self.num_inputs:
            raise ValueError(f"RAM built for {self.num_inputs} inputs got {len(features)}")
        size = features[0].shape[-2:]
        glob = F.interpolate(self.global_conv(global_feature), size=size, mode="bilinear")
        enhanced = []
        for conv, feat in zip(self.attention, features, strict=True):
            if feat.shape[-2:] != size:
                feat = F.interpolate(feat, size=size, mode="bilinear")
            enhanced.append(feat * torch.sigmoid(conv(feat - glob)))  # eq. 9
        return self.fuse(torch.cat([*enhanced, glob], dim=1))  # eq. 10


def split_levels(num_levels: int) -> tuple[list[int], list[int], int]:
    """Indices of the local group, the regional group and the global level for ``num_levels`` levels."""
    if num_levels < 3:
        raise ValueError(f"the saliency detector needs an encoder with at least 3 levels, got {num_levels}")
    n_low = num_levels - 1
    n_local = math.ceil(n_low / 2)
    return list(range(n_local)), list(range(n_local, n_low)), num_levels - 1


class SaliencyDetectorModel(nn.Module):
    """Encoder + per-level 64-channel reduction + local and regional RAMs; returns saliency logits.

    The encoder is trained with the rest (A2S fine-tunes it, with a 10x smaller learning rate; see
    :meth:`encoder_parameters` and :meth:`decoder_parameters`).

    Args:
        encoder: Module whose ``forward`` maps Bx3xHxW images in [0, 1] to a list of feature maps (shallow
            to deep) and which exposes ``channels`` (see :mod:`usod.models.backbones`).
        channels: Channels every level is reduced to (64 in A2S).
        aux_encoder: Optional encoder of the auxiliary stream, with the same ``channels`` per level as
            ``encoder`` (e.g. a second copy of it); fine-tuned like the RGB encoder.
    """

    def __init__(self, encoder: nn.Module, channels: int = 64, aux_encoder: nn.Module | None = None) -> None:
        super().__init__()
        enc_channels = [int(c) for c in getattr(encoder, "channels", [])]
        if not enc_channels:
            raise ValueError("encoder must expose `channels` (a list with one entry per feature level)")
        self.local_idx, self.regional_idx, self.global_idx = split_levels(len(enc_channels))
        if channels % 2 != 0:
            raise ValueError(f"channels must be even (GroupNorm uses channels // 2 groups), got {channels}")
        self.encoder = encoder
        self.encoder_channels = enc_channels
        self.channels = channels
        self.reduce = nn.ModuleList(ConvBlock(c, channels) for c in enc_channels)
        self.aux_encoder = aux_encoder
        self.aux_reduce: nn.ModuleList | None = None
        if aux_encoder is not None:
            aux_channels = [int(c) for c in getattr(aux_encoder, "channels", [])]
            if aux_channels != enc_channels:
                raise ValueError(
                    f"aux_encoder levels {aux_channels} differ from the RGB encoder's {enc_channels}"
                )
            self.aux_reduce = nn.ModuleList(ConvBlock(c, channels) for c in enc_channels)
        self.regional = ResidualAttentionModule(channels, len(self.regional_idx))
        self.local = ResidualAttentionModule(channels, len(self.local_idx))
        # The reference code's `local_conv`: refine and upsample H_5 x4 before it meets the finest levels.
        self.global_refine = nn.Sequential(
            nn.Conv2d(channels, channels * 2, kernel_size=3, padding=1),
            nn.GroupNorm(channels, channels * 2),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            ConvBlock(channels * 2, channels),
            nn.Upsample(scale_factor=2, mode="bilinear"),
        )

    @property
    def num_levels(self) -> int:
        """Number of encoder levels used."""
        return len(self.encoder_channels)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder (and of the auxiliary encoder, if any)."""
        aux = list(self.aux_encoder.parameters()) if self.aux_encoder is not None else []
        return [*self.encoder.parameters(), *aux]

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of everything but the encoders (reductions, RAMs)."""
        enc = {id(p) for p in self.encoder_parameters()}
        return [p for p in self.parameters() if id(p) not in enc]

    def decode(
        self,
        features: Sequence[Tensor],
        image_size: Sequence[int],
        aux_features: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Logits ``Y`` (Bx1xHxW at ``image_size``) from the encoder's (and the auxiliary encoder's) maps."""
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        h = [conv(f) for conv, f in zip(self.reduce, features, strict=True)]  # eq. 8
        if self.aux_reduce is not None:
            if aux_features is None or len(aux_features) != self.num_levels:
                raise ValueError(f"the auxiliary stream needs {self.num_levels} auxiliary feature maps")
            h = [hi + conv(a) for hi, conv, a in zip(h, self.aux_reduce, aux_features, strict=True)]
        glob = h[self.global_idx]
        r_regional = self.regional([h[i] for i in self.regional_idx], glob)
        r_local = self.local([h[i] for i in self.local_idx], self.global_refine(glob))
        r_regional = F.interpolate(r_regional, size=r_local.shape[-2:], mode="bilinear")
        y = (r_local * r_regional).sum(dim=1, keepdim=True)  # eq. 11
        return F.interpolate(y, size=tuple(int(s) for s in image_size), mode="bilinear")

    def forward(self, images: Tensor, aux: Tensor | None = None) -> Tensor:
        """Saliency logits Bx1xHxW for Bx3xHxW images in [0, 1] (apply ``sigmoid`` for saliency).

        ``aux`` (Bx3xHxW) is required by a model with an auxiliary stream and ignored otherwise.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape Bx3xHxW, got {tuple(images.shape)}")
        feats = list(self.encoder(images))
        aux_feats = None
        if self.aux_encoder is not None:
            if aux is None or aux.shape != images.shape:
                got = None if aux is None else tuple(aux.shape)
                raise ValueError(f"this model needs an auxiliary image shaped like the images, got {got}")
            aux_feats = list(self.aux_encoder(aux))
        return self.decode(feats, images.shape[-2:], aux_feats)

    @torch.no_grad()
    def predict(self, images: Tensor, aux: Tensor | None = None) -> Tensor:
        """Saliency Bx1xHxW in [0, 1]."""
        return torch.sigmoid(self(images, aux))
