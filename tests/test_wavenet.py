"""WaveNet: mu-law, causality, normalised likelihoods, fast generation against naive, the data, the files."""
import io
import os
import tarfile
import wave

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gm import audio, audio_datasets
from gm import data as gm_data
from gm import distributions as dist
from gm import wavenet
from gm.metrics.likelihood import evaluate_log_prob
from gm.nn.wavenet import WaveNet, receptive_field, shift_right, upsample

DILATIONS = (1, 2, 4, 1, 2, 4)  # receptive field 2 + 14 = 16


def _net(output="mu_law", condition="none", **kw):
    m = wavenet.ModelConfig(residual_channels=8, dilation_channels=6, skip_channels=10, num_cycles=2, max_dilation=4,
                            output=output, num_mixtures=3, condition=condition, num_mels=5, hop=4, n_fft=16, **kw)
    return m, wavenet.network(m, num_labels=3), wavenet.Quantizer(m)


def _params(net, quantizer, length=24, batch=2, label=None, features=None):
    x = jnp.full((batch, length), quantizer.start, jnp.int32 if quantizer.mu_law else jnp.float32)
    params = net.init(jax.random.key(0), x, label, features)["params"]
    # Non-zero biases too, so that "no influence" is not an accident of zero initialisation.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


# --- mu-law ------------------------------------------------------------------------------------------

def test_mu_law_levels_round_trip_and_silence_is_the_middle_level():
    levels = jnp.arange(256)
    np.testing.assert_array_equal(audio.mu_law_encode(audio.mu_law_decode(levels)), levels)
    assert int(audio.mu_law_encode(0.0)) == 128
    assert int(audio.mu_law_encode(-1.0)) == 0 and int(audio.mu_law_encode(1.0)) == 255
    decoded = np.asarray(audio.mu_law_decode(levels))
    assert np.all(np.diff(decoded) > 0) and decoded[0] == -1.0 and decoded[-1] == pytest.approx(1.0)


def test_mu_law_quantization_error_is_within_its_bound():
    x = np.linspace(-1.0, 1.0, 200_001)
    error = np.abs(np.asarray(audio.mu_law_decode(audio.mu_law_encode(x)), np.float64) - x)
    bound = audio.mu_law_error_bound(x)
    assert np.all(error <= bound + 1e-6)  # float32 arithmetic
    assert bound[100_000] == pytest.approx(8.7e-5, rel=0.02) and bound[-1] == pytest.approx(0.0223, rel=0.02)
    assert error.max() > 0.5 * bound.max()  # the bound is not loose by orders of magnitude


def test_pcm_conversions_and_wav_files_round_trip(tmp_path):
    pcm = np.array([-32768, -1, 0, 1, 32767], np.int16)
    np.testing.assert_array_equal(audio.float_to_pcm(audio.pcm_to_float(pcm)), pcm)
    path = audio.write_wav(str(tmp_path / "a.wav"), pcm, 8000)
    back, rate = audio.read_wav(path)
    np.testing.assert_array_equal(back, pcm)
    assert rate == 8000


def test_log_mel_spectrogram_finds_a_tone_in_its_band():
    t = np.arange(4000) / 8000
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    mel = np.asarray(audio.log_mel_spectrogram(tone, 8000, n_fft=256, hop=64, num_mels=20))
    assert mel.shape == (audio.num_frames(4000, 64), 20)
    centres = np.argmax(audio.mel_filterbank(8000, 256, 20), axis=0) * 8000 / 256  # Hz of each filter's peak
    assert abs(centres[np.argmax(mel[30])] - 1000) < 150


# --- the network ---------------------------------------------------------------------------------------

def test_receptive_field_and_causality_by_gradients():
    m, net, q = _net(output="mixture")
    params = _params(net, q, length=40)
    field = receptive_field(net.dilations)
    assert field == 2 + sum(DILATIONS) == 16
    x = 0.1 * jax.random.normal(jax.random.key(2), (1, 40))
    t = 30
    grad = jax.grad(lambda x: net.apply({"params": params}, shift_right(x, 0.0))[0, t].sum())(x)[0]
    influence = np.abs(np.asarray(grad)) > 0
    # The prediction of sample t depends on samples t - field .. t - 1 and on nothing at or after t.
    assert not influence[t:].any() and not influence[:t - field].any()
    assert influence[t - 1] and influence[t - field]


def test_mu_law_outputs_ignore_the_present_and_the_future():
    m, net, q = _net()
    params = _params(net, q)
    x = jax.random.randint(jax.random.key(3), (2, 24), 0, 256)
    out = net.apply({"params": params}, shift_right(x, q.start))
    changed = x.at[:, 10:].set(255 - x[:, 10:])
    out_changed = net.apply({"params": params}, shift_right(changed, q.start))
    np.testing.assert_array_equal(out[:, :11], out_changed[:, :11])  # position 10 predicts x[10] from x[<10]
    assert not np.allclose(out[:, 11:], out_changed[:, 11:])


@pytest.mark.parametrize("output", ["mu_law", "mixture"])
def test_likelihoods_sum_to_one_over_every_level(output):
    m, net, q = _net(output=output)
    out = 2.0 * jax.random.normal(jax.random.key(4), (net.out_features,))
    if output == "mu_law":
        values = jnp.arange(256)
    else:  # every one of the 65,536 PCM levels
        values = dist.levels_to_symmetric(jnp.arange(2 ** 16), 16)
    log_p = q.log_prob(jnp.broadcast_to(out, (len(values), net.out_features)), values)
    assert float(jax.nn.logsumexp(log_p)) == pytest.approx(0.0, abs=2e-4)


@pytest.mark.parametrize("output, condition", [("mu_law", "none"), ("mu_law", "label"), ("mixture", "mel")])
def test_fast_generation_draws_what_the_naive_sampler_draws(output, condition):
    m, net, q = _net(output=output, condition=condition)
    num, length = 3, 20
    label = jnp.array([0, 2, 1]) if condition == "label" else None
    features = None
    if condition == "mel":
        pcm = jnp.asarray(gm_data.load("notes").test["audio"][:num, :length])
        features = wavenet.mel_features(m, pcm, 8000)
        assert features.shape == (num, length, m.num_mels)
    params = _params(net, q, length, num, label, features)
    key = jax.random.key(5)
    fast = jax.jit(lambda p: wavenet.generate(net, p, q, key, num, length, label, features))(params)
    naive = jax.jit(lambda p: wavenet.generate_naive(net, p, q, key, num, length, label, features))(params)
    np.testing.assert_array_equal(fast, naive)
    assert len(np.unique(np.asarray(fast))) > 3  # real draws, not a constant


def test_one_step_outputs_equal_the_full_pass():
    m, net, q = _net(condition="label")
    label = jnp.array([1, 2])
    params = _params(net, q, label=label)
    x = jax.random.randint(jax.random.key(6), (2, 24), 0, 256)
    full = net.apply({"params": params}, shift_right(x, q.start), label)
    from gm.nn.wavenet import init_queues

    queues, steps = init_queues(net, 2), []
    inputs = shift_right(x, q.start)
    for t in range(24):
        queues, out = net.apply({"params": params}, queues, t, inputs[:, t], label, method=WaveNet.step)
        steps.append(out)
    np.testing.assert_allclose(np.stack(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_upsample_repeats_each_frame_over_its_hop():
    f = jnp.arange(6.0).reshape(1, 3, 2)
    up = upsample(f, 10)  # hop 4, cut to 10 samples
    assert up.shape == (1, 10, 2)
    np.testing.assert_array_equal(up[0, :, 0], [0, 0, 0, 0, 2, 2, 2, 2, 4, 4])


# --- the data -------------------------------------------------------------------------------------------

def test_notes_are_deterministic_labelled_audio():
    ds = gm_data.load("notes")
    info = ds.info
    assert info.is_audio and not info.is_image and info.sample_rate == 8000 and info.shape == (2000,)
    assert ds.train["audio"].dtype == np.int16 and ds.train["audio"].shape == (4000, 2000)
    assert set(np.unique(ds.train["label"])) == set(range(10))
    again = audio_datasets.notes_split(4000, np.random.default_rng([gm_data.DATASETS.index("notes"), 2024]))
    np.testing.assert_array_equal(again["audio"], ds.train["audio"])
    # Each label is its pitch: the fundamental is the strongest harmonic, so the spectrum peaks at the
    # note's frequency (0.5% detuning, 4 Hz bins).
    for clip, label in zip(ds.train["audio"][:20], ds.train["label"][:20]):
        peak_hz = np.argmax(np.abs(np.fft.rfft(clip.astype(np.float64)))) * 8000 / 2000
        assert abs(peak_hz - 440.0 * 2 ** ((audio_datasets.NOTES_MIDI[label] - 69) / 12)) < 8


def _wav(pcm, rate=16000):
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.asarray(pcm, "<i2").tobytes())
    return buffer.getvalue()


def test_sc09_reads_wavegans_archive_and_caches_it(tmp_path):
    archive = tmp_path / "manual" / "sc09.tar.gz"
    archive.parent.mkdir()
    clips = {"sc09/train/Seven_abc_nohash_0.wav": np.full(12000, 7, np.int16),
             "sc09/train/Zero_abc_nohash_1.wav": np.full(17000, 1, np.int16),
             "sc09/valid/One_abc_nohash_0.wav": np.zeros(16000, np.int16),
             "sc09/test/Nine_def_nohash_0.wav": np.full(16000, -3, np.int16)}
    with tarfile.open(archive, "w:gz") as tar:
        for name, pcm in clips.items():
            data = _wav(pcm)
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    ds = gm_data.load("sc09", data_dir=str(tmp_path / "data"), manual_dir=str(archive.parent))
    assert ds.info.sample_rate == 16000 and ds.info.shape == (16000,) and ds.info.num_train == 2
    np.testing.assert_array_equal(ds.train["label"], [7, 0])  # sorted by file name
    assert ds.train["audio"][0, 11999] == 7 and ds.train["audio"][0, 12000] == 0  # padded with silence
    assert ds.train["audio"][1, -1] == 1  # cut to 16,000
    assert ds.test["label"].tolist() == [9]
    assert os.path.exists(tmp_path / "data" / "sc09" / "sc09.npz")
    again = gm_data.load("sc09", data_dir=str(tmp_path / "data"))  # from the cache, no archive needed
    np.testing.assert_array_equal(again.train["audio"], ds.train["audio"])


def test_sc09_offline_is_one_sentence(tmp_path):
    with pytest.raises(gm_data.DataError, match=r"^SC09 is not in .* forbids downloading it: download "
                                                r"http\S+sc09\.tar\.gz .*--config\.data\.manual_dir=FOLDER, or use "
                                                r"--config\.data\.name=notes to run offline\.$"):
        gm_data.load("sc09", data_dir=str(tmp_path))


# --- the family -----------------------------------------------------------------------------------------

def test_loss_falls_and_beats_the_independent_sample_baseline_through_the_harness():
    from experiments import wavenet_sc09
    from gm import families

    config = wavenet_sc09.get_config("smoke")
    config.model.update(max_dilation=32)
    ds = gm_data.load("notes")
    method = families.make(config, ds.info)
    assert method.log_prob_per == (2000, "sample")
    batch = gm_data.train_batch(ds, step=0, batch_size=16, seed=0)
    params = jax.jit(method.init)(jax.random.key(0), batch)
    import optax

    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch):
        (loss, _), grads = jax.value_and_grad(method.loss, has_aux=True)(params, jax.random.key(0), batch)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for i in range(120):
        params, state, loss = step(params, state, gm_data.train_batch(ds, step=i, batch_size=16, seed=0))
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 1.0
    batches = lambda: gm_data.eval_batches(ds, batch_size=40, limit=200)
    model = evaluate_log_prob(method.log_prob, params, jax.random.key(1), batches(), 2000, False)
    q = wavenet.Quantizer(wavenet.ModelConfig())
    table = wavenet.fit_unigram(ds.train["audio"], q)
    unigram = evaluate_log_prob(lambda p, k, b: wavenet.unigram_log_prob(table, b["audio"], q), None,
                                jax.random.key(1), batches(), 2000, False)
    assert model["bpd"] < unigram["bpd"] - 1.0, (model["bpd"], unigram["bpd"])
    assert 6.0 < unigram["bpd"] < 8.0  # 256 levels: at most 8 bits


def test_wavenet_refuses_image_data():
    from experiments import wavenet_sc09
    from gm import families

    config = wavenet_sc09.get_config("smoke")
    with pytest.raises(ValueError, match=r"config.data.name='digits' is not an audio dataset"):
        wavenet.make(families.parse(config).settings, gm_data.load("digits").info)  # its own guard too


def test_audio_samples_become_wav_files_a_picture_and_tensorboard_audio(tmp_path):
    from gm.train.logging import MetricWriter
    from gm.train.loop import write_samples

    pcm = gm_data.load("notes").test["audio"][:3]
    picture = write_samples(str(tmp_path / "s" / "step_1.png"), pcm, gm_data.load("notes").info)
    assert picture.dtype == np.uint8 and picture.ndim == 3
    assert sorted(os.listdir(tmp_path / "s")) == ["step_1.png", "step_1_000.wav", "step_1_001.wav", "step_1_002.wav"]
    np.testing.assert_array_equal(audio.read_wav(str(tmp_path / "s" / "step_1_002.wav"))[0], pcm[2])
    writer = MetricWriter(str(tmp_path / "tb"))
    writer.write_audio(5, "samples", pcm, 8000, max_clips=2)
    writer.close()
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for name in os.listdir(tmp_path / "tb"):
        if name.startswith("events"):
            data = open(tmp_path / "tb" / name, "rb").read()
            while data:  # TFRecord: length, crc, payload, crc
                n = int.from_bytes(data[:8], "little")
                events.append(Event.FromString(data[12:12 + n]))
                data = data[16 + n:]
    sounds = [v for e in events for v in e.summary.value if v.HasField("audio")]
    assert [v.tag for v in sounds] == ["samples/0", "samples/1"]
    assert sounds[1].audio.encoded_audio_string == audio.wav_bytes(pcm[1], 8000)


@pytest.mark.parametrize("output, condition", [("mixture", "none"), ("mu_law", "label"), ("mu_law", "mel")])
def test_every_output_and_conditioning_trains_and_samples_through_the_method(output, condition):
    from experiments import wavenet_sc09
    from gm import families

    config = wavenet_sc09.get_config("smoke")
    config.model.update(max_dilation=4, output=output, condition=condition)
    ds = gm_data.load("notes")
    method = families.make(config, ds.info)
    batch = gm_data.train_batch(ds, step=0, batch_size=4, seed=0)
    params = jax.jit(method.init)(jax.random.key(0), batch)
    loss, _ = jax.jit(jax.value_and_grad(lambda p: method.loss(p, jax.random.key(1), batch)[0]))(params)
    # About uniform at initialisation: 16 or 8 bits.
    assert np.isfinite(float(loss)) and float(loss) < (20.0 if output == "mixture" else 9.0)
    samples = jax.jit(method.sample, static_argnums=2)(params, jax.random.key(2), 2)
    assert samples.shape == (2, 2000) and samples.dtype == jnp.int16
    log_p = jax.jit(method.log_prob)(params, jax.random.key(3), batch)
    assert log_p.shape == (4,) and np.all(np.isfinite(log_p))
