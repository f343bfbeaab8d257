"""A family registered from a user's own module works with the suite's API, vector envs, rollout and CLI."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from metarl import list_families, make_family
from metarl.cli import main as cli_main
from metarl.rollout import RandomPolicy, collect_episodes

EXAMPLE = Path(__file__).resolve().parents[1] / "scripts" / "custom_family_example.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("custom_family_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["custom_family_example"] = module
    spec.loader.exec_module(module)
    return module


def test_registered_and_listed(example):
    assert example.LINE_GOAL_ID == "MetaRL/LineGoal-v0"
    assert "MetaRL/LineGoal-v0" in list_families()
    family = make_family("MetaRL/LineGoal-v0", horizon=7)
    assert isinstance(family, example.LineGoal) and family.horizon == 7


def test_gymnasium_make_and_checker(example):
    env = gym.make("MetaRL/LineGoal-v0")
    check_env(env.unwrapped)
    task = example.LineGoalTask(goal=0.5)
    env.reset(seed=0, options={"task": task})
    assert env.unwrapped.get_task() == task
    # moving right towards the goal at 0.5 improves the reward step by step
    rewards = [env.step(np.array([0.2], dtype=np.float32))[1] for _ in range(2)]
    assert rewards == pytest.approx([-0.3, -0.1], abs=1e-6)


def test_no_native_env_falls_back_to_sync_vector_env(example):
    assert gym.spec("MetaRL/LineGoal-v0").vector_entry_point is None
    family = make_family("MetaRL/LineGoal-v0")
    envs = family.make_vec_env(4)
    assert isinstance(envs, gym.vector.SyncVectorEnv)
    assert isinstance(gym.make_vec("MetaRL/LineGoal-v0", num_envs=2), gym.vector.SyncVectorEnv)


def test_rollout_on_user_family(example):
    family = make_family("MetaRL/LineGoal-v0")
    tasks = [example.LineGoalTask(goal=-1.0), example.LineGoalTask(goal=1.0)]
    envs = family.make_vec_env(len(tasks) * 3)

    def go_right(observations: torch.Tensor, params: None) -> torch.Tensor:
        return torch.full((*observations.shape[:2], 1), 0.2)

    batch = collect_episodes(envs, family, tasks, 3, go_right)
    assert batch.rewards.shape == (2, 3, family.horizon)
    # going right is good for the goal at +1 and bad for the goal at -1
    assert (batch.returns[1] > batch.returns[0]).all()
    assert batch.task_params["goal"].tolist() == [-1.0, 1.0]
    random_batch = collect_episodes(envs, family, tasks, 3, RandomPolicy(family.action_space, seed=0), seed=0)
    assert random_batch.masks.sum().item() == 2 * 3 * family.horizon


def test_cli_runs_user_family(example, capsys):
    assert cli_main(["--import", str(EXAMPLE), "demo", "--family", "MetaRL/LineGoal-v0", "--tasks", "2"]) == 0
    assert "MetaRL/LineGoal-v0" in capsys.readouterr().out


def test_reloaded_module_may_register_again_but_another_class_may_not(example):
    from metarl import TaskFamily, register_family

    assert register_family(example.LineGoal) == "MetaRL/LineGoal-v0"

    class LineGoal(TaskFamily):  # same name and version, a different class
        name = "LineGoal"
        task_type = example.LineGoalTask
        env_class = example.LineGoalEnv

    with pytest.raises(ValueError, match=re.escape("already registered to custom_family_example.LineGoal")):
        register_family(LineGoal)


def test_a_family_needs_env_classes_of_the_right_kind(example):
    from metarl import TaskFamily, register_family

    class NoEnv(TaskFamily):
        name = "NoEnv"
        task_type = example.LineGoalTask

    with pytest.raises(TypeError, match=r"NoEnv.env_class must be a gymnasium.Env with the metarl.TaskHolder mixin"):
        register_family(NoEnv)

    class WrongVectorEnv(NoEnv):
        env_class = example.LineGoalEnv
        vector_env_class = gym.vector.SyncVectorEnv

    with pytest.raises(TypeError, match=r"vector_env_class must be None or a gymnasium VectorEnv with set_tasks"):
        register_family(WrongVectorEnv)
    assert "MetaRL/NoEnv-v0" not in list_families()
