"""Checkpoints: the ONLY module of gm that imports Orbax.

A checkpoint holds two items: `state`, the whole TrainState (step, params, optimizer state, EMA params,
skip counter) as arrays, and `meta`, a small JSON dict (the data position and anything else a run
wants to check on resume). Saves are asynchronous: training continues while the arrays are written,
and Orbax commits a step atomically (a half-written step is never listed).
"""
import os

import jax
import orbax.checkpoint as ocp
from absl import logging


def _register_array_handler():
    """Replica-parallel saving (Orbax's default off GPU) slices every replicated array into one piece
    per device, which costs a compiled slice per array shape and saves nothing for parameter-sized
    arrays; above 64 MiB per replica it still pays off, so only smaller arrays are written whole."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # Orbax warns on every override; this one is deliberate
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=64 * 2 ** 20),
            override=True)
    finally:
        logging.set_verbosity(verbosity)


_register_array_handler()


class Checkpointer:
    """Save every `save_every` steps, keep the last `keep`, restore onto the current sharding.

    Args:
      directory: where the step folders go (created if missing).
      save_every: `save(step, ...)` only writes when step % save_every == 0, unless force=True.
      keep: how many of the newest checkpoints to keep (None keeps all).
      async_save: write in a background thread; `wait()` blocks until the last save is committed.
    """

    def __init__(self, directory, *, save_every=1, keep=None, async_save=True):
        if save_every <= 0:
            raise ValueError(f"config.train.checkpoint_every must be positive, got {save_every}.")
        if keep is not None and keep <= 0:
            raise ValueError(f"config.train.keep_checkpoints must be positive, got {keep}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self):
        """The newest committed step, or None."""
        return self._manager.latest_step()

    def all_steps(self):
        return sorted(self._manager.all_steps())

    def save(self, step, state, meta=None, *, force=False):
        """Start saving `state` (a pytree of global arrays) and `meta` (JSON-able dict) at `step`.

        Returns True when a save was started. Does not block on the write unless a previous one is
        still in flight.
        """
        if not force and step % self.save_every:
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
        return self._manager.save(int(step), args=args, force=force)

    def restore(self, target, step=None):
        """Read (state, meta) at `step` (default: latest) into the structure, dtypes and shardings of
        `target`, a pytree of arrays or jax.ShapeDtypeStruct with `.sharding` set."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        abstract = jax.tree.map(_abstract, target)
        out = self._manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"] or {})

    def wait(self):
        """Block until every started save is committed."""
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
