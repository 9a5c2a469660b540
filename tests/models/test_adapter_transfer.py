"""Adapter tuning (seed 000): parallel adapters, their placement and hooks, and the AdapterTransfer module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers.models import TINY
from tests.helpers.training import quiet_trainer as trainer
from usod.data.io import InvalidInputError
from usod.labels import LabelRoundWriter, PseudoLabelStore
from usod.models.adapter_transfer import AdapterTransfer, EncoderAdapters, ParallelAdapter, encoder_units
from usod.models.backbones import build_encoder
from usod.models.base import load_module, save_module
from usod.models.cue_extractor import CueExtractor
from usod.models.saliency_detector import SaliencyDetector

SIZE = 32

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),
    pytest.mark.filterwarnings("ignore:.*self.trainer` reference is not registered.*"),
    pytest.mark.filterwarnings("ignore:.*val_dataloader.*"),
]


@pytest.fixture
def detector_ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_module(
        SaliencyDetector(backbone=TINY, channels=8, label_update="olr"), tmp_path / "base.ckpt"
    )


def make_samples(n: int = 4, flow: bool = False, pseudo: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        mask = torch.zeros(1, SIZE, SIZE)
        mask[:, 6 + i : 22 + i, 8:24] = 1.0
        sample = {
            "image": (0.2 + 0.2 * torch.rand(3, SIZE, SIZE, generator=g) + 0.5 * mask).clamp(0, 1),
            "id": f"seq/{i:05d}",
            "size": torch.tensor([SIZE, SIZE]),
            "mask": mask,
        }
        if flow:
            sample["flow"] = (1.0 - 0.6 * mask).expand(3, -1, -1).clone()
        if pseudo:
            sample["pseudo"] = mask.clone()
        out.append(sample)
    return out


# ------------------------------------------------------------------------------------------ adapters
def test_parallel_adapter_starts_at_zero_and_matches_the_layer_output_shape() -> None:
    torch.manual_seed(0)
    adapter = ParallelAdapter(6, 10, hidden=4, aux=True)
    x = torch.rand(2, 6, 9, 9)
    assert torch.equal(adapter(x, (5, 5)), torch.zeros(2, 10, 5, 5))
    torch.nn.init.normal_(adapter.up.weight)
    out = adapter(x, (5, 5))
    assert out.shape == (2, 10, 5, 5) and out.abs().sum() > 0
    assert not torch.allclose(adapter(x, (5, 5), aux=torch.rand(2, 6, 9, 9)), out)
    assert sum(p.numel() for p in adapter.parameters()) == (6 * 4 + 4) * 2 + (9 * 4 + 4) + (4 * 10 + 10)


def test_encoder_units_and_adapted_levels() -> None:
    resnet = build_encoder(TINY)
    assert [(n, lv) for n, _, lv in encoder_units(resnet)][-3:] == [
        ("layer2", 2),
        ("layer3", 3),
        ("layer4", 4),
    ]
    assert EncoderAdapters(resnet, levels=2).unit_names == ["layer3", "layer4"]
    assert EncoderAdapters(resnet, levels=1).unit_names == ["layer4"]
    lite = build_encoder({"name": "tf_efficientnet_lite0", "weights": "none"})
    assert EncoderAdapters(lite, levels=2).unit_names == ["blocks.3", "blocks.4", "blocks.5", "blocks.6"]
    with pytest.raises(ValueError, match="levels"):
        EncoderAdapters(resnet, levels=6)
    with pytest.raises(ValueError, match="timm features_only"):
        encoder_units(torch.nn.Conv2d(3, 3, 1))


def test_hooks_add_the_adapter_output_to_the_deep_levels_only() -> None:
    torch.manual_seed(0)
    enc = build_encoder(TINY, frozen=True)
    x = torch.rand(2, 3, SIZE, SIZE)
    before = enc(x)
    adapters = EncoderAdapters(enc, levels=2, aux=True)
    for f, g in zip(before, enc(x), strict=True):
        assert torch.equal(f, g), "zero-initialised adapters leave the encoder unchanged"
    for adapter in adapters.adapters.values():
        torch.nn.init.normal_(adapter.up.weight, std=0.1)
    after = enc(x)
    assert all(torch.equal(f, g) for f, g in zip(before[:3], after[:3], strict=True))
    assert all(not torch.allclose(f, g) for f, g in zip(before[3:], after[3:], strict=True))
    with adapters.disabled():
        assert all(torch.equal(f, g) for f, g in zip(before, enc(x), strict=True))
    # F' = T(F) + T_a(F) exactly, on the last unit
    layer4_in = enc.model.layer3(enc.model.layer2(enc.model.layer1(enc.model.maxpool(enc.model.act1(
        enc.model.bn1(enc.model.conv1((x - enc._mean) / enc._std)))))))  # fmt: skip
    with adapters.disabled():
        t = enc.model.layer4(layer4_in)
    expected = t + adapters.adapters["layer4"](layer4_in, t.shape[-2:])
    torch.testing.assert_close(after[4], expected)
    # the auxiliary stream: its inputs are recorded with adapters idle and change the adapted output
    aux = torch.rand(2, 3, SIZE, SIZE)
    with adapters.aux_context(enc, aux):
        assert set(adapters._aux_inputs) == {"layer3", "layer4"}
        with_aux = enc(x)
    assert not adapters._aux_inputs
    assert not torch.allclose(with_aux[4], after[4])
    adapters.remove_hooks()
    assert all(torch.equal(f, g) for f, g in zip(before, enc(x), strict=True))


# ------------------------------------------------------------------------------------------ module
def test_transfer_starts_at_the_base_and_trains_only_the_adapters(detector_ckpt: Path) -> None:
    module = AdapterTransfer(base=str(detector_ckpt), label_update="none", initial_labels="raw")
    base = load_module(detector_ckpt)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(module(x), torch.sigmoid(base(x)))
    counts = module.parameter_counts()
    assert counts["trained"] == sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert 0 < counts["trained"] < 0.2 * counts["total"]
    assert module.hparams.base_class.endswith("SaliencyDetector")
    assert module.hparams.base_hparams["backbone"]["weights"] == "none"
    base_state = {k: v.clone() for k, v in module.base.state_dict().items()}
    trainer(2).fit(module, DataLoader(make_samples(), batch_size=2))
    for key, value in module.base.state_dict().items():
        assert torch.equal(value, base_state[key]), f"base tensor {key} changed"
    assert any(p.abs().sum() > 0 for n, p in module.adapters.named_parameters() if ".up." in n)


def test_initial_labels_are_the_crf_refined_base_predictions(detector_ckpt: Path) -> None:
    module = AdapterTransfer(base=str(detector_ckpt), label_update="spr", spr_warmup_epochs=0)
    batch = next(iter(DataLoader(make_samples(2), batch_size=2)))
    labels = module.initial_labels(batch["image"], None)
    assert labels.shape == (2, 1, SIZE, SIZE)
    assert set(torch.unique(labels).tolist()) <= {0.0, 1.0}  # CRF + threshold + median: binary
    raw = AdapterTransfer(base=str(detector_ckpt), initial_labels="raw").initial_labels(batch["image"], None)
    torch.testing.assert_close(raw, module.base_saliency(batch["image"]))
    # a batch's `pseudo` (e.g. from `usod label`) takes precedence over the base prediction
    with_pseudo = next(iter(DataLoader(make_samples(2, pseudo=True), batch_size=2)))
    targets = module.training_targets(with_pseudo, with_pseudo["image"], None)
    torch.testing.assert_close(targets, with_pseudo["pseudo"], atol=1 / 255, rtol=0)


def square_samples(n: int, size: int) -> list[dict]:
    """Bright rectangles on noise at ``size`` px, with ``pseudo`` = ``mask``."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        o = size // 8
        mask = torch.zeros(1, size, size)
        mask[:, o + i * o // 2 : size // 2 + o + i * o // 2, 2 * o : size - 2 * o] = 1.0
        image = (0.2 + 0.2 * torch.rand(3, size, size, generator=g) + 0.5 * mask).clamp(0, 1)
        out.append(
            {"image": image, "id": f"seq/{i:05d}", "size": torch.tensor([size, size]), "mask": mask,
             "pseudo": mask.clone()}
        )  # fmt: skip
    return out


def test_adapters_learn_the_target_labels(detector_ckpt: Path) -> None:
    # 64 px: at 32 px the deepest ResNet levels are 1x1/2x2 maps that the detector's GroupNorm flattens,
    # so no adapter on them can change the prediction much
    torch.manual_seed(0)
    samples = square_samples(4, 64)
    module = AdapterTransfer(base=str(detector_ckpt), label_update="none", lr=1e-2)
    batch = next(iter(DataLoader(samples, batch_size=4)))

    def scores() -> tuple[float, float]:
        with torch.no_grad():
            logits = module._raw(batch["image"], None)
            loss = float(sum(module.loss_fn.terms(logits, batch["pseudo"]).values()))
            return loss, float((torch.sigmoid(logits) - batch["mask"]).abs().mean())

    with module.adapters.disabled():
        base_loss, base_mae = scores()
    trainer(8).fit(module, DataLoader(samples, batch_size=2, shuffle=True))
    module.eval()
    loss, mae = scores()
    assert loss < base_loss - 0.05 and mae < 0.96 * base_mae, (base_loss, loss, base_mae, mae)


def test_spr_rounds_update_the_labels_and_are_written(detector_ckpt: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    samples = make_samples(4, pseudo=True)
    module = AdapterTransfer(base=str(detector_ckpt), label_update="spr", spr_warmup_epochs=1, lr=5e-3)
    store = PseudoLabelStore(tmp_path / "labels")
    trainer(3, callbacks=[LabelRoundWriter(store)]).fit(
        module, DataLoader(samples, batch_size=2, shuffle=True)
    )
    assert module.label_epoch == 2 and store.current_round() == "stage2-epoch2"
    assert store.rounds()[-1]["meta"]["producer"] == "AdapterTransfer"
    label = store.read("seq/00001")
    assert label.shape == (SIZE, SIZE)
    # SPR blends in the predictions: the labels are no longer the binary pseudo labels they started from
    first = (samples[1]["pseudo"][0].numpy() * 255).astype("uint8")
    assert (label != first).any() and len(set(label.ravel().tolist())) > 2


def test_checkpoint_is_self_contained(detector_ckpt: Path, tmp_path: Path) -> None:
    module = AdapterTransfer(base=str(detector_ckpt), label_update="none", initial_labels="raw")
    t = trainer(1)
    t.fit(module, DataLoader(make_samples(2), batch_size=2))
    path = tmp_path / "adapted.ckpt"
    t.save_checkpoint(path)
    detector_ckpt.unlink()  # the adapted checkpoint must not need the base file
    loaded = load_module(path)
    assert isinstance(loaded, AdapterTransfer) and loaded.adapters.unit_names == ["layer3", "layer4"]
    batch = next(iter(DataLoader(make_samples(2), batch_size=2)))
    module.eval()
    torch.testing.assert_close(
        loaded.predict_step(batch, 0)["saliency"], module.predict_step(batch, 0)["saliency"]
    )
    with pytest.raises(InvalidInputError, match="already an adapted model"):
        AdapterTransfer(base=str(path))


def test_flow_enters_the_adapters_of_an_rgb_base(detector_ckpt: Path) -> None:
    module = AdapterTransfer(base=str(detector_ckpt), aux_modality="flow", label_update="none")
    assert module.aux_route == "adapters"
    assert all(a.aux_down is not None for a in module.adapters.adapters.values())
    batch = next(iter(DataLoader(make_samples(2, flow=True), batch_size=2)))
    for adapter in module.adapters.adapters.values():
        torch.nn.init.normal_(adapter.up.weight, std=0.1)
    a = module.predict_step(batch, 0)["saliency"]
    b = module.predict_step({**batch, "flow": 1.0 - batch["flow"]}, 0)["saliency"]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="batch\\['flow'\\]"):
        module.predict_step({k: v for k, v in batch.items() if k != "flow"}, 0)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert all(a.aux_down.weight.grad is not None for a in module.adapters.adapters.values())


def test_a_base_with_its_own_aux_stream_gets_the_aux_image(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = SaliencyDetector(backbone=TINY, channels=8, aux_modality="depth", label_update="none")
    ckpt = save_module(base, tmp_path / "rgbd.ckpt")
    module = AdapterTransfer(base=str(ckpt), label_update="none")
    assert module.hparams.aux_modality == "depth" and module.aux_route == "base"
    assert all(a.aux_down is None for a in module.adapters.adapters.values())
    x, d = torch.rand(2, 3, SIZE, SIZE), torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(module(x, d), torch.sigmoid(base.eval()(x, d)))
    with pytest.raises(ValueError, match="cannot feed it"):
        AdapterTransfer(base=str(ckpt), aux_modality="none")


def test_cue_extractor_base_is_tuned_with_its_own_stage1_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = save_module(CueExtractor(backbone=TINY, head_channels=8, feature_cache=True), tmp_path / "s1.ckpt")
    module = AdapterTransfer(base=str(ckpt))
    assert not module.is_detector and module.hparams.base_hparams["feature_cache"] is False
    # Training drops half the pixels in the stage-1 loss (A2S Sec. III-A); the base network stays in eval.
    module.train()
    assert module.base.loss_fn.training and module.base.loss_fn.drop_ratio == 0.5
    assert not module.base.training and not module.base.model.training
    module.eval()
    assert not module.base.loss_fn.training
    batch = next(iter(DataLoader(make_samples(4), batch_size=4)))
    with torch.no_grad():
        before = module.base.loss_fn(module._raw(batch["image"], None).all_thetas)
    trainer(8).fit(module, DataLoader(make_samples(4), batch_size=4))
    module.eval()
    with torch.no_grad():
        after = module.base.loss_fn(module._raw(batch["image"], None).all_thetas)
    assert after < before
    assert module.predict_step(batch, 0)["saliency"].shape == (4, 1, SIZE, SIZE)


def test_configuration_errors(detector_ckpt: Path) -> None:
    with pytest.raises(ValueError, match="needs `base`"):
        AdapterTransfer()
    with pytest.raises(FileNotFoundError):
        AdapterTransfer(base=str(detector_ckpt.parent / "missing.ckpt"))
    with pytest.raises(ValueError, match="label_update"):
        AdapterTransfer(base=str(detector_ckpt), label_update="sometimes")
    with pytest.raises(ValueError, match="aux_modality"):
        AdapterTransfer(base=str(detector_ckpt), aux_modality="lidar")
