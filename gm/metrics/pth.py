"""Read a PyTorch state dict (.pth) into numpy arrays without PyTorch.

`torch.save` writes either a zip archive (torch >= 1.6: `<name>/data.pkl`, one `<name>/data/<key>`
record of raw little-endian bytes per storage) or the older "legacy" stream (pickled magic number,
protocol version and system info, the pickled object, the pickled storage keys, then each storage as an
int64 element count and its bytes). In both the object is a pickle whose tensors are
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls and whose storages are
persistent ids `('storage', torch.FloatStorage, key, location, numel[, view])`.

The unpickler here is restricted: it resolves only those names (and `collections.OrderedDict`), so a
file that asks for anything else, such as code to run, is refused instead of executed.
"""
from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class PthError(ValueError):
    """The file is not a PyTorch state dict this reader understands."""


class _StorageType:
    """Stands for `torch.FloatStorage` and its kin: only its dtype matters."""

    def __init__(self, name: str):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """A storage whose bytes may arrive after the tensors that view it (legacy files)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, numel, None


class _Tensor:
    """A view into a storage, made into an array once every storage is read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise PthError("a tensor's storage is missing from the file")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:], self.size, [s * itemsize for s in self.stride])
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    del unused  # requires_grad, backward hooks, metadata
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    del unused
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict, load_storage=None):
        super().__init__(file)
        self._storages, self._load_storage = storages, load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        raise PthError(f"it refers to {module}.{name}, which a state dict of tensors does not need")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
            raise PthError(f"unknown persistent id {pid!r:.60}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if len(pid) > 5 and pid[5] is not None:
            raise PthError("it holds a view of a storage (saved by a torch before 1.0); re-save it with a newer torch")
        if not isinstance(storage_type, _StorageType):
            raise PthError(f"unknown storage type {storage_type!r:.60}")
        if key not in self._storages:
            storage = _Storage(storage_type.dtype, numel)
            if self._load_storage is not None:
                storage.data = self._load_storage(key, storage)
            self._storages[key] = storage
        return self._storages[key]


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise PthError("the zip archive has no single data.pkl")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise PthError("it was saved big-endian")

        def load_storage(key, storage):
            data = np.frombuffer(archive.read(f"{prefix}data/{key}"), storage.dtype)
            if data.size < storage.numel:
                raise PthError(f"storage {key} is truncated")
            return data

        with archive.open(pickles[0]) as f:
            return _Unpickler(f, {}, load_storage).load()


def _read_legacy(f: BinaryIO) -> Any:
    plain = lambda: _Unpickler(f, {}).load()  # noqa: E731  (restricted too: the header is data only)
    if plain() != LEGACY_MAGIC:
        raise PthError("it is neither a zip archive nor a legacy torch.save stream")
    if plain() != LEGACY_PROTOCOL:
        raise PthError("its legacy protocol version is not 1001")
    info = plain()
    if not isinstance(info, dict) or not info.get("little_endian", True):
        raise PthError("it was saved big-endian")
    storages: dict = {}
    obj = _Unpickler(f, storages).load()
    for key in plain():
        storage = storages[str(key)]
        numel = int(np.frombuffer(f.read(8), "<i8")[0])
        data = np.frombuffer(f.read(numel * storage.dtype.itemsize), storage.dtype)
        if data.size != numel or numel < storage.numel:
            raise PthError(f"storage {key} is truncated")
        storage.data = data
    return obj


def _arrays(obj: Any) -> Any:
    """The loaded object with every tensor made a numpy array (dicts keep their order)."""
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, dict):
        return {k: _arrays(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_arrays(v) for v in obj)
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: numpy array} of the state dict `torch.save` wrote to `path` (zip or legacy format).

    Arrays keep the torch layout and dtype (bfloat16 through ml_dtypes). Raises PthError, one sentence,
    for a file that is not a state dict of tensors.
    """
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            obj = _read_zip(path)
        else:
            with open(path, "rb") as f:
                obj = _read_legacy(f)
    except PthError as e:
        raise PthError(f"{path} is not a PyTorch state dict gm can read: {e}.") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise PthError(f"{path} is not a PyTorch state dict gm can read ({type(e).__name__}: {e}).") from None
    if not isinstance(obj, dict):
        raise PthError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    return _arrays(obj)
