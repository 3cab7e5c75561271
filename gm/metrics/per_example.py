"""The one loop every test-split evaluation runs: a per-example function over masked, sharded batches."""
import jax
import numpy as np
from tqdm import tqdm

from gm import parallel


def over_batches(fn, params, key, batches, num_batches=None):
    """Yield (outputs, mask) for each batch of `batches` (from `gm.data.eval_batches`, with a boolean
    'mask' marking the real rows of a padded batch).

    fn(params, key, batch) -> a pytree of per-example arrays [B, ...]; batch i gets fold_in(key, i). It is
    compiled once with the batch and its outputs split over every device (`parallel.jit_per_example`),
    and each batch's outputs and mask come back as numpy on every process.
    """
    compiled = parallel.jit_per_example(fn)
    for i, batch in enumerate(tqdm(batches, total=num_batches, desc="eval", mininterval=2.0,
                                   disable=parallel.process_index() != 0)):
        batch = dict(batch)
        mask = parallel.shard_batch({"mask": batch.pop("mask")})["mask"]
        out = compiled(params, jax.random.fold_in(key, i), parallel.shard_batch(batch))
        out, mask = parallel.to_host((out, mask))
        yield out, np.asarray(mask)


def check_not_empty(values):
    """One sentence when an evaluation saw no example."""
    if np.size(values) == 0:
        raise ValueError("The evaluation split is empty; check config.eval.num_examples.")
