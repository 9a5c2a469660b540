"""SDG-SOD (seed 003): PVT-SOD guided by the word attention maps of an image captioner."""

from __future__ import annotations

from usod.models.sdg.lightning_model import PHASES, SUPERVISIONS, SDGCaptionGuided
from usod.models.sdg.loss import StructureLoss, structure_weights
from usod.models.sdg.text import Vocabulary, read_coco_captions, tokenize
from usod.models.sdg.torch_model import (
    PVTSOD,
    CaptionDecoderLayer,
    CaptioningModel,
    GridEncoder,
    Guidance,
    GuidanceFusion,
    MLPDecoder,
    SDGSODModel,
    TextualDecoder,
    guidance_map,
    normalize_map,
    reverse_captions,
)

__all__ = [
    "PHASES",
    "PVTSOD",
    "SUPERVISIONS",
    "CaptionDecoderLayer",
    "CaptioningModel",
    "GridEncoder",
    "Guidance",
    "GuidanceFusion",
    "MLPDecoder",
    "SDGCaptionGuided",
    "SDGSODModel",
    "StructureLoss",
    "TextualDecoder",
    "Vocabulary",
    "guidance_map",
    "normalize_map",
    "read_coco_captions",
    "reverse_captions",
    "structure_weights",
    "tokenize",
]
