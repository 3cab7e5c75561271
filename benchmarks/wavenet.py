"""WaveNet's fast generation against the naive sampler, side by side on the same network and key.

    python -m benchmarks.wavenet                                   # paper size (SC09), 1 s clips
    python -m benchmarks.wavenet --config=smoke --length=2000      # the smoke network on notes clips
    python -m benchmarks.wavenet --length=4000 --num=8 --max_seconds=60

With random parameters (speed does not depend on training) and the output distribution of the config:
  - fast generation (`gm.wavenet.generate`: one `lax.scan` of cached one-sample steps), compile and the
    timed run of `--num` clips of `--length` samples;
  - the naive sampler (`gm.wavenet.generate_naive`: the whole network over the whole clip for every new
    sample), compile, one network pass (the median of --repeats), and the full run when its estimate
    (length x one pass) is under --max_seconds, else that estimate, marked "estimated";
  - the speedup naive / fast, and whether the two drew the same samples (when both ran in full).
Appends one JSON line to benchmarks/results.jsonl.
"""
import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import environment, num_params, peak_memory, record, timed
from experiments import wavenet_sc09
from gm import families, wavenet
from gm.nn.wavenet import receptive_field, shift_right


def measure(config_name="paper", length=16000, num=4, repeats=3, max_seconds=120.0, seed=0):
    config = wavenet_sc09.get_config(None if config_name == "paper" else config_name)
    setup = families.parse(config)
    m = setup.settings.model
    if m.condition != "none":
        raise ValueError("benchmarks.wavenet times the unconditional model; leave config.model.condition='none'.")
    net, quantizer = wavenet.network(m, 10), wavenet.Quantizer(m)
    dtype = jnp.int32 if quantizer.mu_law else jnp.float32
    values = jnp.full((num, length), quantizer.start, dtype)
    params = jax.jit(net.init)(jax.random.key(seed), values)["params"]
    key = jax.random.key(seed + 1)
    fast = jax.jit(lambda p, k: wavenet.generate(net, p, quantizer, k, num, length))
    naive = jax.jit(lambda p, k: wavenet.generate_naive(net, p, quantizer, k, num, length))
    one_pass = jax.jit(lambda p, v: net.apply({"params": p}, shift_right(v, quantizer.start)))

    _, fast_compile_s = timed(fast.lower(params, key).compile)
    fast_out, fast_s = timed(fast, params, key)
    _, naive_compile_s = timed(naive.lower(params, key).compile)
    timed(one_pass, params, values)  # compile and warm up
    pass_s = statistics.median(timed(one_pass, params, values)[1] for _ in range(repeats))
    estimate = length * pass_s
    row = {"benchmark": "wavenet_generation", **environment(), "config": config_name, "output": m.output,
           "params": num_params(params), "layers": len(net.dilations),
           "receptive_field": receptive_field(net.dilations), "residual_channels": m.residual_channels,
           "num": num, "length": length,
           "fast_compile_s": round(fast_compile_s, 3), "fast_s": round(fast_s, 3),
           "fast_samples_per_s": round(num * length / fast_s, 1),
           "naive_compile_s": round(naive_compile_s, 3), "naive_pass_s": round(pass_s, 5)}
    if estimate <= max_seconds:
        naive_out, naive_s = timed(naive, params, key)
        row.update(naive_s=round(naive_s, 3), naive_s_kind="timed",
                   same_samples=bool(np.array_equal(np.asarray(fast_out), np.asarray(naive_out))))
    else:
        row.update(naive_s=round(estimate, 1), naive_s_kind="estimated")
    row["speedup"] = round(row["naive_s"] / fast_s, 1)
    row.update(peak_memory())
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="paper", choices=("paper", "smoke"))
    p.add_argument("--length", type=int, default=16000, help="samples per clip")
    p.add_argument("--num", type=int, default=4, help="clips drawn at once")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max_seconds", type=float, default=120.0, help="time the naive sampler only below this")
    p.add_argument("--out", default=None, help="results file (default benchmarks/results.jsonl)")
    args = p.parse_args(argv)
    for name in ("length", "num", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    row = measure(args.config, args.length, args.num, args.repeats, args.max_seconds)
    record(row, **({"out": args.out} if args.out else {}))
    return row


if __name__ == "__main__":
    main()
