"""The audio datasets of `gm.data`: {'audio': int16 PCM [N, T], 'label': int32 [N]}.

* notes (offline, generated): 0.25 s clips at 8 kHz of one sustained note each, a pure function of the
  seed. The label is the note, one of 10 pitches of a two-octave pentatonic scale (C3 to A4); each clip
  draws a small detuning, 1-6 harmonics with a geometric roll-off, random phases, a linear attack and an
  exponential decay, an onset delay, a peak level and background noise. A model that learns it must
  learn pitch (periodicity), timbre and envelope; an independent-sample model cannot.
* sc09 (downloaded once): the spoken digits "zero" to "nine" of Speech Commands (Warden 2018) as
  WaveGAN (Donahue et al. 2019) packaged them, 1 s at 16 kHz, padded with silence to 16,000 samples:
  the unconditional benchmark of WaveGAN and DiffWave. Read from sc09.tar.gz (its train/ and test/
  folders of Word_speaker_nohash_n.wav files; valid/ is not used), whose extracted arrays are cached
  as an .npz next to it.
"""
import os
import re
import tarfile

import numpy as np

NOTES_RATE, NOTES_LENGTH = 8000, 2000
NOTES_MIDI = (48, 50, 52, 55, 57, 60, 62, 64, 67, 69)  # C3 D3 E3 G3 A3 C4 D4 E4 G4 A4
NOTES_SIZES = (4000, 500)  # train, test

SC09_RATE, SC09_LENGTH = 16000, 16000
SC09_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SC09_URL = "http://deepyeti.ucsd.edu/cdonahue/wavegan/data/sc09.tar.gz"
SC09_ARCHIVE = "sc09.tar.gz"


def notes_split(n: int, rng: np.random.Generator) -> dict:
    """n generated note clips: {'audio': int16 [n, 2000] at 8 kHz, 'label': int32 [n] (the pitch)}."""
    t = np.arange(NOTES_LENGTH) / NOTES_RATE
    label = rng.integers(len(NOTES_MIDI), size=n).astype(np.int32)
    f0 = 440.0 * 2.0 ** ((np.asarray(NOTES_MIDI)[label] - 69) / 12.0) * (1.0 + 0.005 * rng.standard_normal(n))
    num_harmonics = rng.integers(1, 7, size=n)
    rolloff = rng.uniform(0.3, 0.8, size=n)
    k = np.arange(1, 7)
    amplitude = np.where(k[None] <= num_harmonics[:, None], rolloff[:, None] ** (k[None] - 1), 0.0)  # [n, 6]
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, 6))
    tone = np.einsum("nk,nkt->nt", amplitude,
                     np.sin(2.0 * np.pi * f0[:, None, None] * k[None, :, None] * t[None, None] + phase[..., None]))
    onset = rng.uniform(0.0, 0.05, size=n)[:, None]
    attack = rng.uniform(0.005, 0.03, size=n)[:, None]
    decay = rng.uniform(2.0, 8.0, size=n)[:, None]
    since = t[None] - onset
    envelope = np.minimum(since / attack, 1.0) * np.exp(-decay * np.maximum(since - attack, 0))
    envelope = np.where(since < 0, 0.0, envelope)
    clip = tone * envelope
    clip *= rng.uniform(0.3, 0.9, size=n)[:, None] / np.maximum(np.abs(clip).max(1, keepdims=True), 1e-9)
    clip += rng.uniform(0.001, 0.01, size=n)[:, None] * rng.standard_normal(clip.shape)
    audio = np.clip(np.round(clip * 32768.0), -32768, 32767).astype(np.int16)
    return {"audio": audio, "label": label}


# --- SC09 -------------------------------------------------------------------------------------------

_NAME = re.compile(r"(?:^|/)(train|valid|test)/([A-Za-z]+)_[^/]*\.wav$")


def _pad_or_trim(pcm: np.ndarray) -> np.ndarray:
    out = np.zeros(SC09_LENGTH, np.int16)
    out[:min(len(pcm), SC09_LENGTH)] = pcm[:SC09_LENGTH]
    return out


def read_sc09_archive(path: str) -> dict:
    """sc09.tar.gz -> {'train': {'audio', 'label'}, 'test': {...}}, clips padded or cut to 16,000 samples,
    in the archive's file order sorted by name (deterministic)."""
    import io
    import wave

    splits = {"train": [], "test": []}
    with tarfile.open(path, "r:*") as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
        for member in members:
            match = _NAME.search(member.name)
            if not match or match.group(1) not in splits or match.group(2).lower() not in SC09_WORDS:
                continue
            with wave.open(io.BytesIO(archive.extractfile(member).read()), "rb") as f:
                if f.getsampwidth() != 2 or f.getframerate() != SC09_RATE:
                    raise ValueError(f"{member.name} in {path} is not 16-bit PCM at 16 kHz.")
                pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
            splits[match.group(1)].append((_pad_or_trim(pcm), SC09_WORDS.index(match.group(2).lower())))
    return {name: {"audio": np.stack([a for a, _ in rows]) if rows else np.zeros((0, SC09_LENGTH), np.int16),
                   "label": np.asarray([y for _, y in rows], np.int32)} for name, rows in splits.items()}


def load_sc09(data_dir: str | None, manual_dir: str | None, error) -> tuple[dict, dict]:
    """(train, test) arrays of SC09. Looks for sc09.npz in DATA_DIR/sc09 (default ~/tensorflow_datasets/sc09),
    else extracts it from sc09.tar.gz in `manual_dir` or that folder, else downloads the archive there.
    `error(message)` builds the exception for a missing dataset."""
    folder = os.path.join(os.path.expanduser(data_dir or "~/tensorflow_datasets"), "sc09")
    cache = os.path.join(folder, "sc09.npz")
    if os.path.exists(cache):
        with np.load(cache) as f:
            return ({"audio": f["train_audio"], "label": f["train_label"]},
                    {"audio": f["test_audio"], "label": f["test_label"]})
    candidates = ([os.path.join(manual_dir, SC09_ARCHIVE)] if manual_dir else []) + [os.path.join(folder, SC09_ARCHIVE)]
    archive = next((p for p in candidates if os.path.exists(p)), None)
    if archive is None:
        archive = _download_sc09(folder, error)
    splits = read_sc09_archive(archive)
    if not len(splits["train"]["label"]) or not len(splits["test"]["label"]):
        raise error(f"{archive} holds no train/ or test/ clips of the ten digit words; it is not WaveGAN's "
                    f"sc09.tar.gz (download it from {SC09_URL}).")
    os.makedirs(folder, exist_ok=True)
    np.savez(cache + ".tmp.npz", train_audio=splits["train"]["audio"], train_label=splits["train"]["label"],
             test_audio=splits["test"]["audio"], test_label=splits["test"]["label"])
    os.replace(cache + ".tmp.npz", cache)
    return splits["train"], splits["test"]


def _download_sc09(folder: str, error) -> str:
    import urllib.request

    from gm.metrics.inception import OFFLINE_ENV

    path = os.path.join(folder, SC09_ARCHIVE)
    how = (f"download {SC09_URL} (about 1 GB) into a folder and pass --config.data.manual_dir=FOLDER, or use "
           "--config.data.name=notes to run offline.")
    if os.environ.get(OFFLINE_ENV):
        raise error(f"SC09 is not in {folder} and {OFFLINE_ENV} forbids downloading it: {how}")
    try:
        os.makedirs(folder, exist_ok=True)
        with urllib.request.urlopen(SC09_URL, timeout=10) as response, open(path + ".part", "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(path + ".part", path)
    except Exception as e:  # pylint: disable=broad-except  (network, disk and HTTP failures read the same)
        cause = f"{type(e).__name__}: {e}".splitlines()[0][:160]
        raise error(f"SC09 is not in {folder} and could not be downloaded ({cause}): {how}") from None
    return path
