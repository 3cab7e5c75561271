"""Text as token ids, behind one small interface: `encode(text) -> int32 ids`, `decode(ids) -> text`,
`vocab_size`, and `bytes_per_token(text)` for converting a per-token likelihood to bits per byte.

* `ByteTokenizer`: the UTF-8 bytes themselves, 256 symbols. Every text is encodable and every byte
  string round-trips (`encode_bytes` / `decode_bytes`); bits per byte is then bits per token.
* `BPETokenizer`: a byte-level BPE (GPT-2's scheme: merges learned over the UTF-8 bytes, so there is no
  unknown token and every string round-trips exactly), trained with Hugging Face's `tokenizers` on a
  corpus in seconds and cached as JSON in $GM_CACHE_DIR. `tokenizers` rather than `sentencepiece`:
  its byte-level alphabet covers every string without a fallback mode, it trains from an in-memory
  iterator, and its whole state is one JSON string.

Likelihoods of different tokenizers compare only per byte (or per character) of the same text, never
per token: `bits_per_byte(nll_nats, num_bytes)` is that conversion.
"""
import hashlib
import math
import os
from typing import Iterable, Sequence

import numpy as np

BPE_VERSION = "v1"  # in the cache file name: bump it when the training recipe changes


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255."""
    vocab_size = 256
    name = "bytes"

    def encode(self, text: str) -> np.ndarray:
        return self.encode_bytes(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; byte sequences that are not valid UTF-8 become U+FFFD (use `decode_bytes` for the bytes)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @staticmethod
    def encode_bytes(data: bytes) -> np.ndarray:
        return np.frombuffer(bytes(data), np.uint8).astype(np.int32)

    @staticmethod
    def decode_bytes(ids: Sequence[int]) -> bytes:
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError(f"byte tokens are 0..255, got values in [{ids.min()}, {ids.max()}].")
        return ids.astype(np.uint8).tobytes()

    def bytes_per_token(self, text: str) -> float:
        return 1.0


class BPETokenizer:
    """A trained byte-level BPE (see the module docstring); build one with `train_bpe` or `load_bpe`."""

    def __init__(self, tokenizer, name: str = "bpe"):
        self._tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.name = name

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text).ids, np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def bytes_per_token(self, text: str) -> float:
        """UTF-8 bytes of `text` per token of its encoding (> 1: the compression BPE buys)."""
        return len(text.encode("utf-8")) / max(len(self.encode(text)), 1)

    def to_json(self) -> str:
        return self._tokenizer.to_str()


def _byte_level_bpe(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # No regex split (use_regex=False) would let merges cross words; GPT-2's split keeps them inside.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    return tokenizer, trainer


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """A byte-level BPE with `vocab_size` tokens (>= 256: the byte alphabet comes first) learned on `texts`."""
    if vocab_size < 256:
        raise ValueError(f"A byte-level BPE needs vocab_size >= 256 (the byte alphabet), got {vocab_size}.")
    tokenizer, trainer = _byte_level_bpe(vocab_size)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tokenizer, f"bpe{vocab_size}")


def _cache_path(corpus_digest: str, vocab_size: int, cache_dir=None) -> str:
    folder = cache_dir or os.environ.get("GM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "gm")
    return os.path.join(folder, f"bpe_{BPE_VERSION}_{vocab_size}_{corpus_digest[:16]}.json")


def load_bpe(texts: Sequence[str], vocab_size: int, cache_dir=None) -> BPETokenizer:
    """The BPE of `train_bpe(texts, vocab_size)`, read from the cache when this corpus and size were
    trained before (the file name holds a SHA-256 of the corpus), else trained now and cached."""
    from tokenizers import Tokenizer

    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
    path = _cache_path(digest, vocab_size, cache_dir)
    if os.path.exists(path):
        return BPETokenizer(Tokenizer.from_file(path), f"bpe{vocab_size}")
    bpe = train_bpe(texts, vocab_size)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(bpe.to_json())
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs retraining next time
    return bpe


def bits_per_byte(nll_nats, num_bytes: int):
    """Negative log-likelihood in nats of a text -> bits per UTF-8 byte of it."""
    return nll_nats / (num_bytes * math.log(2.0))
