"""``save_module`` / ``load_module``: checkpoints of modules built in Python, without a Trainer."""

from __future__ import annotations

from pathlib import Path

import torch

from usod.models.base import CLASS_KEY, load_module, save_module
from usod.models.saliency_detector import SaliencyDetector

TINY = {"name": "test_resnet", "weights": "none"}


def test_save_module_round_trips_through_load_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = SaliencyDetector(backbone=TINY, channels=8, label_update="spr").eval()
    path = save_module(module, tmp_path / "sub" / "detector.ckpt")
    assert path == tmp_path / "sub" / "detector.ckpt"
    assert [p.name for p in path.parent.iterdir()] == ["detector.ckpt"]  # no temporary file left
    raw = torch.load(path, weights_only=True)
    class_path = "usod.models.saliency_detector.lightning_model.SaliencyDetector"
    assert raw[CLASS_KEY] == class_path
    assert raw["hyper_parameters"]["_class_path"] == class_path  # usod validate|test --ckpt_path
    loaded = load_module(path)
    assert isinstance(loaded, SaliencyDetector) and loaded.hparams.label_update == "spr"
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), module(images), rtol=0, atol=0)
