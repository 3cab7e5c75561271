"""One likelihood harness for every family with `log_prob`.

Reports the mean negative log-likelihood in nats per example and in bits/dim (through
`gm.distributions.bits_per_dim`, at the dataset's bit depth), each with its standard error over
examples, and whether the number is exact or a bound.
"""
import jax
import numpy as np
from tqdm import tqdm

from gm import distributions as dist
from gm import parallel


def evaluate_log_prob(log_prob_fn, params, key, batches, num_dims, is_bound, num_batches=None):
    """Evaluate `log_prob_fn(params, key, batch) -> [B] nats` over `batches` from `gm.data.eval_batches`.

    Args:
      log_prob_fn: a Method's `log_prob`.
      params: replicated parameters (e.g. the EMA params of `Strategy.get_state`).
      key: base key; batch i uses fold_in(key, i).
      batches: iterable of this process's shares of global batches, each with a boolean 'mask'.
      num_dims: D of one example, for bits/dim.
      is_bound: whether log_prob is a lower bound (reported as 'bound') or exact.

    Returns:
      dict with nll_nats, nll_nats_stderr, bpd, bpd_stderr, num_examples, kind ('exact' or 'bound').
    """
    compiled = parallel.jit_per_example(log_prob_fn)
    nll = []
    for i, batch in enumerate(tqdm(batches, total=num_batches, desc="eval", mininterval=2.0,
                                   disable=parallel.process_index() != 0)):
        batch = dict(batch)
        mask = parallel.shard_batch({"mask": batch.pop("mask")})["mask"]
        log_p = compiled(params, jax.random.fold_in(key, i), parallel.shard_batch(batch))
        log_p, mask = parallel.to_host((log_p, mask))
        nll.append(-np.asarray(log_p, np.float64)[np.asarray(mask)])
    nll = np.concatenate(nll)
    if nll.size == 0:
        raise ValueError("The evaluation split is empty; check config.eval.num_examples.")
    stderr = nll.std(ddof=1) / np.sqrt(nll.size) if nll.size > 1 else float("nan")
    return {
        "nll_nats": float(nll.mean()),
        "nll_nats_stderr": float(stderr),
        "bpd": float(dist.bits_per_dim(nll.mean(), num_dims)),
        "bpd_stderr": float(dist.bits_per_dim(stderr, num_dims)),
        "num_examples": int(nll.size),
        "kind": "bound" if is_bound else "exact",
    }
