"""The base of the baselines that do not adapt (random, the oracle): their curve is fresh episodes at each point."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from metarl.agent import AdaptationCurve, CurveKind
from metarl.budget import MemoryEstimate, buffer_estimate, episode_step_bytes, largest_task_set, with_sub_envs
from metarl.config import RunConfig, check_at_least
from metarl.distributed import Workers
from metarl.rollout import RolloutPolicy, collect_episodes
from metarl.tasks import TaskFamily


@dataclasses.dataclass
class NonAdaptiveConfig(RunConfig):
    """The fields of a baseline that does not adapt: how its flat curve is measured."""

    episodes_per_task: int = 20
    """Episodes of every task at each point of the curve (and per task and meta-iteration in training)."""
    eval_steps: int = 3
    """The curve has ``eval_steps + 1`` points, aligned with MAML's steps 0..eval_steps."""

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "episodes_per_task")
        check_at_least(self, 0, "eval_steps")


class NonAdaptiveAgent:
    """A meta-agent whose policy does not change on a new task: at each of its points the evaluator sees
    ``episodes_per_task`` fresh episodes of every task (a flat curve up to noise), aligned with MAML's steps.

    Subclasses give ``rollout_policy`` (and ``train_step``, ``state_dict``, ``load_state_dict``).
    """

    curve_kind: ClassVar[CurveKind] = CurveKind.STEP
    """Points are 'adaptation steps' (none of them changes anything), aligned with MAML's curve."""
    trains_across_processes: ClassVar[bool] = False
    progress_metrics: ClassVar[tuple[str, ...]] = ("meta/return_pre_adapt",)

    def __init__(
        self, family: TaskFamily, config: NonAdaptiveConfig, device: torch.device, workers: Workers | None = None
    ) -> None:
        self.family = family
        self.config = config
        self.device = device
        self._envs: dict[int, gym.vector.VectorEnv] = {}

    def rollout_policy(self, tasks: Sequence[Any], rng: np.random.Generator) -> RolloutPolicy:
        """The policy that plays ``tasks`` (observations ``[T, E, ...]`` to actions ``[T, E, ...]``)."""
        raise NotImplementedError

    @classmethod
    def memory_estimate(cls, config: NonAdaptiveConfig, family: TaskFamily) -> MemoryEstimate:
        """The memory of one point of the curve on the largest set of tasks it is measured on (the meta-batch,
        validation or the test; points are collected one at a time) and of the vector envs kept for each size."""
        field, count = largest_task_set(config, ("meta_batch_size", "eval_tasks", "test_tasks"))
        estimate = buffer_estimate(
            "episode buffers",
            [
                (f"{field} {{}}", count),
                ("episodes_per_task {}", config.episodes_per_task),
                ("horizon {}", family.horizon),
            ],
            2 * episode_step_bytes(family),  # time-major while collecting, then task-major
            ("episodes_per_task", field),
        )
        task_counts = (config.meta_batch_size, config.eval_tasks, config.test_tasks)
        return with_sub_envs(estimate, [tasks * config.episodes_per_task for tasks in task_counts], family)

    def default_num_points(self) -> int:
        return self.config.eval_steps + 1

    def adaptation_curve(self, tasks: Sequence[Any], rng: np.random.Generator, num_points: int) -> AdaptationCurve:
        """Each task's mean return (and success rate) over ``episodes_per_task`` fresh episodes at every point; the
        env seeds are drawn from ``rng``, a stochastic policy draws its actions afresh at every point."""
        episodes = self.config.episodes_per_task
        num_envs = len(tasks) * episodes
        if num_envs not in self._envs:
            self._envs[num_envs] = self.family.make_vec_env(num_envs, device=self.device)
        policy = self.rollout_policy(tasks, rng)
        returns, successes = [], []
        for _ in range(num_points):
            seed = int(rng.integers(2**31))
            batch = collect_episodes(
                self._envs[num_envs], self.family, tasks, episodes, policy, seed=seed, device=self.device
            )
            returns.append(batch.returns.mean(dim=1))
            if batch.successes is not None:
                successes.append(batch.successes.mean(dim=1))
        return AdaptationCurve.from_tensors(returns, successes or None)

    def selection_score(self, curve: Sequence[float]) -> float:
        return float(np.mean(curve))
