"""Throughput, compile time and peak memory of the paper's DDPM UNet (35.7M parameters, 32x32x3).

    python -m benchmarks.ddpm --batch_size=128 --dtype=bfloat16          # a GPU
    python -m benchmarks.ddpm --batch_size=8 --steps=3 --sample_steps=4  # a CPU

Measures, on whatever devices JAX sees, with the trainer's real train step (Adam, clipping, EMA,
non-finite guard, state donated) under the chosen strategy, `--steps_per_call` steps per compiled call:
  - compile time of the train step (lower + compile) and of one sampling chain,
  - XLA's memory analysis of the compiled step (arguments, outputs, temporaries),
  - train images/s: the median over `--repeats` timed windows of `--steps` steps, after a warm-up,
  - sampling images/s for one network evaluation per image, and for a full T=1000 ancestral chain,
  - peak memory: the device's peak_bytes_in_use where reported (GPU), else the process's max RSS.
Prints one JSON object and appends it to benchmarks/results.jsonl; RESULTS.md records them by machine.
"""
import argparse
import functools
import json
import os
import platform
import resource
import statistics
import time

import jax
import numpy as np

from experiments import ddpm_cifar
from gm import data as gm_data
from gm import diffusion, parallel
from gm.train import state as state_lib


def fake_cifar_info():
    return gm_data.DatasetInfo(name="cifar10", shape=(32, 32, 3), num_bits=8, num_classes=10,
                               num_train=50_000, num_test=10_000)


def machine_description():
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def peak_memory_bytes():
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


def record(result, out, indent=None):
    """Print one benchmark result as JSON and append it as one line to `out` (results.jsonl)."""
    print(json.dumps(result, indent=indent))
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")


def timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def paper_unet(dtype="float32"):
    """(config, Method) of the paper's CIFAR-10 DDPM with compute dtype `dtype`."""
    config = ddpm_cifar.get_config()
    config.model.dtype = dtype
    return config, diffusion.make(config, fake_cifar_info())


def random_cifar_batch(batch_size, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, (batch_size,), dtype=np.int32)}


def measure_train_step(config, method, batch_size, steps, repeats, strategy_name="sharded", steps_per_call=1):
    """Compile and time the trainer's real train step (`steps_per_call` steps per compiled call).

    Returns (stats dict, device state after the run, strategy): compile time (lower + compile, and the
    first call), images/s as the median over `repeats` windows of `steps` calls, and XLA's compiled
    memory analysis (argument, output and temporary bytes) of the step."""
    parallel.check_batch_size(batch_size, "--batch_size")
    batch = random_cifar_batch(batch_size)
    optimizer = state_lib.optimizer_from_config(config.optim)
    state = jax.jit(lambda: state_lib.init_state(method.init(jax.random.key(0), batch), optimizer))()
    strategy = parallel.make_strategy(strategy_name)
    stacked = steps_per_call > 1
    step = strategy.compile_step(functools.partial(state_lib.train_step, loss_fn=method.loss, optimizer=optimizer,
                                                   ema_decay=config.optim.ema_decay), stacked=stacked)
    device_state = strategy.put_state(parallel.replicate(state))
    host_batch = ({k: np.stack([v] * steps_per_call) for k, v in batch.items()} if stacked else batch)
    device_batch = strategy.put_batch(host_batch, stacked=stacked)
    key = jax.random.key(1)
    start = time.perf_counter()
    memory = {}
    if strategy_name == "sharded":
        step = step.lower(device_state, device_batch, key).compile()
        analysis = step.memory_analysis()
        memory = {f"xla_{k}_gb": round(getattr(analysis, f"{k}_size_in_bytes") / 2 ** 30, 3)
                  for k in ("argument", "output", "temp")}
    device_state, _ = jax.block_until_ready(step(device_state, device_batch, key))  # compile + first call
    compile_s = time.perf_counter() - start

    windows = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            device_state, _ = step(device_state, device_batch, key)
        jax.block_until_ready(device_state)
        windows.append(steps * steps_per_call * batch_size / (time.perf_counter() - start))
    stats = {"params": int(sum(x.size for x in jax.tree.leaves(state.params))), "batch_size": batch_size,
             "steps_per_call": steps_per_call, "train_compile_s": round(compile_s, 1),
             "train_images_per_s": round(statistics.median(windows), 2),
             "train_images_per_s_windows": [round(w, 2) for w in windows], **memory}
    return stats, device_state, strategy


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="compiled calls per timed window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--strategy", default="sharded", choices=parallel.STRATEGIES)
    p.add_argument("--steps_per_call", type=int, default=1, help="train steps per compiled call (lax.scan)")
    p.add_argument("--sample_batch", type=int, default=0, help="default: the train batch size")
    p.add_argument("--sample_steps", type=int, default=20, help="DDIM steps timed for sampling")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.jsonl"))
    args = p.parse_args()

    config, method = paper_unet(args.dtype)
    stats, device_state, strategy = measure_train_step(config, method, args.batch_size, args.steps, args.repeats,
                                                       args.strategy, args.steps_per_call)

    # Sampling: a DDIM chain of `sample_steps` network evaluations, timed after its compile.
    n = args.sample_batch or args.batch_size
    ema = strategy.get_state(device_state).ema_params
    sched = diffusion.schedule_from_name("linear", 1000)
    net = diffusion.unet_from_config(config.model)
    eps_fn = lambda params: (lambda x, t: net.apply({"params": params}, x, t, train=False))
    chain = jax.jit(lambda params, k: diffusion.ddim_sample(sched, eps_fn(params), k, (n, 32, 32, 3),
                                                            num_steps=args.sample_steps),
                    out_shardings=parallel.batch_sharding() if n % jax.device_count() == 0 else None)
    _, sample_compile_s = timed(chain, ema, jax.random.key(2))
    _, sample_s = timed(chain, ema, jax.random.key(3))
    evals_per_s = n * args.sample_steps / sample_s

    peak, peak_kind = peak_memory_bytes()
    gflop_per_image = 37.0  # forward + backward of the paper UNet at 32x32, as stated in the target
    result = {
        "benchmark": "ddpm_unet_train_step",
        "machine": machine_description(),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "dtype": args.dtype,
        "strategy": args.strategy,
        **stats,
        "train_tflops": round(stats["train_images_per_s"] * gflop_per_image / 1000, 3),
        "sample_compile_s": round(sample_compile_s, 1),
        "sample_network_evals_per_s": round(evals_per_s, 2),
        "sample_images_per_s_T1000": round(evals_per_s / 1000, 4),
        "peak_memory_gb": round(peak / 2 ** 30, 2),
        "peak_memory_kind": peak_kind,
    }
    record(result, args.out, indent=2)


if __name__ == "__main__":
    main()
