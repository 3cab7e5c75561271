"""Layered configs, typed and checked at the boundary; the registry; the direction of imports."""
import ast
import contextlib
import dataclasses
import gc
import glob
import os
from typing import Literal, Tuple, Union

import ml_collections
import pytest

from gm import config as config_lib
from gm import families
from gm.config import OptimConfig, RunConfig, TrainConfig, interval, positive, setting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Inner:
    width: int = setting(4, positive)


@dataclasses.dataclass(frozen=True)
class Example:
    """A section with one field of each kind the parser knows."""
    flag: bool = False
    count: int = 3
    rate: float = setting(0.5, interval(0.0, 1.0))
    name: str = "a"
    choice: Literal["x", "y"] = "x"
    sizes: Tuple[int, ...] = (1, 2)
    either: Union[int, str] = 0
    inner: Inner = Inner()

    def check(self, name):
        if self.flag and self.count > 5:
            raise ValueError(f"{name}.count must be at most 5 with {name}.flag, got {self.count}.")


def test_defaults_round_trip_through_a_config_dict():
    assert config_lib.parse(Example, config_lib.to_config(Example()), "config.example") == Example()
    assert config_lib.parse(Example, None, "config.example") == Example()
    run = config_lib.parse_run(config_lib.base_config())
    assert run == RunConfig() and isinstance(run.train, TrainConfig)


def test_values_are_converted_to_their_types():
    parsed = config_lib.parse(Example, {"rate": 1 // 2, "sizes": [3, 4], "either": "10,20", "inner": {"width": 7}},
                              "config.example")
    assert parsed.rate == 0.0 and isinstance(parsed.rate, float) and parsed.sizes == (3, 4)
    assert parsed.either == "10,20" and parsed.inner == Inner(7)


@pytest.mark.parametrize("section, message", [
    ({"flag": 1}, "config.example.flag must be True or False, got 1."),
    ({"count": 2.5}, "config.example.count must be an integer, got 2.5."),
    ({"count": True}, "config.example.count must be an integer, got True."),
    ({"rate": 1.5}, "config.example.rate must be a number in [0.0, 1.0), got 1.5."),
    ({"rate": "fast"}, "config.example.rate must be a number, got 'fast'."),
    ({"rate": float("nan")}, "config.example.rate must be a number, got nan."),
    ({"name": 3}, "config.example.name must be a string, got 3."),
    ({"choice": "z"}, "Unknown config.example.choice 'z'; use one of ('x', 'y')."),
    ({"sizes": 3}, "config.example.sizes must be a tuple, got 3."),
    ({"sizes": (1, "2")}, "config.example.sizes must be a tuple of integers, got (1, '2')."),
    ({"either": 2.5}, "config.example.either must be an integer or a string, got 2.5."),
    ({"inner": {"width": 0}}, "config.example.inner.width must be a positive integer, got 0."),
    ({"inner": 3}, "config.example.inner must be a section of fields, got 3."),
    ({"widht": 3}, "config.example has no field 'widht'; its fields are flag, count, rate, name, choice, sizes, "
                   "either, inner."),
    ({"flag": True, "count": 6}, "config.example.count must be at most 5 with config.example.flag, got 6."),
])
def test_every_bad_value_is_one_sentence_naming_its_field(section, message):
    with pytest.raises(ValueError) as error:
        config_lib.parse(Example, section, "config.example")
    assert str(error.value) == message


def test_a_renamed_section_is_named_as_it_is_in_the_config():
    """A VQ-VAE's prior trains with config.prior_train: its messages say so."""
    with pytest.raises(ValueError, match=r"^config.prior_train.log_every must be a multiple of "
                                         r"config.prior_train.steps_per_call=2"):
        config_lib.parse(TrainConfig, {"steps_per_call": 2, "log_every": 3}, "config.prior_train")
    with pytest.raises(ValueError, match=r"^config.optim_d.b1 must be"):
        config_lib.parse(OptimConfig, {"b1": 1.0}, "config.optim_d")


def test_variants():
    config = config_lib.base_config()
    assert config_lib.variant(config, None, "x", smoke=lambda c: None) is config
    smoked = config_lib.variant(config_lib.base_config(), "smoke", "x", smoke=config_lib.offline_smoke)
    assert smoked.data.name == "digits" and smoked.train.batch_size == 32
    with pytest.raises(ValueError, match=r"^Unknown config variant 'big' for ddpm_cifar; use 'smoke' or nothing\.$"):
        config_lib.variant(config, "big", "ddpm_cifar", smoke=lambda c: None)


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_each_family_default_config_is_its_sections_defaults(name):
    family = families.get(name)
    config = families.default_config(name)
    assert isinstance(config, ml_collections.ConfigDict) and config.family == name
    setup = families.parse(config)
    expected = family.settings()
    for path, value in family.preset:
        section, *rest = path.split(".")
        assert rest, path
        expected = dataclasses.replace(expected, **{section: dataclasses.replace(getattr(expected, section),
                                                                                  **{rest[0]: value})})
    assert setup.settings == expected and setup.run == dataclasses.replace(RunConfig(), family=name)


def test_an_unknown_family_is_one_sentence():
    config = config_lib.base_config()
    config.family = "biggan"
    with pytest.raises(ValueError, match=r"^Unknown config.family 'biggan'; use one of nade, pixelcnn, "):
        families.parse(config)


@contextlib.contextmanager
def _gc_paused():
    """The garbage collector off: CPython 3.11 raises "AST constructor recursion depth mismatch" when a
    finalizer runs Python code (e.g. asyncio logging a task an earlier test left behind) while a tree is
    being built. One collection first, not one per file: in a worker that has run many tests a full
    collection takes most of a second."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _imports(path):
    """Every module a Python file imports (absolute names; `from gm import x` gives gm.x). Call it with
    the garbage collector paused (`_gc_paused`)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


FAMILY_MODULES = ("gm.autoregressive", "gm.vae", "gm.vqvae", "gm.gan", "gm.flows", "gm.diffusion",
                  "gm.flow_matching", "gm.wavenet")


def test_imports_point_down():
    """Models at the bottom, the registry above them, the trainer above that: family code never imports
    the trainer, and the trainer reaches families only through the registry."""
    paths = glob.glob(os.path.join(REPO, "gm", "**", "*.py"), recursive=True) + glob.glob(
        os.path.join(REPO, "benchmarks", "*.py"))
    with _gc_paused():
        imports = {path: _imports(path) for path in paths}
    for path, names in imports.items():
        where = os.path.relpath(path, REPO)
        if where.startswith("benchmarks"):
            assert "experiments.compare" not in names, path
        elif not where.startswith(os.path.join("gm", "train")):
            bad = sorted(n for n in names if n == "gm.train" or n.startswith("gm.train."))
            assert not bad, f"{where} imports the trainer: {bad}"
        else:
            bad = sorted(n for n in names if n.startswith(FAMILY_MODULES))
            assert not bad, f"{where} imports a family instead of gm.families: {bad}"
