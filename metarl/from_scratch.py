"""The from-scratch baseline: Stable-Baselines3's PPO learning each held-out task alone, and how many env steps it
needs to match what a meta-learner reaches after one adaptation step (the sample-efficiency case for meta-learning).

For each test task: PPO starts from a fresh policy on that task alone; every ``check_every`` env steps its policy
(actions sampled, as MAML's adapted policy) plays ``episodes`` fresh episodes, and the first check whose mean return
reaches the meta-learner's one-step return *on the same task* gives the steps needed. The ratio divides them by the
env steps the meta-learner's adaptation used (one inner step: ``episodes_per_task`` episodes of at most ``horizon``
steps).

References:
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Raffin et al. "Stable-Baselines3: Reliable Reinforcement Learning Implementations", JMLR 2021.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from metarl.rollout import collect_episodes
from metarl.sb3 import minibatch_size
from metarl.tasks import TaskFamily, check_count


@dataclasses.dataclass(frozen=True)
class ScratchResult:
    """PPO from scratch on one task."""

    task_index: int
    """The task's position in the split."""
    target_return: float
    """The meta-learner's return on this task after one adaptation step."""
    steps_to_target: int | None
    """Env steps PPO trained before a check reached the target; ``None`` if it did not within the budget."""
    curve: list[tuple[int, float]]
    """``(env steps trained, mean return)`` at every check."""
    seconds: float


def ppo_steps_to_reach(
    family: TaskFamily,
    task: Any,
    target_return: float,
    *,
    max_steps: int,
    check_every: int,
    episodes: int,
    seed: int,
    hidden_sizes: tuple[int, ...] = (64, 64),
    num_envs: int = 8,
    task_index: int = -1,
) -> ScratchResult:
    """Train SB3's PPO (its default settings, ``num_envs`` copies of the task) on ``task`` until the policy's mean
    return over ``episodes`` fresh episodes reaches ``target_return``, checking every ``check_every`` env steps,
    for at most ``max_steps``."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    check_count("max_steps", max_steps)
    check_count("check_every", check_every)
    check_count("episodes", episodes)
    started = time.perf_counter()
    train_envs = DummyVecEnv([lambda: family.make_env(task)] * num_envs)
    n_steps = max(1, check_every // num_envs)
    model = PPO(
        "MlpPolicy",
        train_envs,
        n_steps=n_steps,
        batch_size=minibatch_size(n_steps * num_envs, 8),
        policy_kwargs={"net_arch": list(hidden_sizes)},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    eval_envs = family.make_vec_env(episodes)
    rng = np.random.default_rng(seed)

    @torch.no_grad()
    def act(observations: torch.Tensor, params: Any) -> torch.Tensor:
        inputs = observations.flatten(0, 1).flatten(1).float()
        actions = model.policy.get_distribution(inputs).get_actions(deterministic=False)
        return actions.reshape(*observations.shape[:2], *family.action_space.shape)

    curve: list[tuple[int, float]] = []
    steps_to_target = None
    while model.num_timesteps < max_steps:
        model.learn(total_timesteps=n_steps * num_envs, reset_num_timesteps=False)
        batch = collect_episodes(eval_envs, family, [task], episodes, act, seed=int(rng.integers(2**31)))
        mean_return = float(batch.returns.mean())
        curve.append((int(model.num_timesteps), mean_return))
        if mean_return >= target_return:
            steps_to_target = int(model.num_timesteps)
            break
    train_envs.close()
    return ScratchResult(task_index, target_return, steps_to_target, curve, time.perf_counter() - started)


def adaptation_env_steps(episodes_per_task: int, horizon: int, num_steps: int = 1) -> int:
    """The env steps a MAML adaptation of ``num_steps`` gradient steps uses (at most: episodes may end early)."""
    return episodes_per_task * horizon * num_steps


def summarize(results: list[ScratchResult], adaptation_steps: int, max_steps: int) -> dict[str, Any]:
    """The median over tasks of the steps to the target, and its ratio to the adaptation's steps.

    A task that did not reach the target within ``max_steps`` counts as ``max_steps``: the median (and the ratio)
    is then a lower bound, flagged as such.
    """
    steps = [max_steps if result.steps_to_target is None else result.steps_to_target for result in results]
    reached = sum(result.steps_to_target is not None for result in results)
    median = float(np.median(steps))
    return {
        "tasks": len(results),
        "reached": reached,
        "max_steps": max_steps,
        "ratio_is_lower_bound": reached < len(results),
        "median_steps_to_target": median,
        "adaptation_env_steps": adaptation_steps,
        "ratio": median / adaptation_steps,
        "per_task": [dataclasses.asdict(result) for result in results],
    }
