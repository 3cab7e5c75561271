"""What every benchmark shares: the machine, timing, peak memory, the trainer's step and a model's sampler.

Timings follow one protocol: compile (and the first call) timed on its own, then the median of
`repeats` timed windows, each ending in `jax.block_until_ready`. Peak memory is the device's
`peak_bytes_in_use` where the backend reports it (GPUs) and the process's max RSS otherwise (CPU).
Every result is one JSON object, printed and appended as one line to benchmarks/results.jsonl.
"""
import json
import os
import platform
import resource
import statistics
import time

import jax
import numpy as np

from gm import data as gm_data
from gm import optim, parallel, tokenize
from gm.config import OptimConfig
from gm.train import state as state_lib

RESULTS = os.path.join(os.path.dirname(__file__), "results.jsonl")

# The shapes of the datasets the paper-size configs train on, without loading (or downloading) them.
_INFOS = {
    "cifar10": gm_data.DatasetInfo(name="cifar10", shape=(32, 32, 3), num_bits=8, num_classes=10,
                                   num_train=50_000, num_test=10_000),
    "mnist": gm_data.DatasetInfo(name="mnist", shape=(28, 28, 1), num_bits=8, num_classes=10,
                                 num_train=60_000, num_test=10_000),
    # WaveGAN's SC09 training split; its test size is not needed for timing (0: not stated here).
    "sc09": gm_data.DatasetInfo(name="sc09", shape=(16000,), num_bits=16, num_classes=10, num_train=18_620,
                                num_test=0, sample_rate=16_000),
    # TFDS cycle_gan/horse2zebra: 1,067 horses and 1,334 zebras to train (rows: the larger), 120 and 140 to test.
    "cycle_gan/horse2zebra": gm_data.DatasetInfo(name="cycle_gan/horse2zebra", shape=(256, 256, 3), num_bits=8,
                                                 num_classes=1, num_train=1_334, num_test=140,
                                                 domains=("horse", "zebra")),
}


def dataset_info(name, context=256, tokenizer="bytes"):
    """DatasetInfo of `name`: the bundled digits, notes and pydoc are loaded (no download; text as windows
    of `context` tokens of `tokenizer`), MNIST, CIFAR-10, SC09 and Tiny Shakespeare (bytes) are described
    from their known shapes, so a benchmark needs no data."""
    if name in _INFOS:
        return _INFOS[name]
    if name == "tiny_shakespeare":
        if tokenizer != "bytes":
            raise ValueError("No benchmark shape for tiny_shakespeare with config.data.tokenizer="
                             f"{tokenizer!r}; benchmark it with 'bytes' (the same network cost per token).")
        # TFDS's splits: 1,003,854 training and 55,770 validation characters, as windows.
        return gm_data.DatasetInfo(name=name, shape=(context,), num_bits=None, num_classes=1,
                                   num_train=1_003_854 - context + 1, num_test=55_770 // context, vocab_size=256,
                                   bytes_per_token=1.0, tokenizer=tokenize.ByteTokenizer())
    if name in ("digits", "notes", "pydoc", "digit_strokes"):
        return gm_data.load(name, context=context, tokenizer=tokenizer).info
    raise ValueError(f"No benchmark shape for config.data.name {name!r}; use one of "
                     f"{('digits', 'notes', 'pydoc', 'digit_strokes', 'tiny_shakespeare') + tuple(_INFOS)}.")


def fake_cifar_info():
    return _INFOS["cifar10"]


def random_batch(info, batch_size, seed=0):
    """{'image': uint8 [B, H, W, C] uniform over the info's levels, 'label': int32 [B]} (two domains:
    'image_a' and 'image_b'); for audio
    {'audio': int16 [B, T] (Gaussian, a tenth of full scale), 'label'}; for text {'tokens': int32 [B, T]
    uniform over the vocabulary, 'label'}."""
    rng = np.random.default_rng(seed)
    if info.is_text:
        return {"tokens": rng.integers(0, info.vocab_size, (batch_size,) + tuple(info.shape), dtype=np.int32),
                "label": np.zeros((batch_size,), np.int32)}
    if info.is_audio:
        audio = np.clip(rng.normal(0.0, 3277.0, (batch_size,) + tuple(info.shape)), -32768, 32767)
        return {"audio": audio.astype(np.int16),
                "label": rng.integers(0, info.num_classes, (batch_size,), dtype=np.int32)}
    images = lambda: rng.integers(0, info.num_levels, (batch_size,) + tuple(info.shape), dtype=np.uint8)  # noqa: E731
    labels = rng.integers(0, info.num_classes, (batch_size,), dtype=np.int32)
    if info.domains is not None:
        return {"image_a": images(), "image_b": images(), "label": labels}
    return {"image": images(), "label": labels}


def machine_description():
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def devices_description():
    return f"{jax.device_count()} x {jax.devices()[0].device_kind}"


def peak_memory_bytes():
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


def environment():
    """The fields every result row starts with: machine, devices, JAX version."""
    return {"machine": machine_description(), "devices": devices_description(), "jax": jax.__version__}


def peak_memory():
    peak, kind = peak_memory_bytes()
    return {"peak_memory_gb": round(peak / 2 ** 30, 2), "peak_memory_kind": kind}


def record(result, out=RESULTS, indent=None):
    """Print one benchmark result as JSON and append it as one line to `out` (results.jsonl)."""
    print(json.dumps(result, indent=indent), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")


def timed(fn, *args):
    """(fn(*args) once it is ready, seconds)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def timed_twice(fn, *args):
    """(output, compile + first call seconds, second call seconds)."""
    _, first_s = timed(fn, *args)
    out, second_s = timed(fn, *args)
    return out, first_s, second_s


def num_params(tree):
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def measure_train_step(optim_config: OptimConfig, method, batch, steps, repeats, strategy_name="sharded",
                       steps_per_call=1, micro_batches=1):
    """Compile and time the trainer's own train step of `method` on `batch` (a host batch dict).

    The step is `gm.train.state.step_function` (the family's `training` or one optimizer step on its
    loss, the optimizer `optim_config` describes), `steps_per_call` steps per compiled call, each step's
    gradient accumulated over `micro_batches` slices of the batch, the state donated, under `strategy_name`.

    Returns (stats, device state after the run, strategy). stats: params, batch_size, train_compile_s
    (lower + compile + the first call), train_images_per_s (batch images per second, the median over
    `repeats` windows of `steps` calls) and each window's, and under 'sharded' XLA's memory analysis
    of the compiled step (argument, output and temporary MB) and its FLOP count per image.
    """
    batch_size = len(batch["label"])
    parallel.check_batch_size(batch_size, "--batch_size")
    optimizer = optim.make_optimizer(optim_config)
    training = state_lib.training_of(method)
    state = state_lib.run_once(
        lambda b: state_lib.init_state(method.init(jax.random.key(0), b), training, optimizer), batch)
    strategy = parallel.make_strategy(strategy_name)
    stacked = steps_per_call > 1
    parallel.check_micro_batches(batch_size, micro_batches, "--set train.micro_batches", "--batch_size")
    step_fn = state_lib.step_function(method, optimizer, optim_config.ema_decay, micro_batches)
    step = strategy.compile_step(step_fn, stacked=stacked)
    device_state = strategy.put_state(parallel.replicate(state))
    host_batch = {k: np.stack([v] * steps_per_call) for k, v in batch.items()} if stacked else batch
    device_batch = strategy.put_batch(host_batch, stacked=stacked)
    key = jax.random.key(1)
    start = time.perf_counter()
    memory = {}
    if strategy_name == "sharded":
        step = step.lower(device_state, device_batch, key).compile()
        analysis = step.memory_analysis()
        memory = {f"xla_{k}_mb": round(getattr(analysis, f"{k}_size_in_bytes") / 2 ** 20, 1)
                  for k in ("argument", "output", "temp")}
        # XLA's count for one device's share of the batch; the batch is split evenly over all of them.
        flops = (step.cost_analysis() or {}).get("flops")
        if flops:
            memory["xla_gflop_per_image"] = round(flops * jax.device_count() / (batch_size * steps_per_call) / 1e9, 3)
    device_state, _ = jax.block_until_ready(step(device_state, device_batch, key))
    compile_s = time.perf_counter() - start

    windows = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            device_state, _ = step(device_state, device_batch, key)
        jax.block_until_ready(device_state)
        windows.append(steps * steps_per_call * batch_size / (time.perf_counter() - start))
    stats = {"params": num_params(state.params), "batch_size": batch_size, "steps_per_call": steps_per_call,
             "train_compile_s": round(compile_s, 1), "train_images_per_s": round(statistics.median(windows), 2),
             "train_images_per_s_windows": [round(w, 2) for w in windows], **memory}
    return stats, device_state, strategy


def measure_sampler(method, params, num, repeats, info=None):
    """Compile and time `method.sample(params, key, num)` as the trainer runs it (`parallel.jit_sampler`);
    for a translation family (`info` needed), `method.translate` of num random images of each domain,
    where an image is one translation.

    Returns stats: sample_compile_s (compile + the first call), sample_images_per_s (median over
    `repeats` calls, each with a new key) and each call's.
    """
    if method.sample is None:
        batch = random_batch(info, num)
        translate = jax.jit(method.translate)
        sampler = lambda params, key: translate(params, key, batch)["fake_a"]  # noqa: E731
    else:
        sampler = parallel.jit_sampler(method.sample, num)
    images, compile_s = timed(sampler, params, jax.random.key(2))
    if images.shape[0] != num:
        raise AssertionError(f"the sampler returned {images.shape[0]} images for num={num}")
    rates = [num / timed(sampler, params, jax.random.key(3 + i))[1] for i in range(repeats)]
    return {"num_samples": num, "sample_compile_s": round(compile_s, 1),
            "sample_images_per_s": round(statistics.median(rates), 3),
            "sample_images_per_s_runs": [round(r, 3) for r in rates]}
