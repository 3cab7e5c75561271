"""The one training loop: any Method, any strategy, resumable, with logging, samples and checkpoints.

    state = train_and_evaluate(run, workdir, method, dataset)

`run` is the typed `gm.config.RunConfig`: seed, train (batch_size, num_steps, the periods,
keep_checkpoints, on_nonfinite, steps_per_call: K > 1 runs K steps per compiled call in one `lax.scan`,
with the same result), optim (`gm.optim.make_optimizer`, plus ema_decay), eval.every and eval.metrics
(in-training evaluation from the EMA params, `gm.train.evaluators`), data.random_flip and
parallel.strategy. WORKDIR gets checkpoints/, samples/step_*.png, metrics.jsonl and TensorBoard
events. Running again with the same WORKDIR resumes from the newest checkpoint and continues exactly as
an uninterrupted run would: batch s is a pure function of (seed, s), and the step's key is fold_in(key, s).
"""
import contextlib
import os
import signal
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from gm import data as gm_data
from gm import distributions as dist
from gm import optim, parallel
from gm.checkpoint import CheckpointMismatchError, Checkpointer
from gm.config import RunConfig
from gm.method import Method
from gm.train import evaluators as evaluators_lib
from gm.train import state as state_lib
from gm.train.logging import (MetricWriter, save_audio_samples, save_captioned_grid, save_image_grid, save_scatter,
                              save_text_samples)


class Preempted(Exception):
    """Raised once a SIGTERM's checkpoint is saved: nothing after this run may go on (a later stage, the
    next run of a sweep, scoring a half-trained model); running the same command again resumes."""


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN/inf and config.train.on_nonfinite='stop'."""


def run_keys(seed):
    """The run's base keys from config.seed: (init, train, sample, eval)."""
    return jax.random.split(jax.random.key(seed), 4)


def _steps_until_event(step, k, num_steps, periods):
    """How many steps the next call runs: up to k, never past the next log / checkpoint / sample /
    evaluation step or the end, so every event sees exactly its step."""
    n = min(k, num_steps - step)
    for p in periods:
        n = min(n, p - step % p)
    return n


def _local_batches(run, dataset, step, n):
    """Batches step .. step + n - 1 stacked [n, B / processes, ...] for one call of n steps."""
    batches = [_local_batch(run, dataset, s) for s in range(step, step + n)]
    return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


def _local_batch(run, dataset, step):
    return gm_data.train_batch(
        dataset, step=step, batch_size=run.train.batch_size, seed=run.seed,
        process_index=parallel.process_index(), process_count=parallel.process_count(),
        random_flip=run.data.random_flip)


# The checkpoint layout this version writes: 2 since a family's state that no gradient trains moved
# from the parameters to TrainState.extra (the VQ-VAE's codebook statistics). Layout-1 checkpoints of
# every other family have the same arrays and restore unchanged.
LAYOUT = 2


def _run_meta(run, step):
    """What a checkpoint records besides arrays: the data position and what it depends on."""
    return {"data_step": int(step), "seed": int(run.seed), "batch_size": int(run.train.batch_size),
            "dataset": str(run.data.name), "layout": LAYOUT}


def _check_resume_meta(meta, run, directory):
    expected = _run_meta(run, meta.get("data_step", 0))
    for field, name in (("seed", "config.seed"), ("batch_size", "config.train.batch_size"),
                        ("dataset", "config.data.name")):
        if field in meta and meta[field] != expected[field]:
            raise ValueError(f"The checkpoint in {directory} was written with {name}={meta[field]!r}, "
                             f"not {expected[field]!r}; use that value to resume or start a new --workdir.")


def init_or_restore(run: RunConfig, method: Method, dataset, optimizer, ckpt):
    """(global TrainState, start step): the newest intact checkpoint in `ckpt` if any, else a fresh init.

    A corrupted newest checkpoint is named in a warning and the previous one is used (see
    `Checkpointer.restore_newest_good`); a checkpoint of another model stops with one sentence.
    """
    init_key = run_keys(run.seed)[0]
    example = _local_batch(run, dataset, 0)
    training = state_lib.training_of(method)
    make = lambda: state_lib.init_state(method.init(init_key, example), training, optimizer)  # noqa: E731
    if ckpt is None or ckpt.latest_step() is None:
        return parallel.replicate(state_lib.run_once(make)), 0
    rep = parallel.replicated_sharding()
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), jax.eval_shape(make))
    try:
        restored = ckpt.restore_newest_good(target)
    except CheckpointMismatchError as e:
        if ckpt.newest_meta().get("layout", 1) < LAYOUT:
            raise ValueError(f"The checkpoint in {ckpt.directory} was written by an older gm whose layout "
                             f"({LAYOUT - 1}) kept a family's non-gradient state among the parameters (it {e}); "
                             f"this version cannot resume it: train again in a new --workdir.") from None
        raise ValueError(f"The checkpoint in {ckpt.directory} was written by another model: it {e}; resume with "
                         f"the config it was written with (config.model and the family's fields; one written before "
                         f"repeated blocks were scanned needs the network's scan=False) or use a new "
                         f"--workdir.") from None
    if restored is None:
        return parallel.replicate(state_lib.run_once(make)), 0
    state, meta, step = restored
    _check_resume_meta(meta, run, ckpt.directory)
    logging.info("Restored step %d from %s", step, ckpt.directory)
    return state, int(meta.get("data_step", step))


class _SigtermFlag:
    """Sets `.raised` on SIGTERM (a pre-empted job) so the loop can save before exiting."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _summarize(pending, on_nonfinite, ckpt_dir):
    """Mean of the buffered metrics, (first step, metrics of one step or stacked over several) each;
    raise on a non-finite step when the policy says stop."""
    steps, chunks = [], []
    for first, metrics in pending:
        values = parallel.host_vectors(metrics)
        steps += range(first, first + len(values["finite"]))
        chunks.append(values)
    merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    bad = [s for s, finite in zip(steps, merged["finite"]) if finite < 1]
    if bad and on_nonfinite == "stop":
        raise NonFiniteLossError(
            f"The loss became non-finite at step {bad[0]} (config.train.on_nonfinite='stop'); the last good "
            f"checkpoint is kept in {ckpt_dir}. Lower config.optim.learning_rate or set "
            f"config.train.on_nonfinite='skip' to skip such updates.")
    return {k: float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan") for k, v in merged.items()}


def write_samples(path, samples, info, prompts=None):
    """A model's samples as files for people, by the data `info` describes (`gm.data.DatasetInfo`): uint8
    levels [N, H, W, C] -> a PNG grid at `path` (with `prompts`, the text each image was drawn for: a row
    per prompt, labelled, and the prompts in PATH.txt); 2-D points [N, 2] -> a scatter plot; int16 PCM
    clips [N, T] -> WAV files beside `path` and a waveform / spectrogram PNG at `path`; text tokens
    [N, T] -> their decoded texts in PATH.txt. Returns the picture, or the list of texts."""
    if info.is_text:
        return save_text_samples(os.path.splitext(path)[0] + ".txt", samples, info.tokenizer)
    if info.is_audio:
        return save_audio_samples(path, samples, info.sample_rate)
    if info.num_bits is None:
        return save_scatter(path, samples)
    pixels = np.asarray(dist.levels_to_uint8_pixels(samples, info.num_bits))
    if prompts is not None:
        return save_captioned_grid(path, pixels, list(prompts)[:len(pixels)])
    return save_image_grid(path, pixels)


def sample_prompts(method: Method, num: int, chunk: int):
    """The prompt of each of `num` samples drawn `chunk` at a time (`Method.sample_prompts`), or None."""
    if method.sample_prompts is None:
        return None
    return [p for _ in range(-(-num // chunk)) for p in method.sample_prompts(chunk)][:num]


def interleaved_rows(arrays, ncol=8):
    """Arrays [N, H, W, C] of the same N images (e.g. originals and their reconstructions) interleaved in
    rows of `ncol`: the first array's row, the others' rows of the same images underneath, then the
    next `ncol` images."""
    arrays = [np.asarray(a) for a in arrays]
    rows = [a[i:i + ncol] for i in range(0, len(arrays[0]), ncol) for a in arrays]
    return np.concatenate(rows)


def reconstruction_grid(originals, reconstructions, ncol=8):
    """Originals and their reconstructions [N, H, W, C] interleaved in rows of `ncol`: originals, then
    their reconstructions underneath."""
    return interleaved_rows([originals, reconstructions], ncol)


# The rows of a translation grid: A, A -> B, back to A; B, B -> A, back to B (`gm.method.TranslateFn`).
TRANSLATION_ROWS = ("image_a", "fake_b", "cycle_a", "image_b", "fake_a", "cycle_b")


def save_translation_grid(path, translations, info):
    """Translations (`gm.method.TranslateFn`'s arrays of N images) as a PNG grid at `path`: for each 8
    images, a row of each of TRANSLATION_ROWS; returns the picture (uint8 pixels)."""
    grid = interleaved_rows([translations[name] for name in TRANSLATION_ROWS])
    return save_image_grid(path, np.asarray(dist.levels_to_uint8_pixels(grid, info.num_bits)), 8)


def write_reconstructions(workdir, method, params, dataset, step, key, num=32):
    """The first `num` test images as the model sees them, above their reconstructions
    (`Method.reconstruct` with `key`), as WORKDIR/samples/reconstructions_step_N.png; returns its path."""
    batch = {k: v[:num] for k, v in dataset.test.items()}
    out = parallel.to_host(jax.jit(method.reconstruct)(params, key, batch))
    path = os.path.join(workdir, "samples", f"reconstructions_step_{step:08d}.png")
    if parallel.process_index() == 0:
        grid = reconstruction_grid(out["data"], out["reconstruction"])
        save_image_grid(path, np.asarray(dist.levels_to_uint8_pixels(grid, dataset.info.num_bits)), 8)
        logging.info("Wrote test reconstructions to %s", path)
    return path


def train_and_evaluate(run: RunConfig, workdir: str, method: Method, dataset):
    """Train `method` on `dataset` as `run` says, resuming from WORKDIR; returns the final global state.

    At the end, a family with `reconstruct` also gets a grid of test reconstructions (`write_reconstructions`).
    """
    t = run.train
    strategy = parallel.make_strategy(run.parallel.strategy)
    optimizer = optim.make_optimizer(run.optim)
    _, train_key, sample_key, eval_key = run_keys(run.seed)
    is_main = parallel.process_index() == 0
    # Built before the first step and before anything is written: a missing weights file stops the run now.
    eval_every = run.eval.every
    evaluators = evaluators_lib.make_evaluators(run.eval, method, dataset) if eval_every else []
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=t.checkpoint_every,
                        keep=t.keep_checkpoints)
    state, start = init_or_restore(run, method, dataset, optimizer, ckpt)
    step_fn = state_lib.step_function(method, optimizer, run.optim.ema_decay, t.micro_batches)
    steps_per_call = t.steps_per_call
    train_step = strategy.compile_step(step_fn, stacked=steps_per_call > 1)
    if method.sample is not None:
        sampler = parallel.jit_sampler(method.sample, t.num_samples)
    else:
        translator = jax.jit(method.translate)
    periods = [t.log_every, t.checkpoint_every, t.sample_every] + ([eval_every] if eval_every else [])
    writer = MetricWriter(workdir, enabled=is_main, resume_step=start)
    device_state = strategy.put_state(state)
    pending, window_start, window_time = [], start, time.perf_counter()

    last_saved = start

    def checkpoint(step, force=False):
        nonlocal last_saved
        if ckpt.save(step, strategy.get_state(device_state), _run_meta(run, step), force=force):
            last_saved = step

    def write_grid(step):
        ema = strategy.get_state(device_state).ema_params
        path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
        if method.sample is None:  # a translation family: the first test images of both domains, translated
            batch = {k: v[:t.num_samples] for k, v in dataset.test.items()}
            out = parallel.to_host(translator(ema, jax.random.fold_in(sample_key, step), batch))
            if is_main:
                writer.write_images(step, "translations", save_translation_grid(path, out, dataset.info))
            return
        images = parallel.to_host(sampler(ema, jax.random.fold_in(sample_key, step)))
        if is_main:
            grid = write_samples(path, images, dataset.info, sample_prompts(method, len(images), len(images)))
            if dataset.info.is_text:
                writer.write_texts(step, "samples", grid)
            else:
                writer.write_images(step, "samples", grid)
            if dataset.info.is_audio:
                writer.write_audio(step, "samples", images, dataset.info.sample_rate)

    def evaluate(step):
        nonlocal window_time
        start_time = time.perf_counter()
        ema = strategy.get_state(device_state).ema_params
        for ev in evaluators:
            result = ev.fn(ema, jax.random.fold_in(eval_key, step))
            writer.write_scalars(step, evaluators_lib.scalars(ev.name, result))
            if is_main:
                logging.info("step %d: %s", step, evaluators_lib.summary(ev.name, result))
        window_time += time.perf_counter() - start_time  # keep images_per_sec a training speed

    def flush(step):
        nonlocal pending, window_start, window_time
        if not pending:
            return
        scalars = _summarize(pending, t.on_nonfinite, ckpt.directory)
        elapsed = time.perf_counter() - window_time
        scalars["images_per_sec"] = (step - window_start) * t.batch_size / max(elapsed, 1e-9)
        scalars["num_nonfinite"] = parallel.host_scalars(device_state.num_nonfinite)
        writer.write_scalars(step, scalars)
        bar.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f"{scalars['images_per_sec']:.0f}")
        pending, window_start, window_time = [], step, time.perf_counter()

    bar = tqdm(total=t.num_steps, initial=start, disable=not is_main, desc="train", mininterval=2.0)
    step = start
    try:
        with _SigtermFlag() as sigterm:
            while step < t.num_steps:
                if steps_per_call == 1:
                    n, batch = 1, strategy.put_batch(_local_batch(run, dataset, step))
                else:
                    n = _steps_until_event(step, steps_per_call, t.num_steps, periods)
                    batch = strategy.put_batch(_local_batches(run, dataset, step, n), stacked=True)
                device_state, metrics = train_step(device_state, batch, train_key)
                pending.append((step, metrics))
                step += n
                bar.update(n)
                if step % t.log_every == 0 or step % t.checkpoint_every == 0 or step == t.num_steps:
                    flush(step)
                if step % t.checkpoint_every == 0:
                    checkpoint(step)
                if step % t.sample_every == 0 or step == t.num_steps:
                    write_grid(step)
                if eval_every and step % eval_every == 0:
                    evaluate(step)
                if sigterm.raised:
                    logging.warning("SIGTERM: saving step %d and exiting.", step)
                    flush(step)
                    break
        if last_saved != step or ckpt.latest_step() is None:
            checkpoint(step, force=True)
        if step < t.num_steps:  # only a SIGTERM leaves the loop early
            raise Preempted(f"Stopped by SIGTERM at step {step} of {t.num_steps}; the checkpoint is saved in "
                            f"{ckpt.directory}: run the same command again to resume.")
    finally:
        # Also on an error: let a save in flight commit, so the last good checkpoint is complete.
        bar.close()
        ckpt.close()
        writer.close()
    state = strategy.get_state(device_state)
    if method.reconstruct is not None:
        write_reconstructions(workdir, method, state.ema_params, dataset, step, eval_key)
    return state
