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

from tests.helpers.wandb_offline import offline_runs
from usod.cli import main
from usod.data.synth import write_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "test_resnet", "weights": "none"}

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),
    pytest.mark.filterwarnings("ignore:.*sync_dist.*"),
]


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline wandb with every folder under ``tmp_path/wandb_home``; finishes any run left open."""
    home = tmp_path / "wandb_home"
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    import wandb

    yield home
    if wandb.run is not None:
        wandb.finish()


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
                "batch_size": 3,
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
    keys = run.keys()
    assert {"train_loss", "train_bce", "val_mae", "val_max_f", "val_mean_f", "val_adp_f"} <= keys
    assert {"val_max_e", "val_mean_e", "val_adp_e", "val_s_measure"} <= keys
    assert {"val_pr_curve", "val_pr_curve_plot_table", "val_panels", "train_panels"} <= keys
    # the labels changed after both epochs (no warm-up) and were scored against the masks each time
    assert run.values("label_epoch") == [0.0, 1.0]
    max_f = run.values("label_max_f")
    assert len(max_f) == 2 and all(0.0 < f < 1.0 for f in max_f)
    assert {"label_mae", "label_s_measure", "label_w_f", "label_pr_curve"} <= keys
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
