"""Data parallelism: the ONLY module of gm that names devices, meshes or axis names.

Models and losses are written for one global batch. A `Strategy` turns a train step written that way
into a data-parallel one:

- `sharded` (default): one jit over a 1-D Mesh of every device of every process; the batch is split
  along its first axis (NamedSharding P('batch')), the state is replicated, and XLA inserts the
  gradient all-reduce. It computes exactly what one device would with the same key.
- `pmap`: the per-device API many JAX research codebases use. Each device runs the step on its slice
  with its own key, fold_in(step key, device index), and gradients and metrics are averaged with
  `lax.pmean`. So it equals the single-device step whose loss is the mean over the same per-device
  slices and keys, and the plain single-device step for a loss that draws no randomness.

Multi-host: `initialize_distributed` calls `jax.distributed.initialize` when asked; afterwards each
process feeds its own share of the global batch and both strategies span all processes.
"""
import os
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = "batch"
STRATEGIES = ("sharded", "pmap")


def initialize_distributed(enabled=False, coordinator_address="", num_processes=-1, process_id=-1):
    """Start multi-process JAX when `enabled` or the environment asks for it (GM_DISTRIBUTED=1).

    Unset arguments ('' and -1) come from the usual JAX environment variables or the cluster
    auto-detection of `jax.distributed.initialize` (SLURM, TPU pods, ...). On CPU the processes talk
    through gloo collectives (JAX's default).
    """
    if not (enabled or os.environ.get("GM_DISTRIBUTED", "") == "1") or jax.distributed.is_initialized():
        return
    given = dict(coordinator_address=coordinator_address or None,
                 num_processes=None if num_processes < 0 else num_processes,
                 process_id=None if process_id < 0 else process_id)
    if given["num_processes"] is not None and not 0 <= (given["process_id"] or 0) < given["num_processes"]:
        raise ValueError(f"config.parallel.process_id={process_id} must be in [0, {num_processes}) for "
                         f"config.parallel.num_processes={num_processes}.")
    jax.distributed.initialize(**given)


def barrier(name):
    """Wait until every process has reached the barrier called `name` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def process_index():
    return jax.process_index()


def process_count():
    return jax.process_count()


def check_batch_size(batch_size, field="config.train.batch_size"):
    """Raise one clear sentence unless the global batch splits evenly over every device; `field` names
    the config field the batch size came from."""
    n = jax.device_count()
    if batch_size <= 0 or batch_size % n:
        raise ValueError(f"{field}={batch_size} must be a positive multiple of the {n} devices "
                         f"({jax.process_count()} process(es)); set it to a multiple of {n}.")


def check_micro_batches(batch_size, micro_batches, field="config.train.micro_batches",
                        batch_field="config.train.batch_size"):
    """Raise one clear sentence unless each device's share of the batch splits into `micro_batches`
    slices of whole groups (`gm.optim.micro_batch`), so no example moves between devices."""
    per_device = batch_size // jax.device_count()
    if micro_batches < 1 or per_device % micro_batches:
        raise ValueError(f"{field}={micro_batches} must divide the {per_device} examples each of the "
                         f"{jax.device_count()} devices gets from {batch_field}={batch_size}.")


def round_up_to_devices(n):
    """The smallest multiple of the device count that is >= n."""
    d = jax.device_count()
    return -(-n // d) * d


def data_mesh():
    """A 1-D mesh over every device of every process, axis name 'batch'."""
    return Mesh(np.asarray(jax.devices()), (BATCH_AXIS,))


def batch_sharding():
    return NamedSharding(data_mesh(), P(BATCH_AXIS))


def replicated_sharding():
    return NamedSharding(data_mesh(), P())


def replicate(tree):
    """Place a pytree (numpy or single-device arrays, equal on every process) replicated on all devices."""
    return jax.device_put(tree, replicated_sharding())


def stacked_batch_sharding():
    """Batches stacked along a leading step axis [K, B, ...]: the batch axis (1) split over devices."""
    return NamedSharding(data_mesh(), P(None, BATCH_AXIS))


def shard_batch(local_batch, stacked=False):
    """This process's rows of the global batch -> global arrays split along the batch axis over all
    devices (axis 0, or axis 1 of batches stacked [K, B, ...] for several steps per call)."""
    sharding = stacked_batch_sharding() if stacked else batch_sharding()
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local_batch)


class Strategy(NamedTuple):
    """How state and batches live on devices and how a step is compiled.

    put_state(state) -> device state;  get_state(device state) -> one replicated global copy (for
    checkpoints, sampling and evaluation);  put_batch(local numpy batch, stacked=False) -> device
    batch (stacked: K batches [K, B, ...] for K steps in one call);  compile_step(step, stacked=False)
    -> compiled (state, batch, key) -> (state, metrics), where `step` takes the keywords `reduce_fn`
    and `device_key_fn`; stacked, the compiled function runs `step` once per stacked batch in one
    `lax.scan` and returns the metrics stacked [K]. The metrics are equal on every device: read them
    with `host_scalars` (or `host_vectors` when stacked).
    """
    name: str
    put_state: Callable[[Any], Any]
    get_state: Callable[[Any], Any]
    put_batch: Callable[[Any], Any]
    compile_step: Callable[[Callable], Callable]


def scan(body, init, xs):
    """`lax.scan(body, init, xs)` for loops whose body trains a network (K train steps, a GAN's k
    discriminator updates): one iteration is a plain call, and on CPU every loop is unrolled.

    XLA:CPU compiles the convolutions of a loop body, and their gradients, through its generic emitter
    instead of its YNNPACK kernels, even in a loop of one iteration: a DDPM UNet step was 10x slower
    (2.3 s against 0.22 s for a small UNet at batch 8), a DCGAN discriminator update 35x (11.1 s
    against 0.32 s at batch 128). Unrolled, the iterations are straight-line code at the price of
    K times the compile time; accelerators keep the rolled loop and compile one body.
    """
    length = len(jax.tree.leaves(xs)[0])
    if length == 1:
        carry, y = body(init, jax.tree.map(lambda x: x[0], xs))
        return carry, jax.tree.map(lambda a: a[None], y)
    return jax.lax.scan(body, init, xs, unroll=jax.default_backend() == "cpu")


def scan_steps(step):
    """(state, batch, key, **kw) -> (state, metrics)  =>  (state, batches [K, ...], key, **kw) ->
    (state after K steps, metrics stacked [K]): one `scan` (unrolled on CPU), so K steps cost one
    dispatch and the device holds one state and K batches (activations are not kept across steps)."""
    def many(state, batches, key, **kw):
        return scan(lambda s, b: step(s, b, key, **kw), state, batches)

    return many


def _sharded():
    def compile_step(step, stacked=False):
        rep = replicated_sharding()
        data = stacked_batch_sharding() if stacked else batch_sharding()
        fn = scan_steps(step) if stacked else step
        return jax.jit(fn, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=0)

    return Strategy("sharded", put_state=replicate, get_state=lambda s: s, put_batch=shard_batch,
                    compile_step=compile_step)


def _local_copy(x):
    """A replicated (or per-device) array as numpy, read from this process's first shard."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def _pmap():
    n_local = jax.local_device_count()

    def put_state(state):
        return jax.tree.map(lambda x: np.broadcast_to(_local_copy(x), (n_local,) + np.shape(x)), state)

    def get_state(state):
        return replicate(jax.tree.map(lambda x: _local_copy(x)[0], state))

    def put_batch(local_batch, stacked=False):
        if not stacked:
            return jax.tree.map(lambda x: np.reshape(x, (n_local, -1) + x.shape[1:]), local_batch)
        # [K, B, ...] -> [devices, K, B / devices, ...]: each device scans over its own slices.
        return jax.tree.map(lambda x: np.swapaxes(np.reshape(x, (x.shape[0], n_local, -1) + x.shape[2:]), 0, 1),
                            local_batch)

    def compile_step(step, stacked=False):
        fn = scan_steps(step) if stacked else step

        def per_device(state, batch, key):
            return fn(state, batch, key, reduce_fn=lambda t: jax.lax.pmean(t, BATCH_AXIS),
                      device_key_fn=lambda k: jax.random.fold_in(k, jax.lax.axis_index(BATCH_AXIS)))

        return jax.pmap(per_device, axis_name=BATCH_AXIS, in_axes=(0, 0, None), donate_argnums=0)

    return Strategy("pmap", put_state=put_state, get_state=get_state, put_batch=put_batch,
                    compile_step=compile_step)


def make_strategy(name):
    """'sharded' or 'pmap' -> Strategy."""
    if name == "sharded":
        return _sharded()
    if name == "pmap":
        return _pmap()
    raise ValueError(f"Unknown config.parallel.strategy {name!r}; use one of {STRATEGIES}.")


def jit_sampler(sample_fn, num):
    """jit (params, key) -> sample_fn(params, key, num), the samples split over devices when num allows.

    XLA partitions the whole sampling loop along the sample axis, so every device draws its share.
    """
    out = batch_sharding() if num % jax.device_count() == 0 else replicated_sharding()
    return jax.jit(lambda params, key: sample_fn(params, key, num), out_shardings=out)


def jit_per_example(fn):
    """jit fn(params, key, batch) -> [B] with the batch and the result split over devices.

    For evaluation under either strategy; `params` come from `Strategy.get_state`.
    """
    rep, data = replicated_sharding(), batch_sharding()
    return jax.jit(fn, in_shardings=(rep, rep, data), out_shardings=data)


def jit_batched(fn):
    """jit fn(params, batch) -> pytree of [B, ...]: params replicated, the batch and every output split
    over devices (a feature network applied to samples that the sampler left split the same way)."""
    rep, data = replicated_sharding(), batch_sharding()
    return jax.jit(fn, in_shardings=(rep, data), out_shardings=data)


def to_host(tree):
    """Fetch a pytree of (possibly multi-process) global arrays as numpy on every process."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def host_scalars(tree):
    """Scalars of a pytree of replicated (or per-device) arrays -> Python floats, read from this
    process's first shard so it works across processes without a collective."""
    return jax.tree.map(lambda x: float(np.asarray(x.addressable_shards[0].data).reshape(-1)[0]), tree)


def host_vectors(tree):
    """Like `host_scalars` for metrics stacked over K steps: each leaf -> float64 numpy [K]."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data, np.float64).reshape(-1), tree)
