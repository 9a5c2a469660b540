"""Every module trains and predicts under ``precision="bf16-mixed"``: finite losses, float32 outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from usod.labels import PseudoLabelStore, PseudoLabelWriter
from usod.models.base import CLASS_KEY

SIZE = 32
TINY = {"name": "test_resnet", "weights": "none"}

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*val_dataloader.*"),
    pytest.mark.filterwarnings("ignore:.*in eval mode.*"),
    pytest.mark.filterwarnings("ignore:.*self.trainer` reference is not registered.*"),
    pytest.mark.filterwarnings("ignore:.*bf16.*"),
    pytest.mark.filterwarnings("ignore:.*precision.*"),
    pytest.mark.filterwarnings("ignore:.*untrained captioner.*"),
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


def trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


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
        from usod.models.sdg import SDGCaptionGuided, Vocabulary

        return SDGCaptionGuided(
            phase="fused",
            vocab=Vocabulary.build(["a red square on the left"]).tokens,
            backbone={"name": "pvt_v2_b0", "weights": "none"},
            caption_backbone={"name": "mobilenetv3_small_050", "weights": "none", "out_indices": [4]},
            caption_image_size=SIZE,
            decoder_dim=16,
            text_dim=16,
            text_layers=1,
            text_heads=2,
            max_caption_length=4,
        )
    if name == "adapter_transfer":
        from usod.models.adapter_transfer import AdapterTransfer
        from usod.models.saliency_detector import SaliencyDetector

        base = SaliencyDetector(backbone=TINY, channels=8, label_update="none")
        path = tmp_path / "base.ckpt"
        torch.save(
            {
                "state_dict": base.state_dict(),
                "hyper_parameters": dict(base.hparams),
                CLASS_KEY: f"{type(base).__module__}.{type(base).__qualname__}",
            },
            path,
        )
        return AdapterTransfer(base=str(path), label_update="spr", spr_warmup_epochs=0)
    raise KeyError(name)


MODULES = ["cue_extractor", "saliency_detector", "deepusps", "sdg", "adapter_transfer"]


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
