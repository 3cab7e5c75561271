"""Reading PyTorch state dicts without PyTorch: files written here the way `torch.save` writes them.

`torch.save` pickles tensors as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, hooks)` and storages as persistent ids; the writers below produce the same pickle
opcodes through stand-in `torch` modules, in the zip layout (torch >= 1.6) and the legacy stream.
"""
import collections
import os
import pickle
import sys
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest

from gm.metrics import pth


class FakeStorage:
    def __init__(self, key, flat):
        self.key, self.flat = key, flat


class FakeTensor:
    """A strided view (in elements) of a FakeStorage."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, protocol):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())


STORAGE_NAMES = {np.dtype(v): k for k, v in pth.STORAGE_DTYPES.items()}


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-in `torch` and `torch._utils` modules, so pickle writes torch's global names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in pth.STORAGE_DTYPES:
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _persistent_id(torch, legacy):
    def pid(obj):
        if isinstance(obj, FakeStorage):
            storage_type = getattr(torch, STORAGE_NAMES[obj.flat.dtype])
            base = ("storage", storage_type, obj.key, "cpu", obj.flat.size)
            return base + (None,) if legacy else base
        return None
    return pid


def save_zip(torch, obj, storages, path):
    """torch >= 1.6's layout: archive/data.pkl (protocol 2), archive/data/KEY, byteorder, version."""
    import io
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.persistent_id = _persistent_id(torch, legacy=False)
    pickler.dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buffer.getvalue())
        z.writestr("archive/byteorder", "little")
        for s in storages:
            z.writestr(f"archive/data/{s.key}", s.flat.tobytes())
        z.writestr("archive/version", "3\n")


def save_legacy(torch, obj, storages, path):
    """torch < 1.6's stream: magic, protocol, sys info, the object, the sorted keys, then each storage."""
    with open(path, "wb") as f:
        for header in (pth.LEGACY_MAGIC, pth.LEGACY_PROTOCOL,
                       {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}):
            pickle.dump(header, f, protocol=2)
        pickler = pickle.Pickler(f, protocol=2)
        pickler.persistent_id = _persistent_id(torch, legacy=True)
        pickler.dump(obj)
        pickle.dump(sorted(s.key for s in storages), f, protocol=2)
        for s in sorted(storages, key=lambda s: s.key):
            f.write(np.int64(s.flat.size).tobytes())
            f.write(s.flat.tobytes())


def state_dict_with_views():
    """(object to pickle, its storages, the arrays expected back)."""
    rng = np.random.default_rng(0)
    conv = rng.normal(size=24).astype(np.float32)
    shared = rng.normal(size=10).astype(np.float64)
    storages = [FakeStorage("0", conv), FakeStorage("1", shared), FakeStorage("2", np.array([7], np.int64)),
                FakeStorage("3", rng.normal(size=6).astype(np.float16)),
                FakeStorage("4", np.array([True, False, True])),
                FakeStorage("5", rng.normal(size=4).astype(ml_dtypes.bfloat16))]
    obj = collections.OrderedDict([
        ("conv.weight", FakeTensor(storages[0], 0, (2, 3, 2, 2), (12, 4, 2, 1))),
        ("conv.weight_t", FakeTensor(storages[0], 0, (3, 2, 4), (4, 12, 1))),      # a transposed view
        ("bn.running_mean", FakeTensor(storages[1], 2, (5,), (1,))),               # an offset view
        ("bn.running_var", FakeTensor(storages[1], 1, (3,), (3,))),                # a strided one
        ("bn.num_batches_tracked", FakeTensor(storages[2], 0, (), ())),
        ("half", FakeTensor(storages[3], 0, (2, 3), (3, 1))),
        ("mask", FakeTensor(storages[4], 0, (3,), (1,))),
        ("bf16", FakeTensor(storages[5], 0, (4,), (1,))),
    ])
    expected = {
        "conv.weight": conv.reshape(2, 3, 2, 2),
        "conv.weight_t": np.transpose(conv.reshape(2, 3, 4), (1, 0, 2)),
        "bn.running_mean": shared[2:7], "bn.running_var": shared[1:10:3],
        "bn.num_batches_tracked": np.array(7, np.int64), "half": storages[3].flat.reshape(2, 3),
        "mask": storages[4].flat, "bf16": storages[5].flat,
    }
    return obj, storages, expected


@pytest.mark.parametrize("save", [save_zip, save_legacy])
def test_reads_both_torch_save_formats_with_views_offsets_and_dtypes(fake_torch, tmp_path, save):
    obj, storages, expected = state_dict_with_views()
    path = tmp_path / "weights.pth"
    save(fake_torch, obj, storages, path)
    got = pth.read_state_dict(path)
    assert list(got) == list(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want)
        assert got[name].flags.writeable  # copies, not views of the file's buffer


def test_a_pickle_that_asks_for_code_is_refused_not_run(tmp_path):
    class Exploit:
        def __reduce__(self):
            return os.system, ("touch " + str(tmp_path / "ran"),)

    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Exploit()}, protocol=2))
    with pytest.raises(pth.PthError, match="not a PyTorch state dict gm can read"):
        pth.read_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "ran").exists()


def test_a_file_that_is_not_a_state_dict_is_one_sentence(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00\x01 not a pickle")
    with pytest.raises(pth.PthError, match="junk.pth is not a PyTorch state dict gm can read"):
        pth.read_state_dict(tmp_path / "junk.pth")
