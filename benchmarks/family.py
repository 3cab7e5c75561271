"""Train step and sampler of any family, at its experiment's paper size or smoke size: one command each.

    python -m benchmarks.family --family=vae                       # vae_mnist's model, MNIST shape
    python -m benchmarks.family --family=vqvae                     # stage 1, then its transformer prior
    python -m benchmarks.family --family=pixelcnn --set model.name=transformer --batch_size=16
    python -m benchmarks.family --family=gan --set gan.d_steps=5   # DCGAN, 5 discriminator updates a step
    python -m benchmarks.family --family=nade --config=smoke       # the smoke size, 8x8 digits

FAMILY is a name of the registry `gm.families` (nade, pixelcnn, vae, vqvae, gan, realnvp, glow, ddpm,
score_sde, edm, vdm, flow_matching, wavenet, gpt, dalle); the model is its experiment's config (`--config=smoke` for its smoke
variant), changed by `--set FIELD=VALUE` (any config field, repeatable), checked as a run checks it. Data are random
examples of the config's dataset shape (MNIST 28x28x1, CIFAR-10 32x32x3, the 8x8 digits, SC09 clips,
windows of text tokens), so nothing is downloaded; "images/s" counts examples (clips, windows). Measured:

  - train: the trainer's own step (`gm.train.state.step_function`: Adam, clipping, EMA, non-finite guard,
    the state donated; a GAN's k:1 step, a VQ-VAE's codebook EMA) under --strategy, compiled, then the
    median of --repeats windows of --steps calls; images/s counts the batch's images; XLA's memory
    analysis of the compiled step;
  - sampler: the family's `sample` drawing --num_samples images from the EMA parameters after those
    steps (speed does not depend on training), compiled, then the median of --repeats calls.
    Autoregressive models are timed as `benchmarks.autoregressive` does: a full grid when its estimate
    (network evaluations x one evaluation) is below --max_seconds (always for PixelCNN++'s cached
    sampler), else that estimate, marked so;
  - peak memory: the device's peak_bytes_in_use (GPU) or the process's max RSS (CPU).

A family of several stages gets a row per stage, each made from the one before's benchmarked parameters:
the VQ-VAE's stage 1 (its sampler decodes uniform codes) and the prior over stage 1's codes (its sampler
is the model's: codes from the prior, decoded). One JSON line per row goes
to benchmarks/results.jsonl. The DDPM and the flows have their own benchmarks too (`benchmarks.ddpm`:
DDIM chains and MFU; `benchmarks.flows`: ODE solvers on trained models).
"""
import argparse
import ast
import importlib

from benchmarks import autoregressive as ar_bench
from benchmarks.harness import (RESULTS, dataset_info, environment, measure_sampler, measure_train_step, peak_memory,
                                random_batch, record)
from gm import families, parallel

AUTOREGRESSIVE = ("nade", "pixelcnn")


def parse_value(text):
    """'5' -> 5, '(1,2)' -> (1, 2), 'transformer' -> 'transformer': a Python literal, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config, items):
    """Set each 'a.b.c=value' of `items` on `config`; one sentence for a field the config lacks."""
    for item in items:
        path, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: write FIELD=VALUE, e.g. --set model.name=transformer.")
        *parents, leaf = path.split(".")
        node = config
        for name in parents:
            if name not in node:
                raise ValueError(f"--set {item!r}: the config has no field {path!r}.")
            node = node[name]
        if leaf not in node:
            raise ValueError(f"--set {item!r}: the config has no field {path!r}.")
        try:
            node[leaf] = parse_value(text)
        except TypeError as e:  # ml_collections keeps each field's type
            raise ValueError(f"--set {item!r}: {e}") from None
    return config


def family_config(family, variant, overrides):
    """The registry entry's experiment config (or its smoke variant) with the --set overrides."""
    if family not in families.FAMILIES:
        raise ValueError(f"Unknown --family {family!r}; use one of {tuple(families.FAMILIES)}.")
    module = importlib.import_module(f"experiments.{families.get(family).experiment}")
    return apply_overrides(module.get_config("smoke" if variant == "smoke" else None), overrides)


def sampler_row(family, model, method, info, params, args):
    if family in AUTOREGRESSIVE:
        return ar_bench.sampler_stats(model, method, info, params, args.repeats, args.max_seconds, args.num_samples)[0]
    return measure_sampler(method, params, args.num_samples, args.repeats, info)


def benchmark(args):
    """The rows (dicts) of one --family run: one per stage, each stage made from the one before's
    benchmarked (EMA) parameters."""
    setup = families.parse(family_config(args.family, args.config, args.set))
    data = setup.run.data
    info = dataset_info(data.name, data.context, data.tokenizer)
    common = {"benchmark": "family", "family": args.family, "config": args.config, "overrides": list(args.set),
              **environment(), "shape": list(info.shape), "strategy": args.strategy}
    rows, previous = [], None
    for stage in setup.family.stages:
        run_cfg = setup.stage_run(stage)
        method = stage.make(setup.settings, info, previous)
        batch = random_batch(info, args.batch_size or run_cfg.train.batch_size)
        stats, device_state, strategy = measure_train_step(run_cfg.optim, method, batch, args.steps, args.repeats,
                                                           args.strategy, args.steps_per_call,
                                                           run_cfg.train.micro_batches)
        previous = strategy.get_state(device_state).ema_params
        model = setup.settings.prior if stage.name == "prior" else setup.settings.model
        rows.append(dict(common, stage=stage.name or "train", model=getattr(model, "name", args.family),
                         micro_batches=run_cfg.train.micro_batches, **stats,
                         **sampler_row(args.family, model, method, info, previous, args)))
    for row in rows:
        row.update(peak_memory())  # the process's peak so far: the VQ-VAE's prior row covers both stages
    return rows


def config_arguments(description):
    """An argument parser with the arguments that pick a config: --family, --config and --set."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True, help=f"one of {', '.join(families.FAMILIES)}")
    p.add_argument("--config", default="paper", choices=("paper", "smoke"))
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a config field, e.g. model.name=gated_pixelcnn (repeatable)")
    return p


def parse_args(argv=None):
    p = config_arguments(__doc__)
    p.add_argument("--batch_size", type=int, default=0, help="default: the config's train batch size")
    p.add_argument("--steps", type=int, default=5, help="compiled calls per timed window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps_per_call", type=int, default=1, help="train steps per compiled call (lax.scan)")
    p.add_argument("--strategy", default="sharded", choices=parallel.STRATEGIES)
    p.add_argument("--num_samples", type=int, default=16)
    p.add_argument("--max_seconds", type=float, default=600.0,
                   help="autoregressive models: run the full sampler only when its estimate is below this")
    p.add_argument("--out", default=RESULTS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for name, value in (("--steps", args.steps), ("--repeats", args.repeats), ("--num_samples", args.num_samples),
                        ("--steps_per_call", args.steps_per_call)):
        if value <= 0:
            raise SystemExit(f"error: {name} must be positive, got {value}.")
    for row in benchmark(args):
        record(row, args.out)


if __name__ == "__main__":
    main()
