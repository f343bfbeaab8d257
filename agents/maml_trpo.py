"""MAML-TRPO: the batched policy-gradient inner loop with a TRPO outer loop through the adaptation.

One meta-iteration, as in the MAML paper's Algorithm 3: sample and adapt every task of the meta-batch
(:class:`metarl.agents.inner_loop.InnerLoopAgent`), then one TRPO step on the post-adaptation surrogate, differentiating
through the inner steps (second order) or not (``first_order``: FO-MAML).

TRPO never builds a graph through the inner loop. The adaptation θ'_K = θ'_{K-1} - α_K ∇L_K(θ'_{K-1}) has the
Jacobian J = ∂θ'/∂θ = (I - α_K H_K) ⋯ (I - α_1 H_1), H_k the inner loss's Hessian at step k's parameters, so the
meta-gradient is Jᵀ g (g the surrogate's gradient at the adapted parameters) and the curvature TRPO needs, the
Hessian of the mean KL between the old and the new *adapted* policies, equals Jᵀ F J at the current point (F the
Fisher matrix at the adapted parameters: the KL's gradient vanishes there, so no third derivatives appear). Every
product with H_k and F is the policy's written-out R-operator (``log_likelihood_derivatives``, ``fisher_product``;
:mod:`metarl.agents.curvature`): a tangent forward and a tangent backward pass through the MLP, about twice as fast as
autograd's double backward, and tested against it. The fast mode (``curvature_fraction`` < 1) computes the
curvature on a share of each task's episodes. :mod:`metarl.agents.maml_autograd` is the same algorithm written plainly
with autograd, task by task: the reference the tests compare this one with.

Under ``torchrun`` the loss, the gradient, every curvature product and the line search's loss and KL are this
process's share, summed over processes (``self.workers.sum``).

References:
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Schulman et al. "Trust Region Policy Optimization", ICML 2015.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch
from metarl.agents.inner_loop import (
    HessianProduct,
    InnerLoopAgent,
    InnerLoopConfig,
    MetaBatch,
    Params,
    PolicyGradientData,
    average_per_task,
    detach_distribution,
    detach_params,
    mean_kl,
)

from metarl.advantages import average_weights
from metarl.config import check_at_least, check_positive_numbers
from metarl.optim import flatten_tensors, trpo_step, unflatten_like
from metarl.registry import register_agent


@dataclasses.dataclass
class MAMLTRPOConfig(InnerLoopConfig):
    """MAML-TRPO's fields: the inner loop's and TRPO's."""

    algo: str = "maml-trpo"
    max_kl: float = 0.01
    """TRPO's trust region: the largest mean KL between old and new adapted policies."""
    cg_iterations: int = 10
    """Conjugate-gradient iterations for the natural-gradient direction."""
    cg_damping: float = 1e-5
    """Damping added to the KL's Hessian-vector products."""
    curvature_fraction: float = 1.0
    """Share of each task's episodes the KL's curvature is computed on (1.0: exact; the fast mode uses 0.25, about
    2.3x faster per meta-iteration on the Navigation2D preset, with the same held-out returns measured on three seeds;
    0.1 measured worse after two adaptation steps). The gradient, the adaptation and the line search always use every
    episode."""
    pre_adaptation_trust_region: bool = False
    """Bound the pre-adaptation policy's change too. TRPO's curvature adds that policy's Fisher matrix (on the
    pre-adaptation episodes) and the line search checks the sum of the two mean KLs against ``max_kl``. Off: the MAML
    paper's trust region, on the adapted policies only (``losses/pre_adaptation_kl`` logs the other)."""
    line_search_backtrack_ratio: float = 0.8
    """Step shrink factor of the backtracking line search."""
    line_search_max_steps: int = 15
    """Most candidates the line search tries before giving up (and keeping the parameters)."""

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "cg_iterations line_search_max_steps")
        check_positive_numbers(self, "max_kl")
        check_positive_numbers(self, "cg_damping", zero_allowed=True)
        if not 0.0 < self.curvature_fraction <= 1.0:
            raise ValueError(f"curvature_fraction must be in (0, 1], got {self.curvature_fraction}")
        if not 0.0 < self.line_search_backtrack_ratio < 1.0:
            raise ValueError(f"line_search_backtrack_ratio must be in (0, 1), got {self.line_search_backtrack_ratio}")


class MetaGradient(NamedTuple):
    """TRPO's surrogate at the current meta-parameters (:meth:`MAMLTRPO.meta_gradient`), this process's share."""

    loss: torch.Tensor
    gradient: torch.Tensor
    """Flat, in the order of the policy's parameters."""
    points: list[Params]
    """Every task's parameters before each inner step and after the last (:meth:`InnerLoopAgent.adaptation_points`)."""
    inner_hessians: list[tuple[float, HessianProduct]]
    """Each inner step's size and inner-loss Hessian product (none in first order)."""
    old_log_probs: torch.Tensor
    old_distribution: Any
    """The post-adaptation policy the surrogate's ratio and KL are taken against."""


class MAMLTRPO(InnerLoopAgent):
    """MAML-TRPO: REINFORCE inner loop, TRPO outer loop through the adaptation (the MAML paper's RL algorithm).

    ``algo=maml-trpo``. Options: ``first_order`` (FO-MAML), ``curvature_fraction`` (the fast mode),
    ``pre_adaptation_trust_region``.
    """

    def meta_update(self, batch: MetaBatch) -> dict[str, float]:
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
        old_pre_distribution = detach_distribution(self.policy.distribution(pre.observations, meta.points[0]))
        if config.pre_adaptation_trust_region:
            hessian_vector_product = _sum_of_products(
                hessian_vector_product, self._pre_adaptation_fisher_product(theta, meta.points[0], pre, total_tasks)
            )
        curvature_setup_seconds = time.perf_counter() - start

        def pre_adaptation_kl(candidate: Params) -> torch.Tensor:
            distribution = self.policy.distribution(pre.observations, candidate)
            return mean_kl(distribution, old_pre_distribution, pre.weights, total_tasks)

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
            (pre_kl,) = self.workers.sum_floats([pre_adaptation_kl(detach_params(theta))])
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
        points, inner_hessians, _ = self._adapt_detached(theta, batch.inner, num_tasks)
        with torch.enable_grad():
            adapted = {name: value.clone().requires_grad_() for name, value in points[-1].items()}
            # the old policy is the adapted one itself: one forward pass gives both (the ratio is 1 here)
            distribution = self.policy.distribution(batch.post.observations, adapted)
            old_distribution = detach_distribution(distribution)
            old_log_probs = old_distribution.log_prob(batch.post.actions)
            loss = self._surrogate_loss(distribution, batch.post, old_log_probs, total_tasks)
            adapted_gradient = dict(zip(adapted, torch.autograd.grad(loss, list(adapted.values())), strict=True))
        if not second_order:
            inner_hessians = []
        task_gradients = _apply_adaptation_jacobian(adapted_gradient, reversed(inner_hessians))
        gradient = flatten_tensors([value.sum(dim=0) for value in task_gradients.values()])
        return MetaGradient(loss.detach(), gradient, points, inner_hessians, old_log_probs, old_distribution)

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
        return loss, mean_kl(distribution, old_distribution, post.weights, total_tasks)

    @staticmethod
    def _surrogate_loss(
        distribution: Any, post: PolicyGradientData, old_log_probs: torch.Tensor, total_tasks: int | None = None
    ) -> torch.Tensor:
        """:meth:`surrogate`'s loss for the new adapted policy's ``distribution`` on the post-adaptation episodes."""
        ratio = torch.exp(distribution.log_prob(post.actions) - old_log_probs)
        return -average_per_task(ratio * post.advantages, post.weights).sum() / (total_tasks or post.masks.shape[0])

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


register_agent("maml-trpo", MAMLTRPO, MAMLTRPOConfig)
