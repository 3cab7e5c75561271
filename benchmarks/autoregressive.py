"""Sampling speed of the autoregressive models: a 16-image grid of 32x32x3 (CIFAR-10 shape, 8 bits).

    python -m benchmarks.autoregressive                       # paper-size networks
    python -m benchmarks.autoregressive --config=smoke        # the smoke-size networks, same shape
    python -m benchmarks.autoregressive --models=pixelcnn_pp,transformer --max_seconds=120

For each model of `experiments/pixelcnn_cifar.py` (and NADE from `experiments/nade_mnist.py`), with
random parameters (speed does not depend on training):
  - compile time of the whole sampler (one jit: the fori_loop / scan over positions),
  - one network evaluation on the 16 images (median of --repeats): a forward pass (a log_prob call)
    for the convolutional models and NADE, one cached decoding step for the transformer,
  - the full sampler, timed, when its estimate (evaluations x one evaluation) is under --max_seconds;
    otherwise `sample_s` is that estimate, marked "estimated". PixelCNN and gated PixelCNN evaluate the
    whole network once per sub-pixel (3,072 times); the transformer takes one cached step per sub-pixel
    (3,072, each attending over the fixed-size cache, so every step costs the same); NADE's sampler is
    one cheap scan and is always timed.
  - PixelCNN++: its cached sampler (`gm.nn.pixelcnn_pp_cache`, every layer at one position per pixel),
    always timed, side by side with the naive one (the whole network once per pixel, 1,024 times;
    timed or estimated as above) on the same parameters and key: the speedup, and whether the two drew
    the same images where both ran in full.
Appends one JSON line per model to benchmarks/results.jsonl.
"""
import argparse
import statistics
import time

import jax
import numpy as np

from benchmarks.harness import RESULTS, environment, fake_cifar_info, num_params, peak_memory, random_batch, record, timed
import dataclasses

from experiments import nade_mnist, pixelcnn_cifar
from gm import autoregressive as ar
from gm import families
from gm.train import state as state_lib

NUM = 16


def network_evaluations(name, info):
    """How many network evaluations (forward passes, or cached steps for the transformer) one grid takes."""
    h, w, c = info.shape
    return {"pixelcnn_pp": h * w, "pixelcnn": h * w * c, "gated_pixelcnn": h * w * c,
            "transformer": h * w * c}.get(name, 1)


def transformer_step(model: ar.ModelConfig, info, params, num=NUM):
    """A jitted (cache, position) -> cache: one cached decoding step on `num` sequences (cache donated, as
    the sampler's scan updates it in place), and a fresh cache."""
    from gm.nn import transformer

    net = transformer.CausalTransformer(vocab_size=info.num_levels, seq_len=info.num_dims,
                                        **dataclasses.asdict(model.transformer))
    tokens = np.zeros(num, np.int32)
    step = jax.jit(lambda cache, i: net.apply({"params": params}, tokens, i, cache, method="decode")[1],
                   donate_argnums=0)
    return step, transformer.init_cache(net, num)


def sampler_stats(model: ar.ModelConfig, method, info, params, repeats, max_seconds, num=NUM, key_seed=3):
    """Time `method.sample` of the autoregressive model `model` (its config.model) drawing `num` images.

    Returns sampler_compile_s, network_eval_s (one forward pass on `num` images, or one cached decoding
    step for the transformer; median of `repeats`), network_evaluations, and sample_s: the full
    sampler's seconds, measured when evaluations x network_eval_s <= max_seconds (always for NADE),
    else that estimate (sample_s_kind says which), and images_per_s.
    """
    name = model.name
    batch = {"image": np.zeros((num,) + tuple(info.shape), np.uint8), "label": np.zeros(num, np.int32)}
    if name == "transformer":
        step, cache = transformer_step(model, info, params, num)
        cache, _ = timed(step, cache, info.num_dims // 2)  # compile; any position costs the same
        times = []
        for _ in range(repeats):
            cache, seconds = timed(step, cache, info.num_dims // 2)
            times.append(seconds)
        eval_s = statistics.median(times)
    else:
        log_prob = jax.jit(method.log_prob)
        timed(log_prob, params, jax.random.key(1), batch)
        eval_s = statistics.median(timed(log_prob, params, jax.random.key(1), batch)[1] for _ in range(repeats))

    start = time.perf_counter()
    sampler = jax.jit(lambda p, k: method.sample(p, k, num)).lower(params, jax.random.key(2)).compile()
    compile_s = time.perf_counter() - start
    evaluations = network_evaluations(name, info)
    cached = name == "pixelcnn_pp" and model.pixelcnn_pp.sampler == "cached"
    estimate = evaluations * eval_s
    samples = None
    if name == "nade" or cached or estimate <= max_seconds:
        samples, sample_s = timed(sampler, params, jax.random.key(key_seed))
        if samples.shape != (num,) + tuple(info.shape):
            raise AssertionError(f"the sampler returned {samples.shape} for {num} images of {info.shape}")
        kind = "measured"
    else:
        sample_s, kind = estimate, "estimated"
    stats = {"num_images": num, "sampler_compile_s": round(compile_s, 1), "network_eval_s": float(f"{eval_s:.4g}"),
             "network_evaluations": evaluations if name not in ("nade",) and not cached else None,
             "sample_s": round(sample_s, 3), "sample_s_kind": kind, "images_per_s": round(num / sample_s, 4)}
    if name == "pixelcnn_pp":
        stats["sampler"] = model.pixelcnn_pp.sampler
    return stats, samples


def side_by_side(cached, naive, cached_samples, naive_samples):
    """The naive PixelCNN++ sampler's numbers next to the cached one's: naive_sample_s (and its kind),
    the speedup, and same_samples where both ran in full (else None)."""
    same = None if naive_samples is None else bool(np.array_equal(np.asarray(cached_samples),
                                                                  np.asarray(naive_samples)))
    return {"naive_sampler_compile_s": naive["sampler_compile_s"], "naive_sample_s": naive["sample_s"],
            "naive_sample_s_kind": naive["sample_s_kind"], "naive_network_evaluations": naive["network_evaluations"],
            "speedup": round(naive["sample_s"] / cached["sample_s"], 1), "same_samples": same}


def benchmark(name, variant, info, repeats, max_seconds):
    experiment = nade_mnist if name == "nade" else pixelcnn_cifar

    def setup(sampler=None):
        config = experiment.get_config(variant)
        config.model.name = name
        if sampler is not None:
            config.model.pixelcnn_pp.sampler = sampler
        settings = families.parse(config).settings
        return settings.model, ar.make(settings, info)

    model, method = setup()
    batch = random_batch(info, NUM)
    params = state_lib.run_once(method.init, jax.random.key(0), batch)
    stats, samples = sampler_stats(model, method, info, params, repeats, max_seconds)
    if name == "pixelcnn_pp" and model.pixelcnn_pp.sampler == "cached":
        naive, naive_samples = sampler_stats(*setup("naive"), info, params, repeats, max_seconds)
        stats.update(side_by_side(stats, naive, samples, naive_samples))
    return {
        "benchmark": "autoregressive_sampling",
        "model": name,
        "config": variant or "paper",
        **environment(),
        "params": num_params(params),
        "shape": list(info.shape),
        **stats,
        **peak_memory(),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(ar.MODELS))
    p.add_argument("--config", default="", choices=["", "smoke"], help="'' = paper-size networks")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max_seconds", type=float, default=600.0,
                   help="time the full sampler only when its estimate is below this")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args()
    info = fake_cifar_info()
    for name in args.models.split(","):
        if name not in ar.MODELS:
            raise SystemExit(f"error: --models takes names from {ar.MODELS}, got {name!r}.")
        result = benchmark(name, args.config or None, info, args.repeats, args.max_seconds)
        record(result, args.out)


if __name__ == "__main__":
    main()
