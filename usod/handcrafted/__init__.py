"""Handcrafted unsupervised saliency methods over SLIC superpixels, and a parallel folder runner.

Each method is a function ``image (HxWx3 uint8 RGB) -> saliency (HxW float32 in [0, 1])`` registered in
:data:`HANDCRAFTED`; their docstrings cite the paper and list where they deviate from it. DeepUSPS
(:mod:`usod.models.deepusps`) refines their maps. :func:`run_files` and :func:`run_folder` compute a
method over many images in worker processes and write 8-bit PNGs atomically (``usod handcrafted`` on the
command line).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usod.data.io import (
    IMAGE_EXTENSIONS,
    InvalidInputError,
    images_under,
    map_outputs,
    read_image,
)
from usod.handcrafted.dsr import dsr
from usod.handcrafted.mc import mc
from usod.handcrafted.mr import manifold_ranking
from usod.handcrafted.rbd import rbd
from usod.handcrafted.superpixels import SuperpixelGraph, superpixel_graph
from usod.labels.store import write_label_png
from usod.ops.workers import worker_pool
from usod.progress import progress_bar

__all__ = [
    "HANDCRAFTED",
    "SuperpixelGraph",
    "dsr",
    "get_method",
    "manifold_ranking",
    "mc",
    "rbd",
    "run_files",
    "run_folder",
    "saliency",
    "superpixel_graph",
]

#: Method name -> ``fn(image, **options) -> HxW float32 saliency in [0, 1]``.
HANDCRAFTED: dict[str, Callable[..., np.ndarray]] = {
    "rbd": rbd,
    "mc": mc,
    "dsr": dsr,
    "mr": manifold_ranking,
}


def get_method(name: str) -> Callable[..., np.ndarray]:
    """The registered method ``name`` (case-insensitive)."""
    try:
        return HANDCRAFTED[name.lower()]
    except KeyError:
        raise ValueError(f"unknown handcrafted method {name!r}; choose from {sorted(HANDCRAFTED)}") from None


def saliency(name: str, image: np.ndarray, **options: Any) -> np.ndarray:
    """Run method ``name`` on one RGB image; returns HxW float32 in [0, 1]."""
    return get_method(name)(image, **options)


def _run_one(task: tuple[str, str, str, dict[str, Any]]) -> str:

    name, image_path, out_path, options = task
    image = read_image(image_path)
    sal = saliency(name, image, **options)
    write_label_png(out_path, np.rint(np.clip(sal, 0.0, 1.0) * 255.0).astype(np.uint8))
    return out_path


def run_files(
    name: str,
    tasks: Sequence[tuple[str | Path, str | Path]],
    *,
    workers: int = 0,
    options: dict[str, Any] | None = None,
    skip_existing: bool = False,
    progress: bool = False,
    chunksize: int = 4,
) -> list[Path]:
    """Compute method ``name`` for ``(image_path, out_png_path)`` pairs, writing each map atomically.

    Args:
        name: Registered method.
        tasks: Image and output paths (output folders are created).
        workers: Worker processes (``forkserver``, one image at a time each); 0 runs in this process.
        options: Keyword arguments of the method.
        skip_existing: Leave existing outputs alone (resume an interrupted run).
        progress: Show a tqdm progress bar.
        chunksize: Images per inter-process message.

    Returns:
        The written paths, in input order (skipped ones excluded).
    """
    get_method(name)
    jobs = [
        (name, str(image), str(out), dict(options or {}))
        for image, out in tasks
        if not (skip_existing and Path(out).is_file())
    ]
    bar = None
    if progress:
        bar = progress_bar(total=len(jobs), desc=name, unit="img")
    written: list[Path] = []
    try:
        if workers <= 0 or len(jobs) <= 1:
            for job in jobs:
                written.append(Path(_run_one(job)))
                if bar is not None:
                    bar.update(1)
            return written
        with worker_pool(min(workers, len(jobs))) as pool:
            for out in pool.map(_run_one, jobs, chunksize=max(1, chunksize)):
                written.append(Path(out))
                if bar is not None:
                    bar.update(1)
        return written
    finally:
        if bar is not None:
            bar.close()


def run_folder(
    name: str,
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    workers: int = 0,
    options: dict[str, Any] | None = None,
    skip_existing: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Compute method ``name`` for every image under ``input_dir`` (recursively) into ``output_dir``.

    Maps keep each image's relative path and stem: ``input/a/b.jpg`` -> ``output/a/b.png``. With
    ``workers > 0`` the maps are computed in worker processes started with ``forkserver``, which import the
    main module: call this under ``if __name__ == "__main__":`` in a script (a notebook needs nothing).

    Raises:
        FileNotFoundError: ``input_dir`` does not exist.
        InvalidInputError: It holds no image, ``output_dir`` is it or inside it, or two images would write
            the same map.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder not found")
    images = images_under(input_dir)
    if not images:
        raise InvalidInputError(input_dir, f"no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    tasks = list(zip(images, map_outputs(images, input_dir, output_dir), strict=True))
    return run_files(
        name, tasks, workers=workers, options=options, skip_existing=skip_existing, progress=progress
    )
