"""MAML-TRPO written plainly: task by task, episode by episode, every derivative by autograd.

This is pytorch-maml-rl's shape of the algorithm (one task at a time, episodes of their own lengths averaged as
``weighted_mean`` does, the KL's Hessian by double backward through the graph of the adaptation) re-derived from the
papers, without any of :mod:`agents.maml`'s batching, written-out curvature or reuse of passes. It is slow (a Python
loop over tasks and episodes, third-order graphs) and exists to check the fast implementation against: the tests
compare one whole meta-update on batches with early-terminated episodes, and ``scripts/maml_long_run.py
--autograd`` trains with it for hundreds of iterations, so that a fault of the fast implementation cannot pass for
a property of MAML-TRPO.

Where this differs from pytorch-maml-rl, on purpose (so that it computes what :class:`agents.maml.MAML` does):
the KL is KL(old ‖ new) as in rllab (pytorch-maml-rl takes KL(new ‖ old); the two agree to second order, so the
curvature is the same and only the line search's KL differs, at third order), and the averages follow
``config.weighting`` (pytorch-maml-rl always weights episodes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from agents.maml import MAML, MetaBatch, _detach_distribution
from metarl.optim import flatten_tensors, unflatten_like
from metarl.rollout import EpisodeBatch

Params = dict[str, torch.Tensor]


class TaskEpisodes:
    """One task's episodes as a list of real-length tensors (no padding), with normalised advantages."""

    def __init__(
        self, observations: list[torch.Tensor], actions: list[torch.Tensor], advantages: list[torch.Tensor]
    ) -> None:
        self.observations = observations
        self.actions = actions
        self.advantages = advantages


def average(values: Sequence[torch.Tensor], weighting: str) -> torch.Tensor:
    """The average over a task's episodes (a list of per-step tensors, one per episode, each of its own length):
    ``episode``, the mean of the episodes' time-averages (pytorch-maml-rl's ``weighted_mean``); ``step``, the mean
    over all their steps together (rllab's flattened samples)."""
    if weighting == "episode":
        return torch.stack([episode.mean() for episode in values]).mean()
    if weighting == "step":
        return torch.cat(list(values)).mean()
    raise ValueError(f"unknown weighting {weighting!r}; allowed: episode, step")


def task_advantages(batch: EpisodeBatch, task: int, gamma: float, gae_lambda: float, weighting: str) -> TaskEpisodes:
    """Task ``task``'s episodes with their advantages: a linear feature baseline fitted by ridge regression on the
    task's real steps, GAE over it (nothing bootstrapped after an episode's last step), then standardised with the
    weighting's mean and (population) variance, as pytorch-maml-rl's ``weighted_normalize``."""
    lengths = [int(length) for length in batch.masks[task].sum(dim=-1)]
    observations = [batch.observations[task, e, :length] for e, length in enumerate(lengths)]
    actions = [batch.actions[task, e, :length] for e, length in enumerate(lengths)]
    rewards = [batch.rewards[task, e, :length] for e, length in enumerate(lengths)]

    def discounted(values: torch.Tensor, discount: float) -> torch.Tensor:
        out, running = [], torch.zeros((), dtype=values.dtype)
        for value in reversed(values):
            running = value + discount * running
            out.append(running)
        return torch.stack(out[::-1])

    returns = [discounted(episode, gamma) for episode in rewards]

    def features(episode_observations: torch.Tensor) -> torch.Tensor:
        time_feature = torch.arange(len(episode_observations), dtype=torch.float64).unsqueeze(-1) / 100.0
        obs = episode_observations.reshape(len(episode_observations), -1).double()
        return torch.cat(
            [obs, obs**2, time_feature, time_feature**2, time_feature**3, torch.ones_like(time_feature)], 1
        )

    design = torch.cat([features(episode) for episode in observations])
    targets = torch.cat(returns).double()
    gram = design.T @ design + 1e-5 * torch.eye(design.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, design.T @ targets)

    raw = []
    for episode_observations, episode_rewards in zip(observations, rewards, strict=True):
        values = (features(episode_observations) @ weights).to(episode_rewards.dtype)
        next_values = torch.cat([values[1:], values.new_zeros(1)])  # 0 after the last step
        deltas = episode_rewards + gamma * next_values - values
        raw.append(discounted(deltas, gamma * gae_lambda))
    mean = average(raw, weighting)
    std = average([(episode - mean) ** 2 for episode in raw], weighting).sqrt()
    return TaskEpisodes(observations, actions, [(episode - mean) / (std + 1e-8) for episode in raw])


def inner_loss(agent: MAML, params: Params, episodes: TaskEpisodes, weighting: str) -> torch.Tensor:
    """REINFORCE: minus the average of log π(a | s) · A over the task's steps."""
    terms = [
        agent.policy.log_prob(observations, actions, params) * advantages
        for observations, actions, advantages in zip(
            episodes.observations, episodes.actions, episodes.advantages, strict=True
        )
    ]
    return -average(terms, weighting)


def adapt(agent: MAML, params: Params, inner: Sequence[TaskEpisodes], create_graph: bool) -> Params:
    """One task's adapted parameters after a vanilla-policy-gradient step per entry of ``inner``."""
    weighting = agent.config.weighting
    for step_size, episodes in zip(agent.step_sizes(len(inner)), inner, strict=True):
        grads = torch.autograd.grad(
            inner_loss(agent, params, episodes, weighting), list(params.values()), create_graph=create_graph
        )
        params = {name: value - step_size * grad for (name, value), grad in zip(params.items(), grads, strict=True)}
    return params


def meta_update(agent: MAML, episodes: Sequence[EpisodeBatch]) -> dict[str, float]:
    """One MAML-TRPO meta-update of ``agent.policy`` in place, from the episodes collected before each inner step and
    after the last (``episodes[-1]``), everything by autograd. Returns what :meth:`MAML.meta_update` logs."""
    config = agent.config
    weighting, num_tasks = config.weighting, episodes[0].observations.shape[0]
    per_task = [
        [task_advantages(batch, t, config.gamma, config.gae_lambda, weighting) for batch in episodes]
        for t in range(num_tasks)
    ]
    theta = dict(agent.policy.named_parameters())

    old_distributions = []
    for task_episodes in per_task:
        adapted = adapt(agent, theta, task_episodes[:-1], create_graph=False)
        post = task_episodes[-1]
        old_distributions.append(
            [agent.policy.distribution(obs, {k: v.detach() for k, v in adapted.items()}) for obs in post.observations]
        )

    def surrogate_and_kl(params: Params, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean over tasks of the surrogate -E[π/π_old · A] and of KL(old ‖ new), at the adapted ``params``."""
        losses, kls = [], []
        for task_episodes, olds in zip(per_task, old_distributions, strict=True):
            adapted = adapt(agent, params, task_episodes[:-1], create_graph=create_graph)
            post = task_episodes[-1]
            ratios, kl_terms = [], []
            for observations, actions, advantages, old in zip(
                post.observations, post.actions, post.advantages, olds, strict=True
            ):
                new = agent.policy.distribution(observations, adapted)
                ratios.append(torch.exp(new.log_prob(actions) - old.log_prob(actions).detach()) * advantages)
                kl_terms.append(torch.distributions.kl_divergence(_detach_distribution(old), new))
            losses.append(-average(ratios, weighting))
            kls.append(average(kl_terms, weighting))
        return torch.stack(losses).mean(), torch.stack(kls).mean()

    start = time.perf_counter()
    loss, _ = surrogate_and_kl(theta, create_graph=True)
    gradient = flatten_tensors(torch.autograd.grad(loss, list(theta.values())))

    def hessian_vector_product(vector: torch.Tensor) -> torch.Tensor:
        _, kl = surrogate_and_kl(theta, create_graph=True)
        kl_gradient = flatten_tensors(torch.autograd.grad(kl, list(theta.values()), create_graph=True))
        product = flatten_tensors(torch.autograd.grad(kl_gradient @ vector, list(theta.values())))
        return product + config.cg_damping * vector

    direction = conjugate_gradient(hessian_vector_product, gradient, config.cg_iterations)
    step = direction * math.sqrt(2.0 * config.max_kl / float(direction @ hessian_vector_product(direction)))
    old_parameters = flatten_tensors([value.detach() for value in theta.values()])
    old_loss = loss.item()
    accepted, fraction, new_loss, new_kl = False, 0.0, old_loss, 0.0
    for i in range(config.line_search_max_steps):
        candidate = old_parameters - config.line_search_backtrack_ratio**i * step
        # the candidate adapts by autograd too, so no torch.no_grad() here
        candidate_params = {
            name: value.clone().requires_grad_() for name, value in unflatten_like(candidate, theta).items()
        }
        candidate_loss, candidate_kl = surrogate_and_kl(candidate_params, create_graph=False)
        if candidate_loss.item() < old_loss and candidate_kl.item() <= config.max_kl:
            accepted, fraction = True, config.line_search_backtrack_ratio**i
            new_loss, new_kl = candidate_loss.item(), candidate_kl.item()
            with torch.no_grad():
                for parameter, value in zip(theta.values(), unflatten_like(candidate, theta).values(), strict=True):
                    parameter.copy_(value)
            break
    return {
        "losses/surrogate_before": old_loss,
        "losses/surrogate_after": new_loss,
        "losses/kl": new_kl,
        "losses/line_search_accepted": float(accepted),
        "losses/step_fraction": fraction,
        "time/outer_update_s": time.perf_counter() - start,
    }


def conjugate_gradient(product: Any, b: torch.Tensor, iterations: int) -> torch.Tensor:
    """``iterations`` steps of conjugate gradient on ``A x = b`` from ``x = 0`` (A given by ``product``)."""
    x = torch.zeros_like(b)
    residual, direction = b.clone(), b.clone()
    residual_norm = residual @ residual
    for _ in range(iterations):
        a_direction = product(direction)
        alpha = residual_norm / (direction @ a_direction)
        x = x + alpha * direction
        residual = residual - alpha * a_direction
        new_norm = residual @ residual
        if new_norm < 1e-10:
            break
        direction = residual + (new_norm / residual_norm) * direction
        residual_norm = new_norm
    return x


class AutogradMAML(MAML):
    """:class:`agents.maml.MAML` whose TRPO meta-update is :func:`meta_update` (sampling, adaptation at sampling time
    and evaluation are MAML's own)."""

    def meta_update(self, batch: MetaBatch) -> dict[str, float]:
        config = self.config
        if config.algo != "maml-trpo" or config.first_order or config.meta_sgd or batch.shard.total != batch.shard.size:
            raise ValueError("the autograd MAML implements second-order maml-trpo without Meta-SGD on one process")
        return meta_update(self, batch.episodes)
