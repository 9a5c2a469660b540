"""Tests for :mod:`usod.data.flow`: the Middlebury colour wheel and OpenCV flow estimation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from usod.data.flow import compute_flow, compute_sequence_flows, flow_to_color, make_color_wheel


def _uniform(u: float, v: float, h: int = 8, w: int = 8) -> np.ndarray:
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0], flow[..., 1] = u, v
    return flow


def _textured(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for cells, amp in ((6, 1.0), (12, 0.5), (24, 0.25)):
        img += amp * cv2.resize(
            rng.random((cells, cells)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
        )
    img = (img - img.min()) / (img.max() - img.min())
    return np.repeat((img * 255).astype(np.uint8)[..., None], 3, axis=2)


def test_color_wheel_is_the_middlebury_one() -> None:
    wheel = make_color_wheel()
    assert wheel.shape == (55, 3)
    assert tuple(wheel[0]) == (255, 0, 0)  # red
    assert tuple(wheel[15]) == (255, 255, 0)  # yellow
    assert tuple(wheel[21]) == (0, 255, 0)  # green
    assert tuple(wheel[25]) == (0, 255, 255)  # cyan
    assert tuple(wheel[36]) == (0, 0, 255)  # blue
    assert tuple(wheel[49]) == (255, 0, 255)  # magenta


def test_rightward_flow_is_red_and_zero_flow_white() -> None:
    assert (flow_to_color(_uniform(3.0, 0.0)) == (255, 0, 0)).all()
    assert (flow_to_color(_uniform(0.0, 0.0)) == 255).all()
    assert (flow_to_color(_uniform(-0.0, -0.0)) == 255).all()


def test_directions_follow_the_wheel() -> None:
    wheel = make_color_wheel()
    left = flow_to_color(_uniform(-2.0, 0.0))[0, 0]
    np.testing.assert_array_equal(left, wheel[27].astype(np.uint8))  # opposite side of the wheel
    down = flow_to_color(_uniform(0.0, 2.0))[0, 0].astype(int)
    expected = (wheel[13] + wheel[14]) / 2  # angle -pi/2 falls halfway between entries 13 and 14
    assert np.abs(down - expected).max() <= 1
    up = flow_to_color(_uniform(0.0, -2.0))[0, 0].astype(int)
    assert up[2] == 255 and up[1] == 0  # violet-blue


def test_saturation_encodes_magnitude_relative_to_max_flow() -> None:
    half = flow_to_color(_uniform(1.0, 0.0), max_flow=2.0)[0, 0]
    np.testing.assert_array_equal(half, (255, 128, 128))
    beyond = flow_to_color(_uniform(4.0, 0.0), max_flow=2.0)[0, 0]
    np.testing.assert_array_equal(beyond, (191, 0, 0))  # saturated and darkened by 25 %
    # per-field normalisation: the largest vector is fully saturated
    flow = np.concatenate([_uniform(1.0, 0.0, 4, 4), _uniform(2.0, 0.0, 4, 4)], axis=1)
    img = flow_to_color(flow)
    np.testing.assert_array_equal(img[0, 0], (255, 128, 128))
    np.testing.assert_array_equal(img[0, -1], (255, 0, 0))


def test_flow_to_color_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="HxWx2"):
        flow_to_color(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="float"):
        flow_to_color(np.zeros((4, 4, 2), np.int32))
    with pytest.raises(ValueError, match="max_flow"):
        flow_to_color(_uniform(1.0, 0.0), max_flow=0.0)


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_compute_flow_recovers_a_translation(method: str) -> None:
    prev = _textured()
    d = np.array([2.5, -1.5], np.float32)
    nxt = cv2.warpAffine(
        prev, np.float32([[1, 0, d[0]], [0, 1, d[1]]]), (96, 96), borderMode=cv2.BORDER_REFLECT
    )
    flow = compute_flow(prev, nxt, method=method)
    assert flow.shape == (96, 96, 2) and flow.dtype == np.float32
    interior = flow[16:-16, 16:-16].reshape(-1, 2)
    err = np.linalg.norm(interior - d, axis=1)
    assert np.abs(np.median(interior, axis=0) - d).max() < 0.5
    assert err.mean() < 0.5
    # float frames in [0, 1] give the same answer as uint8
    np.testing.assert_allclose(compute_flow(prev / 255.0, nxt / 255.0, method=method), flow, atol=1e-4)


def test_compute_flow_rejects_bad_input() -> None:
    img = _textured(32, 32)
    with pytest.raises(ValueError, match="unknown flow method"):
        compute_flow(img, img, method="lucas")
    with pytest.raises(ValueError, match="differ in size"):
        compute_flow(img, img[:16])
    with pytest.raises(ValueError, match="HxW"):
        compute_flow(np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 4), np.uint8))


def test_sequence_flows_repeat_the_last_one() -> None:
    base = _textured(64, 64)
    frames = [np.roll(base, t, axis=1) for t in range(4)]
    flows = compute_sequence_flows(frames)
    assert len(flows) == 4
    np.testing.assert_array_equal(flows[-1], flows[-2])
    assert abs(float(np.median(flows[0][..., 0])) - 1.0) < 0.5
    with pytest.raises(ValueError, match="at least 2"):
        compute_sequence_flows(frames[:1])
