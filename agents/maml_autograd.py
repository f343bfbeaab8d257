"""MAML-TRPO written plainly: task by task, every derivative by autograd.

This is pytorch-maml-rl's shape of the algorithm (one task at a time, its padded episodes averaged with their
lengths as ``weighted_mean`` does, the KL's Hessian by double backward through the graph of the adaptation)
re-derived from the papers, without any of :mod:`metarl.agents.maml_trpo`'s batching over tasks, written-out curvature
or reuse
of passes. It is slow (a Python loop over tasks, third-order graphs) and exists to check the fast implementation
against: the tests compare one whole meta-update on batches with early-terminated episodes, and
``scripts/maml_long_run.py`` trains with it (``--autograd``) for hundreds of iterations, so that a fault of the fast
implementation cannot pass for a property of MAML-TRPO.

Where this differs from pytorch-maml-rl, on purpose (so that it computes what :class:`metarl.agents.maml_trpo.MAMLTRPO`
does): the KL is KL(old ‖ new) as in rllab (pytorch-maml-rl takes KL(new ‖ old); the two agree to second order, so the
curvature is the same and only the line search's KL differs, at third order), and the averages follow
``config.weighting`` (pytorch-maml-rl always weights episodes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from metarl.agents.inner_loop import MetaBatch
from metarl.agents.maml_trpo import MAMLTRPO

from metarl.optim import flatten_tensors, unflatten_like
from metarl.rollout import EpisodeBatch

Params = dict[str, torch.Tensor]


class TaskEpisodes(NamedTuple):
    """One task's episodes, ``[E, H, ...]`` padded after each episode's end, with normalised advantages."""

    observations: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor
    masks: torch.Tensor


def weighted_mean(values: torch.Tensor, masks: torch.Tensor, weighting: str) -> torch.Tensor:
    """The average of one task's ``[E, H]`` ``values`` over its real steps: ``episode``, the mean of the episodes'
    time-averages (pytorch-maml-rl's ``weighted_mean``, then ``.mean()``); ``step``, the mean over all real steps
    (rllab's flattened samples)."""
    masked = values * masks
    if weighting == "episode":
        return (masked.sum(dim=1) / masks.sum(dim=1)).mean()
    if weighting == "step":
        return masked.sum() / masks.sum()
    raise ValueError(f"unknown weighting {weighting!r}; allowed: episode, step")


def task_advantages(batch: EpisodeBatch, task: int, gamma: float, gae_lambda: float, weighting: str) -> TaskEpisodes:
    """Task ``task``'s episodes with their advantages: a linear feature baseline fitted by ridge regression on the
    task's real steps, GAE over it (nothing bootstrapped after an episode's last step), then standardised with the
    weighting's mean and (population) variance, as pytorch-maml-rl's ``weighted_normalize``."""
    masks = batch.masks[task]
    rewards = batch.rewards[task] * masks
    horizon = masks.shape[1]

    def discounted(values: torch.Tensor, discount: float) -> torch.Tensor:
        """Backwards over time within each episode; the padding after an episode adds nothing."""
        out, running = [], torch.zeros_like(values[:, 0])
        for h in reversed(range(horizon)):
            running = (values[:, h] + discount * running) * masks[:, h]
            out.append(running)
        return torch.stack(out[::-1], dim=1)

    returns = discounted(rewards, gamma)
    observations = batch.observations[task].reshape(*masks.shape, -1).double()
    time_feature = (torch.arange(horizon, dtype=torch.float64) / 100.0).expand(masks.shape).unsqueeze(-1)
    features = torch.cat(
        [observations, observations**2, time_feature, time_feature**2, time_feature**3, torch.ones_like(time_feature)],
        dim=-1,
    )
    real = masks.reshape(-1) != 0
    design, targets = features.reshape(-1, features.shape[-1])[real], returns.reshape(-1)[real].double()
    gram = design.T @ design + 1e-5 * torch.eye(design.shape[1], dtype=torch.float64)
    values = (features @ torch.linalg.solve(gram, design.T @ targets)).to(rewards.dtype) * masks
    next_values = torch.cat([values[:, 1:], values.new_zeros(values.shape[0], 1)], dim=1)  # 0 after the last step
    advantages = discounted(rewards + gamma * next_values - values, gamma * gae_lambda)

    mean = weighted_mean(advantages, masks, weighting)
    centered = (advantages - mean) * masks
    std = weighted_mean(centered**2, masks, weighting).sqrt()
    return TaskEpisodes(batch.observations[task], batch.actions[task], centered / (std + 1e-8), masks)


def inner_loss(agent: MAMLTRPO, params: Params, episodes: TaskEpisodes, weighting: str) -> torch.Tensor:
    """REINFORCE: minus the average of log π(a | s) · A over the task's steps."""
    log_probs = agent.policy.log_prob(episodes.observations, episodes.actions, params)
    return -weighted_mean(log_probs * episodes.advantages, episodes.masks, weighting)


def adapt(agent: MAMLTRPO, params: Params, inner: Sequence[TaskEpisodes], create_graph: bool) -> Params:
    """One task's adapted parameters after a vanilla-policy-gradient step per entry of ``inner``."""
    weighting = agent.config.weighting
    for step_size, episodes in zip(agent.step_sizes(len(inner)), inner, strict=True):
        grads = torch.autograd.grad(
            inner_loss(agent, params, episodes, weighting), list(params.values()), create_graph=create_graph
        )
        params = {name: value - step_size * grad for (name, value), grad in zip(params.items(), grads, strict=True)}
    return params


class TRPOProblem(NamedTuple):
    """What one MAML-TRPO step solves at the agent's current meta-parameters (:func:`trpo_problem`)."""

    loss: torch.Tensor
    """The surrogate loss (the mean over tasks)."""
    gradient: torch.Tensor
    """Its gradient in the meta-parameters, flat."""
    hessian_vector_product: Callable[[torch.Tensor], torch.Tensor]
    """v ↦ (H + damping) v, H the Hessian of the mean KL of the adapted policies, by double backward."""
    surrogate_and_kl: Callable[[Params, bool], tuple[torch.Tensor, torch.Tensor]]
    """The surrogate and the mean KL(old ‖ new) at meta-parameters ``params`` (``create_graph``: keep the graph of
    the inner steps)."""
    pre_adaptation_kl: Callable[[], torch.Tensor]
    """The mean KL(old ‖ new) of the pre-adaptation policies, the new one at the policy's parameters now."""


def trpo_problem(agent: MAMLTRPO, episodes: Sequence[EpisodeBatch]) -> TRPOProblem:
    """The surrogate, its gradient and the KL's curvature of one MAML-TRPO step of ``agent.policy``, from the episodes
    collected before each inner step and after the last (``episodes[-1]``), everything by autograd."""
    config = agent.config
    weighting, num_tasks = config.weighting, episodes[0].observations.shape[0]
    per_task = [
        [task_advantages(batch, t, config.gamma, config.gae_lambda, weighting) for batch in episodes]
        for t in range(num_tasks)
    ]
    theta = dict(agent.policy.named_parameters())
    with torch.no_grad():  # the pre-adaptation policy before the update, for the logged drift
        old_pre = [agent.policy.distribution(task_episodes[0].observations, theta) for task_episodes in per_task]
    # the old policy: every task's adapted policy at the current meta-parameters
    old_distributions = []
    for task_episodes in per_task:
        adapted = adapt(agent, theta, task_episodes[:-1], create_graph=False)
        old = agent.policy.distribution(task_episodes[-1].observations, {k: v.detach() for k, v in adapted.items()})
        old_distributions.append(old)

    def surrogate_and_kl(params: Params, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean over tasks of the surrogate -E[π/π_old · A] and of KL(old ‖ new), at the adapted ``params``."""
        losses, kls = [], []
        for task_episodes, old in zip(per_task, old_distributions, strict=True):
            adapted = adapt(agent, params, task_episodes[:-1], create_graph=create_graph)
            post = task_episodes[-1]
            new = agent.policy.distribution(post.observations, adapted)
            ratio = torch.exp(new.log_prob(post.actions) - old.log_prob(post.actions))
            losses.append(-weighted_mean(ratio * post.advantages, post.masks, weighting))
            kls.append(weighted_mean(torch.distributions.kl_divergence(old, new), post.masks, weighting))
        return torch.stack(losses).mean(), torch.stack(kls).mean()

    loss, kl = surrogate_and_kl(theta, create_graph=True)
    gradient = flatten_tensors(torch.autograd.grad(loss, list(theta.values()), retain_graph=True))
    # the KL's Hessian by double backward through the adaptation's graph, built once
    kl_gradient = flatten_tensors(torch.autograd.grad(kl, list(theta.values()), create_graph=True))

    def hessian_vector_product(vector: torch.Tensor) -> torch.Tensor:
        product = torch.autograd.grad(kl_gradient @ vector, list(theta.values()), retain_graph=True)
        return flatten_tensors(product) + config.cg_damping * vector

    def pre_adaptation_kl() -> torch.Tensor:
        with torch.no_grad():
            kls = [
                weighted_mean(
                    torch.distributions.kl_divergence(
                        old, agent.policy.distribution(task_episodes[0].observations, theta)
                    ),
                    task_episodes[0].masks,
                    weighting,
                )
                for old, task_episodes in zip(old_pre, per_task, strict=True)
            ]
        return torch.stack(kls).mean()

    return TRPOProblem(loss, gradient, hessian_vector_product, surrogate_and_kl, pre_adaptation_kl)


def meta_update(agent: MAMLTRPO, episodes: Sequence[EpisodeBatch]) -> dict[str, float]:
    """One MAML-TRPO meta-update of ``agent.policy`` in place (:func:`trpo_problem`, conjugate gradient, a line search
    that re-adapts at every candidate). Returns what :meth:`MAMLTRPO.meta_update` logs."""
    config = agent.config
    start = time.perf_counter()
    problem = trpo_problem(agent, episodes)
    theta = dict(agent.policy.named_parameters())
    direction = conjugate_gradient(problem.hessian_vector_product, problem.gradient, config.cg_iterations)
    step = direction * math.sqrt(2.0 * config.max_kl / float(direction @ problem.hessian_vector_product(direction)))
    old_parameters = flatten_tensors([value.detach() for value in theta.values()])
    old_loss = problem.loss.item()
    accepted, fraction, new_loss, new_kl = False, 0.0, old_loss, 0.0
    for i in range(config.line_search_max_steps):
        candidate = old_parameters - config.line_search_backtrack_ratio**i * step
        # the candidate adapts by autograd too, so no torch.no_grad() here
        candidate_params = {
            name: value.clone().requires_grad_() for name, value in unflatten_like(candidate, theta).items()
        }
        candidate_loss, candidate_kl = problem.surrogate_and_kl(candidate_params, False)
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
        "losses/pre_adaptation_kl": problem.pre_adaptation_kl().item(),
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


class AutogradMAML(MAMLTRPO):
    """:class:`metarl.agents.maml_trpo.MAMLTRPO` whose TRPO meta-update is :func:`meta_update` (sampling, adaptation at
    sampling time and evaluation are the batched agent's own)."""

    def meta_update(self, batch: MetaBatch) -> dict[str, float]:
        if self.config.first_order or batch.shard.total != batch.shard.size:
            raise ValueError("the autograd MAML implements second-order maml-trpo on one process")
        return meta_update(self, batch.episodes)
