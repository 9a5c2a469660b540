"""DeepUSPS: the F-beta loss against its formula, target binarisation, the MVA and its round writer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.helpers.models import RESNET18 as BACKBONE
from usod.data.datamodules import StackedLabelDataModule
from usod.data.synth import write_dataset
from usod.labels import LabelRoundWriter, PseudoLabelStore
from usod.models.deepusps import DeepUSPSModel, DeepUSPSRefiner, FBetaLoss, binarize_targets, soft_f_beta
from usod.ops.crf import dense_crf
from usod.pipelines import DeepUSPSConfig

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*self.trainer` reference is not registered.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]


# ---------------------------------------------------------------------------------------------- the loss
def reference_f_beta(p: np.ndarray, t: np.ndarray, beta2: float) -> float:
    """Appendix A literally: precision, recall, then the weighted harmonic mean."""
    tp = float((p * t).sum())
    fp = float((p * (1 - t)).sum())
    fn = float(((1 - p) * t).sum())
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return (1 + beta2) * precision * recall / (beta2 * precision + recall)


def test_f_beta_on_a_hand_computed_example() -> None:
    pred = torch.tensor([1.0, 0.5, 0.0, 0.25]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    # TP = 1.5, FP = 0.25, FN = 0.5 -> P = 6/7, R = 3/4
    p, r = 6 / 7, 3 / 4
    expected = 1.3 * p * r / (0.3 * p + r)
    assert soft_f_beta(pred, target, 0.3).item() == pytest.approx(expected, abs=1e-6)
    assert FBetaLoss(0.3)(pred, target).item() == pytest.approx(1 - expected, abs=1e-6)


@pytest.mark.parametrize("beta2", [0.3, 1.0, 2.0])
def test_f_beta_matches_the_formula_on_random_maps(beta2: float) -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 1, 8, 8, generator=g)
    target = (torch.rand(3, 2, 8, 8, generator=g) > 0.6).float()
    f = soft_f_beta(pred, target, beta2)
    assert f.shape == (3, 2)
    for b in range(3):
        for k in range(2):
            ref = reference_f_beta(pred[b, 0].numpy(), target[b, k].numpy(), beta2)
            assert f[b, k].item() == pytest.approx(ref, rel=1e-5)
    # L_en: the mean over methods of L_beta, then over images
    loss = FBetaLoss(beta2)(pred, target)
    assert loss.item() == pytest.approx(float((1 - f).mean()), rel=1e-6)


def test_f_beta_of_binary_maps_and_its_gradient() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1.0
    assert soft_f_beta(target.clone(), target).item() == pytest.approx(1.0, abs=1e-6)
    assert soft_f_beta(1 - target, target).item() == pytest.approx(0.0, abs=1e-6)
    pred = torch.full((1, 1, 4, 4), 0.5, requires_grad=True)
    FBetaLoss()(pred, target).backward()
    grad = pred.grad[0, 0]
    assert (grad[:2] < 0).all() and (grad[2:] > 0).all()  # raise salient pixels, lower the others
    empty = torch.zeros(1, 1, 4, 4)
    pred = torch.rand(1, 1, 4, 4, requires_grad=True)
    loss = FBetaLoss()(pred, empty)
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and torch.all(pred.grad == 0)
    with pytest.raises(ValueError):
        soft_f_beta(torch.rand(2, 1, 4, 4), torch.rand(3, 1, 4, 4))


def test_binarize_targets() -> None:
    maps = torch.zeros(1, 2, 2, 5)
    maps[0, 0, 0] = torch.tensor([0.2, 0.3, 0.31, 0.5, 0.0])
    maps[0, 0, 1] = torch.tensor([0.3, 0.0, 0.0, 0.09, 0.1])  # mean 0.181 -> gamma 0.2715
    maps[0, 1] = 0.7
    out = binarize_targets(maps)
    assert out[0, 0, 0].tolist() == [0, 1, 1, 1, 0]
    assert out[0, 0, 1].tolist() == [1, 0, 0, 0, 0]
    assert out[0, 1].sum() == 0  # a flat map: nothing exceeds 1.5 x its mean
    assert binarize_targets(maps, 0.5)[0, 1].sum() == 10


# -------------------------------------------------------------------------------------- network / module
def test_model_shapes() -> None:
    from usod.models.backbones import build_encoder

    model = DeepUSPSModel(build_encoder(BACKBONE), channels=16)
    out = model(torch.rand(2, 3, 64, 48))
    assert out.shape == (2, 1, 64, 48)
    probs = model.eval().predict(torch.rand(1, 3, 32, 32))
    assert probs.shape == (1, 1, 32, 32) and probs.min() >= 0 and probs.max() <= 1
    with pytest.raises(ValueError):
        model(torch.rand(2, 1, 32, 32))


def _batch(n: int = 2, size: int = 32, k: int = 1) -> dict:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, size, size, generator=g)
    images[:, :, :, : size // 2] *= 0.2  # left half dark, so a flip changes the image
    return {
        "image": images,
        "pseudo": torch.rand(n, k, size, size, generator=g),
        "id": [f"img{i}" for i in range(n)],
        "size": torch.tensor([[size * 2, size * 3]] * n),
    }


def test_mva_is_the_moving_average_of_the_crf_outputs() -> None:
    module = DeepUSPSRefiner(backbone=BACKBONE, channels=16, mva_alpha=0.7)
    batch = _batch()
    p1 = torch.rand(2, 1, 32, 32)
    p2 = torch.rand(2, 1, 32, 32)
    module.update_mva(batch["id"], batch["image"], p1, batch["size"])
    assert module.export_mva() == {}  # staged, not applied before the epoch ends
    module.mva_bank.commit()
    module.update_mva(batch["id"], batch["image"], p2, batch["size"])
    module.mva_bank.commit()
    rgb = (batch["image"] * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for i, sid in enumerate(batch["id"]):
        c1 = dense_crf(rgb[i], p1[i, 0].numpy(), **module.crf_params)
        c2 = dense_crf(rgb[i], p2[i, 0].numpy(), **module.crf_params)
        c1_q = np.rint(c1 * 255) / 255  # the bank stores uint8
        expected = 0.3 * c2 + 0.7 * c1_q
        got = module.export_mva()[sid].astype(np.float32) / 255
        assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-5
    full = module.export_mva(original_size=True)
    assert full["img0"].shape == (64, 96)


def test_training_step_updates_the_mva_in_the_image_orientation() -> None:
    module = DeepUSPSRefiner(backbone=BACKBONE, channels=16, crf=None, mva_alpha=0.5)
    # A deterministic network (no batch statistics) that is not mirror-symmetric.
    module.model = torch.nn.Conv2d(3, 1, kernel_size=5, padding=2)
    with torch.no_grad():
        module.model.weight.copy_(torch.linspace(-1, 1, 75).view(1, 3, 5, 5))
    batch = _batch(n=4)
    torch.manual_seed(0)
    flips = torch.rand(4) < 0.5
    assert flips.any() and not flips.all()
    torch.manual_seed(0)  # the step draws the same flips
    loss = module.training_step(batch, 0)
    assert loss.requires_grad and 0 <= loss.item() <= 1
    module.on_train_epoch_end()
    with torch.no_grad():
        direct = torch.sigmoid(module.model(batch["image"]))
        on_flipped = torch.sigmoid(module.model(batch["image"].flip(-1)))  # in the mirrored orientation
    for i in range(4):
        got = torch.from_numpy(module.export_mva()[f"img{i}"]).float() / 255
        # A flipped view's prediction is flipped back before it enters the average.
        expected = on_flipped[i, 0].flip(-1) if flips[i] else direct[i, 0]
        assert torch.allclose(got, expected, atol=0.5 / 255 + 1e-4)
        if flips[i]:
            assert not torch.allclose(got, on_flipped[i, 0], atol=0.02)


def test_mva_start_epoch_keeps_early_epochs_out() -> None:
    module = DeepUSPSRefiner(backbone=BACKBONE, channels=16, crf=None, mva_start_epoch=1)
    module.training_step(_batch(), 0)  # epoch 0 (no trainer)
    module.on_train_epoch_end()
    assert module.export_mva() == {}
    with pytest.raises(ValueError):
        DeepUSPSRefiner(backbone=BACKBONE, mva_start_epoch=-1)
    with pytest.raises(ValueError, match="mva_start_epoch"):
        DeepUSPSConfig(out=Path("unused"), epochs=2, refiner={"mva_start_epoch": 2})


def test_targets_must_match_num_targets() -> None:
    module = DeepUSPSRefiner(backbone=BACKBONE, channels=16, num_targets=2, mva=False)
    with pytest.raises(ValueError, match="Bx2xHxW"):
        module.training_step(_batch(k=1), 0)
    loss = module.training_step(_batch(k=2), 0)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError):
        DeepUSPSRefiner(backbone=BACKBONE, mva_alpha=1.0)


# ------------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("deepusps") / "data", "rgb", 6, size=(48, 56))


def test_mva_writer_writes_every_seen_image(synth: Path, tmp_path: Path) -> None:
    import pytorch_lightning as pl

    ids = sorted(p.stem for p in (synth / "images").iterdir())
    labels = tmp_path / "hc"
    labels.mkdir()
    for sid in ids:
        cv2.imwrite(str(labels / f"{sid}.png"), np.full((48, 56), 90, np.uint8))
    dm = StackedLabelDataModule(label_dirs=[labels], root=synth, image_size=32, batch_size=4, num_workers=0)
    writer = LabelRoundWriter(tmp_path / "store", "x-r0-mva", at="end", expected_ids=ids)
    module = DeepUSPSRefiner(backbone=BACKBONE, channels=16, crf={"n_iters": 1})
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        callbacks=[writer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    store = PseudoLabelStore(tmp_path / "store")
    assert writer.written and store.current_round() == "x-r0-mva"
    assert store.finished_ids("x-r0-mva") == set(ids)
    assert store.read(ids[0]).shape == (48, 56)
