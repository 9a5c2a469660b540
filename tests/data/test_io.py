"""Image, mask and depth readers on every storage quirk, and atomic PNG writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.layouts import make_image, make_mask
from usod.data.io import (
    InvalidInputError,
    atomic_write_bytes,
    read_depth,
    read_image,
    read_mask,
    read_mask_checked,
    read_thermal,
    write_png_atomic,
)

RGB = make_image(0)


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_formats_roundtrip(ext: str, tmp_path: Path) -> None:
    out = read_image(save(tmp_path / f"x{ext}", RGB))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, RGB)


def test_jpeg(tmp_path: Path) -> None:
    out = read_image(save(tmp_path / "x.jpg", RGB, quality=95))
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(Image.open(tmp_path / "x.jpg").convert("RGB")))


def test_grayscale_replicated(tmp_path: Path) -> None:
    gray = RGB[:, :, 0]
    out = read_image(save(tmp_path / "g.png", gray))
    assert out.shape == (24, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_alpha_dropped(tmp_path: Path) -> None:
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(read_image(save(tmp_path / "a.png", rgba)), RGB)


def test_palette_image(tmp_path: Path) -> None:
    img = Image.fromarray(RGB).quantize(colors=16)
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.asarray(img.convert("RGB")))


def test_16bit_gray_scaled(tmp_path: Path) -> None:
    a = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255, 128])


def test_thermal_is_image_reader(tmp_path: Path) -> None:
    np.testing.assert_array_equal(read_thermal(save(tmp_path / "t.png", RGB)), RGB)


def test_truncated_jpeg_clear_error(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    good = save(tmp_path / "x.jpg", make_image(1, 96, 128))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InvalidInputError) as exc:
        read_image(bad)
    assert exc.value.path == bad and "truncated" in exc.value.problem
    assert str(exc.value).startswith(f"{bad}: ")
    assert exc.value.__cause__ is None  # no PIL/cv2 trace chained on
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n garbage", "truncated|not a readable image"),
        (b"hello world" * 10, "not a readable"),
    ],
)
def test_corrupt_files(
    content: bytes, problem: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    for reader in (read_image, read_mask, read_depth):
        with pytest.raises(InvalidInputError, match=problem) as exc:
            reader(path)
        assert exc.value.path == path
    assert capfd.readouterr().err == ""


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        read_mask(tmp_path)
    assert isinstance(InvalidInputError("p", "q"), ValueError)


def test_invalid_input_error_survives_pickling_and_dataloader_workers(tmp_path: Path) -> None:
    import pickle

    from torch.utils.data import DataLoader

    from usod.data.io import LayoutError

    errors = (InvalidInputError("a/b.jpg", "file is empty"), LayoutError("/r", "expected images/\nfound x"))
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), copy.path, copy.problem, str(copy)) == (
            type(error), error.path, error.problem, str(error)
        )  # fmt: skip
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"junk")
    # A worker's error is re-raised in the main process with its type, file and problem (not a RuntimeError).
    with pytest.raises(InvalidInputError) as exc:
        next(iter(DataLoader([broken], batch_size=1, num_workers=1, collate_fn=lambda b: read_image(b[0]))))
    assert exc.value.path == broken and exc.value.problem.startswith("not a readable image")
    assert str(exc.value) == f"{broken}: {exc.value.problem}"


def test_mask_clean_and_antialiased(tmp_path: Path) -> None:
    m = make_mask()
    out, fixes = read_mask_checked(save(tmp_path / "m.png", m))
    np.testing.assert_array_equal(out, m)
    assert fixes == []
    assert 128 in out


def test_mask_zero_one_rescaled(tmp_path: Path) -> None:
    m = (make_mask() == 255).astype(np.uint8)
    out, fixes = read_mask_checked(save(tmp_path / "m.png", m))
    assert set(np.unique(out)) == {0, 255}
    np.testing.assert_array_equal(out == 255, m == 1)
    assert fixes == ["mask stored as 0/1, rescaled to 0/255"]


def test_mask_rgb_and_rgba_max_over_channels(tmp_path: Path) -> None:
    m = make_mask()
    rgb = np.zeros((*m.shape, 3), np.uint8)
    rgb[:, :, 1] = m  # green-only object
    out, fixes = read_mask_checked(save(tmp_path / "c.png", rgb))
    np.testing.assert_array_equal(out, m)
    assert any("colour mask" in f for f in fixes)
    rgba = np.dstack([np.repeat(m[:, :, None], 3, 2), np.full(m.shape, 255, np.uint8)])
    out, fixes = read_mask_checked(save(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(out, m)


def test_mask_16bit_and_bilevel(tmp_path: Path) -> None:
    m16 = make_mask().astype(np.uint16) * 257
    Image.fromarray(m16).save(tmp_path / "m16.png")
    out, fixes = read_mask_checked(tmp_path / "m16.png")
    np.testing.assert_array_equal(out, make_mask())
    assert any("8-bit" in f for f in fixes)
    Image.fromarray(make_mask() > 0).save(tmp_path / "m1.png")  # PIL mode "1"
    assert set(np.unique(read_mask(tmp_path / "m1.png"))) == {0, 255}


def test_palette_label_mask(tmp_path: Path) -> None:
    labels = np.zeros((24, 32), np.uint8)
    labels[2:6, 2:6] = 1
    labels[10:14, 10:14] = 2
    img = Image.fromarray(labels, mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))  # DAVIS-2017 style colours
    img.save(tmp_path / "p.png")
    out, fixes = read_mask_checked(tmp_path / "p.png")
    np.testing.assert_array_equal(out, np.where(labels > 0, 255, 0))
    assert any("palette label" in f for f in fixes)


def test_depth_8_and_16_bit(tmp_path: Path) -> None:
    d8 = np.tile(np.arange(10, 42, dtype=np.uint8), (24, 1))
    out = read_depth(save(tmp_path / "d8.png", d8))
    assert out.dtype == np.float32 and out.shape == (24, 32)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out[0, 1], 1 / 31, rtol=1e-6)
    d16 = (d8.astype(np.uint16) * 1000).astype(np.uint16)
    Image.fromarray(d16).save(tmp_path / "d16.png")
    np.testing.assert_allclose(read_depth(tmp_path / "d16.png"), out, atol=1e-6)
    rgb = np.repeat(d8[:, :, None], 3, axis=2)  # grey depth saved as RGB
    np.testing.assert_allclose(read_depth(save(tmp_path / "d.jpg", rgb, quality=100)), out, atol=0.05)


def test_depth_constant_is_safe(tmp_path: Path) -> None:
    out = read_depth(save(tmp_path / "c.png", np.full((24, 32), 51, np.uint8)))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, 0.2)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_atomic_writes_get_the_usual_file_mode(tmp_path: Path) -> None:
    """Labels must be readable by the group like any other file, not 0600 as mkstemp makes them."""
    mask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_png_atomic_roundtrip(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "seq" / "00001.png"
    m = make_mask()
    write_png_atomic(dest, m)
    np.testing.assert_array_equal(read_mask(dest), m)
    write_png_atomic(dest, RGB)  # overwrite
    np.testing.assert_array_equal(read_image(dest), RGB)
    write_png_atomic(dest, np.full((24, 32), 0.5, np.float32))
    assert int(read_mask(dest)[0, 0]) == 128
    write_png_atomic(dest, np.full((2, 2), 1000, np.uint16))
    assert np.asarray(Image.open(dest)).astype(int).max() == 1000
    assert os.listdir(dest.parent) == ["00001.png"]  # no temp files left behind


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((4, 4), np.int64), "dtype"),
        (np.full((4, 4), 2.0), r"\[0, 1\]"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.uint16), "single-channel"),
    ],
)
def test_write_png_atomic_rejects(array: np.ndarray, problem: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        write_png_atomic(tmp_path / "x.png", array)
    assert not list(tmp_path.iterdir())


def test_write_failure_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_png_atomic(tmp_path / "x.png", make_mask())
    assert not list(tmp_path.iterdir())


def test_map_outputs_never_lands_on_the_inputs(tmp_path: Path) -> None:
    from usod.data.io import images_under, map_outputs

    src = tmp_path / "in"
    for rel in ("a.jpg", "sub/b.png", ".hidden/c.png", "sub/.d.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        save(src / rel, RGB)
    images = images_under(src)
    assert [p.relative_to(src).as_posix() for p in images] == ["a.jpg", "sub/b.png"]
    assert map_outputs(images, src, tmp_path / "out") == [tmp_path / "out/a.png", tmp_path / "out/sub/b.png"]
    for bad in (src, src / "pred", src / "sub"):
        with pytest.raises(InvalidInputError, match="output folder is the input folder"):
            map_outputs(images, src, bad)
    save(src / "a.png", RGB)
    with pytest.raises(InvalidInputError, match="same name as") as exc:
        map_outputs(images_under(src), src, tmp_path / "out")
    assert exc.value.path.name in ("a.jpg", "a.png")
