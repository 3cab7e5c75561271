"""The Fréchet distance between feature statistics (FID), its streaming statistics, and KID.

Works on any features: the 2048-d pool features of the FID Inception network give the FID of the
literature; a domain classifier's features give the clearly named offline variants. Statistics files
are .npz with `mu` [D] and `sigma` [D, D], the format pytorch-fid reads and writes.
"""
import warnings

import numpy as np
from scipy import linalg


class StreamingMoments:
    """Mean and covariance of feature batches, accumulated in float64 so 50,000 x 2048 features need
    O(D^2) memory and lose nothing to float32 summation."""

    def __init__(self, dim):
        self.n = 0
        self._sum = np.zeros(dim, np.float64)
        self._outer = np.zeros((dim, dim), np.float64)

    def update(self, features, mask=None):
        """features [B, D]; mask bool [B] keeps the real rows of a padded batch."""
        x = np.asarray(features, np.float64)
        if mask is not None:
            x = x[np.asarray(mask, bool)]
        self.n += x.shape[0]
        self._sum += x.sum(axis=0)
        self._outer += x.T @ x

    def mean(self):
        return self._sum / self.n

    def cov(self):
        """Unbiased covariance [D, D] (ddof=1, as np.cov and pytorch-fid)."""
        if self.n < 2:
            raise ValueError("A covariance needs at least two feature vectors.")
        mu = self.mean()
        return (self._outer - self.n * np.outer(mu, mu)) / (self.n - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians (a float).

    As pytorch-fid: scipy's sqrtm; when its result is not finite, eps is added to both diagonals; a
    complex square root with an imaginary part above 1e-3 is an error, a smaller one is dropped.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"Statistics of different sizes: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}.")
    if sigma1.shape != mu1.shape * 2:
        raise ValueError(f"A covariance must be [D, D] for a mean of [D]: got {sigma1.shape} for {mu1.shape}.")
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} is not finite (NaN or inf among the features: the samples or the "
                             f"feature network diverged).")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # scipy warns when the product is singular (e.g. a collapsed sample set) but usually still
        # returns the right root; as pytorch-fid, only a non-finite result takes the eps path below.
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}; "
                             "the statistics are not valid covariances.")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def save_stats(path, mu, sigma):
    """Write reference statistics as pytorch-fid's .npz (keys mu, sigma)."""
    np.savez(path, mu=np.asarray(mu), sigma=np.asarray(sigma))


def load_stats(path):
    """(mu, sigma) from a pytorch-fid style .npz."""
    with np.load(path) as f:
        return f["mu"], f["sigma"]


def kernel_inception_distance(features1, features2, num_subsets=100, subset_size=1000, seed=0):
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y / D + 1)^3, averaged over random
    subsets; returns (mean, std) over the subsets."""
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError("KID needs at least two feature vectors in each set.")
    rng = np.random.default_rng(seed)
    kernel = lambda a, b: (a @ b.T / a.shape[1] + 1.0) ** 3
    values = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
        off_diag = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
        values.append(off_diag(kxx) + off_diag(kyy) - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))
