"""Every registered dataset loads from its real on-disk layout, written fresh into tmp_path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import layouts
from usod.data import io
from usod.data.datasets import ALIASES, DATASETS, get_dataset, get_dataset_class, list_datasets
from usod.data.datasets.base import SODDataset
from usod.data.io import InvalidInputError, LayoutError, write_png_atomic

ALL = sorted(DATASETS)
PAIRED = [n for n in ALL if DATASETS[n].modality in ("rgb", "rgbd", "rgbt")]


def build(name: str, root: Path, **kwargs) -> tuple[SODDataset, layouts.Written]:
    written = layouts.NATIVE_WRITERS[name](root)
    args = {"split": written.split, **written.kwargs, **kwargs}
    return get_dataset(name, root=written.root, **args), written


def check_sample(sample: dict, ds: SODDataset, extra: tuple[str, ...], masks: bool) -> None:
    h, w = layouts.H, layouts.W
    assert sample["image"].shape == (h, w, 3) and sample["image"].dtype == np.uint8
    assert sample["size"] == (h, w)
    assert isinstance(sample["id"], str)
    assert ("mask" in sample) == masks
    if masks:
        assert sample["mask"].shape == (h, w) and sample["mask"].dtype == np.uint8
        assert sample["mask"].max() == 255 and 128 in sample["mask"]  # anti-aliased values survive
    for key in ("depth", "thermal", "flow"):
        assert (key in sample) == (key in extra), key
    if "depth" in extra:
        d = sample["depth"]
        assert d.shape == (h, w) and d.dtype == np.float32 and d.min() == 0.0 and d.max() == 1.0
    if "thermal" in extra:
        assert sample["thermal"].shape == (h, w, 3) and sample["thermal"].dtype == np.uint8
    if "flow" in extra:
        assert sample["flow"].shape == (h, w, 3) and sample["flow"].dtype == np.uint8
    if ds.modality == "video":
        assert sample["id"] == f"{sample['sequence']}/{sample['frame']}"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("with_masks", [False, True])
def test_native_layout_loads(name: str, with_masks: bool, tmp_path: Path) -> None:
    ds, written = build(name, tmp_path, with_masks=with_masks)
    assert len(ds) == (written.n_masked if with_masks else written.n)
    if not with_masks:
        assert ds.ids == written.ids
    for i in range(len(ds)):
        check_sample(ds[i], ds, written.extra, with_masks)
    assert not ds.skipped


@pytest.mark.parametrize("name", PAIRED)
def test_a2s_layout_loads(name: str, tmp_path: Path) -> None:
    cls = DATASETS[name]
    written = layouts.write_a2s(tmp_path, cls.modality)
    ds = cls(tmp_path, with_masks=True)
    assert ds.ids == written.ids
    check_sample(ds[0], ds, written.extra, masks=True)


@pytest.mark.parametrize("name", ALL)
def test_training_never_opens_masks(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = layouts.NATIVE_WRITERS[name](tmp_path)
    # corrupt every mask on disk and make any mask read fail loudly
    for path in tmp_path.rglob("*.png"):
        parts = {p.lower() for p in path.parts}
        if parts & {
            "gt",
            "masks",
            "annotations",
            "gt_object_level",
            "ground_truth_mask",
            "pixelwisegt-new-png",
        } or (path.parent.name.endswith(("-Mask", "-labels")) or name == "msra-b"):
            path.write_bytes(b"not a png")

    def boom(path: Path) -> np.ndarray:
        raise AssertionError(f"mask read during training: {path}")

    monkeypatch.setattr(io, "read_mask", boom)
    monkeypatch.setattr(io, "read_mask_checked", boom)
    ds = get_dataset(name, root=written.root, split=written.split, **written.kwargs)
    for i in range(len(ds)):
        assert "mask" not in ds[i]


def test_mask_folder_need_not_exist(tmp_path: Path) -> None:
    layouts.write_rgbd(tmp_path)
    shutil.rmtree(tmp_path / "GT")
    ds = get_dataset("nju2k", root=tmp_path)
    assert len(ds) == 3 and "mask" not in ds[0]
    with pytest.raises(LayoutError, match="with_masks=True but no mask folder"):
        get_dataset("nju2k", root=tmp_path, with_masks=True)


@pytest.mark.parametrize("name", ["folder", "davis", "nju2k"])
def test_pseudo_dir(name: str, tmp_path: Path) -> None:
    ds, _ = build(name, tmp_path / "data")
    pseudo = tmp_path / "pseudo"
    for i, sid in enumerate(ds.ids):
        write_png_atomic(pseudo / f"{sid}.png", np.full((layouts.H, layouts.W), i, dtype=np.uint8) * 100)
    ds2 = get_dataset(
        name, root=ds.root, pseudo_dir=pseudo, **({"with_flow": False} if name == "davis" else {})
    )
    s = ds2[2]
    assert s["pseudo"].shape == (layouts.H, layouts.W) and s["pseudo"].dtype == np.uint8
    assert int(s["pseudo"][0, 0]) == 200
    (pseudo / f"{ds.ids[1]}.png").unlink()
    with pytest.raises(InvalidInputError, match="pseudo label missing") as exc:
        ds2[1]
    assert exc.value.path == pseudo / f"{ds.ids[1]}.png"


def test_transform_applied(tmp_path: Path) -> None:
    layouts.write_folder(tmp_path)
    ds = get_dataset("folder", root=tmp_path, transform=lambda s: {**s, "seen": True})
    assert ds[0]["seen"] is True


def test_missing_depth_error_and_skip(tmp_path: Path) -> None:
    written = layouts.write_rgbd(tmp_path)
    missing = tmp_path / "depth" / f"{written.ids[1]}.png"
    missing.unlink()
    with pytest.raises(InvalidInputError, match="no depth file") as exc:
        get_dataset("nju2k", root=tmp_path)
    assert exc.value.path.name == f"{written.ids[1]}.jpg"
    ds = get_dataset("nju2k", root=tmp_path, skip_invalid=True)
    assert ds.ids == [written.ids[0], written.ids[2]]
    assert len(ds.skipped) == 1 and "no depth file" in ds.skipped[0][1]


def test_missing_mask_only_matters_with_masks(tmp_path: Path) -> None:
    written = layouts.write_folder(tmp_path)
    (tmp_path / "masks" / f"{written.ids[0]}.png").unlink()
    assert len(get_dataset("folder", root=tmp_path)) == 3
    with pytest.raises(InvalidInputError, match="no mask file"):
        get_dataset("folder", root=tmp_path, with_masks=True)
    assert len(get_dataset("folder", root=tmp_path, with_masks=True, skip_invalid=True)) == 2


def test_unreadable_image_raises_at_getitem_and_skip_invalid_skips(tmp_path: Path) -> None:
    written = layouts.write_folder(tmp_path)
    bad = tmp_path / "images" / f"{written.ids[1]}.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    ds = get_dataset("folder", root=tmp_path, skip_invalid=True, validate=False)  # counterparts only
    assert len(ds) == 3
    with pytest.raises(InvalidInputError, match="truncated") as exc:
        ds[1]
    assert exc.value.path == bad
    ds = get_dataset("folder", root=tmp_path, skip_invalid=True)  # decodes every file to find such ones
    assert len(ds) == 2 and ds.skipped[0][0] == bad
    with pytest.raises(InvalidInputError, match="truncated"):
        get_dataset("folder", root=tmp_path, validate=True)


@pytest.mark.parametrize("name", ALL)
def test_layout_error_lists_expected_and_found(name: str, tmp_path: Path) -> None:
    (tmp_path / "random_folder").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LayoutError) as exc:
        get_dataset(name, root=tmp_path)
    msg = str(exc.value)
    assert str(tmp_path) in msg and "expected" in msg
    assert "random_folder/" in msg and "notes.txt" in msg


def test_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="not an existing folder"):
        get_dataset("ecssd", root=tmp_path / "nope")


def test_duts_splits_and_roots(tmp_path: Path) -> None:
    layouts.write_duts(tmp_path)
    assert len(get_dataset("duts", root=tmp_path, split="test")) == 2
    assert get_dataset("duts", root=tmp_path).split == "train"
    assert len(get_dataset("duts", root=tmp_path / "DUTS-TR", with_masks=True)) == 3
    assert len(get_dataset("duts", root=tmp_path / "DUTS-TE", split="test", with_masks=True)) == 2
    with pytest.raises(ValueError, match="unknown split 'val'"):
        get_dataset("duts", root=tmp_path, split="val")


def test_split_folders(tmp_path: Path) -> None:
    layouts.write_rgbd_split(tmp_path / "rgbd")
    assert len(get_dataset("nlpr", root=tmp_path / "rgbd", split="test", with_masks=True)) == 2
    with pytest.raises(LayoutError, match="expected one of"):
        get_dataset("nlpr", root=tmp_path / "rgbd")  # no split: the root itself is not a set
    layouts.write_vt5000(tmp_path / "vt")
    assert len(get_dataset("vt5000", root=tmp_path / "vt", split="test")) == 2
    assert len(get_dataset("vt5000", root=tmp_path / "vt" / "Test", split="test")) == 2
    layouts.write_orssd(tmp_path / "rs")
    assert len(get_dataset("eorssd", root=tmp_path / "rs", split="test", with_masks=True)) == 2
    layouts.write_ors4199(tmp_path / "ors")
    assert len(get_dataset("ors-4199", root=tmp_path / "ors", split="test", with_masks=True)) == 2
    assert len(get_dataset("ors-4199", root=tmp_path / "ors" / "train")) == 3


def test_msra_b_split_lists(tmp_path: Path) -> None:
    written = layouts.write_msra_b(tmp_path)
    assert get_dataset("msra-b", root=tmp_path, split="train").ids == written.ids[:2]
    assert get_dataset("msra-b", root=tmp_path, split="val").ids == [written.ids[2]]
    assert get_dataset("msra-b", root=tmp_path, split="test", with_masks=True).ids == [written.ids[3]]
    (tmp_path / "test_cvpr2013.txt").unlink()
    with pytest.raises(LayoutError, match="test_cvpr2013.txt"):
        get_dataset("msra-b", root=tmp_path, split="test")


def test_duplicate_stems_prefer_jpg_and_warn(tmp_path: Path) -> None:
    written = layouts.write_folder(tmp_path)
    layouts.save(tmp_path / "images" / f"{written.ids[0]}.png", layouts.make_image(9))
    ds = get_dataset("folder", root=tmp_path)
    assert len(ds) == 3 and ds.files[0].image.suffix == ".jpg"
    assert ds.warnings and ds.warnings[0][0].suffix == ".png"


# -- video --


def test_davis_sequences_flow_and_splits(tmp_path: Path) -> None:
    layouts.write_davis(tmp_path)
    ds = get_dataset("davis", root=tmp_path, with_flow=True)
    assert list(ds.sequences) == ["bear", "car-turn"]
    assert ds.sequences["car-turn"] == [f"car-turn/{i:05d}" for i in range(4)]
    s = ds[3]
    assert s["sequence"] == "car-turn" and s["frame"] == "00000" and "flow" in s
    assert "flow" not in get_dataset("davis", root=tmp_path)[0]
    assert list(get_dataset("davis", root=tmp_path, split="train").sequences) == ["bear"]
    assert list(get_dataset("davis", root=tmp_path, split="val").sequences) == ["car-turn"]
    shutil.rmtree(tmp_path / "Flow")
    with pytest.raises(LayoutError, match="flow folder is missing") as exc:
        get_dataset("davis", root=tmp_path, with_flow=True)
    assert exc.value.path == tmp_path / "Flow" / "480p"


def test_davis_without_resolution_level(tmp_path: Path) -> None:
    layouts.write_davis(tmp_path, level="", with_flow=False)
    ds = get_dataset("davis", root=tmp_path, with_masks=True)
    assert len(ds) == 7 and ds[0]["mask"].max() == 255


def test_davis_missing_flow_frame(tmp_path: Path) -> None:
    layouts.write_davis(tmp_path)
    (tmp_path / "Flow/480p/bear/00002.png").unlink()  # forward flow is often missing on the last frame
    with pytest.raises(InvalidInputError, match="no flow file"):
        get_dataset("davis", root=tmp_path, with_flow=True)
    ds = get_dataset("davis", root=tmp_path, with_flow=True, skip_invalid=True)
    assert len(ds) == 6 and ds.sequences["bear"] == ["bear/00000", "bear/00001"]


def test_fbms_only_annotated_frames_with_masks(tmp_path: Path) -> None:
    layouts.write_fbms(tmp_path)
    assert len(get_dataset("fbms", root=tmp_path)) == 7
    ds = get_dataset("fbms", root=tmp_path, with_masks=True)
    assert ds.ids == ["bear/bear_0", "car-turn/car-turn_0"] and not ds.skipped


def test_davsod_missing_mask_is_an_error(tmp_path: Path) -> None:
    layouts.write_per_sequence(tmp_path)
    (tmp_path / "bear" / "GT_object_level" / "bear_1.png").unlink()
    with pytest.raises(InvalidInputError, match="no mask file"):
        get_dataset("davsod", root=tmp_path, with_masks=True)


def test_natural_frame_order(tmp_path: Path) -> None:
    for f in (1, 2, 10):
        layouts.save(tmp_path / "s" / "Imgs" / f"f{f}.jpg", layouts.make_image(f))
    ds = get_dataset("segtrack-v2", root=tmp_path)
    assert ds.sequences["s"] == ["s/f1", "s/f2", "s/f10"]


# -- registry --


@pytest.mark.parametrize("name", ALL)
def test_registry_entry_documented(name: str) -> None:
    cls = DATASETS[name]
    assert cls.name == name
    assert cls.modality in ("rgb", "rgbd", "rgbt", "video", "rs")
    assert cls.layout.strip()
    assert cls.__doc__ and "Dataset format" in cls.__doc__
    assert cls.default_split is None or cls.default_split in cls.splits
    assert name in layouts.NATIVE_WRITERS


def test_aliases_and_listing() -> None:
    assert all(target in DATASETS for target in ALIASES.values())
    assert get_dataset_class("NJUD") is DATASETS["nju2k"]
    assert get_dataset_class("rgbd135") is DATASETS["des"]
    with pytest.raises(KeyError, match="known datasets"):
        get_dataset_class("imagenet")
    listed = list_datasets()
    assert [n for n, _, _ in listed] == list(DATASETS)
    assert {m for _, m, _ in listed} == {"rgb", "rgbd", "rgbt", "video", "rs"}


def test_auxiliary_maps_of_another_size_are_resized_masks_must_match(tmp_path) -> None:
    from PIL import Image

    from usod.data.synth import write_dataset

    root = write_dataset(tmp_path / "rgbd", "rgbd", 2, size=(48, 64))
    depth = sorted((root / "depth").iterdir())[0]
    Image.open(depth).resize((32, 24)).save(depth)  # some RGB-D releases store depth at another size
    dataset = get_dataset("nju2k", root=root, with_masks=True)
    sample = dataset.load_raw(0)
    assert sample["depth"].shape[:2] == sample["image"].shape[:2] == (48, 64)
    mask = dataset.files[1].mask
    Image.open(mask).resize((64, 50)).save(mask)
    problem = r"is 50x64 \(height x width\) but its image .* is 48x64"
    with pytest.raises(InvalidInputError, match=problem) as exc:
        dataset.load_raw(1)
    assert exc.value.path == mask
