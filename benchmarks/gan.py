"""Train-step throughput of DCGAN at CIFAR-10 shape (32x32x3), the whole k:1 step under a strategy.

    python -m benchmarks.gan                                  # the paper's DCGAN, batch 128, k = 1
    python -m benchmarks.gan --d_steps=5 --batch_size=320     # 5 discriminator updates per step

One compiled `gm.gan` step (k discriminator updates in a lax.scan, then the generator's) on random
images, timed after a warm-up as the median of --repeats windows of --steps steps. Images/s counts the
real images the discriminator sees per second (the batch per step). Appends one JSON line to
benchmarks/results.jsonl.
"""
import argparse
import functools
import os
import statistics
import time

import jax
import numpy as np

from benchmarks.ddpm import fake_cifar_info, machine_description, peak_memory_bytes, record
from experiments import gan_cifar
from gm import gan, parallel
from gm.train import state as state_lib


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--d_steps", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="train steps per timed window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--strategy", default="sharded", choices=parallel.STRATEGIES)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.jsonl"))
    args = p.parse_args()
    config = gan_cifar.get_config()
    config.train.batch_size, config.gan.d_steps = args.batch_size, args.d_steps
    info = fake_cifar_info()
    method = gan.make(config, info)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (args.batch_size,) + info.shape, dtype=np.uint8),
             "label": np.zeros(args.batch_size, np.int32)}
    params = state_lib.run_once(method.init, jax.random.key(0), batch)
    strategy = parallel.make_strategy(args.strategy)
    step = strategy.compile_step(functools.partial(method.train_step, optimizer=method.optimizer, ema_decay=0.999))
    state = strategy.put_state(state_lib.init_state(params, method.optimizer))
    device_batch = strategy.put_batch(batch)
    start = time.perf_counter()
    state, metrics = step(state, device_batch, jax.random.key(1))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    windows = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, device_batch, jax.random.key(1))
        jax.block_until_ready(metrics)
        windows.append(args.steps * args.batch_size / (time.perf_counter() - start))
    peak, peak_kind = peak_memory_bytes()
    result = {
        "benchmark": "dcgan_train_step", "machine": machine_description(),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "jax": jax.__version__,
        "strategy": args.strategy, "batch_size": args.batch_size, "d_steps": args.d_steps,
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "train_compile_s": round(compile_s, 1), "train_images_per_s": round(statistics.median(windows), 1),
        "peak_memory_gb": round(peak / 2 ** 30, 2), "peak_memory_kind": peak_kind,
    }
    record(result, args.out)


if __name__ == "__main__":
    main()
