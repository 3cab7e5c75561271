"""Evaluation from config.eval, the same during training (every N steps, EMA params) and in --mode=eval.

Four metrics, each an `Evaluator(name, fn(params, key) -> dict)`:

* 'bpd': test negative log-likelihood in nats and bits/dim with standard errors, exact or bound
  (`gm.metrics.likelihood.evaluate_log_prob`); needs a Method with `log_prob`. A prior over codes
  reports bits per code (`Method.log_prob_per`).
* 'fid': FID and Inception Score (and KID with `kid=True`) of `num_samples` samples against the
  reference statistics (`gm.metrics.sample_quality`): Inception features for CIFAR-10, the domain
  classifiers' (`fid_digits`, ...) for the digits and MNIST. A conditional sampler
  (`Method.sample_labels`) is also scored by the domain classifier's agreement with the classes asked
  for (`class_accuracy_digits`). Every result states its sample count and
  reference, and only numbers from the Inception network are named plain `fid`.
* 'recon': test reconstruction error and PSNR (`gm.metrics.reconstruction`); needs `reconstruct`.
* 'translation': a translation family's test translations (`gm.metrics.translation`): cycle error,
  the FID of each direction against that domain's real images of config.eval.reference, and on the
  digit domains the share of translations that keep their digit; needs `translate`.

A metric the model cannot provide is skipped (a VQ-VAE has no 'bpd', a GAN no 'recon'). Everything the
metrics need (the data, the feature network's weights, the reference statistics) is loaded when the
evaluators are made, so a missing weights file stops a run before its first step.
"""
from typing import Any, Callable, NamedTuple

import numpy as np
from absl import logging

from gm import data as gm_data
from gm import parallel
from gm.config import METRICS, EvalConfig
from gm.method import Method
from gm.metrics import sample_quality
from gm.metrics.likelihood import evaluate_log_prob
from gm.metrics.reconstruction import evaluate_reconstruction
from gm.metrics.translation import evaluate_translation


class Evaluator(NamedTuple):
    """name: one of METRICS; fn(params, key) -> dict of floats (plus 'kind' / 'reference' strings)."""
    name: str
    fn: Callable[[Any, Any], dict]


def _test_batches(e: EvalConfig, dataset):
    """(fresh iterator over config.eval.num_examples test examples, its number of batches)."""
    parallel.check_batch_size(e.batch_size, "config.eval.batch_size")
    limit = e.num_examples or None
    n = min(limit or dataset.info.num_test, dataset.info.num_test)

    def batches():
        return gm_data.eval_batches(dataset, batch_size=e.batch_size, split="test", limit=limit,
                                    process_index=parallel.process_index(), process_count=parallel.process_count())

    return batches, -(-n // e.batch_size)


def likelihood_evaluator(e: EvalConfig, method: Method, dataset) -> Evaluator:
    """Test bits/dim (or bits per `Method.log_prob_per`) of `method.log_prob`."""
    batches, num_batches = _test_batches(e, dataset)
    num_dims = method.log_prob_per[0] if method.log_prob_per else dataset.info.num_dims

    def fn(params, key):
        result = evaluate_log_prob(method.log_prob, params, key, batches(), num_dims, method.log_prob_is_bound,
                                   num_batches=num_batches)
        return dict(result, per=method.log_prob_per[1] if method.log_prob_per else "dim")

    return Evaluator("bpd", fn)


def sample_quality_evaluator(e: EvalConfig, method: Method, dataset) -> Evaluator:
    """FID / IS (/ KID) of config.eval.num_samples samples against config.eval.reference."""
    if dataset.info.num_bits is None:
        raise ValueError(f"config.eval.metrics has 'fid' but config.data.name={dataset.info.name!r} is not "
                         "an image dataset; drop 'fid'.")
    parallel.check_batch_size(e.batch_size, "config.eval.batch_size")
    extractor = sample_quality.make_extractor(e.features, dataset, e.inception_weights)
    reference = sample_quality.reference_for(extractor, dataset, e.reference, e.batch_size)

    # A conditional sampler on a dataset its classifier knows is also scored by how often the classifier
    # agrees with the class each sample was drawn for.
    faithful = method.sample_labels is not None and extractor.name == dataset.info.name

    def fn(params, key):
        features, logits = sample_quality.sample_features(extractor, method.sample, params, key, e.num_samples,
                                                          e.sample_batch_size, dataset.info.num_bits)
        out = sample_quality.score(extractor, features, logits, reference, kid=e.kid)
        if faithful:
            chunk = sample_quality.sample_chunk(e.num_samples, e.sample_batch_size)
            labels = np.concatenate([np.asarray(method.sample_labels(chunk))
                                     for _ in range(-(-e.num_samples // chunk))])[:e.num_samples]
            out[f"class_accuracy_{extractor.name}"] = sample_quality.class_accuracy(logits, labels)
        out["reference"] = reference.source
        return out

    return Evaluator("fid", fn)


def reconstruction_evaluator(e: EvalConfig, method: Method, dataset) -> Evaluator:
    """Test reconstruction error of `method.reconstruct`."""
    batches, num_batches = _test_batches(e, dataset)

    def fn(params, key):
        return evaluate_reconstruction(method.reconstruct, params, key, batches(), dataset.info.num_bits,
                                       num_batches=num_batches)

    return Evaluator("recon", fn)


def translation_evaluator(e: EvalConfig, method: Method, dataset) -> Evaluator:
    """Test translations of `method.translate`, each direction against its domain's real images."""
    batches, num_batches = _test_batches(e, dataset)
    if e.reference not in ("train", "test"):
        raise ValueError(f"config.eval.reference={e.reference!r}: a translation is scored against the real images "
                         "of each domain, so use 'train' or 'test'.")
    extractor = sample_quality.make_extractor(e.features, dataset, e.inception_weights)
    references = {}
    for d in ("a", "b"):
        features, _ = sample_quality.dataset_features(extractor, dataset, e.reference, e.batch_size,
                                                      field=f"image_{d}")
        first = getattr(dataset, e.reference)[f"first_{d}"][:len(features)]
        mu, sigma = sample_quality.moments(features[first])
        references[d] = sample_quality.Reference(mu, sigma, None, f"{extractor.name} features of "
                                                 f"{dataset.info.name} {e.reference} {d.upper()}")
    # The class checks need a classifier of the data's own classes (the digits' for the digit domains).
    own_classifier = sample_quality.resolve_features("auto", dataset.info.name)
    labelled = extractor.name != "inception" and extractor.name == own_classifier

    def fn(params, key):
        result = evaluate_translation(method.translate, params, key, batches(), extractor, references,
                                      dataset.info.num_bits, labelled, num_batches)
        result["reference"] = f"{extractor.name} features of {dataset.info.name} {e.reference} A and B"
        return result

    return Evaluator("translation", fn)


_MAKERS = {"bpd": likelihood_evaluator, "fid": sample_quality_evaluator, "recon": reconstruction_evaluator,
           "translation": translation_evaluator}


def supported(method: Method, metric: str) -> bool:
    """Whether `method` can be measured by `metric`."""
    return {"bpd": method.log_prob is not None, "recon": method.reconstruct is not None,
            "fid": method.sample is not None, "translation": method.translate is not None}[metric]


def make_evaluators(e: EvalConfig, method: Method, dataset, metrics=None):
    """The evaluators of config.eval.metrics (or `metrics`) that `method` supports, in that order;
    one sentence when it supports none of them."""
    metrics = tuple(e.metrics if metrics is None else metrics)
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"Unknown metric {m!r} in config.eval.metrics; use any of {METRICS}.")
    usable = [m for m in metrics if supported(method, m)]
    if not usable:
        can = [m for m in METRICS if supported(method, m)]
        raise ValueError(f"This model supports none of config.eval.metrics={metrics}; set "
                         f"--config.eval.metrics to some of {tuple(can)}.")
    skipped = sorted(set(metrics) - set(usable))
    if skipped:
        logging.info("Skipping config.eval.metrics %s: this model cannot provide them.", skipped)
    return [_MAKERS[m](e, method, dataset) for m in usable]


_BPD_NAMES = {"bpd": "test_bpd", "bpd_stderr": "test_bpd_stderr", "nll_nats": "test_nll_nats",
              "nll_nats_stderr": "test_nll_nats_stderr"}


def scalars(name, result):
    """The numbers of one evaluator's result, prefixed 'eval/' for metrics.jsonl and TensorBoard."""
    renamed = _BPD_NAMES if name == "bpd" else {}
    return {f"eval/{renamed.get(k, k)}": v for k, v in result.items()
            if isinstance(v, (int, float)) and k not in ("step", "num_examples", "num_examples_a", "num_examples_b")}


def summary(name, result, label=""):
    """One line for the log: what was measured, on how many examples, against what; `label` names a
    variant of the likelihood (e.g. 'iwae5000')."""
    if name == "bpd":
        label = f"{label} " if label else ""
        return (f"test {label}{result['kind']} {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} bits/"
                f"{result.get('per', 'dim')} ({result['nll_nats']:.2f} nats per example, "
                f"{result['num_examples']} examples)")
    if name == "recon":
        codes = (f", code perplexity {result['code_perplexity']:.1f} over {result['codes_used']} codes used"
                 if "code_perplexity" in result else "")
        return (f"test reconstruction MSE {result['recon_mse']:.5f} ± {result['recon_mse_stderr']:.5f} "
                f"([-1, 1] units), PSNR {result['psnr_db']:.2f} dB{codes} ({result['num_examples']} examples)")
    if name == "translation":
        parts = [f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float) and not k.endswith("_stderr")]
        return (f"{', '.join(parts)} ({result['num_examples_a']} test images of A, {result['num_examples_b']} of B; "
                f"FID against {result['reference']})")
    parts = [f"{k} {v:.4g}" for k, v in result.items()
             if isinstance(v, float) and not k.endswith("_std") and k != "num_samples"]
    return f"{', '.join(parts)} ({result['num_samples']} samples against {result['reference']})"
