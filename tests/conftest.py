"""Test setup, before JAX is imported: 8 fake CPU devices so every parallel path runs anywhere, and a
per-session persistent compilation cache so the same program (in this process or in an experiment's
subprocess) is compiled once; XLA's CPU compiler, not the math, dominates the suite's time."""
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One folder for every worker and subprocess of the suite; entries are keyed by program and versions.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"gm-test-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The digits classifier behind fid_digits is trained once and shared by every test and subprocess.
os.environ.setdefault("GM_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"gm-test-cache-{os.getuid()}"))
# Nothing is downloaded in tests (the FID weights, when missing, fail with their sentence at once).
os.environ.setdefault("GM_OFFLINE", "1")

# The notebooks train for thousands of steps, where optimised code wins: their kernels get the
# environment as it is here, at XLA's default optimisation level.
NOTEBOOK_ENV = dict(os.environ)
# Every other test runs a few steps of each program, so its time is mostly XLA compiling. In-process
# tests compile at backend optimisation level 1: about 30% less compile time than the default, and
# tests that train a few hundred steps were faster there than at the default or at 0 (which compiles
# faster still but runs slower). The experiments' child processes run a handful of steps: level 0.
_FLAGS = os.environ["XLA_FLAGS"]
os.environ["XLA_FLAGS"] = _FLAGS + " --xla_backend_optimization_level=1"
CHILD_ENV = dict(os.environ, XLA_FLAGS=_FLAGS + " --xla_backend_optimization_level=0")


import socket  # noqa: E402  (after the environment above, which must precede any JAX import)

import pytest  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails: proves a code path reads only local files."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def write_tfds_metadata(tfds, name, data_dir, num_train, num_test, more_splits=()):
    """TFDS metadata with split sizes, which `batch_size=-1` needs to size its one batch: under
    `mock_data` without it the split sizes are unknown and TFDS batches by sys.maxsize, aborting.
    `more_splits`: further (name, size) pairs (COCO's 'val' and 'restval')."""
    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[k], num_bytes=0, filename_template=None)
        for s, k in (("train", num_train), ("test", num_test)) + tuple(more_splits)]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


@pytest.fixture(scope="session")
def coco_captions(tmp_path_factory):
    """gm.data's coco_captions built from TFDS mock data (random images and captions): 4 training images
    (train + restval) and 2 test images, cached in a folder of its own."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from gm import data

    folder = tmp_path_factory.mktemp("coco")
    metadata = str(folder / "metadata")
    write_tfds_metadata(tfds, "coco_captions", metadata, 2, 2, more_splits=(("val", 2), ("restval", 2)))
    with tfds.testing.mock_data(num_examples=2, data_dir=metadata):
        return data.load("coco_captions", data_dir=str(folder / "data"))


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """After each test file, drop the compiled programs and traces JAX keeps in memory. A worker runs
    hundreds of tests, each compiling its own small programs; kept, they grew each worker past 6 GB
    over the suite. A later file that needs one again reads it from the persistent cache."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
