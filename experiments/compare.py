"""Every family on the same data, measured the same way: the "VAE vs autoregressive vs GAN" table.

    python -m experiments.compare --workdir=runs/compare
    python -m experiments.compare --workdir=runs/compare --config.families="('ddpm','gan')" --config.num_steps=5000
    python -m experiments.compare --workdir=runs/smoke --config=experiments/compare.py:smoke

Each family's offline configuration (its experiment's `smoke` config: the 4-bit 8x8 digits) is trained
for config.num_steps steps in WORKDIR/FAMILY (or loaded from there when it is already trained; a longer
num_steps resumes it), then measured:

* parameters, train time (of the run that trained it), sampling time per image (compiled, after a
  warm-up call, batch of config.timing_batch);
* test bits/dim (exact or a bound, with its standard error) through the one likelihood harness;
  NADE models the binarized digits, so its number is of different data, and the VQ-VAE and DALL-E have
  no image likelihood (their priors' bits per code are in WORKDIR/FAMILY/prior); DALL-E's samples are
  drawn for "the digit k", k = 0..9 in turn;
* fid_digits / is_digits of config.eval.num_samples samples against the digits train split, with the
  digits classifier's features (`gm.metrics.domain`): comparable across these rows, not with Inception FID.

Writes WORKDIR/compare.md, compare.csv, compare.json and one PNG grid of samples per family in
WORKDIR/samples/.
"""
import importlib
import json
import os
import time

import jax
import numpy as np
from absl import logging

from gm import families, parallel
from gm.config import base_config, parse_run, variant
from gm.metrics import sample_quality
from gm.train import evaluators, loop, run
from gm.train.logging import save_table

# Compared by default: every registered image family (`gm.families`).
FAMILIES = tuple(name for name, family in families.FAMILIES.items() if family.modality == "image")
GRID = 64  # samples in each family's grid; the trainer's last samples and the timing use the same batch


def get_config(arg=None):
    """Every family for 2,000 steps on the digits; arg='smoke' runs each for a few steps, for the tests."""
    config = base_config()
    config.families = FAMILIES
    config.num_steps = 2000
    config.timing_batch = GRID
    config.tiny_networks = False  # the registry's tiny networks (`families.with_tiny_networks`), for tests
    config.eval.update(metrics=("bpd", "fid"), batch_size=120, features="digits", num_samples=1000,
                       sample_batch_size=256)
    # Flow matching's and the score SDE's likelihoods from an accurate solver (a coarse one under-reports
    # bits/dim); the VAE
    # with the discretized logistic likelihood of the 4-bit images, not its smoke config's binarized ones.
    config.overrides = dict(flow_matching=dict(flow_matching=dict(solver="dopri5")),
                            score_sde=dict(sde=dict(ode_solver="dopri5")),
                            vae=dict(model=dict(likelihood="logistic")))
    return variant(config, arg, "compare", smoke=smoke)


def smoke(config):
    config.num_steps = 4
    config.tiny_networks = True
    config.eval.update(num_examples=40, num_samples=GRID, sample_batch_size=GRID)
    config.overrides.flow_matching.flow_matching.update(solver="euler")
    config.overrides.score_sde.sde.update(ode_solver="euler")
    config.overrides.vae.model.update(num_importance=8)  # the IWAE bound's samples per example (500)


def family_config(config, family):
    """The family's smoke config (its experiment's; with config.tiny_networks, the registry's tiny
    networks) with the comparison's steps, seed, evaluation and overrides
    (config.overrides.FAMILY.SECTION.FIELD)."""
    entry = families.get(family)
    cfg = importlib.import_module(f"experiments.{entry.experiment}").get_config("smoke")
    if config.get("tiny_networks", False):  # compare's own field; absent in configs that reuse this
        cfg = families.with_tiny_networks(cfg)
    n = int(config.num_steps)
    if n <= 0:
        raise ValueError(f"config.num_steps must be positive, got {n}.")
    # The trainer's last grid has the comparison's size, so both compile one sampler.
    steps = dict(num_steps=n, checkpoint_every=n, sample_every=n, log_every=min(n, 50), num_samples=GRID)
    with cfg.unlocked():
        cfg.seed = config.seed
        cfg.parallel = config.parallel
        cfg.eval.update(config.eval)
        for stage in entry.stages:
            cfg[stage.train].update(steps)
        for section, fields in config.overrides.get(family, {}).items():
            cfg[section].update(fields)
    return cfg


def _num_params(tree):
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def train_family(config, family, family_dir):
    """Train (or resume) one family -> (the last stage's restored run, parameters over every stage,
    seconds this call spent)."""
    cfg = family_config(config, family)
    start = time.perf_counter()
    run.run(cfg, family_dir, "train")
    seconds = time.perf_counter() - start
    stages = families.get(family).stages
    num_params = sum(_num_params(run.restore(cfg, family_dir, s.name).state.params) for s in stages)
    return run.restore(cfg, family_dir), num_params, seconds


def sampling_seconds_per_image(method, params, key, num):
    """Wall time of one compiled call of `method.sample` for `num` images, after a warm-up call."""
    sampler = parallel.jit_sampler(method.sample, num)
    jax.block_until_ready(sampler(params, key))
    start = time.perf_counter()
    jax.block_until_ready(sampler(params, jax.random.fold_in(key, 1)))
    return (time.perf_counter() - start) / num


def measure_family(config, family, workdir, dataset, extractor, reference):
    """One row of the table (a dict)."""
    family_dir = os.path.join(workdir, family)
    record_path = os.path.join(family_dir, "compare_train.json")
    record = json.load(open(record_path)) if os.path.exists(record_path) else {}
    restored, num_params, seconds = train_family(config, family, family_dir)
    method, params = restored.method, restored.state.ema_params
    if record.get("num_steps") != config.num_steps:  # this call trained it (or trained it further)
        record = {"num_steps": config.num_steps, "train_seconds": seconds + record.get("train_seconds", 0.0)}
        if parallel.process_index() == 0:
            with open(record_path, "w") as f:
                json.dump(record, f)
    _, _, sample_key, eval_key = loop.run_keys(config.seed)
    row = {"family": family, "model": families.get(family).label, "parameters": num_params,
           "train_steps": config.num_steps, "train_seconds": record["train_seconds"]}
    # Bits per image dimension only: a prior's bits per code (the VQ-VAE's) are not on this scale.
    if method.log_prob is not None and method.log_prob_per is None:
        result = evaluators.likelihood_evaluator(restored.setup.run.eval, method, dataset).fn(params, eval_key)
        row.update(test_bpd=result["bpd"], test_bpd_stderr=result["bpd_stderr"], bpd_kind=result["kind"])
    features, logits = sample_quality.sample_features(extractor, method.sample, params, sample_key,
                                                      config.eval.num_samples, config.eval.sample_batch_size,
                                                      dataset.info.num_bits)
    quality = sample_quality.score(extractor, features, logits, reference)
    row.update({k: v for k, v in quality.items() if k != "num_samples"})
    row["sample_ms_per_image"] = 1000 * sampling_seconds_per_image(method, params, sample_key, config.timing_batch)
    grid = parallel.to_host(parallel.jit_sampler(method.sample, GRID)(params, jax.random.fold_in(sample_key, 7)))
    if parallel.process_index() == 0:
        loop.write_samples(os.path.join(workdir, "samples", f"{family}.png"), grid, dataset.info)
    return row


def _fmt(row, key, fmt):
    return format(row[key], fmt) if key in row else "—"


def markdown_table(rows, extractor, reference, num_samples):
    """The comparison as markdown."""
    fid, is_ = extractor.fid_name, extractor.is_name
    lines = [f"| family | parameters | train steps | train time (s) | test bits/dim | {fid} | {is_} | "
             "sampling (ms/image) |", "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        bpd = "—" if "test_bpd" not in r else f"{r['test_bpd']:.3f} ± {r['test_bpd_stderr']:.3f} ({r['bpd_kind']})"
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['train_steps']:,} | {r['train_seconds']:.0f} | "
                     f"{bpd} | {_fmt(r, fid, '.2f')} | {_fmt(r, is_, '.2f')} | {r['sample_ms_per_image']:.2f} |")
    lines.append("")
    lines.append(f"{fid} and {is_} from {num_samples} samples against {reference.source}; the digits "
                 "classifier's features, not Inception's. Bits/dim on the 4-bit digits test split, except "
                 "NADE's (binarized digits).")
    return "\n".join(lines) + "\n"


def compare(config, workdir, mode="train"):
    """Train or load every family in config.families and write the table; returns the rows."""
    if mode != "train":
        raise ValueError("experiments.compare has only --mode=train (which also loads finished runs).")
    run.prepare_runs(config, workdir, [family_config(config, f) for f in config.families], mode)
    dataset = run.load_dataset(parse_run(config))
    extractor = sample_quality.make_extractor(config.eval.features, dataset)
    reference = sample_quality.reference_for(extractor, dataset, config.eval.reference, config.eval.batch_size)
    rows = []
    for family in config.families:
        logging.info("compare: %s", family)
        rows.append(measure_family(config, family, workdir, dataset, extractor, reference))
    if parallel.process_index() == 0:
        save_table(workdir, "compare", rows, markdown_table(rows, extractor, reference, config.eval.num_samples))
    return rows


if __name__ == "__main__":
    run.main(__file__, runner=compare)
