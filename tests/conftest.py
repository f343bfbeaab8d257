"""Shared set-up of the test suite: one torch thread, the suite's families registered, and a registry-wide parametrize.

Any test that takes a ``family_id`` argument runs once per suite family (once per family of the module's
``TESTED_FAMILY_IDS``, when it sets one); the ``family`` fixture builds that family with its registered defaults.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # the suite runs on 2 cores; intra-op threads only add overhead at these sizes

import metarl.envs  # noqa: E402 - registers the suite's families

import metarl  # noqa: E402
from metarl.tasks import TaskFamily  # noqa: E402

SUITE_FAMILY_IDS = (
    "MetaRL/AntDir-v0",
    "MetaRL/AntDir2D-v0",
    "MetaRL/AntGoal-v0",
    "MetaRL/AntVel-v0",
    "MetaRL/Bandit-v0",
    "MetaRL/HalfCheetahDir-v0",
    "MetaRL/HalfCheetahRandParams-v0",
    "MetaRL/HalfCheetahVel-v0",
    "MetaRL/HopperRandParams-v0",
    "MetaRL/Navigation2D-v0",
    "MetaRL/SparsePointRobot-v0",
    "MetaRL/TabularMDP-v0",
    "MetaRL/Walker2dRandParams-v0",
)
"""The ids ``import metarl.envs`` must register (checked in test_env_contract)."""

FAMILY_IDS = [
    env_id
    for env_id in metarl.registry.list_families()
    if env_id.startswith("MetaRL/")
    and metarl.registry.family_spec(env_id).family_class.__module__.startswith("metarl.envs.")
    and not env_id.startswith("MetaRL/MetaWorld")
]
"""Every family the suite registers (families registered by tests themselves are left out, and so are the optional
Meta-World families, which test_meta_world.py tests on their own terms: a fixed benchmark split, Meta-World's env)."""


LIGHT_FAMILY_IDS = [
    env_id
    for env_id in FAMILY_IDS
    if issubclass(metarl.registry.family_spec(env_id).family_class.vector_env_class or object, metarl.TorchVectorEnv)
]
"""The families with a torch-native batched env (:class:`metarl.TorchVectorEnv`); a test module about that env
sets ``TESTED_FAMILY_IDS = LIGHT_FAMILY_IDS``."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "family_id" in metafunc.fixturenames:
        metafunc.parametrize("family_id", getattr(metafunc.module, "TESTED_FAMILY_IDS", FAMILY_IDS))


@pytest.fixture
def family(family_id: str) -> TaskFamily:
    """The family ``family_id`` built with its registered defaults."""
    return metarl.make_family(family_id)


@pytest.fixture(params=LIGHT_FAMILY_IDS)
def light_family(request: pytest.FixtureRequest) -> TaskFamily:
    """Each family with a torch-native batched env, built with its registered defaults."""
    return metarl.make_family(request.param)


def random_actions(space: gym.Space, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Actions of ``space`` drawn from ``rng``, with leading dims ``shape``.

    Box actions are drawn from 1.5 times the box, so that the envs' clipping is exercised too.
    """
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(int(space.start), int(space.start + space.n), size=shape, dtype=np.int64)
    assert isinstance(space, gym.spaces.Box)
    low, high = 1.5 * space.low, 1.5 * space.high
    return rng.uniform(low, high, size=(*shape, *space.shape)).astype(space.dtype)


# a meta-training run small enough for a test: a few seconds on one CPU thread
TINY_TRAIN_CONFIG = {
    "family_kwargs": {"horizon": 10},
    "iterations": 4,
    "meta_batch_size": 3,
    "episodes_per_task": 3,
    "hidden_sizes": [16],
    "eval_interval": 2,
    "eval_tasks": 3,
    "eval_steps": 1,
    "test_tasks": 3,
    "checkpoint_interval": 2,
    "progress": False,
}

# the same for RL²: 8 trials of 4 pulls of a 3-armed bandit per iteration, a GRU of 16 units
TINY_RL2_CONFIG = {
    **{
        key: value
        for key, value in TINY_TRAIN_CONFIG.items()
        if key not in ("episodes_per_task", "hidden_sizes", "eval_steps")
    },
    "algo": "rl2",
    "family": "MetaRL/Bandit-v0",
    "family_kwargs": {"num_arms": 3},
    "trial_episodes": 4,
    "rl2_hidden_size": 16,
    "meta_batch_size": 8,
    "ppo_epochs": 2,
    "ppo_minibatches": 2,
    "eval_tasks": 8,
    "test_tasks": 8,
}


TINY_ALGO_VALUES = {
    "maml-plus-plus": {"first_order_iterations": 2, "msl_annealing_iterations": 2},
    "maml-plus-plus-trpo": {"first_order_iterations": 2, "msl_annealing_iterations": 2},
    "pearl": {
        "num_tasks": 30,
        "pearl_hidden_sizes": [16],
        "pearl_encoder_hidden_sizes": [16],
        "pearl_batch_size": 8,
        "pearl_context_batch_size": 6,
        "pearl_task_batch_size": 3,
        "pearl_gradient_steps": 3,
        "pearl_initial_steps": 10,
        "pearl_prior_steps": 10,
        "pearl_extra_posterior_steps": 20,
        "pearl_buffer_capacity": 50,
        "pearl_eval_episodes": 2,
    },
    "varibad": {
        "varibad_encoder_hidden_size": 8,
        "varibad_action_embedding_size": 4,
        "varibad_state_embedding_size": 4,
        "varibad_reward_embedding_size": 4,
        "varibad_reward_decoder_sizes": [8],
        "varibad_policy_hidden_sizes": [16],
        "varibad_policy_embedding_size": 8,
        "varibad_vae_buffer_trials": 20,
        "varibad_vae_batch_trials": 4,
        "varibad_elbo_samples": 5,
        "varibad_decode_samples": 5,
        "ppo_minibatches": 2,
    },
    "rl2-transformer": {
        "trial_episodes": 4,
        "transformer_width": 16,
        "transformer_heads": 2,
        "transformer_layers": 1,
        "ppo_minibatches": 2,
    },
}
"""Per algorithm, what its tiny run needs beyond :data:`TINY_TRAIN_CONFIG`: MAML++'s schedules (on either outer
loop) must fit in its 4 iterations; PEARL's buffers, networks and gradient steps are made small (24 training
tasks); VariBAD's networks and VAE batches too, and the trial transformer."""


def tiny_values(algo: str, **overrides: Any) -> dict[str, Any]:
    """:data:`TINY_TRAIN_CONFIG` for ``algo``: the keys its config class has (a baseline without a policy network has
    no ``hidden_sizes``, say), the algorithm's :data:`TINY_ALGO_VALUES`, then ``overrides``."""
    from metarl.config import field_names
    from metarl.registry import agent_spec

    fields = set(field_names(agent_spec(algo).config_class))
    return {
        **{key: value for key, value in TINY_TRAIN_CONFIG.items() if key in fields},
        "algo": algo,
        **TINY_ALGO_VALUES.get(algo, {}),
        **overrides,
    }


def assert_same_state(actual: Any, expected: Any, where: str = "state") -> None:
    """Two (nested) state dicts are bitwise equal: every tensor ``torch.equal``, every other value ``==``; a
    failure names where."""
    if isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_same_state(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_state(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


def metrics_without_timings(run_dir: Path) -> list[dict[str, Any]]:
    """A run folder's ``metrics.jsonl`` records without the wall-clock ``time/...`` keys."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if not key.startswith("time/")} for record in records]


def tiny_agent_and_tasks(agent_class: type, values: dict[str, Any]) -> tuple[Any, list[Any]]:
    """An agent of the config ``values`` (its policy initialised from torch seed 0, on the CPU) and
    ``meta_batch_size`` tasks of its family drawn with numpy seed 0: the unit tests' tiny problem."""
    from metarl.presets import config_from_dict
    from metarl.registry import make_family

    config = config_from_dict(values)
    family = make_family(config.family, **config.family_kwargs)
    torch.manual_seed(0)
    agent = agent_class(family, config, torch.device("cpu"))
    return agent, family.sample_tasks(np.random.default_rng(0), config.meta_batch_size)


def sampled_meta_batch(agent: Any, tasks: list[Any]) -> Any:
    """One training meta-batch of a gradient-based agent (numpy seed 1): its episodes before and after every step."""
    return agent.sample(tasks, np.random.default_rng(1), agent.config.num_inner_steps, evaluation=False)


def as_float64(data: Any) -> Any:
    """A ``PolicyGradientData`` with its floating tensors in float64."""
    return type(data)(*(t.double() if t.is_floating_point() else t for t in data))


TWO_ARMED_BANDIT_TRAINING = {
    "family": "MetaRL/Bandit-v0",
    "family_kwargs": {"num_arms": 2},
    "num_tasks": 4000,
    "trial_episodes": 10,
    "meta_batch_size": 256,
    "iterations": 60,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "ppo_learning_rate": 3e-3,
    "ppo_epochs": 4,
    "ppo_entropy_coeff": 0.01,
    "eval_tasks": 256,
    "test_tasks": 400,
}
"""The trial agents' learning check (RL², the trial transformer): 60 iterations of 256 trials of 10 pulls of
2-armed bandits, tested on 400 held-out bandits (random scores 5.0 per trial; Gittins about 6.3)."""

SHORT_NAVIGATION_TRAINING = {
    "seed": 0,
    "iterations": 12,
    "meta_batch_size": 10,
    "episodes_per_task": 10,
    "num_inner_steps": 2,
    "eval_steps": 2,
    "eval_interval": 12,
    "eval_tasks": 10,
    "test_tasks": 20,
    "checkpoint_interval": 12,
    "progress": False,
}
"""The learning tests' short meta-training of a two-step gradient-based learner on MetaRL/Navigation2D-v0 (about
20 s): 12 iterations of 10 tasks × 10 episodes, tested on 20 held-out tasks."""


def trained_and_untrained_test_returns(agent_class: type, values: dict[str, Any], run_dir: Path) -> tuple[Any, Any]:
    """A learning test's two curves: the held-out returns after meta-training the config ``values`` into
    ``run_dir``, and :func:`untrained_test_returns` of the same config."""
    from metarl.presets import config_from_dict
    from metarl.trainer import train

    config = config_from_dict(values)
    return train(config, run_dir=run_dir).test_returns, untrained_test_returns(agent_class, config)


def untrained_test_returns(agent_class: type, config: Any) -> list[float]:
    """The mean held-out return after 0..K steps of ``config``'s agent before any training (the run's
    initialisation: torch seed ``config.seed``), on the run's test tasks with the evaluation's seed: the baseline a
    learning test's trained run must beat."""
    from metarl.registry import make_family

    family = make_family(config.family, **config.family_kwargs)
    test_tasks = family.split(seed=config.split_seed, num_tasks=config.num_tasks).test[: config.test_tasks]
    torch.manual_seed(config.seed)
    agent = agent_class(family, config, torch.device("cpu"))
    curve = agent.adaptation_curve(test_tasks, np.random.default_rng([config.seed, 2**20]), agent.default_num_points())
    return curve.means_over_tasks()[0]


def interrupted_and_resumed(agent_class: type, values: dict[str, Any], tmp_path: Path, monkeypatch: Any) -> tuple:
    """Train ``values`` straight into ``tmp_path/reference``, and again into ``tmp_path/killed`` with the agent's
    third ``train_step`` interrupted (a KeyboardInterrupt after the checkpoint at iteration 2), then resume that
    folder to the end. Returns ``(reference, resumed)``, the two :class:`metarl.trainer.RunResult`."""
    from metarl.checkpoint import LAST_CHECKPOINT, load_checkpoint
    from metarl.presets import config_from_dict
    from metarl.trainer import train

    reference = train(config_from_dict(values), run_dir=tmp_path / "reference")
    real_step = agent_class.train_step
    calls = []

    def interrupted_step(self, tasks, rng):
        calls.append(None)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_step(self, tasks, rng)

    monkeypatch.setattr(agent_class, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train(config_from_dict(values), run_dir=tmp_path / "killed")
    assert load_checkpoint(tmp_path / "killed" / LAST_CHECKPOINT)["iteration"] == 2
    monkeypatch.setattr(agent_class, "train_step", real_step)
    return reference, train(None, resume=tmp_path / "killed")


def assert_resumed_equals_reference(reference: Any, resumed: Any) -> dict[str, Any]:
    """The resumed run of :func:`interrupted_and_resumed` ends where the uninterrupted one does: the same agent state
    in ``last.pt``, the same metrics (timings aside) and the same test returns. Returns the resumed agent's state."""
    from metarl.checkpoint import LAST_CHECKPOINT, load_checkpoint

    final = load_checkpoint(resumed.run_dir / LAST_CHECKPOINT)["agent"]
    assert_same_state(final, load_checkpoint(reference.run_dir / LAST_CHECKPOINT)["agent"])
    assert metrics_without_timings(resumed.run_dir) == metrics_without_timings(reference.run_dir)
    assert resumed.test_returns == reference.test_returns
    return final


def assert_refused_before_a_run_folder(
    algo: str, overrides: list[str], message: str, match: str, run_root: Path, capsys: Any
) -> None:
    """``metarl train`` of ``algo``'s tiny config with ``overrides`` exits 2 with ``message`` on stderr and makes no
    run folder under ``run_root``; building the config directly raises a ValueError matching ``match``."""
    from metarl.cli import main as cli_main
    from metarl.presets import config_from_dict

    values = tiny_values(algo)
    base = [f"{key}={json.dumps(value)}" for key, value in values.items() if key != "algo"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--algo", algo, *base, *overrides, f"run_root={run_root}"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(run_root.iterdir()), "a run folder was made for a refused config"
    with pytest.raises(ValueError, match=match):
        config_from_dict({**values, **dict(override.split("=", 1) for override in overrides)})


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module, so that tests call its ``main(argv)``."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"metarl_script_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def temporary_family():
    """``temporary_family(FamilyClass)`` registers a family for one test and drops it after, so that later tests
    (``metarl demo`` rolls out every registered family) see the suite's families only."""
    registered: list[str] = []

    def register(family_class: type[TaskFamily]) -> str:
        registered.append(metarl.register_family(family_class))
        return registered[-1]

    yield register
    for env_id in registered:  # the registries have no public unregister
        metarl.registry._FAMILIES.pop(env_id, None)
        gym.registry.pop(env_id, None)
