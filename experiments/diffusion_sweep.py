"""Sample quality against network evaluations, for a trained diffusion run (DDPM, score SDE or EDM).

    python -m experiments.diffusion_sweep --workdir=runs/ddpm_cifar --config=experiments/diffusion_sweep.py:ddpm_cifar
    python -m experiments.diffusion_sweep --workdir=runs/iddpm --config=experiments/diffusion_sweep.py:improved_ddpm_cifar
    python -m experiments.diffusion_sweep --workdir=runs/edm_cifar --config=experiments/diffusion_sweep.py:edm_cifar
    python -m experiments.diffusion_sweep --workdir=runs/smoke --config=experiments/diffusion_sweep.py:ddpm_cifar,smoke \
        --config.sweep.steps="(5,10,25,100)"

The argument after ':' names the experiment (and its variant) the WORKDIR was trained with. From the
newest checkpoint's EMA parameters, every sampler of config.sweep.samplers that the family has is run
at every step count of config.sweep.steps:

* DDPM: 'ancestral' (a respaced chain of that many steps; the full chain at T), 'ddim' at each eta in
  config.sweep.ddim_etas (0: deterministic; 1: DDPM-like noise), 'ode' (the probability-flow ODE with
  the fixed-step config.sweep.ode_solver), and in sigma space 'dpm_solver++' and 'heun' (EDM's sampler)
  over config.diffusion.solver with that many noise levels;
* score SDE: 'pc' (its predictor and corrector, that many predictor steps), 'ode', 'dpm_solver++', 'heun';
* EDM: 'heun', 'euler', 'dpm_solver++'.

A count of steps means different costs (Heun's N levels take 2N - 1 evaluations), so rows carry their
network evaluations; with config.sweep.nfe set (e.g. (10, 20, 35)), each sampler instead takes the most
steps that fit each budget of evaluations. Each point is scored by config.eval (FID with the Inception
weights on CIFAR-10; fid_digits on the digits) from config.eval.num_samples samples, 10,000 by default
here: a sweep compares samplers with each other, and the 50,000-sample protocol is for the final number
(`--mode=eval`). Writes WORKDIR/sweep/sweep.{md,csv,json} and sweep.png (the metric against network
evaluations).
"""
import dataclasses
import importlib
import os
import time

import jax
import ml_collections
from absl import logging

from gm import parallel
from gm.diffusion import sde as sde_lib, sigma_sampling
from gm.metrics import sample_quality
from gm.train import run
from gm.train.logging import save_table

# family -> (its sampling section, the samplers a sweep can run on it)
FAMILY_SAMPLERS = {
    "ddpm": ("diffusion", ("ancestral", "ddim", "ode", "dpm_solver++", "heun")),
    "score_sde": ("sde", ("pc", "ode", "dpm_solver++", "heun")),
    "edm": ("edm", ("heun", "euler", "dpm_solver++")),
}
SWEEP_SAMPLERS = ("ancestral", "ddim", "ode", "pc", "dpm_solver++", "heun", "euler")
ODE_EVALS_PER_STEP = {"euler": 1, "heun": 2, "rk4": 4}


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
    if config.get("family") not in FAMILY_SAMPLERS:
        raise ValueError(f"experiments.{name} is not a diffusion experiment; diffusion_sweep needs one of "
                         f"the families {tuple(FAMILY_SAMPLERS)}.")
    config.sweep = ml_collections.ConfigDict(dict(
        steps=(10, 25, 50, 100, 250, 1000), nfe=(), samplers=("ancestral", "ddim", "ode"), ddim_etas=(0.0, 1.0),
        ode_solver="heun"))
    if config.family != "ddpm":
        config.sweep.samplers = FAMILY_SAMPLERS[config.family][1]
    config.eval.update(metrics=("fid",), num_samples=1000 if variant == "smoke" else 10_000)
    return config


def _evaluations(sampler, steps, config):
    """Network evaluations per sample of `sampler` with `steps` steps (noise levels, predictor steps)."""
    if sampler == "ode":
        return ODE_EVALS_PER_STEP[config.sweep.ode_solver] * steps + 1  # + the final denoising
    if sampler == "pc":
        s = config.sde
        return sde_lib.pc_nfe(steps, s.predictor, s.corrector, s.corrector_steps)
    if sampler in sigma_sampling.SAMPLERS:
        return sigma_sampling.nfe(sampler, steps)
    return steps  # ancestral, ddim


def _step_counts(sampler, config, max_steps):
    """The step counts to run `sampler` at: config.sweep.steps, or the most that fit each config.sweep.nfe."""
    if not config.sweep.nfe:
        return sorted({int(n) for n in config.sweep.steps if 1 <= int(n) <= max_steps})
    counts = set()
    for budget in config.sweep.nfe:
        fitting = [n for n in range(1, min(int(budget), max_steps) + 1) if _evaluations(sampler, n, config) <= budget]
        if fitting:
            counts.add(max(fitting))
    return sorted(counts)


def _overrides(sampler, steps, config):
    """[(label suffix, {field: value} of the family's sampling section)] for one point of `sampler`."""
    if sampler == "ancestral":
        return [("", dict(sampler="ancestral", sample_steps=steps))]
    if sampler == "ddim":
        return [(f" eta={eta:g}", dict(sampler="ddim", ddim_steps=steps, ddim_eta=float(eta)))
                for eta in config.sweep.ddim_etas]
    if sampler == "ode":
        solver = config.sweep.ode_solver
        return [(f" {solver}", dict(sampler="ode", ode_solver=solver, ode_steps=steps))]
    if sampler == "pc":
        return [("", dict(sampler="pc", num_steps=steps))]
    return [("", dict(sampler=sampler, solver=dict(steps=steps)))]


def sweep_points(config):
    """[(label, overrides of the family's sampling section, steps, network evaluations per sample)]."""
    family = config.family
    section, available = FAMILY_SAMPLERS[family]
    unknown = set(config.sweep.samplers) - set(available)
    if unknown:
        raise ValueError(f"config.sweep.samplers has {sorted(unknown)}, which {family} does not have; use any of "
                         f"{available}.")
    if "ode" in config.sweep.samplers and config.sweep.ode_solver not in ODE_EVALS_PER_STEP:
        raise ValueError(f"config.sweep.ode_solver must be a fixed-step solver {tuple(ODE_EVALS_PER_STEP)}, got "
                         f"{config.sweep.ode_solver!r}.")
    # A DDPM model's samplers take at most its T steps; continuous time has no limit.
    max_steps = config.diffusion.num_timesteps if family == "ddpm" else 10 ** 6
    points = []
    for sampler in config.sweep.samplers:
        for steps in _step_counts(sampler, config, max_steps):
            for suffix, fields in _overrides(sampler, steps, config):
                points.append((sampler + suffix, fields, steps, _evaluations(sampler, steps, config)))
    if not points:
        raise ValueError("config.sweep.steps (or nfe) has no count the samplers can run; use counts >= 1"
                         + (f" and <= config.diffusion.num_timesteps={max_steps}." if family == "ddpm" else "."))
    return sorted(points, key=lambda p: (p[2], SWEEP_SAMPLERS.index(p[0].split(" ")[0])))


def with_sampling(settings, section, fields):
    """The family's settings with `fields` set in its sampling section (a nested 'solver' dict too)."""
    current = getattr(settings, section)
    fields = dict(fields)
    if "solver" in fields:
        fields["solver"] = dataclasses.replace(current.solver, **fields["solver"])
    return dataclasses.replace(settings, **{section: dataclasses.replace(current, **fields)})


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
    ax.set_yscale("log")  # a few-step sampler can be 100x off; the rest differ by tenths
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


def score_points(restored, points, extractor, reference, key):
    """One row per point of `sweep_points` for the restored run: its EMA parameters sampled from `key`
    (the same initial noise for every sampler), scored by the run's config.eval."""
    family, settings, dataset = restored.setup.family, restored.setup.settings, restored.dataset
    e = restored.setup.run.eval
    section = FAMILY_SAMPLERS[family.name][0]
    rows = []
    for label, overrides, steps, nfe in points:
        method = family.stages[0].make(with_sampling(settings, section, overrides), dataset.info, None)
        start = time.perf_counter()
        features, logits = sample_quality.sample_features(extractor, method.sample, restored.state.ema_params, key,
                                                          e.num_samples, e.sample_batch_size, dataset.info.num_bits)
        seconds = time.perf_counter() - start
        quality = sample_quality.score(extractor, features, logits, reference)
        rows.append({"sampler": label, "steps": steps, "nfe": nfe, **quality, "seconds": seconds})
        logging.info("sweep: %s %s, %d steps: %s %.3f", family.name, label, steps, extractor.fid_name,
                     quality[extractor.fid_name])
    return rows


def sweep(config, workdir, mode="train"):
    """Run every point of config.sweep on WORKDIR's newest checkpoint; returns the rows."""
    if mode != "train":
        raise ValueError("experiments.diffusion_sweep has only --mode=train (it reads the trained WORKDIR).")
    points = sweep_points(config)
    restored = run.restore(config, workdir)
    run.check_writable(workdir)
    dataset, step, e = restored.dataset, restored.step, restored.setup.run.eval
    extractor = sample_quality.make_extractor(e.features, dataset, e.inception_weights)
    reference = sample_quality.reference_for(extractor, dataset, e.reference, e.batch_size)
    key = jax.random.fold_in(jax.random.key(restored.setup.run.seed), 2 * 10**9 + step)
    rows = score_points(restored, points, extractor, reference, key)
    if parallel.process_index() == 0:
        out = os.path.join(workdir, "sweep")
        table = markdown(rows, extractor.fid_name, extractor.is_name, e.num_samples, reference.source)
        save_table(out, "sweep", rows, table, header={"step": step, "reference": reference.source})
        plot(os.path.join(out, "sweep.png"), rows, extractor.fid_name)
    return rows


if __name__ == "__main__":
    run.main(__file__, runner=sweep)
