"""Speed of usod's SOD metrics against pysodmetrics 1.6.2 on the CPU, on the same predictions.

Usage::

    python benchmarks/metrics_speed.py [--data MASK_DIR] [--n 200] [--threads 1] [--json OUT.json]

Ground truths are the masks in ``--data`` (default ``../shared/data/duts-tr-499/masks`` next to the
repository; generated ellipses when that folder is missing). Predictions are made from them:
Gaussian blur, a small shift and noise, stored as uint8, as saved saliency maps would be. Each
metric is timed over all images through pysodmetrics (``step`` per image) and through usod
(``update`` per image, batch of one, uint8 tensors); ``all`` is the five pysodmetrics metrics
against one :class:`usod.metrics.SODMetrics` pass. Both libraries' results are compared too.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import py_sod_metrics as psm
import torch

from usod.metrics import MAE, EMeasure, FMeasure, SMeasure, SODMetrics, WeightedFMeasure

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "duts-tr-499" / "masks"


def load_pairs(data: Path, n: int, seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Ground truths from ``data`` (or generated) and blurred / shifted / noisy predictions."""
    rng = np.random.default_rng(seed)
    masks: list[np.ndarray] = []
    if data.is_dir():
        for path in sorted(data.glob("*.png"))[:n]:
            mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise ValueError(f"{path}: not a readable image")
            masks.append(mask)
        source = f"{len(masks)} masks from {data.resolve()}"
    if not masks:
        for _ in range(n):
            mask = np.zeros((320, 400), np.uint8)
            center = (int(rng.integers(80, 320)), int(rng.integers(60, 260)))
            axes = (int(rng.integers(20, 120)), int(rng.integers(20, 100)))
            cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
            masks.append(mask)
        source = f"{n} generated 320x400 ellipse masks ({data} not found)"
    pairs = []
    for mask in masks:
        h, w = mask.shape
        shift = np.float32([[1, 0, rng.integers(-8, 9)], [0, 1, rng.integers(-8, 9)]])
        pred = cv2.warpAffine(mask, shift, (w, h)).astype(np.float64)
        pred = cv2.GaussianBlur(pred, (0, 0), float(rng.uniform(1.5, 8.0)))
        pred += rng.normal(0, rng.uniform(0, 25), pred.shape)
        pairs.append((np.clip(pred, 0, 255).astype(np.uint8), mask))
    return pairs, source


def _time(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_pysod(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per metric and the results through pysodmetrics."""

    def one(cls: type) -> Callable[[], dict]:
        def go() -> dict:
            metric = cls()
            for pred, gt in pairs:
                metric.step(pred, gt)
            return metric.get_results()

        return go

    secs: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation warning
        secs["mae"], r_mae = _time(one(psm.MAE))
        secs["fmeasure"], r_f = _time(one(psm.Fmeasure))
        secs["emeasure"], r_e = _time(one(psm.Emeasure))
        secs["smeasure"], r_s = _time(one(psm.Smeasure))
        secs["weighted_f"], r_w = _time(one(psm.WeightedFmeasure))
    secs["all"] = sum(secs.values())
    f_curve, e_curve = r_f["fm"]["curve"], r_e["em"]["curve"]
    values = {
        "mae": float(r_mae["mae"]),
        "max_f": float(f_curve.max()),
        "mean_f": float(f_curve.mean()),
        "adp_f": float(r_f["fm"]["adp"]),
        "max_e": float(e_curve.max()),
        "mean_e": float(e_curve.mean()),
        "adp_e": float(r_e["em"]["adp"]),
        "s_measure": float(r_s["sm"]),
        "w_f": float(r_w["wfm"]),
    }
    return secs, values


def run_usod(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per metric and the results through usod."""
    tensors = [(torch.from_numpy(p.copy())[None], torch.from_numpy(g.copy())[None]) for p, g in pairs]

    def one(cls: type) -> Callable[[], object]:
        def go() -> object:
            metric = cls()
            for pred, gt in tensors:
                metric.update(pred, gt)
            return metric.compute()

        return go

    secs: dict[str, float] = {}
    secs["mae"], _ = _time(one(MAE))
    secs["fmeasure"], _ = _time(one(FMeasure))
    secs["emeasure"], _ = _time(one(EMeasure))
    secs["smeasure"], _ = _time(one(SMeasure))
    secs["weighted_f"], _ = _time(one(WeightedFMeasure))
    secs["all"], out = _time(one(SODMetrics))
    return secs, {k: float(v) for k, v in out.items() if k != "n"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of GT masks (*.png)")
    parser.add_argument("--n", type=int, default=200, help="number of images")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    parser.add_argument("--json", type=Path, default=None, help="write timings and results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    pairs, source = load_pairs(args.data, args.n)
    print(f"data: {source}; threads: {args.threads}")
    usod_secs, usod_vals = run_usod(pairs[:4])  # warm-up (imports, caches)
    pysod_secs, pysod_vals = run_pysod(pairs)
    usod_secs, usod_vals = run_usod(pairs)

    print(f"\n{'metric':<12} {'pysodmetrics s':>15} {'usod s':>9} {'speed-up':>9}")
    for key in pysod_secs:
        ratio = pysod_secs[key] / usod_secs[key]
        print(f"{key:<12} {pysod_secs[key]:>15.3f} {usod_secs[key]:>9.3f} {ratio:>8.2f}x")
    print(f"\n{'score':<10} {'pysodmetrics':>14} {'usod':>14} {'|diff|':>9}")
    diffs = {}
    for key, ref in pysod_vals.items():
        diffs[key] = abs(ref - usod_vals[key])
        print(f"{key:<10} {ref:>14.10f} {usod_vals[key]:>14.10f} {diffs[key]:>9.1e}")
    if args.json is not None:
        report = {
            "data": source,
            "n": len(pairs),
            "threads": args.threads,
            "seconds": {"pysodmetrics": pysod_secs, "usod": usod_secs},
            "scores": {"pysodmetrics": pysod_vals, "usod": usod_vals},
            "max_abs_diff": max(diffs.values()),
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
