"""A VAE on binarized MNIST, as in the IWAE paper's one-stochastic-layer model (Burda et al. 2016).

    python -m experiments.vae_mnist --workdir=runs/vae_mnist
    python -m experiments.vae_mnist --workdir=runs/smoke --config=experiments/vae_mnist.py:smoke
    python -m experiments.vae_mnist --workdir=runs/vae_mnist --mode=eval     # ELBO and IWAE-5000

Defaults: an MLP encoder and decoder with two tanh layers of 200 units, 50 latent dimensions, a
Bernoulli decoder on stochastically binarized images, Adam (lr 1e-3, eps 1e-4), batch 20. Burda et al.
report a test NLL of about 86.8 nats for this model trained with K = 1 and scored with K = 5000.
--mode=eval reports two bounds on the test split: the ELBO (K = 1) and IWAE-K with
K = config.eval.num_importance, both in nats and bits/dim, and writes eval_step_N_elbo.json and
eval_step_N_iwaeK.json. Other likelihoods (--config.model.likelihood=logistic|gaussian), a
convolutional network (--config.model.arch=conv), beta and the Monte Carlo KL are config fields.
"""
import os

import jax
import ml_collections
import numpy as np

from gm import distributions as dist
from gm import parallel, vae
from gm.train import loop, run
from gm.train.evaluators import eval_config


def get_config(arg=None):
    """Binarized MNIST; arg='smoke' is a tiny offline variant on binarized 8x8 digits."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = dict(name="mnist", data_dir="", manual_dir="", random_flip=False)
    config.model = dict(
        name="vae", latent_dim=50, arch="mlp", hidden=(200, 200), activation="tanh",
        channels=(32, 64), num_res_blocks=1, res_hidden=32,  # arch='conv' only
        likelihood="bernoulli", binarize="stochastic", num_mix=5,  # num_mix: likelihood='logistic' only
        kl="analytic", beta=1.0, class_conditional=False,
        sample_mean=True)  # sample grids show p(x | z)'s mean, the usual VAE picture
    config.optim = dict(learning_rate=1e-3, warmup_steps=0, grad_clip=0.0, b1=0.9, b2=0.999, eps=1e-4,
                        weight_decay=0.0, lr_decay=1.0, ema_decay=0.999)
    config.train = dict(batch_size=20, num_steps=1_000_000, log_every=500, checkpoint_every=20_000,
                        keep_checkpoints=3, sample_every=20_000, num_samples=64, on_nonfinite="stop",
                        steps_per_call=1)
    # num_importance: K of the IWAE bound; drawn importance_chunk at a time.
    config.eval = eval_config()
    config.eval.update(num_importance=5000, importance_chunk=250)
    config.sample = dict(num=64, batch_size=64)
    config.parallel = parallel.parallel_config()
    if arg == "smoke":
        config.data.update(name="digits")
        config.model.update(latent_dim=8, hidden=(64,), channels=(16, 32), res_hidden=16)
        config.optim.update(learning_rate=3e-3, ema_decay=0.99)
        config.train.update(batch_size=32, num_steps=300, log_every=50, checkpoint_every=150,
                            sample_every=150, num_samples=16)
        config.eval.update(batch_size=120, num_importance=500, importance_chunk=250)
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r} for vae_mnist; use 'smoke' or nothing.")
    return config


def write_reconstructions(config, workdir, params, dataset, step, num=32):
    """The first `num` test images (binarized with the evaluation key for a Bernoulli decoder) above the
    decoder's mean at their encodings, as one PNG; returns its path."""
    model, _ = vae.vae_from_config(config.model, dataset.info)
    data = model.observe(loop.run_keys(config.seed)[3], dataset.test["image"][:num])
    y = dataset.test["label"][:num] if config.model.class_conditional else None
    recon = jax.jit(lambda p, x, y: vae.reconstruct(model, p, x, y))(params, data, y)
    if config.model.likelihood == "bernoulli":  # 0/1 -> the top level, for display
        data = data * (dist.num_levels(dataset.info.num_bits) - 1)
    path = os.path.join(workdir, "samples", f"reconstructions_step_{step:08d}.png")
    if parallel.process_index() == 0:
        loop.write_reconstructions(path, np.asarray(data).astype(np.uint8), np.asarray(recon).astype(np.uint8),
                                   dataset.info.num_bits)
    return path


def run_vae(config, workdir, make_method, mode="train"):
    """Like `run.run`, but training ends with a reconstruction grid and --mode=eval reports the ELBO
    and the IWAE bound (and writes the grid too)."""
    if mode == "sample":
        return run.run(config, workdir, make_method, mode)
    dataset = run.prepare(config, workdir, mode)
    if mode == "train":
        state = loop.train_and_evaluate(config, workdir, make_method(config, dataset.info), dataset)
        write_reconstructions(config, workdir, state.ema_params, dataset, int(state.step))
        return state
    results = {}
    for k in sorted({1, config.eval.num_importance}):
        variant = config.copy_and_resolve_references()
        with variant.unlocked():
            variant.eval.num_importance = k
        name = "elbo" if k == 1 else f"iwae{k}"
        results[name] = run.evaluate(variant, workdir, make_method(variant, dataset.info), dataset, name=name)
    state, step = run.restore_latest(config, workdir, make_method(config, dataset.info), dataset)
    write_reconstructions(config, workdir, state.ema_params, dataset, step)
    return results


if __name__ == "__main__":
    run.main(__file__, vae.make, runner=run_vae)
