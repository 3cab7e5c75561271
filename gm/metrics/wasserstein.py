"""The 2-Wasserstein distance between two point sets, exactly, as Tong et al. evaluate 2-D flows.

For two sets of n points with uniform weights an optimal transport plan is a permutation, so
W2^2 = min over matchings of the mean squared distance: a linear assignment (scipy), the value POT's
`emd2` returns for the same sets.
"""
import numpy as np


def wasserstein2(x, y) -> float:
    """W2 between the empirical distributions of x [n, ...] and y [n, ...] (same n), in x's units."""
    from scipy.optimize import linear_sum_assignment  # scipy is slow to import; only when used

    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if x.shape != y.shape:
        raise ValueError(f"W2 here takes two sets of as many points of one dimension, got {x.shape} and {y.shape}.")
    cost = np.sum(x ** 2, 1)[:, None] + np.sum(y ** 2, 1)[None, :] - 2.0 * x @ y.T
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(max(np.mean(np.sum((x[rows] - y[cols]) ** 2, 1)), 0.0)))
