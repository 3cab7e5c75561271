"""Flows and flow matching: train images/s, sampling images/s, and the ODE solvers' cost and accuracy.

    python -m benchmarks.flows --model=realnvp                   # the experiment's paper-size model, CIFAR shape
    python -m benchmarks.flows --model=glow --config=smoke       # the smoke size, 8x8x1 digits
    python -m benchmarks.flows --model=flow_matching --config=smoke --workdir=runs/fm_digits
        # a trained checkpoint: every solver's NFE, sampling images/s and test bits/dim

Train: the trainer's step (`benchmarks.harness.measure_train_step` under --strategy) on random images
of the config's shape, compiled, then the median of --repeats windows of --steps steps. Sampling draws
--num_samples images after the sampler's compile: RealNVP and Glow in one pass through the flow, the
median of --repeats calls; flow matching integrates its ODE once per solver in --solvers (NAME or NAME:STEPS; dopri5 uses
the config's rtol and atol), and reports each solver's NFE. The adaptive solver's NFE depends on the
learned field, so it only means something for trained parameters: give --workdir of a run of the same
config, and each solver also scores the first --eval_examples test images (bits/dim and the
likelihood's NFE). Without --workdir the parameters are random. One JSON line per row goes to
benchmarks/results.jsonl.
"""
import argparse
import dataclasses
import json

import jax
import numpy as np

from benchmarks.harness import (RESULTS, dataset_info, environment, measure_sampler, measure_train_step, peak_memory,
                                random_batch, timed_twice)
from experiments import flow_matching_cifar, glow_cifar, realnvp_cifar
from gm import data as gm_data
from gm import distributions as dist
from gm import families, flow_matching, parallel
from gm.train import run

EXPERIMENTS = {"realnvp": realnvp_cifar, "glow": glow_cifar, "flow_matching": flow_matching_cifar}
DEFAULT_SOLVERS = "euler:10,euler:100,heun:50,rk4:25,dopri5"


def parse_solvers(text):
    """'euler:10,dopri5' -> [('euler', 10), ('dopri5', None)]; one sentence for a bad entry."""
    solvers = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        if name not in ("euler", "heun", "rk4", "dopri5") or (name != "dopri5") != bool(steps):
            raise ValueError(f"--solvers entry {item!r}: use euler:N, heun:N, rk4:N or dopri5.")
        solvers.append((name, int(steps) if steps else None))
    return solvers


def flow_sampling_row(method, params, num, repeats):
    return {"solver": "one pass", "sample_nfe": 1, **measure_sampler(method, params, num, repeats)}


def first_test_images(dataset, num):
    test = {k: v[:num] for k, v in dataset.test.items()}
    return {"image": test["image"], "label": test["label"]}


def solver_rows(settings, info, params, solvers, num, eval_batch):
    """One row per solver: sampling NFE and images/s; with eval_batch, test bits/dim and its NFE."""
    rows = []
    field = flow_matching.velocity_field(settings.model, info)
    shape = (num,) + tuple(info.shape)
    for name, steps in solvers:
        fm = dataclasses.replace(settings.flow_matching, solver=name, num_steps=steps or settings.flow_matching.num_steps)
        sampler = jax.jit(lambda p, k: flow_matching.sample(field.bind(p), k, shape, **fm.solver_options()))
        (_, nfe), compile_s, sample_s = timed_twice(sampler, params, jax.random.key(3))
        row = {"solver": name if steps is None else f"{name}, {steps} steps", "sample_nfe": int(nfe),
               "sample_compile_s": round(compile_s, 1), "sample_images_per_s": round(num / sample_s, 2)}
        if eval_batch is not None:
            row.update(likelihood_row(field, params, eval_batch, info, fm))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def likelihood_row(field, params, batch, info, fm):
    """Test bits/dim (the dequantization bound, one draw) with fm's solver, and the likelihood's NFE."""
    def bits(p, key, b):
        log_p, nfe = flow_matching.data_log_prob(field, p, key, b, info, fm)
        return dist.bits_per_dim(-log_p, info.num_dims), nfe
    (bpd, nfe), _, seconds = timed_twice(jax.jit(bits), params, jax.random.key(4), batch)
    bpd = np.asarray(bpd, np.float64)
    return {"test_bpd": round(float(bpd.mean()), 4), "test_bpd_stderr": round(float(bpd.std() / np.sqrt(len(bpd))), 4),
            "eval_examples": len(bpd), "likelihood_nfe": int(nfe),
            "likelihood_images_per_s": round(len(bpd) / seconds, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=tuple(EXPERIMENTS))
    p.add_argument("--config", default="paper", choices=("paper", "smoke"))
    p.add_argument("--batch_size", type=int, default=0, help="default: the config's train batch size")
    p.add_argument("--steps", type=int, default=5, help="train steps per timed window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--strategy", default="sharded", choices=parallel.STRATEGIES)
    p.add_argument("--num_samples", type=int, default=64)
    p.add_argument("--solvers", default=DEFAULT_SOLVERS, help="flow matching: NAME:STEPS or dopri5, comma-separated")
    p.add_argument("--workdir", default="", help="a trained run of the same config: its EMA parameters")
    p.add_argument("--eval_examples", type=int, default=120, help="test images scored per solver with --workdir")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args()

    config = EXPERIMENTS[args.model].get_config("smoke" if args.config == "smoke" else None)
    setup = families.parse(config)
    solvers = parse_solvers(args.solvers)
    dataset = gm_data.load(setup.run.data.name) if args.workdir else None
    info = dataset.info if dataset else dataset_info(setup.run.data.name)
    batch_size = args.batch_size or setup.run.train.batch_size
    method = families.make(config, info)
    stats, device_state, strategy = measure_train_step(setup.run.optim, method, random_batch(info, batch_size),
                                                       args.steps, args.repeats, args.strategy)
    params = strategy.get_state(device_state).params
    trained_step = None
    if args.workdir:
        state, trained_step = run.restore_latest(setup.run, args.workdir, method, dataset)
        params = state.ema_params
    if args.model == "flow_matching":
        eval_batch = first_test_images(dataset, args.eval_examples) if dataset else None
        rows = solver_rows(setup.settings, info, params, solvers, args.num_samples, eval_batch)
    else:
        rows = [flow_sampling_row(method, params, args.num_samples, args.repeats)]
    common = {
        "benchmark": "flows", "model": args.model, "config": args.config, **environment(),
        "shape": list(info.shape), "strategy": args.strategy, **stats,
        "num_samples": args.num_samples, "trained_step": int(trained_step) if trained_step is not None else None,
        **peak_memory(),
    }
    with open(args.out, "a") as f:
        for row in rows:
            f.write(json.dumps(dict(common, **row)) + "\n")
    print(json.dumps(common, indent=2))


if __name__ == "__main__":
    main()
