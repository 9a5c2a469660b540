"""The opt-in auxiliary stream (depth, thermal, flow) of the CueExtractor and the SaliencyDetector."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from tests.helpers.models import TINY
from usod.models.aux_input import batch_aux, flip_allowed
from usod.models.base import load_module
from usod.models.cue_extractor import CueExtractor, CueExtractorModel
from usod.models.saliency_detector import SaliencyDetector

SIZE = 32

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),
]


def make_batch(b: int = 2, key: str | None = "depth", seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, 1, SIZE, SIZE)
    mask[:, :, 8:24, 10:26] = 1.0
    batch = {
        "image": (0.2 + 0.1 * torch.rand(b, 3, SIZE, SIZE, generator=g) + 0.5 * mask).clamp(0, 1),
        "pseudo": mask.clone(),
        "id": [f"s{i}" for i in range(b)],
        "size": torch.tensor([[SIZE, SIZE]] * b),
    }
    if key is not None:
        batch[key] = (0.1 + 0.8 * mask + 0.05 * torch.rand(b, 3, SIZE, SIZE, generator=g)).expand(
            b, 3, -1, -1
        )
        batch[key] = batch[key].clone()
    return batch


# ------------------------------------------------------------------------------------------ batch_aux
def test_batch_aux_selects_resizes_and_complains() -> None:
    batch = make_batch(key="thermal")
    images = batch["image"]
    assert batch_aux(batch, "none", images) == (None, None)
    key, aux = batch_aux(batch, "auto", images)
    assert key == "thermal" and torch.equal(aux, batch["thermal"])
    assert batch_aux(batch, "thermal", images)[0] == "thermal"
    with pytest.raises(ValueError, match="batch\\['depth'\\]"):
        batch_aux(batch, "depth", images)
    with pytest.raises(ValueError, match="with_flow=True"):
        batch_aux(batch, "flow", images)
    both = {**batch, "depth": batch["thermal"]}
    with pytest.raises(ValueError, match="exactly one"):
        batch_aux(both, "auto", images)
    small = {**batch, "thermal": batch["thermal"][:, :, :16, :16]}
    assert batch_aux(small, "auto", images)[1].shape == images.shape
    with pytest.raises(ValueError, match="2x3xHxW"):
        batch_aux({**batch, "thermal": batch["thermal"][:, :1]}, "auto", images)
    with pytest.raises(ValueError, match="aux_modality"):
        batch_aux(batch, "lidar", images)
    assert flip_allowed("depth") and flip_allowed(None) and not flip_allowed("flow")


# ------------------------------------------------------------------------------------------ stage 1
def test_cue_extractor_model_concatenates_the_two_streams() -> None:
    from usod.models.backbones import build_encoder

    torch.manual_seed(0)
    enc = build_encoder(TINY, frozen=True)
    model = CueExtractorModel(enc, head_channels=8, aux_input=True)
    rgb_only = CueExtractorModel(build_encoder(TINY, frozen=True), head_channels=8)
    assert [h.conv.in_channels for h in model.stage_heads] == [2 * c for c in enc.channels[-3:]]
    assert [h.conv.in_channels for h in rgb_only.stage_heads] == enc.channels[-3:]
    batch = make_batch()
    feats = model.encode(batch["image"], batch["depth"])
    rgb_feats = enc(batch["image"])[-3:]
    aux_feats = enc(batch["depth"])[-3:]
    for f, r, a in zip(feats, rgb_feats, aux_feats, strict=True):
        torch.testing.assert_close(f, torch.cat([r, a], dim=1))
    out = model(batch["image"], batch["depth"])
    assert out.saliency.shape == (2, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="auxiliary image"):
        model(batch["image"])


def test_cue_extractor_aux_output_depends_on_the_aux_image_and_rgb_ignores_it() -> None:
    torch.manual_seed(0)
    module = CueExtractor(backbone=TINY, head_channels=8, aux_modality="auto")
    batch = make_batch(key="depth")
    a = module.predict_step(batch, 0)["saliency"]
    other = {**batch, "depth": batch["depth"].flip(-2)}
    assert not torch.allclose(a, module.predict_step(other, 0)["saliency"])
    torch.manual_seed(0)
    rgb = CueExtractor(backbone=TINY, head_channels=8)
    plain = make_batch(key=None)
    torch.testing.assert_close(rgb.predict_step(plain, 0)["saliency"], rgb.predict_step(batch, 0)["saliency"])


def test_cue_extractor_flips_the_aux_stream_except_flow(monkeypatch) -> None:
    torch.manual_seed(0)
    module = CueExtractor(backbone=TINY, head_channels=8, aux_modality="auto", train_flip="both")
    seen = []
    real = module.model.encode

    def spy(images, aux=None):
        seen.append((images.clone(), aux.clone()))
        return real(images, aux)

    monkeypatch.setattr(module.model, "encode", spy)
    batch = make_batch(key="depth")
    module.compute_training_loss(batch)
    images, aux = seen[-1]
    assert images.shape[0] == 4 and torch.equal(aux[2:], batch["depth"].flip(-1))
    flow_batch = make_batch(key="flow")
    module.compute_training_loss(flow_batch)
    images, aux = seen[-1]
    assert images.shape[0] == 2 and torch.equal(aux, flow_batch["flow"]), "flow must never be mirrored"


def test_cue_extractor_feature_cache_fingerprints_the_aux_image() -> None:
    torch.manual_seed(0)
    module = CueExtractor(backbone=TINY, head_channels=8, aux_modality="depth", feature_cache=True)
    batch = make_batch()
    module.compute_training_loss(batch)
    assert len(module.feature_cache) == 4
    with pytest.raises(RuntimeError, match="differs from the one cached"):
        module.compute_training_loss({**batch, "depth": 1.0 - batch["depth"]})


# ------------------------------------------------------------------------------------------ stage 2
def test_saliency_detector_aux_stream_is_a_separate_trainable_encoder() -> None:
    torch.manual_seed(0)
    module = SaliencyDetector(backbone=TINY, channels=8, aux_modality="thermal", label_update="none")
    model = module.model
    assert model.aux_encoder is not None and model.aux_encoder is not model.encoder
    enc_ids = {id(p) for p in model.encoder_parameters()}
    assert {id(p) for p in model.aux_encoder.parameters()} <= enc_ids
    assert not enc_ids & {id(p) for p in model.decoder_parameters()}
    batch = make_batch(key="thermal")
    loss = module.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is not None for p in model.aux_reduce.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aux_encoder.parameters())
    with pytest.raises(ValueError, match="batch\\['thermal'\\]"):
        module.training_step(make_batch(key="depth"), 0)
    # the RGB model has no auxiliary parts and ignores auxiliary keys
    torch.manual_seed(0)
    rgb = SaliencyDetector(backbone=TINY, channels=8, label_update="none")
    assert rgb.model.aux_encoder is None and rgb.model.aux_reduce is None
    assert not any("aux" in k for k in rgb.state_dict())
    plain = make_batch(key=None)
    rgb.eval()
    torch.testing.assert_close(rgb.predict_step(plain, 0)["saliency"], rgb.predict_step(batch, 0)["saliency"])


def test_saliency_detector_never_flips_flow(monkeypatch) -> None:
    torch.manual_seed(0)
    module = SaliencyDetector(
        backbone=TINY, channels=8, aux_modality="flow", label_update="none", loss="iou_ms", predict_flip=True
    )
    calls = []
    real = module.model.forward

    def spy(images, aux=None):
        calls.append((images.clone(), None if aux is None else aux.clone()))
        return real(images, aux)

    monkeypatch.setattr(module.model, "forward", spy)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros(*a))  # would flip every image
    batch = make_batch(key="flow")
    module.training_step(batch, 0)
    assert torch.equal(calls[0][0], batch["image"]) and torch.equal(calls[0][1], batch["flow"])
    assert calls[1][1].shape[0] == 2  # the multi-scale view also gets the (resized) flow
    calls.clear()
    module.predict_step(batch, 0)
    assert len(calls) == 1, "predict_flip is skipped with flow"


def test_aux_checkpoints_round_trip_through_load_module(tmp_path) -> None:
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    batch = make_batch(key="depth")
    samples = [{k: (v[i] if not isinstance(v, list) else v[i]) for k, v in batch.items()} for i in range(2)]
    loader = DataLoader(samples, batch_size=2)
    for module in (
        CueExtractor(backbone=TINY, head_channels=8, aux_modality="depth"),
        SaliencyDetector(backbone=TINY, channels=8, aux_modality="auto", label_update="none"),
    ):
        trainer = pl.Trainer(
            max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        trainer.fit(module, loader)
        path = tmp_path / f"{type(module).__name__}.ckpt"
        trainer.save_checkpoint(path)
        loaded = load_module(path)
        assert loaded.hparams.aux_modality == module.hparams.aux_modality
        module.eval()
        torch.testing.assert_close(
            loaded.predict_step(batch, 0)["saliency"], module.predict_step(batch, 0)["saliency"]
        )
