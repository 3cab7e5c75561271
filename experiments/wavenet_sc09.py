"""WaveNet on SC09, the spoken digits of Speech Commands: unconditional 1 s clips at 16 kHz.

    python -m experiments.wavenet_sc09 --workdir=runs/wavenet_sc09
    python -m experiments.wavenet_sc09 --workdir=runs/wavenet_sc09 --mode=eval
    python -m experiments.wavenet_sc09 --workdir=runs/wavenet_sc09 --mode=sample --config.sample.num=16
    python -m experiments.wavenet_sc09 --workdir=runs/wavenet_label --config.model.condition=label
    python -m experiments.wavenet_sc09 --workdir=runs/smoke --config=experiments/wavenet_sc09.py:smoke

The default aims at DiffWave's WaveNet-256 baseline (Kong et al. 2021, Table 2, unconditional SC09:
FID 2.947, IS 2.84, mIS 10.0 with their ResNeXt classifier on 1,000 samples). Its settings, as that paper
gives them: 30 layers with 256 residual channels, full 16,000-sample utterances, Adam at 1e-3 halved
every 200k steps, batch 16, 1M steps. Where the paper is silent gm takes the WaveNet paper's choices:
three cycles of dilations 1, 2, ..., 512 (receptive field 3,071 samples, 0.19 s), width-2 convolutions,
256 dilation and skip channels, a 256-way mu-law softmax. The learning rate decays smoothly with the same
half-life (x 0.5^(1/200,000) per step) rather than in steps. Sample quality is scored with gm's own SC09
classifier (`gm.metrics.domain`, recipe `sc09`: `fid_sc09`, `is_sc09`), so its numbers rank models on
SC09 but are not DiffWave's. Test bits per sample (over the 256 mu-law levels) come with every evaluation.
The EMA (0.999), warm-up (none) and gradient clipping (none) are gm's defaults; DiffWave does not state
them for its WaveNet.

SC09 is WaveGAN's sc09.tar.gz (`gm.audio_datasets`), downloaded on first use; the smoke variant uses the
generated `notes` (0.25 s at 8 kHz, offline) with a tiny network and trains in about 75 s on 2 cores.
--mode=sample writes WAV files and a waveform/spectrogram picture per sample.
"""
from gm import families
from gm.config import variant
from gm.train import run


def get_config(arg=None):
    """Unconditional SC09 with DiffWave's WaveNet-256 baseline; arg='smoke' is a tiny offline variant."""
    config = families.default_config("wavenet")
    config.data.update(name="sc09")
    config.optim.update(learning_rate=1e-3, lr_decay=0.5 ** (1 / 200_000))
    config.train.update(batch_size=16, num_steps=1_000_000, sample_every=50_000, num_samples=16,
                        checkpoint_every=10_000)
    config.eval.update(metrics=("bpd", "fid"), batch_size=64, num_samples=1000, sample_batch_size=100)
    config.sample.update(num=16, batch_size=16)
    return variant(config, arg, "wavenet_sc09", smoke=smoke)


def smoke(config):
    config.data.update(name="notes")
    config.model.update(residual_channels=16, dilation_channels=16, skip_channels=32, num_cycles=1,
                        max_dilation=64, num_mels=20, hop=64, n_fft=256)
    config.optim.update(learning_rate=3e-3, lr_decay=1.0, ema_decay=0.99)
    config.train.update(batch_size=16, num_steps=300, log_every=25, checkpoint_every=100, sample_every=300,
                        num_samples=4)
    config.eval.update(metrics=("bpd", "fid"), batch_size=64, num_samples=64, sample_batch_size=32)
    config.sample.update(num=4, batch_size=4)


if __name__ == "__main__":
    run.main(__file__)
