"""Tests for the stage-2 saliency detector: RAM network, losses, PAR refiner, OLR/SPR label updates.

DDP (2 gloo ranks against 1 process) is tested in tests/distributed/test_modules_ddp.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch.utils.data import DataLoader

from tests.helpers.models import RESNET18 as BACKBONE
from tests.helpers.training import quiet_trainer as trainer
from usod.labels import LabelBank, LabelRoundWriter, PseudoLabelStore
from usod.models.saliency_detector import (
    BCESSIMIoULoss,
    IoUMultiScaleLoss,
    PixelAdaptiveRefiner,
    SaliencyDetector,
    SaliencyDetectorModel,
    split_levels,
    ssim_map,
)

SIZE = 64

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*no `val_dataloader`.*"),
    pytest.mark.filterwarnings("ignore:.*self.trainer` reference is not registered.*"),
]


def make_samples(n: int = 4, with_mask: bool = False) -> list[dict]:
    """Squares of colour on a dark background; the pseudo label is the square shifted by 3 pixels."""
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n):
        mask = torch.zeros(1, SIZE, SIZE)
        y0, x0 = 14 + 3 * i, 18 - 2 * i
        mask[:, y0 : y0 + 26, x0 : x0 + 26] = 1.0
        image = 0.15 + 0.1 * torch.rand(3, SIZE, SIZE, generator=g)
        image = (image + 0.6 * mask * torch.tensor([1.0, 0.4, 0.1]).view(3, 1, 1)).clamp(0, 1)
        pseudo = torch.roll(mask, shifts=(3, 3), dims=(1, 2))
        sample = {
            "image": image,
            "pseudo": pseudo,
            "id": f"seq/img{i}",
            "size": torch.tensor([SIZE * 2, SIZE + 8]),
        }
        if with_mask:
            sample["mask"] = mask
        samples.append(sample)
    return samples


def loader(samples: list[dict], batch_size: int = 4, shuffle: bool = False) -> DataLoader:
    return DataLoader(samples, batch_size=batch_size, shuffle=shuffle, num_workers=0)


# ---------------------------------------------------------------------------------------------- network
def test_split_levels() -> None:
    assert split_levels(5) == ([0, 1], [2, 3], 4)
    assert split_levels(4) == ([0, 1], [2], 3)
    assert split_levels(3) == ([0], [1], 2)
    with pytest.raises(ValueError, match="at least 3 levels"):
        split_levels(2)


@pytest.mark.parametrize("out_indices", [None, [1, 2, 3, 4]])
def test_model_shapes_and_range(out_indices: list[int] | None) -> None:
    from usod.models.backbones import build_encoder

    encoder = build_encoder({**BACKBONE, "out_indices": out_indices})
    model = SaliencyDetectorModel(encoder)
    assert model.num_levels == (5 if out_indices is None else 4)
    images = torch.rand(2, 3, SIZE, SIZE + 32)
    logits = model(images)
    assert logits.shape == (2, 1, SIZE, SIZE + 32)
    sal = model.predict(images)
    assert sal.min() >= 0 and sal.max() <= 1
    # The encoder is fine-tuned: it receives gradients.
    logits.mean().backward()
    assert all(p.grad is not None for p in model.encoder_parameters())
    assert not {id(p) for p in model.encoder_parameters()} & {id(p) for p in model.decoder_parameters()}
    with pytest.raises(ValueError, match="Bx3xHxW"):
        model(torch.rand(2, 1, SIZE, SIZE))


# ---------------------------------------------------------------------------------------------- losses
def test_bce_ssim_iou_matches_formulas() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 24, 24, generator=g)
    soft = torch.rand(2, 1, 24, 24, generator=g)
    target = (soft > 0.5).float()
    p = torch.sigmoid(logits).double()
    t = target.double()
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    iou = (1 - (p * t).sum(dim=(1, 2, 3)) / ((p + t - p * t).sum(dim=(1, 2, 3)) + 1e-7)).mean()
    terms = BCESSIMIoULoss().terms(logits, soft)  # binarised at 0.5 inside
    assert terms["bce"].item() == pytest.approx(bce.item(), rel=1e-5)
    assert terms["iou"].item() == pytest.approx(iou.item(), rel=1e-5)
    loss = BCESSIMIoULoss()(logits, soft)
    assert loss.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)
    # Soft targets are used as they are with binarize=False.
    soft_terms = BCESSIMIoULoss(binarize=False).terms(logits, soft)
    ts = soft.double()
    bce_soft = -(ts * torch.log(p) + (1 - ts) * torch.log(1 - p)).mean()
    assert soft_terms["bce"].item() == pytest.approx(bce_soft.item(), rel=1e-5)

    # SSIM against scikit-image (Gaussian sigma 1.5 -> the same 11x11 window), away from the borders where
    # the padding differs (zero here, reflect there).
    x, y = p[0, 0].float(), t[0, 0].float()
    ours = ssim_map(x[None, None], y[None, None])[0, 0].numpy()
    _, ref = structural_similarity(
        x.numpy(),
        y.numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    np.testing.assert_allclose(ours[5:-5, 5:-5], ref[5:-5, 5:-5], atol=1e-5)
    assert terms["ssim"].item() == pytest.approx(1 - ssim_map(p.float(), t.float()).mean().item(), rel=1e-5)
    # Perfect prediction: SSIM term 0.
    assert ssim_map(target, target).mean().item() == pytest.approx(1.0, abs=1e-6)


def test_iou_ms_matches_formula() -> None:
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[0.9, 0.2], [0.6, 0.4]]]])
    logits_s = torch.tensor([[[[1.0, 0.0, -1.0, 2.0]] * 4]])  # 1x1x4x4
    loss_fn = IoUMultiScaleLoss(scale_weight=0.5, consistency_weight=1.0)
    terms = loss_fn.terms(logits, target, logits_s)

    p = torch.sigmoid(logits)
    g = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    iou = 1 - (p * g).sum() / ((p + g - p * g).sum() + 1e-7)
    g_s = g.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest x2
    p_s = torch.sigmoid(logits_s)
    iou_s = 1 - (p_s * g_s).sum() / ((p_s + g_s - p_s * g_s).sum() + 1e-7)
    ref = torch.sigmoid(F.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=True))
    consistency = ((p_s - ref) ** 2).mean()
    assert terms["iou"].item() == pytest.approx(iou.item(), rel=1e-6)
    assert terms["iou_scaled"].item() == pytest.approx(0.5 * iou_s.item(), rel=1e-6)
    assert terms["consistency"].item() == pytest.approx(consistency.item(), rel=1e-6)
    assert loss_fn(logits, target, logits_s).item() == pytest.approx(
        (iou + 0.5 * iou_s + consistency).item(), rel=1e-6
    )
    assert loss_fn(logits, target).item() == pytest.approx(iou.item(), rel=1e-6)
    # The consistency term does not move the full-scale view (its reference is detached).
    logits = logits.clone().requires_grad_(True)
    logits_s = logits_s.clone().requires_grad_(True)
    loss_fn.terms(logits, target, logits_s)["consistency"].backward()
    assert logits.grad is None and logits_s.grad is not None
    with pytest.raises(ValueError, match="shape"):
        loss_fn(logits, target[:, :, :1])


# ---------------------------------------------------------------------------------------------- refiner
def two_colour_image(h: int = 32, w: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.zeros(1, 3, h, w)
    image[:, 0, :, : w // 2] = 0.9  # red left half
    image[:, 2, :, w // 2 :] = 0.8  # blue right half
    region = torch.zeros(1, 1, h, w)
    region[..., : w // 2] = 1.0
    return image, region


def test_refiner_follows_colour_regions() -> None:
    image, region = two_colour_image()
    refiner = PixelAdaptiveRefiner()
    # A label that stops 4 pixels short of the colour edge: the gap (same colour as the object) fills in,
    # nothing leaks across the colour edge.
    short = torch.zeros_like(region)
    short[..., :12] = 1.0
    out = refiner(image, short)
    assert out.shape == short.shape
    assert out.min() >= 0 and out.max() <= 1
    assert out[..., 12:16].min() > 0.5
    assert out[..., 16:].max() < 0.02
    assert (out - region).abs().mean() < 0.8 * (short - region).abs().mean()
    # A label that overshoots the edge by 4 pixels is pulled down there, and stays high inside.
    over = torch.zeros_like(region)
    over[..., :20] = 1.0
    out = refiner(image, over)
    assert out[..., 16:20].max() < 0.4
    assert out[..., :14].min() > 0.95
    assert (out - region).abs().mean() < 0.8 * (over - region).abs().mean()
    label = short
    # Batches, other label resolutions and the device of the inputs.
    images = torch.cat([image, image.flip(-1)])
    small = F.interpolate(torch.cat([label, label.flip(-1)]), size=(16, 16), mode="bilinear")
    assert refiner(images, small).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="maps must have shape"):
        refiner(images, small[:1])


# ---------------------------------------------------------------------------------------------- label updates
def test_olr_and_spr_update_formulas() -> None:
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 16, 16, generator=g)
    labels = torch.rand(2, 1, 16, 16, generator=g)
    preds = torch.rand(2, 1, 16, 16, generator=g)
    olr = SaliencyDetector(backbone=BACKBONE, label_update="olr", olr_lambda=0.4, olr_warmup_epochs=2)
    assert [olr.olr_lambda_at(e) for e in range(4)] == [1.0, 1.0, 0.4, 0.4]
    assert [olr.updates_labels_at(e) for e in range(4)] == [False, False, True, True]
    assert torch.equal(olr.updated_labels(images, labels, preds, epoch=1), labels)
    assert torch.equal(olr.updated_labels(images, labels, preds, epoch=2), 0.4 * labels + 0.6 * preds)

    spr = SaliencyDetector(backbone=BACKBONE, label_update="spr", spr_weights=(1.0, 2.0, 1.0))
    assert [spr.updates_labels_at(e) for e in range(3)] == [False, True, True]
    prior = spr.refiner(images, labels)
    expected = (1.0 * prior + 2.0 * preds + 1.0 * labels) / 4.0
    torch.testing.assert_close(spr.updated_labels(images, labels, preds, epoch=1), expected)
    spr_pred = SaliencyDetector(backbone=BACKBONE, label_update="spr", spr_refine_input="prediction")
    prior = spr_pred.refiner(images, preds)
    torch.testing.assert_close(
        spr_pred.updated_labels(images, labels, preds, epoch=1), 0.1 * prior + 0.7 * preds + 0.2 * labels
    )
    with pytest.raises(ValueError, match="label_update"):
        SaliencyDetector(backbone=BACKBONE, label_update="hma")


def test_olr_training_run_applies_formula_at_epoch_end(tmp_path: Path) -> None:
    """lr = 0 keeps the network fixed, so the staged update is reproducible from one more forward pass."""
    torch.manual_seed(0)
    samples = make_samples()
    model = SaliencyDetector(backbone=BACKBONE, label_update="olr", hflip=False, lr=0.0, lr_milestones=())
    seen: list[tuple[int, list[str], dict[str, np.ndarray]]] = []
    model.label_listeners.append(lambda m, epoch, ids: seen.append((epoch, ids, m.export_labels())))
    store_writer = LabelRoundWriter(tmp_path / "store")
    trainer(3, callbacks=[store_writer]).fit(model, loader(samples))

    g0 = {s["id"]: (s["pseudo"][0] * 255).round().to(torch.uint8).numpy() for s in samples}
    assert [(e, ids) for e, ids, _ in seen] == [(0, []), (1, []), (2, sorted(g0))]
    for _, _, labels in seen[:2]:  # lambda = 1 in the two warm-up epochs: labels unchanged
        assert sorted(labels) == sorted(g0)
        for sid in g0:
            np.testing.assert_array_equal(labels[sid], g0[sid])

    model.train()
    images = torch.stack([s["image"] for s in samples])
    with torch.no_grad():
        y = torch.sigmoid(model.model(images))
    g = torch.stack([torch.from_numpy(g0[s["id"]]) for s in samples]).float()[:, None] / 255.0
    expected = ((0.4 * g + 0.6 * y) * 255).round().to(torch.uint8)
    labels = model.export_labels()
    for i, s in enumerate(samples):
        diff = np.abs(labels[s["id"]].astype(int) - expected[i, 0].numpy().astype(int))
        assert diff.max() <= 1  # float rounding of a recomputed forward pass
        assert (diff == 0).mean() > 0.99
    assert model.label_epoch == 2
    # The writer stored the updated bank at original size, as a completed round.
    store = PseudoLabelStore(tmp_path / "store")
    assert store_writer.written == ["stage2-epoch2"] and store.current_round() == "stage2-epoch2"
    stored = store.read("seq/img0")
    assert stored.shape == (SIZE * 2, SIZE + 8)


def test_training_lowers_loss_and_label_roundtrip() -> None:
    torch.manual_seed(0)
    samples = make_samples(with_mask=True)
    model = SaliencyDetector(
        backbone=BACKBONE, label_update="spr", optimizer="adam", lr=1e-3, hflip=True, lr_milestones=()
    )
    batch = next(iter(loader(samples)))

    def current_loss() -> float:
        model.train()
        with torch.no_grad():
            return model.loss_fn(model.model(batch["image"]), batch["pseudo"]).item()

    before = current_loss()
    fit = trainer(8, limit_val_batches=1, num_sanity_val_steps=0)
    fit.fit(model, loader(samples, batch_size=2, shuffle=True), loader(samples))
    after = current_loss()
    assert after < 0.8 * before
    assert "val_mae" in fit.callback_metrics and "val_max_f" in fit.callback_metrics
    assert 0 <= float(fit.callback_metrics["val_max_f"]) <= 1
    assert model.label_epoch == 7

    # Export / import round trip.
    exported = model.export_labels()
    assert set(exported) == {s["id"] for s in samples}
    assert all(v.dtype == np.uint8 and v.shape == (SIZE, SIZE) for v in exported.values())
    full = model.export_labels(original_size=True)
    assert full["seq/img1"].shape == (SIZE * 2, SIZE + 8)
    other = SaliencyDetector(backbone=BACKBONE, label_update="olr")
    other.load_labels(exported, sizes=model.label_bank.sizes)
    assert all(np.array_equal(other.export_labels()[k], v) for k, v in exported.items())
    # Loaded labels win over the batch's pseudo labels; other resolutions are resized on use.
    other.load_labels({"seq/img0": np.full((SIZE * 2, SIZE), 1.0, dtype=np.float32)})
    targets = other.training_targets(batch)
    assert torch.all(targets[0] == 1.0)
    assert torch.equal(targets[1], torch.from_numpy(exported["seq/img1"]).float()[None] / 255.0)

    # predict_step
    out = model.predict_step(batch, 0)
    assert out["id"] == batch["id"] and out["saliency"].shape == (4, 1, SIZE, SIZE)
    assert out["saliency"].min() >= 0 and out["saliency"].max() <= 1


def test_iou_ms_training_step_and_input_errors() -> None:
    torch.manual_seed(0)
    samples = make_samples(2)
    model = SaliencyDetector(backbone=BACKBONE, loss="iou_ms", label_update="none")
    batch = next(iter(loader(samples)))
    loss = model.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model._scaled_size((64, 64)) in {(32, 32), (64, 64), (96, 96)}
    no_pseudo = {k: v for k, v in batch.items() if k != "pseudo"}
    with pytest.raises(ValueError, match="pseudo_dir"):
        model.training_step(no_pseudo, 0)
    olr = SaliencyDetector(backbone=BACKBONE, label_update="olr")
    with pytest.raises(ValueError, match="pseudo_dir"):
        olr.training_step(no_pseudo, 0)
    olr.training_step(batch, 0)
    changed = {**batch, "image": batch["image"].flip(-1)}  # a random transform would do this
    with pytest.raises(RuntimeError, match="augment=False"):
        olr.training_step(changed, 0)


def test_label_bank_commit_keeps_unseen_and_last_copy_wins() -> None:
    bank = LabelBank()
    images = torch.rand(2, 3, 8, 8)
    pseudo = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    bank.targets(["a", "b"], images, pseudo)
    bank.stage(["a"], torch.full((1, 1, 8, 8), 0.5))
    bank.stage(["a"], torch.full((1, 1, 8, 8), 0.25))  # a padded duplicate later in the epoch
    assert bank.labels["a"].max() == 0  # staged, not applied
    assert bank.commit() == ["a"]
    assert np.all(bank.labels["a"] == 64) and np.all(bank.labels["b"] == 255)
