"""The benchmark commands run end to end at smoke size and write the rows RESULTS.md is built from."""
import json

import pytest

from benchmarks import compile as compile_bench
from benchmarks import family, flows, targets
from benchmarks.harness import dataset_info


def _rows(path):
    return [json.loads(line) for line in open(path)]


def _run_family(tmp_path, *argv):
    out = tmp_path / "results.jsonl"
    family.main(["--config=smoke", "--steps=1", "--repeats=2", "--num_samples=4", f"--out={out}", *argv])
    return _rows(out)


def _check_train(row, batch_size):
    assert row["batch_size"] == batch_size and row["params"] > 0 and row["train_compile_s"] >= 0
    assert len(row["train_images_per_s_windows"]) == 2 and row["train_images_per_s"] > 0
    assert row["xla_temp_mb"] >= 0 and row["peak_memory_gb"] > 0 and row["devices"].endswith("cpu")


def test_family_vae_train_step_and_sampler(tmp_path):
    (row,) = _run_family(tmp_path, "--family=vae", "--batch_size=8")
    _check_train(row, 8)
    assert row["family"] == "vae" and row["stage"] == "train" and row["shape"] == [8, 8, 1]
    assert row["num_samples"] == 4 and len(row["sample_images_per_s_runs"]) == 2 and row["sample_images_per_s"] > 0


def test_family_vqvae_times_both_stages_and_the_prior_sampler(tmp_path):
    vq, prior = _run_family(tmp_path, "--family=vqvae", "--batch_size=8")
    assert (vq["stage"], vq["model"]) == ("vqvae", "vqvae") and (prior["stage"], prior["model"]) == ("prior", "transformer")
    for row in (vq, prior):
        _check_train(row, 8)
        assert row["sample_images_per_s"] > 0
    assert prior["params"] != vq["params"]  # the prior's own parameters, stage 1 frozen


def test_family_autoregressive_sampler_is_estimated_past_max_seconds(tmp_path):
    (row,) = _run_family(tmp_path, "--family=pixelcnn", "--set", "model.name=pixelcnn", "--batch_size=8",
                         "--max_seconds=0")
    _check_train(row, 8)
    assert row["model"] == "pixelcnn" and row["overrides"] == ["model.name=pixelcnn"]
    assert row["sample_s_kind"] == "estimated" and row["network_evaluations"] == 64
    assert row["sample_s"] == pytest.approx(64 * row["network_eval_s"], rel=2e-3, abs=1e-3)


def test_family_gan_k_discriminator_steps(tmp_path):
    (row,) = _run_family(tmp_path, "--family=gan", "--set", "gan.d_steps=2", "--batch_size=8")
    _check_train(row, 8)
    assert row["sample_images_per_s"] > 0


def test_family_cyclegan_times_its_step_and_its_translations(tmp_path):
    (row,) = _run_family(tmp_path, "--family=cyclegan", "--batch_size=8")
    _check_train(row, 8)
    assert row["shape"] == [8, 8, 1] and row["sample_images_per_s"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--family=diffusion"], r"Unknown --family 'diffusion'; use one of \('nade'"),
    (["--family=vae", "--set", "model.nope=1"], r"--set 'model.nope=1': the config has no field 'model.nope'"),
    (["--family=vae", "--set", "model"], r"--set 'model': write FIELD=VALUE"),
    (["--family=vae", "--set", "model.latent_dim=big"], r"--set 'model.latent_dim=big': "),
])
def test_family_bad_arguments_are_one_sentence(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        family.benchmark(family.parse_args(["--config=smoke", f"--out={tmp_path / 'r.jsonl'}", *argv]))


def test_family_needs_positive_counts(tmp_path):
    with pytest.raises(SystemExit, match="--repeats must be positive, got 0"):
        family.main(["--family=vae", "--repeats=0", f"--out={tmp_path / 'r.jsonl'}"])


def test_flows_benchmark_rows(tmp_path, monkeypatch):
    out = tmp_path / "results.jsonl"
    monkeypatch.setattr("sys.argv", ["flows", "--model=glow", "--config=smoke", "--steps=1", "--repeats=2",
                                     "--num_samples=4", f"--out={out}"])
    flows.main()
    (row,) = _rows(out)
    _check_train(row, 32)
    assert row["solver"] == "one pass" and row["sample_images_per_s"] > 0


def test_dataset_shapes_need_no_data():
    assert dataset_info("cifar10").shape == (32, 32, 3) and dataset_info("mnist").shape == (28, 28, 1)
    assert dataset_info("digits").num_bits == 4
    with pytest.raises(ValueError, match="No benchmark shape for config.data.name 'svhn'"):
        dataset_info("svhn")


def test_targets_measures_every_part_of_the_accelerator_targets(tmp_path):
    out = tmp_path / "results.jsonl"
    result = targets.main(["--config=smoke", "--dtype=float32", "--batch_size=8", "--steps=1", "--repeats=2",
                           "--num_images=24", "--sample_batch=8", "--ancestral_steps=2", "--fid_batch=8",
                           f"--out={out}"])
    assert _rows(out) == [json.loads(json.dumps(result))]
    assert result["train_images_per_s"] > 0 and result["train_params"] > 0
    # Away from the paper UNet the FLOPs are XLA's count of the compiled step; no peak is known for a CPU.
    assert result["train_gflop_per_image"] == result["train_xla_gflop_per_image"] > 0
    assert result["train_tflops"] > 0 and result["peak_tflops"] is None and result["train_mfu"] is None
    # 24 images are 3 batches of 8: the 1,000-step estimate is per step x 1,000 x 3.
    assert result["ancestral_1000_steps_s_estimated"] == pytest.approx(result["ancestral_step_s"] * 3000, rel=2e-3)
    assert result["ddim50_s"] > 0 and result["fid_features_s"] > 0 and result["inception_weights"] == "random"


def test_targets_refuses_unknown_parts_and_uneven_batches(tmp_path):
    with pytest.raises(SystemExit, match="--skip takes train, ancestral, ddim and fid"):
        targets.main(["--skip=sampling", f"--out={tmp_path / 'r.jsonl'}"])
    with pytest.raises(ValueError, match="--sample_batch=12 must be a positive multiple of the 8 devices"):
        targets.main(["--config=smoke", "--sample_batch=12", f"--out={tmp_path / 'r.jsonl'}"])


def test_wavenet_fast_generation_is_timed_against_the_naive_sampler(tmp_path):
    from benchmarks import wavenet as wavenet_bench

    out = tmp_path / "results.jsonl"
    row = wavenet_bench.main(["--config=smoke", "--length=300", "--num=2", "--repeats=1", f"--out={out}"])
    assert row["naive_s_kind"] == "timed" and row["same_samples"] is True
    assert row["fast_s"] > 0 and row["naive_s"] > 0 and row["receptive_field"] == 129
    estimated = wavenet_bench.main(["--config=smoke", "--length=300", "--num=2", "--repeats=1", "--max_seconds=0",
                                    f"--out={out}"])
    assert estimated["naive_s_kind"] == "estimated" and "same_samples" not in estimated
    assert estimated["naive_s"] == pytest.approx(300 * estimated["naive_pass_s"], rel=1e-2, abs=0.1)
    assert len(out.read_text().splitlines()) == 2


def test_family_wavenet_train_step_and_fast_sampler(tmp_path):
    (row,) = _run_family(tmp_path, "--family=wavenet", "--set", "model.max_dilation=8", "--batch_size=8")
    _check_train(row, 8)
    assert row["family"] == "wavenet" and row["shape"] == [2000] and row["sample_images_per_s"] > 0
    assert dataset_info("sc09").sample_rate == 16000 and dataset_info("sc09").shape == (16000,)


@pytest.mark.parametrize("name, stages", [("gpt", ["train"]), ("dalle", ["vqvae", "prior"])])
def test_family_text_models_time_every_stage(tmp_path, name, stages):
    rows = _run_family(tmp_path, f"--family={name}", "--batch_size=8")
    assert [r["stage"] for r in rows] == stages
    for row in rows:
        _check_train(row, 8)
        assert row["sample_images_per_s"] > 0 and row["shape"] == ([64] if name == "gpt" else [8, 8, 1])


def test_family_gradient_accumulation_row(tmp_path):
    (row,) = _run_family(tmp_path, "--family=gpt", "--batch_size=16", "--set", "train.micro_batches=2",
                         "--set", "train.batch_size=16")
    _check_train(row, 16)
    assert row["micro_batches"] == 2


def test_compile_rows_hold_each_depth_and_the_ratio(tmp_path):
    out = tmp_path / "results.jsonl"
    compile_bench.main(["--family=glow", "--config=smoke", "--depths=2,6", "--batch_size=8", f"--out={out}"])
    shallow, deep = _rows(out)
    assert shallow["overrides"] == ["model.depth=2"] and deep["overrides"] == ["model.depth=6"]
    for row in (shallow, deep):
        assert row["benchmark"] == "compile" and row["batch_size"] == 8 and row["compile_s"] > 0
        assert row["total_s"] >= row["compile_s"] and row["hlo_instructions"] > 0 and row["xla_temp_mb"] >= 0
    assert deep["params"] > shallow["params"]  # three times the steps, stacked
    assert deep["total_s_ratio_to_first"] == round(deep["total_s"] / shallow["total_s"], 2)
    # Scanned, the program hardly grows with K (unrolled, three times the steps are about three times it).
    assert deep["hlo_instructions"] < 1.2 * shallow["hlo_instructions"]
