"""The Bernoulli multi-armed bandit family of the RL² paper."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import torch

from metarl.env import MetaEnv
from metarl.tasks import TaskFamily, check_count, check_real
from metarl.vector import TorchVectorEnv


@dataclasses.dataclass(frozen=True)
class BanditTask:
    """A bandit task: the success probability of each arm."""

    arm_means: tuple[float, ...]


class BanditEnv(MetaEnv[BanditTask]):
    """Single env of :class:`Bandit`; see the family for the full description."""

    draws_per_step = 1

    def _reset_state(self) -> None:
        pass  # a bandit has no state

    def _observe(self) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    def _step_state(self, action: int, uniforms: tuple[float, ...]) -> tuple[float, bool, dict]:
        reward = float(uniforms[0] < self.task_params["arm_means"][action])
        return reward, True, {}


class BanditVectorEnv(TorchVectorEnv[BanditTask]):
    """Native batched :class:`Bandit` in torch."""

    draws_per_step = 1

    def _reset_state(self, mask: torch.Tensor) -> None:
        pass  # a bandit has no state

    def _observe(self) -> torch.Tensor:
        return torch.zeros((self.num_envs, 1), dtype=torch.float32, device=self.device)

    def _step_state(
        self, actions: torch.Tensor, randomness: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        means = self.task_params["arm_means"].gather(1, actions[:, None])[:, 0]
        rewards = (randomness[:, 0] < means).to(torch.float32)
        return rewards, torch.ones(self.num_envs, dtype=torch.bool, device=self.device), {}


class Bandit(TaskFamily[BanditTask]):
    """Bernoulli k-armed bandits, one pull per episode, as in the RL² paper.

    ## Description
    Each episode is a single pull of one of ``num_arms`` arms; a trial of n episodes on the same task is the
    bandit problem of horizon n that RL² and the classical bandit algorithms solve.

    ## Action Space
    ``Discrete(num_arms)``: the arm to pull.

    ## Observation Space
    ``Box(0, 1, (1,), float32)``, always ``[0.]``: a bandit has no state; what an agent learns from is the reward
    (RL² feeds the previous action, reward and done flag to its policy).

    ## Rewards
    1 with probability ``arm_means[action]``, else 0.

    ## Episode End
    Terminates after the one pull.

    ## Task distribution
    ``arm_means ~ U[0, 1]^num_arms``, independently per arm. The split draws distinct tasks (disjoint draws), so
    held-out tasks never occur in training.

    ## Arguments
    ``num_arms`` (5; the paper uses 5, 10 and 50).

    ## Version History
    * v0: initial version.

    References:
        Duan et al. "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", arXiv:1611.02779, 2016.
    """

    name = "Bandit"
    version = 0
    env_class = BanditEnv
    vector_env_class = BanditVectorEnv
    task_type = BanditTask

    def __init__(self, num_arms: int = 5) -> None:
        self.num_arms = check_count("num_arms", num_arms, minimum=2)
        self.horizon = 1
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(self.num_arms)

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[BanditTask]:
        check_count("num_tasks", num_tasks)
        means = rng.uniform(0.0, 1.0, size=(num_tasks, self.num_arms))
        return [BanditTask(arm_means=tuple(float(p) for p in row)) for row in means]

    def _check_task_values(self, task: BanditTask) -> None:
        if not isinstance(task.arm_means, tuple) or len(task.arm_means) != self.num_arms:
            raise ValueError(f"task.arm_means must be a tuple of {self.num_arms} probabilities, got {task.arm_means!r}")
        for i, p in enumerate(task.arm_means):
            check_real(f"task.arm_means[{i}]", p, 0.0, 1.0)
