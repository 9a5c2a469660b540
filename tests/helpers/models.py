"""Tiny instances of usod modules shared by several test files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The tiny timm test backbone (random weights): the encoder of most module tests.
TINY = {"name": "test_resnet", "weights": "none"}
#: A random ResNet-18, for tests whose numbers need a real ResNet's strides and widths.
RESNET18 = {"name": "resnet18", "weights": "none"}


def tiny_sdg(captions: Sequence[str], image_size: int, phase: str = "fused", **kwargs: Any) -> Any:
    """An ``SDGCaptionGuided`` with random PVT-v2-b0 / MobileNetV3 encoders and 16-wide text layers."""
    from usod.models.sdg import SDGCaptionGuided, Vocabulary

    settings: dict[str, Any] = {
        "backbone": {"name": "pvt_v2_b0", "weights": "none"},
        "caption_backbone": {"name": "mobilenetv3_small_050", "weights": "none", "out_indices": [4]},
        "caption_image_size": image_size,
        "decoder_dim": 16,
        "text_dim": 16,
        "text_layers": 1,
        "text_heads": 2,
    }
    return SDGCaptionGuided(
        phase=phase, vocab=Vocabulary.build(list(captions)).tokens, **{**settings, **kwargs}
    )
