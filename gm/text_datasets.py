"""The text datasets of `gm.data`: a corpus tokenized into one stream, served as windows of `context` tokens.

    {'tokens': int32 [N, context], 'label': int32 [N] (zeros)}

Training examples are every window of the training stream (stride 1, a zero-copy view: a batch is a
fancy index away, and an epoch visits every offset once in a fresh order); test examples are the
non-overlapping windows of the test stream, so each test token is scored exactly once.

* pydoc (offline): the documentation topics that ship with every CPython (`pydoc_data.topics`, about
  0.5 MB of English prose and code), sorted by name; every tenth topic is held out for the test split.
* tiny_shakespeare (through TFDS): Karpathy's char-RNN corpus (1.1 MB), its train and validation
  splits (the validation split is the test split here, as nanoGPT evaluates on it).

Tokenizers (`gm.tokenize`, config.data.tokenizer): 'bytes' (the UTF-8 bytes, 256 symbols) or 'bpeN'
(a byte-level BPE of N tokens trained on the training text, cached). `bytes_per_token` of the test
text is kept so likelihoods convert to bits per byte whatever the tokenizer.
"""
import re

import numpy as np

from gm import tfds_prepare, tokenize

TEXT_DATASETS = ("pydoc", "tiny_shakespeare")


def pydoc_texts() -> tuple[str, str]:
    """(train text, test text) of CPython's pydoc topics: every tenth topic (by sorted name) is test."""
    import pydoc_data.topics

    names = sorted(pydoc_data.topics.topics)
    train = [pydoc_data.topics.topics[n] for i, n in enumerate(names) if i % 10 != 9]
    test = [pydoc_data.topics.topics[n] for i, n in enumerate(names) if i % 10 == 9]
    return "\n\n".join(train), "\n\n".join(test)


SHAKESPEARE_HOST = "raw.githubusercontent.com"  # where TFDS downloads it from


def tiny_shakespeare_texts(data_dir, error, reachable) -> tuple[str, str]:
    """(train text, validation text) of TFDS tiny_shakespeare. `error(message)` builds the exception when
    it is neither prepared nor downloadable; `reachable(host)` says whether the download can start (TFDS
    itself retries an unreachable host for minutes)."""
    import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds

    how = ("run `tfds build tiny_shakespeare` on a machine with network and copy the folder to "
           "--config.data.data_dir, or use --config.data.name=pydoc to run offline.")
    builder = tfds_prepare.prepared_builder("tiny_shakespeare", data_dir, title="tiny_shakespeare",
                                            host=SHAKESPEARE_HOST, how=how, error=error, reachable=reachable)
    splits = tfds.as_numpy(builder.as_dataset(split=["train", "validation"], batch_size=-1))
    return tuple(bytes(s["text"][0]).decode("utf-8") for s in splits)


def make_tokenizer(name: str, train_text: str, error):
    """'bytes' or 'bpeN' (N >= 256) -> a tokenizer; a BPE is trained on `train_text`'s paragraphs."""
    if name == "bytes":
        return tokenize.ByteTokenizer()
    match = re.fullmatch(r"bpe(\d+)", name)
    if not match or int(match.group(1)) < 256:
        raise error(f"config.data.tokenizer={name!r} is not a tokenizer; use 'bytes' or 'bpeN' with N >= 256 "
                    "(e.g. 'bpe1024').")
    return tokenize.load_bpe(train_text.split("\n\n"), int(match.group(1)))


def windows(stream: np.ndarray, context: int, stride: int) -> np.ndarray:
    """Windows of `context` tokens of a stream [L] every `stride` tokens: int32 [N, context], a
    read-only view when stride is 1 (no copy)."""
    if len(stream) < context:
        raise ValueError(f"the text has {len(stream)} tokens, fewer than config.data.context={context}.")
    view = np.lib.stride_tricks.sliding_window_view(stream, context)
    return view if stride == 1 else np.ascontiguousarray(view[::stride])


def text_splits(train_text: str, test_text: str, tokenizer, context: int) -> tuple[dict, dict, float]:
    """(train, test, test bytes per token): every training window and the non-overlapping test windows."""
    train_stream = tokenizer.encode(train_text)
    test_stream = tokenizer.encode(test_text)
    train = {"tokens": windows(train_stream, context, 1)}
    test = {"tokens": windows(test_stream, context, context)}
    for split in (train, test):
        split["label"] = np.zeros(len(split["tokens"]), np.int32)
    used = len(test["tokens"]) * context  # the tokens the test windows cover
    return train, test, len(tokenizer.decode(test_stream[:used]).encode("utf-8")) / used
