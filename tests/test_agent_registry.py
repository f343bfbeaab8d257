"""The algorithm registry and the per-algorithm configs: registration checks, every field documented, presets, the
``metarl algos`` listing, and run folders written before each algorithm had its own config."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from metarl.cli import main
from metarl.config import RunConfig, field_docs, field_names
from metarl.presets import available_presets, config_from_dict, load_config, load_run_config
from metarl.registry import agent_spec, list_agents, register_agent
from metarl.trainer import train

LEGACY_RUNS = Path(__file__).parent / "data" / "legacy_runs"
"""Tiny run folders written by the suite before this change (one iteration each; its TensorBoard files left out):
RL² on a bandit and Meta-SGD (maml-ppo meta_sgd=true), whose checkpoints hold an optimiser, a return normaliser and
learned step sizes."""


@pytest.mark.parametrize("algo", list_agents())
def test_every_field_of_every_algorithm_has_a_docstring_and_its_default_validates(algo):
    config_class = agent_spec(algo).config_class
    undocumented = [name for name, doc in field_docs(config_class).items() if not doc]
    assert undocumented == []
    default = config_class()
    assert default.algo == algo  # the class's own default names its algorithm
    default.validate()


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_loads_into_its_algorithms_config(preset):
    config = load_config(preset)
    assert isinstance(config, agent_spec(config.algo).config_class)


def test_an_unknown_key_names_the_algorithms_own_fields():
    with pytest.raises(ValueError, match=r"unknown config fields \['max_kl'\] for algo 'rl2'; its own fields: .*rl2_h"):
        config_from_dict({"algo": "rl2", "max_kl": 0.01})


class _Incomplete:
    curve_kind = "step"  # a string, not a CurveKind

    def train_step(self, tasks, rng):
        return {}


@dataclasses.dataclass
class _TinyConfig(RunConfig):
    algo: str = "tiny"


def test_registration_names_what_a_class_lacks():
    with pytest.raises(TypeError, match=r"lacks adaptation_curve, .*load_state_dict, curve_kind"):
        register_agent("tiny", _Incomplete, _TinyConfig)
    rl2 = agent_spec("rl2")
    with pytest.raises(TypeError, match=r"dataclass subclass of metarl\.config\.RunConfig"):
        register_agent("tiny", rl2.agent_class, dict)
    with pytest.raises(ValueError, match="algo 'rl2' is already registered"):
        register_agent("rl2", agent_spec("maml-trpo").agent_class, agent_spec("maml-trpo").config_class)
    with pytest.raises(ValueError, match="letters, digits"):
        register_agent("no spaces", rl2.agent_class, rl2.config_class)
    assert register_agent("rl2", rl2.agent_class, rl2.config_class) == "rl2"  # the same again is a no-op


def test_metarl_algos_lists_the_algorithms_and_documents_their_fields(capsys):
    assert main(["algos"]) == 0
    listing = capsys.readouterr().out
    for algo in list_agents():
        assert algo in listing
    assert main(["algos", "rl2"]) == 0
    fields = capsys.readouterr().out
    assert "rl2_hidden_size = 256" in fields and "GRU units of the actor" in fields
    assert "seed = " not in fields
    assert main(["algos", "rl2", "--common"]) == 0
    assert "seed = 0" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["rl2", "maml-ppo-meta-sgd"])
def test_a_run_folder_from_before_resumes_as_if_trained_now(tmp_path, name):
    """The old folder's config.json holds every field of the old flat config; its algorithm's are kept. Trained on
    by one iteration it equals a run started now with the same config, metrics and parameters alike."""
    legacy = shutil.copytree(LEGACY_RUNS / name, tmp_path / "legacy")
    config = load_run_config(legacy)
    flat = json.loads((legacy / "config.json").read_text())
    assert set(field_names(type(config))) < set(flat)  # it dropped the fields its algorithm never read
    resumed = train(None, resume=legacy, iterations=2)
    fresh = train(dataclasses.replace(config, iterations=2, device="cpu"), run_dir=tmp_path / "fresh")

    def metrics(run_dir: Path) -> list[dict]:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in record.items() if not k.startswith("time/")} for record in records]

    assert metrics(legacy) == metrics(fresh.run_dir)
    np.testing.assert_array_equal(resumed.test_returns, fresh.test_returns)


def test_a_run_folder_with_an_unknown_algorithm_or_field_is_refused(tmp_path):
    legacy = shutil.copytree(LEGACY_RUNS / "rl2", tmp_path / "legacy")
    values = json.loads((legacy / "config.json").read_text())
    (legacy / "config.json").write_text(json.dumps({**values, "algo": "no-such-algo"}))
    with pytest.raises(ValueError, match=r"cannot load the run .*: unknown algo 'no-such-algo'.*--import"):
        train(None, resume=legacy)
    (legacy / "config.json").write_text(json.dumps({**values, "surprise": 1}))
    with pytest.raises(ValueError, match=r"unknown config fields .*'surprise'.* for algo 'rl2'"):
        load_run_config(legacy)
    (legacy / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run_config(legacy)


def test_importing_agents_imports_every_module_in_it():
    """A new file in agents/ registers itself on import: no list anywhere to edit."""
    import pkgutil
    import sys

    import metarl.agents

    modules = {f"metarl.agents.{module.name}" for module in pkgutil.iter_modules(metarl.agents.__path__)}
    assert modules <= set(sys.modules)
    registered_from = {agent_spec(name).agent_class.__module__ for name in list_agents()}
    assert registered_from <= modules


def test_register_agent_refuses_half_of_the_buffers_pair():
    """An agent that saves buffers beside ``last.pt`` must be able to load them back, and the other way round."""
    from metarl.registry import list_agents

    spec = agent_spec("random")

    class SavesOnly(spec.agent_class):
        def buffers_state_dict(self):
            return {}

    with pytest.raises(TypeError, match=r"SavesOnly must have both buffers_state_dict and load_buffers_state_dict"):
        register_agent("saves-only", SavesOnly, spec.config_class)
    assert "saves-only" not in list_agents()
