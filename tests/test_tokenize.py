"""Tokenizers: every byte string and every text round-trips; BPE is trained, cached and compresses."""
import os
import pydoc_data.topics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gm import tokenize

CORPUS = list(pydoc_data.topics.topics.values())


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return tokenize.load_bpe(CORPUS, 512, cache_dir=str(tmp_path_factory.mktemp("bpe")))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_bytes_round_trip_on_arbitrary_bytes(data):
    t = tokenize.ByteTokenizer()
    ids = t.encode_bytes(data)
    assert ids.dtype == np.int32 and len(ids) == len(data) and (ids.size == 0 or ids.max() < 256)
    assert t.decode_bytes(ids) == data


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_every_text_round_trips_through_both_tokenizers(bpe, text):
    for t in (tokenize.ByteTokenizer(), bpe):
        ids = t.encode(text)
        assert ids.dtype == np.int32 and (ids.size == 0 or 0 <= ids.min() and ids.max() < t.vocab_size)
        assert t.decode(ids) == text


def test_bpe_compresses_english_and_is_cached(bpe, tmp_path):
    assert bpe.vocab_size == 512
    held_out = "The for statement is used to iterate over the elements of a sequence."
    assert bpe.bytes_per_token(held_out) > 2.0  # measured: about 3 bytes per token
    cache = tmp_path / "cache"
    first = tokenize.load_bpe(CORPUS[:20], 300, cache_dir=str(cache))
    (name,) = os.listdir(cache)
    assert name.startswith("bpe_v1_300_") and name.endswith(".json")
    again = tokenize.load_bpe(CORPUS[:20], 300, cache_dir=str(cache))  # read back, not retrained
    np.testing.assert_array_equal(again.encode(held_out), first.encode(held_out))
    with pytest.raises(ValueError, match="vocab_size >= 256"):
        tokenize.train_bpe(CORPUS[:2], 100)


def test_byte_ids_out_of_range_and_bits_per_byte():
    with pytest.raises(ValueError, match="0..255"):
        tokenize.ByteTokenizer.decode_bytes([3, 256])
    assert tokenize.bits_per_byte(np.log(2.0) * 80, 10) == pytest.approx(8.0)
    assert tokenize.ByteTokenizer().decode([0xC3]) == "\ufffd"  # half a UTF-8 character
