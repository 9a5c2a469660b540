"""Test helpers: generated saliency maps and pysodmetrics reference scores."""

from __future__ import annotations

import warnings

import cv2
import numpy as np

KEYS = ("mae", "max_f", "mean_f", "adp_f", "max_e", "mean_e", "adp_e", "s_measure", "w_f")


def blob_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A GT mask with one or two random ellipses (0/255, anti-aliased edges)."""
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(1, max(2, w // 2))), int(rng.integers(1, max(2, h // 2))))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
    return mask


def make_prediction(rng: np.random.Generator, gt: np.ndarray, kind: str) -> np.ndarray:
    """A uint8 saliency map of a given kind for ``gt``."""
    h, w = gt.shape
    if kind == "random":
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if kind == "blur":
        return cv2.GaussianBlur(gt, (0, 0), float(rng.uniform(0.5, 4)))
    if kind == "noisy":
        pred = cv2.GaussianBlur(gt, (0, 0), 2).astype(np.float64) + rng.normal(0, 40, (h, w))
        return np.clip(pred, 0, 255).astype(np.uint8)
    if kind == "narrow":  # few distinct values, not reaching 0 or 255: exercises min-max normalisation
        return (rng.integers(3, 7, (h, w)) * 20 + (gt > 128) * 30).astype(np.uint8)
    if kind == "binary":
        return ((rng.random((h, w)) < 0.3) | (gt > 128)).astype(np.uint8) * 255
    raise ValueError(kind)


def pysod_scores(
    pairs: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Scores and curves (ascending threshold order) from pysodmetrics for (pred, gt) uint8 pairs."""
    import py_sod_metrics as psm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm, em, sm, wfm, mae = (
            psm.Fmeasure(),
            psm.Emeasure(),
            psm.Smeasure(),
            psm.WeightedFmeasure(),
            psm.MAE(),
        )
        for pred, gt in pairs:
            for metric in (fm, em, sm, wfm, mae):
                metric.step(pred, gt)
        f, e = fm.get_results(), em.get_results()
        s, w, m = sm.get_results(), wfm.get_results(), mae.get_results()
    f_curve, e_curve = f["fm"]["curve"][::-1], e["em"]["curve"][::-1]
    scores = {
        "mae": float(m["mae"]),
        "max_f": float(f_curve.max()),
        "mean_f": float(f_curve.mean()),
        "adp_f": float(f["fm"]["adp"]),
        "max_e": float(e_curve.max()),
        "mean_e": float(e_curve.mean()),
        "adp_e": float(e["em"]["adp"]),
        "s_measure": float(s["sm"]),
        "w_f": float(w["wfm"]),
    }
    curves = {"precision": f["pr"]["p"][::-1], "recall": f["pr"]["r"][::-1], "f": f_curve, "e": e_curve}
    return scores, curves
