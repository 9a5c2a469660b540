"""DSR: saliency detection via dense and sparse reconstruction (Li, Lu, Zhang, Ruan and Yang, ICCV 2013)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from usod.handcrafted.superpixels import (
    SuperpixelGraph,
    minmax,
    pairwise_distances,
    superpixel_graph,
    to_lab,
)

__all__ = [
    "bayesian_integration",
    "dense_errors",
    "dsr",
    "kmeans",
    "lasso",
    "object_biased_gaussian",
    "propagate_errors",
    "sparse_errors",
]


def region_features(graph: SuperpixelGraph) -> np.ndarray:
    """Nx8 region features ``[L, a, b, R, G, B, x, y]`` (DSR Sec. 3), each roughly in a unit range."""
    lab = graph.lab / np.array([100.0, 128.0, 128.0])
    return np.concatenate([lab, graph.rgb, graph.xy], axis=1)


def dense_errors(features: np.ndarray, templates: np.ndarray, energy: float = 0.95) -> np.ndarray:
    """Dense (PCA) reconstruction errors ``||x_i - (U_B U_B^T (x_i - mean) + mean)||^2`` (DSR eqs. 1-2).

    ``U_B`` holds the principal axes of the background templates that explain ``energy`` of their variance
    (at least one, at most ``D - 1`` so that something is left to be unexplained).
    """
    mean = templates.mean(0)
    centred = templates - mean
    cov = centred.T @ centred / max(len(templates) - 1, 1)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.clip(eigval[order], 0.0, None), eigvec[:, order]
    total = float(eigval.sum())
    keep = 1 if total <= 0 else int(np.searchsorted(np.cumsum(eigval) / total, energy) + 1)
    u = eigvec[:, : min(max(keep, 1), features.shape[1] - 1)]
    x = features - mean
    residual = x - (x @ u) @ u.T
    return (residual**2).sum(1)


def lasso(features: np.ndarray, templates: np.ndarray, lam: float = 0.01, iters: int = 200) -> np.ndarray:
    """Codes ``a_i = argmin_a ||x_i - B^T a||^2 + lam |a|_1`` of every row of ``features`` (NxM).

    Solved for all rows at once with FISTA (Beck and Teboulle, 2009): a few hundred small matrix products
    instead of one solver call per region.
    """
    x, b = features, templates  # x: N x D, b: M x D
    gram = b @ b.T
    step = 1.0 / (2.0 * max(float(np.linalg.eigvalsh(gram)[-1]), 1e-12))
    xb = x @ b.T
    alpha = np.zeros((x.shape[0], b.shape[0]))
    z, t = alpha, 1.0
    for _ in range(iters):
        v = z - step * 2.0 * (z @ gram - xb)
        new = np.sign(v) * np.maximum(np.abs(v) - step * lam, 0.0)
        t_new = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        z = new + ((t - 1.0) / t_new) * (new - alpha)
        alpha, t = new, t_new
    return alpha


def sparse_errors(
    features: np.ndarray, templates: np.ndarray, lam: float = 0.01, iters: int = 200
) -> np.ndarray:
    """Sparse reconstruction errors ``||x_i - B^T a_i||^2`` with the :func:`lasso` codes (DSR eqs. 3-4)."""
    residual = features - lasso(features, templates, lam, iters) @ templates
    return (residual**2).sum(1)


def kmeans(features: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> np.ndarray:
    """Cluster indices of k-means with k-means++ seeding (deterministic for a given ``seed``)."""
    n = len(features)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [features[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min(((features[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        total = float(d2.sum())
        centres.append(features[rng.choice(n, p=d2 / total)] if total > 0 else features[rng.integers(n)])
    c = np.asarray(centres)
    assign = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        assign_new = ((features[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        if _ > 0 and np.array_equal(assign_new, assign):
            break
        assign = assign_new
        for j in range(k):
            members = assign == j
            if members.any():
                c[j] = features[members].mean(0)
    return assign


def propagate_errors(
    errors: np.ndarray, features: np.ndarray, clusters: np.ndarray, tau: float = 0.5
) -> np.ndarray:
    """Context-based error propagation (DSR eq. 5).

    Within each k-means cluster, regions are visited in order of decreasing error and their error becomes
    ``tau * sum_j w_ij e_j + (1 - tau) e_i`` over the other members ``j`` of the cluster, with
    ``w_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))`` normalised to sum to 1 and ``sigma^2`` the sum of the
    feature variances. Errors already propagated are used for later regions, as in the paper.
    """
    sigma2 = max(float(features.var(0).sum()), 1e-12)
    weights = np.exp(-(pairwise_distances(features) ** 2) / (2.0 * sigma2))
    out = errors.astype(np.float64).copy()
    for c in np.unique(clusters):
        members = np.flatnonzero(clusters == c)
        if len(members) < 2:
            continue
        for i in members[np.argsort(-errors[members])]:
            others = members[members != i]
            w = weights[i, others]
            out[i] = tau * float(w @ out[others]) / max(float(w.sum()), 1e-12) + (1.0 - tau) * errors[i]
    return out


def object_biased_gaussian(saliency: np.ndarray, sigma: float = 0.25) -> np.ndarray:
    """Multiply a map by a Gaussian centred on its centre of mass (DSR eq. 7), sigmas relative to the size."""
    h, w = saliency.shape
    total = float(saliency.sum())
    ys, xs = np.mgrid[0:h, 0:w]
    xs, ys = (xs + 0.5) / w, (ys + 0.5) / h
    if total <= 0:
        return saliency.astype(np.float64)
    x0, y0 = float((saliency * xs).sum()) / total, float((saliency * ys).sum()) / total
    g = np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2.0 * sigma**2))
    return saliency * g


def _posterior(prior: np.ndarray, observed: np.ndarray, bins: int) -> np.ndarray:
    fg = prior >= prior.mean()
    idx = np.minimum((observed * bins).astype(np.int64), bins - 1)
    n_fg, n_bg = max(int(fg.sum()), 1), max(int((~fg).sum()), 1)
    like_fg = np.bincount(idx[fg], minlength=bins)[idx] / n_fg
    like_bg = np.bincount(idx[~fg], minlength=bins)[idx] / n_bg
    num = prior * like_fg
    return num / np.maximum(num + (1.0 - prior) * like_bg, 1e-12)


def bayesian_integration(s1: np.ndarray, s2: np.ndarray, bins: int = 32) -> np.ndarray:
    """``p(F_1 | S_2) + p(F_2 | S_1)`` (DSR eqs. 8-10), min-max scaled.

    Each map in [0, 1] serves as the prior of the other: thresholding it at its mean splits foreground and
    background, the other map's histograms in the two parts give the likelihoods, and Bayes' rule the
    posterior.
    """
    return minmax(_posterior(s1, s2, bins) + _posterior(s2, s1, bins))


def dsr(
    image: np.ndarray,
    *,
    scales: Sequence[int] = (100, 200, 300),
    compactness: float = 10.0,
    lam: float = 0.01,
    pca_energy: float = 0.95,
    clusters: int = 8,
    tau: float = 0.5,
    sigma: float = 0.25,
) -> np.ndarray:
    """Saliency of an RGB image from how badly the image border reconstructs each region.

    X. Li, H. Lu, L. Zhang, X. Ruan, M.-H. Yang. *Saliency Detection via Dense and Sparse Reconstruction*,
    ICCV 2013. For every SLIC scale, the border regions are the background templates ``B``; each region's
    ``[L, a, b, R, G, B, x, y]`` feature is reconstructed densely (PCA of ``B``, :func:`dense_errors`) and
    sparsely (lasso over ``B``, :func:`sparse_errors`); both errors are propagated within k-means clusters
    (:func:`propagate_errors`). The pixel maps of all scales are averaged, weighted by an object-biased
    Gaussian (:func:`object_biased_gaussian`), and fused by Bayesian integration
    (:func:`bayesian_integration`).

    Deviations: three SLIC scales by default instead of eight; the multi-scale maps are averaged per pixel
    (the paper weights each scale by the pixel's feature distance to its region); the PCA keeps the axes
    that explain ``pca_energy`` of the template variance (the paper does not state how many).

    Args:
        image: HxWx3 uint8 RGB image.
        scales: Numbers of SLIC superpixels, one map per scale.
        compactness: SLIC compactness.
        lam: Lasso weight (DSR: 0.01).
        pca_energy: Variance fraction kept by the dense model.
        clusters: k-means clusters for the propagation (DSR: 8).
        tau: Propagation weight (DSR: 0.5).
        sigma: Object-biased Gaussian width relative to the image size (DSR: 0.25).

    Returns:
        HxW float32 saliency in [0, 1].
    """
    if not scales:
        raise ValueError("dsr needs at least one superpixel scale")
    dense_maps, sparse_maps = [], []
    lab = to_lab(image)
    for n_segments in scales:
        graph = superpixel_graph(image, int(n_segments), compactness, lab=lab)
        if graph.n < 3:
            continue
        x = region_features(graph)
        templates = x[graph.border]
        groups = kmeans(x, clusters)
        e_dense = propagate_errors(dense_errors(x, templates, pca_energy), x, groups, tau)
        e_sparse = propagate_errors(sparse_errors(x, templates, lam), x, groups, tau)
        dense_maps.append(graph.to_pixels(minmax(e_dense)))
        sparse_maps.append(graph.to_pixels(minmax(e_sparse)))
    if not dense_maps:
        return np.zeros(np.asarray(image).shape[:2], np.float32)
    s_dense = minmax(object_biased_gaussian(np.mean(dense_maps, 0), sigma))
    s_sparse = minmax(object_biased_gaussian(np.mean(sparse_maps, 0), sigma))
    return bayesian_integration(s_dense, s_sparse).astype(np.float32)
