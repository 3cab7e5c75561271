"""One likelihood harness for every family with `log_prob`.

Reports the mean negative log-likelihood in nats per example and in bits/dim (through
`gm.distributions.bits_per_dim`, at the dataset's bit depth), each with its standard error over
examples, and whether the number is exact or a bound.
"""
import numpy as np

from gm import distributions as dist
from gm.metrics.per_example import check_not_empty, over_batches


def evaluate_log_prob(log_prob_fn, params, key, batches, num_dims, is_bound, num_batches=None):
    """Evaluate `log_prob_fn(params, key, batch) -> [B] nats` over `batches` from `gm.data.eval_batches`.

    Args:
      log_prob_fn: a Method's `log_prob`.
      params: replicated parameters (e.g. the EMA params of `Strategy.get_state`).
      key: base key; batch i uses fold_in(key, i).
      batches: iterable of this process's shares of global batches, each with a boolean 'mask'.
      num_dims: D of one example, for bits/dim (a positive real for text: the bytes a window stands for).
      is_bound: whether log_prob is a lower bound (reported as 'bound') or exact.

    Returns:
      dict with nll_nats, nll_nats_stderr, bpd, bpd_stderr, num_examples, kind ('exact' or 'bound').
    """
    nll = [-np.asarray(log_p, np.float64)[mask]
           for log_p, mask in over_batches(log_prob_fn, params, key, batches, num_batches)]
    nll = np.concatenate(nll)
    check_not_empty(nll)
    stderr = nll.std(ddof=1) / np.sqrt(nll.size) if nll.size > 1 else float("nan")
    return {
        "nll_nats": float(nll.mean()),
        "nll_nats_stderr": float(stderr),
        "bpd": float(dist.bits_per_unit(nll.mean(), num_dims)),
        "bpd_stderr": float(dist.bits_per_unit(stderr, num_dims)),
        "num_examples": int(nll.size),
        "kind": "bound" if is_bound else "exact",
    }
