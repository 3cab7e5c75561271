"""Checkpoints that cannot be trusted: corrupted or half-written steps, and another model's checkpoint.

A corrupted newest step is named in a warning and the run resumes from the previous one, exactly; a
checkpoint of another model stops with one sentence; nothing good is ever moved or deleted."""
import glob
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import ddpm_cifar
from gm import config as config_lib
from gm import data as gm_data
from gm import parallel
from gm.checkpoint import (CheckpointMismatchError, Checkpointer, CorruptCheckpointError, NoGoodCheckpointError,
                           array_checksums)
from gm.method import Method
from gm.train import loop
from gm.train import run as run_lib


def tree_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _data_files(step_dir):
    return glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)


def _largest_data_file(step_dir):
    return max(_data_files(step_dir), key=os.path.getsize)


def corrupt(step_dir, how):
    """Damage a committed step folder the way disks, copies and crashes do."""
    if how == "flip_byte":  # in array bytes Orbax restores it without complaint; the checksum does not
        # Every data file: OCDBT keeps the same values in the process's folder and the merged root's and
        # reads one of them, and which files hold values (not tree nodes) varies with the writes' timing.
        for path in _data_files(step_dir):
            data = bytearray(open(path, "rb").read())
            data[len(data) // 2] ^= 0x40
            open(path, "wb").write(bytes(data))
    elif how == "wrong_checksum":  # the arrays read back intact but differ from what was saved
        path = os.path.join(step_dir, "meta", "metadata")
        with open(path) as f:
            meta = json.load(f)
        name = sorted(meta["checksums"])[0]
        meta["checksums"][name] ^= 1
        with open(path, "w") as f:
            json.dump(meta, f)
    elif how == "truncate":
        path = _largest_data_file(step_dir)
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
    elif how == "delete_array_file":
        os.remove(_largest_data_file(step_dir))
    elif how == "delete_meta":
        os.remove(os.path.join(step_dir, "meta", "metadata"))
    elif how == "garbage_meta":
        open(os.path.join(step_dir, "meta", "metadata"), "w").write("{not json")
    elif how == "delete_manifest":
        os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))
    else:
        raise ValueError(how)


CORRUPTIONS = ("flip_byte", "wrong_checksum", "truncate", "delete_array_file", "delete_meta", "garbage_meta",
               "delete_manifest")


def _tree(value):
    return parallel.replicate({"w": jnp.arange(256.0) * value, "b": {"c": jnp.full((3, 4), value)},
                               "step": jnp.array(int(value), jnp.int32)})


def _target(tree):
    rep = parallel.replicated_sharding()
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)


@pytest.fixture
def three_steps(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(directory)
    for step in (2, 4, 6):
        ckpt.save(step, _tree(step), {"data_step": step})
    ckpt.close()
    return directory


def test_checksums_are_recorded_and_stripped_from_the_restored_meta(three_steps):
    ckpt = Checkpointer(three_steps, read_only=True)
    raw = json.load(open(three_steps / "6" / "meta" / "metadata"))
    assert raw["checksums"] == {k: int(v) for k, v in array_checksums(_tree(6)).items()}
    assert set(raw["checksums"]) == {"w", "b/c", "step"}
    state, meta = ckpt.restore(_target(_tree(0)), 6)
    tree_equal(state, _tree(6))
    assert meta == {"data_step": 6}
    ckpt.close()


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_corrupted_newest_step_falls_back_to_the_previous_one(three_steps, how, caplog):
    corrupt(str(three_steps / "6"), how)
    ckpt = Checkpointer(three_steps)
    with pytest.raises(CorruptCheckpointError) as error:
        ckpt.restore(_target(_tree(0)), 6)
    assert error.value.step == 6
    if how == "wrong_checksum":
        assert "does not match the checksum written with it" in str(error.value)
    with caplog.at_level(logging.WARNING):
        state, meta, step = ckpt.restore_newest_good(_target(_tree(0)))
    assert step == 4 and meta == {"data_step": 4}
    tree_equal(state, _tree(4))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step 6" in w and "corrupted" in w for w in warnings), warnings
    # The bad step is moved aside, not deleted; the good ones are untouched and the step can be rewritten.
    assert ckpt.all_steps() == [2, 4]
    assert os.path.isdir(str(three_steps) + ".corrupt/6")
    assert ckpt.save(6, _tree(6), {"data_step": 6})
    ckpt.wait()
    tree_equal(ckpt.restore(_target(_tree(0)), 6)[0], _tree(6))
    ckpt.close()


def test_a_reader_falls_back_without_moving_anything(three_steps):
    corrupt(str(three_steps / "6"), "flip_byte")
    ckpt = Checkpointer(three_steps, read_only=True)
    _, _, step = ckpt.restore_newest_good(_target(_tree(0)))
    assert step == 4 and ckpt.all_steps() == [2, 4, 6] and not os.path.exists(str(three_steps) + ".corrupt")
    ckpt.close()


def test_every_step_corrupted_is_one_sentence_and_moves_nothing(three_steps):
    for step in (2, 4, 6):
        corrupt(str(three_steps / str(step)), "truncate")
    ckpt = Checkpointer(three_steps)
    with pytest.raises(NoGoodCheckpointError, match=r"Every checkpoint in .* is corrupted \(steps 6, 4, 2\)"):
        ckpt.restore_newest_good(_target(_tree(0)))
    assert ckpt.all_steps() == [2, 4, 6]
    ckpt.close()


@pytest.mark.parametrize("change, message", [
    (lambda t: dict(t, w=jax.ShapeDtypeStruct((128,), jnp.float32, sharding=t["w"].sharding)),
     r"holds w as \(256,\) float32 where this model has \(128,\) float32"),
    (lambda t: dict(t, extra=t["step"]), r"lacks 1 array\(s\) this model has, e.g. extra"),
    (lambda t: {k: v for k, v in t.items() if k != "b"}, r"holds 1 array\(s\) this model lacks, e.g. b/c"),
])
def test_another_models_checkpoint_is_a_mismatch_not_a_corruption(three_steps, change, message):
    ckpt = Checkpointer(three_steps)
    with pytest.raises(CheckpointMismatchError, match=message):
        ckpt.restore_newest_good(change(_target(_tree(0))))
    assert ckpt.all_steps() == [2, 4, 6] and not os.path.exists(str(three_steps) + ".corrupt")
    ckpt.close()


def test_a_half_written_step_is_never_listed_and_a_writer_clears_it(three_steps):
    # What a save interrupted by kill -9 leaves: Orbax's temporary folder, never renamed to its step.
    partial = three_steps / "8.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half").write_bytes(b"\0" * 100)
    reader = Checkpointer(three_steps, read_only=True)
    assert reader.all_steps() == [2, 4, 6] and partial.exists()  # a reader never removes anything
    reader.close()
    # Orbax clears temporary folders in a thread; the Checkpointer waits for it through this hook.
    assert hasattr(ocp.CheckpointManager, "_maybe_await_cleanup_tmp_directory")
    writer = Checkpointer(three_steps)
    assert writer.all_steps() == [2, 4, 6] and not partial.exists()
    writer.close()


# --- the trainer on top: resume past a corrupted step, exactly ----------------------------------------

def _linear_method():
    def loss(params, key, batch):
        x = batch["image"].reshape(batch["image"].shape[0], -1).astype(jnp.float32) / 15.0
        noise = 0.01 * jax.random.normal(key, x.shape[:1])  # the step's key matters for exactness
        value = jnp.mean((x @ params["w"] + params["b"] + noise - batch["label"]) ** 2)
        return value, {}

    return Method(init=lambda key, batch: {"w": 0.1 * jax.random.normal(key, (64,)), "b": jnp.zeros(())},
                  loss=loss, sample=lambda params, key, num: jnp.zeros((num, 8, 8, 1), jnp.uint8))


def _config(num_steps):
    """The typed base sections for the linear method: every checkpoint kept."""
    config = ml_collections.ConfigDict(ddpm_cifar.get_config("smoke").to_dict())
    config.optim.update(learning_rate=1e-2, warmup_steps=0)
    config.train.update(num_steps=num_steps, log_every=1, checkpoint_every=2, sample_every=1000, num_samples=8,
                        keep_checkpoints=100)
    return config_lib.parse_run(config)


@pytest.fixture(scope="module")
def digits():
    return gm_data.load("digits")


def test_training_resumes_from_the_step_before_a_corrupted_one_exactly(tmp_path, digits, caplog):
    straight = loop.train_and_evaluate(_config(8), str(tmp_path / "straight"), _linear_method(), digits)
    workdir = tmp_path / "resumed"
    loop.train_and_evaluate(_config(6), str(workdir), _linear_method(), digits)
    corrupt(str(workdir / "checkpoints" / "6"), "flip_byte")
    with caplog.at_level(logging.WARNING):
        resumed = loop.train_and_evaluate(_config(8), str(workdir), _linear_method(), digits)
    assert any("step 6" in r.getMessage() and "corrupted" in r.getMessage() for r in caplog.records)
    tree_equal(resumed, straight)
    assert Checkpointer(workdir / "checkpoints", read_only=True).all_steps() == [2, 4, 6, 8]
    assert os.listdir(str(workdir / "checkpoints") + ".corrupt") == ["6"]
    # Steps 5 and 6 were trained twice; metrics.jsonl keeps one record per step.
    steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
    assert steps == list(range(1, 9))


def test_restoring_into_a_model_of_another_shape_is_one_sentence(tmp_path, digits):
    loop.train_and_evaluate(_config(2), str(tmp_path), _linear_method(), digits)
    wider = _linear_method()._replace(init=lambda key, batch: {"w": jnp.zeros((65,)), "b": jnp.zeros(())})
    with pytest.raises(ValueError, match=r"written by another model: it holds ema_params/w as \(64,\) float32 "
                                         r"where this model has \(65,\) float32; .*config.model") as error:
        loop.train_and_evaluate(_config(4), str(tmp_path), wider, digits)
    assert "\n" not in str(error.value)
    assert Checkpointer(tmp_path / "checkpoints", read_only=True).all_steps() == [2]


def _rewrite_as_layout_1(workdir, params=None):
    """Rewrite the newest checkpoint in WORKDIR as gm wrote it before layout 2: no 'layout' in its meta,
    and `params` (if given) in place of its parameters."""
    ckpt = Checkpointer(workdir / "checkpoints")
    step = ckpt.latest_step()
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated_sharding()),
                          getattr(ckpt._manager.item_metadata(step)["state"], "tree", None))
    state, meta = ckpt.restore(target, step)
    if params is not None:
        state = dict(state, params=params, ema_params=params)
    meta.pop("layout")
    ckpt.close()
    import shutil
    shutil.rmtree(workdir / "checkpoints")
    ckpt = Checkpointer(workdir / "checkpoints")
    ckpt.save(step, parallel.replicate(state), meta, force=True)
    ckpt.close()


def test_a_checkpoint_of_the_layout_before_resumes_or_says_it_cannot(tmp_path, digits):
    straight = loop.train_and_evaluate(_config(4), str(tmp_path / "straight"), _linear_method(), digits)
    workdir = tmp_path / "old"
    loop.train_and_evaluate(_config(2), str(workdir), _linear_method(), digits)
    _rewrite_as_layout_1(workdir)  # the same arrays: a family whose layout did not change
    tree_equal(loop.train_and_evaluate(_config(4), str(workdir), _linear_method(), digits), straight)
    # A family whose arrays moved (the VQ-VAE's statistics left its parameters): one sentence saying so.
    old = {"w": np.zeros(64, np.float32), "b": np.zeros((), np.float32), "usage": np.zeros(4, np.float32)}
    _rewrite_as_layout_1(workdir, old)
    with pytest.raises(ValueError, match=r"written by an older gm whose layout \(1\) kept a family's non-gradient "
                                         r"state among the parameters .*train again in a new --workdir") as error:
        loop.train_and_evaluate(_config(6), str(workdir), _linear_method(), digits)
    assert "\n" not in str(error.value)


def test_eval_mode_reads_the_newest_intact_step_and_leaves_the_folder_alone(tmp_path, digits):
    loop.train_and_evaluate(_config(4), str(tmp_path), _linear_method(), digits)
    corrupt(str(tmp_path / "checkpoints" / "4"), "truncate")
    state, step = run_lib.restore_latest(_config(4), str(tmp_path), _linear_method(), digits)
    assert step == 2 and int(state.step) == 2
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_a_checkpoint_of_unrolled_blocks_names_the_scan_field_and_resumes_with_it(tmp_path, digits):
    from gm.flows import method as flows_method

    def glow(scan):
        model = flows_method.FlowConfig(name="glow", num_levels=1, depth=2, hidden=4, num_blocks=0, scan=scan)
        return flows_method.make(flows_method.Settings(model=model), digits.info)

    loop.train_and_evaluate(_config(2), str(tmp_path), glow(scan=False), digits)
    with pytest.raises(ValueError, match=r"written before repeated blocks were scanned needs the network's "
                                         r"scan=False") as error:
        loop.train_and_evaluate(_config(4), str(tmp_path), glow(scan=True), digits)
    assert "\n" not in str(error.value)
    loop.train_and_evaluate(_config(4), str(tmp_path), glow(scan=False), digits)
    assert Checkpointer(tmp_path / "checkpoints", read_only=True).all_steps() == [2, 4]
