"""Bad input gets one clear sentence, never a silent NaN or a traceback from deep inside JAX.

Property-based tests (hypothesis) draw shapes, dtypes and ranges for the public functions; a table
drives bad config values, unknown datasets, batch sizes the devices do not divide, a checkpoint of
another shape and an unwritable workdir through the trainer, each stopping before any training."""
import os

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gm import checks, families
from gm.config import positive_entries
from gm import data as gm_data
from gm import distributions as dist
from gm.diffusion import process, schedule
from gm.metrics import fid
from gm.train import run as run_lib
from gm.train.logging import image_grid

# Each example is a handful of tiny eager ops: no deadline (the first call compiles them). Examples that
# draw new array shapes compile again each time, so those properties take fewer.
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = settings(PROPERTY, max_examples=15)


def one_sentence(error):
    text = str(error)
    return "\n" not in text and text.rstrip().endswith(".")


# --- the public functions ------------------------------------------------------------------------------

@SHAPES
@given(num_bits=st.integers(1, 8), data=st.data())
def test_level_scalings_accept_every_level_and_stay_in_range(num_bits, data):
    top = 2 ** num_bits - 1
    levels = data.draw(hnp.arrays(np.uint8 if num_bits <= 8 else np.int32, hnp.array_shapes(max_dims=4, max_side=5),
                                  elements=st.integers(0, top)))
    x = dist.levels_to_symmetric(levels, num_bits)
    assert x.dtype == jnp.float32 and bool(jnp.all(jnp.abs(x) <= 1.0 + 1e-6))
    np.testing.assert_array_equal(dist.symmetric_to_levels(x, num_bits), levels)
    y = dist.uniform_dequantize(jax.random.key(0), levels, num_bits)
    assert bool(jnp.all((y >= 0) & (y < 1)))
    np.testing.assert_array_equal(dist.dequantized_to_levels(y, num_bits), levels)


@PROPERTY
@given(num_bits=st.integers(1, 8), excess=st.integers(1, 1000), negative=st.booleans())
def test_levels_outside_the_bit_depth_are_refused(num_bits, excess, negative):
    top = 2 ** num_bits - 1
    levels = np.array([0, -excess if negative else top + excess], np.int32)
    for fn in (lambda: dist.levels_to_symmetric(levels, num_bits),
               lambda: dist.uniform_dequantize(jax.random.key(0), levels, num_bits),
               lambda: dist.binarize(jax.random.key(0), levels, num_bits)):
        with pytest.raises(ValueError, match=rf"levels must lie in \[0, {top}\]") as error:
            fn()
        assert one_sentence(error.value)


@PROPERTY
@given(num_bits=st.one_of(st.integers(-3, 0), st.integers(17, 64), st.floats(0.5, 8.5).filter(lambda v: v != int(v))))
def test_a_bad_bit_depth_is_refused_by_every_function_that_takes_one(num_bits):
    x = jnp.zeros((2, 3))
    for fn in (lambda: dist.num_levels(num_bits), lambda: dist.levels_to_symmetric(x, num_bits),
               lambda: dist.discretized_gaussian_log_prob(x, x, x, num_bits)):
        with pytest.raises(ValueError, match="num_bits must be an integer in \\[1, 16\\]"):
            fn()


@PROPERTY
@given(nll=hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=4), elements=st.floats(0, 1e4, width=32)),
       num_dims=st.integers(1, 4096))
def test_bits_per_dim_is_nats_over_d_ln2_and_refuses_a_bad_dimension(nll, num_dims):
    # atol: a float32 NLL near the smallest normal number divides into the subnormals.
    np.testing.assert_allclose(dist.bits_per_dim(nll, num_dims), nll / (num_dims * np.log(2)), rtol=1e-6,
                               atol=1e-37)
    for bad in (0, -num_dims, float(num_dims) + 0.5):
        with pytest.raises(ValueError, match="num_dims must be a positive integer"):
            dist.bits_per_dim(nll, bad)


@SHAPES
@given(num_bits=st.integers(1, 8), num_mix=st.integers(1, 4), channels=st.sampled_from([1, 3]),
       scale=st.floats(0.0, 50.0), seed=st.integers(0, 2 ** 16))
def test_the_logistic_mixture_is_a_finite_log_probability_for_any_parameters(num_bits, num_mix, channels, scale, seed):
    """Raw network outputs anywhere from 0 to +-50 (log-scales from far below to far above a bin)
    never give NaN or a positive log-probability."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = scale * jax.random.normal(k1, (2, 3, dist.dlm_num_params(channels, num_mix)))
    levels = jax.random.randint(k2, (2, 3, channels), 0, 2 ** num_bits)
    log_p = dist.discretized_logistic_mixture_log_prob(dist.levels_to_symmetric(levels, num_bits), params, num_bits)
    assert log_p.shape == (2, 3) and bool(jnp.all(jnp.isfinite(log_p))) and bool(jnp.all(log_p <= 1e-5))


@SHAPES
@given(leading=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), other=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
def test_mixture_parameters_of_another_shape_are_one_sentence(leading, other):
    x = jnp.zeros(leading + (3,))
    params = jnp.zeros(other + (dist.dlm_num_params(3, 2),))
    if leading == other:
        assert dist.discretized_logistic_mixture_log_prob(x, params, 8).shape == leading
    else:
        with pytest.raises(ValueError, match="params' leading axes must be") as error:
            dist.discretized_logistic_mixture_log_prob(x, params, 8)
        assert one_sentence(error.value)


@PROPERTY
@given(batch=st.integers(1, 4), classes=st.integers(2, 6), bad=st.integers(-5, 12))
def test_categorical_log_prob_refuses_classes_it_does_not_have(batch, classes, bad):
    logits = jnp.zeros((batch, classes))
    x = np.zeros(batch, np.int32)
    x[0] = bad
    if 0 <= bad < classes:
        np.testing.assert_allclose(dist.categorical_log_prob(logits, x), -np.log(classes), rtol=1e-6)
    else:
        with pytest.raises(ValueError, match=rf"x must lie in \[0, {classes - 1}\]"):
            dist.categorical_log_prob(logits, x)
    with pytest.raises(ValueError, match=r"x must have shape"):
        dist.categorical_log_prob(logits, np.zeros(batch + 1, np.int32))


@SHAPES
@given(shape=hnp.array_shapes(max_dims=3, max_side=4), value=st.sampled_from([-1.0, 0.5, 2.0, np.nan]))
def test_bernoulli_log_prob_takes_only_zeros_and_ones(shape, value):
    logits = jnp.zeros(shape)
    x = np.ones(shape, np.float32)
    np.testing.assert_allclose(dist.bernoulli_log_prob(logits, x), -np.log(2.0), rtol=1e-6)
    x.flat[0] = value
    if value == 0.5:  # inside [0, 1]: a soft target is allowed
        assert bool(jnp.all(jnp.isfinite(dist.bernoulli_log_prob(logits, x))))
    else:
        with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
            dist.bernoulli_log_prob(logits, x)


@PROPERTY
@given(num_timesteps=st.integers(1, 50), t=st.integers(-3, 60), batch=st.integers(1, 4))
def test_q_sample_refuses_timesteps_outside_the_chain_and_mismatched_noise(num_timesteps, t, batch):
    sched = schedule.make_schedule(schedule.cosine_betas(num_timesteps))
    x0 = jnp.zeros((batch, 2, 2, 1))
    ts = jnp.full((batch,), t, jnp.int32)
    if 0 <= t < num_timesteps:
        assert bool(jnp.all(jnp.isfinite(process.q_sample(sched, x0, ts, jnp.ones_like(x0)))))
    else:
        with pytest.raises(ValueError, match=rf"t must lie in \[0, {num_timesteps - 1}\]"):
            process.q_sample(sched, x0, ts, jnp.ones_like(x0))
    with pytest.raises(ValueError, match="noise must have shape"):
        process.q_sample(sched, x0, jnp.zeros((batch,), jnp.int32), jnp.ones((batch + 1, 2, 2, 1)))
    with pytest.raises(ValueError, match="t must have shape"):
        process.q_sample(sched, x0, jnp.zeros((batch + 1,), jnp.int32), jnp.ones_like(x0))


@PROPERTY
@given(betas=hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-1.0, 2.0)))
def test_a_schedule_takes_only_betas_in_0_1(betas):
    """Betas so small that 1 - beta is 1 in float64 once gave a NaN posterior: now they are refused."""
    if np.all((betas >= schedule.MIN_BETA) & (betas < 1)):
        sched = schedule.make_schedule(betas)
        assert all(bool(jnp.all(jnp.isfinite(v))) for v in sched)
    else:
        with pytest.raises(ValueError, match=r"betas must lie in \[1e-10, 1\), got values in"):
            schedule.make_schedule(betas)


@PROPERTY
@given(step=st.integers(-5, 10 ** 6), batch_size=st.integers(-4, 64))
def test_train_batch_is_a_pure_function_of_the_step_or_a_clear_error(step, batch_size):
    ds = gm_data.load("digits")
    if step < 0 or batch_size <= 0:
        with pytest.raises(gm_data.DataError) as error:
            gm_data.train_batch(ds, step=step, batch_size=batch_size, seed=0)
        assert one_sentence(error.value)
        return
    a = gm_data.train_batch(ds, step=step, batch_size=batch_size, seed=0)
    b = gm_data.train_batch(ds, step=step, batch_size=batch_size, seed=0)
    assert a["image"].shape == (batch_size, 8, 8, 1) and a["image"].dtype == np.uint8 and a["image"].max() <= 15
    np.testing.assert_array_equal(a["image"], b["image"])


@PROPERTY
@given(images=hnp.arrays(st.sampled_from([np.uint8, np.float32, np.int32]),
                         hnp.array_shapes(min_dims=2, max_dims=5, max_side=4)))
def test_image_grid_takes_uint8_nhwc_only(images):
    if images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[0] > 0:
        assert image_grid(images).dtype == np.uint8
    elif images.dtype != np.uint8 or images.ndim != 4:
        with pytest.raises(ValueError, match=r"image_grid expects uint8 \[N, H, W, C\]"):
            image_grid(images)


@PROPERTY
@given(dim=st.integers(1, 6), other=st.integers(1, 6), poison=st.sampled_from([None, np.nan, np.inf]))
def test_frechet_distance_refuses_mismatched_or_non_finite_statistics(dim, other, poison):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(50, dim))
    mu, sigma = a.mean(0), np.cov(a, rowvar=False).reshape(dim, dim)
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-5)
    if other != dim:
        with pytest.raises(ValueError, match="Statistics of different sizes"):
            fid.frechet_distance(mu, sigma, np.zeros(other), np.eye(other))
    if poison is not None:
        bad = mu.copy()
        bad[0] = poison
        with pytest.raises(ValueError, match="not finite"):
            fid.frechet_distance(bad, sigma, mu, sigma)


def test_the_checks_name_the_field_and_say_what_it_takes():
    with pytest.raises(ValueError, match=r"^config\.model\.dropout must be a number in \[0\.0, 1\.0\), got 1\.5\.$"):
        checks.number_in(1.5, "config.model.dropout", 0.0, 1.0)
    with pytest.raises(ValueError, match=r"^config\.model\.hidden must be a tuple of positive integers, got \(8, 0\)\.$"):
        positive_entries((8, 0), "config.model.hidden")
    with pytest.raises(ValueError, match=r"must be a number in .*got nan"):
        checks.number_in(float("nan"), "config.optim.b1", 0.0, 1.0)
    with pytest.raises(ValueError, match="a positive integer, got True"):
        checks.positive_int(True, "config.train.log_every")


# --- the trainer: bad configs stop before any training ---------------------------------------------------

BAD_CONFIGS = [
    # shared fields
    ("ddpm_cifar", {"data.name": "imagenet64"}, "config.data.name"),
    ("ddpm_cifar", {"data.name": "digit_strokes"}, "does not model domains; config.data.name='digit_strokes'"),
    ("ddpm_cifar", {"train.batch_size": 12}, "config.train.batch_size=12 must be a positive multiple of the 8"),
    ("ddpm_cifar", {"train.batch_size": 0}, "config.train.batch_size"),
    ("vae_mnist", {"train.batch_size": 20}, "config.train.batch_size"),
    ("ddpm_cifar", {"seed": -1}, "config.seed"),
    ("ddpm_cifar", {"train.num_steps": -1}, "config.train.num_steps"),
    ("ddpm_cifar", {"train.log_every": 0}, "config.train.log_every"),
    ("ddpm_cifar", {"train.checkpoint_every": 0}, "config.train.checkpoint_every"),
    ("ddpm_cifar", {"train.keep_checkpoints": 0}, "config.train.keep_checkpoints"),
    ("ddpm_cifar", {"train.num_samples": 0}, "config.train.num_samples"),
    ("ddpm_cifar", {"train.on_nonfinite": "ignore"}, "config.train.on_nonfinite"),
    ("ddpm_cifar", {"optim.learning_rate": -1.0}, "config.optim.learning_rate"),
    ("ddpm_cifar", {"optim.warmup_steps": -1}, "config.optim.warmup_steps"),
    ("ddpm_cifar", {"optim.grad_clip": -1.0}, "config.optim.grad_clip"),
    ("ddpm_cifar", {"optim.b1": 1.5}, "config.optim.b1"),
    ("ddpm_cifar", {"optim.b2": -0.1}, "config.optim.b2"),
    ("ddpm_cifar", {"optim.weight_decay": -0.1}, "config.optim.weight_decay"),
    ("ddpm_cifar", {"optim.ema_decay": 1.0}, "config.optim.ema_decay"),
    ("gan_cifar", {"optim_d.b1": 1.0}, "config.optim_d.b1"),
    ("ddpm_cifar", {"parallel.strategy": "horovod"}, "config.parallel.strategy"),
    ("ddpm_cifar", {"eval.every": -1}, "config.eval.every"),
    ("ddpm_cifar", {"eval.metrics": ("nope",)}, "config.eval.metrics"),
    # diffusion and its UNet
    # WaveNet
    ("wavenet_sc09", {"model.max_dilation": 100}, "config.model.max_dilation"),
    ("wavenet_sc09", {"model.output": "gaussian"}, "config.model.output"),
    ("wavenet_sc09", {"model.condition": "text"}, "config.model.condition"),
    ("wavenet_sc09", {"data.name": "digits"}, "config.data.name"),
    ("ddpm_cifar", {"diffusion.schedule": "quadratic"}, "config.diffusion.schedule"),
    ("ddpm_cifar", {"diffusion.num_timesteps": 0}, "config.diffusion.num_timesteps"),
    ("ddpm_cifar", {"diffusion.beta_end": 2.0}, "config.diffusion.beta_end"),
    ("ddpm_cifar", {"diffusion.beta_start": 0.0}, "config.diffusion.beta_start"),
    ("ddpm_cifar", {"diffusion.var_type": "learned"}, "config.diffusion.var_type"),
    ("ddpm_cifar", {"diffusion.ddim_eta": -1.0}, "config.diffusion.ddim_eta"),
    ("ddpm_cifar", {"diffusion.sampler": "ddim", "diffusion.ddim_steps": 0}, "config.diffusion.ddim_steps"),
    ("improved_ddpm_cifar", {"diffusion.sample_steps": 1000}, "config.diffusion.sample_steps"),
    ("ddpm_cifar", {"model.ch": 0}, "config.model.ch"),
    ("ddpm_cifar", {"model.ch_mult": ()}, "config.model.ch_mult"),
    ("ddpm_cifar", {"model.ch_mult": (1, 2, 2, 2, 2)}, "config.model.ch_mult"),
    ("ddpm_cifar", {"model.num_res_blocks": -1}, "config.model.num_res_blocks"),
    ("ddpm_cifar", {"model.dropout": 1.5}, "config.model.dropout"),
    ("ddpm_cifar", {"model.dtype": "float8"}, "config.model.dtype"),
    ("ddpm_cifar", {"model.attn_resolutions": (3,)}, "config.model.attn_resolutions"),
    ("improved_ddpm_cifar", {"model.num_heads": 3}, "config.model.num_heads"),
    ("flow_matching_cifar", {"model.ch_mult": (1, -2)}, "config.model.ch_mult"),
    ("score_sde_cifar", {"sde.name": "vpsde"}, "config.sde.name"),
    ("score_sde_cifar", {"sde.beta_max": 0.05}, "config.sde.beta_min"),
    ("score_sde_cifar", {"sde.predictor": "none"}, "config.sde.predictor and config.sde.corrector are both 'none'"),
    ("score_sde_cifar", {"sde.solver.schedule": "timesteps"}, "config.sde.solver.schedule='timesteps'"),
    ("score_sde_cifar", {"sde.solver.order": 4}, "config.sde.solver.order"),
    ("edm_cifar", {"edm.sampler": "dpm_solver"}, "config.edm.sampler"),
    ("vdm_cifar", {"vdm.gamma_type": "learned"}, "config.vdm.gamma_type"),
    ("vdm_cifar", {"vdm.gamma_min": 6.0}, "config.vdm.gamma_min"),
    ("vdm_cifar", {"vdm.solver.schedule": "timesteps"}, "config.vdm.solver.schedule='timesteps'"),
    ("edm_cifar", {"edm.solver.sigma_min": 100.0}, "config.edm.solver.sigma_min"),
    ("edm_cifar", {"edm.p_std": 0.0}, "config.edm.p_std"),
    ("ddpm_cifar", {"diffusion.sampler": "dpm_solver++", "diffusion.solver.steps": 2000},
     "config.diffusion.solver.steps"),
    ("flow_matching_cifar", {"flow_matching.solver": "rk45"}, "config.flow_matching.solver"),
    ("flow_matching_cifar", {"flow_matching.num_steps": 0}, "config.flow_matching.num_steps"),
    # the other families
    ("vae_mnist", {"model.likelihood": "poisson"}, "config.model.likelihood"),
    ("vae_mnist", {"model.hidden": (64, -1)}, "config.model.hidden"),
    ("vae_mnist", {"model.latent_dim": 0}, "config.model.latent_dim"),
    ("gan_cifar", {"gan.loss": "lsgan"}, "config.gan.loss"),
    ("gan_cifar", {"gan.d_steps": 0}, "config.gan.d_steps"),
    ("gan_cifar", {"gan.clip": -0.1}, "config.gan.clip"),
    ("gan_cifar", {"model.latent_dim": 0}, "config.model.latent_dim"),
    ("gan_cifar", {"model.d_norm": "spectral"}, "config.model.d_norm"),
    ("glow_cifar", {"model.depth": 0}, "config.model.depth"),
    ("realnvp_cifar", {"model.hidden": -1}, "config.model.hidden"),
    ("realnvp_cifar", {"model.alpha": 0.5}, "config.model.alpha"),
    ("realnvp_cifar", {"flow.temperature": 0.0}, "config.flow.temperature"),
    ("pixelcnn_cifar", {"model.name": "wavenet"}, "config.model.name"),
    ("pixelcnn_cifar", {"model.pixelcnn_pp.nr_logistic_mix": 0}, "config.model.pixelcnn_pp.nr_logistic_mix"),
    ("pixelcnn_cifar", {"model.pixelcnn_pp.sampler": "fast"}, "config.model.pixelcnn_pp.sampler"),
    ("nade_mnist", {"model.nade.num_hidden": 0}, "config.model.nade.num_hidden"),
    ("vqvae_cifar", {"model.num_codes": 1}, "config.model.num_codes"),
    ("vqvae_cifar", {"model.codebook_decay": 1.0}, "config.model.codebook_decay"),
    ("vqvae_cifar", {"model.commitment": -1.0}, "config.model.commitment"),
    ("gpt_text", {"data.tokenizer": "words"}, "config.data.tokenizer"),
    ("gpt_text", {"data.name": "digits"}, "config.data.name"),
    ("gpt_text", {"model.positions": "alibi"}, "config.model.positions"),
    ("gpt_text", {"sampling.top_p": 0.0}, "config.sampling.top_p"),
    ("gpt_text", {"sampling.prompt": "x" * 100}, "config.sampling.prompt"),
    ("gpt_text", {"train.micro_batches": 3}, "config.train.micro_batches"),
    ("gpt_text", {"optim.weight_decay_on": "biases"}, "config.optim.weight_decay_on"),
    ("dalle_digits", {"data.name": "ring8"}, "config.data.name"),
    ("dalle_digits", {"prior.text_len": 4}, "config.prior.text_len"),
    ("dalle_digits", {"prior.prompts": ("a digit written very large and very slowly",)}, "config.prior.prompts"),
    ("dalle_digits", {"prior.prompt_template": "a {colour} digit"}, "config.prior.prompt_template"),
    ("dalle_digits", {"prior.candidates": 0}, "config.prior.candidates"),
    ("dalle_digits", {"prior.text_loss_weight": 1.5}, "config.prior.text_loss_weight"),
    ("stylegan2_cifar", {"data.name": "ring8"}, "StyleGAN2 models images; config.data.name='ring8'"),
    ("stylegan2_cifar", {"model.mbstd_group_size": 3}, "config.model.mbstd_group_size must be a divisor of"),
    ("stylegan2_cifar", {"model.d_architecture": "skip"}, "config.model.d_architecture"),
    ("stylegan2_cifar", {"stylegan2.truncation_psi": 1.5}, "config.stylegan2.truncation_psi"),
    ("stylegan2_cifar", {"stylegan2.pl_decay": 0.0}, "config.stylegan2.pl_decay"),
    ("text_gan_digits", {"data.name": "ring8"}, "config.data.name='ring8' has no class names to caption"),
    ("text_gan_digits", {"model.text_len": 8}, "longer than config.model.text_len=8; shorten it or raise"),
    ("text_gan_digits", {"text_gan.interpolation": 1.5}, "config.text_gan.interpolation"),
    ("text_gan_digits", {"text_gan.prompts": ("a digit " * 5,)}, "config.text_gan.prompts 'a digit "),
    ("cyclegan", {"data.name": "digits"}, "CycleGAN does not model image; config.data.name='digits'"),
    ("cyclegan", {"cyclegan.lambda_cycle": -1.0}, "config.cyclegan.lambda_cycle"),
    ("cyclegan", {"cyclegan.pool_size": -1}, "config.cyclegan.pool_size"),
    ("cyclegan", {"model.g_down": 4}, "config.model.g_down must be small enough that 2^g_down divides the 8x8"),
    ("cyclegan", {"model.d_layers": 2}, "config.model.d_layers must be small enough to leave a patch"),
    ("cyclegan", {"optim_d.warmup_steps": 30}, "config.optim_d.linear_decay_start=20 falls in the warm-up"),
    ("cyclegan", {"eval.metrics": ("bpd",), "eval.every": 1}, "config.eval.metrics to some of ('translation',)"),
]


def _config(experiment, overrides):
    config = __import__(f"experiments.{experiment}", fromlist=["get_config"]).get_config("smoke")
    config.train.update(num_steps=1, sample_every=1000, num_samples=8)
    for path, value in overrides.items():
        *sections, field = path.split(".")
        node = config
        for s in sections:
            node = node[s]
        node[field] = value
    return config


@pytest.mark.parametrize("experiment, overrides, field", BAD_CONFIGS,
                         ids=[f"{e}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for e, o, _ in BAD_CONFIGS])
def test_a_bad_config_is_one_sentence_naming_the_field_before_any_training(tmp_path, experiment, overrides, field):
    config = _config(experiment, overrides)
    with pytest.raises(run_lib.USER_ERRORS) as error:
        run_lib.run(config, str(tmp_path))
    assert field in str(error.value) and one_sentence(error.value), str(error.value)
    assert not os.path.exists(tmp_path / "metrics.jsonl") and not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize("overrides, field", [
    ({"prior_optim.learning_rate": -1.0}, "config.prior_optim.learning_rate"),
    ({"prior_optim.ema_decay": 1.0}, "config.prior_optim.ema_decay"),
    ({"prior_train.batch_size": 12}, "config.prior_train.batch_size=12"),
    ({"prior_train.log_every": 0}, "config.prior_train.log_every"),
    ({"prior.name": "wavenet"}, "config.prior.name"),
    ({"prior.transformer.num_layers": 0}, "config.prior.transformer"),
])
def test_a_bad_vqvae_prior_config_names_its_own_field_before_stage_1_trains(tmp_path, overrides, field):
    config = _config("vqvae_cifar", overrides)
    with pytest.raises(run_lib.USER_ERRORS) as error:
        run_lib.run(config, str(tmp_path))
    assert field in str(error.value) and one_sentence(error.value), str(error.value)
    assert not os.path.exists(tmp_path / "vqvae" / "checkpoints") and not os.path.exists(tmp_path / "prior")


def test_an_unwritable_workdir_is_one_sentence_before_anything_else(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    for workdir in (tmp_path / "a_file" / "run", tmp_path / "a_file"):
        with pytest.raises(PermissionError, match=r"--workdir=.* is not writable .*choose a folder") as error:
            run_lib.run(_config("vae_mnist", {}), str(workdir))
        assert one_sentence(error.value)


def test_resuming_with_a_model_of_another_shape_is_one_sentence_and_keeps_the_checkpoint(tmp_path):
    run_lib.run(_config("vae_mnist", {}), str(tmp_path))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    lines = open(tmp_path / "metrics.jsonl").read()
    config = _config("vae_mnist", {"model.latent_dim": 6, "train.num_steps": 2})
    with pytest.raises(ValueError, match=r"written by another model: it holds .* as \(\d+(, \d+)*\) float32 where "
                                         r"this model has .*; resume with the config it was written with") as error:
        run_lib.run(config, str(tmp_path))
    assert one_sentence(error.value)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before and open(tmp_path / "metrics.jsonl").read() == lines


def test_resuming_with_another_seed_or_batch_size_is_one_sentence(tmp_path):
    run_lib.run(_config("vae_mnist", {}), str(tmp_path))
    for overrides, field in (({"seed": 1}, "config.seed"), ({"train.batch_size": 16}, "config.train.batch_size")):
        with pytest.raises(ValueError, match=rf"written with {field}=.*use that value to resume") as error:
            run_lib.run(_config("vae_mnist", dict(overrides, **{"train.num_steps": 2})), str(tmp_path))
        assert one_sentence(error.value)


def test_a_distributed_process_id_out_of_range_is_one_sentence(tmp_path):
    config = _config("vae_mnist", {"parallel.distributed": True, "parallel.num_processes": 2,
                                   "parallel.process_id": 2, "parallel.coordinator_address": "127.0.0.1:1"})
    with pytest.raises(ValueError, match=r"config.parallel.process_id must be in \[0, 2\)"):
        run_lib.run(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_the_table_covers_every_registered_family():
    assert {e for e, _, _ in BAD_CONFIGS} >= {f.experiment for f in families.FAMILIES.values()}


@pytest.mark.parametrize("section, field, value, expected", [
    ("train", "batch_sise", 32, "config.train has no field 'batch_sise'; its fields are batch_size, "),
    ("model", "chanels", (8,), "config.model has no field 'chanels'"),
])
def test_a_misspelt_field_is_one_sentence(tmp_path, section, field, value, expected):
    config = _config("ddpm_cifar", {})
    with config.unlocked():
        config[section][field] = value
    with pytest.raises(ValueError) as error:
        run_lib.run(config, str(tmp_path))
    assert str(error.value).startswith(expected) and one_sentence(error.value), str(error.value)
    assert not os.path.exists(tmp_path / "checkpoints")
