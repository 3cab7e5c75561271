import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from gm import optimal_transport as got


@pytest.mark.parametrize("n, modes", [(64, 1), (300, 8)])
def test_assignment_is_a_permutation_of_the_optimal_cost(n, modes):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 2))
    centres = 5.0 * np.stack([np.cos(np.arange(modes)), np.sin(np.arange(modes))], 1)
    y = centres[rng.integers(0, modes, n)] + rng.normal(size=(n, 2))
    cost = got.squared_distances(x, y)
    np.testing.assert_allclose(cost, ((x[:, None] - y[None]) ** 2).sum(-1), atol=1e-9)
    cols = got.assignment(cost)
    assert np.array_equal(np.sort(cols), np.arange(n))
    rows, reference = linear_sum_assignment(cost)
    assert cost[np.arange(n), cols].sum() == pytest.approx(cost[rows, reference].sum(), rel=1e-12)


def test_assignment_without_pot_falls_back_to_scipy(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "ot", None)  # `import ot` now raises ImportError
    cost = got.squared_distances(np.arange(5.0)[:, None], np.arange(5.0)[::-1, None])
    np.testing.assert_array_equal(got.assignment(cost), np.arange(5)[::-1])
    with pytest.raises(ValueError, match="square"):
        got.assignment(np.zeros((3, 4)))
