"""The random tabular MDP family of the RL² paper."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch

from metarl.env import MetaEnv
from metarl.seeding import standard_normal_python, standard_normal_torch
from metarl.tasks import TaskFamily, check_count, check_real
from metarl.vector import TorchVectorEnv

_PROBABILITY_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class TabularMDPTask:
    """A tabular MDP: ``transitions[s][a][s']`` = P(s' | s, a) and ``reward_means[s][a]``."""

    transitions: tuple[tuple[tuple[float, ...], ...], ...]
    reward_means: tuple[tuple[float, ...], ...]


def _to_tuples(array: np.ndarray) -> tuple:
    return tuple(_to_tuples(row) for row in array) if array.ndim > 1 else tuple(float(x) for x in array)


def _as_float_array(name: str, value: object) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a nested tuple of numbers: {error}") from error


class TabularMDPEnv(MetaEnv[TabularMDPTask]):
    """Single env of :class:`TabularMDP`; see the family for the full description."""

    family: TabularMDP
    draws_per_step = 3  # two for the Gaussian reward (Box-Muller), one for the next state

    def _reset_state(self) -> None:
        self._state = 0

    def _observe(self) -> np.ndarray:
        observation = np.zeros(self.family.num_states, dtype=np.float32)
        observation[self._state] = 1.0
        return observation

    def _step_state(self, action: int, uniforms: tuple[float, ...]) -> tuple[float, bool, dict]:
        row = self.task_params["step_table"][self._state, action]
        noise = self.family.reward_std * standard_normal_python(uniforms[0], uniforms[1])
        reward = np.float32(row[-1] + noise)
        self._state = int(np.count_nonzero(row[:-1] <= uniforms[2]))
        return float(reward), False, {}


class TabularMDPVectorEnv(TorchVectorEnv[TabularMDPTask]):
    """Native batched :class:`TabularMDP` in torch: transition tables are ``[num_envs, S, A, S]`` tensors."""

    family: TabularMDP
    draws_per_step = 3

    def _reset_state(self, mask: torch.Tensor) -> None:
        if not hasattr(self, "_state"):
            num_states, num_actions = self.family.num_states, self.family.num_actions
            self._state = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
            # flat (sub-env, state, action) row offsets: a one-index gather is far cheaper than [i, s, a] indexing
            self._env_offset = torch.arange(self.num_envs, device=self.device) * (num_states * num_actions)
            self._one_hot = torch.eye(num_states, dtype=torch.float32, device=self.device)
        self._state = torch.where(mask, 0, self._state)

    def _observe(self) -> torch.Tensor:
        return self._one_hot.index_select(0, self._state)

    def _transform_draws(self, uniforms: torch.Tensor) -> torch.Tensor:
        # per step: [reward noise (Box-Muller of draws 0 and 1), uniform for the next state (draw 2)]
        noise = self.family.reward_std * standard_normal_torch(uniforms[..., 0], uniforms[..., 1])
        return torch.stack([noise, uniforms[..., 2]], dim=-1)

    def _step_state(
        self, actions: torch.Tensor, randomness: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        row_index = torch.add(self._env_offset, self._state, alpha=self.family.num_actions).add_(actions)
        rows = self.task_params["step_table"].view(-1, self.family.num_states).index_select(0, row_index)
        rewards = (rows[:, -1] + randomness[:, 0]).to(torch.float32)
        self._state = (rows[:, :-1] <= randomness[:, 1:]).sum(dim=1)
        return rewards, None, {}


class TabularMDP(TaskFamily[TabularMDPTask]):
    """Random finite MDPs with Gaussian rewards, as in the RL² paper.

    ## Description
    An MDP with ``num_states`` states and ``num_actions`` actions whose transition probabilities and mean rewards
    are unknown to the agent. Each episode starts in state 0 and lasts ``horizon`` steps; a trial of n episodes on
    one MDP is the exploration problem of the RL² paper.

    ## Action Space
    ``Discrete(num_actions)``.

    ## Observation Space
    ``Box(0, 1, (num_states,), float32)``: the one-hot encoding of the current state (RL² feeds states one-hot).

    ## Rewards
    ``r ~ N(reward_means[s][a], reward_std²)`` for the action ``a`` taken in state ``s`` (unit variance in the paper).

    ## Episode End
    Never terminates; truncated after ``horizon`` (10) steps.

    ## Task distribution
    For every ``(s, a)``: ``transitions[s][a] ~ Dirichlet(1, ..., 1)`` (flat) and ``reward_means[s][a] ~ N(1, 1)``.
    The split draws distinct tasks (disjoint draws), so held-out MDPs never occur in training.

    ## Arguments
    ``num_states`` (10), ``num_actions`` (5), ``horizon`` (10), ``reward_std`` (1.0).

    ## Version History
    * v0: initial version.

    References:
        Duan et al. "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", arXiv:1611.02779, 2016.
    """

    name = "TabularMDP"
    version = 0
    env_class = TabularMDPEnv
    vector_env_class = TabularMDPVectorEnv
    task_type = TabularMDPTask

    def __init__(self, num_states: int = 10, num_actions: int = 5, horizon: int = 10, reward_std: float = 1.0) -> None:
        self.num_states = check_count("num_states", num_states, minimum=2)
        self.num_actions = check_count("num_actions", num_actions)
        self.horizon = check_count("horizon", horizon)
        self.reward_std = check_real("reward_std", reward_std, 0.0)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.num_states,), np.float32)
        self.action_space = gym.spaces.Discrete(self.num_actions)

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[TabularMDPTask]:
        check_count("num_tasks", num_tasks)
        shape = (num_tasks, self.num_states, self.num_actions)
        transitions = rng.dirichlet(np.ones(self.num_states), size=shape)
        reward_means = rng.normal(1.0, 1.0, size=shape)
        return [
            TabularMDPTask(transitions=_to_tuples(p), reward_means=_to_tuples(r))
            for p, r in zip(transitions, reward_means, strict=True)
        ]

    def _check_task_values(self, task: TabularMDPTask) -> None:
        transitions = _as_float_array("task.transitions", task.transitions)
        reward_means = _as_float_array("task.reward_means", task.reward_means)
        expected = (self.num_states, self.num_actions, self.num_states)
        if transitions.shape != expected:
            raise ValueError(f"task.transitions must have shape {expected}, got {transitions.shape}")
        if reward_means.shape != expected[:2]:
            raise ValueError(f"task.reward_means must have shape {expected[:2]}, got {reward_means.shape}")
        if not np.isfinite(transitions).all() or (transitions < 0).any():
            raise ValueError("task.transitions must be finite probabilities >= 0")
        worst = np.abs(transitions.sum(axis=-1) - 1.0).max()
        if worst > _PROBABILITY_TOLERANCE:
            raise ValueError(f"task.transitions[s][a] must sum to 1 (±{_PROBABILITY_TOLERANCE}); off by {worst:.3g}")
        if not np.isfinite(reward_means).all():
            raise ValueError("task.reward_means must be finite")

    def task_arrays(self, tasks: Sequence[TabularMDPTask]) -> dict[str, np.ndarray]:
        arrays = super().task_arrays(tasks)
        # What one step in (s, a) needs, in one row: s' is drawn by inverting the CDF with a uniform u,
        # s' = #{inner CDF boundaries <= u}, and the reward is the mean plus noise. step_table[..., s, a, :] holds
        # the S-1 inner boundaries (the CDF without its final 1) and then the mean reward; built once, here, so both
        # envs compare the very same numbers, and one row gather serves a whole step of the batched env.
        boundaries = np.cumsum(arrays["transitions"], axis=-1)[..., :-1]
        arrays["step_table"] = np.concatenate([boundaries, arrays["reward_means"][..., None]], axis=-1)
        return arrays
