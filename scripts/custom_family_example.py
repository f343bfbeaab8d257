"""Register your own task family from your own module and use it like the suite's.

This file is the whole recipe: a frozen task dataclass, a :class:`metarl.TaskFamily`, a :class:`metarl.MetaEnv`
with three small hooks, and one ``register_family`` call. It has no native batched env, so the suite runs it through
Gymnasium's ``SyncVectorEnv``; nothing in the suite's code changes. Try it:

    python scripts/custom_family_example.py
    metarl --import scripts/custom_family_example.py demo --family MetaRL/LineGoal-v0
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np

import metarl
from metarl.tasks import check_count, check_real


@dataclasses.dataclass(frozen=True)
class LineGoalTask:
    """Where on the line the goal is."""

    goal: float


class LineGoalEnv(metarl.MetaEnv[LineGoalTask]):
    def _reset_state(self) -> None:
        self._position = np.zeros(1, dtype=np.float32)

    def _observe(self) -> np.ndarray:
        return self._position.copy()

    def _step_state(self, action: np.ndarray, uniforms: tuple[float, ...]) -> tuple[float, bool, dict]:
        self._position = self._position + np.clip(action, -0.2, 0.2)
        return -abs(float(self._position[0]) - self.task_params["goal"]), False, {}


class LineGoal(metarl.TaskFamily[LineGoalTask]):
    """A point on a line must find a goal it cannot see; reward is minus the distance to the goal.

    ## Task distribution
    ``goal ~ U[-1, 1]``; the split draws distinct goals.
    """

    name = "LineGoal"
    version = 0
    task_type = LineGoalTask
    env_class = LineGoalEnv  # no vector_env_class: the suite uses Gymnasium's SyncVectorEnv

    def __init__(self, horizon: int = 20) -> None:
        self.horizon = check_count("horizon", horizon)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-0.2, 0.2, (1,), np.float32)

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[LineGoalTask]:
        return [LineGoalTask(goal=float(g)) for g in rng.uniform(-1.0, 1.0, size=check_count("num_tasks", num_tasks))]

    def _check_task_values(self, task: LineGoalTask) -> None:
        check_real("task.goal", task.goal, -1.0, 1.0)


LINE_GOAL_ID = metarl.register_family(LineGoal)


def main() -> None:
    from metarl.rollout import RandomPolicy, collect_episodes

    env = gym.make(LINE_GOAL_ID)  # the single env, like any Gymnasium id
    env.reset(seed=0)
    family = metarl.make_family(LINE_GOAL_ID)
    split = family.split(seed=0, num_tasks=100)
    tasks = split.test[:4]
    envs = family.make_vec_env(len(tasks) * 2)  # no native batched env: a Gymnasium SyncVectorEnv
    batch = collect_episodes(envs, family, tasks, 2, RandomPolicy(family.action_space, seed=0), seed=0)
    print(f"{LINE_GOAL_ID}: batch {tuple(batch.rewards.shape)}, mean return {batch.returns.mean().item():.3f}")


if __name__ == "__main__":
    main()
