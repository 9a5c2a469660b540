"""Tests for the saliency cue extractor (A2S stage 1): losses, sign rules, network, Lightning module."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import timm
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from usod.models.cue_extractor import (
    ADBLoss,
    CueExtractor,
    CueExtractorModel,
    FeatureCache,
    PCLSDLoss,
    adaptive_decision_values,
    foreground_sign,
    keep_random_pixels,
    pcl_threshold,
    saliency_from_activation,
)

SIZE = 64


class TinyEncoder(nn.Module):
    """Stand-in with the ``usod.models.backbones.Encoder`` interface over timm's tiny ``test_resnet``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = timm.create_model("test_resnet", features_only=True, pretrained=False)
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.body(x)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def make_samples(n: int = 4, with_mask: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n):
        image = 0.2 + 0.1 * torch.rand(3, SIZE, SIZE, generator=g)
        mask = torch.zeros(1, SIZE, SIZE)
        y0, x0 = 16 + 2 * i, 20 - 2 * i
        mask[:, y0 : y0 + 24, x0 : x0 + 24] = 1.0
        image = image + 0.6 * mask * torch.tensor([1.0, 0.3, 0.1]).view(3, 1, 1)
        sample = {"image": image.clamp(0, 1), "id": f"img{i}", "size": torch.tensor([SIZE * 2, SIZE * 3])}
        if with_mask:
            sample["mask"] = mask
        samples.append(sample)
    return samples


def make_batch(n: int = 2, with_mask: bool = False) -> dict:
    return next(iter(DataLoader(make_samples(n, with_mask), batch_size=n)))


def make_module(**kwargs) -> CueExtractor:
    torch.manual_seed(0)
    kwargs.setdefault("encoder", TinyEncoder())
    kwargs.setdefault("head_channels", 16)
    return CueExtractor(**kwargs)


def make_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


# ---------------------------------------------------------------- decision values and losses
def test_adaptive_decision_values_by_hand():
    feats = torch.tensor([[[[1.0, 3.0]], [[2.0, 6.0]]]])  # 1x2x1x2
    # channel 0 centred: [-1, 1]; channel 1 centred: [-2, 2]; summed: [-3, 3]
    theta = adaptive_decision_values(feats)
    assert theta.shape == (1, 1, 1, 2)
    torch.testing.assert_close(theta, torch.tensor([[[[-3.0, 3.0]]]]))


def test_adb_loss_matches_formula_by_hand():
    loss = ADBLoss(alpha=0.1, drop_ratio=0.0)
    theta_a = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)  # sigmoid: 0.5, 0.75 -> D = 0, 0.25
    theta_b = torch.tensor([-math.log(3.0)]).view(1, 1, 1, 1)  # sigmoid 0.25 -> D = 0.25
    # map a: -(0 + (0.0625 + 0.025)) / 2 = -0.04375; map b: -(0.0625 + 0.025) = -0.0875
    torch.testing.assert_close(loss(theta_a), torch.tensor(-0.04375))
    torch.testing.assert_close(loss([theta_a, theta_b]), torch.tensor(-0.04375 - 0.0875))
    assert ADBLoss(alpha=0.0, drop_ratio=0.0)(theta_b).item() == pytest.approx(-0.0625)


def test_adb_loss_bounds_and_gradient_direction():
    theta = torch.tensor([0.5, -0.2, 3.0]).view(1, 1, 1, 3).requires_grad_()
    value = ADBLoss(drop_ratio=0.0)(theta)
    value.backward()
    assert -(0.25 + 0.05) <= value.item() <= 0.0
    # minimising pushes values away from the boundary: gradient sign opposite to theta's sign
    assert (theta.grad * theta.detach() < 0).all()


def test_drop_ratio_keeps_exact_fraction_and_uses_the_kept_pixels():
    values = torch.arange(2 * 100, dtype=torch.float32).view(2, 1, 10, 10)
    kept = keep_random_pixels(values, 0.5, torch.Generator().manual_seed(1))
    assert kept.shape == (2, 50)
    assert len(set(kept[0].tolist())) == 50 and all(0 <= v < 100 for v in kept[0].tolist())
    assert all(100 <= v < 200 for v in kept[1].tolist())
    other = keep_random_pixels(values, 0.5, torch.Generator().manual_seed(2))
    assert set(other[0].tolist()) != set(kept[0].tolist())
    assert keep_random_pixels(values, 0.75).shape == (2, 25)
    assert keep_random_pixels(values, 0.0).shape == (2, 100)

    theta = torch.linspace(-4, 4, 100).view(1, 1, 10, 10)
    loss = ADBLoss(alpha=0.1, drop_ratio=0.5)
    got = loss(theta, generator=torch.Generator().manual_seed(3))
    d = keep_random_pixels((torch.sigmoid(theta) - 0.5).abs(), 0.5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, -(d**2 + 0.1 * d).mean())
    full = ADBLoss(alpha=0.1, drop_ratio=0.0)(theta)
    assert not torch.isclose(got, full)
    loss.eval()  # no drop outside training
    torch.testing.assert_close(loss(theta), full)


def test_pcl_threshold_schedule():
    assert pcl_threshold(0.0) == pytest.approx(0.2)
    assert pcl_threshold(1 / 6) == pytest.approx(0.1)
    assert pcl_threshold(1 / 3) == pytest.approx(0.0)
    assert pcl_threshold(0.9) == 0.0
    assert pcl_threshold(0.5, p0=0.3, ramp=1.0) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="p0"):
        pcl_threshold(0.0, p0=0.6)


def test_pcl_sd_loss_by_hand():
    probs = [0.5, 0.6, 0.9, 0.1]  # |S - 0.5| = 0, 0.1, 0.4, 0.4
    theta = torch.tensor([logit(p) for p in probs]).view(1, 1, 1, 4).requires_grad_()
    loss = PCLSDLoss(p0=0.2, drop_ratio=0.0)
    # p = 0.2: the first two pixels are hard (masked): (0 + 0 + 0.1 + 0.1) / 4
    early = loss(theta, progress=0.0)
    torch.testing.assert_close(early, torch.tensor(0.05))
    early.backward()
    assert theta.grad[0, 0, 0, :2].abs().max() == 0 and theta.grad[0, 0, 0, 2:].abs().min() > 0
    # p = 0 after a third of training: 0.5 - mean(|S - 0.5|) = (0.5 + 0.4 + 0.1 + 0.1) / 4
    torch.testing.assert_close(loss(theta, progress=0.5), torch.tensor(0.275))


def test_losses_reject_bad_shapes():
    with pytest.raises(ValueError, match="Bx1xHxW"):
        ADBLoss()(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="drop_ratio"):
        ADBLoss(drop_ratio=1.0)


# ---------------------------------------------------------------- sign rule
def blob_activation(fg_value: float, bg_value: float, size: int = 32, half: int = 6) -> tuple[Tensor, Tensor]:
    blob = torch.zeros(1, 1, size, size, dtype=torch.bool)
    c = size // 2
    blob[..., c - half : c + half, c - half : c + half] = True
    act = torch.where(blob, torch.tensor(fg_value), torch.tensor(bg_value))
    return act - act.mean(), blob  # mean-centred, as decision values are


@pytest.mark.parametrize("rule", ["area", "corner", "border"])
@pytest.mark.parametrize("inverted", [False, True])
def test_sign_rule_makes_the_blob_foreground(rule, inverted):
    theta, blob = blob_activation(-3.0, 1.0) if inverted else blob_activation(3.0, -1.0)
    sal = saliency_from_activation(theta, rule)
    assert sal.shape == theta.shape and sal.min() >= 0 and sal.max() <= 1
    assert (sal[blob] > 0.5).all() and (sal[~blob] < 0.5).all()
    assert foreground_sign(theta, rule).item() == (-1.0 if inverted else 1.0)


def test_corner_rule_handles_a_large_central_object_where_area_fails():
    theta, blob = blob_activation(1.0, -1.0, size=32, half=13)  # blob covers 66% of the image
    assert blob.float().mean() > 0.5
    assert (saliency_from_activation(theta, "area")[blob] < 0.5).all()
    assert (saliency_from_activation(theta, "corner")[blob] > 0.5).all()
    assert (saliency_from_activation(theta, "border")[blob] > 0.5).all()


def test_sign_is_per_image_and_resizes():
    a, blob = blob_activation(2.0, -1.0)
    b, _ = blob_activation(-2.0, 1.0)
    sal = saliency_from_activation(torch.cat([a, b]), "area", size=(64, 64))
    assert sal.shape == (2, 1, 64, 64)
    centre = sal[:, 0, 28:36, 28:36]
    assert (centre > 0.5).all() and (sal[:, 0, :4, :4] < 0.5).all()
    with pytest.raises(ValueError, match="unknown sign rule"):
        foreground_sign(a, "median")


# ---------------------------------------------------------------- network
def test_model_shapes_and_zero_mean_decision_values():
    torch.manual_seed(0)
    model = CueExtractorModel(TinyEncoder(), head_channels=16)
    out = model(torch.rand(2, 3, SIZE, SIZE))
    assert [tuple(t.shape) for t in out.stage_thetas] == [(2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 2, 2)]
    assert out.fused_theta.shape == (2, 1, 32, 32)  # the encoder's smallest stride, 2
    assert out.saliency.shape == (2, 1, SIZE, SIZE)
    assert out.saliency.min() >= 0 and out.saliency.max() <= 1
    for theta in out.all_thetas:
        torch.testing.assert_close(theta.mean(dim=(2, 3)), torch.zeros(2, 1), atol=1e-4, rtol=0)
    assert out.sign.shape == (2, 1, 1, 1)
    assert all(not p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert not model.encoder.training
    with pytest.raises(ValueError, match="Bx3xHxW"):
        model(torch.rand(2, 1, SIZE, SIZE))


def test_model_fuse_stride_option():
    model = CueExtractorModel(TinyEncoder(), head_channels=8, fuse_stride=8)
    assert model(torch.rand(1, 3, SIZE, SIZE)).fused_theta.shape == (1, 1, 8, 8)


# ---------------------------------------------------------------- lightning module
def test_training_step_keeps_encoder_frozen_and_updates_heads():
    module = make_module(drop_ratio=0.5)
    enc_before = {k: v.clone() for k, v in module.model.encoder.state_dict().items()}
    heads_before = [p.detach().clone() for p in module.model.head_parameters()]
    assert any("running_mean" in k for k in enc_before)
    trainer = make_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(module, DataLoader(make_samples(4), batch_size=2))
    for k, v in module.model.encoder.state_dict().items():
        assert torch.equal(v, enc_before[k]), f"encoder tensor {k} changed"
    heads_after = module.model.head_parameters()
    assert all(not torch.equal(p.detach(), q) for p, q in zip(heads_after, heads_before, strict=True))


@pytest.mark.parametrize("loss", ["adb", "pcl_sd"])
def test_training_lowers_the_loss(loss):
    module = make_module(loss=loss, lr=0.1, drop_ratio=0.5)
    images = make_batch(4)["image"]

    def full_loss() -> float:  # no drop, fixed PCL threshold: comparable before and after training
        module.eval()
        with torch.no_grad():
            thetas = module.model(images).all_thetas
            value = module.loss_fn(thetas, progress=1.0) if loss == "pcl_sd" else module.loss_fn(thetas)
        return value.item()

    before = full_loss()
    module.train()  # Lightning keeps the mode a module starts fitting in
    trainer = make_trainer(max_epochs=6)
    trainer.fit(module, DataLoader(make_samples(4), batch_size=2))
    after = full_loss()
    assert after < before - 1e-3, (before, after)
    assert "train_loss" in trainer.callback_metrics
    if loss == "pcl_sd":
        assert "pcl_threshold" in trainer.callback_metrics


def test_feature_cache_gives_the_same_loss_as_no_cache():
    cached = make_module(feature_cache=True, feature_cache_dtype="float32", drop_ratio=0.0)
    plain = make_module(drop_ratio=0.0)
    plain.load_state_dict(cached.state_dict())
    batch = make_batch(2)
    first = cached.compute_training_loss(batch)
    assert len(cached.feature_cache) == 4  # 2 ids x (image, flip)
    nbytes = cached.feature_cache.nbytes
    second = cached.compute_training_loss(batch)  # from the cache
    assert cached.feature_cache.nbytes == nbytes
    reference = plain.compute_training_loss(batch)
    torch.testing.assert_close(first, reference)
    torch.testing.assert_close(second, reference)
    # gradients reach the heads through cached features
    second.backward()
    assert all(p.grad is not None for p in cached.model.head_parameters())

    half = make_module(feature_cache=True, drop_ratio=0.0)
    half.load_state_dict(cached.state_dict())
    half.compute_training_loss(batch)
    torch.testing.assert_close(half.compute_training_loss(batch), reference, atol=1e-3, rtol=1e-3)


def test_feature_cache_on_the_device_gives_the_same_loss():
    from usod.models.cue_extractor.lightning_model import FeatureCache

    on_device = make_module(
        feature_cache=True, feature_cache_dtype="float32", feature_cache_storage="device", drop_ratio=0.0
    )
    plain = make_module(drop_ratio=0.0)
    plain.load_state_dict(on_device.state_dict())
    batch = make_batch(2)
    on_device.compute_training_loss(batch)
    assert on_device.feature_cache.storage == "device"
    torch.testing.assert_close(on_device.compute_training_loss(batch), plain.compute_training_loss(batch))
    with pytest.raises(ValueError, match="storage"):
        FeatureCache(storage="gpu")


def test_feature_cache_detects_non_deterministic_transform():
    module = make_module(feature_cache=True)
    batch = make_batch(2)
    module.compute_training_loss(batch)
    batch["image"] = batch["image"][..., 4:, 4:]  # a "random crop" of the same ids
    with pytest.raises(RuntimeError, match="img0.*deterministic"):
        module.compute_training_loss(batch)
    del batch["id"]
    with pytest.raises(ValueError, match="batch\\['id'\\]"):
        module.compute_training_loss(batch)


def test_feature_cache_size_cap():
    cache = FeatureCache(torch.float16, max_bytes=100)
    thumb = torch.zeros(50)
    out = cache.put(("a", False), thumb, [torch.ones(10)])
    assert len(cache) == 1 and cache.nbytes == 20 and out[0].dtype == torch.float16
    out = cache.put(("b", False), thumb, [torch.ones(100)])  # 200 bytes: over the cap, not stored
    assert len(cache) == 1 and out[0].dtype == torch.float32
    assert cache.get(("b", False), thumb) is None


def test_feature_cache_in_a_training_loop():
    module = make_module(feature_cache=True, lr=0.1)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(module, DataLoader(make_samples(4), batch_size=2))
    assert len(module.feature_cache) == 8
    assert trainer.callback_metrics["feature_cache_gb"] > 0


def test_predict_step_format():
    module = make_module(predict_flip=True)
    module.eval()
    batch = make_batch(2)
    with torch.no_grad():
        out = module.predict_step(batch, 0)
    assert set(out) == {"id", "size", "saliency"}
    assert out["id"] == ["img0", "img1"]
    assert torch.equal(out["size"], batch["size"])
    sal = out["saliency"]
    assert sal.shape == (2, 1, SIZE, SIZE) and sal.dtype == torch.float32
    assert sal.min() >= 0 and sal.max() <= 1

    preds = make_trainer().predict(make_module(), DataLoader(make_samples(3), batch_size=2))
    assert [p["id"] for p in preds] == [["img0", "img1"], ["img2"]]


def test_validation_logs_mae_against_mask():
    module = make_module()
    batch = make_batch(2, with_mask=True)
    module.eval()
    with torch.no_grad():
        sal = module.model(batch["image"]).saliency
    from usod.metrics import SODMetrics

    reference = SODMetrics(weighted_f=False)
    reference.update(sal, batch["mask"])
    expected = float(reference.compute()["mae"])  # the pysodmetrics MAE, as test_mae and usod evaluate
    loader = DataLoader(make_samples(2, with_mask=True), batch_size=2)
    metrics = make_trainer().validate(module, loader)
    assert metrics[0]["val_mae"] == pytest.approx(expected, abs=1e-6)
    assert "val_loss" in metrics[0]
    tested = make_trainer().test(module, loader)[0]
    assert tested["test_mae"] == pytest.approx(metrics[0]["val_mae"], abs=1e-6)


def test_configuration_errors_and_optimizer():
    with pytest.raises(ValueError, match="unknown loss"):
        make_module(loss="bce")
    with pytest.raises(ValueError, match="sign_rule"):
        make_module(sign_rule="median")
    with pytest.raises(ValueError, match="Bx3xHxW"):
        make_module().compute_training_loss({"image": torch.rand(2, 1, SIZE, SIZE), "id": ["a", "b"]})
    module = make_module(lr=0.5)
    assert "encoder" not in module.hparams and module.hparams.lr == 0.5
    optimizer = module.configure_optimizers()
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_params == len(module.model.head_parameters())


def test_with_the_project_encoder():
    backbones = pytest.importorskip("usod.models.backbones")
    module = CueExtractor(backbone={"name": "resnet18", "weights": "none"}, head_channels=8)
    assert isinstance(module.model.encoder, backbones.Encoder)
    assert all(not p.requires_grad for p in module.model.encoder.parameters())
    loss = module.compute_training_loss(make_batch(1))
    assert torch.isfinite(loss)
