"""The experiment as a person runs it: train, resume exactly, sample, evaluate, stop on SIGTERM, and
fail with one sentence on a bad config. Each run is a fresh process, like a real restart."""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import CHILD_ENV
from experiments import cyclegan, ddpm_cifar, stylegan2_cifar
from gm import audio
from gm.train import loop
from gm.train import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--config=experiments/ddpm_cifar.py:smoke", "--config.train.log_every=2",
         "--config.train.checkpoint_every=4", "--config.train.sample_every=4"]


def _cmd(workdir, *args):
    return [sys.executable, "-m", "experiments.ddpm_cifar", f"--workdir={workdir}", *SMOKE, *args]


def _run(workdir, *args, timeout=300):
    proc = subprocess.run(_cmd(workdir, *args), cwd=REPO, env=CHILD_ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _final_state(workdir, num_steps):
    config = ddpm_cifar.get_config("smoke")
    config.train.num_steps = num_steps
    restored = run_lib.restore(config, str(workdir))
    return restored.state, restored.step


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """8 steps straight vs 4 steps, a fresh process, then 4 more."""
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    _run(straight, "--config.train.num_steps=8")
    _run(resumed, "--config.train.num_steps=4")
    second = _run(resumed, "--config.train.num_steps=8")
    return straight, resumed, second


def test_resume_is_bit_exact(resumed_run):
    straight, resumed, second = resumed_run
    assert "Restored step 4" in second.stderr
    a, step_a = _final_state(straight, 8)
    b, step_b = _final_state(resumed, 8)
    assert step_a == step_b == 8
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
    # The EMA is part of what resumes, and it has moved away from the raw params.
    assert not np.allclose(jax.tree.leaves(a.ema_params)[0], jax.tree.leaves(a.params)[0])


def test_run_writes_checkpoints_samples_metrics_and_events(resumed_run):
    _, resumed, _ = resumed_run
    assert sorted(os.listdir(resumed / "checkpoints"))[-1] == "8"
    assert {os.path.basename(p) for p in glob.glob(str(resumed / "samples" / "*.png"))} == {
        "step_00000004.png", "step_00000008.png"}
    records = [json.loads(line) for line in open(resumed / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert all(np.isfinite(r["loss"]) and r["images_per_sec"] > 0 for r in records)
    assert glob.glob(str(resumed / "events.out.tfevents.*"))


def test_sample_and_eval_modes(resumed_run):
    _, resumed, _ = resumed_run
    _run(resumed, "--mode=sample", "--config.sample.num=24", "--config.sample.batch_size=16")
    out = np.load(resumed / "samples" / "samples_step_8_n24.npz")
    assert out["levels"].shape == (24, 8, 8, 1) and out["levels"].dtype == np.uint8
    assert out["levels"].max() <= 15 and int(out["num_bits"]) == 4
    assert os.path.exists(resumed / "samples" / "samples_step_8_n24.png")
    proc = _run(resumed, "--mode=eval", "--config.eval.num_examples=40", "--config.eval.batch_size=40")
    result = json.load(open(resumed / "eval_step_8.json"))
    assert result["num_examples"] == 40 and result["kind"] == "bound"
    # An 8-step model is poor but the bound is a number of bits per 4-bit pixel, above zero.
    assert 0 < result["bpd"] < 40
    assert "bits/dim" in proc.stdout


def test_diffusion_sweep_scores_every_sampler_at_every_step_count(resumed_run):
    _, resumed, _ = resumed_run
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.diffusion_sweep", f"--workdir={resumed}",
         "--config=experiments/diffusion_sweep.py:ddpm_cifar,smoke", "--config.sweep.steps=(3,1000)",
         "--config.sweep.samplers=('ancestral','ddim','ode','dpm_solver++','heun')",
         "--config.eval.num_samples=32", "--config.eval.sample_batch_size=32", "--config.eval.batch_size=120"],
        cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(resumed / "sweep" / "sweep.json"))
    rows = result["rows"]
    # 1000 > T = 100 is dropped: every series at 3 steps (Heun's ODE: 2 evaluations per step and the final
    # denoising; EDM's Heun over 3 noise levels: 2 x 3 - 1).
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [
        ("ancestral", 3, 3), ("ddim eta=0", 3, 3), ("ddim eta=1", 3, 3), ("ode heun", 3, 7), ("dpm_solver++", 3, 3),
        ("heun", 3, 5)]
    assert all(r["fid_digits"] > 0 and r["num_samples"] == 32 for r in rows)
    assert result["step"] == 8 and "fid_digits" in open(resumed / "sweep" / "sweep.md").read()
    assert os.path.getsize(resumed / "sweep" / "sweep.png") > 1000 and os.path.exists(resumed / "sweep" / "sweep.csv")


def _crash_child(workdir, *args, hang_commit=None):
    """The experiment in a child process we can kill; with `hang_commit` its save of that step stops
    after writing its data, just before Orbax commits it (see crash_child.py)."""
    hang = [f"--hang-commit={hang_commit}", f"--marker={workdir / 'hanging'}"] if hang_commit else []
    return subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "crash_child.py"), *hang,
                             *_cmd(workdir, *args)[2:]], cwd=REPO, env=CHILD_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(proc, condition, what, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run exited before {what}: {proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def _assert_same_final_state(straight, workdir, context):
    a, _ = _final_state(straight, 8)
    b, step = _final_state(workdir, 8)
    assert step == 8, context
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=context), a, b)


def test_kill_9_at_a_random_step_then_restart_ends_bit_exact(resumed_run, tmp_path):
    straight = resumed_run[0]
    kill_after = random.SystemRandom().randint(1, 7)
    proc = _crash_child(tmp_path, "--config.train.num_steps=8", "--config.train.log_every=1")
    _wait_for(proc, lambda: len(_logged_steps(tmp_path)) >= kill_after, f"step {kill_after}")
    proc.kill()
    proc.communicate(timeout=60)
    committed = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    context = (f"killed after step {kill_after} was logged (last logged {_logged_steps(tmp_path)[-1]}, "
               f"committed {committed})")
    second = _run(tmp_path, "--config.train.num_steps=8", "--config.train.log_every=1")
    _assert_same_final_state(straight, tmp_path, context)
    assert _logged_steps(tmp_path) == list(range(1, 9)), context  # steps trained twice are logged once
    resumed_from = [int(line.split("Restored step ")[1].split()[0]) for line in second.stderr.splitlines()
                    if "Restored step " in line]
    assert resumed_from == committed[-1:], context


def test_kill_9_in_the_middle_of_an_async_save_resumes_from_the_last_complete_one(resumed_run, tmp_path):
    straight = resumed_run[0]
    proc = _crash_child(tmp_path, "--config.train.num_steps=8", hang_commit=8)
    _wait_for(proc, (tmp_path / "hanging").exists, "the save of step 8 to be written but not committed")
    partial = (tmp_path / "hanging").read_text()
    assert os.path.isdir(partial) and os.path.basename(partial).startswith("8.")
    proc.kill()
    proc.communicate(timeout=60)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == sorted(["4", os.path.basename(partial)])
    second = _run(tmp_path, "--config.train.num_steps=8")
    assert "Restored step 4" in second.stderr
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "8"]  # the half-written folder is gone
    _assert_same_final_state(straight, tmp_path, "killed during the save of step 8")


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path, "--config.train.num_steps=100000", "--config.train.checkpoint_every=1000",
                                 "--config.train.sample_every=1000"),
                            cwd=REPO, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    last_logged = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert steps and max(steps) == last_logged >= 4 and max(steps) % 1000 != 0


@pytest.mark.parametrize("args, field", [
    (["--config.data.name=imagenet64"], "config.data.name"),
    (["--config.train.batch_size=12"], "config.train.batch_size"),
    (["--config.diffusion.schedule=quadratic"], "config.diffusion.schedule"),
    (["--config.train.on_nonfinite=ignore"], "config.train.on_nonfinite"),
])
def test_bad_config_is_one_sentence(tmp_path, args, field):
    proc = subprocess.run(_cmd(tmp_path, *args), cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and field in last and "Traceback" not in proc.stderr


def test_cifar_without_network_says_how_to_provide_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.ddpm_cifar", f"--workdir={tmp_path}",
         f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.train.batch_size=8"],
        cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "config.data.manual_dir" in last and "digits" in last and "Traceback" not in proc.stderr


# --- the autoregressive experiments: the same command line, another Method ---------------------------

AR_SMOKE = ["--config.train.num_steps={}", "--config.train.log_every=2", "--config.train.checkpoint_every=2",
            "--config.train.sample_every=4"]


def _ar_run(name, workdir, *args, check=True):
    cmd = [sys.executable, "-m", f"experiments.{name}", f"--workdir={workdir}",
           f"--config=experiments/{name}.py:smoke", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _smoke_steps(n):
    return [a.format(n) for a in AR_SMOKE]


def _train_resume_and_evaluate(name, workdir, *extra):
    """4 steps, a fresh process for 2 more (it must restore step 4), then --mode=eval on 40 test images;
    checks the logged losses and returns (the eval process, eval_step_6.json)."""
    _ar_run(name, workdir, *_smoke_steps(4), *extra)
    assert "Restored step 4" in _ar_run(name, workdir, *_smoke_steps(6), *extra).stderr
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6] and all(np.isfinite(r["loss"]) for r in records)
    proc = _ar_run(name, workdir, *_smoke_steps(6), *extra, "--mode=eval", "--config.eval.num_examples=40",
                   "--config.eval.batch_size=40")
    return proc, json.load(open(workdir / "eval_step_6.json"))


@pytest.mark.parametrize("name", ["nade_mnist", "pixelcnn_cifar"])
def test_autoregressive_experiment_trains_resumes_and_evaluates(tmp_path, name):
    proc, result = _train_resume_and_evaluate(name, tmp_path)
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())[-1] == 6
    assert os.path.exists(tmp_path / "samples" / "step_00000006.png")
    # Exact, and after 6 steps between a perfect model (0) and a uniform one over the levels it models.
    assert result["kind"] == "exact" and result["num_examples"] == 40
    assert 0 < result["bpd"] < (1.5 if name == "nade_mnist" else 5.0)
    assert "bits/dim" in proc.stdout


def test_autoregressive_bad_model_name_is_one_sentence(tmp_path):
    proc = _ar_run("pixelcnn_cifar", tmp_path, "--config.model.name=wavenet", check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "config.model.name" in last and "Traceback" not in proc.stderr


@pytest.mark.parametrize("config, limit", [("nade_mnist.py:smoke", 1.0), ("pixelcnn_cifar.py:smoke", 4.0),
                                           ("wavenet_sc09.py:smoke", 8.0)])
def test_independent_pixels_baseline_command(config, limit):
    proc = subprocess.run([sys.executable, "-m", "experiments.independent_pixels",
                           f"--config=experiments/{config}", "--config.eval.num_examples=100"],
                          cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bpd = float(proc.stdout.split("test ")[1].split(" ")[0])
    assert 0 < bpd < limit and "100 examples" in proc.stdout  # below a uniform model over the levels


def test_improved_ddpm_with_importance_sampling_resumes_its_loss_history_and_evaluates(tmp_path):
    from experiments import improved_ddpm_cifar
    importance = "--config.diffusion.timestep_sampling=importance"
    proc, result = _train_resume_and_evaluate("improved_ddpm_cifar", tmp_path, importance)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert all(np.isfinite(r["vb"]) and np.isfinite(r["mse"]) for r in records if "loss" in r)
    assert result["kind"] == "bound" and 0 < result["bpd"] < 40 and "bits/dim" in proc.stdout
    config = improved_ddpm_cifar.get_config("smoke")
    config.diffusion.timestep_sampling = "importance"
    restored = run_lib.restore(config, str(tmp_path))
    state, step = restored.state, restored.step
    count = np.asarray(state.extra["loss_history"]["count"])
    # 4 steps of 32 examples push at most 128 values: more means the history survived the restart.
    assert step == 6 and count.sum() > 4 * 32 and count.max() <= 10


def test_guided_experiment_trains_and_samples_with_guidance(tmp_path):
    _ar_run("cfg_cifar", tmp_path, *_smoke_steps(4))
    _ar_run("cfg_cifar", tmp_path, *_smoke_steps(4), "--mode=sample", "--config.sample.num=16",
            "--config.sample.batch_size=16", "--config.diffusion.guidance_weight=3.0")
    out = np.load(tmp_path / "samples" / "samples_step_4_n16.npz")
    assert out["levels"].shape == (16, 8, 8, 1) and out["levels"].max() <= 15
    proc = _ar_run("cfg_cifar", tmp_path, "--config.model.class_conditional=False", check=False)
    assert proc.returncode == 1 and "config.model.class_conditional=True" in proc.stderr.strip().splitlines()[-1]


# --- the latent-variable experiments -----------------------------------------------------------------

def test_vae_experiment_trains_resumes_and_reports_elbo_and_iwae(tmp_path):
    steps = _smoke_steps
    _ar_run("vae_mnist", tmp_path, *steps(4))
    assert "Restored step 4" in _ar_run("vae_mnist", tmp_path, *steps(6)).stderr
    assert os.path.exists(tmp_path / "samples" / "step_00000006.png")
    assert os.path.exists(tmp_path / "samples" / "reconstructions_step_00000006.png")
    proc = _ar_run("vae_mnist", tmp_path, *steps(6), "--mode=eval", "--config.eval.num_examples=40",
                   "--config.eval.batch_size=40", "--config.model.num_importance=50",
                   "--config.model.importance_chunk=20")
    elbo = json.load(open(tmp_path / "eval_step_6_elbo.json"))
    iwae = json.load(open(tmp_path / "eval_step_6_iwae50.json"))
    assert elbo["kind"] == iwae["kind"] == "bound" and elbo["num_examples"] == 40
    # Same binarized test set and model (6 steps in), a tighter bound.
    assert 0 < iwae["bpd"] < elbo["bpd"] < 3.0
    assert "elbo bound" in proc.stdout and "iwae50 bound" in proc.stdout
    recon = json.load(open(tmp_path / "eval_step_6_iwae50_recon.json"))
    assert 0 < recon["recon_mse"] < 4 and recon["num_examples"] == 40 and "PSNR" in proc.stdout


def test_vqvae_experiment_runs_both_stages_then_evaluates_and_samples(tmp_path):
    steps = ["--config.train.num_steps=4", "--config.prior_train.num_steps=4", "--config.train.log_every=2",
             "--config.prior_train.log_every=2", "--config.train.sample_every=4",
             "--config.prior_train.sample_every=4"]
    _ar_run("vqvae_cifar", tmp_path, *steps)
    assert os.path.exists(tmp_path / "vqvae" / "checkpoints" / "4")
    assert os.path.exists(tmp_path / "prior" / "checkpoints" / "4")
    assert os.path.exists(tmp_path / "vqvae" / "samples" / "reconstructions_step_00000004.png")
    assert os.path.exists(tmp_path / "prior" / "samples" / "step_00000004.png")
    # Stage 2 resumes on its own, from the same stage 1.
    more = _ar_run("vqvae_cifar", tmp_path, *steps[:1], "--config.prior_train.num_steps=6", *steps[2:],
                   "--stage=prior")
    assert "Restored step 6" not in more.stderr and "Restored step 4" in more.stderr
    proc = _ar_run("vqvae_cifar", tmp_path, "--mode=eval", "--config.eval.num_examples=40",
                   "--config.eval.batch_size=40", "--config.prior_train.num_steps=6")
    stage1 = json.load(open(tmp_path / "vqvae" / "eval_step_4_recon.json"))
    assert 0 < stage1["recon_mse"] < 2 and 1 <= stage1["code_perplexity"] <= 16 and stage1["num_examples"] == 40
    assert 1 <= stage1["codes_used"] <= 16
    prior = json.load(open(tmp_path / "prior" / "eval_step_6.json"))
    assert prior["kind"] == "exact" and prior["per"] == "code" and 0 < prior["bpd"] < 6
    assert "code perplexity" in proc.stdout and "bits/code" in proc.stdout
    _ar_run("vqvae_cifar", tmp_path, "--mode=sample", "--config.sample.num=8", "--config.sample.batch_size=8",
            "--config.prior_train.num_steps=6")
    out = np.load(tmp_path / "prior" / "samples" / "samples_step_6_n8.npz")
    assert out["levels"].shape == (8, 8, 8, 1) and out["levels"].max() <= 15


def test_vqvae_prior_before_stage_one_is_one_sentence(tmp_path):
    proc = _ar_run("vqvae_cifar", tmp_path, "--stage=prior", check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "vqvae" in last and "Traceback" not in proc.stderr


# --- the GAN experiments -----------------------------------------------------------------------------

def test_gan_experiment_trains_resumes_and_samples(tmp_path):
    steps = lambda n: _smoke_steps(n) + ["--config.gan.d_steps=2"]
    _ar_run("gan_cifar", tmp_path, *steps(4))
    assert "Restored step 4" in _ar_run("gan_cifar", tmp_path, *steps(6)).stderr
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in records)
    _ar_run("gan_cifar", tmp_path, *steps(6), "--mode=sample", "--config.sample.num=8", "--config.sample.batch_size=8")
    out = np.load(tmp_path / "samples" / "samples_step_6_n8.npz")
    assert out["levels"].shape == (8, 8, 8, 1) and out["levels"].max() <= 15
    # A GAN has no likelihood: --mode=eval reports sample quality, with the digits classifier offline.
    proc = _ar_run("gan_cifar", tmp_path, *steps(6), "--mode=eval", "--config.eval.num_samples=200")
    result = json.load(open(tmp_path / "eval_step_6_fid.json"))
    assert result["num_samples"] == 200 and result["fid_digits"] > 0 and 1 <= result["is_digits"] <= 10
    assert "digits train" in result["reference"] and "fid_digits" in proc.stdout


def test_cyclegan_experiment_trains_resumes_with_its_history_evaluates_and_translates(tmp_path):
    # The smoke variant's batch of 8 fills the history of 50 by 8 a step: 32 images after step 4.
    _ar_run("cyclegan", tmp_path, *_smoke_steps(4))
    proc = _ar_run("cyclegan", tmp_path, *_smoke_steps(6), "--config.eval.every=6")
    assert "Restored step 4" in proc.stderr
    restored = run_lib.restore(cyclegan.get_config("smoke"), str(tmp_path))
    assert restored.step == 6 and [int(restored.state.extra[f"pool_{d}"]["count"]) for d in "ab"] == [48, 48]
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert all(np.isfinite(r[k]) for r in records if "loss" in r for k in ("g_loss", "d_loss", "cycle_a", "identity"))
    result = next(r for r in records if "eval/cycle_l1_a" in r)  # the in-training evaluation at step 6
    assert 0 < result["eval/cycle_l1_a"] < 2 and 0 <= result["eval/class_kept_b_to_a"] <= 1
    assert result["eval/fid_digits_a"] > 0 and result["eval/fid_digits_b_untranslated"] > 0
    assert os.path.exists(tmp_path / "samples" / "step_00000006.png")
    _ar_run("cyclegan", tmp_path, *_smoke_steps(6), "--mode=sample", "--config.sample.num=10",
            "--config.sample.batch_size=5")
    out = np.load(tmp_path / "samples" / "translations_step_6_n10.npz")
    assert all(out[k].shape == (10, 8, 8, 1) and out[k].max() <= 15 for k in loop.TRANSLATION_ROWS)
    assert list(out["domains"]) == ["thin", "thick"]
    assert os.path.exists(tmp_path / "samples" / "translations_step_6_n10.png")


def test_stylegan2_experiment_trains_resumes_with_its_regularizers_and_samples_truncated(tmp_path):
    # The smoke variant runs R1 and the path-length penalty every 2 steps: steps 0, 2 and 4 of 6.
    _ar_run("stylegan2_cifar", tmp_path, *_smoke_steps(4))
    assert "Restored step 4" in _ar_run("stylegan2_cifar", tmp_path, *_smoke_steps(6)).stderr
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(np.isfinite(r[k]) for r in records for k in ("g_loss", "d_loss"))
    assert 0 < records[0]["pl_mean"] and len({r["pl_mean"] for r in records}) == 3  # moved at steps 2 and 4
    restored = run_lib.restore(stylegan2_cifar.get_config("smoke"), str(tmp_path))
    assert int(restored.state.extra["step"]) == 6  # the lazy regularizers' clock is checkpointed
    _ar_run("stylegan2_cifar", tmp_path, *_smoke_steps(6), "--mode=sample", "--config.sample.num=8",
            "--config.sample.batch_size=8", "--config.stylegan2.truncation_psi=0.5")
    out = np.load(tmp_path / "samples" / "samples_step_6_n8.npz")
    assert out["levels"].shape == (8, 8, 8, 1) and out["levels"].max() <= 15
    proc = _ar_run("stylegan2_cifar", tmp_path, *_smoke_steps(6), "--mode=eval", "--config.eval.num_samples=200")
    result = json.load(open(tmp_path / "eval_step_6_fid.json"))
    assert result["num_samples"] == 200 and result["fid_digits"] > 0 and "fid_digits" in proc.stdout


def test_text_gan_experiment_trains_resumes_evaluates_and_samples_for_free_prompts(tmp_path):
    _ar_run("text_gan_digits", tmp_path, *_smoke_steps(4))
    assert "Restored step 4" in _ar_run("text_gan_digits", tmp_path, *_smoke_steps(6)).stderr
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(np.isfinite(r[k]) for r in records for k in ("g_loss", "d_loss"))
    # The sample grids are labelled with the prompts, one row per digit.
    assert open(tmp_path / "samples" / "step_00000004.txt").read().splitlines()[:2] == ["the digit 0", "the digit 1"]
    proc = _ar_run("text_gan_digits", tmp_path, *_smoke_steps(6), "--mode=eval")
    result = json.load(open(tmp_path / "eval_step_6_fid.json"))
    assert result["num_samples"] == 200 and 0 <= result["class_accuracy_digits"] <= 1
    assert "class_accuracy_digits" in proc.stdout
    _ar_run("text_gan_digits", tmp_path, *_smoke_steps(6), "--mode=sample", "--config.sample.num=4",
            "--config.sample.batch_size=4", '--config.text_gan.prompts=("a handwritten three", "seven, written small")')
    assert open(tmp_path / "samples" / "samples_step_6_n4_prompts.txt").read().splitlines() == [
        "a handwritten three", "seven, written small", "a handwritten three", "seven, written small"]
    assert np.load(tmp_path / "samples" / "samples_step_6_n4.npz")["levels"].shape == (4, 8, 8, 1)


def test_compare_trains_every_family_and_writes_the_table(tmp_path):
    cmd = [sys.executable, "-m", "experiments.compare", f"--workdir={tmp_path}",
           "--config=experiments/compare.py:smoke"]
    proc = subprocess.run(cmd, cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["family"]: r for r in json.load(open(tmp_path / "compare.json"))}
    assert list(rows) == ["nade", "pixelcnn", "vae", "vqvae", "gan", "stylegan2", "realnvp", "glow", "ddpm",
                          "score_sde", "edm", "vdm", "flow_matching", "dalle", "text_gan"]
    for family, row in rows.items():
        assert row["train_steps"] == 4 and row["parameters"] > 0 and row["sample_ms_per_image"] > 0
        assert np.isfinite(row["fid_digits"]) and 1 <= row["is_digits"] <= 10
        assert os.path.exists(tmp_path / "samples" / f"{family}.png")
        # A likelihood wherever the family has one of the images.
        assert ("test_bpd" in row) == (family not in ("gan", "stylegan2", "vqvae", "dalle", "edm", "text_gan")), family
    assert rows["pixelcnn"]["bpd_kind"] == "exact" and rows["ddpm"]["bpd_kind"] == "bound"
    table = open(tmp_path / "compare.md").read()
    assert table.count("\n| ") == 16 and "fid_digits" in table and "64 samples" in table
    assert open(tmp_path / "compare.csv").readline().startswith("family,")


def test_fm_toy_writes_the_w2_table_and_plots(tmp_path):
    # A point-set source (the DSB moons) and two seeds: the table's mean and standard error over them.
    proc = _ar_run("fm_toy", tmp_path, "--config.train.num_steps=4", "--config.train.log_every=2",
                   "--config.train.checkpoint_every=4", "--config.train.sample_every=4", "--config.seeds=(0,1)",
                   "--config.pairs=('moons->8gaussians',)", "--config.methods=('ot_cfm','fm')",
                   "--config.num_eval_samples=200")
    rows = json.load(open(tmp_path / "w2.json"))
    assert [(r["method"], r["seed"]) for r in rows] == [("ot_cfm", 0), ("ot_cfm", 1)]  # FM needs N(0, I)
    assert all(r["w2"] > 0 for r in rows) and "W2" in proc.stdout
    (summary,) = json.load(open(tmp_path / "w2_summary.json"))
    assert summary["seeds"] == 2 and summary["w2"] == pytest.approx(np.mean([r["w2"] for r in rows]))
    assert 0 < summary["w2_data"] < 5 and "| data vs data |" in open(tmp_path / "w2.md").read()
    assert os.path.exists(tmp_path / "moons_to_8gaussians_ot_cfm_seed1.png")


def test_gan_toy_writes_the_mode_table_and_plots(tmp_path):
    # 40: a multiple of the test's 8 devices and of WGAN-GP's 5 critic steps.
    proc = _ar_run("gan_toy", tmp_path, "--config.train.batch_size=40", "--config.train.num_steps=4",
                   "--config.train.log_every=2",
                   "--config.train.checkpoint_every=4", "--config.train.sample_every=4",
                   "--config.variants=('non_saturating','wgan_gp')", "--config.toys=('ring8',)")
    rows = json.load(open(tmp_path / "modes.json"))
    assert [(r["toy"], r["variant"]) for r in rows] == [("ring8", "non_saturating"), ("ring8", "wgan_gp")]
    assert all(0 <= r["modes_covered"] <= 8 and 0 <= r["high_quality"] <= 1 for r in rows)
    assert "| ring8 | wgan_gp | 0 | 4 |" in open(tmp_path / "modes.md").read() and "modes covered" in proc.stdout
    assert os.path.exists(tmp_path / "ring8_wgan_gp_seed0.png")
    assert os.path.exists(tmp_path / "ring8" / "wgan_gp" / "seed_0" / "samples" / "step_00000004.png")


# --- flows and flow matching ------------------------------------------------------------------------

# Smaller than the smoke variants (one scale, one step): compiling, not training, is the cost here.
FLOW_EXPERIMENTS = {
    "realnvp_cifar": ["--config.model.num_scales=1"],
    "glow_cifar": ["--config.model.num_levels=1", "--config.model.depth=1"],
    "flow_matching_cifar": ["--config.model.ch_mult=(1,)", "--config.flow_matching.num_steps=4"],
}


@pytest.mark.parametrize("name", sorted(FLOW_EXPERIMENTS))
def test_flow_experiment_trains_resumes_and_evaluates(tmp_path, name):
    proc, result = _train_resume_and_evaluate(name, tmp_path, *FLOW_EXPERIMENTS[name])
    assert os.path.exists(tmp_path / "samples" / "step_00000004.png")
    # Dequantized: a bound, within reach of the training loss after 6 steps.
    assert result["kind"] == "bound" and result["num_examples"] == 40 and 0 < result["bpd"] < 8
    assert "bound" in proc.stdout
    if name == "glow_cifar":  # --mode=sample is the trainer's; once is enough, with a temperature
        _ar_run(name, tmp_path, *_smoke_steps(6), *FLOW_EXPERIMENTS[name], "--mode=sample",
                "--config.sample.num=16", "--config.sample.batch_size=16", "--config.flow.temperature=0.7")
        out = np.load(tmp_path / "samples" / "samples_step_6_n16.npz")
        assert out["levels"].shape == (16, 8, 8, 1) and out["levels"].max() <= 15


# --- continuous-time diffusion --------------------------------------------------------------------------

CONTINUOUS_SMALL = ["--config.model.ch=16", "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=(8,)"]


def test_score_sde_experiment_trains_resumes_evaluates_and_samples_with_the_ode_and_heun(tmp_path):
    small = CONTINUOUS_SMALL + ["--config.sde.num_steps=5", "--config.sde.ode_steps=3"]
    proc, result = _train_resume_and_evaluate("score_sde_cifar", tmp_path, *small)
    assert os.path.exists(tmp_path / "samples" / "step_00000004.png")
    assert result["kind"] == "bound" and result["num_examples"] == 40 and 0 < result["bpd"] < 40
    for sampler in ("ode", "heun"):  # the PC sampler drew the training run's grids
        _ar_run("score_sde_cifar", tmp_path, *_smoke_steps(6), *small, "--mode=sample", "--config.sample.num=8",
                "--config.sample.batch_size=8", f"--config.sde.sampler={sampler}", "--config.sde.solver.steps=3")
        out = np.load(tmp_path / "samples" / "samples_step_6_n8.npz")
        assert out["levels"].shape == (8, 8, 8, 1) and out["levels"].max() <= 15


def test_edm_experiment_trains_resumes_and_scores_its_samples(tmp_path):
    small = CONTINUOUS_SMALL + ["--config.edm.solver.steps=3"]
    _ar_run("edm_cifar", tmp_path, *_smoke_steps(4), *small)
    assert "Restored step 4" in _ar_run("edm_cifar", tmp_path, *_smoke_steps(6), *small).stderr
    _ar_run("edm_cifar", tmp_path, *_smoke_steps(6), *small, "--mode=eval", "--config.eval.metrics=('fid',)",
            "--config.eval.num_samples=32", "--config.eval.sample_batch_size=32", "--config.edm.sampler=dpm_solver++")
    result = json.load(open(tmp_path / "eval_step_6_fid.json"))
    assert result["fid_digits"] > 0 and result["num_samples"] == 32


def test_vdm_experiment_trains_resumes_evaluates_and_samples_in_sigma_space(tmp_path):
    small = ["--config.model.ch=16", "--config.model.num_res_blocks=1", "--config.vdm.gamma_type=nnet",
             "--config.vdm.num_features=8", "--config.vdm.sample_steps=5"]
    proc, result = _train_resume_and_evaluate("vdm_cifar", tmp_path, *small)
    assert result["kind"] == "bound" and 0 < result["bpd"] < 40 and "bound" in proc.stdout
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    schedules = [(r["gamma_0"], r["gamma_1"]) for r in logged if "gamma_0" in r]
    assert len(schedules) == 3 and all(g0 < g1 for g0, g1 in schedules)
    _ar_run("vdm_cifar", tmp_path, *_smoke_steps(6), *small, "--mode=sample", "--config.sample.num=8",
            "--config.sample.batch_size=8", "--config.vdm.sampler=dpm_solver++", "--config.vdm.solver.steps=3")
    out = np.load(tmp_path / "samples" / "samples_step_6_n8.npz")
    assert out["levels"].shape == (8, 8, 8, 1) and out["levels"].max() <= 15


def test_sampler_sweep_trains_three_families_and_names_the_best_sampler_per_budget(tmp_path):
    _ar_run("sampler_sweep", tmp_path, "--config.nfe=(3,)", "--config.network.ch=16", "--config.network.ch_mult=(1,)",
            "--config.network.attn_resolutions=(8,)", "--config.samplers.ddpm=('dpm_solver++',)",
            "--config.samplers.score_sde=('pc',)", "--config.samplers.edm=('heun',)")
    rows = json.load(open(tmp_path / "sampler_sweep.json"))["rows"]
    # Heun over 2 levels is 3 evaluations, the others 3 steps.
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [
        ("DDPM dpm_solver++", 3, 3), ("EDM heun", 2, 3), ("VP SDE pc", 3, 3)]
    assert all(r["budget"] == 3 and r["fid_digits"] > 0 for r in rows)
    best = min(rows, key=lambda r: r["fid_digits"])
    assert f"- at 3 evaluations: {best['sampler']} (3 evaluations)" in open(tmp_path / "sampler_sweep.md").read()
    assert os.path.getsize(tmp_path / "sampler_sweep.png") > 1000


def test_flows_toy_writes_the_table_and_the_density_plots(tmp_path):
    proc = _ar_run("flows_toy", tmp_path, "--config.train.batch_size=64", "--config.train.num_steps=4",
                   "--config.train.log_every=2", "--config.train.checkpoint_every=4",
                   "--config.train.sample_every=4", "--config.runs.flow_matching.flow_matching.num_steps=4",
                   "--config.runs.coupling.model.num_layers=2", "--config.runs.planar.model.num_layers=2",
                   "--config.runs.flow_matching.model.hidden=(16,)", "--config.eval.num_examples=200",
                   "--config.plot_size=16")
    rows = json.load(open(tmp_path / "table.json"))
    assert [(r["toy"], r["model"]) for r in rows] == [
        ("eight_gaussians", "planar"), ("eight_gaussians", "coupling"), ("eight_gaussians", "flow_matching"),
        ("checkerboard", "coupling"), ("checkerboard", "flow_matching")]
    assert "checkerboard planar: skipped" in proc.stdout
    for r in rows:
        assert r["step"] == 4 and np.isfinite(r.get("test_nll", r.get("reverse_kl")))
        # No model beats the true density on average (up to the test sample's noise).
        assert r.get("test_nll", np.inf) > r["true_nll"] - 0.05
        assert os.path.exists(tmp_path / f"{r['toy']}_{r['model']}_density.png")
        assert os.path.exists(tmp_path / f"{r['toy']}_{r['model']}_samples.png")
    assert os.path.exists(tmp_path / "checkerboard_true_density.png")
    assert "| checkerboard | flow_matching | 4 |" in open(tmp_path / "table.md").read()


def test_wavenet_experiment_trains_resumes_evaluates_and_writes_wavs(tmp_path):
    small = ["--config.model.max_dilation=8"]
    proc, result = _train_resume_and_evaluate("wavenet_sc09", tmp_path, *small)
    # Exact, in bits per sample over the 256 mu-law levels; after 6 steps near a uniform model's 8 bits.
    assert result["kind"] == "exact" and result["per"] == "sample" and 0 < result["bpd"] < 8.5
    assert "bits/sample" in proc.stdout
    quality = json.load(open(tmp_path / "eval_step_6_fid.json"))  # the notes classifier's, not Inception's
    assert quality["num_samples"] == 64 and quality["fid_notes"] > 0 and 1 <= quality["is_notes"] <= 10
    assert "notes train (4000 clips)" in quality["reference"]
    assert os.path.exists(tmp_path / "samples" / "step_00000004.png")
    assert os.path.exists(tmp_path / "samples" / "step_00000004_000.wav")
    _ar_run("wavenet_sc09", tmp_path, *_smoke_steps(6), *small, "--mode=sample", "--config.sample.num=3")
    samples = np.load(tmp_path / "samples" / "samples_step_6_n3.npz")
    assert samples["levels"].shape == (3, 2000) and samples["levels"].dtype == np.int16
    assert int(samples["sample_rate"]) == 8000
    for i in range(3):
        pcm, rate = audio.read_wav(str(tmp_path / "samples" / f"samples_step_6_n3_{i:03d}.wav"))
        np.testing.assert_array_equal(pcm, samples["levels"][i])
