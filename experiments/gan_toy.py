"""Mode collapse on 2-D Gaussian mixtures, under gm's toy protocol or a published one.

    python -m experiments.gan_toy --workdir=runs/gan_toy                # gm's protocol, every variant
    python -m experiments.gan_toy --workdir=runs/pacgan --config=experiments/gan_toy.py:pacgan
    python -m experiments.gan_toy --workdir=runs/pacgan --config=experiments/gan_toy.py:pacgan \
        --config.seeds='(0,1,2,3,4)' --config.variants='("gan","pacgan4")' --config.toys='("pacgan_grid",)'
    python -m experiments.gan_toy --workdir=runs/smoke --config=experiments/gan_toy.py:smoke
    python -m experiments.gan_toy --workdir=runs/gan_toy --mode=eval          # the tables from checkpoints

Each (toy, variant, seed) trains in WORKDIR/TOY/VARIANT/seed_S with gm's trainer (so it checkpoints and
resumes), then config.num_eval_samples samples of the generator are scored (`gm.metrics.modes`): modes
covered (at least config.min_count high-quality samples nearest to a mode), the share of high-quality
samples (within 3 std of a mode) and the reverse KL of the modes' shares to the uniform weights.
WORKDIR gets modes.md: per-run rows, then one row per (toy, variant) with the mean +- standard error
over seeds next to the paper's number and whether the two agree within two combined standard errors;
modes.json and modes_summary.json hold the same; one scatter plot per run, TOY_VARIANT_seedS.png.

Protocols (config.protocol):
- 'gm' (default): ring8 / grid25 (std 0.02), MLPs of two ReLU layers of 128 units as the unrolled-GAN
  paper's toy; Adam with beta1 = 0.5 at 1e-3 for both players (at the paper's 1e-4 no variant leaves
  the origin within 10k steps on this data); batch 500 (100 per critic step when k = 5); 10k steps.
  WGAN uses RMSProp at 1e-3, clip 0.1 (0.01, the image setting, leaves the critic too weak to move the
  generator at all here) and 5 critic steps; WGAN-GP a penalty of 0.1, Adam (0.5, 0.9) and 5 critic
  steps; the unrolled GAN takes 5 unrolled discriminator steps inside the generator's loss and, as in
  the paper, trains its discriminator at 1e-4. No published table; the batch must be a multiple of the
  device count (on 8 devices use --config.train.batch_size=520 or 40).
- 'pacgan': PacGAN's Table 1 (Lin et al. 2018) as its released code runs it (fjxmlzn/PacGAN,
  synthetic_data_experiments): pacgan_ring (8 modes on the unit circle, std 0.01) and pacgan_grid (5x5
  at spacing 2, std 0.05), 100,000 training points; a generator of four Dense(400, no bias) + batch
  norm + ReLU layers from a 2-D N(0, I) latent; a discriminator of three maxout layers of 200 units
  with 5 pieces and a linear output, judging packs of m (gan: m = 1, pacganM: m = M); weights
  N(0, 0.02^2), zero biases; the non-saturating loss; Adam at 1e-4 with beta1 = 0.8 for both players;
  100 packs per step (batch 100 m); 400 epochs of 1,000 steps = 400k steps; 10 trials; 2,500 samples;
  a mode counts from one high-quality sample. 'wgan_gp' is WGAN-GP on the same data and networks
  (penalty 0.1 and Adam (0.5, 0.9) of the WGAN-GP paper's toy code, 5 critic steps of 100 each).
  Where gm differs: the generator's batch norm uses the statistics of the sampled batch (2,500 points)
  where PacGAN's code keeps running averages; with packing, packs are drawn from the same 100,000
  points (PacGAN draws 100,000 packs of m fresh points). A trial costs about 1.5 h (m = 1) to 2.3 h
  (m = 4) on a 2-core CPU (benchmarks/RESULTS.md), so the full protocol is a GPU job.
"""
import os

import jax
import numpy as np

from experiments import published
from gm import data as gm_data
from gm import families
from gm.config import variant
from gm.metrics.modes import mode_coverage
from gm.train import loop, run
from gm.train.logging import save_scatter, save_table

PROTOCOLS = ("gm", "pacgan")

VARIANTS = {
    "gm": {
        "minimax": dict(gan=dict(loss="minimax")),
        "non_saturating": dict(gan=dict(loss="non_saturating")),
        "wgan": dict(gan=dict(loss="wasserstein", clip=0.1, d_steps=5),
                     optim=dict(name="rmsprop"), optim_d=dict(name="rmsprop")),
        "wgan_gp": dict(gan=dict(loss="wasserstein", gradient_penalty=0.1, d_steps=5),
                        optim=dict(b2=0.9), optim_d=dict(b2=0.9)),
        # The paper's ratio: the discriminator 10x slower than the generator (at equal rates the unrolled
        # GAN collapsed to one ring mode in 10k steps; at this ratio it covered 4 by step 8k, still rising).
        "unrolled": dict(gan=dict(loss="non_saturating", unrolled_steps=5),
                         optim_d=dict(eps_root=1e-8, learning_rate=1e-4)),
    },
    "pacgan": {
        **{name: dict(gan=dict(packing=m), train=dict(batch_size=100 * m))
           for name, m in (("gan", 1), ("pacgan2", 2), ("pacgan3", 3), ("pacgan4", 4))},
        "wgan_gp": dict(gan=dict(loss="wasserstein", gradient_penalty=0.1, d_steps=5),
                        optim=dict(b1=0.5, b2=0.9), optim_d=dict(b1=0.5, b2=0.9), train=dict(batch_size=500)),
    },
}
TOYS = {"gm": ("ring8", "grid25"), "pacgan": ("pacgan_ring", "pacgan_grid")}

# Published cells (`experiments.published`): modes covered, high-quality samples (a share), reverse
# KL (nats). Only cells checked against the paper's text are
# here: PacGAN's Table 1 is an image in its release (fjxmlzn/PacGAN, synthetic_data_experiments/results/
# Table1.png); its other cells are left to be filled from it.
PAPER = {
    "pacgan": {
        ("pacgan_grid", "gan"): dict(modes_covered=(17.3, 0.8)),
        ("pacgan_grid", "pacgan4"): dict(modes_covered=(24.8, None)),
    },
}
METRICS = ("modes_covered", "high_quality", "reverse_kl")


def get_config(arg=None):
    """arg: nothing (gm's protocol), 'pacgan' (PacGAN's Table 1), 'smoke', or 'pacgan,smoke'."""
    config = families.default_config("gan")
    config.protocol = "gm"
    config.seeds = (0,)
    config.toys = TOYS["gm"]
    config.variants = tuple(VARIANTS["gm"])
    config.num_eval_samples = 2500
    config.min_count = 20
    config.data.update(name="ring8")
    config.model.update(arch="mlp", latent_dim=64, hidden=(128, 128), g_norm="none", d_norm="none")
    config.optim.update(learning_rate=1e-3, b1=0.5, ema_decay=0.0)
    config.optim_d.update(learning_rate=1e-3, b1=0.5)
    config.train.update(batch_size=500, num_steps=10_000, log_every=500, checkpoint_every=5_000,
                        keep_checkpoints=1, sample_every=5_000, num_samples=500)
    config.sample.update(num=2500, batch_size=2500)
    for name in (arg.split(",") if arg else []):
        variant(config, name, "gan_toy", pacgan=pacgan, smoke=smoke)
    return config


def pacgan(config):
    """PacGAN's Table 1 protocol (see the module docstring)."""
    config.protocol = "pacgan"
    config.seeds = tuple(range(10))
    config.toys = TOYS["pacgan"]
    config.variants = ("gan", "pacgan2", "pacgan3", "pacgan4")
    config.min_count = 1
    config.data.update(name="pacgan_grid")
    config.model.update(latent_dim=2, hidden=(400, 400, 400, 400), d_hidden=(200, 200, 200), maxout_pieces=5,
                        g_norm="batch", init_std=0.02)
    config.gan.update(loss="non_saturating")
    config.optim.update(learning_rate=1e-4, b1=0.8)
    config.optim_d.update(learning_rate=1e-4, b1=0.8)
    config.train.update(batch_size=100, num_steps=400_000, log_every=5_000, checkpoint_every=20_000,
                        sample_every=50_000)


def smoke(config):
    config.train.update(num_steps=200, log_every=50, checkpoint_every=100, sample_every=100)


def variant_config(config, toy, name, seed):
    """The config of one run: the toy, the variant's overrides, the seed."""
    variants, toys = VARIANTS[config.protocol], TOYS[config.protocol]
    if name not in variants:
        raise ValueError(f"config.variants names an unknown variant {name!r} of protocol {config.protocol!r}; "
                         f"use some of {tuple(variants)}.")
    if toy not in toys:
        raise ValueError(f"config.toys names {toy!r}; protocol {config.protocol!r} uses some of {toys}.")
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.seed, cfg.data.name = int(seed), toy
        for group, fields in variants[name].items():
            cfg[group].update(fields)
    return cfg


def score(restored, num_samples, min_count):
    """Mode coverage of `num_samples` samples from a trained run's newest (EMA) generator."""
    method, state, step = restored.method, restored.state, restored.step
    key = jax.random.fold_in(loop.run_keys(restored.setup.run.seed)[2], 10**9 + step)
    points = np.asarray(jax.jit(method.sample, static_argnums=2)(state.ema_params, key, num_samples))
    name = restored.dataset.info.name
    result = mode_coverage(points, gm_data.TOY_MODES[name], gm_data.TOY_STDS[name], min_count=min_count)
    return dict(result, step=int(step)), points


def table(rows, summary):
    lines = ["| toy | variant | seed | step | modes covered | high-quality samples | reverse KL |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['toy']} | {r['variant']} | {r['seed']} | {r['step']} | {r['modes_covered']} / "
                     f"{r['num_modes']} | {100 * r['high_quality']:.1f}% | {r['reverse_kl']:.3f} |")
    lines += ["", published.AGREEMENT_NOTE, "",
              "| toy | variant | seeds | step | modes covered | high-quality samples (%) | reverse KL |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary:
        lines.append(f"| {s['toy']} | {s['variant']} | {s['seeds']} | {s['step']} | "
                     f"{published.cell(s, 'modes_covered', 1, 1)} | {published.cell(s, 'high_quality', 100, 1)} | "
                     f"{published.cell(s, 'reverse_kl')} |")
    return "\n".join(lines) + "\n"


def run_toys(config, workdir, mode="train"):
    """Train (unless mode='eval') and score every (toy, variant, seed); writes the tables and plots."""
    if config.protocol not in PROTOCOLS:
        raise ValueError(f"config.protocol must be one of {PROTOCOLS}, got {config.protocol!r}.")
    runs = {(toy, v, seed): variant_config(config, toy, v, seed)
            for toy in config.toys for v in config.variants for seed in config.seeds}
    run.prepare_runs(config, workdir, runs.values(), "eval" if mode == "sample" else mode)
    rows = []
    for (toy, v, seed), cfg in runs.items():
        run_dir = os.path.join(workdir, toy, v, f"seed_{seed}")
        if mode == "train":
            run.run(cfg, run_dir, "train")
        result, points = score(run.restore(cfg, run_dir), config.num_eval_samples, config.min_count)
        modes = gm_data.TOY_MODES[toy]
        save_scatter(os.path.join(workdir, f"{toy}_{v}_seed{seed}.png"), points, modes, lim=1.3 * np.abs(modes).max())
        rows.append(dict(result, toy=toy, variant=v, seed=int(seed)))
        print(f"{toy} {v} seed {seed}: {result['modes_covered']}/{result['num_modes']} modes, "
              f"{100 * result['high_quality']:.1f}% high quality, reverse KL {result['reverse_kl']:.3f}", flush=True)
    summary = published.summarize(rows, ("toy", "variant"), METRICS, PAPER.get(config.protocol, {}))
    save_table(workdir, "modes", rows, table(rows, summary))
    save_table(workdir, "modes_summary", summary, table([], summary))
    return rows


if __name__ == "__main__":
    run.main(__file__, runner=run_toys)
