"""The uniformly random policy: the floor every meta-learner must beat."""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium as gym
import torch


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
