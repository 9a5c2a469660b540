"""Pseudo-label post-processing: dense CRF then median filter (A2S eq. 6, ``G = MF(CRF(sal))``).

Defaults follow the official A2S code (``moothes/A2S-USOD``, ``util.crf_inference_label`` and ``test.py``):
10 mean-field iterations, a Gaussian kernel with ``sxy=3, compat=3``, a bilateral kernel with ``sxy=50,
srgb=5, compat=10``, then ``cv2.medianBlur`` with a 7x7 window on the binary result. The official code
binarises the map at 0.5 and builds the unary with ``unary_from_labels(gt_prob=0.7)``; for two labels that is
exactly a softmax unary on a map clipped to {0.3, 0.7}, which is what ``unary_confidence=0.7`` does here.
With ``unary_confidence=None`` the soft map itself is the unary (``unary_from_softmax`` on ``[1-p, p]``),
which follows the paper's equation more literally and keeps the network's confidence; :func:`dense_crf`
defaults to that soft form, :class:`PostProcessConfig` to the official one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

from usod.data.io import imread_cv2
from usod.labels.store import write_label_png
from usod.ops.workers import worker_pool
from usod.progress import progress_bar

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_EPS = 1e-5


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be HxWx3 RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {image.dtype}")
    # pydensecrf takes a writable buffer even though it only reads it (datasets may hand out read-only arrays)
    return np.require(image, requirements=["C_CONTIGUOUS", "WRITEABLE"])


def _check_prob(prob: np.ndarray, name: str = "probability map") -> np.ndarray:
    prob = np.asarray(prob)
    if prob.ndim == 3 and prob.shape[0] == 1:
        prob = prob[0]
    if prob.ndim != 2:
        raise ValueError(f"{name} must be HxW, got shape {prob.shape}")
    if prob.dtype == np.uint8:
        return prob.astype(np.float32) / 255.0
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"{name} must be float in [0, 1] or uint8, got {prob.dtype}")
    prob = prob.astype(np.float32)
    if not np.all(np.isfinite(prob)):
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(prob.min()), float(prob.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{name} must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return np.clip(prob, 0.0, 1.0)


def dense_crf(
    image: np.ndarray,
    prob: np.ndarray,
    *,
    n_iters: int = 10,
    sxy_gaussian: float = 3.0,
    compat_gaussian: float = 3.0,
    sxy_bilateral: float = 50.0,
    srgb_bilateral: float = 5.0,
    compat_bilateral: float = 10.0,
    unary_confidence: float | None = None,
) -> np.ndarray:
    """Refines a foreground probability map with a fully connected CRF (Kraehenbuehl & Koltun, 2011).

    Args:
        image: HxWx3 uint8 RGB image (the bilateral kernel's colour features).
        prob: HxW foreground probability in [0, 1] (float) or 0..255 (uint8), same size as ``image``.
        n_iters: Mean-field iterations.
        sxy_gaussian: Spatial std of the smoothness kernel, in pixels.
        compat_gaussian: Weight of the smoothness kernel.
        sxy_bilateral: Spatial std of the appearance kernel, in pixels.
        srgb_bilateral: Colour std of the appearance kernel, in 0..255 units.
        compat_bilateral: Weight of the appearance kernel.
        unary_confidence: ``None`` uses the soft map as the unary (clipped to [1e-5, 1 - 1e-5], so pixels
            near 0 or 1 hardly move); a value c in (0.5, 1) first binarises at 0.5 and trusts each pixel's
            label with probability c (the official A2S setting is 0.7).

    Returns:
        HxW float32 foreground probability after inference.

    Raises:
        ValueError: On a bad shape or dtype, or when image and map sizes differ.
    """
    image = _check_image(image)
    prob = _check_prob(prob)
    if image.shape[:2] != prob.shape:
        raise ValueError(f"image size {image.shape[:2]} and probability map size {prob.shape} differ")
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}")
    if unary_confidence is not None:
        if not 0.5 < unary_confidence < 1.0:
            raise ValueError(f"unary_confidence must lie in (0.5, 1), got {unary_confidence}")
        prob = np.where(prob > 0.5, unary_confidence, 1.0 - unary_confidence).astype(np.float32)
    # Clipping keeps -log(p) finite for hard 0/1 maps.
    prob = np.clip(prob, _EPS, 1.0 - _EPS)
    height, width = prob.shape
    crf = dcrf.DenseCRF2D(width, height, 2)
    unary = unary_from_softmax(np.stack([1.0 - prob, prob]))
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=sxy_gaussian, compat=compat_gaussian)
    crf.addPairwiseBilateral(sxy=sxy_bilateral, srgb=srgb_bilateral, rgbim=image, compat=compat_bilateral)
    q = np.asarray(crf.inference(n_iters), dtype=np.float32).reshape(2, height, width)
    return q[1]


def median_filter(label: np.ndarray, ksize: int) -> np.ndarray:
    """Median-filters a HxW uint8 label (``cv2.medianBlur``); ``ksize`` odd, 1 leaves it unchanged."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be HxW, got shape {label.shape}")
    if label.dtype != np.uint8:
        raise ValueError(f"label must be uint8, got {label.dtype}")
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"median filter ksize must be a positive odd integer, got {ksize}")
    if ksize == 1:
        return label.copy()
    return cv2.medianBlur(np.ascontiguousarray(label), ksize)


@dataclass
class CRFParams:
    """Dense CRF settings (see :func:`dense_crf`); defaults from the official A2S code."""

    n_iters: int = 10
    sxy_gaussian: float = 3.0
    compat_gaussian: float = 3.0
    sxy_bilateral: float = 50.0
    srgb_bilateral: float = 5.0
    compat_bilateral: float = 10.0
    unary_confidence: float | None = 0.7


@dataclass
class PostProcessConfig:
    """How a saliency probability map becomes an 8-bit pseudo label.

    Attributes:
        crf: Run the dense CRF (needs the image).
        crf_params: CRF settings.
        median_ksize: Median filter window (odd; 1 or 0 disables it). A2S uses 7.
        threshold: Binarise at this value (labels become 0/255); ``None`` keeps a soft 0..255 map.
    """

    crf: bool = True
    crf_params: CRFParams = field(default_factory=CRFParams)
    median_ksize: int = 7
    threshold: float | None = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.crf_params, dict):  # e.g. from YAML / jsonargparse
            self.crf_params = CRFParams(**self.crf_params)
        if self.median_ksize not in (0, 1) and (self.median_ksize < 0 or self.median_ksize % 2 == 0):
            raise ValueError(f"median_ksize must be 0, 1 or a positive odd integer, got {self.median_ksize}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1] or be None, got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, e.g. for a pseudo-label round's manifest ``meta``."""
        return asdict(self)


#: The dense CRF runs on at most this many pixels (4 MP, e.g. 2000 x 2000): a larger image and its map are
#: downscaled for it and the label is brought back to the original size, so that memory per image stays
#: bounded (an 8000 x 8000 image made the CRF grow past 22 GB). Every benchmark image is far below it.
CRF_MAX_PIXELS = 4_000_000


def postprocess(
    image: np.ndarray | None,
    prob: np.ndarray,
    config: PostProcessConfig | None = None,
    *,
    max_pixels: int = CRF_MAX_PIXELS,
) -> np.ndarray:
    """Turns a probability map into a uint8 pseudo label: ``MF(threshold(CRF(image, prob)))``.

    Args:
        image: HxWx3 uint8 RGB image, or ``None`` when ``config.crf`` is False.
        prob: HxW float in [0, 1] (or uint8 0..255).
        config: Settings; defaults to :class:`PostProcessConfig` (A2S's official pipeline).
        max_pixels: Working resolution of the CRF and the median filter: a larger image runs at
            ``sqrt(max_pixels / pixels)`` of its size (area-averaged image, bilinear map) and the label is
            resized back (bilinear, then thresholded again) to the original size.

    Returns:
        HxW uint8 label at the size of ``prob`` (0/255 when thresholded, else 0..255).
    """
    config = config or PostProcessConfig()
    prob = _check_prob(prob)
    height, width = prob.shape
    scale = (max_pixels / (height * width)) ** 0.5 if config.crf and height * width > max_pixels else 1.0
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        prob = cv2.resize(prob, size, interpolation=cv2.INTER_LINEAR)
        if image is not None:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if config.crf:
        if image is None:
            raise ValueError("the CRF needs the RGB image; pass it or set PostProcessConfig(crf=False)")
        prob = dense_crf(image, prob, **asdict(config.crf_params))
    if config.threshold is not None:
        label = np.where(prob > config.threshold, 255, 0).astype(np.uint8)
    else:
        label = np.rint(prob * 255.0).astype(np.uint8)
    if config.median_ksize > 1:
        label = median_filter(label, config.median_ksize)
    if scale < 1.0:
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_LINEAR)
        if config.threshold is not None:
            label = np.where(label >= 128, 255, 0).astype(np.uint8)
    return label


def _load_image(path: str | Path) -> np.ndarray:
    bgr = imread_cv2(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"could not read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _load_prob(path: str | Path) -> np.ndarray:
    gray = imread_cv2(path, cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise FileNotFoundError(f"could not read probability map {path}")
    return gray.astype(np.float32) / 255.0


def _run_one(task: tuple[Any, Any, PostProcessConfig, str | None]) -> np.ndarray | str:
    """Worker: loads inputs given as paths, post-processes, and returns the label or writes it."""
    image, prob, config, out_path = task
    if isinstance(image, (str, Path)):
        image = _load_image(image)
    if isinstance(prob, (str, Path)):
        prob_path = prob
        prob = _load_prob(prob)
        if image is not None and prob.shape != image.shape[:2]:
            # Maps saved at network resolution: bring them to the image's size.
            prob = cv2.resize(prob, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
            prob = np.clip(prob, 0.0, 1.0)
    else:
        prob_path = None
    try:
        label = postprocess(image, prob, config)
    except ValueError as err:
        where = f" for {prob_path}" if prob_path is not None else ""
        raise ValueError(f"post-processing failed{where}: {err}") from err
    if out_path is not None:
        write_label_png(out_path, label)
        return out_path
    return label


def _map(
    tasks: list[Any],
    workers: int,
    chunksize: int | None,
    progress: bool,
    desc: str,
    mp_context: str | None = None,
) -> list[Any]:
    bar = None
    if progress:
        bar = progress_bar(total=len(tasks), desc=desc, unit="img")
    try:
        if workers <= 0 or len(tasks) <= 1:
            results = []
            for task in tasks:
                results.append(_run_one(task))
                if bar is not None:
                    bar.update(1)
            return results
        workers = min(workers, len(tasks))
        if chunksize is None:
            chunksize = max(1, min(16, len(tasks) // (workers * 4)))
        with worker_pool(workers, mp_context) as pool:
            results = []
            it: Iterator[Any] = pool.map(_run_one, tasks, chunksize=chunksize)
            for result in it:  # map keeps input order
                results.append(result)
                if bar is not None:
                    bar.update(1)
            return results
    finally:
        if bar is not None:
            bar.close()


def postprocess_many(
    images: Sequence[np.ndarray | str | Path | None],
    probs: Sequence[np.ndarray | str | Path],
    config: PostProcessConfig | None = None,
    *,
    workers: int = 0,
    chunksize: int | None = None,
    progress: bool = False,
    mp_context: str | None = None,
) -> list[np.ndarray]:
    """Post-processes many maps, in parallel worker processes when ``workers > 0``.

    Args:
        images: RGB uint8 images, or image paths (loaded in the worker, which avoids pickling pixels).
        probs: Probability maps (float [0, 1] or uint8), or paths to 8-bit PNG maps.
        config: Post-processing settings.
        workers: Number of processes; 0 runs in this process.
        chunksize: Tasks per inter-process message; ``None`` picks one from the task count.
        progress: Show a tqdm progress bar.
        mp_context: Multiprocessing start method; ``None`` means ``"forkserver"`` on POSIX, else
            ``"spawn"``. Both re-import the main module in the workers, so a calling script needs the usual
            ``if __name__ == "__main__":`` guard.

    Returns:
        The uint8 labels, in input order.
    """
    if len(images) != len(probs):
        raise ValueError(f"got {len(images)} images but {len(probs)} probability maps")
    config = config or PostProcessConfig()
    tasks = [(image, prob, config, None) for image, prob in zip(images, probs, strict=True)]
    return _map(tasks, workers, chunksize, progress, "post-process", mp_context)


def _find_image(image_dir: Path, rel_stem: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        for candidate in (image_dir / (rel_stem + ext), image_dir / (rel_stem + ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def postprocess_folder(
    prob_dir: str | Path,
    image_dir: str | Path | None,
    out_dir: str | Path,
    config: PostProcessConfig | None = None,
    *,
    workers: int = 0,
    chunksize: int | None = None,
    progress: bool = False,
    skip_existing: bool = False,
    mp_context: str | None = None,
) -> list[Path]:
    """Post-processes every ``*.png`` map under ``prob_dir`` into ``out_dir``.

    Maps are found recursively and paired with images by relative path and stem, so
    ``prob_dir/bear/00001.png`` pairs with ``image_dir/bear/00001.jpg`` (any of :data:`IMAGE_EXTENSIONS`) and
    is written, atomically, to ``out_dir/bear/00001.png``. A map whose size differs from its image is resized
    to the image size first. ``out_dir`` may be a pseudo-label store round directory.

    Args:
        prob_dir: Folder of 8-bit probability-map PNGs.
        image_dir: Folder of RGB images; may be ``None`` only when ``config.crf`` is False.
        out_dir: Output folder (created).
        config: Post-processing settings.
        workers: Worker processes; 0 runs in this process.
        chunksize: Tasks per inter-process message.
        progress: Show a tqdm progress bar.
        skip_existing: Leave outputs that already exist alone (resume an interrupted run).
        mp_context: Multiprocessing start method (see :func:`postprocess_many`).

    Returns:
        Paths written, sorted by relative path.

    Raises:
        FileNotFoundError: ``prob_dir`` holds no PNG, or an image is missing (named).
    """
    config = config or PostProcessConfig()
    prob_dir, out_dir = Path(prob_dir), Path(out_dir)
    if not prob_dir.is_dir():
        raise FileNotFoundError(f"probability-map folder {prob_dir} does not exist")
    if config.crf and image_dir is None:
        raise ValueError("the CRF needs images: pass image_dir, or use PostProcessConfig(crf=False)")
    prob_paths = sorted(p for p in prob_dir.rglob("*.png") if not p.name.startswith("."))
    if not prob_paths:
        raise FileNotFoundError(f"no *.png probability maps found under {prob_dir}")
    tasks = []
    for prob_path in prob_paths:
        rel_stem = prob_path.relative_to(prob_dir).with_suffix("").as_posix()
        out_path = out_dir / (rel_stem + ".png")
        if skip_existing and out_path.is_file():
            continue
        image_path: Path | None = None
        if image_dir is not None:
            image_path = _find_image(Path(image_dir), rel_stem)
            if image_path is None and config.crf:
                raise FileNotFoundError(
                    f"no image for probability map {prob_path}: looked for {Path(image_dir) / rel_stem}"
                    f"{{{','.join(IMAGE_EXTENSIONS)}}}"
                )
        tasks.append((image_path, prob_path, out_path))
    return postprocess_files(
        tasks, config, workers=workers, chunksize=chunksize, progress=progress, mp_context=mp_context
    )


def postprocess_files(
    tasks: Sequence[tuple[str | Path | None, str | Path, str | Path]],
    config: PostProcessConfig | None = None,
    *,
    workers: int = 0,
    chunksize: int | None = None,
    progress: bool = False,
    skip_existing: bool = False,
    mp_context: str | None = None,
) -> list[Path]:
    """Post-processes ``(image_path, prob_path, out_path)`` triples, writing each label atomically.

    The general form behind :func:`postprocess_folder`, for images that do not share one folder with their
    maps (e.g. a dataset's ``files`` and a pseudo-label round).

    Returns:
        The written paths, in input order (skipped ones excluded).
    """
    config = config or PostProcessConfig()
    jobs = [
        (str(image) if image is not None else None, str(prob), config, str(out))
        for image, prob, out in tasks
        if not (skip_existing and Path(out).is_file())
    ]
    written = _map(jobs, workers, chunksize, progress, "post-process", mp_context)
    return [Path(p) for p in written]
