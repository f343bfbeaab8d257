"""The uniformly random policy: the floor every meta-learner must beat, and the agent that evaluates it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.non_adaptive import NonAdaptiveAgent
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


class RandomAgent(NonAdaptiveAgent):
    """The random baseline as a meta-agent (``algo=random``): nothing to learn.

    It fits the trainer and the evaluator like any agent, so that ``metarl train --algo random iterations=1`` makes
    a run folder that ``metarl evaluate`` compares with the others.
    """

    def __init__(self, family: TaskFamily, config: Any, device: torch.device) -> None:
        super().__init__(family, config, device)
        self.policy = torch.nn.Module()
        """No parameters (the trainer's non-finite-parameter guard finds none to check)."""

    def rollout_policy(self, tasks: Sequence[Any], rng: np.random.Generator) -> RandomPolicy:
        return RandomPolicy(self.family.action_space, seed=int(rng.integers(2**31)), device=self.device)

    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        """Nothing to learn; the return of random episodes on the meta-batch, for the logs."""
        return {"meta/return_pre_adapt": float(self.adaptation_curve(tasks, rng, 1).returns.mean())}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """No parameters."""
