"""Tests for usod.models.backbones: encoders, offline weight loading and freezing."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from usod.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneConfig,
    Encoder,
    build_bundled_classifier,
    build_encoder,
    load_bundled_lite0,
    load_weights,
)

torch.set_num_threads(2)


def _random_resnet18_state(seed: int) -> dict[str, torch.Tensor]:
    """A torchvision-keyed resnet18 state dict with random (seeded) values, classifier included."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    state = model.state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = torch.randn_like(value)
    return state


def _assert_loaded(model: nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> None:
    own = model.state_dict()
    compared = 0
    for key, value in own.items():
        src = state.get(prefix + key)
        if src is None or key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(value, src, rtol=0, atol=0)
        compared += 1
    assert compared >= 60


def test_moco_v2_loads_query_encoder_only(tmp_path):
    query = _random_resnet18_state(0)
    momentum = _random_resnet18_state(1)
    ckpt: dict[str, torch.Tensor] = {}
    for key, value in query.items():
        if not key.startswith("fc."):
            ckpt[f"module.encoder_q.{key}"] = value
    for key, value in momentum.items():
        if not key.startswith("fc."):
            ckpt[f"module.encoder_k.{key}"] = value
    # MoCo-v2 MLP head on both encoders plus the queue buffers.
    for enc in ("encoder_q", "encoder_k"):
        ckpt[f"module.{enc}.fc.0.weight"] = torch.randn(512, 512)
        ckpt[f"module.{enc}.fc.0.bias"] = torch.randn(512)
        ckpt[f"module.{enc}.fc.2.weight"] = torch.randn(128, 512)
        ckpt[f"module.{enc}.fc.2.bias"] = torch.randn(128)
    ckpt["module.queue"] = torch.randn(128, 65536 // 64)
    ckpt["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "moco_v2.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": ckpt, "optimizer": {}}, path)

    enc = Encoder("resnet18", weights=str(path))
    _assert_loaded(enc.model, query)
    conv1 = enc.model.state_dict()["conv1.weight"]
    assert not torch.equal(conv1, momentum["conv1.weight"])
    # MoCo weights were trained on ImageNet-normalised inputs.
    assert enc.mean == IMAGENET_MEAN and enc.std == IMAGENET_STD

    # The generic loader on a full timm classifier: the projection head must not land in fc.
    full = timm.create_model("resnet18", pretrained=False)
    fc_before = full.fc.weight.clone()
    load_weights(full, path)
    assert torch.equal(full.fc.weight, fc_before)
    torch.testing.assert_close(full.layer4[1].bn2.running_var, query["layer4.1.bn2.running_var"])


def test_moco_momentum_only_is_rejected(tmp_path):
    momentum = _random_resnet18_state(1)
    ckpt = {f"module.encoder_k.{k}": v for k, v in momentum.items() if not k.startswith("fc.")}
    path = tmp_path / "momentum_only.pth.tar"
    torch.save({"state_dict": ckpt}, path)
    with pytest.raises(ValueError, match=r"momentum_only\.pth\.tar.*momentum encoder"):
        Encoder("resnet18", weights=str(path))


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "lightning", "dataparallel"])
def test_torchvision_state_dict_formats(tmp_path, fmt):
    state = _random_resnet18_state(2)
    if fmt == "pth":
        path = tmp_path / "resnet18.pth"
        torch.save(state, path)
        prefix = ""
    elif fmt == "safetensors":
        path = tmp_path / "resnet18.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        prefix = ""
    elif fmt == "lightning":
        path = tmp_path / "epoch=3.ckpt"
        prefix = "model.encoder.model."
        state = {prefix + k: v for k, v in state.items() if not k.startswith("fc.")}
        ckpt_state = dict(state)
        ckpt_state["model.decoder.conv.weight"] = torch.randn(
            4, 4, 1, 1
        )  # other parts of the LightningModule
        torch.save({"epoch": 3, "global_step": 10, "state_dict": ckpt_state}, path)
    else:
        path = tmp_path / "resnet18_dp.pt"
        prefix = "module."
        state = {prefix + k: v for k, v in state.items()}
        torch.save({"model": state}, path)

    enc = build_encoder({"name": "resnet18", "weights": str(path), "out_indices": [1, 2, 3, 4]})
    _assert_loaded(enc.model, state, prefix=prefix)
    assert enc.mean == tuple(IMAGENET_MEAN)


def test_mismatched_file_lists_missing_and_unexpected(tmp_path):
    state = _random_resnet18_state(3)
    del state["layer2.0.conv1.weight"]
    state["layer2.0.extra_conv.weight"] = torch.randn(3, 3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        Encoder("resnet18", weights=str(path))
    msg = str(info.value)
    assert "broken.pth" in msg
    assert "missing 1 keys" in msg and "layer2.0.conv1.weight" in msg
    assert "unexpected 1 keys" in msg and "layer2.0.extra_conv.weight" in msg

    # A shape mismatch raises even when not strict.
    state = _random_resnet18_state(3)
    state["conv1.weight"] = torch.randn(64, 3, 3, 3)
    torch.save(state, path)
    model = timm.create_model("resnet18", pretrained=False)
    with pytest.raises(
        ValueError, match=re.escape("conv1.weight: file (64, 3, 3, 3) vs model (64, 3, 7, 7)")
    ):
        load_weights(model, path, strict=False)

    # An architecture that does not fit at all.
    with pytest.raises(ValueError, match="broken.pth.*missing"):
        load_weights(timm.create_model("test_efficientnet", pretrained=False), path)


def test_bad_paths_and_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Encoder("resnet18", weights=str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth.*not a readable weights file"):
        Encoder("resnet18", weights=str(garbage))
    with pytest.raises(ValueError, match="only available for 'tf_efficientnet_lite0'"):
        Encoder("resnet18", weights="bundled")
    with pytest.raises(ValueError, match="Unknown backbone config keys"):
        build_encoder({"name": "resnet18", "weights": None, "pretrained": True})
    enc = Encoder("resnet18", weights="none")
    with pytest.raises(ValueError, match="Bx3xHxW"):
        enc(torch.rand(1, 1, 32, 32))


def test_flattened_feature_names_load_from_full_checkpoint(tmp_path):
    # timm's FeatureListNet renames "stages.0" to "stages_0"; a full-model checkpoint must still fit.
    torch.manual_seed(4)
    full = timm.create_model("test_convnext", pretrained=False)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in full.state_dict().items()}
    path = tmp_path / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    enc = Encoder("test_convnext", weights=str(path))
    feats = enc.model.state_dict()
    assert "stem_0.weight" in feats
    torch.testing.assert_close(feats["stem_0.weight"], state["stem.0.weight"])
    torch.testing.assert_close(
        feats["stages_3.blocks.0.conv_dw.weight"], state["stages.3.blocks.0.conv_dw.weight"]
    )


@pytest.mark.parametrize(
    ("name", "out_indices"),
    [
        ("resnet18", None),
        ("resnet18", (1, 3)),
        ("tf_efficientnet_lite0", (1, 2, 3, 4)),
        ("test_convnext", None),
    ],
)
def test_channels_and_strides_match_features(name, out_indices):
    enc = Encoder(name, weights="none", out_indices=out_indices).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        feats = enc(x)
    assert len(feats) == len(enc.channels) == len(enc.strides)
    if out_indices is not None:
        assert len(feats) == len(out_indices)
    for f, c, s in zip(feats, enc.channels, enc.strides, strict=True):
        assert f.shape == (2, c, 64 // s, 96 // s)


def _bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_freeze_keeps_params_and_bn_stats():
    class Parent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = build_encoder(BackboneConfig(name="resnet18", weights=None, frozen=True))
            self.head = nn.Conv2d(self.encoder.channels[-1], 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(x)[-1])

    torch.manual_seed(5)
    parent = Parent()
    parent.train()
    assert parent.training and not parent.encoder.model.training
    before = _bn_stats(parent.encoder)
    head_before = parent.head.weight.clone()
    opt = torch.optim.SGD([p for p in parent.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(2):
        loss = parent(torch.rand(2, 3, 64, 64)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _bn_stats(parent.encoder)
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert not torch.equal(head_before, parent.head.weight)
    assert all(p.grad is None for p in parent.encoder.parameters())

    # Unfrozen, the same step does move BatchNorm statistics.
    parent.encoder.unfreeze()
    parent.train()
    assert parent.encoder.model.training
    parent(torch.rand(2, 3, 64, 64))
    moved = _bn_stats(parent.encoder)
    assert not torch.equal(moved["model.bn1.running_mean"], before["model.bn1.running_mean"])


@pytest.fixture(scope="module")
def lite0_classifier() -> nn.Module:
    return build_bundled_classifier()


def _classify(model: nn.Module, image) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        return model((x - 0.5) / 0.5).softmax(dim=1)[0]


def test_bundled_lite0_classifies_real_photos(lite0_classifier):
    skdata = pytest.importorskip("skimage.data")
    cat = _classify(lite0_classifier, skdata.chelsea())
    assert 281 <= int(cat.argmax()) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert float(cat[281:286].sum()) > 0.5
    coffee = _classify(lite0_classifier, skdata.coffee())
    assert int(coffee.argmax()) in {504, 967, 968}  # coffee mug, espresso, cup


def test_bundled_encoder_matches_classifier(lite0_classifier):
    enc = Encoder()  # the default: tf_efficientnet_lite0 with bundled weights
    assert enc.mean == (0.5, 0.5, 0.5) and enc.std == (0.5, 0.5, 0.5)
    assert enc.channels == [16, 24, 40, 112, 320] and enc.strides == [2, 4, 8, 16, 32]
    enc.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = enc(x)
        ref = lite0_classifier.forward_features((x - 0.5) / 0.5)  # after conv_head; compare the last block
        blocks = lite0_classifier.blocks(lite0_classifier.bn1(lite0_classifier.conv_stem((x - 0.5) / 0.5)))
    assert ref.shape[1] == 1280
    torch.testing.assert_close(feats[-1], blocks, rtol=1e-5, atol=1e-5)

    # The loader also fits a features_only model built directly with timm.
    model = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(2,), pretrained=False)
    load_bundled_lite0(model)
    torch.testing.assert_close(model.conv_stem.weight, lite0_classifier.conv_stem.weight)
