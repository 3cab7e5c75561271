"""How well a translation family maps each of two image domains onto the other, on the test split.

For every test row, `Method.translate` gives the image a of domain A, the image b of domain B, their
translations G(a) and F(b), and the cycles F(G(a)) and G(F(b)). Each image of a domain counts once
(the rows a split repeats to pair the domains are left out: `first_a`, `first_b`). Reported:

* cycle_l1_a, cycle_l1_b (and their standard errors over images): mean |F(G(a)) - a| and |G(F(b)) - b|
  in [-1, 1] units, the scale of CycleGAN's cycle loss.
* FID of each direction in the feature network's space (`<fid>_a`: F(b) against the real A images of
  the reference split; `<fid>_b`: G(a) against real B), next to the same distance for the untranslated
  test images (`<fid>_a_untranslated`: b itself against real A): what doing nothing scores. <fid> is
  'fid' for Inception (the cycle_gan sets) and e.g. 'fid_digits' for the digits' classifier.
* With a classifier of the data's own classes (`labelled`: digit_strokes and the digits' classifier),
  class_kept_b_to_a and class_kept_a_to_b: the share of translations the classifier assigns the input's
  class, and class_accuracy_real_a / _b: its accuracy on the real test images of each domain (the digits'
  classifier never saw thick strokes, so real B bounds what it can confirm of G(a)).
"""
import numpy as np

from gm.metrics import sample_quality
from gm.metrics.fid import frechet_distance
from gm.metrics.per_example import check_not_empty, over_batches

DOMAINS = ("a", "b")


def per_example_fn(translate_fn, extractor, num_bits):
    """fn((params, extractor params), key, batch) -> per-example features, logits, cycle errors, labels and
    the rows that count, for `over_batches`."""
    top = 2 ** num_bits - 1

    def fn(both, key, batch):
        params, extractor_params = both
        out = translate_fn(params, key, batch)
        result = {}
        for d, other in zip(DOMAINS, DOMAINS[::-1]):
            real, fake, cycle = out[f"image_{d}"], out[f"fake_{d}"], out[f"cycle_{d}"]
            for name, levels in (("real", real), ("fake", fake)):
                result[f"{name}_{d}_features"], result[f"{name}_{d}_logits"] = sample_quality.features_of_levels(
                    extractor, extractor_params, levels, num_bits)
            diff = (cycle.astype(np.float32) - real.astype(np.float32)) * (2.0 / top)
            result[f"cycle_l1_{d}"] = abs(diff).reshape(diff.shape[0], -1).mean(axis=1)
            result[f"first_{d}"] = batch[f"first_{d}"]
            result[f"label_{d}"] = batch[f"label_{d}"]
        return result

    return fn


def _stderr(x):
    return float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def _fid(features, reference):
    mu, sigma = sample_quality.moments(features)
    return frechet_distance(mu, sigma, reference.mu, reference.sigma)


def evaluate_translation(translate_fn, params, key, batches, extractor, references, num_bits, labelled=False,
                         num_batches=None):
    """Evaluate `translate_fn(params, key, batch)` (`gm.method.TranslateFn`) over test `batches` from
    `gm.data.eval_batches`; batch i uses fold_in(key, i). `references`: {'a', 'b'} `sample_quality.Reference`
    of each domain's real images; `labelled`: whether `extractor` classifies the data's labels.

    Returns a dict of floats (module docstring) with num_examples_a and num_examples_b.
    """
    fn = per_example_fn(translate_fn, extractor, num_bits)
    chunks = []
    for out, mask in over_batches(fn, (params, extractor.params), key, batches, num_batches):
        chunks.append({k: np.asarray(v)[mask] for k, v in out.items()})
    values = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    fid = extractor.fid_name
    result = {}
    for d, other in zip(DOMAINS, DOMAINS[::-1]):
        mine, theirs = values[f"first_{d}"].astype(bool), values[f"first_{other}"].astype(bool)
        check_not_empty(values[f"cycle_l1_{d}"][mine])
        cycle = values[f"cycle_l1_{d}"][mine].astype(np.float64)
        result[f"cycle_l1_{d}"], result[f"cycle_l1_{d}_stderr"] = float(cycle.mean()), _stderr(cycle)
        # Domain d's generated images are the translations of the other domain's test images.
        result[f"{fid}_{d}"] = _fid(values[f"fake_{d}_features"][theirs].astype(np.float64), references[d])
        result[f"{fid}_{d}_untranslated"] = _fid(values[f"real_{other}_features"][theirs].astype(np.float64),
                                                references[d])
        result[f"num_examples_{d}"] = int(mine.sum())
        if labelled:
            predicted = lambda name, rows: np.argmax(values[name][rows], axis=1)  # noqa: E731
            result[f"class_kept_{other}_to_{d}"] = float(np.mean(
                predicted(f"fake_{d}_logits", theirs) == values[f"label_{other}"][theirs]))
            result[f"class_accuracy_real_{d}"] = float(np.mean(
                predicted(f"real_{d}_logits", mine) == values[f"label_{d}"][mine]))
    return result
