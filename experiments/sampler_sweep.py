"""Which sampler at which budget: DDPM, a score SDE (VP) and EDM, the same UNet trained for the same
steps on the digits, each sampled with all of its samplers at equal budgets of network evaluations.

    python -m experiments.sampler_sweep --workdir=runs/sampler_sweep
    python -m experiments.sampler_sweep --workdir=runs/smoke --config=experiments/sampler_sweep.py:smoke

Each family is its experiment's smoke configuration (the 4-bit 8x8 digits, batch 32) with the same
UNet (config.network: 2 levels of 32 and 64 channels, dropout 0.1) and config.num_steps training
steps, trained in WORKDIR/FAMILY (or loaded from there; a longer num_steps resumes it). DDPM uses
T = 1000 linear steps so that its chains reach 1,000 evaluations. Then, for every budget in config.nfe,
each sampler in config.samplers takes the most steps that fit (Heun's N levels cost 2N - 1
evaluations, PC's N steps N; see `experiments.diffusion_sweep`), from the same seed, and is scored by
fid_digits from config.eval.num_samples samples against the train digits. Writes
WORKDIR/sampler_sweep.{md,csv,json} and sampler_sweep.png, and names the best sampler at each budget.
"""
import bisect
import os

import jax
import ml_collections
from absl import logging

from experiments import compare, diffusion_sweep
from gm import parallel
from gm.config import base_config, parse_run, variant
from gm.metrics import sample_quality
from gm.train import run
from gm.train.logging import save_table

LABELS = {"ddpm": "DDPM", "score_sde": "VP SDE", "edm": "EDM"}


def get_config(arg=None):
    """The three families for 2,000 steps; arg='smoke' runs a few steps and budgets, for the tests."""
    config = base_config()
    config.families = ("ddpm", "score_sde", "edm")
    config.num_steps = 2000
    config.nfe = (5, 10, 20, 35, 50, 100, 250, 1000)
    config.samplers = ml_collections.ConfigDict(dict(
        ddpm=("ancestral", "ddim", "dpm_solver++", "heun"), score_sde=("pc", "dpm_solver++", "heun"),
        edm=("heun", "euler", "dpm_solver++")))
    config.eval.update(metrics=("fid",), batch_size=120, features="digits", num_samples=1000, sample_batch_size=500)
    config.network = dict(architecture="ddpm", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                          dropout=0.1)
    config.overrides = dict(ddpm=dict(diffusion=dict(num_timesteps=1000)))
    return variant(config, arg, "sampler_sweep", smoke=smoke)


def smoke(config):
    config.num_steps = 4
    config.nfe = (3, 6)
    config.eval.update(num_samples=32, sample_batch_size=32)
    config.overrides.ddpm.diffusion.num_timesteps = 50


def family_config(config, family):
    """`compare.family_config` with config.network as the UNet."""
    cfg = compare.family_config(config, family)
    cfg.model.update(config.network)
    return cfg


def family_points(config, family):
    """`diffusion_sweep.sweep_points` of the family at config.nfe's budgets."""
    cfg = family_config(config, family)
    with cfg.unlocked():
        cfg.sweep = ml_collections.ConfigDict(dict(steps=(), nfe=tuple(config.nfe), samplers=config.samplers[family],
                                                   ddim_etas=(0.0,), ode_solver="heun"))
    return diffusion_sweep.sweep_points(cfg)


def budget_of(nfe, budgets):
    """The smallest budget a point's evaluations fit in."""
    budgets = sorted(budgets)
    return budgets[min(bisect.bisect_left(budgets, nfe), len(budgets) - 1)]


def best_lines(rows, metric, budgets):
    """'best at B evaluations: ...' for every budget."""
    lines = []
    for budget in sorted(budgets):
        mine = [r for r in rows if r["budget"] == budget]
        if mine:
            best = min(mine, key=lambda r: r[metric])
            lines.append(f"- at {budget} evaluations: {best['sampler']} ({best['nfe']} evaluations), "
                         f"{metric} {best[metric]:.2f}")
    return lines


def sampler_sweep(config, workdir, mode="train"):
    """Train or load every family, sweep its samplers, write the merged table; returns the rows."""
    if mode != "train":
        raise ValueError("experiments.sampler_sweep has only --mode=train (which also loads finished runs).")
    run.prepare_runs(config, workdir, [family_config(config, f) for f in config.families], mode)
    points = {family: family_points(config, family) for family in config.families}  # checked before training
    dataset = run.load_dataset(parse_run(config))
    extractor = sample_quality.make_extractor(config.eval.features, dataset)
    reference = sample_quality.reference_for(extractor, dataset, config.eval.reference, config.eval.batch_size)
    key = jax.random.fold_in(jax.random.key(config.seed), 2 * 10**9)
    rows = []
    for family in config.families:
        logging.info("sampler_sweep: training %s", family)
        cfg, family_dir = family_config(config, family), os.path.join(workdir, family)
        run.run(cfg, family_dir, "train")
        restored = run.restore(cfg, family_dir)
        for row in diffusion_sweep.score_points(restored, points[family], extractor, reference, key):
            rows.append(dict(row, family=family, sampler=f"{LABELS[family]} {row['sampler']}",
                             budget=budget_of(row["nfe"], config.nfe)))
    rows.sort(key=lambda r: (r["budget"], r["family"], r["sampler"]))
    if parallel.process_index() == 0:
        metric = extractor.fid_name
        table = diffusion_sweep.markdown(rows, metric, extractor.is_name, config.eval.num_samples, reference.source)
        best = "\n".join(best_lines(rows, metric, config.nfe))
        table += f"\nBest {metric} within each budget:\n\n{best}\n"
        save_table(workdir, "sampler_sweep", rows, table, header={"num_steps": config.num_steps})
        diffusion_sweep.plot(os.path.join(workdir, "sampler_sweep.png"), rows, metric)
    return rows


if __name__ == "__main__":
    run.main(__file__, runner=sampler_sweep)
