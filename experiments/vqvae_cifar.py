"""VQ-VAE on CIFAR-10 (van den Oord et al. 2017) in two stages, then a causal transformer prior over codes.

    python -m experiments.vqvae_cifar --workdir=runs/vqvae                   # stage 1, then stage 2
    python -m experiments.vqvae_cifar --workdir=runs/vqvae --config.stage=prior
    python -m experiments.vqvae_cifar --workdir=runs/smoke --config=experiments/vqvae_cifar.py:smoke
    python -m experiments.vqvae_cifar --workdir=runs/vqvae --mode=eval
    python -m experiments.vqvae_cifar --workdir=runs/vqvae --mode=sample     # prior -> codes -> decoder

Stage 1 trains the VQ-VAE in WORKDIR/vqvae (config.model, config.optim, config.train) and writes test
reconstructions next to its samples; stage 2 loads stage 1's newest checkpoint and trains the prior in
WORKDIR/prior (config.prior, config.prior_optim, config.prior_train). Each stage checkpoints and
resumes on its own; config.stage = 'both' (the default) runs whichever stages are not finished.

Defaults follow the paper's CIFAR-10 model: two stride-2 4x4 convolutions and two residual blocks of
256 channels each way, an 8x8 grid of K = 512 codes of dimension 64, commitment 0.25, Adam at 2e-4,
batch 128, 250k steps; the codebook follows EMAs (decay 0.99) and dead codes restart. The decoder is
trained with squared error on images in [-1, 1]. --mode=eval reports the test reconstruction error, PSNR,
codebook perplexity and use (stage 1) and the prior's test NLL in bits per code (stage 2).
"""
import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from gm import data as gm_data
from gm import autoregressive, parallel, vqvae
from gm.data import Dataset
from gm.train import loop, run
from gm.train import state as state_lib
from gm.train.evaluators import eval_config

STAGES = ("both", "vqvae", "prior")


def get_config(arg=None):
    """CIFAR-10; arg='smoke' is a tiny offline variant on the 4-bit 8x8 digits (a 4x4 grid of 16 codes)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.stage = "both"
    config.data = dict(name="cifar10", data_dir="", manual_dir="", random_flip=False)
    config.model = dict(name="vqvae", num_codes=512, code_dim=64, channels=(256, 256), num_res_blocks=2,
                        res_hidden=256, commitment=0.25, codebook="ema", codebook_decay=0.99,
                        restart_threshold=0.03)
    # A parameter EMA of a codebook that is itself an EMA (and restarts) would mix codes; stage 1 keeps
    # ema_decay = 0, so its "EMA params" are the params.
    config.optim = dict(learning_rate=2e-4, warmup_steps=0, grad_clip=0.0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, lr_decay=1.0, ema_decay=0.0)
    config.train = dict(batch_size=128, num_steps=250_000, log_every=100, checkpoint_every=10_000,
                        keep_checkpoints=3, sample_every=25_000, num_samples=64, on_nonfinite="stop",
                        steps_per_call=1)
    # The prior: any autoregressive model of gm.autoregressive over the code grid (vocabulary 2^ceil(log2 K)).
    config.prior = dict(
        name="transformer", class_conditional=False, dtype="float32",
        # attention_block: queries attended at a time (memory O(block T) per layer, the same numbers).
        transformer=dict(num_layers=8, num_heads=8, embed_dim=256, mlp_ratio=4, dropout=0.1, attention_block=512),
        gated_pixelcnn=dict(features=120, num_layers=15, first_kernel=7, kernel=3, out_hidden=1024),
        pixelcnn=dict(features=256, num_layers=15, first_kernel=7, kernel=3, out_hidden=1024))
    config.prior_optim = dict(learning_rate=3e-4, warmup_steps=1000, grad_clip=1.0, b1=0.9, b2=0.99, eps=1e-8,
                              weight_decay=0.0, lr_decay=1.0, ema_decay=0.999)
    config.prior_train = dict(batch_size=128, num_steps=200_000, log_every=100, checkpoint_every=10_000,
                              keep_checkpoints=3, sample_every=25_000, num_samples=64, on_nonfinite="stop",
                              steps_per_call=1)
    config.eval = eval_config()
    config.sample = dict(num=64, batch_size=64)
    config.parallel = parallel.parallel_config()
    if arg == "smoke":
        config.data.update(name="digits")
        config.model.update(num_codes=16, code_dim=8, channels=(32,), num_res_blocks=1, res_hidden=16)
        config.optim.update(learning_rate=2e-3)
        config.train.update(batch_size=32, num_steps=300, log_every=50, checkpoint_every=150,
                            sample_every=150, num_samples=16)
        config.prior.transformer.update(num_layers=2, num_heads=2, embed_dim=32, dropout=0.0)
        config.prior.gated_pixelcnn.update(features=12, num_layers=3, out_hidden=64)
        config.prior.pixelcnn.update(features=32, num_layers=2, out_hidden=64)
        config.prior_optim.update(learning_rate=2e-3, warmup_steps=0, ema_decay=0.99)
        config.prior_train.update(batch_size=32, num_steps=300, log_every=50, checkpoint_every=150,
                                  sample_every=150, num_samples=16)
        config.eval.update(batch_size=120)
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r} for vqvae_cifar; use 'smoke' or nothing.")
    return config


def prior_config(config):
    """The config the trainer sees in stage 2: config.prior_optim and config.prior_train as optim, train."""
    stage2 = config.copy_and_resolve_references()
    with stage2.unlocked():
        stage2.optim, stage2.train = stage2.prior_optim, stage2.prior_train
    return stage2


def stage_dirs(workdir):
    return os.path.join(workdir, "vqvae"), os.path.join(workdir, "prior")


def write_reconstructions(config, vq_dir, vq_params, dataset, step, num=32):
    """The first `num` test images above their reconstructions, as one PNG; returns its path."""
    vq, _ = vqvae.vqvae_from_config(config.model, dataset.info)
    originals = dataset.test["image"][:num]
    recon = jax.jit(lambda p, x: vqvae.reconstruct(vq, p, x, dataset.info.num_bits))(vq_params, originals)
    path = os.path.join(vq_dir, "samples", f"reconstructions_step_{step:08d}.png")
    if parallel.process_index() == 0:
        loop.write_reconstructions(path, originals, np.asarray(recon).astype(np.uint8), dataset.info.num_bits)
    return path


def load_vqvae(config, vq_dir, dataset):
    """Stage 1's newest (EMA) params and step; one sentence when stage 1 has not been trained."""
    state, step = run.restore_latest(config, vq_dir, vqvae.make(config, dataset.info), dataset)
    return state.ema_params, step


def _prior_method(config, vq_dir, dataset):
    vq_params, _ = load_vqvae(config, vq_dir, dataset)
    return vqvae.make_prior(prior_config(config), dataset.info, config, vq_params)


def evaluate(config, workdir, dataset):
    """Stage 1's reconstruction and codebook numbers, and stage 2's test bits per code when trained."""
    vq_dir, prior_dir = stage_dirs(workdir)
    parallel.check_batch_size(config.eval.batch_size, "config.eval.batch_size")
    vq_params, step = load_vqvae(config, vq_dir, dataset)
    vq, _ = vqvae.vqvae_from_config(config.model, dataset.info)
    limit = config.eval.get("num_examples") or None
    n = min(limit or dataset.info.num_test, dataset.info.num_test)
    batches = gm_data.eval_batches(dataset, batch_size=config.eval.batch_size, split="test", limit=limit,
                                   process_index=parallel.process_index(), process_count=parallel.process_count())
    result = vqvae.evaluate_reconstruction(vq, vq_params, batches, dataset.info.num_bits,
                                           num_batches=-(-n // config.eval.batch_size))
    result["step"] = step
    if parallel.process_index() == 0:
        with open(os.path.join(vq_dir, f"eval_step_{step}.json"), "w") as f:
            json.dump(result, f, indent=2)
    print(f"stage 1, step {step}: test recon MSE {result['recon_mse']:.5f} ([-1, 1] units), PSNR "
          f"{result['psnr_db']:.2f} dB, codebook perplexity {result['perplexity']:.1f} of {vq.num_codes}, "
          f"{100 * result['codes_used']:.0f}% of codes used ({result['num_examples']} examples)")
    results = {"vqvae": result}
    write_reconstructions(config, vq_dir, vq_params, dataset, step)
    if os.path.isdir(os.path.join(prior_dir, "checkpoints")):
        # Bits per code: the prior's exact log p(codes) over the h w cells of the grid.
        codes = Dataset(vqvae.code_info(vq, dataset.info), dataset.train, dataset.test)
        method = vqvae.make_prior(prior_config(config), dataset.info, config, vq_params)
        results["prior"] = run.evaluate(prior_config(config), prior_dir, method, codes, name="bits_per_code")
    return results


def run_vqvae(config, workdir, make_method=None, mode="train"):
    """Train the stages config.stage names, sample from the prior, or evaluate (see the module doc)."""
    del make_method  # the two stages build their own Methods
    if config.stage not in STAGES:
        raise ValueError(f"config.stage must be one of {STAGES}, got {config.stage!r}.")
    dataset = run.prepare(config, workdir, mode)
    vq_dir, prior_dir = stage_dirs(workdir)
    if mode == "eval":
        return evaluate(config, workdir, dataset)
    if mode == "sample":
        return run.sample_to_files(prior_config(config), prior_dir, _prior_method(config, vq_dir, dataset), dataset)
    if config.stage in ("both", "prior"):
        # Stage 2's own sections, under their own names, before stage 1 spends any time.
        loop.check_train_config(config, train="prior_train", optim="prior_optim")
        state_lib.optimizer_from_config(config.prior_optim, field="config.prior_optim")
        vq, _ = vqvae.vqvae_from_config(config.model, dataset.info)
        autoregressive.model_from_config(config.prior, vqvae.code_info(vq, dataset.info), field="config.prior")
    if config.stage in ("both", "vqvae"):
        state = loop.train_and_evaluate(config, vq_dir, vqvae.make(config, dataset.info), dataset)
        path = write_reconstructions(config, vq_dir, state.ema_params, dataset, int(state.step))
        logging.info("Stage 1 done: reconstructions in %s", path)
    if config.stage in ("both", "prior"):
        return loop.train_and_evaluate(prior_config(config), prior_dir, _prior_method(config, vq_dir, dataset),
                                       dataset)
    return state


if __name__ == "__main__":
    run.main(__file__, None, runner=run_vqvae)
