"""A VAE on binarized MNIST, as in the IWAE paper's one-stochastic-layer model (Burda et al. 2016).

    python -m experiments.vae_mnist --workdir=runs/vae_mnist
    python -m experiments.vae_mnist --workdir=runs/smoke --config=experiments/vae_mnist.py:smoke
    python -m experiments.vae_mnist --workdir=runs/vae_mnist --mode=eval     # ELBO and IWAE-5000

The family's defaults are this model (`gm.vae.VAEConfig`): an MLP encoder and decoder with two tanh
layers of 200 units, 50 latent dimensions, a Bernoulli decoder on stochastically binarized images;
trained with Adam (lr 1e-3, eps 1e-4), batch 20. Burda et al. report a test NLL of about 86.8 nats for
this model trained with K = 1 and scored with K = 5000. --mode=eval reports two bounds on the test
split, the ELBO (K = 1) and IWAE-K with K = config.model.num_importance, both in nats and bits/dim
(eval_step_N_elbo.json and eval_step_N_iwaeK.json), the test reconstruction error, and a grid of test
reconstructions. Other likelihoods (--config.model.likelihood=logistic|gaussian), a convolutional
network (--config.model.arch=conv), beta and the Monte Carlo KL are config fields.
"""
from gm import families
from gm.config import offline_smoke, variant
from gm.train import run


def get_config(arg=None):
    """Binarized MNIST; arg='smoke' is a tiny offline variant on binarized 8x8 digits."""
    config = families.default_config("vae")
    config.data.update(name="mnist")
    config.optim.update(eps=1e-4)
    config.train.update(batch_size=20, num_steps=1_000_000, log_every=500, checkpoint_every=20_000,
                        sample_every=20_000)
    config.eval.update(metrics=("bpd", "recon"))
    return variant(config, arg, "vae_mnist", smoke=smoke)


def smoke(config):
    offline_smoke(config)
    config.model.update(latent_dim=8, hidden=(64,), channels=(16, 32), res_hidden=16, num_importance=500)
    config.optim.update(learning_rate=3e-3)
    config.train.update(num_steps=300, log_every=50, checkpoint_every=150, sample_every=150)


def run_vae(config, workdir, mode="train"):
    """Like `run.run`, but --mode=eval reports both bounds: the ELBO (K = 1) and IWAE-K."""
    if mode != "eval":
        return run.run(config, workdir, mode)
    elbo = config.copy_and_resolve_references()
    elbo.model.num_importance = 1
    elbo.eval.metrics = ("bpd",)  # the reconstruction is measured once, with the IWAE run
    results = {"elbo": run.run(elbo, workdir, "eval", eval_name="elbo")}
    k = config.model.num_importance
    if k > 1:
        results[f"iwae{k}"] = run.run(config, workdir, "eval", eval_name=f"iwae{k}")
    return results


if __name__ == "__main__":
    run.main(__file__, runner=run_vae)
