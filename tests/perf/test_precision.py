"""Every module trains and predicts under ``precision="bf16-mixed"``: finite losses, float32 outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tests.helpers.training import quiet_trainer as trainer
from tests.perf.tiny import MODULES, SIZE, WARNINGS, build, samples
from usod.labels import PseudoLabelStore, PseudoLabelWriter

pytestmark = [pytest.mark.filterwarnings(w) for w in WARNINGS]


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.detach())


@pytest.mark.parametrize("name", MODULES)
def test_bf16_mixed_training_and_prediction(name: str, tmp_path: Path) -> None:
    module = build(name, tmp_path)
    data = samples(caption=name == "sdg")
    recorder = LossRecorder()
    # training never reads "mask"; validation scores against it
    trainer(max_epochs=1, precision="bf16-mixed", callbacks=[recorder], num_sanity_val_steps=0).fit(
        module, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2)
    )
    assert len(recorder.losses) == 2
    for loss in recorder.losses:
        assert loss.dtype == torch.float32 and torch.isfinite(loss), loss

    store = PseudoLabelStore(tmp_path / "labels")
    writer = PseudoLabelWriter(store, "bf16")
    outputs = trainer(precision="bf16-mixed", callbacks=[writer]).predict(
        module, DataLoader(data, batch_size=2), return_predictions=True
    )
    for out in outputs:
        assert out["saliency"].dtype == torch.float32
        sal = out["saliency"]
        assert torch.isfinite(sal).all() and 0 <= sal.min() <= sal.max() <= 1
    assert store.current_round() == "bf16"
    label = store.read("img0")
    assert label.dtype == np.uint8 and label.shape == (SIZE + 8, SIZE + 4)


def test_float32_autocast_off_computes_losses_in_float32() -> None:
    from usod.models.precision import float32_autocast_off
    from usod.models.saliency_detector import BCESSIMIoULoss

    logits = torch.randn(2, 1, 32, 32)
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    reference = BCESSIMIoULoss()(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = BCESSIMIoULoss()(logits.bfloat16(), target)
        seen: list[torch.dtype] = []

        @float32_autocast_off
        def probe(x: torch.Tensor) -> torch.Tensor:
            seen.append(x.dtype)
            return torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3))

        out = probe(logits.bfloat16())
    assert inside.dtype == torch.float32
    # only the bf16 rounding of the logits differs from the float32 reference
    assert torch.allclose(inside, reference, atol=2e-2)
    assert seen == [torch.float32] and out.dtype == torch.float32  # conv2d would be bf16 under autocast


def test_bf16_label_tensors_are_stored() -> None:
    from usod.labels.store import to_uint8_label

    label = torch.tensor([[0.0, 0.5], [1.0, 0.25]], dtype=torch.bfloat16)
    assert to_uint8_label(label).tolist() == [[0, 128], [255, 64]]


def test_to_float32_walks_containers() -> None:
    from collections import namedtuple

    from usod.models.precision import to_float32

    Pair = namedtuple("Pair", "a b")
    half = torch.ones(2, dtype=torch.bfloat16)
    out = to_float32({"x": [half, (half, 3)], "p": Pair(half, torch.ones(2, dtype=torch.long)), "s": "id"})
    assert out["x"][0].dtype == torch.float32 and out["x"][1][0].dtype == torch.float32
    assert out["x"][1][1] == 3
    assert isinstance(out["p"], Pair) and out["p"].a.dtype == torch.float32 and out["p"].b.dtype == torch.long
    assert out["s"] == "id"
