"""Evaluation from config.eval, the same during training (every N steps, EMA params) and in --mode=eval.

Two metrics, each an `Evaluator(name, fn(params, key) -> dict)`:

* 'bpd': test negative log-likelihood in nats and bits/dim with standard errors, exact or bound
  (`gm.metrics.likelihood.evaluate_log_prob`); needs a Method with `log_prob`.
* 'fid': FID and Inception Score (and KID with `kid=True`) of `num_samples` samples against the
  reference statistics (`gm.metrics.sample_quality`): Inception features for CIFAR-10, the domain
  classifiers' (`fid_digits`, ...) for the digits and MNIST. Every result states its sample count and
  reference, and only numbers from the Inception network are named plain `fid`.

Everything the metrics need (the data, the feature network's weights, the reference statistics) is
loaded when the evaluators are made, so a missing weights file stops a run before its first step.
"""
from typing import Any, Callable, NamedTuple

import ml_collections

from gm import data as gm_data
from gm import parallel
from gm.metrics import sample_quality
from gm.metrics.likelihood import evaluate_log_prob

METRICS = ("bpd", "fid")


def eval_config(metrics=("bpd",), batch_size=500, **overrides):
    """config.eval with every field an experiment can override on the command line.

    batch_size, num_examples: the likelihood harness (num_examples 0: the whole test split).
    metrics: any of METRICS, for --mode=eval and for the in-training evaluations.
    every: steps between in-training evaluations from the EMA params; 0 turns them off.
    features: 'auto' (Inception for CIFAR-10, the domain classifier for digits and MNIST), 'inception',
      'digits' or 'mnist'.
    num_samples, sample_batch_size: samples for FID / IS (50,000 is the papers' protocol).
    reference: 'train' or 'test' (that split's statistics) or the .npz of `gm.metrics.reference_stats`.
    inception_weights: the FID Inception weights file (else $GM_INCEPTION_WEIGHTS).
    kid: also report KID (needs reference features; files written by gm.metrics.reference_stats have them).
    """
    config = dict(batch_size=batch_size, num_examples=0, metrics=tuple(metrics), every=0, features="auto",
                  num_samples=50_000, sample_batch_size=512, reference="train", inception_weights="",
                  kid=False)
    unknown = set(overrides) - set(config)
    if unknown:
        raise TypeError(f"Unknown eval_config fields {sorted(unknown)}.")
    config.update(overrides)
    return ml_collections.ConfigDict(config)


class Evaluator(NamedTuple):
    """name: 'bpd' or 'fid'; fn(params, key) -> dict of floats (plus 'kind' / 'reference' strings)."""
    name: str
    fn: Callable[[Any, Any], dict]


def likelihood_evaluator(config, method, dataset):
    """Test bits/dim of `method.log_prob` over config.eval.num_examples test examples."""
    e = config.eval
    if method.log_prob is None:
        raise ValueError("config.eval.metrics has 'bpd' but this model has no log_prob; drop 'bpd'.")
    parallel.check_batch_size(e.batch_size, "config.eval.batch_size")
    limit = e.get("num_examples") or None
    n = min(limit or dataset.info.num_test, dataset.info.num_test)

    def fn(params, key):
        batches = gm_data.eval_batches(dataset, batch_size=e.batch_size, split="test", limit=limit,
                                       process_index=parallel.process_index(),
                                       process_count=parallel.process_count())
        return evaluate_log_prob(method.log_prob, params, key, batches, dataset.info.num_dims,
                                 method.log_prob_is_bound, num_batches=-(-n // e.batch_size))

    return Evaluator("bpd", fn)


def sample_quality_evaluator(config, method, dataset):
    """FID / IS (/ KID) of config.eval.num_samples samples against config.eval.reference."""
    e = config.eval
    if dataset.info.num_bits is None:
        raise ValueError(f"config.eval.metrics has 'fid' but config.data.name={dataset.info.name!r} is not "
                         "an image dataset; drop 'fid'.")
    parallel.check_batch_size(e.batch_size, "config.eval.batch_size")
    extractor = sample_quality.make_extractor(e.get("features", "auto"), dataset, e.get("inception_weights"))
    reference = sample_quality.reference_for(extractor, dataset, e.get("reference", "train"), e.batch_size)
    num, chunk, kid = int(e.num_samples), int(e.sample_batch_size), bool(e.get("kid", False))

    def fn(params, key):
        features, logits = sample_quality.sample_features(extractor, method.sample, params, key, num, chunk,
                                                          dataset.info.num_bits)
        out = sample_quality.score(extractor, features, logits, reference, kid=kid)
        out["reference"] = reference.source
        return out

    return Evaluator("fid", fn)


_MAKERS = {"bpd": likelihood_evaluator, "fid": sample_quality_evaluator}


def make_evaluators(config, method, dataset, metrics=None):
    """The evaluators config.eval.metrics (or `metrics`) asks for, in that order."""
    metrics = tuple(config.eval.get("metrics", ("bpd",)) if metrics is None else metrics)
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"Unknown metric {m!r} in config.eval.metrics; use any of {METRICS}.")
    return [_MAKERS[m](config, method, dataset) for m in metrics]


def scalars(name, result):
    """The numbers of one evaluator's result, prefixed 'eval/' for metrics.jsonl and TensorBoard."""
    renamed = {"bpd": "test_bpd", "bpd_stderr": "test_bpd_stderr", "nll_nats": "test_nll_nats",
               "nll_nats_stderr": "test_nll_nats_stderr"} if name == "bpd" else {}
    return {f"eval/{renamed.get(k, k)}": v for k, v in result.items()
            if isinstance(v, (int, float)) and k not in ("step", "num_examples")}


def summary(name, result, label=""):
    """One line for the log: what was measured, on how many examples, against what; `label` names a
    variant of the likelihood (e.g. 'iwae5000')."""
    if name == "bpd":
        label = f"{label} " if label else ""
        return (f"test {label}{result['kind']} {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} bits/dim "
                f"({result['nll_nats']:.2f} nats per example, {result['num_examples']} examples)")
    parts = [f"{k} {v:.4g}" for k, v in result.items()
             if isinstance(v, float) and not k.endswith("_std") and k != "num_samples"]
    return f"{', '.join(parts)} ({result['num_samples']} samples against {result['reference']})"
