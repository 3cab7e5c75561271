"""Mode collapse on the 2-D mixtures: every GAN variant on a ring of 8 and a 5x5 grid of 25 Gaussians.

    python -m experiments.gan_toy --workdir=runs/gan_toy
    python -m experiments.gan_toy --workdir=runs/smoke --config=experiments/gan_toy.py:smoke
    python -m experiments.gan_toy --workdir=runs/gan_toy --mode=eval          # the table from checkpoints

Each (toy, variant, seed) trains in WORKDIR/TOY/VARIANT/seed_S with gm's trainer (so it checkpoints and
resumes), then 2,500 samples of the generator are scored: modes covered and the share of high-quality
samples (within 3 std of a mode; `gm.metrics.modes`). WORKDIR gets modes.md (the table), modes.json and
one scatter plot per run, TOY_VARIANT_seedS.png, samples in black and modes as red crosses.

Networks follow the unrolled-GAN paper's toy setup: MLPs with two ReLU layers of 128 units; Adam with
beta1 = 0.5 at 1e-3 for both players (at the paper's 1e-4 no variant leaves the origin within 10k
steps on this data); batch 500 (100 per critic step when k = 5). WGAN uses RMSProp at 1e-3, clip 0.1
(0.01, the image setting, leaves the critic too weak to move the generator at all here) and 5 critic
steps; WGAN-GP a penalty of 0.1 (the scale of the toy data), Adam (0.5, 0.9) and 5 critic steps; the
unrolled GAN takes 5 unrolled discriminator steps inside the generator's loss and, as in the paper,
trains its discriminator at 1e-4. The batch must be a
multiple of the device count: on 8 devices use --config.train.batch_size=520 or 40.
"""
import os

import jax
import numpy as np

from gm import data as gm_data
from gm import families
from gm.config import variant
from gm.metrics.modes import mode_coverage
from gm.train import loop, run
from gm.train.logging import save_scatter, save_table

VARIANTS = {
    "minimax": dict(gan=dict(loss="minimax")),
    "non_saturating": dict(gan=dict(loss="non_saturating")),
    "wgan": dict(gan=dict(loss="wasserstein", clip=0.1, d_steps=5),
                 optim=dict(name="rmsprop"), optim_d=dict(name="rmsprop")),
    "wgan_gp": dict(gan=dict(loss="wasserstein", gradient_penalty=0.1, d_steps=5),
                    optim=dict(b2=0.9), optim_d=dict(b2=0.9)),
    # The paper's ratio: the discriminator 10x slower than the generator (at equal rates the unrolled GAN
    # collapsed to one ring mode in 10k steps; at this ratio it covered 4 by step 8k and was still rising).
    "unrolled": dict(gan=dict(loss="non_saturating", unrolled_steps=5),
                     optim_d=dict(eps_root=1e-8, learning_rate=1e-4)),
}
TOYS = ("ring8", "grid25")
NUM_EVAL_SAMPLES = 2500


def get_config(arg=None):
    """Both toys, every variant, one seed; arg='smoke' trains each for a few hundred steps."""
    config = families.default_config("gan")
    config.seeds = (0,)
    config.toys = TOYS
    config.variants = tuple(VARIANTS)
    config.data.update(name="ring8")
    config.model.update(arch="mlp", latent_dim=64, hidden=(128, 128), g_norm="none", d_norm="none")
    config.optim.update(learning_rate=1e-3, b1=0.5, ema_decay=0.0)
    config.optim_d.update(learning_rate=1e-3, b1=0.5)
    config.train.update(batch_size=500, num_steps=10_000, log_every=500, checkpoint_every=5_000,
                        keep_checkpoints=1, sample_every=5_000, num_samples=500)
    config.sample.update(num=NUM_EVAL_SAMPLES, batch_size=NUM_EVAL_SAMPLES)
    return variant(config, arg, "gan_toy", smoke=smoke)


def smoke(config):
    config.train.update(num_steps=200, log_every=50, checkpoint_every=100, sample_every=100)


def variant_config(config, toy, variant, seed):
    """The config of one run: the toy, the variant's overrides, the seed."""
    if variant not in VARIANTS:
        raise ValueError(f"config.variants names an unknown variant {variant!r}; use some of {tuple(VARIANTS)}.")
    if toy not in TOYS:
        raise ValueError(f"config.toys names {toy!r}; use some of {TOYS}.")
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.seed, cfg.data.name = int(seed), toy
        for group, fields in VARIANTS[variant].items():
            cfg[group].update(fields)
    return cfg


def score(restored):
    """Mode coverage of NUM_EVAL_SAMPLES samples from a trained run's newest (EMA) generator."""
    method, state, step = restored.method, restored.state, restored.step
    key = jax.random.fold_in(loop.run_keys(restored.setup.run.seed)[2], 10**9 + step)
    points = np.asarray(jax.jit(method.sample, static_argnums=2)(state.ema_params, key, NUM_EVAL_SAMPLES))
    name = restored.dataset.info.name
    result = mode_coverage(points, gm_data.TOY_MODES[name], gm_data.TOY_STD)
    return dict(result, step=int(step)), points


def table(rows):
    lines = ["| toy | variant | seed | step | modes covered | high-quality samples |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['toy']} | {r['variant']} | {r['seed']} | {r['step']} | {r['modes_covered']} / "
                     f"{r['num_modes']} | {100 * r['high_quality']:.1f}% |")
    return "\n".join(lines) + "\n"


def run_toys(config, workdir, mode="train"):
    """Train (unless mode='eval') and score every (toy, variant, seed); writes the table and plots."""
    runs = {(toy, v, seed): variant_config(config, toy, v, seed)
            for toy in config.toys for v in config.variants for seed in config.seeds}
    run.prepare_runs(config, workdir, runs.values(), "eval" if mode == "sample" else mode)
    rows = []
    for (toy, v, seed), cfg in runs.items():
        run_dir = os.path.join(workdir, toy, v, f"seed_{seed}")
        if mode == "train":
            run.run(cfg, run_dir, "train")
        result, points = score(run.restore(cfg, run_dir))
        modes = gm_data.TOY_MODES[toy]
        save_scatter(os.path.join(workdir, f"{toy}_{v}_seed{seed}.png"), points, modes, lim=1.3 * np.abs(modes).max())
        rows.append(dict(result, toy=toy, variant=v, seed=int(seed)))
        print(f"{toy} {v} seed {seed}: {result['modes_covered']}/{result['num_modes']} modes, "
              f"{100 * result['high_quality']:.1f}% high quality", flush=True)
    save_table(workdir, "modes", rows, table(rows))
    return rows


if __name__ == "__main__":
    run.main(__file__, runner=run_toys)
