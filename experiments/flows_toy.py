"""2-D densities: a planar flow, RealNVP and flow matching side by side, with density and sample plots.

    python -m experiments.flows_toy --workdir=runs/flows_toy
    python -m experiments.flows_toy --workdir=runs/smoke --config=experiments/flows_toy.py:smoke
    python -m experiments.flows_toy --workdir=runs/flows_toy --mode=eval      # the table from checkpoints

Each (toy, model) trains in WORKDIR/TOY/MODEL with gm's trainer (checkpoints, resume), then WORKDIR gets
TOY_MODEL_density.png (the model's density on [-4, 4]^2, white 0 to dark blue at its maximum),
TOY_MODEL_samples.png, TOY_true_density.png, and table.md / .json / .csv with the test negative
log-likelihood in nats per point next to the true density's on the same points (the floor; the gap
is KL(p || q)).

- planar: 32 planar layers fitted by reverse KL to the closed-form density (Rezende & Mohamed 2015);
  with no inverse it cannot score test points, so its row reports E_q[log q - log p] = KL(q || p)
  instead, and its density plot is a histogram of 200,000 samples. Only on eight_gaussians: reverse
  KL needs a density that is positive everywhere.
- coupling: RealNVP for vectors, 8 affine couplings with ActNorm, maximum likelihood.
- flow_matching: OT path, an MLP velocity, RK4 with 50 steps for samples; exact-trace likelihood.

config.runs holds each model's own fields (--config.runs.coupling.model.hidden=64); the shared train,
optim, eval and sample sections apply to all three. The flows are the flows family's registry entry
('realnvp', whose config.model.name picks the flow), flow matching its own.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from gm import data as gm_data
from gm import families, flows
from gm.config import base_config, variant
from gm.train import loop, run
from gm.train.logging import histogram_log_density, save_density, save_density_image, save_scatter, save_table

# model -> (registry entry, its sections' fields)
MODELS = {
    "planar": ("realnvp", dict(model=dict(name="planar", num_layers=32))),
    "coupling": ("realnvp", dict(model=dict(name="coupling", num_layers=8, hidden=128, num_blocks=1))),
    "flow_matching": ("flow_matching", dict(model=dict(hidden=(256, 256, 256)),
                                            flow_matching=dict(solver="rk4", num_steps=50, divergence="exact"))),
}
TOYS = ("eight_gaussians", "checkerboard")
LIM = 4.0
NUM_SAMPLES = 2000
HISTOGRAM_SAMPLES = 200_000


def get_config(arg=None):
    """Both toys, the three models; arg='smoke' trains each for a few steps."""
    config = base_config()
    config.toys = TOYS
    config.models = tuple(MODELS)
    config.runs = {name: fields for name, (_, fields) in MODELS.items()}
    config.data.update(name="eight_gaussians")
    config.optim.update(grad_clip=10.0, ema_decay=0.0)
    config.train.update(batch_size=512, num_steps=10_000, log_every=500, checkpoint_every=5_000,
                        keep_checkpoints=1, sample_every=5_000, num_samples=NUM_SAMPLES)
    config.eval.update(batch_size=1000)
    config.sample.update(num=NUM_SAMPLES, batch_size=NUM_SAMPLES)
    config.plot_size = 256  # density pictures are plot_size^2 evaluations of log q
    return variant(config, arg, "flows_toy", smoke=smoke)


def smoke(config):
    config.train.update(num_steps=200, log_every=50, checkpoint_every=100, sample_every=100)
    config.eval.update(num_examples=1000)
    config.plot_size = 64


def model_config(config, toy, model):
    """The config of one run: the model's family at its defaults, the shared sections, the toy and the
    model's own fields from config.runs."""
    if model not in MODELS:
        raise ValueError(f"config.models names an unknown model {model!r}; use some of {tuple(MODELS)}.")
    if toy not in TOYS:
        raise ValueError(f"config.toys names {toy!r}; use some of {TOYS}.")
    cfg = families.default_config(MODELS[model][0])
    cfg.seed = config.seed
    for section in ("data", "train", "optim", "eval", "sample", "parallel"):
        cfg[section].update(config[section])
    cfg.data.name = toy
    for section, fields in config.runs[model].items():
        cfg[section].update(fields)
    return cfg


def _batched(fn, points, size=4096):
    return np.concatenate([np.asarray(fn(points[i:i + size])) for i in range(0, len(points), size)])


def score(config, restored):
    """Test NLL (nats per point) or, for the planar flow, the reverse KL; and the pictures' inputs."""
    method, step, dataset = restored.method, restored.step, restored.dataset
    params, key = restored.state.ema_params, jax.random.fold_in(loop.run_keys(config.seed)[3], step)
    test = {k: jnp.asarray(v[:config.eval.num_examples or None]) for k, v in dataset.test.items()}
    if method.log_prob is None:
        flow = flows.flow_from_config(restored.setup.settings.model, dataset.info)
        x, log_q = jax.jit(lambda p, k: flows.sample_and_log_prob(flow, p, k, HISTOGRAM_SAMPLES, (2,)))(params, key)
        kl = float(jnp.mean(log_q - gm_data.toy_log_density(dataset.info.name, x)))
        return dict(step=int(step), reverse_kl=kl), None, np.asarray(x)
    log_prob = jax.jit(lambda p, b: method.log_prob(p, key, b))
    nll = -float(np.mean(_batched(lambda idx: log_prob(params, {"x": test["x"][idx]}), np.arange(len(test["x"])))))
    density_fn = lambda pts: _batched(lambda chunk: log_prob(params, {"x": jnp.asarray(chunk)}), pts)  # noqa: E731
    return dict(step=int(step), test_nll=nll), density_fn, None


def table(rows):
    lines = ["| toy | model | step | test NLL (nats) | true density's NLL | KL(q || p) (planar) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        nll = f"{r['test_nll']:.3f}" if "test_nll" in r else "-"
        kl = f"{r['reverse_kl']:.3f}" if "reverse_kl" in r else "-"
        lines.append(f"| {r['toy']} | {r['model']} | {r['step']} | {nll} | {r['true_nll']:.3f} | {kl} |")
    return "\n".join(lines) + "\n"


def run_toys(config, workdir, mode="train"):
    """Train (unless mode='eval') and score every (toy, model); writes the table and the plots."""
    runs = {(toy, model): model_config(config, toy, model) for toy in config.toys for model in config.models
            if model != "planar" or toy in gm_data.EVERYWHERE_POSITIVE_TOYS}
    run.prepare_runs(config, workdir, runs.values(), "eval" if mode == "sample" else mode)
    rows = []
    for toy in config.toys:
        test_points = gm_data.load(toy).test["x"][:config.eval.num_examples or None]
        true_nll = -float(np.mean(gm_data.toy_log_density(toy, test_points)))
        save_density(os.path.join(workdir, f"{toy}_true_density.png"),
                     lambda pts: np.asarray(gm_data.toy_log_density(toy, pts)), LIM, config.plot_size)
        for model in config.models:
            if (toy, model) not in runs:
                print(f"{toy} {model}: skipped (reverse KL needs a density positive everywhere)", flush=True)
                continue
            cfg, run_dir = runs[toy, model], os.path.join(workdir, toy, model)
            if mode == "train":
                run.run(cfg, run_dir, "train")
            restored = run.restore(cfg, run_dir)
            result, density_fn, histogram_points = score(config, restored)
            prefix = os.path.join(workdir, f"{toy}_{model}")
            if density_fn is not None:
                save_density(prefix + "_density.png", density_fn, LIM, config.plot_size)
                points = np.asarray(jax.jit(restored.method.sample, static_argnums=2)(
                    restored.state.ema_params, jax.random.key(1), NUM_SAMPLES))
            else:
                save_density_image(prefix + "_density.png",
                                   histogram_log_density(histogram_points, LIM, config.plot_size), config.plot_size)
                points = histogram_points[:NUM_SAMPLES]
            save_scatter(prefix + "_samples.png", points, lim=LIM)
            rows.append(dict(result, toy=toy, model=model, true_nll=true_nll))
            print(f"{toy} {model}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items() if k != "step"), flush=True)
    save_table(workdir, "table", rows, table(rows))
    return rows


if __name__ == "__main__":
    run.main(__file__, runner=run_toys)
