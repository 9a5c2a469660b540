"""``save_module`` / ``load_module``: checkpoints of modules built in Python, without a Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers.models import TINY
from usod.models.base import CLASS_KEY, USODModule, load_module, save_module
from usod.models.saliency_detector import SaliencyDetector


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


class _Recorder(USODModule):
    """One parameter; records the training progress and learning rate of every training step."""

    def __init__(self, milestones: tuple[float, ...] = (0.6, 0.8)) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.milestones = milestones
        self.seen: list[tuple[int, int, float, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.seen.append((self.current_epoch, self.global_step, self.training_progress(), lr))
        return (self.weight * batch).sum()

    def configure_optimizers(self) -> Any:
        return self.step_decay(torch.optim.SGD([self.weight], lr=1.0), self.milestones, 0.1)


def _fit(module: _Recorder, **trainer_args: Any) -> list[tuple[int, int, float, float]]:
    from tests.helpers.training import quiet_trainer

    quiet_trainer(**trainer_args).fit(module, DataLoader(torch.ones(2, 1), batch_size=1))
    return module.seen


def test_progress_counts_epochs_from_one_and_lr_drops_after_the_milestone_epochs() -> None:
    seen = _fit(_Recorder(), max_epochs=5)
    # 2 steps per epoch; epoch e (from 0) is at progress (e + 1) / 5: the A2S code's epoch / E, epoch in 1..E
    assert [p for _, _, p, _ in seen[::2]] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    # milestones round(0.6 * 5) = 3 and 4: the 4th and 5th epochs run at 0.1x and 0.01x
    assert [lr for _, _, _, lr in seen[::2]] == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.01])


def test_progress_and_decay_follow_max_steps_without_max_epochs() -> None:
    seen = _fit(_Recorder(milestones=(0.5,)), max_epochs=-1, max_steps=6)
    assert [p for _, _, p, _ in seen] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    assert [lr for _, _, _, lr in seen] == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])


def test_no_finite_end_keeps_the_rate_and_says_so() -> None:
    module = _Recorder()
    assert module.training_progress() == 0.0  # no trainer
    with pytest.warns(UserWarning, match="neither max_epochs nor max_steps"):
        _fit(module, max_epochs=-1, max_steps=-1, max_time={"seconds": 1}, limit_train_batches=1)
    assert {lr for _, _, _, lr in module.seen} == {1.0}


def test_eval_mode_warning_is_silenced_only_for_frozen_parts(recwarn: pytest.WarningsRecorder) -> None:
    import warnings

    from usod.models.cue_extractor import CueExtractor

    def eval_mode_warnings() -> list[str]:
        return [str(w.message) for w in recwarn if "in eval mode at the start of training" in str(w.message)]

    with warnings.catch_warnings():  # keep the filter this installs out of the other tests
        warnings.simplefilter("always")
        module = CueExtractor(backbone={"name": "resnet18", "weights": "none"}, head_channels=8)
        loader = DataLoader([{"image": torch.rand(3, 32, 32), "id": "a"}] * 2, batch_size=2)
        from tests.helpers.training import quiet_trainer

        quiet_trainer(max_epochs=1).fit(module, loader)  # frozen encoder in eval mode: by design
        assert eval_mode_warnings() == []
        mistaken = _Recorder()
        mistaken.head = torch.nn.Linear(1, 1).eval()  # trainable, yet in eval mode: keep Lightning's warning
        _fit(mistaken, max_epochs=1)
        assert len(eval_mode_warnings()) == 1


def test_the_learning_rate_of_every_epoch_is_logged() -> None:
    from tests.helpers.training import quiet_trainer

    module = _Recorder()
    trainer = quiet_trainer(max_epochs=5)
    trainer.fit(module, DataLoader(torch.ones(2, 1), batch_size=1))
    assert float(trainer.callback_metrics["lr"]) == pytest.approx(0.01)  # the 5th epoch's rate


def test_integer_images_are_refused_not_turned_into_nan() -> None:
    from usod.models.cue_extractor import CueExtractor

    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    for module in (CueExtractor(backbone=TINY), SaliencyDetector(backbone=TINY, channels=8)):
        with pytest.raises(ValueError, match=r"floating point RGB in \[0, 1\], got torch.uint8"):
            module.predict_step({"image": images}, 0)
        out = module.eval().predict_step({"image": images.float() / 255}, 0)["saliency"]
        assert torch.isfinite(out).all()


def test_modules_with_per_sample_state_refuse_augmented_training_at_the_start(tmp_path: Path) -> None:
    from tests.helpers.training import quiet_trainer
    from usod.data.datamodules import get_datamodule
    from usod.data.synth import write_dataset
    from usod.models.cue_extractor import CueExtractor

    root = write_dataset(tmp_path / "d", "rgb", 2, size=(32, 32))
    augmented = get_datamodule("folder", root=root, image_size=32, num_workers=0, batch_size=2, augment=True)
    module = CueExtractor(backbone=TINY, feature_cache=True)
    with pytest.raises(ValueError, match="set the datamodule's augment=False"):
        quiet_trainer(max_epochs=1).fit(module, datamodule=augmented)
    plain = get_datamodule("folder", root=root, image_size=32, num_workers=0, batch_size=2, augment=False)
    quiet_trainer(max_epochs=1).fit(module, datamodule=plain)
    assert not CueExtractor(backbone=TINY, feature_cache=False).needs_fixed_training_images
    assert SaliencyDetector(backbone=TINY, channels=8).needs_fixed_training_images


def test_every_registered_module_has_predict_saliency() -> None:
    from usod.models.deepusps import DeepUSPSRefiner
    from usod.models.registry import MODELS

    assert all(callable(getattr(cls, "predict_saliency", None)) for cls in MODELS.values()), MODELS
    module = DeepUSPSRefiner(backbone=TINY, channels=8).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = module.predict_saliency(images)
        assert torch.equal(out, module.predict_step({"image": images}, 0)["saliency"])
    assert out.shape == (2, 1, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
