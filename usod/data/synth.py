"""The embedded synthetic SOD data: seeded scenes for every modality, and writers for each on-disk layout.

usod ships no images. Its demo and its test suite run on scenes drawn here, so the generator is:

* **deterministic**: every scene is a pure function of a ``numpy.random.Generator``; :func:`write_dataset`
  seeds sample ``i`` with ``default_rng([seed, i])``, so the same seed gives identical bytes and the first
  ``k`` samples do not depend on ``n``;
* **fast**: a 128x128 scene with depth and thermal takes a few milliseconds (OpenCV rasterisation, value
  noise from upsampled random grids);
* **realistic enough to be measurable**: one to three salient objects (ellipses, rounded polygons, stars,
  blobs with smooth random contours), textured and shaded, on cluttered backgrounds (multi-octave noise in a
  muted palette, stripes or a grid, a colour gradient, low-contrast distractor shapes and a few tiny vivid
  ones, blur and sensor noise). Objects cover 5-40 % of the image in total, are placed anywhere (so mostly
  off-centre) and sometimes cross the border. A centre prior therefore scores well below a perfect F-measure
  while colour contrast and objectness still carry the signal an unsupervised method needs.

Auxiliary modalities follow the conventions of :mod:`usod.data.datasets`:

* ``depth``: float32 HxW in [0, 1], **near = 1** (like the inverse-depth maps of RGB-D SOD benchmarks, which
  are stored near = bright). The background is a slanted plane (the floor nearer at the bottom) with noise
  and a few low bumps; each object is a slightly domed plate clearly nearer than the background behind it.
* ``thermal``: HxWx3 uint8, rendered like a thermal camera (white-hot grayscale by default, or OpenCV's
  inferno colour map): objects warmer than most of the background, a few hot non-salient distractors,
  half resolution and blurrier than RGB.
* ``flow`` (video): exact forward motion ``t -> t+1`` as HxWx2 float32, known from the scene's motion
  (camera pan for the background, per-object translation and scale); the last frame repeats ``t-1 -> t``.

Captions name each object with words from a small vocabulary, ``[size] colour shape position``, so that the
noun of every object phrase is its shape (word-level grounding for caption-guided SOD), e.g.
"a large red ellipse on the left and a small blue triangle at the top against a striped background".

On-disk layouts written by :func:`write_dataset` (ids ``synth_00000``, ``synth_00001``, ...)::

    rgb:    images/<id>.jpg  masks/<id>.png
    rgbd:   RGB/<id>.jpg  depth/<id>.png (8-bit, near = bright)  GT/<id>.png
    rgbt:   RGB/<id>.jpg  T/<id>.jpg  GT/<id>.png
    video:  JPEGImages/480p/<seq>/<frame:05d>.jpg  Annotations/480p/<seq>/<frame:05d>.png
            Flow/480p/<seq>/<frame:05d>.png  (Middlebury colour wheel, per-frame max normalisation)
    rs:     train-images/<id>.jpg  train-labels/<id>.png  test-images/<id>.jpg  test-labels/<id>.png
    every:  captions.json (COCO captions; image ids are the sample ids, ``<seq>/<frame>`` for video,
            file names relative to the dataset root) and synth.json (the config, the files written and
            ``complete: true`` once every file is in place)

Every file is written to a temporary name and moved into place with :func:`os.replace`, so a crashed run
never leaves a half-written image.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from usod.data.flow import flow_to_color
from usod.data.io import atomic_write_bytes

__all__ = [
    "COLOURS",
    "MODALITIES",
    "RS_SHAPES",
    "SHAPES",
    "Scene",
    "SynthConfig",
    "make_rs_scene",
    "make_scene",
    "make_scenes",
    "make_video",
    "write_dataset",
]

MODALITIES = ("rgb", "rgbd", "rgbt", "video", "rs")
SHAPES = ("ellipse", "triangle", "square", "rectangle", "pentagon", "hexagon", "star", "blob")
RS_SHAPES = ("building", "ship", "plane", "tank")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40),
    "orange": (235, 135, 30),
    "yellow": (230, 205, 45),
    "green": (50, 165, 60),
    "cyan": (45, 190, 205),
    "blue": (40, 75, 205),
    "purple": (135, 60, 175),
    "pink": (235, 120, 175),
    "white": (238, 238, 238),
    "black": (28, 28, 30),
    "grey": (150, 150, 155),
}
# Colours salient objects are drawn in (grey is kept for aerial objects, where it is the natural roof colour).
_OBJECT_COLOURS = tuple(c for c in COLOURS if c != "grey")
_THERMAL_COLORMAPS = {"gray": None, "inferno": cv2.COLORMAP_INFERNO, "jet": cv2.COLORMAP_JET}
_ID_FORMAT = "synth_{:05d}"


@dataclass
class SynthConfig:
    """Parameters of the synthetic scenes and datasets.

    Attributes:
        size: Image size ``(H, W)``.
        n_images: Number of samples (sequences for video) for :func:`make_scenes` / :func:`write_dataset`.
        seed: Seed of the whole set; sample ``i`` uses ``numpy.random.default_rng([seed, i])``.
        max_objects: Most salient objects per natural scene (1 to 3 by default).
        min_area: Least total salient area, as a fraction of the image.
        max_area: Largest total salient area, as a fraction of the image.
        max_rs_objects: Most salient objects per remote-sensing scene.
        frames: Frames per video sequence.
        test_fraction: Fraction of remote-sensing samples written to the test split.
        thermal_colormap: ``"gray"`` (white hot), ``"inferno"`` or ``"jet"``.
        jpeg_quality: Quality of the JPEG files written.
    """

    size: tuple[int, int] = (128, 128)
    n_images: int = 100
    seed: int = 0
    max_objects: int = 3
    min_area: float = 0.05
    max_area: float = 0.40
    max_rs_objects: int = 5
    frames: int = 8
    test_fraction: float = 0.25
    thermal_colormap: str = "gray"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        if min(self.size) < 32:
            raise ValueError(f"SynthConfig.size must be at least 32x32, got {self.size}")
        if self.n_images < 0:
            raise ValueError(f"SynthConfig.n_images must be >= 0, got {self.n_images}")
        if self.max_objects < 1 or self.max_rs_objects < 1:
            raise ValueError("SynthConfig.max_objects and max_rs_objects must be >= 1")
        if not 0.0 < self.min_area < self.max_area <= 0.8:
            raise ValueError(
                f"SynthConfig needs 0 < min_area < max_area <= 0.8, got {self.min_area}, {self.max_area}"
            )
        if self.frames < 2:
            raise ValueError(f"SynthConfig.frames must be >= 2 (flow needs two frames), got {self.frames}")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"SynthConfig.test_fraction must be in [0, 1], got {self.test_fraction}")
        if self.thermal_colormap not in _THERMAL_COLORMAPS:
            raise ValueError(
                f"SynthConfig.thermal_colormap must be one of {sorted(_THERMAL_COLORMAPS)}, "
                f"got {self.thermal_colormap!r}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"SynthConfig.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


@dataclass
class Scene:
    """One synthetic sample.

    Attributes:
        image: HxWx3 uint8 RGB.
        mask: HxW uint8 ground truth, 0 or 255 with anti-aliased edges.
        objects: One dict per salient object: ``shape``, ``colour``, ``size`` ("small", "medium", "large"),
            ``position`` (e.g. "top left", "centre"), ``area`` (visible fraction of the image),
            ``centroid`` ``(x, y)`` and ``bbox`` ``(x0, y0, x1, y1)`` (inclusive) of the visible part.
        caption: One sentence naming every object (see the module docstring).
        depth: HxW float32 in [0, 1], near = 1 (natural scenes only).
        thermal: HxWx3 uint8 (natural scenes only).
        flow: HxWx2 float32 exact forward flow (video frames only).
    """

    image: np.ndarray
    mask: np.ndarray
    objects: list[dict[str, Any]]
    caption: str
    depth: np.ndarray | None = None
    thermal: np.ndarray | None = None
    flow: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------------
# Low-level helpers


def _value_noise(
    rng: np.random.Generator, h: int, w: int, cells: float = 4.0, octaves: int = 4
) -> np.ndarray:
    """Multi-octave value noise in [0, 1], HxW float32 (random grids upsampled bicubically)."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for octave in range(octaves):
        c = cells * 2**octave
        gh, gw = max(2, int(round(c * h / max(h, w))) + 1), max(2, int(round(c * w / max(h, w))) + 1)
        grid = rng.random((gh, gw)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _chaikin(pts: np.ndarray, iterations: int, cut: float = 0.25) -> np.ndarray:
    """Round the corners of a closed polygon by Chaikin corner cutting."""
    for _ in range(iterations):
        nxt = np.roll(pts, -1, axis=0)
        q = (1 - cut) * pts + cut * nxt
        r = cut * pts + (1 - cut) * nxt
        pts = np.stack([q, r], axis=1).reshape(-1, 2)
    return pts


def _normalise(pts: np.ndarray) -> np.ndarray:
    """Centre a polygon on its vertex mean and scale it to unit area."""
    pts = pts - pts.mean(axis=0)
    return (pts / math.sqrt(max(_polygon_area(pts), 1e-9))).astype(np.float64)


def _regular(n: int, rng: np.random.Generator, jitter: float) -> np.ndarray:
    t = np.arange(n) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi / n)
    r = 1 + rng.uniform(-jitter, jitter, n)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _unit_shape(rng: np.random.Generator, shape: str) -> np.ndarray:
    """Polygon of ``shape`` in local coordinates with unit area (rotation is applied by the caller)."""
    if shape == "ellipse":
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        pts = np.stack([np.cos(t), rng.uniform(0.5, 1.0) * np.sin(t)], axis=1)
    elif shape in ("triangle", "pentagon", "hexagon"):
        n = {"triangle": 3, "pentagon": 5, "hexagon": 6}[shape]
        pts = _chaikin(_regular(n, rng, 0.08), 2, cut=rng.uniform(0.08, 0.2))
    elif shape in ("square", "rectangle"):
        aspect = 1.0 if shape == "square" else rng.uniform(0.4, 0.7)
        pts = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], np.float64)
        pts = _chaikin(pts, 2, cut=rng.uniform(0.06, 0.15))
    elif shape == "star":
        n = int(rng.integers(5, 7))
        t = np.arange(2 * n) * np.pi / n
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.45, 0.6))
        pts = _chaikin(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 1, cut=0.12)
    elif shape == "blob":
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        r = np.ones_like(t)
        for k in range(2, 6):
            r += rng.uniform(0.04, 0.22) / math.sqrt(k - 1) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        r = np.maximum(r, 0.35)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif shape == "building":
        if rng.random() < 0.6:
            aspect = rng.uniform(0.45, 1.0)
            pts = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], np.float64)
        else:  # L-shaped block
            a, b = rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.6)
            pts = np.array([[0, 0], [2, 0], [2, 2 * a], [2 * b, 2 * a], [2 * b, 2], [0, 2]], np.float64)
    elif shape == "ship":
        w = rng.uniform(0.18, 0.3)
        bow = rng.uniform(0.25, 0.45)
        pts = np.array([[-1, -w], [1 - bow, -w], [1, 0], [1 - bow, w], [-1, w]], np.float64)
        pts = _chaikin(pts, 1, cut=0.1)
    elif shape == "plane":
        wing, tail = rng.uniform(0.75, 1.0), rng.uniform(0.3, 0.4)
        sweep = rng.uniform(0.1, 0.3)
        half = [
            (1.0, 0.0), (0.85, 0.09), (0.25, 0.09), (0.05 - sweep, wing), (-0.12 - sweep, wing),
            (-0.15, 0.09), (-0.75, 0.09), (-0.9 - 0.5 * sweep, tail), (-1.0 - 0.5 * sweep, tail),
            (-0.95, 0.0),
        ]  # fmt: skip
        top = np.array(half, np.float64)
        bottom = top[1:-1][::-1] * np.array([1.0, -1.0])
        pts = np.concatenate([top, bottom])
    elif shape == "tank":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    else:
        raise ValueError(f"unknown synthetic shape {shape!r}")
    return _normalise(pts)


@dataclass
class _Sprite:
    """A shape with its texture, both in local (unit-area) coordinates."""

    shape: str
    colour: str
    polygon: np.ndarray  # Nx2, unit area
    texture: np.ndarray  # KxKx3 float32 in [0, 255], covering [-extent, extent]^2
    extent: float


def _affine(scale: float, angle: float, cx: float, cy: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, cx], [s, c, cy]], np.float64)


def _render_alpha(polygon: np.ndarray, matrix: np.ndarray, h: int, w: int) -> np.ndarray:
    """Anti-aliased coverage of the transformed polygon, HxW float32 in [0, 1]."""
    pts = polygon @ matrix[:, :2].T + matrix[:, 2]
    canvas = np.zeros((h, w), np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def _render_sprite(sprite: _Sprite, matrix: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Texture (HxWx3 float32) and coverage (HxW float32) of ``sprite`` placed by ``matrix``."""
    k = sprite.texture.shape[0]
    step = 2 * sprite.extent / k
    # texture pixel t -> local u = (t + 0.5) * step - extent -> image p = A u + b
    a = matrix[:, :2]
    tex_to_img = np.concatenate(
        [a * step, (a @ np.full(2, 0.5 * step - sprite.extent) + matrix[:, 2])[:, None]], 1
    )
    rgb = cv2.warpAffine(
        sprite.texture, tex_to_img, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    return rgb, _render_alpha(sprite.polygon, matrix, h, w)


def _make_texture(
    rng: np.random.Generator,
    base: np.ndarray,
    k: int = 64,
    pattern_prob: float = 0.35,
    roughness: float = 1.0,
) -> np.ndarray:
    """Object texture: jittered base colour, multiplicative noise, shading and sometimes spots or stripes."""
    base = np.clip(base + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
    noise = _value_noise(rng, k, k, cells=rng.uniform(2, 6), octaves=3) - 0.5
    tex = base[None, None, :] * (1 + roughness * rng.uniform(0.12, 0.3) * noise[..., None])
    yy, xx = np.mgrid[0:k, 0:k].astype(np.float32) / k - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    shade = 1 + rng.uniform(0.1, 0.3) * (xx * math.cos(angle) + yy * math.sin(angle))
    tex = tex * shade[..., None]
    if rng.random() < pattern_prob:
        other = base * rng.uniform(0.55, 0.8) if base.mean() > 90 else base + rng.uniform(40, 70)
        if rng.random() < 0.5:
            period = rng.uniform(0.12, 0.25) * k
            theta = rng.uniform(0, np.pi)
            weight = 0.5 + 0.5 * np.sin(
                2 * np.pi * (xx * math.cos(theta) + yy * math.sin(theta)) * k / period
            )
            weight = (weight > 0.5).astype(np.float32) * 0.6
        else:
            weight = (_value_noise(rng, k, k, cells=rng.uniform(4, 8), octaves=1) > 0.7).astype(
                np.float32
            ) * 0.7
        weight = cv2.GaussianBlur(weight, (0, 0), 1.0)
        tex = tex * (1 - weight[..., None]) + other[None, None, :] * weight[..., None]
    return np.clip(tex, 0, 255).astype(np.float32)


def _make_sprite(
    rng: np.random.Generator, shape: str, colour: str, rgb: np.ndarray | None = None, **texture_kw: Any
) -> _Sprite:
    polygon = _unit_shape(rng, shape)
    extent = float(np.abs(polygon).max()) * 1.15
    base = np.array(COLOURS[colour], np.float32) if rgb is None else rgb
    return _Sprite(shape, colour, polygon, _make_texture(rng, base, **texture_kw), extent)


def _over(dst: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> None:
    dst *= 1 - alpha[..., None]
    dst += rgb * alpha[..., None]


def _paste(dst: np.ndarray, sprite: _Sprite, matrix: np.ndarray) -> None:
    """Composite ``sprite`` onto ``dst`` in place, rendering only its bounding box."""
    h, w = dst.shape[:2]
    pts = sprite.polygon @ matrix[:, :2].T + matrix[:, 2]
    x0, y0 = (int(max(math.floor(v) - 2, 0)) for v in pts.min(axis=0))
    x1, y1 = int(min(math.ceil(pts[:, 0].max()) + 3, w)), int(min(math.ceil(pts[:, 1].max()) + 3, h))
    if x1 <= x0 or y1 <= y0:
        return
    local = matrix.copy()
    local[:, 2] -= (x0, y0)
    _over(dst[y0:y1, x0:x1], *_render_sprite(sprite, local, y1 - y0, x1 - x0))


def _finish(rng: np.random.Generator, img: np.ndarray, blur: float, noise: float) -> np.ndarray:
    """Camera blur and sensor noise, then quantise to uint8."""
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------
# Backgrounds


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    """Cluttered natural background (HxWx3 float32) and the word describing it."""
    hue = rng.random()
    colours = [
        _hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.05, 0.45), rng.uniform(0.3, 0.85))
        for _ in range(3)
    ]
    if rng.random() < 0.5:  # a contrasting, more saturated third colour: background that is not uniform
        colours[2] = _hsv(hue + 0.5 + rng.uniform(-0.1, 0.1), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.9))
    n1 = _value_noise(rng, h, w, cells=rng.uniform(2, 5), octaves=4)[..., None]
    n2 = _value_noise(rng, h, w, cells=rng.uniform(4, 10), octaves=3)[..., None]
    img = colours[0] * (1 - n1) + colours[1] * n1
    mix = np.clip((n2 - 0.55) * 3, 0, 1) * rng.uniform(0.3, 0.8)
    img = img * (1 - mix) + colours[2] * mix

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle))[..., None]
    tint = _hsv(rng.random(), rng.uniform(0.2, 0.6), 1.0) / 255.0
    img = img * (1 + rng.uniform(0.2, 0.5) * ramp * (tint * 1.5 - 0.25))

    kind = rng.random()
    period = rng.uniform(6, 16) * min(h, w) / 128
    if kind < 0.3:
        theta = rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
        img = img + rng.uniform(8, 20) * wave[..., None]
        word = "striped"
    elif kind < 0.5:
        width = max(1, int(round(period / 6)))
        lines = ((xx % period) < width) | ((yy % period) < width)
        img = img + rng.choice([-1, 1]) * rng.uniform(10, 25) * lines[..., None].astype(np.float32)
        word = "tiled"
    else:
        word = "textured"
    img = np.clip(img, 0, 255).astype(np.float32)

    area = h * w
    # low-contrast distractors: shapes of the background's own colours, a little lighter or darker
    for _ in range(int(rng.integers(5, 14))):
        shape = str(rng.choice(SHAPES))
        frac = rng.uniform(0.003, 0.025) if rng.random() < 0.8 else rng.uniform(0.04, 0.12)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        local = img[int(min(cy, h - 1)), int(min(cx, w - 1))]
        offset = rng.normal(0, 1, 3)
        offset = offset / (np.linalg.norm(offset) + 1e-6) * rng.uniform(20, 60) + rng.choice([-1, 1]) * 10
        sprite = _make_sprite(rng, shape, "grey", np.clip(local + offset, 0, 255), pattern_prob=0.2, k=32)
        m = _affine(math.sqrt(frac * area), rng.uniform(0, 2 * np.pi), cx, cy)
        _paste(img, sprite, m)
    # a few tiny vivid distractors, so that colour alone is not the answer
    for _ in range(int(rng.integers(0, 6))):
        sprite = _make_sprite(rng, str(rng.choice(SHAPES)), str(rng.choice(_OBJECT_COLOURS)), k=16)
        m = _affine(
            math.sqrt(rng.uniform(0.002, 0.008) * area),
            rng.uniform(0, 6.3),
            rng.uniform(0, w),
            rng.uniform(0, h),
        )
        _paste(img, sprite, m)
    return img, word


# --------------------------------------------------------------------------------------------------------
# Layout and description


def _pick_colour(rng: np.random.Generator, background_mean: np.ndarray, names: tuple[str, ...]) -> str:
    """A colour that contrasts with the background, occasionally only weakly (not trivially separable)."""
    dist = {n: float(np.linalg.norm(np.array(COLOURS[n], np.float32) - background_mean)) for n in names}
    threshold = 60.0 if rng.random() < 0.7 else 30.0
    ok = [n for n in names if dist[n] >= threshold] or [max(dist, key=dist.__getitem__)]
    return str(rng.choice(ok))


def _object_sprite(rng: np.random.Generator, background_mean: np.ndarray) -> _Sprite:
    """A salient object: a named shape and colour, pulled a little towards the background colour."""
    colour = _pick_colour(rng, background_mean, _OBJECT_COLOURS)
    camouflage = rng.uniform(0.0, 0.35)
    rgb = (1 - camouflage) * np.array(COLOURS[colour], np.float32) + camouflage * background_mean
    return _make_sprite(rng, str(rng.choice(SHAPES)), colour, rgb, pattern_prob=0.5)


def _split_areas(rng: np.random.Generator, total: float, n: int, least: float) -> np.ndarray:
    parts = rng.dirichlet(np.full(n, 1.5)) * total
    return np.maximum(parts, least)


def _place(
    rng: np.random.Generator,
    sprites: list[_Sprite],
    areas: np.ndarray,
    h: int,
    w: int,
    border_prob: float,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Place sprites with limited overlap; returns their matrices and coverages (in drawing order)."""
    matrices: list[np.ndarray] = []
    alphas: list[np.ndarray] = []
    for sprite, frac in zip(sprites, areas, strict=True):
        scale = math.sqrt(frac * h * w)
        half = 0.5 * scale * float(np.abs(sprite.polygon).max())
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        for _ in range(25):
            inset = half * (0.25 if rng.random() < border_prob else 1.0)
            cx = rng.uniform(inset, w - inset) if w > 2 * inset else w / 2
            cy = rng.uniform(inset, h - inset) if h > 2 * inset else h / 2
            angle = rng.uniform(0, 2 * np.pi)
            m = _affine(scale, angle, cx, cy)
            alpha = _render_alpha(sprite.polygon, m, h, w)
            own = float(alpha.sum())
            if own < 4:
                continue
            overlap = max(
                [float(np.minimum(alpha, a).sum()) / max(float(a.sum()), 1.0) for a in alphas] + [0.0]
            )
            covered = max([float(np.minimum(alpha, a).sum()) / own for a in alphas] + [0.0])
            inside = own / (frac * h * w)
            badness = max(overlap - 0.3, 0) + max(covered - 0.3, 0) + max(0.5 - inside, 0)
            if best is None or badness < best[0]:
                best = (badness, m, alpha)
            if badness == 0:
                break
        if best is None:  # the sprite never landed inside the image: put it in the middle
            m = _affine(scale, 0.0, w / 2, h / 2)
            best = (0.0, m, _render_alpha(sprite.polygon, m, h, w))
        matrices.append(best[1])
        alphas.append(best[2])
    return matrices, alphas


def _visible(alphas: list[np.ndarray]) -> list[np.ndarray]:
    """Visible coverage of each layer given the layers drawn after it."""
    out = []
    for i, a in enumerate(alphas):
        vis = a.copy()
        for b in alphas[i + 1 :]:
            vis *= 1 - b
        out.append(vis)
    return out


def _position_word(cx: float, cy: float, h: int, w: int) -> str:
    col = "left" if cx < w / 3 else "right" if cx > 2 * w / 3 else "centre"
    row = "top" if cy < h / 3 else "bottom" if cy > 2 * h / 3 else "middle"
    if row == "middle":
        return col
    return row if col == "centre" else f"{row} {col}"


def _describe(
    sprites: list[_Sprite], alphas: list[np.ndarray], h: int, w: int, small: float, large: float
) -> list[dict[str, Any]]:
    objects = []
    for sprite, vis in zip(sprites, _visible(alphas), strict=True):
        total = float(vis.sum())
        if total < 1:
            continue
        ys, xs = np.nonzero(vis > 0.5)
        if len(xs) == 0:
            ys, xs = np.nonzero(vis > 0)
        yy, xx = np.mgrid[0:h, 0:w]
        cx, cy = float((xx * vis).sum() / total), float((yy * vis).sum() / total)
        frac = total / (h * w)
        objects.append(
            {
                "shape": sprite.shape,
                "colour": sprite.colour,
                "size": "small" if frac < small else "large" if frac > large else "medium",
                "position": _position_word(cx, cy, h, w),
                "area": round(frac, 5),
                "centroid": (round(cx, 2), round(cy, 2)),
                "bbox": (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
            }
        )
    return objects


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: dict[str, Any]) -> str:
    words = ([obj["size"]] if obj["size"] != "medium" else []) + [obj["colour"], obj["shape"]]
    pos = obj["position"]
    where = (
        f"in the {pos}"
        if pos in ("centre",) or " " in pos
        else f"on the {pos}"
        if pos in ("left", "right")
        else f"at the {pos}"
    )
    return f"{_article(words[0])} {' '.join(words)} {where}"


def _join(phrases: list[str]) -> str:
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _caption(objects: list[dict[str, Any]], background: str) -> str:
    described = _join([_object_phrase(o) for o in objects])
    return f"{described} against {_article(background)} {background} background"


def _mask_from(alphas: list[np.ndarray], h: int, w: int) -> np.ndarray:
    union = np.zeros((h, w), np.float32)
    for a in alphas:
        union = np.maximum(union, a)
    return np.clip(np.round(union * 255), 0, 255).astype(np.uint8)


def _n_objects(rng: np.random.Generator, most: int) -> int:
    weights = np.array([0.5, 0.3, 0.2] + [0.1] * max(0, most - 3))[:most]
    return int(rng.choice(np.arange(1, most + 1), p=weights / weights.sum()))


# --------------------------------------------------------------------------------------------------------
# Natural scenes (RGB, depth, thermal)


def _depth_map(rng: np.random.Generator, alphas: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """Near = 1: a slanted background plane with noise and low bumps, objects as nearer domed plates."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = (
        rng.uniform(0.2, 0.4)
        + rng.uniform(0.1, 0.35) * (yy / h - 0.5)
        + rng.uniform(-0.15, 0.15) * (xx / w - 0.5)
        + rng.uniform(0.04, 0.1) * (_value_noise(rng, h, w, cells=3, octaves=3) - 0.5)
    )
    for _ in range(int(rng.integers(0, 3))):  # non-salient bumps: nearer than the floor, lower than objects
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.15) * min(h, w)
        depth += rng.uniform(0.05, 0.12) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    depth = depth.astype(np.float32)
    # like real RGB-D benchmarks, some depth maps barely separate the objects from what is behind them
    gap = (0.06, 0.16) if rng.random() < 0.2 else (0.22, 0.38)
    for i, alpha in enumerate(alphas):
        inside = alpha > 0.5
        if not inside.any():
            continue
        behind = float(np.median(depth[inside]))
        dist = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 3)
        dome = dist / max(float(dist.max()), 1.0)
        near = min(behind + rng.uniform(*gap) + 0.03 * i, 0.92) + 0.06 * dome
        depth = depth * (1 - alpha) + near * alpha
    depth = cv2.GaussianBlur(depth, (0, 0), 0.8) + rng.normal(0, 0.01, (h, w)).astype(np.float32)
    return np.clip(depth, 0, 1).astype(np.float32)


def _thermal_map(
    rng: np.random.Generator, alphas: list[np.ndarray], h: int, w: int, colormap: str
) -> np.ndarray:
    """Objects warm, background cool with a few hot distractors, blurred, at half resolution."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    temp = (
        rng.uniform(0.12, 0.25)
        + 0.25 * _value_noise(rng, h, w, cells=rng.uniform(2, 5), octaves=3)
        + rng.uniform(0.0, 0.1) * ((xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle))
    ).astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):  # hot non-salient things: small, like pipes or lamps
        polygon = _unit_shape(rng, str(rng.choice(SHAPES)))
        m = _affine(
            math.sqrt(rng.uniform(0.002, 0.012) * h * w),
            rng.uniform(0, 6.3),
            rng.uniform(0, w),
            rng.uniform(0, h),
        )
        hot = _render_alpha(polygon, m, h, w)
        temp = temp * (1 - hot) + rng.uniform(0.6, 0.95) * hot
    for alpha in alphas:
        inside = (alpha > 0.5).astype(np.uint8)
        dist = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
        core = dist / max(float(dist.max()), 1.0)
        warm = (
            rng.uniform(0.6, 0.78) + 0.12 * core + 0.05 * (_value_noise(rng, h, w, cells=4, octaves=2) - 0.5)
        )
        temp = temp * (1 - alpha) + warm * alpha
    small = cv2.resize(temp, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    temp = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    temp = cv2.GaussianBlur(temp, (0, 0), rng.uniform(1.0, 1.8)) + rng.normal(0, 0.012, (h, w)).astype(
        np.float32
    )
    gray = np.clip(np.round(temp * 255), 0, 255).astype(np.uint8)
    cmap = _THERMAL_COLORMAPS[colormap]
    if cmap is None:
        return np.repeat(gray[..., None], 3, axis=2)
    return cv2.cvtColor(cv2.applyColorMap(gray, cmap), cv2.COLOR_BGR2RGB)


def make_scene(rng: np.random.Generator, config: SynthConfig | None = None) -> Scene:
    """Draw one natural scene with its mask, caption, depth and thermal image.

    Args:
        rng: Source of all randomness; the scene is a pure function of its state.
        config: Size, object count and area range (defaults to :class:`SynthConfig`'s defaults).

    Returns:
        The :class:`Scene` (``flow`` is ``None``).
    """
    config = config or SynthConfig()
    h, w = config.size
    background, word = _background(rng, h, w)
    bg_mean = background.reshape(-1, 3).mean(axis=0)
    for attempt in range(20):
        n = _n_objects(rng, config.max_objects)
        lo, hi = config.min_area * 1.15, config.max_area * 0.85
        total = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        areas = _split_areas(rng, total, n, least=min(0.02, config.min_area / 2))
        sprites = [_object_sprite(rng, bg_mean) for _ in range(n)]
        matrices, alphas = _place(rng, sprites, areas, h, w, border_prob=0.15)
        mask = _mask_from(alphas, h, w)
        frac = float((mask > 127).mean())
        if config.min_area <= frac <= config.max_area or attempt == 19:
            break
    img = background.copy()
    for sprite, m in zip(sprites, matrices, strict=True):
        _paste(img, sprite, m)
    image = _finish(rng, img, blur=rng.uniform(0.3, 0.9), noise=rng.uniform(1.0, 4.0))
    objects = _describe(sprites, alphas, h, w, small=0.05, large=0.15)
    return Scene(
        image=image,
        mask=mask,
        objects=objects,
        caption=_caption(objects, word),
        depth=_depth_map(rng, alphas, h, w),
        thermal=_thermal_map(rng, alphas, h, w, config.thermal_colormap),
    )


def make_scenes(config: SynthConfig | None = None) -> list[Scene]:
    """``config.n_images`` natural scenes, scene ``i`` drawn from ``default_rng([config.seed, i])``."""
    config = config or SynthConfig()
    return [make_scene(np.random.default_rng([config.seed, i]), config) for i in range(config.n_images)]


# --------------------------------------------------------------------------------------------------------
# Remote sensing (top views)

_FIELD_COLOURS = [
    (96, 128, 60),
    (130, 150, 70),
    (160, 140, 90),
    (120, 100, 70),
    (80, 110, 60),
    (175, 165, 120),
]
_RS_AREAS = {"building": (0.01, 0.07), "ship": (0.004, 0.025), "plane": (0.01, 0.05), "tank": (0.004, 0.02)}
_RS_COLOURS = {
    "building": ("white", "red", "blue", "grey", "orange"),
    "ship": ("white", "grey", "red", "orange"),
    "plane": ("white", "grey"),
    "tank": ("white", "grey"),
}


def _aerial_background(
    rng: np.random.Generator, h: int, w: int
) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """Fields, roads, roof clutter and maybe water; returns the image, its words and the water coverage."""
    ground = np.array(_FIELD_COLOURS[int(rng.integers(len(_FIELD_COLOURS)))], np.float32)
    n = _value_noise(rng, h, w, cells=rng.uniform(3, 6), octaves=4)[..., None]
    img = ground * (0.8 + 0.4 * n)
    area = h * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(int(rng.integers(3, 9))):  # fields: rotated patches with crop rows
        colour = np.array(_FIELD_COLOURS[int(rng.integers(len(_FIELD_COLOURS)))], np.float32) + rng.normal(
            0, 8, 3
        )
        sprite = _make_sprite(rng, "rectangle", "green", colour, pattern_prob=0.0, roughness=0.6)
        m = _affine(
            math.sqrt(rng.uniform(0.05, 0.25) * area),
            rng.uniform(0, np.pi),
            rng.uniform(0, w),
            rng.uniform(0, h),
        )
        rgb, alpha = _render_sprite(sprite, m, h, w)
        theta, period = rng.uniform(0, np.pi), rng.uniform(2.5, 5.0)
        rows = np.sin(2 * np.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)[..., None]
        _over(img, rgb + rng.uniform(4, 10) * rows, alpha)
    words = ["fields"]
    water = None
    if rng.random() < 0.45:
        sprite = _make_sprite(
            rng,
            "blob",
            "blue",
            _hsv(rng.uniform(0.5, 0.6), rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.45)),
            pattern_prob=0.0,
            roughness=0.4,
        )
        m = _affine(
            math.sqrt(rng.uniform(0.12, 0.35) * area),
            rng.uniform(0, 6.3),
            rng.uniform(0.2, 0.8) * w,
            rng.uniform(0.2, 0.8) * h,
        )
        rgb, water = _render_sprite(sprite, m, h, w)
        _over(img, rgb, water)
        words.append("water")
    n_roads = int(rng.integers(0, 4))
    for _ in range(n_roads):
        angle = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        d = 2 * max(h, w)
        p0 = (int(cx - d * math.cos(angle)), int(cy - d * math.sin(angle)))
        p1 = (int(cx + d * math.cos(angle)), int(cy + d * math.sin(angle)))
        grey = float(rng.uniform(95, 150))
        cv2.line(img, p0, p1, (grey, grey, grey * 1.02), int(rng.integers(2, 6)), cv2.LINE_AA)
    if n_roads:
        words.append("roads")
    for _ in range(int(rng.integers(0, 3))):  # clusters of small low-contrast roofs (not salient)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        for _ in range(int(rng.integers(4, 12))):
            x, y = cx + rng.normal(0, 0.08 * w), cy + rng.normal(0, 0.08 * h)
            local = img[int(np.clip(y, 0, h - 1)), int(np.clip(x, 0, w - 1))]
            sprite = _make_sprite(
                rng, "square", "grey", np.clip(local + rng.normal(0, 25, 3), 0, 255), pattern_prob=0.0
            )
            m = _affine(math.sqrt(rng.uniform(0.0008, 0.003) * area), rng.normal(0, 0.2), x, y)
            _paste(img, sprite, m)
    return np.clip(img, 0, 255).astype(np.float32), words, water


def make_rs_scene(rng: np.random.Generator, config: SynthConfig | None = None) -> Scene:
    """Draw one remote-sensing-like top view: buildings, ships, planes and storage tanks on aerial ground.

    One to ``max_rs_objects`` small objects (each 0.4-7 % of the image, so the total is usually far below a
    natural scene's, as in ORSSD); ships go on water when the scene has some. Objects cast a short shadow
    (not part of the mask), so that darkness or colour alone does not give the answer, as in optical
    remote-sensing SOD (ORSSD, EORSSD).

    Args:
        rng: Source of all randomness.
        config: Size and ``max_rs_objects``.

    Returns:
        The :class:`Scene` (``depth``, ``thermal`` and ``flow`` are ``None``).
    """
    config = config or SynthConfig()
    h, w = config.size
    img, words, water = _aerial_background(rng, h, w)
    weights = np.array([0.4, 0.25, 0.2, 0.1, 0.05] + [0.05] * max(0, config.max_rs_objects - 5))[
        : config.max_rs_objects
    ]
    n = int(rng.choice(np.arange(1, config.max_rs_objects + 1), p=weights / weights.sum()))
    kinds = [
        str(
            rng.choice(
                RS_SHAPES,
                p=[0.35, 0.25 if water is not None else 0.1, 0.25, 0.15 if water is not None else 0.3],
            )
        )
        for _ in range(n)
    ]
    sprites, areas = [], []
    for kind in kinds:
        colour = str(rng.choice(_RS_COLOURS[kind]))
        sprites.append(_make_sprite(rng, kind, colour, pattern_prob=0.0, roughness=0.5))
        areas.append(rng.uniform(*_RS_AREAS[kind]))
    matrices, alphas = _place(rng, sprites, np.array(areas), h, w, border_prob=0.1)
    if water is not None:  # move ships onto water where possible
        ys, xs = np.nonzero(water > 0.9)
        for i, sprite in enumerate(sprites):
            if sprite.shape == "ship" and len(xs):
                j = int(rng.integers(len(xs)))
                matrices[i] = matrices[i].copy()
                matrices[i][:, 2] = (xs[j], ys[j])
                alphas[i] = _render_alpha(sprite.polygon, matrices[i], h, w)
    shadow_dir = rng.uniform(0, 2 * np.pi)
    for sprite, m in zip(sprites, matrices, strict=True):
        shift = m.copy()
        shift[:, 2] += (
            0.25
            * math.sqrt(abs(np.linalg.det(m[:, :2])))
            * np.array([math.cos(shadow_dir), math.sin(shadow_dir)])
        )
        shadow = _render_alpha(sprite.polygon, shift, h, w)
        img *= 1 - 0.45 * shadow[..., None]
        _paste(img, sprite, m)
    kept = [i for i, a in enumerate(alphas) if a.sum() >= 4]
    sprites, alphas = [sprites[i] for i in kept], [alphas[i] for i in kept]
    mask = _mask_from(alphas, h, w)
    image = _finish(rng, img, blur=rng.uniform(0.3, 0.7), noise=rng.uniform(1.0, 3.0))
    objects = _describe(sprites, alphas, h, w, small=0.01, large=0.04)
    caption = f"an aerial view of {_join([_object_phrase(o) for o in objects])} over {_join(words)}"
    return Scene(image=image, mask=mask, objects=objects, caption=caption)


# --------------------------------------------------------------------------------------------------------
# Video


def _to3(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def make_video(
    rng: np.random.Generator, config: SynthConfig | None = None, n_frames: int | None = None
) -> list[Scene]:
    """Draw a video: objects moving smoothly (translation, slight scaling) over a slowly panning background.

    Args:
        rng: Source of all randomness.
        config: Size and ``max_objects`` (at most 2 objects per sequence are drawn, as in DAVIS-2016's
            mostly single-object sequences); ``frames`` when ``n_frames`` is ``None``.
        n_frames: Number of frames (at least 2).

    Returns:
        One :class:`Scene` per frame with ``flow`` set to the exact forward flow ``t -> t+1`` (the last frame
        repeats ``t-1 -> t``); ``depth`` and ``thermal`` are ``None``.

    Raises:
        ValueError: If ``n_frames < 2``.
    """
    config = config or SynthConfig()
    n_frames = config.frames if n_frames is None else int(n_frames)
    if n_frames < 2:
        raise ValueError(f"a synthetic video needs at least 2 frames, got {n_frames}")
    h, w = config.size
    unit = math.sqrt(h * w) / 128
    t = np.arange(n_frames, dtype=np.float64)[:, None]

    pan_dir = rng.uniform(0, 2 * np.pi)
    pan_v = rng.uniform(0.3, 1.2) * unit * np.array([math.cos(pan_dir), math.sin(pan_dir)])
    pan_a = rng.normal(0, 0.03 * unit, 2)
    pan = pan_v * t + 0.5 * pan_a * t**2  # camera offset per frame
    pad = int(math.ceil(np.abs(pan).max())) + 2
    canvas, word = _background(rng, h + 2 * pad, w + 2 * pad)
    bg_mean = canvas.reshape(-1, 3).mean(axis=0)

    n = _n_objects(rng, min(config.max_objects, 2))
    total = math.exp(rng.uniform(math.log(config.min_area * 1.3), math.log(config.max_area * 0.6)))
    areas = _split_areas(rng, total, n, least=config.min_area / 2)
    sprites = [_object_sprite(rng, bg_mean) for _ in range(n)]
    tracks: list[tuple[np.ndarray, np.ndarray, float]] = []  # centres (T, 2), scales (T,), angle
    halves: list[float] = []  # rough radius of each tracked object, for the no-collision test
    for sprite, frac in zip(sprites, areas, strict=True):
        s0 = math.sqrt(frac * h * w)
        half = 0.5 * s0 * float(np.abs(sprite.polygon).max())
        angle = rng.uniform(0, 2 * np.pi)
        for attempt in range(30):
            c0 = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
            speed = rng.uniform(0.8, 2.5) * unit if attempt < 20 else 0.3 * unit
            heading = rng.uniform(0, 2 * np.pi)
            v = speed * np.array([math.cos(heading), math.sin(heading)])
            acc = rng.normal(0, 0.05 * unit, 2)
            centres = c0 + v * t + 0.5 * acc * t**2
            scales = s0 * (1 + rng.uniform(-0.012, 0.012) * t[:, 0])
            inside = (centres >= 0.08 * np.array([w, h])).all() and (centres <= 0.92 * np.array([w, h])).all()
            apart = all(
                (np.linalg.norm(centres - other, axis=1) > 0.8 * (half + other_half)).all()
                for (other, _, _), other_half in zip(tracks, halves, strict=True)
            )
            if inside and apart:
                break
        tracks.append((centres, scales, angle))
        halves.append(half)

    blur, noise = rng.uniform(0.3, 0.8), rng.uniform(1.0, 3.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    grid = np.stack([xx, yy, np.ones_like(xx)], axis=-1)  # HxWx3 homogeneous pixel coordinates
    matrices = [[_affine(s[f], a, *c[f]) for f in range(n_frames)] for c, s, a in tracks]
    frames: list[Scene] = []
    for f in range(n_frames):
        shift = np.array([[1.0, 0.0, -(pad + pan[f, 0])], [0.0, 1.0, -(pad + pan[f, 1])]])
        img = cv2.warpAffine(canvas, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        alphas = []
        for sprite, ms in zip(sprites, matrices, strict=True):
            rgb, alpha = _render_sprite(sprite, ms[f], h, w)
            _over(img, rgb, alpha)
            alphas.append(alpha)
        flow = None
        g = min(f, n_frames - 2)  # the last frame repeats the previous frame's forward flow
        if f == g:
            flow = np.empty((h, w, 2), np.float32)
            flow[:] = (pan[g] - pan[g + 1]).astype(np.float32)
            for ms, alpha in zip(matrices, alphas, strict=True):
                step = _to3(ms[g + 1]) @ np.linalg.inv(_to3(ms[g]))
                moved = grid @ step.T
                obj = (moved[..., :2] - grid[..., :2]).astype(np.float32)
                flow = np.where((alpha > 0.5)[..., None], obj, flow)
        else:
            flow = frames[-1].flow.copy()  # type: ignore[union-attr]
        objects = _describe(sprites, alphas, h, w, small=0.05, large=0.15)
        frames.append(
            Scene(
                image=_finish(rng, img, blur, noise),
                mask=_mask_from(alphas, h, w),
                objects=objects,
                caption=_caption(objects, word),
                flow=flow,
            )
        )
    return frames


# --------------------------------------------------------------------------------------------------------
# Writing datasets


def _encode(ext: str, img: np.ndarray, path: Path, quality: int = 95) -> bytes:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise OSError(f"could not encode {path} as {ext}")
    return buf.tobytes()


def _write_image(path: Path, img: np.ndarray, quality: int = 95) -> None:
    atomic_write_bytes(path, _encode(path.suffix.lower(), img, path, quality))


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


_LAYOUT_DIRS = {
    "rgb": ("images", "masks"),
    "rgbd": ("RGB", "depth", "GT"),
    "rgbt": ("RGB", "T", "GT"),
    "video": ("JPEGImages", "Annotations", "Flow"),
    "rs": ("train-images", "train-labels", "test-images", "test-labels"),
}


@dataclass
class _Captions:
    h: int
    w: int
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def add(self, sample_id: str, file_name: str, caption: str) -> None:
        self.images.append({"id": sample_id, "file_name": file_name, "height": self.h, "width": self.w})
        self.annotations.append({"id": len(self.annotations), "image_id": sample_id, "caption": caption})

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "annotations": self.annotations}


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} is not empty; pass overwrite=True (--overwrite) to replace a synthetic dataset"
            )
        if not (out / "synth.json").is_file():
            raise FileExistsError(
                f"{out} is not empty and has no synth.json: refusing to overwrite a folder usod did not write"
            )
        for dirs in _LAYOUT_DIRS.values():
            for d in dirs:
                if (out / d).is_dir():
                    shutil.rmtree(out / d)
        for name in ("captions.json", "synth.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def write_dataset(
    out: str | os.PathLike[str],
    modality: str,
    n: int,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    overwrite: bool = False,
    **kw: Any,
) -> Path:
    """Write a synthetic dataset in the on-disk layout of ``modality`` (see the module docstring).

    Args:
        out: Dataset root (created; must be empty unless ``overwrite``).
        modality: One of ``"rgb"``, ``"rgbd"``, ``"rgbt"``, ``"video"``, ``"rs"``.
        n: Number of samples; for video, the number of sequences (of ``frames`` frames each).
        seed: Seed of the dataset.
        size: Image size ``(H, W)``.
        overwrite: Replace an earlier synthetic dataset in ``out`` (one with a ``synth.json``).
        **kw: Further :class:`SynthConfig` fields (``frames``, ``test_fraction``, ``max_objects``, ...).

    Returns:
        The dataset root.

    Raises:
        ValueError: On an unknown modality or invalid config.
        FileExistsError: If ``out`` is not empty and ``overwrite`` is false, or it holds other data.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown synthetic modality {modality!r}; choose one of {MODALITIES}")
    config = SynthConfig(size=size, n_images=n, seed=seed, **kw)
    root = Path(out)
    _prepare(root, overwrite)
    h, w = config.size
    meta = {"modality": modality, "config": dataclasses.asdict(config), "complete": False, "files": {}}
    _write_json(root / "synth.json", meta)
    captions = _Captions(h, w)
    q = config.jpeg_quality
    files: dict[str, int] = {}

    def count(folder: str) -> None:
        files[folder] = files.get(folder, 0) + 1

    if modality == "video":
        for i in range(n):
            seq = _ID_FORMAT.format(i)
            frames = make_video(np.random.default_rng([seed, i]), config)
            for f, frame in enumerate(frames):
                name = f"{f:05d}"
                _write_image(root / "JPEGImages" / "480p" / seq / f"{name}.jpg", frame.image, q)
                _write_image(root / "Annotations" / "480p" / seq / f"{name}.png", frame.mask)
                _write_image(root / "Flow" / "480p" / seq / f"{name}.png", flow_to_color(frame.flow))  # type: ignore[arg-type]
                for folder in ("JPEGImages", "Annotations", "Flow"):
                    count(folder)
                captions.add(f"{seq}/{name}", f"JPEGImages/480p/{seq}/{name}.jpg", frame.caption)
    elif modality == "rs":
        n_test = int(round(n * config.test_fraction))
        test_ids = set(np.random.default_rng([seed, 2**31]).permutation(n)[:n_test].tolist())
        for i in range(n):
            sid = _ID_FORMAT.format(i)
            scene = make_rs_scene(np.random.default_rng([seed, i]), config)
            split = "test" if i in test_ids else "train"
            _write_image(root / f"{split}-images" / f"{sid}.jpg", scene.image, q)
            _write_image(root / f"{split}-labels" / f"{sid}.png", scene.mask)
            count(f"{split}-images")
            count(f"{split}-labels")
            captions.add(sid, f"{split}-images/{sid}.jpg", scene.caption)
    else:
        image_dir = "images" if modality == "rgb" else "RGB"
        for i in range(n):
            sid = _ID_FORMAT.format(i)
            scene = make_scene(np.random.default_rng([seed, i]), config)
            _write_image(root / image_dir / f"{sid}.jpg", scene.image, q)
            _write_image(root / ("masks" if modality == "rgb" else "GT") / f"{sid}.png", scene.mask)
            if modality == "rgbd":
                depth8 = np.clip(np.round(scene.depth * 255), 0, 255).astype(np.uint8)  # type: ignore[operator]
                _write_image(root / "depth" / f"{sid}.png", depth8)
            elif modality == "rgbt":
                _write_image(root / "T" / f"{sid}.jpg", scene.thermal, q)  # type: ignore[arg-type]
            for folder in _LAYOUT_DIRS[modality]:
                count(folder)
            captions.add(sid, f"{image_dir}/{sid}.jpg", scene.caption)

    _write_json(root / "captions.json", captions.to_json())
    meta.update(complete=True, files=files)
    _write_json(root / "synth.json", meta)
    return root
