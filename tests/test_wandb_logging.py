"""Logging to wandb without network: run naming, SOD metrics, PR curves, panels and label quality.

Every run is offline (``WANDB_MODE=offline``) with wandb's folders in ``tmp_path``; what a run recorded is
read back from its run file (:mod:`tests.helpers.wandb_offline`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tests.helpers.models import TINY
from tests.helpers.wandb_offline import offline_runs
from usod.cli import main
from usod.data.synth import write_dataset

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),
    pytest.mark.filterwarnings("ignore:.*sync_dist.*"),
]


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline wandb with every folder under ``tmp_path/wandb_home``; finishes any run left open.

    wandb reads the environment once per process (``wandb.setup``), so its state is torn down before and
    after: an earlier test's settings must not leak in (nor ours out).
    """
    import wandb

    wandb.teardown()
    home = tmp_path / "wandb_home"
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield home
    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()


def _noisy_labels(masks: Path, out: Path) -> Path:
    """Pseudo labels: the ground truth shifted and blurred (imperfect, so their quality is measurable)."""
    out.mkdir(parents=True)
    for path in sorted(masks.glob("*.png")):
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        label = cv2.GaussianBlur(np.roll(mask, 3, axis=1), (7, 7), 2.0)
        cv2.imwrite(str(out / path.name), label)
    return out


def test_cli_fit_and_test_log_everything_to_an_offline_run(tmp_path: Path, wandb_offline: Path) -> None:
    import wandb

    root = write_dataset(tmp_path / "data", "rgb", 6, size=(40, 48))
    pseudo = _noisy_labels(root / "masks", tmp_path / "pseudo")
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(tmp_path / "runs"),
        },
        "model": {
            "class_path": "usod.models.saliency_detector.SaliencyDetector",
            "init_args": {"backbone": TINY, "channels": 8, "label_update": "olr", "olr_warmup_epochs": 0},
        },
        "data": {
            "class_path": "usod.data.datamodules.RGBDataModule",
            "init_args": {
                "dataset": "folder",
                "root": str(root),
                "pseudo_dir": str(pseudo),
                "image_size": 32,
                "batch_size": 6,  # one step per epoch
                "num_workers": 0,
                "augment": False,
            },
        },
    }
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump(config))
    logger = yaml.safe_load((REPO / "configs/logger/wandb.yaml").read_text())
    logger["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "wandb_runs")
    logger_config = tmp_path / "wandb.yaml"
    logger_config.write_text(yaml.safe_dump(logger))

    main(["fit", "--config", str(experiment), "--config", str(logger_config)])
    wandb.finish()
    (run,) = offline_runs(tmp_path / "wandb_runs")
    assert run.name == "saliency_detector-folder-data"
    assert run.group == "folder-data" and run.job_type == "saliency_detector"
    assert {"saliency_detector", "folder-data", "rgb", "olr"} <= set(run.tags)
    assert run.config["method"] == "saliency_detector" and run.config["dataset_name"] == "folder-data"
    assert run.config["label_update"] == "olr"  # the module's hyper-parameters
    # the whole command-line configuration: trainer settings and classes too
    assert run.config["cli"]["trainer"]["max_epochs"] == 2
    assert run.config["cli"]["model"]["class_path"] == "usod.models.saliency_detector.SaliencyDetector"
    # one value per epoch: the decoder's rate, decayed after epoch 1 of 2 (milestones 0.6, 0.8 of 2 epochs)
    assert run.values("lr") == [pytest.approx(0.005), pytest.approx(0.0005)]
    assert run.values("lr_group0") == [pytest.approx(0.0005), pytest.approx(0.00005)]  # the encoder at 0.1 x
    keys = run.keys()
    assert {"train_loss", "train_bce", "val_mae", "val_max_f", "val_mean_f", "val_adp_f"} <= keys
    assert {"val_max_e", "val_mean_e", "val_adp_e", "val_s_measure"} <= keys
    assert {"val_pr_curve", "val_pr_curve_plot_table", "val_panels", "train_panels"} <= keys
    # the labels changed after both epochs (no warm-up) and were scored against the masks each time
    assert run.values("label_epoch") == [0.0, 1.0]
    max_f = run.values("label_max_f")
    assert len(max_f) == 2 and all(0.0 < f < 1.0 for f in max_f)
    assert {"label_mae", "label_s_measure", "label_adp_e", "label_pr_curve"} <= keys
    # each round's curve sits at the step of that round's scalars
    step = "trainer/global_step"
    curves = [row[step] for row in run.history if any(k.startswith("label_pr_curve/") for k in row)]
    scalars = [row[step] for row in run.history if "label_max_f" in row]
    assert len(scalars) == 2 and curves == scalars, (curves, scalars)
    assert len(run.media("images")) >= 2 and run.media("table")

    ckpt = sorted((tmp_path / "wandb_runs").rglob("*.ckpt"))[-1]
    main(["test", "--config", str(experiment), "--config", str(logger_config), "--ckpt_path", str(ckpt)])
    wandb.finish()
    runs = offline_runs(tmp_path / "wandb_runs")
    assert len(runs) == 2
    test_keys = runs[1].keys()
    expected = {f"test_{k}" for k in ("mae", "max_f", "mean_f", "adp_f", "max_e", "mean_e", "adp_e")}
    assert expected | {"test_s_measure", "test_w_f", "test_pr_curve", "test_panels"} <= test_keys
    assert runs[1].name == "saliency_detector-folder-data"


@pytest.mark.slow
def test_pipeline_logs_stages_and_label_rounds_to_one_run(tmp_path: Path, wandb_offline: Path) -> None:
    from usod.pipelines import PipelineConfig, run_pipeline

    root = write_dataset(tmp_path / "data", "rgb", 4, size=(40, 48))
    config = PipelineConfig(
        out=tmp_path / "run",
        root=root,
        image_size=32,
        batch_size=2,
        log_every_n_steps=1,
        num_workers=0,
        postprocess_workers=0,
        stage1_epochs=1,
        stage1={"backbone": TINY, "head_channels": 8},
        stage2_epochs=1,
        stage2={"channels": 8, "label_update": "olr", "olr_warmup_epochs": 0},
        accelerator="cpu",
        logger={"type": "wandb", "tags": ["smoke"]},
    )
    summary = run_pipeline(config)
    (run,) = offline_runs(tmp_path / "run")
    assert run.name == "a2s_pipeline-folder-data" and run.group == "folder-data"
    assert {"a2s_pipeline", "folder-data", "rgb", "olr", "smoke"} <= set(run.tags)
    assert run.config["job"]["stage1_epochs"] == 1
    assert run.config["stage2"]["label_update"] == "olr"  # the stage's hyper-parameters, not overwritten
    keys = run.keys()
    assert {"stage1-train_loss", "stage2-train_loss", "stage2-label_max_f", "stage2-label_pr_curve"} <= keys
    assert {"labels", "labels_scores", "labels_curves", "labels_pr_plot_table", "report"} <= keys
    # the report's label-round scores are the ones logged
    logged = run.values("labels/stage1/max_f")
    assert logged == [pytest.approx(summary["metrics"]["stage1"]["max_f"])]
    assert run.values("labels/stage2-pred/mae") == [pytest.approx(summary["metrics"]["stage2-pred"]["mae"])]
    # the CSV logs are still written
    assert (tmp_path / "run" / "logs" / "stage2").is_dir()
    import wandb

    assert wandb.run is None  # the pipeline finished its run
    assert run.exit_code == 0


def test_failed_runs_are_recorded_as_failed(tmp_path: Path, wandb_offline: Path, monkeypatch) -> None:
    """A crash must not show as a finished run on the dashboard (exit code 1, not 0)."""
    import pytorch_lightning as pl
    import torch

    import usod.pipelines.a2s
    from usod.loggers import UsodWandbLogger
    from usod.models.base import USODModule

    class Crashing(USODModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch, batch_idx):
            raise RuntimeError("boom")

        def configure_optimizers(self):
            return torch.optim.SGD([self.weight], lr=0.1)

    logger = UsodWandbLogger(save_dir=str(tmp_path / "fit"), name="crash")
    logger.log_hyperparams({"a": 1})  # the run starts before training, as with LightningCLI
    trainer = pl.Trainer(max_epochs=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Crashing(), torch.utils.data.DataLoader(torch.ones(2, 1)))
    (fit_run,) = offline_runs(tmp_path / "fit")
    assert fit_run.exit_code == 1

    def crash(config):
        raise RuntimeError("stage 1 failed")

    monkeypatch.setattr(usod.pipelines.a2s, "train_stage1", crash)
    root = write_dataset(tmp_path / "data", "rgb", 2, size=(32, 32))
    config = usod.pipelines.a2s.PipelineConfig(
        out=tmp_path / "run", root=root, logger="wandb", accelerator="cpu"
    )
    with pytest.raises(RuntimeError, match="stage 1 failed"):
        usod.pipelines.a2s.run_pipeline(config)
    (job_run,) = offline_runs(tmp_path / "run")
    assert job_run.exit_code == 1


def test_logger_setting_errors() -> None:
    from usod.loggers import logger_settings

    assert logger_settings(None) is None and logger_settings("csv") is None
    assert logger_settings("wandb") == {"type": "wandb"}
    assert logger_settings({"project": "p"}) == {"project": "p", "type": "wandb"}
    with pytest.raises(ValueError, match="unknown logger 'tensorboard'"):
        logger_settings("tensorboard")
    with pytest.raises(ValueError, match="unknown logger settings \\['projcet'\\]"):
        logger_settings({"type": "wandb", "projcet": "x"})


# ---------------------------------------------------------------------------------------------- unit tests
def test_runs_are_named_and_grouped_by_method_and_dataset(tmp_path: Path) -> None:
    from usod.data.datamodules import RGBDataModule, RGBDDataModule
    from usod.loggers import method_name, run_identity
    from usod.models.cue_extractor import CueExtractor
    from usod.models.deepusps import DeepUSPSRefiner
    from usod.models.registry import MODELS
    from usod.models.saliency_detector import SaliencyDetector

    rgbd = write_dataset(tmp_path / "rgbd", "rgbd", 2, size=(32, 32))
    detector = SaliencyDetector(backbone=TINY, channels=8, label_update="spr", aux_modality="depth")
    identity = run_identity(detector, RGBDDataModule(dataset="nju2k", root=rgbd))
    assert (identity.name, identity.group) == ("saliency_detector-nju2k", "nju2k")
    assert identity.job_type == "saliency_detector"
    assert identity.tags == ["saliency_detector", "nju2k", "rgbd", "spr"]
    assert identity.config == {"method": "saliency_detector", "dataset_name": "nju2k", "modality": "rgbd"}

    cue = CueExtractor(backbone=TINY, head_channels=8)
    identity = run_identity(cue, RGBDataModule(dataset="folder", root=tmp_path / "my_images"))
    assert identity.name == "cue_extractor-folder-my_images" and identity.group == "folder-my_images"
    assert identity.tags == ["cue_extractor", "folder-my_images", "rgb"]
    assert run_identity(DeepUSPSRefiner(backbone=TINY, channels=8)).name == "deepusps_refiner"  # no data

    for name, cls in MODELS.items():  # every registered module is named after its registry entry
        assert method_name(cls.__new__(cls)) == name

    class MyDetector(SaliencyDetector):
        pass

    assert method_name(MyDetector.__new__(MyDetector)) == "saliency_detector"


def test_describe_fills_only_what_the_config_left_open(wandb_offline: Path, tmp_path: Path) -> None:
    import wandb

    from usod.data.datamodules import RGBDataModule
    from usod.loggers import UsodWandbLogger
    from usod.models.cue_extractor import CueExtractor

    model = CueExtractor(backbone=TINY, head_channels=8)
    data = RGBDataModule(dataset="duts", root=tmp_path)
    logger = UsodWandbLogger(group="ablation", tags=["mine"], save_dir=str(tmp_path / "runs"))
    logger.describe(model, data)
    assert logger._wandb_init["name"] == "cue_extractor-duts"
    assert logger._wandb_init["group"] == "ablation" and logger._wandb_init["job_type"] == "cue_extractor"
    assert logger._wandb_init["tags"] == ["mine", "cue_extractor", "duts", "rgb"]
    run = logger.experiment  # starts the run with those settings
    assert (run.name, run.group) == ("cue_extractor-duts", "ablation")
    named = UsodWandbLogger(name="baseline", save_dir=str(tmp_path / "runs"))
    named.describe(model, data)
    assert named._wandb_init["name"] == "baseline" and named._wandb_init["group"] == "duts"
    wandb.finish()


def test_panels_put_maps_side_by_side() -> None:
    import torch

    from usod.loggers import panel_strip

    maps = {"mask": torch.ones(1, 8, 8), "image": torch.zeros(3, 16, 16)}
    maps["prediction"] = np.full((4, 4), 128, np.uint8)
    strip, titles = panel_strip(maps, size=10)
    assert strip.shape == (10, 30, 3) and strip.dtype == np.uint8
    assert titles == ["image", "prediction", "ground truth"]
    assert strip[:, :10].max() == 0 and (strip[:, 10:20] == 128).all() and (strip[:, 20:] == 255).all()
    with pytest.raises(ValueError, match="no maps"):
        panel_strip({})


def test_progress_bars_follow_tty_env_and_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from usod.progress import progress_bar, progress_enabled

    class _Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("USOD_PROGRESS", raising=False)
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress_enabled()  # not a terminal
    monkeypatch.setattr("sys.stderr", _Tty())
    assert progress_enabled() and not progress_enabled(False)
    monkeypatch.setenv("USOD_PROGRESS", "0")
    assert not progress_enabled()
    monkeypatch.setenv("USOD_PROGRESS", "1")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_enabled()
    monkeypatch.setenv("RANK", "1")
    assert not progress_enabled()  # only rank zero shows bars
    monkeypatch.delenv("RANK")
    out = io.StringIO()
    assert list(progress_bar(range(3), desc="work", file=out)) == [0, 1, 2]
    assert "work" in out.getvalue() and "3/3" in out.getvalue()


def test_evaluation_panels_show_the_auxiliary_input(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import usod.loggers
    from usod.loggers import panel_strip
    from usod.models.saliency_detector import SaliencyDetector

    shown: dict[str, object] = {}

    def capture(_trainer, _key, maps, **_kwargs):
        shown.update(maps)
        return True

    monkeypatch.setattr(usod.loggers, "log_panels", capture)
    module = SaliencyDetector(backbone=TINY, channels=8)
    monkeypatch.setattr(module, "wants_panels", lambda batch_idx: True)
    batch = {"id": ["a"], "image": torch.rand(1, 3, 8, 8), "depth": torch.rand(1, 3, 8, 8)}
    module.log_panels("val", 0, batch, image=batch["image"], prediction=torch.rand(1, 1, 8, 8))
    assert set(shown) == {"image", "depth", "prediction"}
    assert panel_strip({k: v[0] for k, v in shown.items()}, size=4)[1] == ["image", "depth", "prediction"]
    shown.clear()
    module.log_panels("train", 0, batch, image=batch["image"])  # training views are flipped: no aux column
    assert set(shown) == {"image"}
