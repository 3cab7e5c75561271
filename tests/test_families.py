"""The contract, checked for every family in the registry and both parallel strategies.

For each registered family (its experiment's smoke config with the registry's tiny networks) and
each of its stages: init; a finite scalar loss; one train step under `sharded` equal to the
single-device step on the same global batch, and under `pmap` equal to the single-device step it
stands for (each device's slice of the batch with fold_in(key, device), gradients and metrics averaged:
computed here on one device with `jax.vmap` over a named axis); samples of the right shape, dtype and
range (a translation family's translations of the batch); `log_prob` of shape [B] where there is one.
A family added to `gm.families` gets these checks.
"""
import dataclasses
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gm import data as gm_data
from gm import families, optim, parallel
from gm.config import OptimConfig
from gm.train import loop
from gm.train import run as run_lib
from gm.train import state as state_lib

BATCH = 16  # two examples per device under pmap on the suite's 8 devices
STAGES = [(name, stage.name) for name, family in families.FAMILIES.items() for stage in family.stages]


def _ids(pair):
    return pair[0] + (f"-{pair[1]}" if pair[1] else "")


def _config(name):
    config = importlib.import_module(f"experiments.{families.get(name).experiment}").get_config("smoke")
    return families.with_tiny_networks(config)


def _allclose(a, b, **kw):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw), a, b)


def _same_step(state, reference, learning_rate):
    """Two train states after one step agree: everything at float32 reordering tolerance except the
    parameters and their EMA. Adam's first step divides each gradient by its own magnitude (plus eps
    1e-8), so a gradient that cancels to ~1e-10 moves its parameter by a fraction of the learning rate
    set by float noise (PixelCNN++: the same gradient summed in another order gives 1.3e-11 against
    1.5e-11 in mu, and steps of 5.0e-5 against 5.9e-5). The parameters get 1% of the learning rate on
    top; the optimizer's moments, which a wrong cross-device mean would change, keep the tight bound."""
    tight = dict(rtol=2e-4, atol=2e-6)  # float32 sums over the batch in another order
    _allclose(state.replace(params=None, ema_params=None), reference.replace(params=None, ema_params=None), **tight)
    loose = dict(rtol=2e-4, atol=2e-6 + 1e-2 * learning_rate)
    _allclose((state.params, state.ema_params), (reference.params, reference.ema_params), **loose)


class Stage:
    """One stage of a family as the trainer builds it: its Method (a later stage made from the stage
    before's freshly initialised parameters), optimizer, EMA decay, a batch and the initial state."""

    def __init__(self, name, stage_name):
        setup = families.parse(_config(name))
        self.dataset = run_lib.load_dataset(setup.run)
        self.batch = gm_data.train_batch(self.dataset, step=0, batch_size=BATCH, seed=0)
        previous = None
        for stage in setup.family.stages:
            method = stage.make(setup.settings, self.dataset.info, previous)
            run = setup.stage_run(stage)
            if stage.name == stage_name:
                break
            previous = jax.jit(method.init)(jax.random.key(1), self.batch)
        self.method, self.optimizer = method, optim.make_optimizer(run.optim)
        optims = [run.optim] + [getattr(setup.settings, f.name) for f in dataclasses.fields(setup.settings)
                                if isinstance(getattr(setup.settings, f.name), OptimConfig)]
        self.learning_rate = max(o.learning_rate for o in optims)  # the largest of its optimizers'
        self.step = state_lib.step_function(method, self.optimizer, 0.5)
        params = jax.jit(method.init)(jax.random.key(0), self.batch)
        self.state = state_lib.init_state(params, state_lib.training_of(method), self.optimizer)
        self.key = jax.random.key(3)

    def single_device(self):
        """The step on the whole batch on one device."""
        return jax.jit(self.step)(self.state, self.batch, self.key)

    def per_device_average(self, n):
        """What pmap over n devices stands for, on one device: slice i with fold_in(step key, i), every
        cross-device mean a mean over the slices."""
        slices = jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), self.batch)

        def on_device(batch):
            return self.step(self.state, batch, self.key, reduce_fn=lambda t: jax.lax.pmean(t, "devices"),
                             device_key_fn=lambda k: jax.random.fold_in(k, jax.lax.axis_index("devices")))

        states, metrics = jax.jit(jax.vmap(on_device, axis_name="devices"))(slices)
        first = lambda tree: jax.tree.map(lambda x: x[0], tree)  # noqa: E731  (equal on every device)
        return first(states), first(metrics)

    def under(self, strategy_name):
        strategy = parallel.make_strategy(strategy_name)
        compiled = strategy.compile_step(self.step)
        state = strategy.put_state(parallel.replicate(jax.tree.map(jnp.copy, self.state)))  # the step donates it
        state, metrics = compiled(state, strategy.put_batch(self.batch), self.key)
        return jax.device_get(strategy.get_state(state)), parallel.host_scalars(metrics)


@pytest.fixture(scope="module", params=STAGES, ids=_ids)
def stage(request):
    return Stage(*request.param)


def test_every_family_has_an_experiment_with_a_smoke_variant():
    for name, family in families.FAMILIES.items():
        config = _config(name)
        assert config.family == name and families.parse(config).family is family


def test_init_loss_samples_and_log_prob(stage):
    method, info = stage.method, stage.dataset.info
    loss, metrics = jax.jit(method.loss)(stage.state.params, jax.random.key(1), stage.batch)
    assert loss.shape == () and np.isfinite(float(loss))
    assert all(np.ndim(v) == 0 and np.isfinite(float(v)) for v in metrics.values())
    if method.sample is None:  # a translation family: both domains' images, translated and back
        out = jax.jit(method.translate)(stage.state.params, jax.random.key(2), stage.batch)
        assert sorted(out) == sorted(loop.TRANSLATION_ROWS)
        samples = jnp.concatenate([out[name] for name in loop.TRANSLATION_ROWS])
        assert samples.shape == (6 * BATCH,) + tuple(info.shape)
    else:
        samples = jax.jit(method.sample, static_argnums=2)(stage.state.params, jax.random.key(2), 8)
        assert samples.shape == (8,) + tuple(info.shape)
    if info.is_audio:
        assert samples.dtype == jnp.int16  # 16-bit PCM
    elif info.num_bits is not None:
        assert samples.dtype == jnp.uint8 and int(samples.max()) < 2 ** info.num_bits
    if method.log_prob is not None:
        log_p = jax.jit(method.log_prob)(stage.state.params, jax.random.key(4), stage.batch)
        assert log_p.shape == (BATCH,) and np.all(np.isfinite(log_p))


def test_one_train_step_under_sharded_is_the_single_device_step(stage):
    single, metrics = stage.single_device()
    assert float(metrics["finite"]) == 1 and int(single.step) == 1
    sharded, sharded_metrics = stage.under("sharded")
    _same_step(sharded, single, stage.learning_rate)
    _allclose(sharded_metrics, jax.device_get(metrics), rtol=2e-4, atol=2e-6)


def test_one_train_step_under_pmap_averages_the_per_device_slices_and_keys(stage):
    reference, metrics = stage.per_device_average(jax.local_device_count())
    assert float(metrics["finite"]) == 1
    pmapped, pmapped_metrics = stage.under("pmap")
    _same_step(pmapped, reference, stage.learning_rate)
    _allclose(pmapped_metrics, jax.device_get(metrics), rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_a_family_refuses_data_it_does_not_model_in_one_sentence(name):
    other = "digits" if families.get(name).modality == "audio" else "notes"
    info = gm_data.load(other).info
    with pytest.raises(ValueError, match=rf"^{re.escape(families.get(name).label)} does not model \w+; "
                                         rf"config.data.name='{other}' is \w+ data, use a dataset of .*\.$"):
        families.make(_config(name), info)
