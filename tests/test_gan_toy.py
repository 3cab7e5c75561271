"""experiments.gan_toy's protocols and its table: configs as the papers state them, statistics by hand."""
import math

import jax
import numpy as np
import pytest

from experiments import gan_toy, published
from gm import data as gm_data
from gm import families, gan


@pytest.mark.parametrize("name, m", [("gan", 1), ("pacgan2", 2), ("pacgan3", 3), ("pacgan4", 4)])
def test_pacgan_protocol_builds_the_papers_networks(monkeypatch, name, m):
    monkeypatch.setattr(jax, "device_count", lambda *_: 1)  # batch 100 m, as on one accelerator
    config = gan_toy.variant_config(gan_toy.get_config("pacgan"), "pacgan_grid", name, 3)
    setup = families.parse(config)
    assert (setup.run.train.batch_size, setup.settings.gan.packing, setup.run.train.num_steps) == (100 * m, m, 400_000)
    assert (setup.run.optim.learning_rate, setup.run.optim.b1) == (1e-4, 0.8) == (
        setup.settings.optim_d.learning_rate, setup.settings.optim_d.b1)
    data = gm_data.load("pacgan_grid")
    _, init = gan.gan_from_config(setup.settings.model, data.info, m)
    batch = {k: v[:4 * m] for k, v in data.train.items()}
    params = jax.eval_shape(init, jax.random.key(0), batch)
    g, d = params["generator"]["MLP_0"], params["discriminator"]["MLP_0"]
    # Four Dense(400) without bias (batch norm follows), each with its norm's scale and offset; linear out.
    assert [g[f"Dense_{i}"]["kernel"].shape for i in range(5)] == [(2, 400)] + [(400, 400)] * 3 + [(400, 2)]
    assert "bias" not in g["Dense_0"] and "bias" in g["Dense_4"] and g["BatchNorm_0"]["scale"].shape == (400,)
    # Three maxout layers of 200 units x 5 pieces on a pack of m points, then a linear output.
    assert [d[f"Maxout_{i}"]["Dense_0"]["kernel"].shape for i in range(3)] == [(2 * m, 1000), (200, 1000), (200, 1000)]
    assert d["Dense_0"]["kernel"].shape == (200, 1)
    toy = gm_data.TOY_MODES["pacgan_grid"]
    assert gm_data.TOY_STDS["pacgan_grid"] == 0.05 and len(toy) == 25 and data.info.num_train == 100_000


def test_pacgan_initialisation_draws_weights_with_std_0_02(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda *_: 1)
    config = gan_toy.get_config("pacgan")
    data = gm_data.load("pacgan_ring")
    _, init = gan.gan_from_config(families.parse(config).settings.model, data.info)
    params = init(jax.random.key(0), {k: v[:8] for k, v in data.train.items()})
    maxout = params["discriminator"]["MLP_0"]["Maxout_1"]["Dense_0"]
    assert np.asarray(maxout["kernel"]).std() == pytest.approx(0.02, rel=0.02) and not np.any(maxout["bias"])


def test_summary_is_the_mean_and_standard_error_over_seeds_next_to_the_paper():
    rows = [dict(toy="pacgan_grid", variant="gan", seed=s, step=400_000, modes_covered=c, num_modes=25,
                 high_quality=q, reverse_kl=k)
            for s, (c, q, k) in enumerate([(16, 0.9, 0.8), (18, 0.95, 0.6), (17, 0.92, 0.7)])]
    (summary,) = published.summarize(rows, ("toy", "variant"), gan_toy.METRICS,
                                     {("pacgan_grid", "gan"): dict(modes_covered=(17.3, 0.8))})
    assert summary["seeds"] == 3 and summary["modes_covered"] == pytest.approx(17.0)
    assert summary["modes_covered_se"] == pytest.approx(1.0 / math.sqrt(3))  # std 1 over 3 seeds
    assert summary["modes_covered_paper"] == 17.3 and summary["modes_covered_agrees"]
    assert "high_quality_paper" not in summary
    (far,) = published.summarize(rows, ("toy", "variant"), gan_toy.METRICS,
                                 {("pacgan_grid", "gan"): dict(modes_covered=(24.8, None))})
    assert not far["modes_covered_agrees"]  # 7.8 apart, 2 x 0.58 allowed
    table = gan_toy.table(rows, [summary, far])
    assert "17.0 ± 0.6 (17.3 ± 0.8)" in table and "17.0 ± 0.6 (24.8, differs)" in table


def test_unknown_protocol_variant_is_one_sentence():
    with pytest.raises(ValueError, match="unknown variant 'pacgan2' of protocol 'gm'"):
        gan_toy.variant_config(gan_toy.get_config(), "ring8", "pacgan2", 0)
