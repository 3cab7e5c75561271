"""Multi-process training: two processes on localhost (jax.distributed, gloo CPU collectives, two fake
devices each) train the DDPM smoke configuration, checkpoint once, both resume from it, and end where
one process with four devices ends."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import CHILD_ENV
from experiments import ddpm_cifar
from gm.checkpoint import Checkpointer
from gm.train import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A one-level UNet: the processes compile in seconds, and dropout, GroupNorm and attention are all there.
TINY = ["--config=experiments/ddpm_cifar.py:smoke", "--config.model.ch=16", "--config.model.ch_mult=(1,)",
        "--config.model.attn_resolutions=(8,)", "--config.train.log_every=2", "--config.train.checkpoint_every=2",
        "--config.train.sample_every=1000", "--config.train.num_samples=8"]


def _env(devices):
    flags = CHILD_ENV["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8",
                                           f"--xla_force_host_platform_device_count={devices}")
    return dict(CHILD_ENV, XLA_FLAGS=flags)


def _cmd(workdir, *args):
    return [sys.executable, "-m", "experiments.ddpm_cifar", f"--workdir={workdir}", *TINY, *args]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(workdir, *args, timeout=420):
    port = _free_port()
    procs = [subprocess.Popen(
        _cmd(workdir, *args, "--config.parallel.distributed=True",
             f"--config.parallel.coordinator_address=127.0.0.1:{port}", "--config.parallel.num_processes=2",
             f"--config.parallel.process_id={i}"),
        cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=timeout)
            outputs.append(stderr)
    finally:
        for proc in procs:
            proc.kill()
    for i, (proc, stderr) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"process {i}: {stderr[-3000:]}"
    return outputs


def _final_state(workdir):
    config = ddpm_cifar.get_config("smoke")
    config.model.update(ch=16, ch_mult=(1,), attn_resolutions=(8,))
    restored = run_lib.restore(config, str(workdir))
    return restored.state, restored.step


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    two, one = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one_process")
    first = _run_two_processes(two, "--config.train.num_steps=2")
    steps_after_first = Checkpointer(two / "checkpoints", read_only=True).all_steps()
    second = _run_two_processes(two, "--config.train.num_steps=4")
    proc = subprocess.run(_cmd(one, "--config.train.num_steps=4"), cwd=REPO, env=_env(4), capture_output=True,
                          text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return two, one, first, second, steps_after_first


def test_both_processes_see_four_devices_and_resume_from_the_one_checkpoint(runs):
    two, _, first, second, steps_after_first = runs
    assert steps_after_first == [2]
    for stderr in second:
        assert "Restored step 2" in stderr
    assert Checkpointer(two / "checkpoints", read_only=True).all_steps() == [2, 4]
    # One set of step folders, no leftovers of a second writer, one metrics file written by process 0.
    assert sorted(os.listdir(two / "checkpoints")) == ["2", "4"]
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in open(two / "metrics.jsonl")] == [2, 4]


def test_two_processes_end_with_the_params_of_one_process_with_four_devices(runs):
    two, one, *_ = runs
    a, step_a = _final_state(two)
    b, step_b = _final_state(one)
    assert step_a == step_b == 4
    # The same global batch, keys and sharding; the cross-process all-reduce adds the four devices'
    # gradients in its own order, so float32 rounding is allowed to differ.
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6),
                 a.params, b.params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6),
                 a.ema_params, b.ema_params)
    assert int(a.step) == 4 and int(a.num_nonfinite) == 0
