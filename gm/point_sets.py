"""The 2-D source and target sets of Tong et al.'s flow-matching table, as their released runner makes
them (atong01/conditional-flow-matching, runner/src/datamodules and torchdyn's toy data).

Each is `(n, rng) -> {'x': float32 [n, 2], 'label': int32 [n]}`; `gm.data` serves them as datasets of
10,000 train and 1,000 test points (the runner's 10,000 / 1,000 / 1,000 split, without a validation
set). The sklearn shapes take their seed from `rng`, so the data are fixed like every gm toy.

    cfm_8gaussians   8 modes at radius 5 (angles k pi / 4), std 1 (torchdyn `gaussians`)
    cfm_moons        make_moons(noise=0.05) x 2, shifted by -1 in x (the runner's `moons`)
    cfm_scurve       make_s_curve(noise=0.05), coordinates (0, 2), x 1.5 (the runner's `scurve`)
    dsb_moons        make_moons(noise=0.1), standardised by one scalar mean and std, x 7 (`twodim`'s source)
    dsb_8gaussians   8 modes at radius 4, std 0.5, all x 3 (`twodim`'s target: radius 12, std 1.5)
"""
import numpy as np

NUM_TRAIN, NUM_TEST = 10_000, 1_000


def _sklearn_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2 ** 31 - 1))


def _ring_of_gaussians(n, rng, radius, std, angles):
    label = rng.integers(len(angles), size=n).astype(np.int32)
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    return {"x": (centres[label] + std * rng.standard_normal((n, 2))).astype(np.float32), "label": label}


def cfm_8gaussians(n, rng):
    return _ring_of_gaussians(n, rng, 5.0, 1.0, np.pi / 4 * np.arange(1, 9))


def dsb_8gaussians(n, rng):
    out = _ring_of_gaussians(n, rng, 4.0, 0.5, np.pi / 4 * np.arange(8))
    return dict(out, x=3.0 * out["x"])


def _moons(n, rng, noise):
    from sklearn.datasets import make_moons  # lazy: sklearn costs a second or two to import
    x, label = make_moons(n, noise=noise, random_state=_sklearn_seed(rng))
    return x, label.astype(np.int32)


def cfm_moons(n, rng):
    x, label = _moons(n, rng, 0.05)
    return {"x": (2.0 * x - np.array([1.0, 0.0])).astype(np.float32), "label": label}


def dsb_moons(n, rng):
    x, label = _moons(n, rng, 0.1)
    return {"x": ((x - x.mean()) / x.std() * 7.0).astype(np.float32), "label": label}


def cfm_scurve(n, rng):
    from sklearn.datasets import make_s_curve
    x, position = make_s_curve(n, noise=0.05, random_state=_sklearn_seed(rng))
    label = np.digitize(position, np.linspace(position.min(), position.max(), 9)[1:-1]).astype(np.int32)
    return {"x": (1.5 * x[:, [0, 2]]).astype(np.float32), "label": label}  # label: one of 8 stretches


SPLITS = {f.__name__: f for f in (cfm_8gaussians, cfm_moons, cfm_scurve, dsb_moons, dsb_8gaussians)}
CLASSES = {"cfm_8gaussians": 8, "cfm_moons": 2, "cfm_scurve": 8, "dsb_moons": 2, "dsb_8gaussians": 8}
