"""Tests for the embedded synthetic data generator (:mod:`usod.data.synth`) and ``usod data synth``."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from usod.commands import data_synth
from usod.data.synth import (
    COLOURS,
    RS_SHAPES,
    SHAPES,
    Scene,
    SynthConfig,
    make_rs_scene,
    make_scene,
    make_scenes,
    make_video,
    write_dataset,
)

SIZE_WORDS = {"small", "medium", "large"}
POSITIONS = {"left", "right", "centre", "top", "bottom"} | {
    f"{r} {c}" for r in ("top", "bottom") for c in ("left", "right")
}


def _rng(i: int, seed: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, i])


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return make_scenes(SynthConfig(n_images=30, seed=3))


def _assert_same(a: Scene, b: Scene) -> None:
    for key in ("image", "mask", "depth", "thermal", "flow"):
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)
    assert a.caption == b.caption and a.objects == b.objects


def _max_f(pred: np.ndarray, gt: np.ndarray, beta2: float = 0.3) -> float:
    gt = gt > 127
    best = 0.0
    for t in np.linspace(0.02, 0.98, 49):
        b = pred >= t
        tp = float((b & gt).sum())
        p, r = tp / max(b.sum(), 1), tp / max(gt.sum(), 1)
        if p + r > 0:
            best = max(best, (1 + beta2) * p * r / (beta2 * p + r))
    return best


def _binary_ish(mask: np.ndarray) -> bool:
    """0 and 255 with only anti-aliased edges in between."""
    soft = int(((mask > 0) & (mask < 255)).sum())
    return mask.min() == 0 and mask.max() == 255 and soft <= 0.1 * mask.size and soft <= (mask > 127).sum()


# ---------------------------------------------------------------------------------------------- scenes


def test_scene_is_deterministic() -> None:
    cfg = SynthConfig(size=(64, 80))
    _assert_same(make_scene(_rng(5), cfg), make_scene(_rng(5), cfg))
    _assert_same(make_rs_scene(_rng(5), cfg), make_rs_scene(_rng(5), cfg))
    for a, b in zip(make_video(_rng(5), cfg, 3), make_video(_rng(5), cfg, 3), strict=True):
        _assert_same(a, b)
    assert not np.array_equal(make_scene(_rng(5), cfg).image, make_scene(_rng(6), cfg).image)
    assert not np.array_equal(make_scene(_rng(5), cfg).image, make_scene(_rng(5, seed=1), cfg).image)
    assert not np.array_equal(make_rs_scene(_rng(5), cfg).image, make_rs_scene(_rng(6), cfg).image)


def test_scene_shapes_and_dtypes() -> None:
    s = make_scene(_rng(0), SynthConfig(size=(64, 96)))
    assert s.image.shape == (64, 96, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (64, 96) and s.mask.dtype == np.uint8
    assert s.depth is not None and s.depth.shape == (64, 96) and s.depth.dtype == np.float32
    assert s.depth.min() >= 0.0 and s.depth.max() <= 1.0
    assert s.thermal is not None and s.thermal.shape == (64, 96, 3) and s.thermal.dtype == np.uint8
    assert s.flow is None
    inferno = make_scene(_rng(0), SynthConfig(size=(64, 96), thermal_colormap="inferno")).thermal
    assert inferno is not None and not np.array_equal(inferno[..., 0], inferno[..., 2])  # coloured


def test_masks_are_binary_nonempty_and_in_the_area_range(scenes: list[Scene]) -> None:
    cfg = SynthConfig()
    areas = []
    for s in scenes:
        assert _binary_ish(s.mask)
        area = float((s.mask > 127).mean())
        assert cfg.min_area <= area <= cfg.max_area
        areas.append(area)
    assert max(areas) - min(areas) > 0.1  # sizes vary
    n_objects = {len(s.objects) for s in scenes}
    assert n_objects == {1, 2, 3}


def test_objects_are_mostly_off_centre_and_sometimes_touch_the_border(scenes: list[Scene]) -> None:
    off_centre = touching = 0
    for s in scenes:
        h, w = s.mask.shape
        for o in s.objects:
            cx, cy = o["centroid"]
            off_centre += abs(cx - w / 2) > w / 6 or abs(cy - h / 2) > h / 6
        m = s.mask > 127
        touching += bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
    assert off_centre > 0.6 * sum(len(s.objects) for s in scenes)
    assert 0 < touching < len(scenes)


def test_depth_is_nearer_on_objects(scenes: list[Scene]) -> None:
    for s in scenes:
        assert s.depth is not None
        fg, bg = s.mask > 127, s.mask < 10
        assert float(s.depth[fg].mean()) > float(np.median(s.depth[bg])) + 0.03


def test_thermal_is_warmer_on_objects(scenes: list[Scene]) -> None:
    for s in scenes:
        assert s.thermal is not None
        gray = s.thermal[..., 0].astype(np.float32)  # white-hot grayscale by default
        fg, bg = s.mask > 127, s.mask < 10
        assert float(gray[fg].mean()) > float(np.percentile(gray[bg], 75))


def test_objects_and_captions_agree(scenes: list[Scene]) -> None:
    for s in scenes:
        assert s.objects and s.caption == s.caption.strip()
        for o in s.objects:
            assert o["shape"] in SHAPES and o["colour"] in COLOURS
            assert o["size"] in SIZE_WORDS and o["position"] in POSITIONS
            # the object phrase ends in its shape noun, right after the colour adjective
            assert re.search(rf"\b{o['colour']} {o['shape']}\b", s.caption), (s.caption, o)
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 <= x1 < s.mask.shape[1] and 0 <= y0 <= y1 < s.mask.shape[0]
        assert s.caption.endswith("background")
        assert not re.search(r"\ba [aeiou]|\ban [^aeiou ]", s.caption), s.caption
        assert s.caption.count(" and ") == (len(s.objects) > 1)


def test_caption_wording_example() -> None:
    for i in range(40):
        s = make_scene(_rng(i))
        if len(s.objects) == 2:
            a, b = s.objects
            assert s.caption.startswith(("a ", "an "))
            assert f" {a['shape']} " in s.caption and f" {b['shape']} " in s.caption
            assert " against a" in s.caption
            return
    pytest.fail("no two-object scene in 40 draws")


def test_task_is_learnable_but_not_trivial(scenes: list[Scene]) -> None:
    h, w = scenes[0].mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    centre = np.exp(-(((xx - w / 2) / (0.25 * w)) ** 2 + ((yy - h / 2) / (0.25 * h)) ** 2) / 2)

    def contrast(img: np.ndarray) -> np.ndarray:  # frequency-tuned saliency: distance to the mean Lab colour
        lab = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32), (5, 5), 0)
        sal = np.linalg.norm(lab - lab.reshape(-1, 3).mean(0), axis=2)
        return (sal - sal.min()) / (sal.max() - sal.min() + 1e-6)

    f_centre = np.mean([_max_f(centre, s.mask) for s in scenes])
    f_contrast = np.mean([_max_f(contrast(s.image), s.mask) for s in scenes])
    f_gt = np.mean([_max_f(s.mask / 255.0, s.mask) for s in scenes])
    assert f_gt > 0.99
    assert f_centre < 0.55  # a centre prior is far from solving it
    assert f_contrast > f_centre + 0.15  # colour contrast carries real signal ...
    assert f_contrast < 0.9  # ... but does not solve it either


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="size"):
        SynthConfig(size=(8, 8))
    with pytest.raises(ValueError, match="min_area"):
        SynthConfig(min_area=0.5, max_area=0.4)
    with pytest.raises(ValueError, match="frames"):
        SynthConfig(frames=1)
    with pytest.raises(ValueError, match="thermal_colormap"):
        SynthConfig(thermal_colormap="ironbow")


# ---------------------------------------------------------------------------------------------- rs


def test_rs_scene() -> None:
    cfg = SynthConfig(size=(96, 96))
    kinds = set()
    for i in range(12):
        s = make_rs_scene(_rng(i), cfg)
        assert s.image.shape == (96, 96, 3) and s.mask.shape == (96, 96)
        assert s.depth is None and s.thermal is None
        assert (s.mask > 127).any() and _binary_ish(s.mask)
        assert 1 <= len(s.objects) <= cfg.max_rs_objects
        assert s.caption.startswith("an aerial view of ") and "fields" in s.caption
        for o in s.objects:
            assert o["shape"] in RS_SHAPES and re.search(rf"\b{o['colour']} {o['shape']}\b", s.caption)
            kinds.add(o["shape"])
    assert len(kinds) >= 3


# ---------------------------------------------------------------------------------------------- video


def _sample(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    h, w = flow.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(
        img, xx + flow[..., 0], yy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )


def test_video_frames_and_exact_flow() -> None:
    cfg = SynthConfig(size=(96, 96))
    for seq in range(3):
        frames = make_video(_rng(seq), cfg, n_frames=5)
        assert len(frames) == 5
        for f in frames:
            assert f.image.shape == (96, 96, 3) and f.mask.shape == (96, 96)
            assert f.flow is not None and f.flow.shape == (96, 96, 2) and f.flow.dtype == np.float32
            assert (f.mask > 127).any() and f.caption
        np.testing.assert_array_equal(frames[-1].flow, frames[-2].flow)
        for t in range(4):
            a, b, flow = frames[t], frames[t + 1], frames[t].flow
            assert flow is not None
            assert np.linalg.norm(flow, axis=2).max() > 0.2  # something moves
            # object pixels land on object pixels of the next frame
            fg = (a.mask > 200) & (cv2.erode(a.mask, np.ones((5, 5), np.uint8)) > 200)
            assert (_sample(b.mask.astype(np.float32), flow)[fg] > 127).mean() > 0.99
            # object motion is its own: the next mask warped by the flow reproduces this mask, edges included,
            # much better than under the camera pan alone
            sel = a.mask > 127
            pan = np.broadcast_to(flow[a.mask == 0][0], flow.shape).copy()
            err_obj = np.abs(_sample(b.mask.astype(np.float32), flow) - a.mask)[sel].mean()
            err_pan = np.abs(_sample(b.mask.astype(np.float32), pan) - a.mask)[sel].mean()
            assert err_obj < 0.5 * err_pan and err_obj < 8.0, (seq, t, err_obj, err_pan)
            # away from (dis)occlusions, the next frame warped by the flow matches this one to the noise level
            # (blurred to average the sensor noise out), far better than without the flow
            k = np.ones((9, 9), np.uint8)
            region = (cv2.dilate(np.maximum(a.mask, b.mask), k) == 0) | (cv2.erode(a.mask, k) > 200)
            region[:12], region[-12:], region[:, :12], region[:, -12:] = False, False, False, False

            def blur(x: np.ndarray) -> np.ndarray:
                return cv2.GaussianBlur(x.astype(np.float32), (0, 0), 2.0)

            err_flow = np.abs(blur(_sample(b.image.astype(np.float32), flow)) - blur(a.image))[region].mean()
            err_zero = np.abs(blur(b.image) - blur(a.image))[region].mean()
            assert err_flow < 0.7 * err_zero and err_flow < 1.0, (seq, t, err_flow, err_zero)
    with pytest.raises(ValueError, match="2 frames"):
        make_video(_rng(0), cfg, n_frames=1)


# ---------------------------------------------------------------------------------------------- writing


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(root.glob(pattern))


def _check_coco(root: Path, n: int) -> None:
    coco = json.loads((root / "captions.json").read_text())
    ids = [im["id"] for im in coco["images"]]
    assert len(ids) == n == len(set(ids)) == len(coco["annotations"])
    for im in coco["images"]:
        assert (root / im["file_name"]).is_file() and im["height"] > 0 and im["width"] > 0
    assert {a["image_id"] for a in coco["annotations"]} == set(ids)
    assert all(isinstance(a["caption"], str) and a["caption"] for a in coco["annotations"])
    assert len({a["id"] for a in coco["annotations"]}) == n


@pytest.mark.parametrize("modality", ["rgb", "rgbd", "rgbt", "rs"])
def test_write_image_layouts(tmp_path: Path, modality: str) -> None:
    root = write_dataset(tmp_path / modality, modality, 4, seed=1, size=(48, 64), test_fraction=0.5)
    meta = json.loads((root / "synth.json").read_text())
    assert meta["complete"] is True and meta["modality"] == modality and meta["config"]["size"] == [48, 64]
    if modality == "rs":
        pairs = [("train-images/*.jpg", "train-labels/*.png"), ("test-images/*.jpg", "test-labels/*.png")]
        counts = [len(_files(root, img)) for img, _ in pairs]
        assert counts == [2, 2]
        for img, lab in pairs:
            assert [p.stem for p in _files(root, img)] == [p.stem for p in _files(root, lab)]
    else:
        folders = {"rgb": ["images", "masks"], "rgbd": ["RGB", "depth", "GT"], "rgbt": ["RGB", "T", "GT"]}[
            modality
        ]
        stems = [[p.stem for p in _files(root, f"{d}/*")] for d in folders]
        assert all(s == [f"synth_{i:05d}" for i in range(4)] for s in stems)
        img = cv2.imread(str(next(root.glob(f"{folders[0]}/*.jpg"))), cv2.IMREAD_UNCHANGED)
        assert img.shape == (48, 64, 3)
        gt = cv2.imread(str(next(root.glob(f"{folders[-1]}/*.png"))), cv2.IMREAD_UNCHANGED)
        assert gt.shape == (48, 64) and gt.dtype == np.uint8
        if modality == "rgbd":
            depth = cv2.imread(str(root / "depth" / "synth_00000.png"), cv2.IMREAD_UNCHANGED)
            expected = make_scene(_rng(0, seed=1), SynthConfig(size=(48, 64))).depth
            assert depth.dtype == np.uint8 and expected is not None
            np.testing.assert_array_equal(depth, np.round(expected * 255).astype(np.uint8))  # near = bright
    _check_coco(root, 4)
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_write_video_layout(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "video", "video", 2, seed=0, size=(48, 48), frames=3)
    for top, ext in (("JPEGImages", "jpg"), ("Annotations", "png"), ("Flow", "png")):
        names = sorted(
            str(p.relative_to(root / top / "480p")) for p in (root / top / "480p").rglob(f"*.{ext}")
        )
        assert names == [f"synth_{s:05d}/{f:05d}.{ext}" for s in range(2) for f in range(3)]
    flow_png = cv2.imread(str(root / "Flow/480p/synth_00000/00002.png"), cv2.IMREAD_COLOR)
    assert flow_png.shape == (48, 48, 3)
    np.testing.assert_array_equal(flow_png, cv2.imread(str(root / "Flow/480p/synth_00000/00001.png")))
    _check_coco(root, 6)
    coco = json.loads((root / "captions.json").read_text())
    assert coco["images"][0]["id"] == "synth_00000/00000"


def test_write_is_deterministic_and_prefix_stable(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", "rgbt", 3, seed=7, size=(40, 40))
    b = write_dataset(tmp_path / "b", "rgbt", 3, seed=7, size=(40, 40))
    c = write_dataset(tmp_path / "c", "rgbt", 2, seed=7, size=(40, 40))
    d = write_dataset(tmp_path / "d", "rgbt", 3, seed=8, size=(40, 40))
    for p in sorted(a.rglob("*.*")):
        rel = p.relative_to(a)
        assert p.read_bytes() == (b / rel).read_bytes(), rel
    for p in sorted(c.glob("RGB/*.jpg")):  # the first samples do not depend on n
        assert p.read_bytes() == (a / p.relative_to(c)).read_bytes()
    assert (a / "RGB/synth_00000.jpg").read_bytes() != (d / "RGB/synth_00000.jpg").read_bytes()


def test_write_refuses_to_clobber(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds", "rgb", 3, size=(40, 40))
    with pytest.raises(FileExistsError, match="not empty"):
        write_dataset(root, "rgb", 2, size=(40, 40))
    write_dataset(root, "rgb", 2, size=(40, 40), overwrite=True)
    assert len(list((root / "images").glob("*.jpg"))) == 2  # stale samples of the larger run are gone
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="synth.json"):
        write_dataset(other, "rgb", 2, size=(40, 40), overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="unknown synthetic modality"):
        write_dataset(tmp_path / "x", "lidar", 2)


# ---------------------------------------------------------------------------------------------- CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    data_synth.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_writes_every_modality(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["--out", str(tmp_path / "all"), "--modality", "all", "--n", "2", "--size", "40", "48"])
    args.frames = 2
    assert data_synth.run(args) == 0
    out = capsys.readouterr().out
    for modality in ("rgb", "rgbd", "rgbt", "video", "rs"):
        assert (tmp_path / "all" / modality / "synth.json").is_file()
        assert f"{modality}: 2 " in out
    assert len(list((tmp_path / "all/video/JPEGImages/480p").rglob("*.jpg"))) == 4
    # a second run without --overwrite fails cleanly
    assert data_synth.run(_parse(["--out", str(tmp_path / "all/rgb"), "--modality", "rgb", "--n", "2"])) == 2
    assert "not empty" in capsys.readouterr().err
    assert data_synth.run(_parse(["--out", str(tmp_path / "z"), "--modality", "rgb", "--n", "0"])) == 2
