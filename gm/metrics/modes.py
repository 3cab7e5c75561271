"""Mode collapse on 2-D Gaussian mixtures, measured as in the unrolled-GAN, VEEGAN and PacGAN papers.

A sample is high quality when it lies within `num_std` standard deviations of its nearest mode; a mode
is covered when at least `min_count` high-quality samples are nearest to it. The default of 20 out of
2,500 samples is a fifth of a uniform share for the 25-mode grid; PacGAN's code counts a mode covered
from one sample (`min_count=1`). The reverse KL is KL(q || p) between the modes' shares of the
high-quality samples (q) and the mixture's uniform weights (p), in nats: 0 when every mode gets its
share, log M when one mode takes all.
"""
import numpy as np


def mode_coverage(samples, modes, std, num_std=3.0, min_count=20):
    """samples [N, 2], modes [M, 2], std the mixture's per-mode standard deviation ->
    {'modes_covered': int, 'num_modes': M, 'high_quality': share of high-quality samples in [0, 1],
     'reverse_kl': nats (inf with no high-quality sample), 'counts': high-quality samples per mode [M]}."""
    samples, modes = np.asarray(samples, np.float64), np.asarray(modes, np.float64)
    distance = np.linalg.norm(samples[:, None, :] - modes[None], axis=-1)  # [N, M]
    nearest, closest = distance.argmin(1), distance.min(1)
    good = closest <= num_std * std
    counts = np.bincount(nearest[good], minlength=len(modes))
    return {"modes_covered": int(np.sum(counts >= min_count)), "num_modes": int(len(modes)),
            "high_quality": float(np.mean(good)) if len(good) else 0.0,
            "reverse_kl": reverse_kl_to_uniform(counts), "counts": counts.tolist()}


def reverse_kl_to_uniform(counts) -> float:
    """KL(q || uniform) in nats for q = counts / sum(counts) over M modes; inf for no counts."""
    counts = np.asarray(counts, np.float64)
    if counts.sum() == 0:
        return float("inf")
    q = counts / counts.sum()
    nonzero = q > 0
    return float(np.sum(q[nonzero] * np.log(q[nonzero] * len(q))))
