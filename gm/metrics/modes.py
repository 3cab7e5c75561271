"""Mode collapse on 2-D Gaussian mixtures, measured as in the unrolled-GAN and VEEGAN papers.

A sample is high quality when it lies within `num_std` standard deviations of its nearest mode; a mode
is covered when at least `min_count` high-quality samples are nearest to it. The default of 20 out of
2,500 samples is a fifth of a uniform share for the 25-mode grid.
"""
import numpy as np


def mode_coverage(samples, modes, std, num_std=3.0, min_count=20):
    """samples [N, 2], modes [M, 2], std the mixture's per-mode standard deviation ->
    {'modes_covered': int, 'num_modes': M, 'high_quality': share of high-quality samples in [0, 1],
     'counts': high-quality samples per mode [M]}."""
    samples, modes = np.asarray(samples, np.float64), np.asarray(modes, np.float64)
    distance = np.linalg.norm(samples[:, None, :] - modes[None], axis=-1)  # [N, M]
    nearest, closest = distance.argmin(1), distance.min(1)
    good = closest <= num_std * std
    counts = np.bincount(nearest[good], minlength=len(modes))
    return {"modes_covered": int(np.sum(counts >= min_count)), "num_modes": int(len(modes)),
            "high_quality": float(np.mean(good)) if len(good) else 0.0, "counts": counts.tolist()}
