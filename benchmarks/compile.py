"""Compile time of the trainer's step: what a user waits before the first step, per family and size.

    python -m benchmarks.compile --family=glow                                # paper size (L = 3, K = 32)
    python -m benchmarks.compile --family=glow --depths=4,32                  # the growth with depth, one run
    python -m benchmarks.compile --family=realnvp --config=smoke
    python -m benchmarks.compile --family=transformer --set model.scan_blocks=False   # the unrolled layout

FAMILY is a registry name (`benchmarks.family` builds the config the same way: the experiment's paper
size or `--config=smoke`, changed by `--set FIELD=VALUE`). The step is `gm.train.state.step_function` under
`sharded`, lowered from abstract arguments (`jax.eval_shape` of the initial state: no parameter is
drawn, no step runs) and compiled; the row holds the lowering and the compile seconds separately, XLA's
temporaries and the number of HLO instructions of the optimized program (which scanning makes roughly
independent of depth). `--depths=4,32` measures the same config at each `model.depth` (Glow's K) in one
process, each from a cold in-memory cache, and adds the ratio of the last to the first. One JSON line
per row goes to benchmarks/results.jsonl.
"""
import time

import jax
import numpy as np

from benchmarks.family import config_arguments, family_config
from benchmarks.harness import RESULTS, dataset_info, environment, random_batch, record
from gm import families, optim, parallel
from gm.train import state as state_lib


def abstract_train_step(run_cfg, method, batch):
    """(the strategy's step function, abstract device state, device batch) for `method` on `batch`."""
    optimizer = optim.make_optimizer(run_cfg.optim)
    training = state_lib.training_of(method)
    state = jax.eval_shape(
        lambda b: state_lib.init_state(method.init(jax.random.key(0), b), training, optimizer), batch)
    strategy = parallel.make_strategy("sharded")
    step_fn = state_lib.step_function(method, optimizer, run_cfg.optim.ema_decay, run_cfg.train.micro_batches)
    replicated = parallel.replicated_sharding()
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
    return strategy.compile_step(step_fn), state, strategy.put_batch(batch)


def compile_stats(run_cfg, method, batch):
    """Seconds to lower and to compile the train step, its HLO instruction count and XLA temporaries."""
    jax.clear_caches()
    step, state, device_batch = abstract_train_step(run_cfg, method, batch)
    start = time.perf_counter()
    lowered = step.lower(state, device_batch, jax.random.key(1))
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    text = compiled.as_text() or ""
    params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
    return {"params": params, "batch_size": len(batch["label"]), "lower_s": round(lower_s, 1),
            "compile_s": round(compile_s, 1), "total_s": round(lower_s + compile_s, 1),
            "hlo_instructions": sum(1 for line in text.splitlines() if " = " in line),
            "xla_temp_mb": round(compiled.memory_analysis().temp_size_in_bytes / 2 ** 20, 1)}


def benchmark(args):
    depths = [int(d) for d in args.depths.split(",")] if args.depths else [None]
    rows = []
    for depth in depths:
        overrides = list(args.set) + ([f"model.depth={depth}"] if depth is not None else [])
        setup = families.parse(family_config(args.family, args.config, overrides))
        data = setup.run.data
        info = dataset_info(data.name, data.context, data.tokenizer)
        stage = setup.family.stages[0]
        run_cfg = setup.stage_run(stage)
        method = stage.make(setup.settings, info, None)
        batch_size = args.batch_size or run_cfg.train.batch_size
        parallel.check_batch_size(batch_size, "--batch_size")
        batch = random_batch(info, batch_size)
        row = {"benchmark": "compile", "family": args.family, "config": args.config, "overrides": overrides,
               **environment(), "shape": list(info.shape), **compile_stats(run_cfg, method, batch)}
        rows.append(row)
    if len(rows) > 1:
        rows[-1]["total_s_ratio_to_first"] = round(rows[-1]["total_s"] / rows[0]["total_s"], 2)
    return rows


def parse_args(argv=None):
    p = config_arguments(__doc__)
    p.add_argument("--depths", default="", help="comma-separated model.depth values measured in one run")
    p.add_argument("--batch_size", type=int, default=0, help="default: the config's train batch size")
    p.add_argument("--out", default=RESULTS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for row in benchmark(args):
        record(row, args.out)


if __name__ == "__main__":
    main()
