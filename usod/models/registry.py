"""Registry of usod's LightningModules (``usod list models``)."""

from __future__ import annotations

from usod.models.adapter_transfer import AdapterTransfer
from usod.models.base import USODModule
from usod.models.cue_extractor import CueExtractor
from usod.models.deepusps import DeepUSPSRefiner
from usod.models.saliency_detector import SaliencyDetector
from usod.models.sdg import SDGCaptionGuided

#: Short name -> LightningModule class.
MODELS: dict[str, type[USODModule]] = {
    "adapter_transfer": AdapterTransfer,
    "cue_extractor": CueExtractor,
    "deepusps_refiner": DeepUSPSRefiner,
    "saliency_detector": SaliencyDetector,
    "sdg_caption_guided": SDGCaptionGuided,
}
