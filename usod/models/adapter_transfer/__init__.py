"""Adapter tuning: transfer a saliency model trained on natural still images to another domain (seed 000)."""

from __future__ import annotations

from usod.models.adapter_transfer.lightning_model import AdapterTransfer, load_base
from usod.models.adapter_transfer.torch_model import EncoderAdapters, ParallelAdapter, encoder_units

__all__ = ["AdapterTransfer", "EncoderAdapters", "ParallelAdapter", "encoder_units", "load_base"]
