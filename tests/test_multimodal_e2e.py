"""RGB-D, RGB-T and video (+ flow) end to end through the CLI on generated data in the real layouts.

Stage 1 (``usod fit`` with the experiment config), its pseudo labels (``usod label``), stage 2 on them
(``usod fit``) and the stage-2 labels, each with the auxiliary image as a second stream.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers.models import TINY
from usod.cli import main
from usod.data.synth import write_dataset
from usod.models.base import load_module

REPO = Path(__file__).resolve().parents[1]
AUX = {"rgbd": "depth", "rgbt": "thermal", "video": "flow"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),
    pytest.mark.filterwarnings("ignore:.*val_dataloader.*"),
]


def _config(tmp_path: Path, name: str, root: Path, stage: int, **data: object) -> Path:
    config = yaml.safe_load((REPO / f"configs/experiment/a2s_stage{stage}_{name}_synth.yaml").read_text())
    config["model"]["init_args"]["backbone"] = TINY
    if stage == 1:
        config["model"]["init_args"]["head_channels"] = 8
    else:
        config["model"]["init_args"].update(channels=8, spr_warmup_epochs=0)
    config["data"]["init_args"].update(root=str(root), image_size=32, batch_size=4, num_workers=0, **data)
    config["trainer"].update(
        max_epochs=1 if stage == 1 else 2,
        default_root_dir=str(tmp_path / f"runs{stage}"),
        enable_progress_bar=False,
        log_every_n_steps=1,
    )
    path = tmp_path / f"stage{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _checkpoint(folder: Path) -> Path:
    ckpts = sorted(folder.rglob("*.ckpt"))
    assert ckpts, f"no checkpoint under {folder}"
    return ckpts[-1]


@pytest.mark.parametrize("name", ["rgbd", "rgbt", "video"])
def test_two_stages_with_the_auxiliary_stream_through_the_cli(name: str, tmp_path: Path) -> None:
    if name == "video":
        root = write_dataset(tmp_path / "data", "video", 2, size=(40, 48), frames=3)
        shutil.rmtree(root / "Flow")  # no shipped flow: computed with OpenCV and cached
    else:
        root = write_dataset(tmp_path / "data", name, 6, size=(40, 48))
    store = tmp_path / "labels"

    stage1 = _config(tmp_path, name, root, 1)
    main(["fit", "--config", str(stage1)])
    ckpt1 = _checkpoint(tmp_path / "runs1")
    module = load_module(ckpt1)
    assert module.hparams.aux_modality == AUX[name]
    assert module.model.aux_input
    if name == "video":
        assert (root / ".usod_flow/dis/JPEGImages/480p/synth_00001/frames.json").is_file()

    rc = main(["label", "--ckpt", str(ckpt1), "--config", str(stage1), "--out", str(store), "--workers", "0"])
    assert rc == 0
    labels = sorted((store / "rounds/stage1").rglob("*.png"))
    assert len(labels) == 6
    assert Image.open(labels[0]).size == (48, 40), "labels are written at the original image size"

    stage2 = _config(tmp_path, name, root, 2, pseudo_dir=str(store / "rounds/stage1"))
    main(["fit", "--config", str(stage2)])
    ckpt2 = _checkpoint(tmp_path / "runs2")
    detector = load_module(ckpt2)
    assert detector.model.aux_encoder is not None
    assert any(k.startswith("model.aux_encoder.") for k in detector.state_dict())

    rc = main(
        ["label", "--ckpt", str(ckpt2), "--config", str(stage2), "--out", str(store), "--round", "stage2",
         "--no-crf", "--median", "1", "--workers", "0"]
    )  # fmt: skip
    assert rc == 0
    maps = sorted((store / "rounds/stage2").rglob("*.png"))
    assert [p.relative_to(store / "rounds/stage2") for p in maps] == [
        p.relative_to(store / "rounds/stage1") for p in labels
    ]
    assert all(np.asarray(Image.open(p)).shape == (40, 48) for p in maps)


def test_auxiliary_image_changes_the_stage2_prediction(tmp_path: Path) -> None:
    """The second stream is really used: the same RGB with another depth map gives another map."""
    from usod.models.saliency_detector import SaliencyDetector

    torch.manual_seed(0)
    module = SaliencyDetector(backbone=TINY, channels=8, aux_modality="auto", label_update="none").eval()
    image = torch.rand(1, 3, 32, 32)
    depth = torch.zeros(1, 3, 32, 32)
    depth[..., 8:24, 8:24] = 1.0
    a = module.predict_step({"image": image, "depth": depth, "id": ["x"], "size": None}, 0)["saliency"]
    b = module.predict_step({"image": image, "depth": 1 - depth, "id": ["x"], "size": None}, 0)["saliency"]
    assert (a - b).abs().max() > 1e-4
