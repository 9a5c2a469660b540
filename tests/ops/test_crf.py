"""Tests for the dense CRF + median filter post-processing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from usod.ops import (
    CRFParams,
    PostProcessConfig,
    dense_crf,
    median_filter,
    postprocess,
    postprocess_folder,
    postprocess_many,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _scene(
    seed: int = 0, h: int = 60, w: int = 80, shift: int = 6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-colour image with an elliptic object, and a blurry, shifted, noisy probability map of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
    truth = ((yy - cy) / (0.3 * h)) ** 2 + ((xx - cx) / (0.3 * w)) ** 2 < 1
    image = np.empty((h, w, 3), np.float32)
    image[:] = (40, 70, 190)
    image[truth] = (210, 170, 50)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    prob = cv2.GaussianBlur(np.roll(truth.astype(np.float32), shift, axis=1), (0, 0), 4)
    prob = np.clip(prob + rng.normal(0, 0.08, prob.shape), 0, 1).astype(np.float32)
    return image, prob, truth


@pytest.mark.parametrize("unary_confidence", [None, 0.7])
def test_crf_moves_map_towards_colour_regions(unary_confidence: float | None) -> None:
    image, prob, truth = _scene()
    before = _iou(prob > 0.5, truth)
    refined = dense_crf(image, prob, unary_confidence=unary_confidence)
    assert refined.shape == prob.shape and refined.dtype == np.float32
    assert refined.min() >= 0.0 and refined.max() <= 1.0
    after = _iou(refined > 0.5, truth)
    assert before < 0.85 and after > before + 0.08 and after > 0.95


def test_crf_accepts_uint8_maps_and_hard_labels() -> None:
    image, prob, truth = _scene(seed=1)
    soft = dense_crf(image, np.rint(prob * 255).astype(np.uint8))
    assert _iou(soft > 0.5, truth) > 0.95
    binary = (prob > 0.5).astype(np.float32)
    hard = dense_crf(image, binary)  # exact 0/1 must not give infinite unaries
    assert np.isfinite(hard).all()
    # A near-certain unary barely moves; trusting each label with 0.7 (A2S) lets the image decide.
    assert _iou(hard > 0.5, truth) < 0.85
    assert _iou(dense_crf(image, binary, unary_confidence=0.7) > 0.5, truth) > 0.95


def test_crf_accepts_read_only_images() -> None:
    """Datasets may return read-only arrays; pydensecrf itself would reject them."""
    image, prob, _ = _scene(seed=2)
    frozen = image.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(dense_crf(frozen, prob), dense_crf(image, prob))
    assert not frozen.flags.writeable


def test_median_filter_removes_salt_noise() -> None:
    rng = np.random.default_rng(0)
    clean = np.zeros((40, 50), np.uint8)
    clean[10:30, 15:35] = 255
    noisy = clean.copy()
    flips = rng.random(clean.shape) < 0.04
    noisy[flips] = 255 - noisy[flips]
    filtered = median_filter(noisy, 5)
    assert filtered.dtype == np.uint8 and filtered.shape == clean.shape
    # Away from the square's corners (which a median rounds off) every flipped pixel is restored.
    corners = np.zeros_like(clean, bool)
    for y, x in [(10, 15), (10, 34), (29, 15), (29, 34)]:
        corners[y - 2 : y + 3, x - 2 : x + 3] = True
    assert (noisy != clean).sum() > 50
    np.testing.assert_array_equal(filtered[~corners], clean[~corners])
    np.testing.assert_array_equal(median_filter(noisy, 1), noisy)


def test_postprocess_outputs_and_config() -> None:
    image, prob, truth = _scene(seed=2)
    label = postprocess(image, prob)  # A2S defaults: CRF, threshold 0.5, median 7
    assert label.shape == prob.shape and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 255}
    assert _iou(label > 127, truth) > 0.95
    soft = postprocess(None, prob, PostProcessConfig(crf=False, threshold=None, median_ksize=0))
    np.testing.assert_array_equal(soft, np.rint(prob * 255).astype(np.uint8))
    config = PostProcessConfig(crf_params={"n_iters": 3, "unary_confidence": None})
    assert isinstance(config.crf_params, CRFParams) and config.crf_params.n_iters == 3
    assert config.to_dict()["crf_params"]["sxy_bilateral"] == 50.0


def test_parallel_equals_serial(tmp_path: Path) -> None:
    scenes = [_scene(seed=s, h=40 + s, w=50 + 2 * s) for s in range(5)]
    images = [s[0] for s in scenes]
    probs = [s[1] for s in scenes]
    config = PostProcessConfig(median_ksize=5)
    serial = postprocess_many(images, probs, config, workers=0)
    parallel = postprocess_many(images, probs, config, workers=2, chunksize=2, progress=True)
    assert [p.shape for p in parallel] == [p.shape for p in probs]
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(serial[3], postprocess(images[3], probs[3], config))


def test_postprocess_folder_pairs_by_relative_stem(tmp_path: Path) -> None:
    image_dir, prob_dir, out_dir = tmp_path / "img", tmp_path / "prob", tmp_path / "out"
    expected = {}
    for seed, rel in enumerate(["a", "seq/0001", "seq/0002"]):
        image, prob, _ = _scene(seed=seed)
        (image_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (prob_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(image_dir / f"{rel}.jpg"),
            cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 100],
        )
        prob_u8 = np.rint(prob * 255).astype(np.uint8)
        if rel == "a":  # saved at network resolution: resized to the image size
            prob_u8 = cv2.resize(prob_u8, (40, 30), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(prob_dir / f"{rel}.png"), prob_u8)
        expected[rel] = image.shape[:2]
    written = postprocess_folder(prob_dir, image_dir, out_dir, workers=2)
    assert written == [out_dir / "a.png", out_dir / "seq/0001.png", out_dir / "seq/0002.png"]
    for rel, size in expected.items():
        label = cv2.imread(str(out_dir / f"{rel}.png"), cv2.IMREAD_GRAYSCALE)
        assert label.shape == size and set(np.unique(label)) <= {0, 255}
    # Resume: nothing left to do, existing outputs untouched.
    mtime = (out_dir / "a.png").stat().st_mtime_ns
    assert postprocess_folder(prob_dir, image_dir, out_dir, skip_existing=True) == []
    assert (out_dir / "a.png").stat().st_mtime_ns == mtime

    (image_dir / "seq" / "0002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"no image for probability map .*seq/0002\.png"):
        postprocess_folder(prob_dir, image_dir, tmp_path / "out2")
    with pytest.raises(FileNotFoundError, match="no \\*.png probability maps"):
        postprocess_folder(image_dir, image_dir, tmp_path / "out3")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda im, p: dense_crf(im[..., 0], p), r"image must be HxWx3.*\(60, 80\)"),
        (lambda im, p: dense_crf(im.astype(np.float32), p), "image must be uint8"),
        (lambda im, p: dense_crf(im, p[None].repeat(2, 0)), r"probability map must be HxW.*\(2, 60, 80\)"),
        (lambda im, p: dense_crf(im, p[:50]), r"size \(60, 80\).*\(50, 80\) differ"),
        (lambda im, p: dense_crf(im, p * 3), r"\[0, 1\]"),
        (lambda im, p: dense_crf(im, p.astype(np.int64)), "float in"),
        (lambda im, p: dense_crf(im, p, unary_confidence=0.4), "unary_confidence"),
        (lambda im, p: dense_crf(im, p, n_iters=0), "n_iters"),
        (lambda im, p: median_filter((p * 255).astype(np.uint8), 4), "positive odd"),
        (lambda im, p: median_filter(p, 3), "uint8"),
        (lambda im, p: postprocess(None, p), "needs the RGB image"),
        (lambda im, p: PostProcessConfig(median_ksize=4), "median_ksize"),
        (lambda im, p: PostProcessConfig(threshold=2.0), "threshold"),
        (lambda im, p: postprocess_many([im], [p, p]), "1 images but 2"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match: str) -> None:
    image, prob, _ = _scene()
    with pytest.raises(ValueError, match=match):
        call(image, prob)
