"""Audio as arrays: 16-bit PCM, mu-law companding, log-mel spectrograms, WAV files and pictures.

Waveforms travel through gm as int16 PCM [..., T] (`gm.data`'s audio datasets) and are modelled either
as float in [-1, 1) (`pcm_to_float`: PCM / 32768) or as 8-bit mu-law levels (`mu_law_encode`: 256
levels, ITU-T G.711's companding curve with mu = 255, rounded as WaveNet's reference implementations
do). Bits per sample of a mu-law model are measured over those 256 levels, of a 16-bit model over the
65,536 PCM levels: two different quantities.
"""
import io
import math
import os
import wave

import jax.numpy as jnp
import numpy as np

MU = 255  # 8-bit mu-law: 256 levels
PCM_SCALE = 32768.0  # int16 full scale


def pcm_to_float(pcm):
    """int16 PCM [...] -> float32 in [-1, 1 - 2^-15]."""
    return jnp.asarray(pcm).astype(jnp.float32) / PCM_SCALE


def float_to_pcm(x):
    """float in [-1, 1] -> int16 PCM, rounded and clipped to [-32768, 32767]; jit-compatible."""
    return jnp.clip(jnp.round(jnp.asarray(x, jnp.float32) * PCM_SCALE), -32768, 32767).astype(jnp.int16)


def mu_law_compress(x, mu=MU):
    """float in [-1, 1] -> the companded value sign(x) ln(1 + mu |x|) / ln(1 + mu), in [-1, 1]."""
    x = jnp.clip(jnp.asarray(x, jnp.float32), -1.0, 1.0)
    return jnp.sign(x) * jnp.log1p(mu * jnp.abs(x)) / math.log1p(mu)


def mu_law_expand(f, mu=MU):
    """The inverse of `mu_law_compress`: f in [-1, 1] -> x in [-1, 1]."""
    f = jnp.asarray(f, jnp.float32)
    return jnp.sign(f) * jnp.expm1(jnp.abs(f) * math.log1p(mu)) / mu


def mu_law_encode(x, mu=MU):
    """float in [-1, 1] -> int32 levels 0..mu: the companded value rounded to the nearest of mu + 1
    equally spaced levels (level k at 2k / mu - 1). Silence (0) is level (mu + 1) / 2 = 128."""
    f = mu_law_compress(x, mu)
    return jnp.floor((f + 1.0) / 2.0 * mu + 0.5).astype(jnp.int32)


def mu_law_decode(levels, mu=MU):
    """int levels 0..mu -> float in [-1, 1]: the expanded centre of each level. Round trip error bound:
    |x - decode(encode(x))| <= (1 + mu |x|) (1 + mu)^(1/mu) ln(1 + mu) / mu^2, 8.7e-5 at silence and
    0.022 at full scale for mu = 255 (`mu_law_error_bound`)."""
    f = jnp.asarray(levels).astype(jnp.float32) * (2.0 / mu) - 1.0
    return mu_law_expand(f, mu)


def mu_law_error_bound(x, mu=MU):
    """The largest |x - mu_law_decode(mu_law_encode(x))| the rounding can cause at amplitude x: half a
    level (1 / mu in the companded domain) times the steepest slope of the expansion within it."""
    return (1.0 + mu * np.abs(x)) * (1.0 + mu) ** (1.0 / mu) * math.log1p(mu) / mu ** 2


# ---------------------------------------------------------------------------------------------------
# Spectrograms.
# ---------------------------------------------------------------------------------------------------

def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, num_mels: int, f_min: float = 0.0, f_max: float | None = None):
    """Triangular HTK-mel filters, float32 [n_fft // 2 + 1, num_mels], each with unit peak."""
    f_max = sample_rate / 2.0 if f_max is None else f_max
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), num_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - bins[:, None]) / np.maximum(upper - centre, 1e-9)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def num_frames(num_samples: int, hop: int) -> int:
    """Frames of `log_mel_spectrogram` for a clip of num_samples: one per hop, centred (ceil(T / hop))."""
    return -(-num_samples // hop)


def log_mel_spectrogram(audio, sample_rate: int, n_fft: int = 1024, hop: int = 256, num_mels: int = 80,
                        floor: float = 1e-5):
    """float audio [..., T] in [-1, 1] -> log-mel magnitudes float32 [..., ceil(T / hop), num_mels].

    Hann-windowed frames of n_fft samples every `hop`, frame i centred on sample i * hop (the clip is
    zero-padded by n_fft // 2 on each side), magnitude spectra through `mel_filterbank`, natural log of
    max(mel, floor). jit-compatible.
    """
    audio = jnp.asarray(audio, jnp.float32)
    t = audio.shape[-1]
    frames = num_frames(t, hop)
    pad = [(0, 0)] * (audio.ndim - 1) + [(n_fft // 2, n_fft // 2 + frames * hop)]
    padded = jnp.pad(audio, pad)
    index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
    spectrum = jnp.abs(jnp.fft.rfft(padded[..., index] * window, axis=-1))
    mel = spectrum @ mel_filterbank(sample_rate, n_fft, num_mels)
    return jnp.log(jnp.maximum(mel, floor))


# ---------------------------------------------------------------------------------------------------
# Files and pictures.
# ---------------------------------------------------------------------------------------------------

def wav_bytes(pcm, sample_rate: int) -> bytes:
    """int16 PCM [T] -> the bytes of a mono 16-bit WAV file."""
    pcm = np.asarray(pcm)
    if pcm.ndim != 1 or pcm.dtype != np.int16:
        raise ValueError(f"a WAV file here holds int16 PCM [T], got {pcm.dtype} {pcm.shape}.")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()


def write_wav(path: str, pcm, sample_rate: int) -> str:
    """int16 PCM [T] -> a mono 16-bit WAV file at `path`; returns the path."""
    data = wav_bytes(pcm, sample_rate)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def read_wav(path: str):
    """A mono 16-bit WAV file -> (int16 PCM [T], sample rate in Hz)."""
    with wave.open(path, "rb") as f:
        if f.getsampwidth() != 2 or f.getnchannels() != 1:
            raise ValueError(f"{path} is not mono 16-bit PCM (channels {f.getnchannels()}, "
                             f"{8 * f.getsampwidth()} bits); convert it first.")
        return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.int16), f.getframerate()


def waveform_image(pcm, height: int = 64, width: int = 256) -> np.ndarray:
    """int16 PCM [T] -> uint8 [height, width, 3]: the min-max envelope per column, dark blue on white,
    the vertical axis from -1 (bottom) to 1 (top)."""
    x = np.asarray(pcm, np.float64) / PCM_SCALE
    columns = np.array_split(x, width)
    image = np.full((height, width, 3), 255, np.uint8)
    row = lambda v: int(np.clip(round((1.0 - v) / 2.0 * (height - 1)), 0, height - 1))
    image[height // 2, :] = (220, 220, 220)
    for i, col in enumerate(columns):
        if col.size:
            image[row(col.max()):row(col.min()) + 1, i] = (30, 60, 150)
    return image


def spectrogram_image(pcm, sample_rate: int, height: int = 64, width: int = 256) -> np.ndarray:
    """int16 PCM [T] -> uint8 [height, width, 3]: its log-mel spectrogram (`log_mel_spectrogram` with
    n_fft and hop scaled to the rate, `height` mels, low frequencies at the bottom), dark = loud."""
    n_fft = max(64, 2 ** int(round(math.log2(sample_rate * 0.064))))  # about 64 ms
    hop = max(1, len(pcm) // width)
    mel = np.asarray(log_mel_spectrogram(pcm_to_float(pcm), sample_rate, n_fft, hop, height))  # [F, mels]
    lo, hi = mel.max() - 8.0, mel.max()  # 8 nats (about 70 dB) of range
    v = np.clip((mel - lo) / max(hi - lo, 1e-9), 0.0, 1.0).T[::-1]  # [mels, F], low mels at the bottom
    idx = np.minimum((np.arange(width) * v.shape[1]) // width, v.shape[1] - 1)
    v = v[:, idx]
    return (255.0 - v[..., None] * np.array([225.0, 195.0, 105.0])).astype(np.uint8)


def clip_picture(pcm, sample_rate: int, width: int = 256) -> np.ndarray:
    """One clip's waveform above its spectrogram: uint8 [130, width, 3] (a 2-pixel white gap)."""
    gap = np.full((2, width, 3), 255, np.uint8)
    return np.concatenate([waveform_image(pcm, 64, width), gap, spectrogram_image(pcm, sample_rate, 64, width)])
