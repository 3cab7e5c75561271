"""Sample quality against the number of sampling steps, for a trained diffusion run.

    python -m experiments.diffusion_sweep --workdir=runs/ddpm_cifar --config=experiments/diffusion_sweep.py:ddpm_cifar
    python -m experiments.diffusion_sweep --workdir=runs/iddpm --config=experiments/diffusion_sweep.py:improved_ddpm_cifar
    python -m experiments.diffusion_sweep --workdir=runs/smoke --config=experiments/diffusion_sweep.py:ddpm_cifar,smoke \
        --config.sweep.steps="(5,10,25,100)"

The argument after ':' names the experiment (and its variant) the WORKDIR was trained with. From the
newest checkpoint's EMA parameters, every sampler in config.sweep is run at every step count:

* ancestral sampling over a respaced chain of that many steps (the full chain at T);
* DDIM at each eta in config.sweep.ddim_etas (0: deterministic; 1: DDPM-like noise);
* the probability-flow ODE with the fixed-step config.sweep.ode_solver and that many steps.

Each point is scored by config.eval (FID with the Inception weights on CIFAR-10; fid_digits on the
digits) from config.eval.num_samples samples, 10,000 by default here: a sweep compares samplers with
each other, and the 50,000-sample protocol is for the final number (`--mode=eval`). Writes
WORKDIR/sweep/sweep.{md,csv,json} and sweep.png (the metric against network evaluations).
"""
import dataclasses
import importlib
import os
import time

import jax
import ml_collections
from absl import logging

from gm import diffusion, parallel
from gm.metrics import sample_quality
from gm.train import run
from gm.train.logging import save_table

SWEEP_SAMPLERS = ("ancestral", "ddim", "ode")


def get_config(arg=None):
    """arg: 'EXPERIMENT' or 'EXPERIMENT,VARIANT' (e.g. 'ddpm_cifar,smoke'): that experiment's config
    plus config.sweep."""
    name, _, variant = (arg or "ddpm_cifar").partition(",")
    try:
        module = importlib.import_module(f"experiments.{name}")
    except ModuleNotFoundError:
        raise ValueError(f"Unknown experiment {name!r} for diffusion_sweep; use e.g. "
                         "--config=experiments/diffusion_sweep.py:ddpm_cifar") from None
    config = module.get_config(variant or None)
    if "diffusion" not in config:
        raise ValueError(f"experiments.{name} is not a diffusion experiment; diffusion_sweep needs one.")
    config.sweep = ml_collections.ConfigDict(dict(
        steps=(10, 25, 50, 100, 250, 1000), samplers=SWEEP_SAMPLERS, ddim_etas=(0.0, 1.0), ode_solver="heun"))
    config.eval.update(metrics=("fid",), num_samples=1000 if variant == "smoke" else 10_000)
    return config


def sweep_points(config):
    """[(label, diffusion overrides, steps, network evaluations per sample)] for every point of the sweep."""
    s, num_timesteps = config.sweep, config.diffusion.num_timesteps
    unknown = set(s.samplers) - set(SWEEP_SAMPLERS)
    if unknown:
        raise ValueError(f"Unknown config.sweep.samplers {sorted(unknown)}; use any of {SWEEP_SAMPLERS}.")
    steps = sorted({int(n) for n in s.steps if 1 <= int(n) <= num_timesteps})
    if not steps:
        raise ValueError(f"config.sweep.steps has no count in [1, config.diffusion.num_timesteps={num_timesteps}].")
    per_step = {"euler": 1, "heun": 2, "rk4": 4}
    if "ode" in s.samplers and s.ode_solver not in per_step:
        raise ValueError(f"config.sweep.ode_solver must be a fixed-step solver {tuple(per_step)}, got {s.ode_solver!r}.")
    points = []
    for n in steps:
        if "ancestral" in s.samplers:
            points.append(("ancestral", dict(sampler="ancestral", sample_steps=n), n, n))
        if "ddim" in s.samplers:
            points += [(f"ddim eta={eta:g}", dict(sampler="ddim", ddim_steps=n, ddim_eta=float(eta)), n, n)
                       for eta in s.ddim_etas]
        if "ode" in s.samplers:
            # The ODE's last step is one more evaluation: the denoising to x_0.
            points.append((f"ode {s.ode_solver}", dict(sampler="ode", ode_solver=s.ode_solver, ode_steps=n), n,
                           per_step[s.ode_solver] * n + 1))
    return points


def plot(path, rows, metric):
    """The metric against network evaluations per sample, one line per sampler, log x; a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == label]
        ax.plot([r["nfe"] for r in mine], [r[metric] for r in mine], marker="o", label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("network evaluations per sample")
    ax.set_ylabel(metric)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(rows, metric, is_name, num_samples, reference):
    lines = [f"| sampler | steps | network evaluations | {metric} | {is_name} | wall time (s, with compilation) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r[metric]:.2f} | {r[is_name]:.2f} | "
              f"{r['seconds']:.1f} |" for r in rows]
    lines.append(f"\n{metric} and {is_name} from {num_samples} samples against {reference}.")
    return "\n".join(lines) + "\n"


def sweep(config, workdir, mode="train"):
    """Run every point of config.sweep on WORKDIR's newest checkpoint; returns the rows."""
    if mode != "train":
        raise ValueError("experiments.diffusion_sweep has only --mode=train (it reads the trained WORKDIR).")
    points = sweep_points(config)
    restored = run.restore(config, workdir)
    run.check_writable(workdir)
    dataset, state, step, settings = restored.dataset, restored.state, restored.step, restored.setup.settings
    e = restored.setup.run.eval
    extractor = sample_quality.make_extractor(e.features, dataset, e.inception_weights)
    reference = sample_quality.reference_for(extractor, dataset, e.reference, e.batch_size)
    key = jax.random.fold_in(jax.random.key(restored.setup.run.seed), 2 * 10**9 + step)
    rows = []
    for label, overrides, steps, nfe in points:
        sampling = dataclasses.replace(settings.diffusion, **overrides)
        method = diffusion.make(dataclasses.replace(settings, diffusion=sampling), dataset.info)
        start = time.perf_counter()
        features, logits = sample_quality.sample_features(extractor, method.sample, state.ema_params, key,
                                                          e.num_samples, e.sample_batch_size, dataset.info.num_bits)
        seconds = time.perf_counter() - start
        quality = sample_quality.score(extractor, features, logits, reference)
        rows.append({"sampler": label, "steps": steps, "nfe": nfe, **quality, "seconds": seconds})
        logging.info("sweep: %s, %d steps: %s %.3f", label, steps, extractor.fid_name, quality[extractor.fid_name])
    if parallel.process_index() == 0:
        out = os.path.join(workdir, "sweep")
        table = markdown(rows, extractor.fid_name, extractor.is_name, e.num_samples, reference.source)
        save_table(out, "sweep", rows, table, header={"step": step, "reference": reference.source})
        plot(os.path.join(out, "sweep.png"), rows, extractor.fid_name)
    return rows

if __name__ == "__main__":
    run.main(__file__, runner=sweep)
