"""The command line every experiment shares: train, sample or evaluate one Method.

    python -m experiments.NAME --workdir=DIR [--config=experiments/NAME.py:smoke]
        [--config.a.b=value ...] [--mode=train|sample|eval]

`train` trains (resuming from DIR); `sample` writes config.sample.num samples from the newest
checkpoint's EMA params to DIR/samples/ as .npz and a PNG grid; `eval` reports test bits/dim through
`gm.metrics.evaluate_log_prob` and appends it to DIR/metrics.jsonl and DIR/eval_step_N.json.
"""
import json
import os
import sys

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from gm import data as gm_data
from gm import parallel
from gm.checkpoint import Checkpointer
from gm.train import evaluators as evaluators_lib
from gm.train import loop
from gm.train import state as state_lib
from gm.train.logging import MetricWriter

MODES = ("train", "sample", "eval")
# Errors a person can fix from the command line: shown as their one sentence, not a traceback.
USER_ERRORS = (ValueError, gm_data.DataError, loop.NonFiniteLossError, FileNotFoundError, PermissionError)


def load_dataset(config):
    return gm_data.load(config.data.name, data_dir=config.data.get("data_dir") or None,
                        manual_dir=config.data.get("manual_dir") or None)


def restore_latest(config, workdir, method, dataset):
    """(global TrainState, step) of the newest checkpoint in WORKDIR/checkpoints; one sentence if none."""
    directory = os.path.join(workdir, "checkpoints")
    ckpt = Checkpointer(directory, read_only=True) if os.path.isdir(directory) else None
    if ckpt is None or ckpt.latest_step() is None:
        raise FileNotFoundError(f"No checkpoint in {directory}; train first with the same --workdir.")
    optimizer = method.optimizer or state_lib.optimizer_from_config(config.optim)
    state, step = loop.init_or_restore(config, method, dataset, optimizer, ckpt)
    ckpt.close()
    return state, step


def sample_to_files(config, workdir, method, dataset):
    """Draw config.sample.num samples in chunks of config.sample.batch_size; returns the .npz path."""
    state, step = restore_latest(config, workdir, method, dataset)
    num, chunk = config.sample.num, min(config.sample.batch_size, config.sample.num)
    if num <= 0 or chunk <= 0:
        raise ValueError("config.sample.num and config.sample.batch_size must be positive.")
    sampler = parallel.jit_sampler(method.sample, chunk)
    key = jax.random.fold_in(loop.run_keys(config.seed)[2], 10**9 + step)  # apart from training grids
    chunks = [parallel.to_host(sampler(state.ema_params, jax.random.fold_in(key, i)))
              for i in tqdm(range(-(-num // chunk)), desc="sample", disable=parallel.process_index() != 0)]
    images = np.concatenate(chunks)[:num]
    out_dir = os.path.join(workdir, "samples")
    path = os.path.join(out_dir, f"samples_step_{step}_n{num}.npz")
    if parallel.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        np.savez_compressed(path, levels=images, num_bits=dataset.info.num_bits)
        loop.write_samples(path.replace(".npz", ".png"), images[:64], dataset.info.num_bits)
    logging.info("Wrote %d samples to %s", num, path)
    return path


def evaluate(config, workdir, method, dataset, name=""):
    """config.eval.metrics of the newest checkpoint's EMA params; returns {metric: result dict}.

    'bpd' writes eval_step_N.json, 'fid' eval_step_N_fid.json; `name` labels a variant (e.g.
    'iwae5000') in the printout and the file names (eval_step_N_NAME.json)."""
    metrics = tuple(config.eval.get("metrics", ("bpd",)))
    if "bpd" in metrics and method.log_prob is None:
        metrics = tuple(m for m in metrics if m != "bpd")
        if not metrics:
            raise ValueError("This model has no log_prob; set --config.eval.metrics='(\"fid\",)' to evaluate "
                             "its samples.")
    evaluators = evaluators_lib.make_evaluators(config, method, dataset, metrics)
    state, step = restore_latest(config, workdir, method, dataset)
    key = loop.run_keys(config.seed)[3]
    results = {}
    writer = MetricWriter(workdir, enabled=parallel.process_index() == 0)
    for ev in evaluators:
        result = dict(ev.fn(state.ema_params, key), step=step)
        suffix = "".join(f"_{s}" for s in (name, "" if ev.name == "bpd" else ev.name) if s)
        if parallel.process_index() == 0:
            with open(os.path.join(workdir, f"eval_step_{step}{suffix}.json"), "w") as f:
                json.dump(result, f, indent=2)
            writer.write_scalars(step, {k + suffix: v for k, v in evaluators_lib.scalars(ev.name, result).items()})
        print(f"step {step}: {evaluators_lib.summary(ev.name, result, name)}")
        results[ev.name] = result
    writer.close()
    return results


def prepare(config, workdir, mode="train"):
    """Check mode and WORKDIR, start multi-host JAX if configured, create WORKDIR; returns the dataset."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}.")
    if not workdir:
        raise ValueError("--workdir is required: the folder for checkpoints, samples and metrics.")
    p = config.parallel
    parallel.initialize_distributed(p.get("distributed", False), p.get("coordinator_address", ""),
                                    p.get("num_processes", -1), p.get("process_id", -1))
    check_writable(workdir)
    return load_dataset(config)


def check_writable(workdir):
    """Create WORKDIR and write a file into it, so an unwritable one stops a run before it trains
    (`os.access` alone says yes to root on a read-only mount)."""
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"--workdir={workdir} is not writable ({e.strerror or e}); choose a folder you can "
                              f"write to.") from None


def run(config, workdir, make_method, mode="train"):
    """Build the dataset and Method from `config` and do `mode` in WORKDIR."""
    dataset = prepare(config, workdir, mode)
    method = make_method(config, dataset.info)
    if mode == "train":
        return loop.train_and_evaluate(config, workdir, method, dataset)
    if mode == "sample":
        return sample_to_files(config, workdir, method, dataset)
    return evaluate(config, workdir, method, dataset)


def main(experiment_file, make_method, runner=None):
    """Entry point for `python -m experiments.NAME`: flags, then `runner` (default `run`) with
    (config, workdir, make_method, mode), errors as one sentence."""
    runner = runner or run
    config_flags.DEFINE_config_file("config", experiment_file, "Experiment config file[:variant].",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Folder for checkpoints/, samples/, metrics.jsonl, TensorBoard.")
    flags.DEFINE_enum("mode", "train", MODES, "train, sample (from the newest checkpoint) or eval.")

    def _main(argv):
        del argv
        logging.set_verbosity(logging.INFO)
        # Libraries (Orbax: every phase of every save) log a lot at INFO; show only gm's and the experiments'.
        logging.get_absl_handler().addFilter(
            lambda r: r.levelno >= logging.converter.STANDARD_WARNING
            or any(f"{os.sep}{d}{os.sep}" in r.pathname for d in ("gm", "experiments")))
        try:
            runner(flags.FLAGS.config, flags.FLAGS.workdir, make_method, flags.FLAGS.mode)
        except USER_ERRORS as e:
            if os.environ.get("GM_DEBUG"):
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    app.run(_main)
