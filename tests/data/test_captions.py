"""Captions: COCO-captions files, the captioned dataset wrapper, caption-aware flips and CaptionDataModule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from usod.data.captions import CaptionFlip, CaptionIndex, swap_left_right
from usod.data.datamodules.captions import CaptionDataModule
from usod.data.io import InvalidInputError
from usod.data.synth import write_dataset
from usod.data.transforms import EvalTransform, TrainTransform


def test_swap_left_right() -> None:
    assert swap_left_right("a cat on the left, Left of a dog at the RIGHT") == (
        "a cat on the right, Right of a dog at the LEFT"
    )
    assert swap_left_right("leftover bright lights") == "leftover bright lights"


def test_caption_index_matches_ids_and_file_names(tmp_path: Path) -> None:
    path = tmp_path / "captions_val.json"
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 391895, "file_name": "COCO_val2014_000000391895.jpg"},
                    {"id": "synth_00001", "file_name": "images/synth_00001.jpg"},
                ],
                "annotations": [
                    {"id": 1, "image_id": 391895, "caption": " A man riding a bike. "},
                    {"id": 2, "image_id": 391895, "caption": "A cyclist."},
                    {"id": 3, "image_id": "synth_00001", "caption": "a red star"},
                    {"id": 4, "image_id": 5, "caption": "no image entry"},
                ],
            }
        )
    )
    index = CaptionIndex.from_file(path)
    assert index.get("391895") == ["A man riding a bike.", "A cyclist."]
    assert index.get("COCO_val2014_000000391895") == index.get("391895")
    assert index.get("images/synth_00001") == ["a red star"] == index.get("synth_00001")
    assert index.get("5") == ["no image entry"]
    assert index.get("other") == []
    assert sorted(index.captions()) == sorted(
        ["A man riding a bike.", "A cyclist.", "a red star", "no image entry"]
    )
    assert index.missing(["synth_00001", "x"]) == ["x"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not a JSON"),
        ('{"images": []}', "annotations"),
        ('{"annotations": [{"image_id": 1}]}', "caption"),
        ('{"annotations": [], "images": [{"file_name": "a.jpg"}]}', "no 'id'"),
    ],
)
def test_caption_file_errors_name_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=problem) as exc:
        CaptionIndex.from_file(path)
    assert exc.value.path == path
    with pytest.raises(FileNotFoundError):
        CaptionIndex.from_file(tmp_path / "missing.json")


def test_caption_passes_through_transforms_and_flip_swaps_it() -> None:
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :10] = 255  # bright on the left
    mask = np.zeros((20, 30), np.uint8)
    mask[:, :10] = 255
    sample = {"image": image, "mask": mask, "id": "x", "caption": "a white square on the left"}
    out = EvalTransform(16)(dict(sample))
    assert out["caption"] == "a white square on the left"
    flipped = CaptionFlip(TrainTransform(16, scale=(1.0, 1.0), hflip=0.0, color_jitter=0.0), p=1.0)(
        dict(sample)
    )
    assert flipped["caption"] == "a white square on the right"
    assert (
        float(flipped["image"][:, :, -4:].mean()) == 1.0 and float(flipped["image"][:, :, :4].mean()) == 0.0
    )
    assert torch.equal(flipped["mask"], out["mask"].flip(-1))
    assert flipped["size"].tolist() == [20, 30]
    kept = CaptionFlip(TrainTransform(16, scale=(1.0, 1.0), hflip=0.0, color_jitter=0.0), p=0.0)(dict(sample))
    assert kept["caption"] == sample["caption"] and torch.equal(kept["image"], out["image"])


def test_caption_datamodule_on_synthetic_data(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "rgb", "rgb", 6, size=(48, 48))
    truth = {
        a["image_id"]: a["caption"] for a in json.loads((root / "captions.json").read_text())["annotations"]
    }
    dm = CaptionDataModule(root=root, image_size=32, batch_size=3, num_workers=0, augment=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert "mask" not in batch  # unsupervised: the training split never reads ground truth
    assert [truth[i] for i in batch["id"]] == batch["caption"]
    val = next(iter(dm.val_dataloader()))
    assert val["mask"].shape == (3, 1, 32, 32) and val["caption"] == [truth[i] for i in val["id"]]
    assert len(dm.train_set.ids) == 6  # attributes of the wrapped dataset

    supervised = CaptionDataModule(root=root, image_size=32, batch_size=6, num_workers=0, supervised=True)
    supervised.setup("fit")
    batch = next(iter(supervised.train_dataloader()))
    assert batch["mask"].shape == (6, 1, 32, 32) and len(batch["caption"]) == 6
    for sid, cap in zip(batch["id"], batch["caption"], strict=True):  # flips swap left and right
        assert cap in (truth[sid], swap_left_right(truth[sid]))

    # hyper-parameters (saved in checkpoints) stay plain types, whatever paths were passed
    assert all(isinstance(v, (str, int, float, bool, type(None), tuple, list)) for v in dm.hparams.values())
    assert dm.hparams["root"] == str(root)

    none = CaptionDataModule(root=root, captions=None, image_size=32, num_workers=0)
    none.setup("fit")
    assert none.train_set[0]["caption"] == ""


def test_caption_datamodule_requires_captions(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "rgb", "rgb", 3, size=(48, 48))
    data = json.loads((root / "captions.json").read_text())
    data["annotations"] = data["annotations"][:2]
    (root / "partial.json").write_text(json.dumps(data))
    dm = CaptionDataModule(root=root, captions="partial.json", image_size=32, num_workers=0)
    with pytest.raises(InvalidInputError, match="no caption for 1 of 3"):
        dm.setup("fit")
    lax = CaptionDataModule(
        root=root, captions="partial.json", require_captions=False, image_size=32, num_workers=0
    )
    lax.setup("fit")
    assert sorted(lax.train_set[i]["caption"] == "" for i in range(3)) == [False, False, True]
    with pytest.raises(FileNotFoundError):
        CaptionDataModule(root=root, captions="nope.json", num_workers=0).setup("fit")
