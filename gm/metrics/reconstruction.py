"""Reconstruction error of an encoder-decoder family, over a test split, through `Method.reconstruct`.

Reports the mean squared error of the reconstruction in [-1, 1] units (the scale the families' losses
see), its standard error over examples, the PSNR in dB with the top level as the peak, and for discrete
latents (a 'codes' output) the perplexity of the split's code histogram and how many codes it uses.
"""
import numpy as np

from gm.metrics.per_example import check_not_empty, over_batches


def _perplexity(counts):
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def evaluate_reconstruction(reconstruct_fn, params, key, batches, num_bits, num_batches=None):
    """Evaluate `reconstruct_fn(params, key, batch)` (see `gm.method.ReconstructFn`) over `batches` from
    `gm.data.eval_batches`; batch i uses fold_in(key, i).

    Returns a dict: recon_mse, recon_mse_stderr ([-1, 1] units), psnr_db, num_examples, and with codes
    code_perplexity (exp of the entropy of the split's code histogram) and codes_used (distinct codes).
    """
    top = 2 ** num_bits - 1
    errors, codes = [], []
    for out, mask in over_batches(reconstruct_fn, params, key, batches, num_batches):
        diff = (np.asarray(out["reconstruction"], np.float64) - np.asarray(out["data"], np.float64)) * (2.0 / top)
        errors.append(np.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=1)[mask])
        if "codes" in out:
            codes.append(np.asarray(out["codes"])[mask].reshape(-1))
    mse = np.concatenate(errors)
    check_not_empty(mse)
    # PSNR in levels: an error of e in [-1, 1] units is e * top / 2 levels.
    level_mse = mse.mean() * (top / 2.0) ** 2
    result = {"recon_mse": float(mse.mean()),
              "recon_mse_stderr": float(mse.std(ddof=1) / np.sqrt(mse.size)) if mse.size > 1 else float("nan"),
              "psnr_db": float(10 * np.log10(top ** 2 / max(level_mse, 1e-12))), "num_examples": int(mse.size)}
    if codes:
        counts = np.bincount(np.concatenate(codes))
        result.update(code_perplexity=_perplexity(counts), codes_used=int(np.sum(counts > 0)))
    return result
