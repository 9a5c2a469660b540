"""Optical flow: the Middlebury colour wheel and OpenCV flow estimation.

Video SOD models in usod see motion as an RGB image: the flow field rendered with the colour wheel of
Baker et al., "A Database and Evaluation Methodology for Optical Flow" (IJCV 2011), as in the Middlebury
``flowToColor`` code and its common Python ports. Hue encodes direction (rightward flow is red, downward
is yellow-green-ish, leftward cyan, upward violet), saturation encodes the magnitude relative to a maximum,
and zero flow is white.

Flow arrays are ``HxWx2`` float32 ``(u, v)`` in pixels, ``u`` to the right and ``v`` downwards, giving for
each pixel of the first frame where it moves to in the second.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

FLOW_METHODS = ("dis", "farneback")


def make_color_wheel() -> np.ndarray:
    """Build the Middlebury colour wheel.

    Returns:
        ``55x3`` float64 array of RGB colours in ``[0, 255]``, going red -> yellow -> green -> cyan ->
        blue -> magenta -> red (segment lengths 15, 6, 4, 11, 13, 6 as in Baker et al.).
    """
    ry, yg, gc, cb, bm, mr = 15, 6, 4, 11, 13, 6
    wheel = np.zeros((ry + yg + gc + cb + bm + mr, 3))
    col = 0
    wheel[col : col + ry, 0] = 255
    wheel[col : col + ry, 1] = np.floor(255 * np.arange(ry) / ry)
    col += ry
    wheel[col : col + yg, 0] = 255 - np.floor(255 * np.arange(yg) / yg)
    wheel[col : col + yg, 1] = 255
    col += yg
    wheel[col : col + gc, 1] = 255
    wheel[col : col + gc, 2] = np.floor(255 * np.arange(gc) / gc)
    col += gc
    wheel[col : col + cb, 1] = 255 - np.floor(255 * np.arange(cb) / cb)
    wheel[col : col + cb, 2] = 255
    col += cb
    wheel[col : col + bm, 2] = 255
    wheel[col : col + bm, 0] = np.floor(255 * np.arange(bm) / bm)
    col += bm
    wheel[col : col + mr, 2] = 255 - np.floor(255 * np.arange(mr) / mr)
    wheel[col : col + mr, 0] = 255
    return wheel


_WHEEL = make_color_wheel()


def _check_flow(flow: np.ndarray, name: str = "flow") -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"{name} must be an HxWx2 array of (u, v) displacements, got shape {flow.shape}")
    if not np.issubdtype(flow.dtype, np.floating):
        raise ValueError(f"{name} must be a float array, got dtype {flow.dtype}")
    return flow


def flow_to_color(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """Render a flow field with the Middlebury colour wheel.

    Args:
        flow: ``HxWx2`` float ``(u, v)`` flow in pixels. Non-finite values are treated as zero flow.
        max_flow: Magnitude that maps to a fully saturated colour. ``None`` normalises by the largest
            magnitude in ``flow`` (the usual per-frame normalisation). Magnitudes above ``max_flow`` are
            drawn at full saturation and darkened by 25 %, as in the Middlebury code.

    Returns:
        ``HxWx3`` uint8 RGB image; zero flow is white.

    Raises:
        ValueError: If ``flow`` is not ``HxWx2`` float or ``max_flow`` is not positive.
    """
    flow = _check_flow(flow)
    u = np.nan_to_num(flow[..., 0].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    v = np.nan_to_num(flow[..., 1].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    rad = np.sqrt(u**2 + v**2)
    if max_flow is None:
        max_flow = float(rad.max()) if rad.size else 0.0
    elif max_flow <= 0:
        raise ValueError(f"max_flow must be positive, got {max_flow}")
    eps = np.finfo(np.float64).eps
    u = u / (max_flow + eps)
    v = v / (max_flow + eps)
    rad = rad / (max_flow + eps)
    v = v + 0.0  # -0.0 -> +0.0, so that exactly horizontal rightward flow always lands on wheel index 0

    ncols = _WHEEL.shape[0]
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]; rightward flow gives -1 -> wheel index 0 (red)
    fk = (angle + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = k0 + 1
    k1[k1 == ncols] = 0
    f = (fk - k0)[..., None]
    col0 = _WHEEL[k0] / 255.0
    col1 = _WHEEL[k1] / 255.0
    col = (1 - f) * col0 + f * col1
    inside = (rad <= 1)[..., None]
    col = np.where(inside, 1 - rad[..., None] * (1 - col), col * 0.75)
    return np.clip(np.floor(255 * col + 0.5), 0, 255).astype(np.uint8)


def _to_gray_u8(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"{name} must be an HxW or HxWx3 image, got shape {img.shape}")
    if img.dtype != np.uint8:
        if not np.issubdtype(img.dtype, np.floating):
            raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {img.dtype}")
        img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(img)


def compute_flow(prev_rgb: np.ndarray, next_rgb: np.ndarray, method: str = "dis") -> np.ndarray:
    """Estimate dense optical flow from ``prev_rgb`` to ``next_rgb`` with OpenCV.

    Args:
        prev_rgb: First frame, ``HxWx3`` RGB (or ``HxW`` gray), uint8 or float in ``[0, 1]``.
        next_rgb: Second frame, same shape as ``prev_rgb``.
        method: ``"dis"`` (dense inverse search, preset MEDIUM; fast and accurate) or ``"farneback"``.

    Returns:
        ``HxWx2`` float32 flow such that ``prev(x) ~ next(x + flow(x))``.

    Raises:
        ValueError: On an unknown method or frames of different or invalid shapes.
    """
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose one of {FLOW_METHODS}")
    prev = _to_gray_u8(prev_rgb, "prev_rgb")
    nxt = _to_gray_u8(next_rgb, "next_rgb")
    if prev.shape != nxt.shape:
        raise ValueError(f"frames differ in size: prev_rgb is {prev.shape}, next_rgb is {nxt.shape}")
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(prev, nxt, None)
    else:
        flow = cv2.calcOpticalFlowFarneback(
            prev,
            nxt,
            None,
            pyr_scale=0.5,
            levels=3,
            winsize=15,
            iterations=3,
            poly_n=5,
            poly_sigma=1.2,
            flags=0,
        )
    return np.asarray(flow, dtype=np.float32)


def compute_sequence_flows(frames: Sequence[np.ndarray], method: str = "dis") -> list[np.ndarray]:
    """Forward flow for every frame of a sequence.

    Frame ``t`` gets the flow from ``t`` to ``t + 1``; the last frame has no successor and repeats the flow
    of its predecessor (from ``t - 1`` to ``t``), the usual convention of flow-guided video SOD.

    Args:
        frames: At least two frames of identical size (see :func:`compute_flow`).
        method: Flow method passed to :func:`compute_flow`.

    Returns:
        One ``HxWx2`` float32 flow per frame (``len(frames)`` of them).

    Raises:
        ValueError: If fewer than two frames are given.
    """
    if len(frames) < 2:
        raise ValueError(f"a sequence needs at least 2 frames to compute flow, got {len(frames)}")
    flows = [compute_flow(frames[t], frames[t + 1], method=method) for t in range(len(frames) - 1)]
    flows.append(flows[-1].copy())
    return flows
