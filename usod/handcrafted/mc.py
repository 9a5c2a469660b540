"""MC: saliency detection via absorbing Markov chain (Jiang, Zhang, Lu, Yang and Yang, ICCV 2013)."""

from __future__ import annotations

import numpy as np

from usod.handcrafted.superpixels import edge_affinity, minmax, superpixel_graph, two_ring

__all__ = ["absorbed_time", "mc"]


def absorbed_time(affinity: np.ndarray, absorbing: np.ndarray) -> np.ndarray:
    """Expected time to absorption of a random walk started at each region (MC eqs. 1-4).

    The chain has one transient state per region and, for every region in ``absorbing``, a duplicated
    absorbing state connected like the original region: transient ``i`` moves to the copy of ``b`` with
    weight ``affinity[i, b]``, and a boundary region to its own copy with weight 1 (distance 0). With ``Q``
    the row-normalised transient-to-transient block, ``N = (I - Q)^-1`` is the fundamental matrix and the
    absorbed time is ``y = N 1``.

    Args:
        affinity: NxN symmetric edge weights between transient states.
        absorbing: Indices of the regions duplicated as absorbing states.

    Returns:
        N absorbed times (>= 1).
    """
    n = affinity.shape[0]
    to_absorbing = affinity[:, absorbing].copy()
    to_absorbing[absorbing, np.arange(len(absorbing))] = 1.0
    degree = affinity.sum(1) + to_absorbing.sum(1)
    degree = np.where(degree > 0, degree, 1.0)
    q = affinity / degree[:, None]
    # Regions with no path to an absorbing state would have infinite time; the small leak bounds it.
    return np.linalg.solve(np.eye(n) * (1.0 + 1e-9) - q, np.ones(n))


def mc(
    image: np.ndarray, *, n_segments: int = 250, compactness: float = 10.0, theta: float = 10.0
) -> np.ndarray:
    """Saliency of an RGB image as the absorbed time of a Markov chain with the image border absorbing.

    B. Jiang, L. Zhang, H. Lu, C. Yang, M.-H. Yang. *Saliency Detection via Absorbing Markov Chain*,
    ICCV 2013. Every SLIC superpixel is a transient state; the superpixels on the four image sides are
    duplicated as absorbing states. Regions are connected to their neighbours and their neighbours'
    neighbours, and all border regions to each other, with weights ``exp(-theta * d)`` (``d`` the CIELAB
    distance normalised over the edges; the paper's ``exp(-||x_i - x_j|| / sigma^2)`` with
    ``sigma^2 = 0.1``). A random walk from a background region is absorbed quickly (it is similar to, and
    close to, the border), one from the object slowly, so the normalised absorbed time
    (:func:`absorbed_time`) is the saliency.

    Deviations: the paper's later refinement steps (re-weighting by the equilibrium distribution for long
    background regions, and its border-frame removal) are not implemented; the map is min-max scaled.

    Args:
        image: HxWx3 uint8 RGB image.
        n_segments: SLIC superpixels (MC: 250).
        compactness: SLIC compactness.
        theta: Affinity scale ``1 / sigma^2`` (MC: 10).

    Returns:
        HxW float32 saliency in [0, 1].
    """
    graph = superpixel_graph(image, n_segments, compactness)
    if graph.n < 2:
        return np.zeros(graph.labels.shape, np.float32)
    edges = two_ring(graph.adjacency) | graph.border_clique()
    affinity = edge_affinity(graph.lab, edges, theta)
    return graph.to_pixels(minmax(absorbed_time(affinity, graph.border_ids)))
