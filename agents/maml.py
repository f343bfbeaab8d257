"""MAML-RL: policy-gradient inner loop, TRPO or PPO outer loop, batched over the tasks of a meta-batch.

One meta-iteration, as in the paper's Algorithm 3:

1. collect E episodes of every task with the meta-parameters θ (pre-adaptation);
2. adapt: K steps of vanilla policy gradient per task, θ'_t = θ - α_k ∇ L_inner(θ; D_t), collecting new episodes
   with the adapted parameters after each step;
3. meta-update θ with TRPO on the post-adaptation surrogate, differentiating through the inner steps
   (second order) or not (first order).

All tasks adapt at once: the meta-parameters are expanded to a leading task dimension and one batched autograd graph
computes every task's inner gradient (``batch_params``); ``adapt_per_task`` is the per-task loop kept as the
reference the tests compare against.

TRPO never builds a graph through the inner loop. The adaptation θ'_K = θ'_{K-1} - α_K ∇L_K(θ'_{K-1}) has the
Jacobian J = ∂θ'/∂θ = (I - α_K H_K) ⋯ (I - α_1 H_1), H_k the inner loss's Hessian at step k's parameters, so the
meta-gradient is Jᵀ g (g the surrogate's gradient at the adapted parameters) and the curvature TRPO needs, the
Hessian of the mean KL between the old and the new *adapted* policies, equals Jᵀ F J at the current point (F the
Fisher matrix at the adapted parameters: the KL's gradient vanishes there, so no third derivatives appear). Every
product with H_k and F is the policy's written-out R-operator (``log_likelihood_hessian_product``,
``fisher_product``; :mod:`agents.curvature`): a tangent forward and a tangent backward pass through the MLP, about
twice as fast as autograd's double backward. PPO differentiates through the inner loop with autograd
(``adapt(create_graph=True)``).

References:
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Schulman et al. "Trust Region Policy Optimization", ICML 2015.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from agents.policies import GaussianMLPPolicy, batch_params, make_policy
from metarl.advantages import (
    average_weights,
    discounted_returns,
    fit_and_predict_linear_baseline,
    gae,
    normalize_advantages,
)
from metarl.distributed import TaskShard, Workers
from metarl.evaluate import AdaptationCurve
from metarl.optim import flatten_tensors, trpo_step, unflatten_like
from metarl.rollout import EpisodeBatch, collect_episodes
from metarl.tasks import TaskFamily

Params = dict[str, torch.Tensor]
HessianProduct = Callable[[Params], Params]
"""``v ↦ H v`` for per-task vectors (dicts with a leading task dim)."""


class PolicyGradientData(NamedTuple):
    """What a policy-gradient loss needs from an episode batch; tensors ``[T, E, H, ...]``."""

    observations: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor
    """Normalised per task, 0 on padded steps."""
    masks: torch.Tensor
    weights: torch.Tensor
    """Each step's weight in its task's average (``config.weighting``, :func:`metarl.advantages.average_weights`):
    every loss, KL and curvature product below is a weighted sum with these."""


class MetaBatch(NamedTuple):
    """The episodes of one meta-iteration: ``inner[k]`` was collected before adaptation step k, ``post`` after
    the last step."""

    inner: list[PolicyGradientData]
    post: PolicyGradientData
    returns: list[float]
    """Mean episode return before adaptation and after each step (``K + 1`` numbers)."""
    task_returns: list[torch.Tensor]
    """The same per task: ``K + 1`` tensors ``[T]``, each task's mean episode return."""
    task_successes: list[torch.Tensor] | None
    """Each task's share of successful episodes at each of the ``K + 1`` points (``None``: the family defines no
    success)."""
    adapted: Params | None
    """Each task's parameters after the last step (leading task dim), as used to collect ``post``."""
    shard: TaskShard
    """Which block of the meta-batch this process holds: the tensors above are those tasks' (all of them with one
    process); the losses average over ``shard.total`` tasks."""
    episodes: list[EpisodeBatch]
    """The episodes as collected, before each inner step and after the last (``K + 1`` batches)."""


class MetaGradient(NamedTuple):
    """TRPO's surrogate at the current meta-parameters (:meth:`MAML.meta_gradient`), this process's share."""

    loss: torch.Tensor
    gradient: torch.Tensor
    """Flat, in the order of the policy's parameters."""
    points: list[Params]
    """Every task's parameters before each inner step and after the last (:meth:`MAML.adaptation_points`)."""
    inner_hessians: list[tuple[float, HessianProduct]]
    """Each inner step's size and inner-loss Hessian product (none in first order)."""
    old_log_probs: torch.Tensor
    old_distribution: Any
    """The post-adaptation policy the surrogate's ratio and KL are taken against."""


class MAML:
    """MAML with a vanilla-policy-gradient inner loop and a TRPO (``maml-trpo``) or PPO (``maml-ppo``) outer loop.

    Options: ``first_order`` (FO-MAML), ``meta_sgd`` (learned per-parameter inner step sizes, PPO outer loop),
    ``ppo_kl_coeff`` (ProMP's KL penalty on the pre-adaptation policy), ``curvature_fraction`` (TRPO's curvature on
    a share of the episodes: the fast mode).

    References:
        Finn et al. 2017 (MAML); Li et al. "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017;
        Rothfuss et al. "ProMP: Proximal Meta-Policy Search", ICLR 2019.

    Args:
        family: the task family to meta-train on.
        config: a :class:`metarl.config.TrainConfig` (the MAML fields are read).
        device: where the policy, the inner loops, the updates and the native envs live.
        workers: the processes meta-training together (:mod:`metarl.distributed`); one by default.
    """

    curve_label = "step"
    """Evaluation curves are the mean return after 0, 1, ..., K adaptation steps."""

    def __init__(self, family: TaskFamily, config: Any, device: torch.device, workers: Workers | None = None) -> None:
        self.family = family
        self.config = config
        self.device = device
        self.workers = workers or Workers()
        self.policy = make_policy(
            family.observation_space, family.action_space, config.hidden_sizes, config.activation, config.min_log_std
        ).to(device)
        self.learned_step_sizes: torch.nn.ParameterDict | None = None
        if config.meta_sgd:
            # Meta-SGD: one learned inner step size per parameter entry, starting at the configured α
            self.learned_step_sizes = torch.nn.ParameterDict(
                {
                    name.replace(".", "__"): torch.nn.Parameter(torch.full_like(value, config.inner_step_sizes[0]))
                    for name, value in self.policy.named_parameters()
                }
            ).to(device)
        self.optimizer: torch.optim.Optimizer | None = None
        if config.algo == "maml-ppo":
            self.optimizer = torch.optim.Adam(self.optimizer_parameters(), lr=config.ppo_learning_rate)
        self._envs: dict[int, Any] = {}

    # -- data ------------------------------------------------------------------------------------------------------
    def envs(self, num_envs: int) -> Any:
        """A vector env with ``num_envs`` sub-envs, built once per size and reused."""
        if num_envs not in self._envs:
            self._envs[num_envs] = self.family.make_vec_env(num_envs, device=self.device)
        return self._envs[num_envs]

    def collect(
        self, tasks: Sequence[Any], params: Params | None, seed: int, shard: TaskShard | None = None
    ) -> EpisodeBatch:
        """Episodes of every task with the meta-parameters (``params=None``) or per-task ``params``.

        With a ``shard``, ``tasks`` are that block of a meta-batch: sub-envs are seeded by their position in the
        whole batch and the action noise is the whole batch's (:mod:`metarl.distributed`).
        """
        episodes = self.config.episodes_per_task
        envs = self.envs(len(tasks) * episodes)
        detached = None if params is None else {name: value.detach() for name, value in params.items()}
        act = self.policy.act if shard is None else functools.partial(self.policy.act, shard=shard)
        first_env = 0 if shard is None else shard.start * episodes
        # the batch on the policy's device, also when the env is a host-side one (the MuJoCo families')
        return collect_episodes(
            envs, self.family, tasks, episodes, act, params=detached, seed=seed + first_env, device=self.device
        )

    def process(self, batch: EpisodeBatch) -> PolicyGradientData:
        """Advantages for the policy gradient: GAE over the linear feature baseline fitted per task."""
        returns = discounted_returns(batch.rewards, batch.masks, self.config.gamma)
        values = fit_and_predict_linear_baseline(batch.observations, returns, batch.masks)
        advantages = gae(
            batch.rewards, values, batch.masks, self.config.gamma, self.config.gae_lambda, terminated=batch.terminated
        )
        advantages = normalize_advantages(advantages, batch.masks, weighting=self.config.weighting)
        weights = average_weights(batch.masks, self.config.weighting)
        return PolicyGradientData(batch.observations, batch.actions, advantages, batch.masks, weights)

    # -- inner loop ------------------------------------------------------------------------------------------------
    def inner_losses(self, params: Params, data: PolicyGradientData) -> torch.Tensor:
        """REINFORCE loss of every task with its own parameters (leading task dim), shape ``[T]``."""
        log_probs = self.policy.log_prob(data.observations, data.actions, params)
        return -_average_per_task(log_probs * data.advantages, data.weights)

    def _inner_update(self, params: Params, grads: Sequence[torch.Tensor], step_size: float) -> Params:
        """θ - α g for every parameter: α the configured step size, or Meta-SGD's learned per-entry one."""
        if self.learned_step_sizes is None:
            return {name: value - step_size * g for (name, value), g in zip(params.items(), grads, strict=True)}
        return {
            name: value - self.learned_step_sizes[name.replace(".", "__")] * g
            for (name, value), g in zip(params.items(), grads, strict=True)
        }

    def step_sizes(self, num_steps: int, evaluation: bool = False) -> list[float]:
        sizes = list(self.config.eval_step_sizes if evaluation else self.config.inner_step_sizes)
        return [sizes[min(k, len(sizes) - 1)] for k in range(num_steps)]

    def adapt(
        self, params: Params, inner: Sequence[PolicyGradientData], create_graph: bool, num_tasks: int | None = None
    ) -> Params:
        """Adapted parameters of every task (leading task dim) after one step per entry of ``inner``.

        ``create_graph`` keeps the graph of the inner gradients, so that the result can be differentiated through
        them (second-order MAML); without it the inner gradients are constants (first order). ``num_tasks`` is
        needed only when ``inner`` is empty (no step: the parameters repeated per task).
        """
        # with no steps (the pretraining baseline's objective) the task count comes from the caller
        adapted = batch_params(params, inner[0].observations.shape[0] if inner else num_tasks)
        for step_size, data in zip(self.step_sizes(len(inner)), inner, strict=True):
            loss = self.inner_losses(adapted, data).sum()  # tasks are independent: the sum's gradient is per task
            grads = torch.autograd.grad(loss, list(adapted.values()), create_graph=create_graph)
            adapted = self._inner_update(adapted, grads, step_size)
        return adapted

    def _adaptation_step(
        self, current: Params, data: PolicyGradientData, step_size: float
    ) -> tuple[Params, HessianProduct]:
        """One inner step of every task from ``current`` (leading task dim), cut from the graph, and the product
        with the inner loss's Hessian at ``current``, which reuses the passes of the step's gradient."""
        gradient, hessian_product = self._inner_derivatives(_detach(current), data)
        with torch.no_grad():
            return self._inner_update(_detach(current), list(gradient.values()), step_size), hessian_product

    def adaptation_points(self, params: Params, inner: Sequence[PolicyGradientData], num_tasks: int) -> list[Params]:
        """Every task's parameters before each inner step and after the last (``len(inner) + 1`` dicts with a
        leading task dim, no graph), as TRPO's line search re-adapts at each candidate."""
        return self._adapt_detached(params, inner, num_tasks)[0]

    def _adapt_detached(
        self, params: Params, inner: Sequence[PolicyGradientData], num_tasks: int
    ) -> tuple[list[Params], list[tuple[float, HessianProduct]]]:
        """:meth:`adaptation_points` and each step's size and inner-loss Hessian product at the point it left."""
        points = [_detach(batch_params(params, num_tasks))]
        hessians = []
        for step_size, data in zip(self.step_sizes(len(inner)), inner, strict=True):
            point, hessian_product = self._adaptation_step(points[-1], data, step_size)
            points.append(point)
            hessians.append((step_size, hessian_product))
        return points, hessians

    def adapt_per_task(self, params: Params, inner: Sequence[PolicyGradientData], create_graph: bool) -> Params:
        """The reference implementation of :meth:`adapt`: a Python loop over tasks, one at a time."""
        adapted_per_task = []
        for t in range(inner[0].observations.shape[0]):
            task_params = dict(params)
            for step_size, data in zip(self.step_sizes(len(inner)), inner, strict=True):
                task_data = PolicyGradientData(*(tensor[t : t + 1] for tensor in data))
                loss = self.inner_losses(batch_params(task_params, 1), task_data).sum()
                grads = torch.autograd.grad(loss, list(task_params.values()), create_graph=create_graph)
                task_params = self._inner_update(task_params, grads, step_size)
            adapted_per_task.append(task_params)
        return {name: torch.stack([p[name] for p in adapted_per_task]) for name in params}

    def sample(self, tasks: Sequence[Any], rng: np.random.Generator, num_steps: int, evaluation: bool) -> MetaBatch:
        """Collect pre-adaptation episodes, adapt step by step collecting after each step (no meta-gradient).

        ``tasks`` is the whole meta-batch; this process collects and adapts its block of it, and the returns are
        those of the whole meta-batch.
        """
        shard = self.workers.shard(len(tasks))
        tasks = shard.select(tasks)
        inner: list[PolicyGradientData] = []
        returns: list[float] = []
        task_returns: list[torch.Tensor] = []
        task_successes: list[torch.Tensor] = []
        episodes: list[EpisodeBatch] = []
        params = {name: value.detach() for name, value in self.policy.named_parameters()}
        adapted: Params | None = None
        for step_size in [*self.step_sizes(num_steps, evaluation), None]:
            batch = self.collect(tasks, adapted, seed=int(rng.integers(2**31)), shard=shard)
            episodes.append(batch)
            returns.append(self.workers.sum_floats([batch.returns.mean(dim=1).sum()])[0] / shard.total)
            task_returns.append(batch.returns.mean(dim=1))
            if batch.successes is not None:
                task_successes.append(batch.successes.mean(dim=1))
            data = self.process(batch)
            if step_size is None:
                return MetaBatch(inner, data, returns, task_returns, task_successes or None, adapted, shard, episodes)
            inner.append(data)
            adapted = self._adaptation_step(
                batch_params(params, len(tasks)) if adapted is None else adapted, data, step_size
            )[0]
        raise AssertionError("unreachable")

    # -- outer loop ------------------------------------------------------------------------------------------------
    def surrogate(
        self,
        adapted: Params,
        post: PolicyGradientData,
        old_log_probs: torch.Tensor,
        old_distribution: Any,
        total_tasks: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """TRPO's surrogate loss and mean KL(old ‖ new) on the post-adaptation episodes: this process's share of the
        averages over the ``total_tasks`` tasks of the meta-batch (default: these tasks are all of it)."""
        distribution = self.policy.distribution(post.observations, adapted)
        loss = self._surrogate_loss(distribution, post, old_log_probs, total_tasks)
        return loss, self._mean_kl(distribution, old_distribution, post.weights, total_tasks)

    @staticmethod
    def _surrogate_loss(
        distribution: Any, post: PolicyGradientData, old_log_probs: torch.Tensor, total_tasks: int | None = None
    ) -> torch.Tensor:
        """:meth:`surrogate`'s loss for the new adapted policy's ``distribution`` on the post-adaptation episodes."""
        ratio = torch.exp(distribution.log_prob(post.actions) - old_log_probs)
        return -_average_per_task(ratio * post.advantages, post.weights).sum() / (total_tasks or post.masks.shape[0])

    @staticmethod
    def _mean_kl(
        distribution: Any, old_distribution: Any, weights: torch.Tensor, total_tasks: int | None = None
    ) -> torch.Tensor:
        """This process's share of the mean over the meta-batch's tasks of each task's average KL(old ‖ new), each
        task's average taken with its step ``weights``."""
        kl = torch.distributions.kl_divergence(old_distribution, distribution)
        return _average_per_task(kl, weights).sum() / (total_tasks or weights.shape[0])

    def meta_update(self, batch: MetaBatch) -> dict[str, float]:
        """One outer update of the meta-parameters: TRPO (``maml-trpo``) or PPO epochs (``maml-ppo``)."""
        if self.config.algo == "maml-ppo":
            return self._ppo_update(batch)
        return self._trpo_update(batch)

    def _ppo_update(self, batch: MetaBatch) -> dict[str, float]:
        """MAML-PPO: Adam epochs on the clipped post-adaptation surrogate, re-adapting (and differentiating through
        the inner loop) at every epoch; with ``ppo_kl_coeff`` > 0, ProMP's penalty on the KL between the old and
        new pre-adaptation policies."""
        config = self.config
        start = time.perf_counter()
        theta = dict(self.policy.named_parameters())
        total_tasks = batch.shard.total
        old_distribution = _detach_distribution(
            self.policy.distribution(batch.post.observations, _detach(self.adapt(theta, batch.inner, False)))
        )
        old_log_probs = old_distribution.log_prob(batch.post.actions)
        pre = batch.inner[0]
        old_pre_distribution = _detach_distribution(self.policy.distribution(pre.observations, _detach(theta)))
        for _ in range(config.ppo_epochs):
            adapted = self.adapt(theta, batch.inner, create_graph=not config.first_order)
            distribution = self.policy.distribution(batch.post.observations, adapted)
            ratio = torch.exp(distribution.log_prob(batch.post.actions) - old_log_probs)
            clipped_ratio = ratio.clamp(1.0 - config.ppo_clip, 1.0 + config.ppo_clip)
            objective = torch.min(ratio * batch.post.advantages, clipped_ratio * batch.post.advantages)
            loss = -_average_per_task(objective, batch.post.weights).sum() / total_tasks
            if config.ppo_kl_coeff > 0:
                pre_distribution = self.policy.distribution(pre.observations, theta)
                pre_kl = self._mean_kl(pre_distribution, old_pre_distribution, pre.weights, total_tasks)
                loss = loss + config.ppo_kl_coeff * pre_kl
            # the whole meta-batch's loss decides, so that every process skips together
            (total_loss,) = self.workers.sum_floats([loss])
            if not math.isfinite(total_loss):
                raise FloatingPointError(f"non-finite PPO loss ({total_loss}); update skipped")
            self.optimizer.zero_grad()
            loss.backward()
            self.workers.sum_gradients(self.optimizer_parameters())
            self.optimizer.step()
        with torch.no_grad():
            clip_fraction = _average_per_task(((ratio - 1.0).abs() > config.ppo_clip).float(), batch.post.weights)
            kl = self._mean_kl(distribution, old_distribution, batch.post.weights, total_tasks)
        total_kl, total_clip_fraction = self.workers.sum_floats([kl, clip_fraction.sum() / total_tasks])
        return {
            "losses/ppo_loss": total_loss,
            "losses/kl": total_kl,
            "losses/clip_fraction": total_clip_fraction,
            "time/outer_update_s": time.perf_counter() - start,
        }

    def optimizer_parameters(self) -> list[torch.nn.Parameter]:
        """What the PPO outer loop updates: the policy and, with Meta-SGD, the learned step sizes."""
        parameters = list(self.policy.parameters())
        if self.learned_step_sizes is not None:
            parameters += list(self.learned_step_sizes.parameters())
        return parameters

    def _trpo_update(self, batch: MetaBatch) -> dict[str, float]:
        """One TRPO step on the meta-parameters; restores them if the line search finds no acceptable step."""
        config = self.config
        second_order = not config.first_order
        theta = dict(self.policy.named_parameters())
        timings: dict[str, float] = {}

        start = time.perf_counter()
        num_tasks, total_tasks = batch.shard.size, batch.shard.total
        meta = self.meta_gradient(theta, batch, second_order)
        # this process's share of the loss and gradient, summed over processes into the meta-batch's
        gradient = self.workers.sum(meta.gradient)
        (loss_value,) = self.workers.sum_floats([meta.loss])
        if not (math.isfinite(loss_value) and torch.isfinite(gradient).all()):
            raise FloatingPointError(f"non-finite surrogate loss ({loss_value}) or meta-gradient; update skipped")
        timings["time/inner_and_gradient_s"] = time.perf_counter() - start

        # natural gradient by conjugate gradient on the KL's Hessian Jᵀ F J, then a line search on the true
        # surrogate and KL that re-adapts at every candidate
        start = time.perf_counter()
        curvature_hessians, curvature_post = self._curvature_data(meta.points, meta.inner_hessians, batch)
        hessian_vector_product = self._kl_hessian_vector_product(
            theta, meta.points[-1], curvature_hessians, curvature_post, total_tasks
        )
        # the pre-adaptation policy, whose drift the post-adaptation trust region does not see
        pre = batch.inner[0] if batch.inner else batch.post
        old_pre_distribution = _detach_distribution(self.policy.distribution(pre.observations, meta.points[0]))
        if config.pre_adaptation_trust_region:
            hessian_vector_product = _sum_of_products(
                hessian_vector_product, self._pre_adaptation_fisher_product(theta, meta.points[0], pre, total_tasks)
            )
        curvature_setup_seconds = time.perf_counter() - start

        def pre_adaptation_kl(candidate: Params) -> torch.Tensor:
            distribution = self.policy.distribution(pre.observations, candidate)
            return self._mean_kl(distribution, old_pre_distribution, pre.weights, total_tasks)

        def loss_and_kl(candidate: torch.Tensor) -> tuple[float, float]:
            candidate_params = unflatten_like(candidate, theta)
            candidate_adapted = self.adaptation_points(candidate_params, batch.inner, num_tasks)[-1]
            with torch.no_grad():
                candidate_loss, candidate_kl = self.surrogate(
                    candidate_adapted, batch.post, meta.old_log_probs, meta.old_distribution, total_tasks
                )
                if config.pre_adaptation_trust_region:
                    candidate_kl = candidate_kl + pre_adaptation_kl(candidate_params)
            total_loss, total_kl = self.workers.sum_floats([candidate_loss, candidate_kl])
            return total_loss, total_kl

        result, step_timings = self.apply_trpo_step(
            theta, gradient, hessian_vector_product, loss_and_kl, loss_value, curvature_setup_seconds
        )
        timings.update({f"time/{phase}": seconds for phase, seconds in step_timings.items()})
        with torch.no_grad():
            (pre_kl,) = self.workers.sum_floats([pre_adaptation_kl(_detach(theta))])
        return {
            "losses/surrogate_before": loss_value,
            "losses/surrogate_after": result.loss if result.accepted else loss_value,
            "losses/kl": result.kl if result.accepted else 0.0,
            "losses/pre_adaptation_kl": pre_kl,
            "losses/line_search_accepted": float(result.accepted),
            "losses/step_fraction": result.step_fraction if result.accepted else 0.0,
            **timings,
        }

    def meta_gradient(self, theta: Params, batch: MetaBatch, second_order: bool) -> MetaGradient:
        """This process's share of TRPO's surrogate loss and of its gradient in the meta-parameters ``theta``.

        The surrogate's gradient at every task's adapted parameters, pulled back through the adaptation: ``Jᵀ g``
        with ``J = (I - α_K H_K) ⋯ (I - α_1 H_1)`` (second order; the identity in first order), summed over tasks.
        """
        num_tasks, total_tasks = batch.shard.size, batch.shard.total
        points, inner_hessians = self._adapt_detached(theta, batch.inner, num_tasks)
        with torch.enable_grad():
            adapted = {name: value.clone().requires_grad_() for name, value in points[-1].items()}
            # the old policy is the adapted one itself: one forward pass gives both (the ratio is 1 here)
            distribution = self.policy.distribution(batch.post.observations, adapted)
            old_distribution = _detach_distribution(distribution)
            old_log_probs = old_distribution.log_prob(batch.post.actions)
            loss = self._surrogate_loss(distribution, batch.post, old_log_probs, total_tasks)
            adapted_gradient = dict(zip(adapted, torch.autograd.grad(loss, list(adapted.values())), strict=True))
        if not second_order:
            inner_hessians = []
        task_gradients = _apply_adaptation_jacobian(adapted_gradient, reversed(inner_hessians))
        gradient = flatten_tensors([value.sum(dim=0) for value in task_gradients.values()])
        return MetaGradient(loss.detach(), gradient, points, inner_hessians, old_log_probs, old_distribution)

    def apply_trpo_step(
        self,
        theta: Params,
        gradient: torch.Tensor,
        hessian_vector_product: Any,
        loss_and_kl: Any,
        old_loss: float,
        curvature_setup_seconds: float,
    ) -> tuple[Any, dict[str, float]]:
        """:func:`metarl.optim.trpo_step` with this agent's TRPO settings; the seconds of its phases, the time spent
        preparing the curvature counted as conjugate gradient."""
        config = self.config
        timings: dict[str, float] = {}
        result = trpo_step(
            theta,
            gradient,
            hessian_vector_product,
            loss_and_kl,
            old_loss,
            max_kl=config.max_kl,
            cg_iterations=config.cg_iterations,
            backtrack_ratio=config.line_search_backtrack_ratio,
            max_backtracks=config.line_search_max_steps,
            timings=timings,
        )
        timings["conjugate_gradient_s"] += curvature_setup_seconds
        return result, timings

    def _inner_derivatives(self, point: Params, data: PolicyGradientData) -> tuple[Params, HessianProduct]:
        """Every task's inner-loss gradient at its parameters ``point`` and the product with its Hessian there."""
        # the inner loss -Σ_i w_i A_i log π_i is a weighted log-likelihood
        coefficients = -data.advantages * data.weights
        return self.policy.log_likelihood_derivatives(data.observations, data.actions, point, coefficients)

    def _inner_hessians(
        self, points: Sequence[Params], inner: Sequence[PolicyGradientData]
    ) -> list[tuple[float, HessianProduct]]:
        """Each inner step's step size and ``v ↦ H v``, ``H`` the Hessian of every task's inner loss at the task's
        parameters before that step (``points[k]``; a last point after the steps is ignored): the factors
        ``I - α H`` of the adaptation's Jacobian."""
        return [
            (step_size, self._inner_derivatives(point, data)[1])
            for step_size, point, data in zip(self.step_sizes(len(inner)), points[: len(inner)], inner, strict=True)
        ]

    def _curvature_data(
        self, points: Sequence[Params], inner_hessians: list[tuple[float, HessianProduct]], batch: MetaBatch
    ) -> tuple[list[tuple[float, HessianProduct]], PolicyGradientData]:
        """The inner-loss Hessians and post-adaptation episodes the KL's curvature is computed on.

        Exact (``curvature_fraction == 1``): the meta-gradient's own Hessians and every episode. Otherwise the first
        share of each task's episodes: the inner losses' Hessians on those episodes at the same parameters, and the
        Fisher on the same share of the post-adaptation episodes. First order (no Hessians): only the Fisher.
        """
        if self.config.curvature_fraction >= 1.0:
            return inner_hessians, batch.post
        if inner_hessians:
            inner_hessians = self._inner_hessians(points, [self._curvature_share(data) for data in batch.inner])
        return inner_hessians, self._curvature_share(batch.post)

    def _curvature_share(self, data: PolicyGradientData) -> PolicyGradientData:
        """The first ``curvature_fraction`` of each task's episodes (all of them in exact mode)."""
        if self.config.curvature_fraction >= 1.0:
            return data
        keep = max(1, math.ceil(self.config.curvature_fraction * data.observations.shape[1]))
        # the kept episodes' weights are drawn afresh, so that each task's still sum to 1
        masks = data.masks[:, :keep]
        weights = average_weights(masks, self.config.weighting)
        return PolicyGradientData(
            data.observations[:, :keep], data.actions[:, :keep], data.advantages[:, :keep], masks, weights
        )

    def _pre_adaptation_fisher_product(
        self, theta: Params, pre_point: Params, pre: PolicyGradientData, total_tasks: int
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """v ↦ F_pre v: the Fisher matrix of the mean KL of the pre-adaptation policies (at ``pre_point``) on the
        pre-adaptation episodes ``pre`` (the fast mode's share of them), summed over processes."""
        pre = self._curvature_share(pre)
        fisher_product = self.policy.fisher_product(pre.observations, pre_point, pre.weights / total_tasks)
        num_tasks = pre.observations.shape[0]

        def product(vector: torch.Tensor) -> torch.Tensor:
            tangent = _per_task_copies(unflatten_like(vector, theta), num_tasks)
            return self.workers.sum(flatten_tensors([value.sum(dim=0) for value in fisher_product(tangent).values()]))

        return product

    def _kl_hessian_vector_product(
        self,
        theta: Params,
        adapted: Params,
        inner_hessians: Sequence[tuple[float, HessianProduct]],
        post: PolicyGradientData,
        total_tasks: int | None = None,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """v ↦ (Jᵀ F J + damping) v at the current meta-parameters (see the module docstring), for the mean KL over
        the ``total_tasks`` tasks of the meta-batch: each process's tasks contribute their terms and the products
        are summed over processes.

        The adaptation is θ'_K = θ'_{K-1} - α_K ∇L_K(θ'_{K-1}), so J = (I - α_K H_K) ⋯ (I - α_1 H_1) with H_k the
        inner-loss Hessian of step k (per task, symmetric; ``inner_hessians``): J v applies the factors in order,
        Jᵀ u in reverse. With no Hessians (first order) J is the identity. The task dimension of θ'_0 is a copy of
        θ per task, whose adjoint sums over tasks.
        """
        num_tasks = post.observations.shape[0]
        # the mean KL's weights: each task's average over its steps, then the meta-batch's tasks' mean
        weights = post.weights / (total_tasks or num_tasks)
        fisher_product = self.policy.fisher_product(post.observations, adapted, weights)
        damping = self.config.cg_damping

        def product(vector: torch.Tensor) -> torch.Tensor:
            tangent = _per_task_copies(unflatten_like(vector, theta), num_tasks)
            tangent = _apply_adaptation_jacobian(tangent, inner_hessians)
            cotangent = _apply_adaptation_jacobian(fisher_product(tangent), reversed(inner_hessians))
            return (
                self.workers.sum(flatten_tensors([value.sum(dim=0) for value in cotangent.values()])) + damping * vector
            )

        return product

    # -- the meta-agent protocol -----------------------------------------------------------------------------------
    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        """Sample, adapt and meta-update once; returns scalar metrics for the logs."""
        start = time.perf_counter()
        batch = self.sample(tasks, rng, self.config.num_inner_steps, evaluation=False)
        metrics = {"time/sample_s": time.perf_counter() - start}
        metrics.update(self.meta_update(batch))
        for k, value in enumerate(batch.returns):
            metrics["meta/return_pre_adapt" if k == 0 else f"meta/return_step_{k}"] = value
        if isinstance(self.policy, GaussianMLPPolicy):
            # a shrinking std makes every fixed-size inner step larger in the policy's terms (docs/results/long-runs.md)
            metrics["policy/log_std_mean"] = float(self.policy.log_std.detach().mean())
        return metrics

    def default_num_points(self) -> int:
        """Points of the evaluation curve: before adaptation and after each of ``config.eval_steps`` steps."""
        return self.config.eval_steps + 1

    def adaptation_curve(self, tasks: Sequence[Any], rng: np.random.Generator, num_points: int) -> AdaptationCurve:
        """Each task's mean episode return (and success rate) before adaptation and after each of
        ``num_points - 1`` policy-gradient steps (the evaluation step sizes)."""
        batch = self.sample(tasks, rng, num_points - 1, evaluation=True)
        gather = functools.partial(self.workers.gather, shard=batch.shard)
        successes = None if batch.task_successes is None else [gather(s) for s in batch.task_successes]
        return AdaptationCurve.from_tensors([gather(r) for r in batch.task_returns], successes)

    def selection_score(self, curve: Sequence[float]) -> float:
        """Validation score that picks the kept parameters: the return after the trained number of steps."""
        return curve[min(self.config.num_inner_steps, len(curve) - 1)]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"policy": self.policy.state_dict()}
        if self.learned_step_sizes is not None:
            state["learned_step_sizes"] = self.learned_step_sizes.state_dict()
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        if self.learned_step_sizes is not None:
            self.learned_step_sizes.load_state_dict(state["learned_step_sizes"])
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


def _apply_adaptation_jacobian(vectors: Params, factors: Iterable[tuple[float, HessianProduct]]) -> Params:
    """Per-task vectors times the factors ``I - α H`` of an adaptation's Jacobian, in the order given: the steps'
    order for ``J v``, reversed for ``Jᵀ u`` (each factor is symmetric)."""
    for step_size, hessian_product in factors:
        hessian_vectors = hessian_product(vectors)
        vectors = {name: value - step_size * hessian_vectors[name] for name, value in vectors.items()}
    return vectors


def _per_task_copies(vectors: Params, num_tasks: int) -> Params:
    """The same vector for every task (a leading task dim, expanded without a copy): the tangent of θ'_0 = θ."""
    return {name: value.unsqueeze(0).expand(num_tasks, *value.shape) for name, value in vectors.items()}


def _sum_of_products(
    first: Callable[[torch.Tensor], torch.Tensor], second: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v ↦ A v + B v."""
    return lambda vector: first(vector) + second(vector)


def _average_per_task(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each task's average of ``values`` with its step ``weights`` (:attr:`PolicyGradientData.weights`):
    ``[T, E, H] -> [T]``."""
    return (values * weights).flatten(1).sum(dim=1)


def _detach(params: Params) -> Params:
    return {name: value.detach() for name, value in params.items()}


def _detach_distribution(distribution: Any) -> Any:
    """A copy of a Normal/Independent/Categorical distribution cut from the graph."""
    if isinstance(distribution, torch.distributions.Independent):
        return torch.distributions.Independent(
            _detach_distribution(distribution.base_dist), distribution.reinterpreted_batch_ndims
        )
    if isinstance(distribution, torch.distributions.Normal):
        return torch.distributions.Normal(distribution.loc.detach(), distribution.scale.detach())
    if isinstance(distribution, torch.distributions.Categorical):
        return torch.distributions.Categorical(logits=distribution.logits.detach())
    raise TypeError(f"unsupported distribution {type(distribution).__name__}")
