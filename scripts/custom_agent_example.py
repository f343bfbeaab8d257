"""Register your own meta-RL algorithm from your own module and use it like the suite's.

This file is the whole recipe: a config dataclass (the run's common fields plus the algorithm's own, each with a
docstring under it), a class with the members of :class:`metarl.MetaAgent`, and one ``register_agent`` call. The
algorithm is first-order MAML (FO-MAML) with a plain REINFORCE outer loop, written from scratch:

1. sample E episodes of every task with the meta-parameters θ;
2. adapt: one vanilla policy-gradient step per task, θ'_t = θ - α ∇L_t(θ);
3. sample E episodes of every task with its θ'_t;
4. outer step: Adam on θ with the first-order meta-gradient, the mean over tasks of ∇L_t at θ'_t.

It reuses the suite's MLP policies (which take per-task parameters) and its rollout and advantage helpers; nothing in
the suite's code changes. Try it (each command names this file with ``--import``, so that the algorithm is known):

    python -m metarl --import scripts/custom_agent_example.py algos fo-maml-reinforce
    python -m metarl --import scripts/custom_agent_example.py train --algo fo-maml-reinforce iterations=150
    python -m metarl --import scripts/custom_agent_example.py evaluate RUN_DIR
    python -m metarl --import scripts/custom_agent_example.py train --resume RUN_DIR iterations=300

References:
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017
    (first-order MAML: §5.2; reinforcement learning: Algorithm 3).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from metarl.agents.policies import batch_params, make_policy

import metarl
from metarl.advantages import average_weights, discounted_returns, fit_and_predict_linear_baseline, normalize_advantages
from metarl.config import check_at_least, check_hidden_sizes, check_positive_numbers, check_unit_interval
from metarl.distributed import Workers
from metarl.rollout import EpisodeBatch, collect_episodes

Params = dict[str, torch.Tensor]
"""Policy parameters by name; here always with a leading task dim (one set per task)."""


@dataclasses.dataclass
class FOMAMLReinforceConfig(metarl.RunConfig):
    """FO-MAML-REINFORCE's fields: the policy, the episodes, the inner step and the outer Adam step."""

    algo: str = "fo-maml-reinforce"
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the MLP policy."""
    episodes_per_task: int = 20
    """Episodes collected per task before and after each inner step."""
    inner_step_size: float = 0.1
    """α of the inner policy-gradient step θ'_t = θ - α ∇L_t(θ), in training and evaluation."""
    outer_learning_rate: float = 0.003
    """Adam's learning rate on the meta-parameters θ."""
    gamma: float = 0.99
    """Discount factor of the returns the advantages are made of."""
    eval_steps: int = 1
    """Inner steps at evaluation: validation and test report the return after 0..eval_steps steps."""

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "episodes_per_task")
        check_at_least(self, 0, "eval_steps")
        check_hidden_sizes(self)
        check_positive_numbers(self, "inner_step_size outer_learning_rate")
        check_unit_interval(self, "gamma")


class FOMAMLReinforce:
    """First-order MAML: one vanilla policy-gradient step per task inside, REINFORCE with Adam outside."""

    curve_kind: ClassVar[metarl.CurveKind] = metarl.CurveKind.STEP
    """The curve is the return after 0, 1, ... inner steps."""
    trains_across_processes: ClassVar[bool] = False
    """One process: the trainer refuses torchrun for it."""
    progress_metrics: ClassVar[tuple[str, ...]] = ("meta/return_pre_adapt", "meta/return_step")
    """The progress line shows the returns before and after the inner step."""

    def __init__(
        self, family: metarl.TaskFamily, config: FOMAMLReinforceConfig, device: torch.device, workers: Workers
    ) -> None:
        self.family = family
        self.config = config
        self.device = device
        self.policy = make_policy(family.observation_space, family.action_space, config.hidden_sizes).to(device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.outer_learning_rate)
        self._envs: dict[int, Any] = {}  # one vector env per size, built once: building is the slow part

    # -- the algorithm -----------------------------------------------------------------------------------------------
    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        """Sample with θ, adapt each task, sample with θ'_t, one Adam step on the first-order meta-gradient."""
        start = time.perf_counter()
        theta = self.meta_parameters(len(tasks))
        before = self.sample(tasks, theta, rng)
        adapted = self.adapt(theta, before)
        after = self.sample(tasks, adapted, rng)
        # θ'_t = θ - α·(a constant): the gradient of L_t(θ'_t) with respect to θ is ∇L_t at θ'_t, the first-order
        # meta-gradient, and the expand in meta_parameters sums it over tasks
        outer_loss = self.task_losses(adapted, after).mean()
        self.optimizer.zero_grad()
        outer_loss.backward()
        self.optimizer.step()
        return {
            "meta/return_pre_adapt": float(before.returns.mean()),
            "meta/return_step_1": float(after.returns.mean()),
            "losses/outer": float(outer_loss.detach()),
            "time/train_step_s": time.perf_counter() - start,
        }

    def meta_parameters(self, num_tasks: int) -> Params:
        """θ repeated for every task (views, so that gradients flow back to θ)."""
        return batch_params(dict(self.policy.named_parameters()), num_tasks)

    def sample(self, tasks: Sequence[Any], params: Params, rng: np.random.Generator) -> EpisodeBatch:
        """E episodes of every task, task t acting with its own parameters ``params[...][t]``."""
        episodes = self.config.episodes_per_task
        num_envs = len(tasks) * episodes
        if num_envs not in self._envs:
            self._envs[num_envs] = self.family.make_vec_env(num_envs, device=self.device)
        envs = self._envs[num_envs]
        seed = int(rng.integers(2**31))  # env seeds come from the trainer's generator, so that runs replay exactly
        return collect_episodes(
            envs, self.family, tasks, episodes, self.policy.act, params=params, seed=seed, device=self.device
        )

    def task_losses(self, params: Params, batch: EpisodeBatch) -> torch.Tensor:
        """Each task's REINFORCE loss ``[T]``: minus its average of log π(a | s) · advantage."""
        returns = discounted_returns(batch.rewards, batch.masks, self.config.gamma)
        # a linear baseline fitted per task lowers the variance; normalising per task lets one α suit every task
        advantages = returns - fit_and_predict_linear_baseline(batch.observations, returns, batch.masks)
        advantages = normalize_advantages(advantages, batch.masks, weighting="episode")
        weights = average_weights(batch.masks, "episode")  # the mean over episodes of each one's time-average
        log_probs = self.policy.log_prob(batch.observations, batch.actions, params)
        return -(log_probs * advantages * weights).flatten(1).sum(dim=1)

    def adapt(self, params: Params, batch: EpisodeBatch) -> Params:
        """One inner step of every task at once: θ'_t = θ_t - α ∇L_t(θ_t)."""
        # each task's loss depends on its own parameters only, so the gradient of the sum is every task's gradient
        gradients = torch.autograd.grad(self.task_losses(params, batch).sum(), list(params.values()))
        # no create_graph: the gradients are constants to the outer step, which is what makes this first order
        step = self.config.inner_step_size
        return {name: value - step * g for (name, value), g in zip(params.items(), gradients, strict=True)}

    # -- evaluation and checkpoints ----------------------------------------------------------------------------------
    def adaptation_curve(
        self, tasks: Sequence[Any], rng: np.random.Generator, num_points: int
    ) -> metarl.AdaptationCurve:
        """Each task's mean return (and success rate) before adaptation and after each of ``num_points - 1`` steps."""
        params = self.meta_parameters(len(tasks))
        returns, successes = [], []
        for point in range(num_points):
            batch = self.sample(tasks, params, rng)
            returns.append(batch.returns.mean(dim=1))
            if batch.successes is not None:  # only families that define success report it
                successes.append(batch.successes.mean(dim=1))
            if point < num_points - 1:
                params = self.adapt(params, batch)
        return metarl.AdaptationCurve.from_tensors(returns, successes or None)

    def default_num_points(self) -> int:
        return self.config.eval_steps + 1

    def selection_score(self, curve: Sequence[float]) -> float:
        """Validation keeps the parameters with the best return after one step, the step training optimises."""
        return curve[min(1, len(curve) - 1)]

    def state_dict(self) -> dict[str, Any]:
        # Adam's moments change in training too: without them a resumed run would not replay the uninterrupted one
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])


ALGO = metarl.register_agent("fo-maml-reinforce", FOMAMLReinforce, FOMAMLReinforceConfig)
