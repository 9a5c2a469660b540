"""Tiny instances of every usod LightningModule and their data, for the performance tests."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from tests.helpers.models import TINY
from usod.models.base import save_module

SIZE = 32

WARNINGS = [
    "ignore:.*does not have many workers.*",
    "ignore:.*LeafSpec.*",
    "ignore:.*val_dataloader.*",
    "ignore:.*in eval mode.*",
    "ignore:.*self.trainer` reference is not registered.*",
    "ignore:.*bf16.*",
    "ignore:.*precision.*",
    "ignore:.*untrained captioner.*",
]


def samples(n: int = 4, caption: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        mask = torch.zeros(1, SIZE, SIZE)
        mask[:, 6 + i : 22 + i, 8:24] = 1.0
        sample = {
            "image": (0.2 + 0.2 * torch.rand(3, SIZE, SIZE, generator=g) + 0.5 * mask).clamp(0, 1),
            "pseudo": mask.clone(),
            "id": f"img{i}",
            "size": torch.tensor([SIZE + 8, SIZE + 4]),
            "mask": mask.clone(),
        }
        if caption:
            sample["caption"] = "a red square on the left"
        out.append(sample)
    return out


def build(name: str, tmp_path: Path) -> pl.LightningModule:
    """A tiny instance of every usod LightningModule."""
    torch.manual_seed(0)
    if name == "cue_extractor":
        from usod.models.cue_extractor import CueExtractor

        return CueExtractor(backbone=TINY, head_channels=8, lr_milestones=())
    if name == "saliency_detector":
        from usod.models.saliency_detector import SaliencyDetector

        return SaliencyDetector(backbone=TINY, channels=8, label_update="spr", spr_warmup_epochs=0)
    if name == "deepusps":
        from usod.models.deepusps import DeepUSPSRefiner

        return DeepUSPSRefiner(backbone=TINY, channels=8, crf={"n_iters": 1})
    if name == "sdg":
        from tests.helpers.models import tiny_sdg

        return tiny_sdg(["a red square on the left"], SIZE, max_caption_length=4)
    if name == "adapter_transfer":
        from usod.models.adapter_transfer import AdapterTransfer
        from usod.models.saliency_detector import SaliencyDetector

        base = SaliencyDetector(backbone=TINY, channels=8, label_update="none")
        path = save_module(base, tmp_path / "base.ckpt")
        return AdapterTransfer(base=str(path), label_update="spr", spr_warmup_epochs=0)
    raise KeyError(name)


MODULES = ["cue_extractor", "saliency_detector", "deepusps", "sdg", "adapter_transfer"]
