"""The uniformly random policy: the floor every meta-learner must beat, and the agent that evaluates it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.rollout import repeated_returns
from metarl.tasks import TaskFamily


class RandomPolicy:
    """Acts uniformly at random in a Box or Discrete action space, from its own seeded generator.

    Usable wherever :class:`metarl.rollout.RolloutPolicy` is: called with observations ``[T, E, ...]`` it returns
    actions ``[T, E, *action_shape]`` on the observations' device.
    """

    def __init__(self, action_space: gym.Space, seed: int = 0, device: str | torch.device = "cpu") -> None:
        if not isinstance(action_space, gym.spaces.Box | gym.spaces.Discrete):
            raise TypeError(f"RandomPolicy supports Box and Discrete action spaces, got {action_space!r}")
        self.action_space = action_space
        self.generator = torch.Generator(device=device).manual_seed(seed)
        if isinstance(action_space, gym.spaces.Box):
            self._low = torch.as_tensor(action_space.low, dtype=torch.float32, device=device)
            self._high = torch.as_tensor(action_space.high, dtype=torch.float32, device=device)

    def __call__(self, observations: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        batch_shape = observations.shape[:2]  # [T, E]
        device = self.generator.device
        if isinstance(self.action_space, gym.spaces.Discrete):
            start, n = int(self.action_space.start), int(self.action_space.n)
            actions = torch.randint(start, start + n, batch_shape, generator=self.generator, device=device)
        else:
            uniform = torch.rand((*batch_shape, *self.action_space.shape), generator=self.generator, device=device)
            actions = self._low + (self._high - self._low) * uniform
        return actions.to(observations.device)


class RandomAgent:
    """The random baseline as a meta-agent (``algo=random``): nothing to learn, the same curve at every point.

    It fits the trainer and the evaluator like any agent, so that ``metarl train --algo random iterations=1`` makes
    a run folder that ``metarl evaluate`` compares with the others: at each of its adaptation points it plays
    ``episodes_per_task`` fresh episodes of every task with uniformly random actions.
    """

    curve_label = "step"
    """Points are 'adaptation steps' (none of them changes anything), aligned with MAML's curve."""

    def __init__(self, family: TaskFamily, config: Any, device: torch.device) -> None:
        self.family = family
        self.config = config
        self.device = device
        self.policy = torch.nn.Module()
        """No parameters (the trainer's non-finite-parameter guard finds none to check)."""
        self._envs: dict[int, gym.vector.VectorEnv] = {}

    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        """Nothing to learn; the return of random episodes on the meta-batch, for the logs."""
        return {"meta/return_pre_adapt": float(self.adaptation_returns(tasks, rng, 1).mean())}

    def default_num_points(self) -> int:
        return self.config.eval_steps + 1

    def adaptation_returns(self, tasks: Sequence[Any], rng: np.random.Generator, num_points: int) -> np.ndarray:
        """``[num_points, T]``: each task's mean return over ``episodes_per_task`` random episodes, drawn afresh
        at every point."""
        episodes = self.config.episodes_per_task
        num_envs = len(tasks) * episodes
        if num_envs not in self._envs:
            self._envs[num_envs] = self.family.make_vec_env(num_envs, device=self.device)
        policy = RandomPolicy(self.family.action_space, seed=int(rng.integers(2**31)), device=self.device)
        return repeated_returns(
            self._envs[num_envs], self.family, tasks, episodes, policy, rng, num_points, self.device
        )

    def evaluate(self, tasks: Sequence[Any], rng: np.random.Generator) -> list[float]:
        return self.adaptation_returns(tasks, rng, self.default_num_points()).mean(axis=1).tolist()

    def selection_score(self, curve: Sequence[float]) -> float:
        return float(np.mean(curve))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """No parameters."""
