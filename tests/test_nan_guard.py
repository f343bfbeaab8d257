"""The trainer's guard against a non-finite meta-update restores the *whole* agent, for every registered algorithm:
parameters, optimiser state, RL²'s return normaliser, Meta-SGD's learned step sizes (whatever ``state_dict`` holds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY_RL2_CONFIG, assert_same_state, tiny_values

from metarl.presets import config_from_dict
from metarl.registry import list_agents, make_agent, make_family
from metarl.trainer import guarded_train_step

BANDIT = {"family": "MetaRL/Bandit-v0", "family_kwargs": {"num_arms": 3}, "trial_episodes": 3}
SETTINGS = {
    "rl2": {key: value for key, value in TINY_RL2_CONFIG.items()},
    "classical": {**tiny_values("classical"), **BANDIT, "classical_agent": "thompson"},
    "maml-ppo": tiny_values("maml-ppo", meta_sgd=True, ppo_epochs=2),  # Meta-SGD: learned step sizes too
}
"""Per algorithm, a tiny config of a family it supports (the others: the tiny Navigation2D config)."""


def float_tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state] if state.is_floating_point() else []
    if isinstance(state, dict):
        return [tensor for value in state.values() for tensor in float_tensors(value)]
    if isinstance(state, list | tuple):
        return [tensor for value in state for tensor in float_tensors(value)]
    return []


def cloned(state):
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {key: cloned(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(cloned(value) for value in state)
    return state


@pytest.mark.parametrize("algo", list_agents())
def test_a_non_finite_update_rolls_back_the_whole_agent(algo, monkeypatch):
    config = config_from_dict(SETTINGS.get(algo, tiny_values(algo)))
    family = make_family(config.family, **config.family_kwargs)
    torch.manual_seed(0)
    agent = make_agent(config, family, torch.device("cpu"))
    split = family.split(seed=0, num_tasks=config.num_tasks)
    rng = np.random.default_rng(0)
    tasks = [split.train[i % len(split.train)] for i in range(config.meta_batch_size)]

    assert "errors/skipped_update" not in guarded_train_step(agent, tasks, rng)  # a real step fills optimiser state
    before = cloned(agent.state_dict())
    tensors = float_tensors(agent.state_dict())
    if tensors:  # a step changes the state, so that restoring it is a real check
        probe = cloned(agent.state_dict())
        guarded_train_step(agent, tasks, np.random.default_rng(1))
        assert any(
            not torch.equal(a, b) for a, b in zip(float_tensors(agent.state_dict()), float_tensors(probe), strict=True)
        )
        agent.load_state_dict(before)
        before = cloned(agent.state_dict())

    real_step = type(agent).train_step

    def corrupting_step(self, step_tasks, step_rng):
        metrics = real_step(self, step_tasks, step_rng)
        with torch.no_grad():
            for tensor in float_tensors(self.state_dict()):  # every parameter, moment, normaliser and step size
                tensor.fill_(math.nan)
        return metrics if tensors else {**metrics, "losses/probe": math.nan}

    monkeypatch.setattr(type(agent), "train_step", corrupting_step)
    metrics = guarded_train_step(agent, tasks, np.random.default_rng(2))
    assert metrics["errors/skipped_update"] == 1.0
    assert all(math.isfinite(value) for value in metrics.values())
    assert_same_state(agent.state_dict(), before)
