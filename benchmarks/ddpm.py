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
import statistics

import jax

from benchmarks.harness import (RESULTS, environment, fake_cifar_info, measure_train_step, peak_memory, random_batch,
                                record, timed)
from experiments import ddpm_cifar
from gm import diffusion, families, parallel
from gm.nn.unet import unet_from_config


def paper_unet(dtype="float32", scan=True):
    """(typed setup, Method) of the paper's CIFAR-10 DDPM with compute dtype `dtype` (scan: the UNet's
    config.model.scan)."""
    config = ddpm_cifar.get_config()
    config.model.dtype = dtype
    config.model.scan = scan
    setup = families.parse(config)
    return setup, diffusion.make(setup.settings, fake_cifar_info())


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
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args()

    setup, method = paper_unet(args.dtype)
    batch = random_batch(fake_cifar_info(), args.batch_size)
    stats, device_state, strategy = measure_train_step(setup.run.optim, method, batch, args.steps, args.repeats,
                                                       args.strategy, args.steps_per_call)

    # Sampling: a DDIM chain of `sample_steps` network evaluations, the median of --repeats after its compile.
    n = args.sample_batch or args.batch_size
    ema = strategy.get_state(device_state).ema_params
    sched = diffusion.schedule_from_name("linear", 1000)
    net = unet_from_config(setup.settings.model)
    eps_fn = lambda params: (lambda x, t: net.apply({"params": params}, x, t, train=False))
    chain = jax.jit(lambda params, k: diffusion.ddim_sample(sched, eps_fn(params), k, (n, 32, 32, 3),
                                                            num_steps=args.sample_steps),
                    out_shardings=parallel.batch_sharding() if n % jax.device_count() == 0 else None)
    _, sample_compile_s = timed(chain, ema, jax.random.key(2))
    sample_s = statistics.median(timed(chain, ema, jax.random.key(3 + i))[1] for i in range(args.repeats))
    evals_per_s = n * args.sample_steps / sample_s

    gflop_per_image = 37.0  # forward + backward of the paper UNet at 32x32, as stated in the target
    result = {
        "benchmark": "ddpm_unet_train_step",
        **environment(),
        "dtype": args.dtype,
        "strategy": args.strategy,
        **stats,
        "train_tflops": round(stats["train_images_per_s"] * gflop_per_image / 1000, 3),
        "sample_compile_s": round(sample_compile_s, 1),
        "sample_network_evals_per_s": round(evals_per_s, 2),
        "sample_images_per_s_T1000": round(evals_per_s / 1000, 4),
        **peak_memory(),
    }
    record(result, args.out, indent=2)


if __name__ == "__main__":
    main()
