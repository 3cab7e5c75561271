"""gm against PyTorch on the same CPU: the paper's DDPM UNet train step, images/s in one run, as a ratio.

    pip install -e ".[bench]"            # diffusers and torch (for a CPU-only torch: the PyTorch CPU index)
    python -m benchmarks.torch_ddpm --batch_size=8 --steps=3 --repeats=3

The PyTorch side is diffusers' UNet2DModel configured as Ho et al.'s CIFAR-10 UNet (the configuration of
google/ddpm-cifar10-32: widths 128, 256, 256, 256, two residual blocks per level, attention at 16x16,
GroupNorm(32), dropout 0.1; 35,746,307 parameters, the same count as gm's UNet). Both steps do the same
work: draw t and the noise, q_sample, predict epsilon, the mean squared error, backward, global-norm
clipping at 1, Adam at 2e-4, and the EMA update. Each side gets every core of the machine (PyTorch's
intra-op threads = os.cpu_count(); XLA's CPU backend uses them all by default), is warmed up, then timed
as the median of `--repeats` windows of `--steps` steps. Prints and appends one JSON object with both
images/s and their ratio (gm / PyTorch) to benchmarks/results.jsonl.
"""
import argparse
import os
import statistics
import time

from benchmarks.ddpm import paper_unet
from benchmarks.harness import RESULTS, environment, fake_cifar_info, measure_train_step, peak_memory, random_batch, record


def diffusers_paper_unet():
    """diffusers' UNet2DModel with the DDPM CIFAR-10 configuration (35,746,307 parameters)."""
    try:
        import diffusers
    except ImportError as e:
        raise SystemExit(f"This benchmark needs diffusers and torch: pip install -e \".[bench]\" ({e}).")
    return diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32, norm_eps=1e-6, dropout=0.1, attention_head_dim=None, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1, time_embedding_type="positional")


def measure_torch_train_step(batch_size, steps, repeats, threads):
    """images/s of the PyTorch train step (see the module docstring), median over `repeats` windows."""
    import copy

    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = diffusers_paper_unet().train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    sqrt_abar = torch.sqrt(torch.cumprod(1 - betas, 0)).float()
    sqrt_1m_abar = torch.sqrt(1 - torch.cumprod(1 - betas, 0)).float()
    batch = random_batch(fake_cifar_info(), batch_size)
    x0 = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # NCHW, PyTorch's layout

    def step():
        t = torch.randint(0, 1000, (batch_size,))
        noise = torch.randn_like(x0)
        xt = sqrt_abar[t, None, None, None] * x0 + sqrt_1m_abar[t, None, None, None] * noise
        loss = torch.mean((model(xt, t).sample - noise) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - 0.9999)
        return loss

    start = time.perf_counter()
    step()  # warm-up (oneDNN picks its kernels)
    warmup_s = time.perf_counter() - start
    windows = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        windows.append(steps * batch_size / (time.perf_counter() - start))
    return {"torch": torch.__version__, "torch_threads": threads, "torch_warmup_s": round(warmup_s, 1),
            "torch_params": sum(p.numel() for p in model.parameters()),
            "torch_images_per_s": round(statistics.median(windows), 3),
            "torch_images_per_s_windows": [round(w, 3) for w in windows]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="train steps per timed window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
    p.add_argument("--unrolled", action="store_true",
                   help="gm's UNet with config.model.scan=False (each residual block traced on its own)")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args()

    setup, method = paper_unet("float32", scan=not args.unrolled)
    batch = random_batch(fake_cifar_info(), args.batch_size)
    gm_stats, _, _ = measure_train_step(setup.run.optim, method, batch, args.steps, args.repeats)
    torch_stats = measure_torch_train_step(args.batch_size, args.steps, args.repeats, args.threads)
    result = {
        "benchmark": "ddpm_unet_train_step_gm_vs_torch",
        **environment(),
        "gm_unet_scan": not args.unrolled,
        **{f"gm_{k}": v for k, v in gm_stats.items()},
        **torch_stats,
        "ratio_gm_over_torch": round(gm_stats["train_images_per_s"] / torch_stats["torch_images_per_s"], 3),
        **peak_memory(),
    }
    record(result, args.out, indent=2)


if __name__ == "__main__":
    main()
