"""RBD: saliency optimisation from robust background detection (Zhu, Liang, Wei and Sun, CVPR 2014)."""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from usod.handcrafted.superpixels import minmax, pairwise_distances, superpixel_graph

__all__ = ["boundary_connectivity", "rbd"]


def boundary_connectivity(
    d_app: np.ndarray, adjacency: np.ndarray, border: np.ndarray, sigma_clr: float = 10.0
) -> np.ndarray:
    """``BndCon(p) = Len_bnd(p) / sqrt(Area(p))`` of every region (RBD eqs. 2-5).

    ``Area(p) = sum_i exp(-d_geo(p, p_i)^2 / (2 sigma_clr^2))`` is the soft area of the region reachable
    from ``p`` with little colour change and ``Len_bnd(p)`` the same sum restricted to border regions.
    ``d_geo`` is the shortest path over the graph of adjacent regions, edges weighted by their CIELAB
    distance ``d_app``; border regions are also linked to each other, as in the authors' code.

    Args:
        d_app: NxN CIELAB distances.
        adjacency: NxN bool adjacency.
        border: N bool, regions on the image border.
        sigma_clr: Colour scale (RBD: 10).

    Returns:
        N boundary connectivities: large for regions joined to the border by similar colours, small (but
        positive: the border regions form a clique, so every region has a geodesic path to them) otherwise.
    """
    edges = adjacency | (border[:, None] & border[None, :])
    np.fill_diagonal(edges, False)
    rows, cols = np.nonzero(edges)
    # A tiny offset: csgraph drops explicit zeros, and two identical neighbours must stay connected.
    graph = csr_matrix((d_app[rows, cols] + 1e-6, (rows, cols)), shape=d_app.shape)
    geo = dijkstra(graph, directed=False)
    spread = np.exp(-(geo**2) / (2.0 * sigma_clr**2))
    area = spread.sum(1)
    len_bnd = spread[:, border].sum(1)
    return len_bnd / np.sqrt(area)


def rbd(
    image: np.ndarray,
    *,
    n_segments: int = 250,
    compactness: float = 10.0,
    sigma_clr: float = 10.0,
    sigma_bndcon: float = 1.0,
    sigma_spa: float = 0.25,
    mu: float = 0.1,
) -> np.ndarray:
    """Saliency of an RGB image by robust background detection and saliency optimisation.

    W. Zhu, S. Liang, Y. Wei, J. Sun. *Saliency Optimization from Robust Background Detection*, CVPR 2014.
    Over SLIC superpixels:

    1. boundary connectivity ``BndCon`` (see :func:`boundary_connectivity`), and the background probability
       ``w_bg = 1 - exp(-BndCon^2 / (2 sigma_bndcon^2))`` (eq. 7): regions heavily connected to the image
       border are background, even when the object itself touches the border on a short stretch;
    2. background-weighted contrast ``wCtr(p) = sum_i d_app(p, p_i) w_spa(p, p_i) w_bg(p_i)`` with
       ``w_spa = exp(-d_spa^2 / (2 sigma_spa^2))`` on normalised positions (eq. 8), min-max scaled as the
       foreground weight ``w_fg``;
    3. the least-squares optimisation of eq. 9,
       ``min_s sum_i w_bg_i s_i^2 + sum_i w_fg_i (s_i - 1)^2 + sum_ij w_ij (s_i - s_j)^2`` over adjacent
       regions with ``w_ij = exp(-d_app^2 / (2 sigma_clr^2)) + mu``, solved in closed form as
       ``(diag(w_bg) + diag(w_fg) + L) s = w_fg`` (``L`` the Laplacian of ``w_ij``).

    Deviations: one SLIC scale (the authors' code also uses one); border regions are linked to each other in
    the geodesic graph (as in the authors' code; the paper does not say); the optimised saliency is min-max
    scaled to [0, 1]; no clipping of small geodesic edge weights.

    Args:
        image: HxWx3 uint8 RGB image.
        n_segments: SLIC superpixels (RBD: about 600 for 400x300; fewer is faster and hardly different).
        compactness: SLIC compactness.
        sigma_clr: Colour scale of the geodesic spread and of the smoothness weights (RBD: 10).
        sigma_bndcon: Scale of the background probability (RBD: 1).
        sigma_spa: Spatial scale of the contrast, on positions in [0, 1] (RBD: 0.25).
        mu: Constant added to the smoothness weights (RBD: 0.1).

    Returns:
        HxW float32 saliency in [0, 1].
    """
    graph = superpixel_graph(image, n_segments, compactness)
    if graph.n < 2:
        return np.zeros(graph.labels.shape, np.float32)
    d_app = pairwise_distances(graph.lab)
    border = graph.border
    bndcon = boundary_connectivity(d_app, graph.adjacency, border, sigma_clr)
    w_bg = 1.0 - np.exp(-(bndcon**2) / (2.0 * sigma_bndcon**2))
    d_spa = pairwise_distances(graph.xy)
    w_spa = np.exp(-(d_spa**2) / (2.0 * sigma_spa**2))
    w_fg = minmax((d_app * w_spa * w_bg[None, :]).sum(1))
    w_smooth = graph.adjacency * (np.exp(-(d_app**2) / (2.0 * sigma_clr**2)) + mu)
    laplacian = np.diag(w_smooth.sum(1)) - w_smooth
    system = laplacian + np.diag(w_bg + w_fg)
    # A tiny ridge keeps the system regular when both weights vanish on a whole component.
    s = np.linalg.solve(system + 1e-9 * np.eye(graph.n), w_fg)
    return graph.to_pixels(minmax(np.clip(s, 0.0, None)))
