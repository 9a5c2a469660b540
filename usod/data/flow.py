"""Optical flow: the Middlebury colour wheel and OpenCV flow estimation.

Video SOD models in usod see motion as an RGB image: the flow field rendered with the colour wheel of
Baker et al., "A Database and Evaluation Methodology for Optical Flow" (IJCV 2011), as in the Middlebury
``flowToColor`` code and its common Python ports. Hue encodes direction (rightward flow is red, downward
is yellow-green-ish, leftward cyan, upward violet), saturation encodes the magnitude relative to a maximum,
and zero flow is white.

:func:`cached_flow_images` computes the flow images of a sequence once (DIS or Farneback between consecutive
frames) and caches them on disk; video datasets use it when a dataset ships no flow (``flow_source``).

Flow arrays are ``HxWx2`` float32 ``(u, v)`` in pixels, ``u`` to the right and ``v`` downwards, giving for
each pixel of the first frame where it moves to in the second.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from usod.data.io import atomic_write_bytes, read_image, write_png_atomic
from usod.progress import progress_bar

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


def compute_sequence_flows(
    frames: Sequence[np.ndarray], method: str = "dis", progress: bool | None = False, desc: str = "flow"
) -> list[np.ndarray]:
    """Forward flow for every frame of a sequence.

    Frame ``t`` gets the flow from ``t`` to ``t + 1``; the last frame has no successor and repeats the flow
    of its predecessor (from ``t - 1`` to ``t``), the usual convention of flow-guided video SOD.

    Args:
        frames: At least two frames of identical size (see :func:`compute_flow`).
        method: Flow method passed to :func:`compute_flow`.
        progress: Show a progress bar (``None``/``True``: on a terminal, see :mod:`usod.progress`).
        desc: Label of the progress bar.

    Returns:
        One ``HxWx2`` float32 flow per frame (``len(frames)`` of them).

    Raises:
        ValueError: If fewer than two frames are given.
    """
    if len(frames) < 2:
        raise ValueError(f"a sequence needs at least 2 frames to compute flow, got {len(frames)}")

    steps = progress_bar(range(len(frames) - 1), desc=desc, unit="frame", enabled=progress, leave=False)
    flows = [compute_flow(frames[t], frames[t + 1], method=method) for t in steps]
    flows.append(flows[-1].copy())
    return flows


# ----------------------------------------------------------------------------------------------------------
# Flow images computed once per sequence and cached on disk

#: Name of the default cache folder inside a (writable) dataset root.
FLOW_CACHE_DIRNAME = ".usod_flow"
_MANIFEST = "frames.json"


def default_flow_cache(root: str | os.PathLike[str]) -> Path:
    """Where flow images of the dataset at ``root`` are cached when no cache folder is given.

    ``<root>/.usod_flow`` when the root is writable, else ``$XDG_CACHE_HOME/usod/flow/<hash of the root>``
    (``~/.cache/...`` without ``XDG_CACHE_HOME``), so read-only datasets work too.
    """
    root = Path(root).expanduser().resolve()
    if os.access(root, os.W_OK):
        return root / FLOW_CACHE_DIRNAME
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "usod" / "flow" / hashlib.sha1(str(root).encode()).hexdigest()[:16]


def _frame_record(path: Path) -> list[Any]:
    st = path.stat()
    return [path.name, int(st.st_size), int(st.st_mtime_ns)]


def cached_flow_images(
    frames: Sequence[str | os.PathLike[str]],
    cache_dir: str | os.PathLike[str],
    method: str = "dis",
    progress: bool | None = None,
) -> list[Path]:
    """Colour-wheel flow images of one sequence, computed once and cached.

    Frame ``t`` gets the flow ``t -> t+1`` (the last frame repeats ``t-1 -> t``, see
    :func:`compute_sequence_flows`), each rendered with :func:`flow_to_color` (per-frame normalisation, as
    the precomputed flow images of video SOD releases) and written as ``<cache_dir>/<frame stem>.png``.
    Every PNG is written atomically and the folder's ``frames.json`` (method, names, sizes and modification
    times of the frames) last; a later call whose frames and method match it returns the cached files without
    reading any frame, anything else recomputes the whole sequence. Concurrent callers (DDP ranks, workers)
    may compute the same files twice but never expose a partial one.

    Args:
        frames: The sequence's frame files in temporal order (at least two).
        cache_dir: Folder of this sequence's flow images (created).
        method: ``"dis"`` or ``"farneback"`` (see :func:`compute_flow`).
        progress: Show a progress bar while computing (``None``: on a terminal; see :mod:`usod.progress`).

    Returns:
        One PNG path per frame, in order.

    Raises:
        ValueError: Fewer than two frames, frames of different sizes, or an unknown method.
        InvalidInputError: A frame cannot be read.
    """
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose one of {FLOW_METHODS}")
    paths = [Path(f) for f in frames]
    if len(paths) < 2:
        raise ValueError(f"a sequence needs at least 2 frames to compute flow, got {len(paths)}")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"frames of one sequence must have distinct stems, got {stems}")
    cache = Path(cache_dir)
    outputs = [cache / f"{s}.png" for s in stems]
    wanted = {"method": method, "frames": [_frame_record(p) for p in paths]}
    manifest = cache / _MANIFEST
    try:
        if json.loads(manifest.read_text()) == wanted and all(o.is_file() for o in outputs):
            return outputs
    except (OSError, ValueError):
        pass
    images = [read_image(p) for p in paths]
    for path, image in zip(paths, images, strict=True):
        if image.shape != images[0].shape:
            raise ValueError(f"{path}: frame size {image.shape[:2]} differs from {images[0].shape[:2]}")
    flows = compute_sequence_flows(images, method=method, progress=progress, desc=f"flow {cache.name}")
    for out, flow in zip(outputs, flows, strict=True):
        write_png_atomic(out, flow_to_color(flow))
    atomic_write_bytes(manifest, (json.dumps(wanted) + "\n").encode())
    return outputs
