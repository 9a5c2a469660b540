"""AdapterTransfer end to end through the CLI on generated data in the real layouts.

For each target (video frames + computed flow, remote sensing, RGB-D, RGB-T): ``usod fit`` with the
experiment config and a still-image base checkpoint, then the adapted checkpoint alone (base file deleted)
through ``usod label`` and ``usod predict``.
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
from usod.models.adapter_transfer import AdapterTransfer
from usod.models.base import load_module, save_module
from usod.models.saliency_detector import SaliencyDetector

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),
    pytest.mark.filterwarnings("ignore:.*val_dataloader.*"),
]

# target -> (synth modality, base aux stream, where the auxiliary image goes)
CASES = {
    "video": ("video", "none", "adapters"),
    "rs": ("rs", "none", "none"),
    "rgbd": ("rgbd", "none", "adapters"),
    "rgbt": ("rgbt", "thermal", "base"),
}


def _base(path: Path, aux: str) -> Path:
    torch.manual_seed(0)
    module = SaliencyDetector(backbone=TINY, channels=8, aux_modality=aux, label_update="none")
    return save_module(module, path)


@pytest.mark.parametrize("name", list(CASES))
def test_adapter_transfer_through_the_cli(name: str, tmp_path: Path) -> None:
    modality, base_aux, route = CASES[name]
    if modality == "video":
        root = write_dataset(tmp_path / "data", "video", 2, size=(40, 48), frames=3)
        shutil.rmtree(root / "Flow")  # no shipped flow: computed with OpenCV and cached
    else:
        root = write_dataset(tmp_path / "data", modality, 6, size=(40, 48))
    base = _base(tmp_path / "base.ckpt", base_aux)

    config = yaml.safe_load((REPO / f"configs/experiment/adapter_{name}_synth.yaml").read_text())
    config["model"]["init_args"]["base"] = str(base)
    config["data"]["init_args"].update(root=str(root), image_size=32, batch_size=4, num_workers=0)
    config["trainer"].update(
        max_epochs=2, default_root_dir=str(tmp_path / "runs"), enable_progress_bar=False, log_every_n_steps=1
    )
    path = tmp_path / "adapter.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    ckpt = sorted((tmp_path / "runs").rglob("*.ckpt"))[-1]
    base.unlink()  # the adapted checkpoint is self-contained

    module = load_module(ckpt)
    assert isinstance(module, AdapterTransfer) and module.aux_route == route
    trained = [k for k in module.state_dict() if k.startswith("adapters.")]
    assert trained and any(k.startswith("base.model.") for k in module.state_dict())
    assert any(v.abs().sum() > 0 for k, v in module.state_dict().items() if ".up.weight" in k)

    images, aux = {
        "video": ("JPEGImages/480p", None),
        "rs": ("train-images", None),
        "rgbd": ("RGB", "depth"),
        "rgbt": ("RGB", "T"),
    }[name]
    n_train = len(sorted((root / images).rglob("*.jpg")))
    store = tmp_path / "labels"
    rc = main(
        ["label", "--ckpt", str(ckpt), "--config", str(path), "--out", str(store), "--round", "adapted",
         "--no-crf", "--median", "1", "--workers", "0"]
    )  # fmt: skip
    assert rc == 0
    labels = sorted((store / "rounds/adapted").rglob("*.png"))
    assert len(labels) == n_train
    assert all(np.asarray(Image.open(p)).shape == (40, 48) for p in labels)

    out = tmp_path / "pred"
    extra = [] if aux is None else ["--aux-dir", str(root / aux)]
    assert main(["predict", "--ckpt", str(ckpt), "--input", str(root / images), "--output", str(out),
                 "--num-workers", "0", *extra]) == 0  # fmt: skip
    maps = [p for p in out.rglob("*.png") if ".usod_flow" not in p.parts]
    assert len(maps) == n_train
    if name == "video":  # flow of each frame folder computed once and cached beside the maps
        assert sorted((out / ".usod_flow/dis").rglob("frames.json"))
