"""Optical flow computed once per sequence and cached, and the video datasets' ``flow_source`` option."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import layouts
from usod.data import flow as flow_mod
from usod.data.datamodules import VideoDataModule
from usod.data.datasets import get_dataset
from usod.data.flow import cached_flow_images, compute_flow, default_flow_cache, flow_to_color
from usod.data.io import InvalidInputError, LayoutError, read_image


def _textured(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for cells, amp in ((5, 1.0), (10, 0.5), (20, 0.25)):
        img += amp * cv2.resize(rng.random((cells, cells)).astype(np.float32), (w, h))
    img = (img - img.min()) / (img.max() - img.min())
    return np.repeat((img * 255).astype(np.uint8)[..., None], 3, axis=2)


def _write_shifted_sequence(folder: Path, n: int = 3, shift: int = 2) -> list[Path]:
    """Frames of a texture moving ``shift`` pixels to the right per frame."""
    base = _textured(w=64 + shift * n)
    paths = []
    for t in range(n):
        frame = base[:, shift * (n - t) : shift * (n - t) + 64]  # content moves right over time
        paths.append(layouts.save(folder / f"{t:05d}.png", np.ascontiguousarray(frame)))
    return paths


def test_cached_flow_images_match_the_direct_computation_and_show_rightward_motion(tmp_path: Path) -> None:
    frames = _write_shifted_sequence(tmp_path / "seq", n=3)
    out = cached_flow_images(frames, tmp_path / "cache", method="dis")
    assert [p.name for p in out] == ["00000.png", "00001.png", "00002.png"]
    images = [read_image(p) for p in frames]
    expected = flow_to_color(compute_flow(images[0], images[1]))
    np.testing.assert_array_equal(read_image(out[0]), expected)
    # the last frame repeats the flow of its predecessor
    np.testing.assert_array_equal(read_image(out[2]), read_image(out[1]))
    # rightward motion is red on the Middlebury wheel: the centre of the image is reddish
    centre = read_image(out[0])[16:32, 20:44].reshape(-1, 3).mean(0)
    assert centre[0] > centre[1] + 30 and centre[0] > centre[2] + 30, centre
    manifest = json.loads((tmp_path / "cache" / "frames.json").read_text())
    assert manifest["method"] == "dis" and [f[0] for f in manifest["frames"]] == [p.name for p in frames]


def test_cache_is_reused_and_recomputed_when_frames_change(tmp_path: Path, monkeypatch) -> None:
    frames = _write_shifted_sequence(tmp_path / "seq", n=3)
    cached_flow_images(frames, tmp_path / "cache")
    calls = []
    real = flow_mod.compute_sequence_flows

    def counting(images, method="dis", **kwargs):  # kwargs: the progress bar's settings
        calls.append(len(images))
        return real(images, method=method, **kwargs)

    monkeypatch.setattr(flow_mod, "compute_sequence_flows", counting)
    cached_flow_images(frames, tmp_path / "cache")
    assert calls == [], "a matching cache must not recompute"
    layouts.save(frames[1], _textured(seed=5))  # a changed frame (new size/mtime) invalidates the sequence
    cached_flow_images(frames, tmp_path / "cache")
    assert calls == [3]
    cached_flow_images(frames, tmp_path / "cache", method="farneback")  # another method too
    assert calls == [3, 3]
    (tmp_path / "cache" / "00001.png").unlink()  # and a missing output
    cached_flow_images(frames, tmp_path / "cache", method="farneback")
    assert calls == [3, 3, 3]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp-")]


def test_cached_flow_errors(tmp_path: Path) -> None:
    frames = _write_shifted_sequence(tmp_path / "seq", n=2)
    with pytest.raises(ValueError, match="at least 2 frames"):
        cached_flow_images(frames[:1], tmp_path / "c")
    with pytest.raises(ValueError, match="unknown flow method"):
        cached_flow_images(frames, tmp_path / "c", method="raft")
    layouts.save(frames[1], _textured(h=40))
    with pytest.raises(ValueError, match="differs"):
        cached_flow_images(frames, tmp_path / "c")
    frames[1].write_bytes(b"")
    with pytest.raises(InvalidInputError):
        cached_flow_images(frames, tmp_path / "c")


def test_default_cache_in_the_root_or_a_user_cache_for_read_only_roots(tmp_path: Path, monkeypatch) -> None:
    assert default_flow_cache(tmp_path) == tmp_path.resolve() / ".usod_flow"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(flow_mod.os, "access", lambda path, mode: False)
    other = default_flow_cache(tmp_path)
    assert other.parent == tmp_path / "xdg" / "usod" / "flow" and len(other.name) == 16


def test_davis_auto_computes_missing_flow_and_keeps_shipped_flow(tmp_path: Path) -> None:
    layouts.write_davis(tmp_path)
    shutil.rmtree(tmp_path / "Flow/480p/car-turn")  # bear ships flow, car-turn does not
    with pytest.raises(InvalidInputError, match="no flow folder"):
        get_dataset("davis", root=tmp_path, with_flow=True)  # "files" stays the strict default
    ds = get_dataset("davis", root=tmp_path, with_flow=True, flow_source="auto")
    by_seq = {f.id: f.flow for f in ds.files}
    assert by_seq["bear/00000"] == tmp_path / "Flow/480p/bear/00000.png"
    computed = by_seq["car-turn/00003"]
    assert computed == tmp_path / ".usod_flow/dis/JPEGImages/480p/car-turn/00003.png"
    assert ds[len(ds) - 1]["flow"].shape == (layouts.H, layouts.W, 3)
    # an incomplete flow folder (forward flow lacks the last frame) is recomputed as a whole
    (tmp_path / "Flow/480p/bear/00002.png").unlink()
    ds = get_dataset("davis", root=tmp_path, with_flow=True, flow_source="auto", flow_cache=tmp_path / "c")
    assert {f.flow.parent for f in ds.files} == {
        tmp_path / "c/dis/JPEGImages/480p/bear",
        tmp_path / "c/dis/JPEGImages/480p/car-turn",
    }


def test_davis_without_any_flow_folder_and_compute_mode(tmp_path: Path) -> None:
    layouts.write_davis(tmp_path, with_flow=False)
    with pytest.raises(LayoutError, match="flow folder is missing"):
        get_dataset("davis", root=tmp_path, with_flow=True)
    ds = get_dataset("davis", root=tmp_path, with_flow=True, flow_source="compute", flow_method="farneback")
    assert all(".usod_flow/farneback/" in str(f.flow) for f in ds.files)
    with pytest.raises(ValueError, match="flow_source"):
        get_dataset("davis", root=tmp_path, with_flow=True, flow_source="maybe")


def test_per_sequence_layout_computes_flow_in_compute_mode(tmp_path: Path) -> None:
    layouts.write_per_sequence(tmp_path)
    ds = get_dataset("davsod", root=tmp_path, with_flow=True, flow_source="compute")
    assert len(ds) == 7
    assert all(f.flow is not None and ".usod_flow/dis/" in str(f.flow) for f in ds.files)
    # the cache folder inside the root is not mistaken for a sequence
    assert len(get_dataset("davsod", root=tmp_path, with_flow=True, flow_source="compute")) == 7


def test_video_datamodule_computes_flow_by_default(tmp_path: Path) -> None:
    layouts.write_davis(tmp_path, with_flow=False)
    dm = VideoDataModule(
        dataset="davis", root=tmp_path, with_flow=True, image_size=16, batch_size=7, num_workers=0,
        flow_cache=str(tmp_path / "cache"),
    )  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["flow"].shape == (7, 3, 16, 16)
    assert (tmp_path / "cache/dis/JPEGImages/480p/bear/frames.json").is_file()
