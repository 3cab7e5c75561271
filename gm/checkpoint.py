"""Checkpoints: the ONLY module of gm that imports Orbax.

A checkpoint holds two items: `state`, the whole TrainState (step, params, optimizer state, EMA params,
skip counter) as arrays, and `meta`, a small JSON dict (the data position and anything else a run
wants to check on resume) plus a CRC-32 of every array. Saves are asynchronous: training continues
while the arrays are written, and Orbax commits a step atomically (a half-written step lives in a
temporary folder that is never listed, and a writer's Checkpointer removes such folders when it starts).

Restoring checks the checkpoint before trusting it:

* its arrays' paths, shapes and dtypes must be the ones the caller expects, else
  `CheckpointMismatchError` (the checkpoint is fine, the caller's model is not that model);
* every array must read back and match its recorded CRC-32, else `CorruptCheckpointError`: Orbax
  itself restores a flipped byte silently, which is why the checksums exist.

`restore_newest_good` walks back from the newest step past corrupted ones, with a warning that names
each bad step; a writer moves them aside into DIRECTORY.corrupt/ (nothing is deleted) so the run can
write those steps again.
"""
import contextlib
import os
import shutil
import time
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from gm import parallel

CHECKSUMS = "checksums"  # the meta field that holds {array path: CRC-32}


class CheckpointMismatchError(ValueError):
    """The checkpoint's arrays are not the ones the caller asked to restore (another model's)."""


class CorruptCheckpointError(RuntimeError):
    """A committed checkpoint that cannot be read back as it was written; `.step` names it."""

    def __init__(self, step, reason):
        super().__init__(f"step {step}: {reason}")
        self.step, self.reason = step, reason


class NoGoodCheckpointError(ValueError):
    """Every checkpoint in the folder is corrupted."""


@contextlib.contextmanager
def _orbax_errors_only():
    """Silence Orbax's warnings about choices made here on purpose."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _register_array_handler():
    """Replica-parallel saving (Orbax's default off GPU) slices every replicated array into one piece
    per device, which costs a compiled slice per array shape and saves nothing for parameter-sized
    arrays; above 64 MiB per replica it still pays off, so only smaller arrays are written whole."""
    with _orbax_errors_only():  # Orbax warns on every override
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=64 * 2 ** 20),
            override=True)


_register_array_handler()


def _key_name(entry):
    for field in ("key", "name", "idx"):
        if hasattr(entry, field):
            return str(getattr(entry, field))
    return str(entry)


def path_name(path):
    """A pytree key path as 'params/Conv_0/kernel': the same string whether the tree is the caller's
    (attributes, tuples) or Orbax's metadata (nested dicts)."""
    return "/".join(_key_name(e) for e in path)


def named_leaves(tree):
    """{path_name: leaf} of a pytree."""
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _host_copy(x):
    """This process's full copy of a leaf as numpy, or None when no process holds one whole
    (an array split over processes, which gm's replicated train state never is)."""
    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if not (x.is_fully_addressable or x.is_fully_replicated):
            return None
        x = x.addressable_data(0) if not x.is_fully_addressable else x
    return np.asarray(x)


def array_checksums(tree):
    """{path_name: CRC-32 of the leaf's bytes} for every leaf this process holds whole."""
    sums = {}
    for name, leaf in named_leaves(tree).items():
        a = _host_copy(leaf)
        if a is not None:
            sums[name] = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1))
    return sums


def _describe(x):
    return f"{tuple(x.shape)} {np.dtype(x.dtype).name}"


def check_fits(saved, target):
    """Raise CheckpointMismatchError unless the saved array metadata ({path: leaf with .shape/.dtype})
    has exactly the target's paths, shapes and dtypes; the message names the first difference."""
    missing, unexpected = sorted(set(target) - set(saved)), sorted(set(saved) - set(target))
    if missing or unexpected:
        parts = ([f"lacks {len(missing)} array(s) this model has, e.g. {missing[0]}"] if missing else []) + (
            [f"holds {len(unexpected)} array(s) this model lacks, e.g. {unexpected[0]}"] if unexpected else [])
        raise CheckpointMismatchError(" and ".join(parts))
    for name in sorted(target):
        s, t = saved[name], target[name]
        if tuple(s.shape) != tuple(t.shape) or np.dtype(s.dtype) != np.dtype(t.dtype):
            raise CheckpointMismatchError(f"holds {name} as {_describe(s)} where this model has {_describe(t)}")


class Checkpointer:
    """Save every `save_every` steps, keep the last `keep`, restore onto the current sharding.

    Args:
      directory: where the step folders go (created if missing).
      save_every: `save(step, ...)` only writes when step % save_every == 0, unless force=True.
      keep: how many of the newest checkpoints to keep (None keeps all).
      async_save: write in a background thread; `wait()` blocks until the last save is committed.
      read_only: for readers (evaluation, sampling) that may run beside a training run: never
        creates, cleans up or moves anything in `directory`.
    """

    def __init__(self, directory, *, save_every=1, keep=None, async_save=True, read_only=False):
        if save_every <= 0:
            raise ValueError(f"save_every must be positive, got {save_every}.")
        if keep is not None and keep <= 0:
            raise ValueError(f"keep must be positive or None, got {keep}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        self.read_only = read_only
        # A writer removes the temporary folders of saves that a crash interrupted; a reader must not,
        # since one may belong to a save that a live training run has in flight.
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save)
        self._manager = self._open()

    def _open(self):
        with _orbax_errors_only():  # a reader's options are warned about as if they were a mistake
            manager = ocp.CheckpointManager(self.directory, options=self._options, item_handlers={
                "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
        # Orbax clears the temporary folders in a background thread and waits for it only at the
        # first save; waiting here means a writer that restores (and may move bad steps aside) sees
        # the folder as it will stay. The hook is private, hence the guard.
        getattr(manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
        return manager

    def latest_step(self):
        """The newest committed step, or None."""
        return self._manager.latest_step()

    def all_steps(self):
        return sorted(self._manager.all_steps())

    def save(self, step, state, meta=None, *, force=False):
        """Start saving `state` (a pytree of global arrays) and `meta` (JSON-able dict) at `step`.

        Returns True when a save was started. Does not block on the write unless a previous one is
        still in flight; the checksums are taken from the arrays before this returns.
        """
        if not force and step % self.save_every:
            return False
        meta = dict(meta or {}, **{CHECKSUMS: array_checksums(state)})
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        return self._manager.save(int(step), args=args, force=force)

    def newest_meta(self):
        """The `meta` dict of the newest step (without checksums), or {} when there is none or it does
        not read back."""
        step = self.latest_step()
        if step is None:
            return {}
        try:
            meta = self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception:  # noqa: BLE001  (a corrupted step: the restore that follows names it)
            return {}
        return {k: v for k, v in dict(meta or {}).items() if k != CHECKSUMS}

    def _saved_arrays(self, step):
        metadata = self._manager.item_metadata(step)["state"]
        tree = getattr(metadata, "tree", metadata)
        return None if tree is None else named_leaves(tree)

    def restore(self, target, step=None):
        """Read (state, meta) at `step` (default: latest) into the structure, dtypes and shardings of
        `target`, a pytree of arrays or jax.ShapeDtypeStruct with `.sharding` set.

        Raises CheckpointMismatchError when the checkpoint holds other arrays than `target` and
        CorruptCheckpointError when it cannot be read back as written.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        abstract = jax.tree.map(_abstract, target)
        try:
            saved = self._saved_arrays(step)
        except Exception as e:  # noqa: BLE001  (any failure to read what Orbax wrote)
            raise CorruptCheckpointError(step, f"its array metadata is unreadable ({_first_line(e)})") from e
        if saved is not None:
            check_fits(saved, named_leaves(abstract))
        try:
            out = self._manager.restore(int(step), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001
            raise CorruptCheckpointError(step, f"it does not read back ({_first_line(e)})") from e
        state, meta = out["state"], dict(out["meta"] or {})
        recorded = meta.pop(CHECKSUMS, None)
        if recorded is not None:  # checkpoints written before checksums existed are taken as they are
            actual = array_checksums(state)
            bad = sorted(n for n in recorded if n in actual and actual[n] != recorded[n])
            if bad or set(recorded) - set(actual):
                what = bad[0] if bad else sorted(set(recorded) - set(actual))[0]
                raise CorruptCheckpointError(step, f"{what} does not match the checksum written with it")
        return state, meta

    def restore_newest_good(self, target):
        """(state, meta, step) from the newest checkpoint that reads back intact, or None if there are
        none. Each newer, corrupted step is named in a warning; a writer moves it into
        DIRECTORY.corrupt/ once an older step has restored, so it can save that step again.

        Raises CheckpointMismatchError (nothing is moved) when a checkpoint holds another model, and
        NoGoodCheckpointError (nothing is moved) when every checkpoint is corrupted.
        """
        bad = []
        for step in reversed(self.all_steps()):
            try:
                state, meta = self.restore(target, step)
            except CorruptCheckpointError as e:
                logging.warning("The checkpoint at step %d in %s is corrupted (%s); trying the previous one.",
                                step, self.directory, e.reason)
                bad.append(step)
                continue
            if bad:
                logging.warning("Resuming from step %d in %s instead of the corrupted step(s) %s.",
                                step, self.directory, ", ".join(map(str, bad)))
                self._set_aside(bad)
            return state, meta, step
        if bad:
            raise NoGoodCheckpointError(
                f"Every checkpoint in {self.directory} is corrupted (steps {', '.join(map(str, bad))}); move "
                f"that folder away to start afresh, or restore it from a copy.")
        return None

    def _set_aside(self, steps):
        """Move step folders into DIRECTORY.corrupt/ (process 0; every process waits for it)."""
        if self.read_only:
            return
        self._manager.wait_until_finished()
        if parallel.process_index() == 0:
            aside = self.directory + ".corrupt"
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                destination = os.path.join(aside, str(step))
                if os.path.exists(destination):
                    destination += f".{time.time_ns()}"
                shutil.move(os.path.join(self.directory, str(step)), destination)
                logging.warning("Moved the corrupted step %d to %s.", step, destination)
        parallel.barrier("gm_checkpoint_set_aside")
        self._manager.close()
        self._manager = self._open()

    def wait(self):
        """Block until every started save is committed."""
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def _first_line(error):
    """The first line of the innermost cause: TensorStore's own words ('Truncated Zstd-compressed
    stream'), not Orbax's wrapper with its page-long spec."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
