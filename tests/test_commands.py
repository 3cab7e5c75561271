"""Every command the documentation shows parses, and a run's config passes the checks a run starts with.

The commands are read from the experiments' docstrings and the Markdown files, parsed by the same flags
`python -m experiments.NAME` defines; a config that names a family is then checked as a run checks it
(`gm.families.parse`: every field, and cross-field rules such as a GAN's batch against d_steps).
"""
import importlib
import pathlib
import re
import shlex
import sys

import jax
import pytest
from absl import flags

from gm import families
from gm.train import run

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = sorted(ROOT.glob("experiments/*.py")) + [ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md"]
COMMAND = re.compile(r"python -m experiments\.(\w+)((?:[ \t]+[^\s&;|#`]+)*)")


def documented_commands():
    """(document name, experiment, argv) for every `python -m experiments.NAME ...` in DOCUMENTS."""
    found = []
    for path in DOCUMENTS:
        text = re.sub(r"\\\\?\n\s*", " ", path.read_text())  # join continued lines (\ or \\ in a docstring)
        text = re.sub(r"\$\{?\w+\}?", "0", text)  # a shell variable ($i of a loop over processes)
        for match in COMMAND.finditer(text):
            found.append((path.name, match.group(1), shlex.split(match.group(2))))
    return found


COMMANDS = documented_commands()


def test_the_documentation_shows_commands_of_every_experiment():
    shown = {name for _, name, _ in COMMANDS}
    assert len(COMMANDS) > 40 and {"ddpm_cifar", "gan_cifar", "gan_toy", "vqvae_cifar"} <= shown


@pytest.mark.parametrize("document, experiment, argv", COMMANDS,
                         ids=[f"{d}:{e}:{i}" for i, (d, e, _) in enumerate(COMMANDS)])
def test_documented_command_parses_and_its_run_config_is_valid(document, experiment, argv, monkeypatch):
    module = importlib.import_module(f"experiments.{experiment}")
    uses_own_config = "run.main(__file__" in pathlib.Path(module.__file__).read_text()
    monkeypatch.setattr(sys, "argv", [experiment] + argv)  # config_flags reads its overrides from there
    flag_values = flags.FlagValues()
    run.define_flags(module.__file__ if uses_own_config else None, flag_values)
    flag_values(sys.argv)
    config = flag_values.config
    if config.get("family"):  # one run (the others are checked by their runners, when they run)
        monkeypatch.setattr(jax, "device_count", lambda *_: 1)  # as on the one-GPU box the commands are for
        families.parse(config)
