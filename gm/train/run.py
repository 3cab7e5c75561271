"""The command line every experiment shares: train, sample or evaluate the family its config names.

    python -m experiments.NAME --workdir=DIR [--config=experiments/NAME.py:smoke]
        [--config.a.b=value ...] [--mode=train|sample|eval] [--stage=NAME]

The config is checked and typed first (`gm.families.parse`: every bad value is one sentence), then the
family's stages run in order, each in its own folder (WORKDIR itself for a one-stage family), a later
stage made from the one before's trained parameters. `train` trains every stage (resuming from its
folder); `sample` writes config.sample.num samples from the last stage's newest EMA params to
samples/ as .npz and a PNG grid; `eval` reports config.eval.metrics of every trained stage and appends
them to metrics.jsonl and eval_step_N*.json. `--stage=NAME` does `mode` for that stage only (a later
stage still reads the trained stages before it).
"""
import json
import os
import sys
from typing import NamedTuple

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from gm import config as config_lib
from gm import data as gm_data
from gm import families, optim, parallel
from gm.checkpoint import Checkpointer
from gm.config import ParallelConfig, RunConfig
from gm.method import Method
from gm.train import evaluators as evaluators_lib
from gm.train import loop
from gm.train.logging import MetricWriter

MODES = ("train", "sample", "eval")
# Errors a person can fix from the command line: shown as their one sentence, not a traceback.
USER_ERRORS = (ValueError, gm_data.DataError, loop.NonFiniteLossError, FileNotFoundError, PermissionError)


def load_dataset(run: RunConfig):
    d = run.data
    return gm_data.load(d.name, data_dir=d.data_dir or None, manual_dir=d.manual_dir or None, context=d.context,
                        tokenizer=d.tokenizer)


def restore_latest(run: RunConfig, workdir: str, method: Method, dataset):
    """(global TrainState, step) of the newest checkpoint in WORKDIR/checkpoints; one sentence if none."""
    directory = os.path.join(workdir, "checkpoints")
    ckpt = Checkpointer(directory, read_only=True) if os.path.isdir(directory) else None
    if ckpt is None or ckpt.latest_step() is None:
        raise FileNotFoundError(f"No checkpoint in {directory}; train first with the same --workdir.")
    state, step = loop.init_or_restore(run, method, dataset, optim.make_optimizer(run.optim), ckpt)
    ckpt.close()
    return state, step


def translations_to_files(run: RunConfig, workdir: str, method: Method, dataset, params, step):
    """A translation family's --mode=sample: the first config.sample.num test rows (at most the split)
    through `Method.translate`, config.sample.batch_size at a time, as an .npz of `loop.TRANSLATION_ROWS`
    and a PNG grid of the first 32 rows; returns the .npz path."""
    test = dataset.test
    num = min(run.sample.num, len(test["label"]))
    chunk = min(run.sample.batch_size, num)
    translate = jax.jit(method.translate)
    key = jax.random.fold_in(loop.run_keys(run.seed)[2], 10**9 + step)
    rows = lambda i: {k: v[i:i + chunk] for k, v in test.items()}  # noqa: E731
    outs = [parallel.to_host(translate(params, jax.random.fold_in(key, i), rows(i)))
            for i in tqdm(range(0, num, chunk), desc="translate", disable=parallel.process_index() != 0)]
    arrays = {name: np.concatenate([np.asarray(o[name]) for o in outs]) for name in loop.TRANSLATION_ROWS}
    path = os.path.join(workdir, "samples", f"translations_step_{step}_n{num}.npz")
    if parallel.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez_compressed(path, num_bits=dataset.info.num_bits, domains=np.asarray(dataset.info.domains), **arrays)
        loop.save_translation_grid(path.replace(".npz", ".png"), {k: v[:32] for k, v in arrays.items()}, dataset.info)
    logging.info("Wrote %d test translations each way to %s", num, path)
    return path


def sample_to_files(run: RunConfig, workdir: str, method: Method, dataset):
    """Draw config.sample.num samples in chunks of config.sample.batch_size (a translation family:
    `translations_to_files`); returns the .npz path."""
    state, step = restore_latest(run, workdir, method, dataset)
    if method.sample is None:
        return translations_to_files(run, workdir, method, dataset, state.ema_params, step)
    num, chunk = run.sample.num, min(run.sample.batch_size, run.sample.num)
    sampler = parallel.jit_sampler(method.sample, chunk)
    key = jax.random.fold_in(loop.run_keys(run.seed)[2], 10**9 + step)  # apart from training grids
    chunks = [parallel.to_host(sampler(state.ema_params, jax.random.fold_in(key, i)))
              for i in tqdm(range(-(-num // chunk)), desc="sample", disable=parallel.process_index() != 0)]
    images = np.concatenate(chunks)[:num]
    out_dir = os.path.join(workdir, "samples")
    path = os.path.join(out_dir, f"samples_step_{step}_n{num}.npz")
    if parallel.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        extra = {"sample_rate": dataset.info.sample_rate} if dataset.info.is_audio else {}
        np.savez_compressed(path, levels=images, num_bits=dataset.info.num_bits, **extra)
        # Every clip of audio becomes a WAV file and every text a section of the .txt; a picture shows at
        # most 64 images.
        every = dataset.info.is_audio or dataset.info.is_text
        prompts = loop.sample_prompts(method, num, chunk)
        if prompts is not None:
            with open(path.replace(".npz", "_prompts.txt"), "w", encoding="utf-8") as f:
                f.writelines(f"{p}\n" for p in prompts)
        loop.write_samples(path.replace(".npz", ".png"), images if every else images[:64], dataset.info,
                           prompts if every or prompts is None else prompts[:64])
    logging.info("Wrote %d samples to %s", num, path)
    return path


def evaluate(run: RunConfig, workdir: str, method: Method, dataset, name: str = ""):
    """config.eval.metrics of the newest checkpoint's EMA params; returns {metric: result dict}.

    'bpd' writes eval_step_N.json, the others eval_step_N_METRIC.json; `name` labels a variant (e.g.
    'iwae5000') in the printout and the file names (eval_step_N_NAME.json). A family with
    `reconstruct` also gets a grid of test reconstructions."""
    evaluators = evaluators_lib.make_evaluators(run.eval, method, dataset)
    state, step = restore_latest(run, workdir, method, dataset)
    key = loop.run_keys(run.seed)[3]
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
    if method.reconstruct is not None:
        loop.write_reconstructions(workdir, method, state.ema_params, dataset, step, key)
    return results


def start_processes(config) -> None:
    """Start multi-process JAX when config.parallel asks for it: first of all, since JAX must be told
    before anything asks for its devices (checking a batch size against them does)."""
    p = config_lib.parse(ParallelConfig, config.get("parallel"), "config.parallel")
    parallel.initialize_distributed(p.distributed, p.coordinator_address, p.num_processes, p.process_id)


def check_workdir(workdir: str, mode: str = "train") -> None:
    """Check --mode and WORKDIR, and create WORKDIR."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}.")
    if not workdir:
        raise ValueError("--workdir is required: the folder for checkpoints, samples and metrics.")
    check_writable(workdir)


def prepare(run: RunConfig, workdir: str, mode: str = "train"):
    """Check --mode and WORKDIR, create WORKDIR; returns the dataset."""
    check_workdir(workdir, mode)
    return load_dataset(run)


def prepare_runs(config, workdir: str, run_configs, mode: str = "train") -> None:
    """For an experiment of several runs (the toys, a comparison): start the processes, check every
    run's config before any of them trains, then check WORKDIR."""
    start_processes(config)
    for run_config in run_configs:
        families.parse(run_config)
    check_workdir(workdir, mode)


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


def stage_dir(workdir: str, stage: families.Stage) -> str:
    return os.path.join(workdir, stage.name) if stage.name else workdir


class Restored(NamedTuple):
    """A trained stage read back: its setup, dataset, Method, newest global TrainState and step."""
    setup: families.Setup
    dataset: object
    method: Method
    state: object
    step: int


def _previous_params(setup, dataset, workdir, stage):
    """The trained (EMA) parameters of the stage before `stage`, from its newest checkpoint (None for
    the first stage); a stage before that is made from its own predecessor the same way."""
    stages = setup.family.stages
    index = stages.index(stage)
    if index == 0:
        return None
    before = stages[index - 1]
    method = before.make(setup.settings, dataset.info, _previous_params(setup, dataset, workdir, before))
    return restore_latest(setup.stage_run(before), stage_dir(workdir, before), method, dataset)[0].ema_params


def restore(config, workdir: str, stage: str = "", dataset=None) -> Restored:
    """The newest checkpoint of `stage` (default: the last) of the run `config` describes in WORKDIR,
    with everything needed to use it (a notebook, a meta-experiment scoring trained runs); `dataset`:
    the run's dataset when the caller has it loaded already."""
    start_processes(config)
    setup = families.parse(config)
    target = setup.stage(stage) if stage else setup.family.stages[-1]
    dataset = dataset or load_dataset(setup.run)
    method = target.make(setup.settings, dataset.info, _previous_params(setup, dataset, workdir, target))
    state, step = restore_latest(setup.stage_run(target), stage_dir(workdir, target), method, dataset)
    return Restored(setup, dataset, method, state, step)


def run(config, workdir: str, mode: str = "train", stage: str = "", eval_name: str = ""):
    """Check `config`, load its dataset and do `mode` in WORKDIR (see the module docstring).

    Returns the last trained stage's final state (train), the samples' .npz path (sample), or the
    evaluation results (eval): {metric: result}, by stage name for a family of several stages.
    `eval_name` labels an evaluation's files and printout (e.g. 'iwae5000').
    """
    start_processes(config)
    setup = families.parse(config)
    dataset = prepare(setup.run, workdir, mode)
    families.check_data(setup.family, dataset.info)
    stages = setup.family.stages
    chosen = [setup.stage(stage)] if stage else list(stages)
    if mode == "sample":
        chosen = chosen[-1:]  # the last stage's samples are the model's
    results, state, previous = {}, None, None
    for st in chosen:
        directory = stage_dir(workdir, st)
        if mode == "eval" and not stage and st is not stages[0] and not os.path.isdir(
                os.path.join(directory, "checkpoints")):
            logging.info("Stage %s has no checkpoint in %s; not evaluated.", st.name, directory)
            break
        if previous is None:
            previous = _previous_params(setup, dataset, workdir, st)
        run_cfg, method = setup.stage_run(st), st.make(setup.settings, dataset.info, previous)
        if mode == "sample":
            return sample_to_files(run_cfg, directory, method, dataset)
        if mode == "train":
            state = loop.train_and_evaluate(run_cfg, directory, method, dataset)
            previous = state.ema_params  # what the next stage is made from
            if st.name:
                logging.info("Stage %s done in %s", st.name, directory)
        else:
            results[st.name] = evaluate(run_cfg, directory, method, dataset, eval_name)
            previous = None  # the next stage reads this one's checkpoint
    if mode == "train":
        return state
    return results[""] if len(stages) == 1 else results


def define_flags(experiment_file, flag_values=flags.FLAGS) -> None:
    """The flags every experiment takes: --config (default `experiment_file`; None: required),
    --config.a.b=value, --workdir, --mode and --stage."""
    config_flags.DEFINE_config_file("config", experiment_file, "Experiment config file[:variant].",
                                    flag_values=flag_values, lock_config=True)
    if experiment_file is None:  # a command that runs on another experiment's config
        flags.mark_flag_as_required("config", flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "Folder for checkpoints/, samples/, metrics.jsonl, TensorBoard.",
                        flag_values=flag_values)
    flags.DEFINE_enum("mode", "train", MODES, "train, sample (from the newest checkpoint) or eval.",
                      flag_values=flag_values)
    flags.DEFINE_string("stage", "", "For families of several stages: do --mode for this stage only.",
                        flag_values=flag_values)


def main(experiment_file, runner=None):
    """Entry point for `python -m experiments.NAME`: flags, then `runner(config, workdir, mode)` (default
    `run`, with --stage), errors as one sentence. experiment_file None: --config is required."""
    define_flags(experiment_file)
    def _main(argv):
        del argv
        logging.set_verbosity(logging.INFO)
        # Libraries (Orbax: every phase of every save) log a lot at INFO; show only gm's and the experiments'.
        logging.get_absl_handler().addFilter(
            lambda r: r.levelno >= logging.converter.STANDARD_WARNING
            or any(f"{os.sep}{d}{os.sep}" in r.pathname for d in ("gm", "experiments")))
        f = flags.FLAGS
        try:
            if runner is None:
                run(f.config, f.workdir, f.mode, stage=f.stage)
            else:
                runner(f.config, f.workdir, f.mode)
        except loop.Preempted as e:  # a clean stop: the checkpoint is saved
            logging.warning("%s", e)
        except USER_ERRORS as e:
            if os.environ.get("GM_DEBUG"):
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    app.run(_main)
