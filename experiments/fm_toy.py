"""Flow matching between 2-D distributions: Tong et al.'s table (TMLR 2024, "Improving and generalizing
flow-based generative models with minibatch optimal transport"), as their released runner trains it.

    python -m experiments.fm_toy --workdir=runs/fm_toy                 # 4 pairs x 3 methods x 5 seeds
    python -m experiments.fm_toy --workdir=runs/fm_toy --config.pairs='("moons->8gaussians",)'
    python -m experiments.fm_toy --workdir=runs/smoke --config=experiments/fm_toy.py:smoke
    python -m experiments.fm_toy --workdir=runs/fm_toy --mode=eval          # the table from checkpoints

Pairs (`gm.point_sets`, the runner's data): N(0, I) -> 8 Gaussians (radius 5, std 1), moons -> 8
Gaussians (the DSB sets: standardised moons x 7 to modes at radius 12, std 1.5), N -> moons, N ->
S-curve. Methods: I-CFM (Tong's straight path with constant sigma = 0.1, independent pairs), OT-CFM
(the same path, minibatch OT pairs; gm pairs by the exact assignment where the runner draws pairs from
the plan with replacement) and FM (Lipman's OT path with sigma_min = 0.1; Gaussian sources only).
The runner's network and training: an MLP of three SELU layers of 64 on [x, t]; AdamW at 1e-3 with
weight decay 1e-5; batch 512; 1,000 epochs of 10,000 points (19 batches each: 19,000 steps); seeds
42-46 (here 0-4). Evaluation: 1,000 samples integrated with 100 Euler steps (from the source's 1,000
test points, or fresh Gaussian noise), W2 against the target's 1,000 test points by exact optimal
transport (`gm.metrics.wasserstein`). Where gm differs: the runner keeps the checkpoint of the best
validation loss (early stopping, patience 100 epochs), gm the last one.

WORKDIR gets w2.md (per run, then mean ± standard error over seeds next to the paper where its number
is recorded in PAPER, and "data vs data": W2 between as many train and test points of the target,
what a perfect model scores on average at this sample size; a model that is a little under-dispersed
can score below it), w2.json, and a scatter plot per run, PAIR_METHOD_seedS.png.
"""
import os

import jax
import numpy as np

from experiments import published
from gm import data as gm_data
from gm import families
from gm.config import variant
from gm.metrics.wasserstein import wasserstein2
from gm.train import loop, run
from gm.train.logging import save_scatter, save_table

PAIRS = {"N->8gaussians": ("gaussian", "cfm_8gaussians"), "moons->8gaussians": ("dsb_moons", "dsb_8gaussians"),
         "N->moons": ("gaussian", "cfm_moons"), "N->scurve": ("gaussian", "cfm_scurve")}
METHODS = {"i_cfm": dict(path="linear", coupling="independent"), "ot_cfm": dict(path="linear", coupling="ot"),
           "fm": dict(path="ot", coupling="independent")}
GAUSSIAN_ONLY = ("fm",)  # Lipman's path starts from N(0, I)
# Published W2 cells (`experiments.published`) by (pair, method). Tong et al.'s table is not recorded
# yet: its numbers were not available where this experiment was written; add them as
# ("N->8gaussians", "ot_cfm"): dict(w2=(mean, se)).
PAPER = {}
METRICS = ("w2",)


def get_config(arg=None):
    """Every pair, method and seed at the runner's settings; arg='smoke' trains each for 200 steps."""
    config = families.default_config("flow_matching")
    config.pairs = tuple(PAIRS)
    config.methods = tuple(METHODS)
    config.seeds = tuple(range(5))
    config.num_eval_samples = 1000
    config.data.update(name="cfm_8gaussians")
    config.model.update(hidden=(64, 64, 64), activation="selu", time_features=0)
    config.flow_matching.update(path="linear", sigma_min=0.1, solver="euler", num_steps=100)
    config.optim.update(learning_rate=1e-3, weight_decay=1e-5, ema_decay=0.0)
    config.train.update(batch_size=512, num_steps=19_000, log_every=1_000, checkpoint_every=19_000,
                        keep_checkpoints=1, sample_every=19_000, num_samples=1000)
    config.eval.update(metrics=())
    return variant(config, arg, "fm_toy", smoke=smoke)


def smoke(config):
    config.seeds = (0,)
    config.train.update(num_steps=200, log_every=50, checkpoint_every=100, sample_every=100)


def run_config(config, pair, method, seed):
    """The config of one run: the pair's source and target, the method's path and coupling, the seed."""
    if pair not in PAIRS:
        raise ValueError(f"config.pairs names {pair!r}; use some of {tuple(PAIRS)}.")
    if method not in METHODS:
        raise ValueError(f"config.methods names {method!r}; use some of {tuple(METHODS)}.")
    source, target = PAIRS[pair]
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.seed, cfg.data.name = int(seed), target
        cfg.flow_matching.update(source=source, **METHODS[method])
    return cfg


def score(restored, num_samples):
    """W2 between `num_samples` samples of a trained run and as many test points of its target."""
    method, state, step = restored.method, restored.state, restored.step
    key = jax.random.fold_in(loop.run_keys(restored.setup.run.seed)[2], 10**9 + step)
    points = np.asarray(jax.jit(method.sample, static_argnums=2)(state.ema_params, key, num_samples))
    test = restored.dataset.test["x"][:num_samples]
    return dict(w2=wasserstein2(points, test), step=int(step)), points


def data_reference(pair, num_samples):
    """W2 between `num_samples` train and as many test points of the pair's target: what a perfect
    model scores on average at this sample size (W2 between two finite samples of one distribution is
    not 0)."""
    target = gm_data.load(PAIRS[pair][1])
    return wasserstein2(target.train["x"][:num_samples], target.test["x"][:num_samples])


def table(rows, summary):
    lines = ["| pair | method | seed | step | W2 |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['pair']} | {r['method']} | {r['seed']} | {r['step']} | {r['w2']:.3f} |" for r in rows]
    lines += ["", published.AGREEMENT_NOTE + " 'data vs data': W2 between as many train and test points of the "
              "target.", "",
              "| pair | method | seeds | step | W2 | data vs data |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {s['pair']} | {s['method']} | {s['seeds']} | {s['step']} | {published.cell(s, 'w2', digits=3)} | "
              f"{s['w2_data']:.3f} |" for s in summary]
    return "\n".join(lines) + "\n"


def run_pairs(config, workdir, mode="train"):
    """Train (unless mode='eval') and score every (pair, method, seed); writes the tables and plots."""
    runs = {(pair, m, seed): run_config(config, pair, m, seed) for pair in config.pairs for m in config.methods
            for seed in config.seeds if not (m in GAUSSIAN_ONLY and PAIRS[pair][0] != "gaussian")}
    run.prepare_runs(config, workdir, runs.values(), "eval" if mode == "sample" else mode)
    rows = []
    for (pair, m, seed), cfg in runs.items():
        run_dir = os.path.join(workdir, pair.replace("->", "_to_"), m, f"seed_{seed}")
        if mode == "train":
            run.run(cfg, run_dir, "train")
        result, points = score(run.restore(cfg, run_dir), config.num_eval_samples)
        target = gm_data.load(PAIRS[pair][1]).test["x"]
        save_scatter(os.path.join(workdir, f"{pair.replace('->', '_to_')}_{m}_seed{seed}.png"), points,
                     target[:200], lim=1.2 * np.abs(target).max())
        rows.append(dict(result, pair=pair, method=m, seed=int(seed)))
        print(f"{pair} {m} seed {seed}: W2 {result['w2']:.3f}", flush=True)
    summary = published.summarize(rows, ("pair", "method"), METRICS, PAPER)
    references = {pair: data_reference(pair, config.num_eval_samples) for pair in config.pairs}
    summary = [dict(s, w2_data=references[s["pair"]]) for s in summary]
    save_table(workdir, "w2", rows, table(rows, summary))
    save_table(workdir, "w2_summary", summary, table([], summary))
    return rows


if __name__ == "__main__":
    run.main(__file__, runner=run_pairs)
