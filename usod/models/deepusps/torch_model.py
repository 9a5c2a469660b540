"""The fully convolutional saliency network of DeepUSPS: an encoder and a light top-down decoder.

DeepUSPS (Sec. 4.1) uses a DRN (dilated ResNet) pretrained on Cityscapes with its last layer replaced by a
one-channel convolution. usod takes the encoder from :mod:`usod.models.backbones` (any timm model; the bundled
EfficientNet-Lite0 by default) and, since such encoders downsample to stride 32 where a DRN stays at stride 8,
adds a small FPN-style decoder: every level is projected to ``channels`` by a 1x1 convolution, the levels
are summed top-down with bilinear upsampling, and a conv3x3 + GroupNorm + ReLU block and a 1x1 convolution
give the logits at the finest level, upsampled to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DeepUSPSModel"]


class DeepUSPSModel(nn.Module):
    """Encoder + top-down decoder; ``forward`` returns saliency logits Bx1xHxW.

    Args:
        encoder: Module mapping Bx3xHxW images in [0, 1] to a list of feature maps (shallow to deep) and
            exposing ``channels`` (see :mod:`usod.models.backbones`).
        channels: Decoder width.
    """

    def __init__(self, encoder: nn.Module, channels: int = 64) -> None:
        super().__init__()
        enc_channels = [int(c) for c in getattr(encoder, "channels", [])]
        if not enc_channels:
            raise ValueError("encoder must expose `channels` (a list with one entry per feature level)")
        if channels < 2 or channels % 2:
            raise ValueError(f"channels must be an even number >= 2, got {channels}")
        self.encoder = encoder
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, kernel_size=1) for c in enc_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.GroupNorm(channels // 2, channels),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(channels, 1, kernel_size=1)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder."""
        return list(self.encoder.parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of everything but the encoder."""
        enc = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in enc]

    def forward(self, images: Tensor) -> Tensor:
        """Saliency logits Bx1xHxW for Bx3xHxW images in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape Bx3xHxW, got {tuple(images.shape)}")
        feats = list(self.encoder(images))
        if len(feats) != len(self.lateral):
            raise ValueError(f"encoder gave {len(feats)} feature maps, expected {len(self.lateral)}")
        x = self.lateral[-1](feats[-1])
        for lateral, feat in zip(self.lateral[-2::-1], feats[-2::-1], strict=True):
            x = F.interpolate(x, size=feat.shape[-2:], mode="bilinear", align_corners=False) + lateral(feat)
        logits = self.head(self.fuse(x))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Saliency Bx1xHxW in [0, 1]."""
        return torch.sigmoid(self(images))
