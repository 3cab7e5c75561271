"""The DDPM accelerator targets in one run: training speed and MFU, 50,000 samples, DDIM-50, FID features.

    python -m benchmarks.targets                     # the paper UNet in bf16, batch 128: the H200 targets
    python -m benchmarks.targets --config=smoke --batch_size=8 --num_images=64 --sample_batch=32 \\
        --ancestral_steps=4 --fid_batch=16           # a few seconds' check of the same code on a CPU

Targets on one H200, the paper UNet in bf16 (gm's issue on performance):
  - train >= 10,000 images/s, i.e. >= 45% of the bf16 peak at ~37 GFLOP per image;
  - 50,000 samples with the 1,000-step ancestral sampler in <= 30 min;
  - 50,000 DDIM-50 samples in <= 90 s;
  - Inception features (FID) of 50,000 images in <= 60 s.

Each is measured the same way as the other benchmarks, compile excluded:
  - train: `benchmarks.harness.measure_train_step` (the trainer's step, state donated); MFU is
    images/s x 37 GFLOP over the device's bf16 dense peak (`--peak_tflops`, known for H200, H100 and
    A100), and XLA's own FLOP count of the step is reported beside it;
  - ancestral: `--ancestral_steps` steps of the real sampler (`gm.diffusion.ancestral_sample`) on a
    batch of `--sample_batch`, after its compile; the time for `--num_images` x 1,000 steps is that
    per-step time x 1,000 x the number of batches (an estimate, marked so);
  - DDIM-50: all `--num_images` drawn in batches of `--sample_batch`, timed end to end (measured);
  - FID features: `--num_images` uint8 32x32x3 images through the FID Inception network (resize to
    299, float32 at full precision, as evaluation runs it) in batches of `--fid_batch`, timed end to end
    after the first batch's compile. Speed does not depend on the weights, so they are random unless
    `--inception_weights` names the real file.
Prints one JSON object and appends it to benchmarks/results.jsonl.
"""
import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import (RESULTS, dataset_info, environment, measure_train_step, peak_memory, random_batch,
                                record, timed)
from experiments import ddpm_cifar
from gm import diffusion, families, parallel
from gm.metrics import inception, sample_quality
from gm.nn.unet import unet_from_config
from gm.train import state as state_lib

GFLOP_PER_TRAIN_IMAGE = 37.0  # forward + backward of the paper UNet at 32x32, as the targets state it
# Dense bf16 TFLOP/s by JAX device kind (vendor data sheets, without sparsity).
BF16_PEAK_TFLOPS = {"NVIDIA H200": 989.4, "NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H100 PCIe": 756.0,
                    "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100-SXM4-40GB": 312.0, "NVIDIA A100 80GB PCIe": 312.0}
TARGETS = {"train_images_per_s": 10_000, "train_mfu": 0.45, "ancestral_50k_s": 30 * 60, "ddim50_50k_s": 90,
           "fid_features_50k_s": 60}


def model_setup(variant, dtype):
    """The checked, typed config of ddpm_cifar (or its smoke variant) with compute dtype `dtype`."""
    config = ddpm_cifar.get_config("smoke" if variant == "smoke" else None)
    config.model.dtype = dtype
    return families.parse(config)


def eps_fn(settings, params):
    net = unet_from_config(settings.model)
    return lambda x, t: net.apply({"params": params}, x, t, train=False)


def measure_ancestral(settings, params, shape, steps, batches):
    """(per-step seconds at this batch, estimated seconds for `batches` batches of 1,000 steps)."""
    # `steps` evenly spaced steps of the trained chain: each step costs what a step of all 1,000 does.
    d = settings.diffusion
    short = diffusion.respace(diffusion.betas_from_name(d.schedule, d.num_timesteps, d.beta_start, d.beta_end), steps)
    chain = jax.jit(lambda p, k: diffusion.ancestral_sample(
        short.schedule, diffusion.respaced_model_fn(eps_fn(settings, p), short.timesteps), k, shape),
        out_shardings=parallel.batch_sharding())
    timed(chain, params, jax.random.key(0))  # compile
    seconds = statistics.median(timed(chain, params, jax.random.key(1 + i))[1] for i in range(3))
    per_step = seconds / steps
    return per_step, per_step * 1000 * batches


def measure_ddim(settings, params, shape, batches, num_steps=50):
    """Seconds for `batches` DDIM chains of `num_steps` on `shape`, after the compile (dispatched back to
    back, one wait at the end, as a sampling loop runs)."""
    d = settings.diffusion
    sched = diffusion.schedule_from_name(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)
    chain = jax.jit(lambda p, k: diffusion.ddim_sample(sched, eps_fn(settings, p), k, shape, num_steps=num_steps),
                    out_shardings=parallel.batch_sharding())
    timed(chain, params, jax.random.key(0))  # compile
    start = time.perf_counter()
    jax.block_until_ready([chain(params, jax.random.key(1 + i)) for i in range(batches)])
    return time.perf_counter() - start


def inception_extractor(weights):
    """The FID Inception network with the real weights from `weights`, else random ones of the same
    shapes (speed does not depend on them)."""
    if weights:
        return sample_quality.inception_extractor(weights)
    shapes = jax.eval_shape(lambda: inception.InceptionV3().init(jax.random.key(0), jnp.zeros((1, 299, 299, 3))))
    # A positive constant keeps the batch-norm variances positive and every activation finite.
    return sample_quality.inception_extractor(variables=jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes))


def measure_fid_features(weights, num_images, batch):
    """Seconds to turn `num_images` uint8 32x32x3 images into Inception features, `batch` at a time,
    after the compile; the images are already on the devices, as samples are in evaluation."""
    features = sample_quality.compiled_features(inception_extractor(weights), num_bits=8)
    rng = np.random.default_rng(0)
    levels = jax.device_put(rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8), parallel.batch_sharding())
    timed(features, levels)  # compile
    start = time.perf_counter()
    jax.block_until_ready([features(levels) for _ in range(math.ceil(num_images / batch))])
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="paper", choices=("paper", "smoke"))
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--batch_size", type=int, default=128, help="train batch")
    p.add_argument("--steps", type=int, default=20, help="train steps per timed window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num_images", type=int, default=50_000, help="images for the sampling and FID targets")
    p.add_argument("--sample_batch", type=int, default=2_500)
    p.add_argument("--ancestral_steps", type=int, default=50, help="ancestral steps timed for the estimate")
    p.add_argument("--fid_batch", type=int, default=500)
    p.add_argument("--inception_weights", default="", help="the FID weights file (default: random weights)")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="bf16 dense peak; default: known devices")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: train,ancestral,ddim,fid")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if skip - {"train", "ancestral", "ddim", "fid"}:
        raise SystemExit(f"error: --skip takes train, ancestral, ddim and fid, got {args.skip!r}.")
    for name in ("batch_size", "steps", "repeats", "num_images", "sample_batch", "ancestral_steps", "fid_batch"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"error: --{name} must be positive, got {getattr(args, name)}.")
    for name in ("batch_size", "sample_batch", "fid_batch"):
        parallel.check_batch_size(getattr(args, name), f"--{name}")

    setup = model_setup(args.config, args.dtype)
    info = dataset_info(setup.run.data.name)
    method = diffusion.make(setup.settings, info)
    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or BF16_PEAK_TFLOPS.get(kind)
    result = {"benchmark": "ddpm_targets", **environment(), "config": args.config, "dtype": args.dtype,
              "shape": list(info.shape), "num_images": args.num_images, "sample_batch": args.sample_batch,
              "peak_tflops": peak, "targets": TARGETS}
    batch = random_batch(info, args.batch_size)
    if "train" not in skip:
        stats, _, _ = measure_train_step(setup.run.optim, method, batch, args.steps, args.repeats)
        # The targets' 37 GFLOP per image for the paper UNet; XLA's own count for any other size.
        gflop = GFLOP_PER_TRAIN_IMAGE if args.config == "paper" else stats.get("xla_gflop_per_image")
        tflops = stats["train_images_per_s"] * gflop / 1000 if gflop else None
        result.update({k if k.startswith("train") else f"train_{k}": v for k, v in stats.items()})
        result.update(train_gflop_per_image=gflop, train_tflops=round(tflops, 3) if tflops else None,
                      train_mfu=round(tflops / peak, 3) if tflops and peak else None)
    # Sampling speed does not depend on the values: freshly initialised parameters.
    params = parallel.replicate(state_lib.run_once(method.init, jax.random.key(0), batch))
    shape = (args.sample_batch,) + tuple(info.shape)
    batches = math.ceil(args.num_images / args.sample_batch)
    if "ancestral" not in skip:
        per_step, total = measure_ancestral(setup.settings, params, shape, args.ancestral_steps, batches)
        result.update(ancestral_step_s=float(f"{per_step:.4g}"), ancestral_1000_steps_s_estimated=float(f"{total:.4g}"))
    if "ddim" not in skip:
        result["ddim50_s"] = round(measure_ddim(setup.settings, params, shape, batches), 2)
    if "fid" not in skip:
        result["fid_features_s"] = round(measure_fid_features(args.inception_weights, args.num_images,
                                                              args.fid_batch), 2)
        result["inception_weights"] = "real" if args.inception_weights else "random"
    result.update(peak_memory())
    record(result, args.out, indent=2)
    return result


if __name__ == "__main__":
    main()
