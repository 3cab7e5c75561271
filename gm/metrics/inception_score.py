"""Inception Score (Salimans et al. 2016) from classifier logits."""
import numpy as np
from scipy.special import log_softmax


def inception_score(logits, num_splits: int = 10, shuffle: bool = False, seed: int = 2020) -> tuple:
    """exp(E_x KL(p(y|x) || p(y))) on each of `num_splits` splits; returns (mean, std over the splits).

    logits: [N, K] class logits (the 1008-way logits of the FID Inception, or a domain classifier's).
    The standard protocol uses N = 50,000 and 10 splits. Split i is rows [i N // s, (i + 1) N // s),
    the boundaries of the improved-GAN code and torch-fidelity. shuffle permutes the rows first with
    numpy's RandomState(seed), as torch-fidelity does by default (seed 2020).
    """
    log_p = log_softmax(np.asarray(logits, np.float64), axis=-1)
    n = log_p.shape[0]
    if num_splits < 1 or n < num_splits:
        raise ValueError(f"Need at least num_splits={num_splits} examples, got {n}.")
    if shuffle:
        log_p = log_p[np.random.RandomState(seed).permutation(n)]
    scores = []
    for i in range(num_splits):
        part = log_p[i * n // num_splits:(i + 1) * n // num_splits]
        log_marginal = np.log(np.mean(np.exp(part), axis=0))
        kl = np.sum(np.exp(part) * (part - log_marginal), axis=-1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))
