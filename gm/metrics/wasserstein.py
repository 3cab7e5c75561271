"""The 2-Wasserstein distance between two point sets, exactly, as Tong et al. evaluate 2-D flows.

For two sets of n points with uniform weights an optimal transport plan is a permutation, so
W2^2 = min over matchings of the mean squared distance: a linear assignment (`gm.optimal_transport`),
the value POT's `emd2` returns for the same sets.
"""
import numpy as np

from gm.optimal_transport import assignment, squared_distances


def wasserstein2(x, y) -> float:
    """W2 between the empirical distributions of x [n, ...] and y [n, ...] (same n), in x's units."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if x.shape != y.shape:
        raise ValueError(f"W2 here takes two sets of as many points of one dimension, got {x.shape} and {y.shape}.")
    cols = assignment(squared_distances(x, y))
    return float(np.sqrt(np.mean(np.sum((x - y[cols]) ** 2, 1))))
