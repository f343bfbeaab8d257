"""MAML++ on MAML-TRPO's outer loop: LSLR, the multi-step loss and derivative-order annealing under a trust region.

One meta-iteration samples and adapts the meta-batch as every gradient-based meta-learner here does, with LSLR's
learned per-layer, per-step rates α_{k,l} in the inner steps
(:class:`metarl.agents.maml_plus_plus.MAMLPlusPlusInnerLoop`), then takes one TRPO step (Schulman et al. 2015) on the
multi-step surrogate

    L(θ, α) = Σ_k w_k L_k,   L_k = -E[π_{θ'_k}(a|s) / π_{θ'_k,old}(a|s) · A]

(L_k on the episodes the policies after step k collected)

subject to the same weighted mean KL between the old and the new adapted policies, Σ_k w_k KL_k ≤ ``max_kl``, with
the multi-step loss's annealed weights w_k (all on the last step without ``multi_step_loss``: MAML-TRPO's objective
and trust region).

**Where the learned step sizes move: inside the trust region, with θ.** The rates shape the adapted policies as much
as θ does (θ'_1 = θ - α_1 ⊙ ∇L_1(θ), per tensor), and the trust region bounds the adapted policies' change. A step
on α taken beside the trust region (by Adam, say) could move every adapted policy past ``max_kl`` while θ's step
respects it, and TRPO's monotonic-improvement argument would no longer hold for the policies the data came from.
So (θ, α) is one vector: the surrogate's gradient, the KL's curvature (its Hessian in θ and α, which at the current
point is Jᵀ F J with J the Jacobian of the adapted parameters in (θ, α)), the conjugate gradient, the step's scale
and the line search's KL check all cover both. The natural gradient then puts the rates on the scale of the change
they cause in the policies, so no learning rate for them is needed. ``tests/test_maml_plus_plus_trpo.py`` checks that
the accepted step's KL is the one of the jointly moved policies (θ and α), within ``max_kl``, and that the curvature
product includes the rates' block (against autograd through the adaptation).

**Derivative-order annealing**: the first ``first_order_iterations`` meta-iterations hold every inner gradient
constant (FO-MAML), in the gradient and in the curvature alike; the rates still get a gradient, through
θ'_k = θ'_{k-1} - α_k g_k with g_k constant. It is off by default here (``first_order_iterations=0``): the line
search checks each candidate on the true multi-step surrogate, and on the Navigation2D preset the first-order
direction made it worse even at the smallest step from about the 25th iteration on, so 70-92 % of the first-order
iterations between 26 and 150 took no step at all (every second-order one did).

**Not carried over**: the cosine annealing of the outer learning rate. TRPO has no learning rate: the trust region
``max_kl`` sets each step's size from the policies' own change, which is what the paper's annealed Adam rate was
there to tame. Per-step batch normalisation does not apply (the suite's MLP policies have none; see
:mod:`metarl.agents.maml_plus_plus`).

**How it is computed.** As MAML-TRPO's (:mod:`metarl.agents.maml_trpo`): no graph through the inner loop; the
Jacobian of each step's adapted parameters, now in (θ, α), and its transpose are applied with the policy's
written-out R-operators (:class:`LinearisedAdaptation`), and the curvature product is Σ_k w_k J_kᵀ F_k J_k with each
step's Fisher product. ``tests/test_maml_plus_plus_trpo.py`` checks the gradient and the curvature product against
autograd through the adaptation (the double backward of the KL). MAML-TRPO's fast mode (``curvature_fraction``) and
its pre-adaptation trust region are not carried over and are refused.

References:
    Antoniou, Edwards, Storkey. "How to train your MAML", ICLR 2019.
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Schulman et al. "Trust Region Policy Optimization", ICML 2015.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from metarl.agents.inner_loop import (
    HessianProduct,
    MetaBatch,
    Params,
    detach_distribution,
    detach_params,
)
from metarl.agents.maml_plus_plus import MAMLPlusPlusInnerLoop, MAMLPlusPlusSwitches, step_targets
from metarl.agents.maml_trpo import MAMLTRPO, MAMLTRPOConfig
from metarl.agents.meta_sgd import step_size_key

from metarl.distributed import Workers
from metarl.optim import flatten_tensors, unflatten_like
from metarl.registry import register_agent
from metarl.tasks import TaskFamily

POLICY_PREFIX = "policy."
RATES_PREFIX = "lslr."


@dataclasses.dataclass
class MAMLPlusPlusTRPOConfig(MAMLTRPOConfig, MAMLPlusPlusSwitches):
    """MAML++ on TRPO: MAML-TRPO's trust region and the MAML++ switches (no cosine learning rate: TRPO has none)."""

    algo: str = "maml-plus-plus-trpo"
    num_inner_steps: int = 2
    """Policy-gradient adaptation steps during meta-training (2 by default, so that the multi-step loss and the
    per-step rates have steps to act on)."""
    first_order_iterations: int = 0
    """Derivative-order annealing: meta-iterations of first-order meta-gradients before second order. 0 here (second
    order throughout), unlike the paper's PPO/Adam choice: TRPO's line search checks the true surrogate, and past the
    first ~25 iterations the first-order direction stops being a descent direction of it (measured on the
    Navigation2D preset: docs/results/what-is-learned.md)."""

    def validate(self) -> None:
        super().validate()
        self.validate_switches()
        if self.curvature_fraction != 1.0:
            raise ValueError(
                f"curvature_fraction must be 1.0 for maml-plus-plus-trpo, got {self.curvature_fraction} (maml-trpo's "
                "fast mode is not carried over: this agent's curvature uses every episode)"
            )
        if self.pre_adaptation_trust_region:
            raise ValueError(
                "pre_adaptation_trust_region must be false for maml-plus-plus-trpo (the trust region is the multi-step "
                "loss's weighted KL of the adapted policies)"
            )


class TrustRegionProblem(NamedTuple):
    """One TRPO step's ingredients (:meth:`MAMLPlusPlusTRPO.trust_region_problem`), flat in (θ, α)."""

    loss: float
    gradient: torch.Tensor
    hessian_vector_product: Callable[[torch.Tensor], torch.Tensor]
    loss_and_kl: Callable[[torch.Tensor], tuple[float, float]]


class MAMLPlusPlusTRPO(MAMLPlusPlusInnerLoop, MAMLTRPO):
    """MAML++ (LSLR, multi-step loss, derivative-order annealing) with a TRPO outer loop on (θ, α) together.

    ``algo=maml-plus-plus-trpo``.

    References:
        Antoniou, Edwards, Storkey. "How to train your MAML", ICLR 2019.
        Schulman et al. "Trust Region Policy Optimization", ICML 2015.
    """

    update_floats_per_step: ClassVar[float] = 6.0
    """Memory estimate: MAML-TRPO's curvature products, with every inner step's Fisher pass kept (peak resident
    growth of a second-order training step from 10 to 80 episodes per task on the Navigation2D preset: 663 MiB
    measured, 643 MiB estimated)."""

    def __init__(
        self, family: TaskFamily, config: MAMLPlusPlusTRPOConfig, device: torch.device, workers: Workers | None = None
    ) -> None:
        super().__init__(family, config, device, workers)
        self.add_plus_plus()

    def trust_region_parameters(self) -> dict[str, torch.nn.Parameter]:
        """What one TRPO step moves: the policy's parameters and, with LSLR, their rates in the same order (a
        ParameterDict sorts its keys), by prefixed name."""
        names = [name for name, _ in self.policy.named_parameters()]
        parameters = {POLICY_PREFIX + name: value for name, value in self.policy.named_parameters()}
        if self.lslr is not None:
            parameters.update({RATES_PREFIX + step_size_key(name): self.lslr[step_size_key(name)] for name in names})
        return parameters

    def multi_step_surrogate(
        self,
        points: Sequence[Params],
        batch: MetaBatch,
        old_distributions: Sequence[Any],
        old_log_probs: Sequence[torch.Tensor],
        weights: Sequence[float],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ_k w_k L_k and Σ_k w_k KL_k: TRPO's surrogate and mean KL(old ‖ new) of the policies after each inner
        step (``points``) on the episodes they collected, this process's share of the meta-batch's averages."""
        total_tasks = batch.shard.total
        loss: torch.Tensor | float = 0.0
        kl: torch.Tensor | float = 0.0
        steps = zip(weights, points, step_targets(batch), old_distributions, old_log_probs, strict=True)
        for weight, point, data, old_distribution, old_log_prob in steps:
            if weight == 0.0:  # without MSL only the last step counts
                continue
            step_loss, step_kl = self.surrogate(point, data, old_log_prob, old_distribution, total_tasks)
            loss, kl = loss + weight * step_loss, kl + weight * step_kl
        assert isinstance(loss, torch.Tensor) and isinstance(kl, torch.Tensor)  # the last weight is at least 1/K
        return loss, kl

    def trust_region_problem(
        self, batch: MetaBatch, weights: Sequence[float], second_order: bool
    ) -> TrustRegionProblem:
        """The TRPO step's ingredients at the current (θ, α), the meta-batch's sums over processes: the multi-step
        surrogate and its flat gradient, v ↦ (Σ_k w_k J_kᵀ F_k J_k + damping) v (the weighted KL's Hessian, J_k the
        Jacobian of step k's adapted parameters in (θ, α)), and the candidates' true surrogate and KL."""
        total_tasks = batch.shard.total
        adaptation = self.linearised_adaptation(batch, second_order)
        targets = step_targets(batch)
        old_distributions, old_log_probs, cotangents = [], [], []
        loss_value = 0.0
        for weight, point, data in zip(weights, adaptation.points[1:], targets, strict=True):
            # each step's surrogate at its adapted parameters (the old policy is the adapted one: the ratio is 1)
            with torch.enable_grad():
                leaf = {name: value.clone().requires_grad_() for name, value in point.items()}
                distribution = self.policy.distribution(data.observations, leaf)
                old_distribution = detach_distribution(distribution)
                old_log_prob = old_distribution.log_prob(data.actions)
                step_loss = self._surrogate_loss(distribution, data, old_log_prob, total_tasks)
                step_gradient = torch.autograd.grad(weight * step_loss, list(leaf.values()))
            old_distributions.append(old_distribution)
            old_log_probs.append(old_log_prob)
            cotangents.append(dict(zip(leaf, step_gradient, strict=True)))
            loss_value += weight * float(step_loss.detach())
        gradient = self.workers.sum(adaptation.pull_back(cotangents))
        (loss_value,) = self.workers.sum_floats([loss_value])

        fisher_products = [
            self.policy.fisher_product(data.observations, point, weight * data.weights / total_tasks)
            if weight > 0.0
            else _zero_product  # without MSL only the last step is in the trust region
            for weight, point, data in zip(weights, adaptation.points[1:], targets, strict=True)
        ]
        damping = self.config.cg_damping

        def hessian_vector_product(vector: torch.Tensor) -> torch.Tensor:
            tangents = adaptation.push_forward(vector)
            products = [fisher(tangent) for fisher, tangent in zip(fisher_products, tangents, strict=True)]
            return self.workers.sum(adaptation.pull_back(products)) + damping * vector

        parameters = self.trust_region_parameters()

        def loss_and_kl(candidate: torch.Tensor) -> tuple[float, float]:
            candidate_parameters = unflatten_like(candidate, parameters)
            candidate_theta = _unprefixed(candidate_parameters, POLICY_PREFIX)
            with self.rates_set_to(_unprefixed(candidate_parameters, RATES_PREFIX)):
                candidate_points = self.adaptation_points(candidate_theta, batch.inner, batch.shard.size)[1:]
                with torch.no_grad():
                    candidate_loss, candidate_kl = self.multi_step_surrogate(
                        candidate_points, batch, old_distributions, old_log_probs, weights
                    )
            total_loss, total_kl = self.workers.sum_floats([candidate_loss, candidate_kl])
            return total_loss, total_kl

        return TrustRegionProblem(loss_value, gradient, hessian_vector_product, loss_and_kl)

    def meta_update(self, batch: MetaBatch) -> dict[str, float]:
        """One TRPO step on (θ, α) for the multi-step surrogate under its weighted KL, to first or second order as
        the derivative-order schedule says; the parameters are restored if the line search accepts no step."""
        iteration = self.meta_iterations_done
        second_order = self.second_order(iteration)
        weights = self.step_loss_weights(iteration)
        start = time.perf_counter()
        problem = self.trust_region_problem(batch, weights, second_order)
        if not (math.isfinite(problem.loss) and torch.isfinite(problem.gradient).all()):
            raise FloatingPointError(f"non-finite surrogate loss ({problem.loss}) or meta-gradient; update skipped")
        timings = {"time/inner_and_gradient_s": time.perf_counter() - start}
        result, step_timings = self.apply_trpo_step(
            self.trust_region_parameters(),
            problem.gradient,
            problem.hessian_vector_product,
            problem.loss_and_kl,
            problem.loss,
            curvature_setup_seconds=0.0,
        )
        timings.update({f"time/{phase}": seconds for phase, seconds in step_timings.items()})
        self.meta_iterations_done += 1
        return {
            "losses/surrogate_before": problem.loss,
            "losses/surrogate_after": result.loss if result.accepted else problem.loss,
            "losses/kl": result.kl if result.accepted else 0.0,
            "losses/line_search_accepted": float(result.accepted),
            "losses/step_fraction": result.step_fraction if result.accepted else 0.0,
            **self.schedule_metrics(weights, second_order),
            **timings,
        }

    def linearised_adaptation(self, batch: MetaBatch, second_order: bool) -> LinearisedAdaptation:
        """This process's tasks adapted from the current (θ, α), cut from the graph, with what the adaptation's
        Jacobian needs: each step's inner gradient and inner-loss Hessian product (none in first order)."""
        theta = detach_params(dict(self.policy.named_parameters()))
        points, steps, inner_gradients = self._adapt_detached(theta, batch.inner, batch.shard.size)
        hessians = [hessian_product if second_order else None for _, hessian_product in steps]
        rates = [self.step_rates(step, step_size) for step, (step_size, _) in enumerate(steps)]
        return LinearisedAdaptation(theta, points, inner_gradients, hessians, rates, self.lslr is not None)

    def step_rates(self, step: int, step_size: float) -> dict[str, torch.Tensor | float]:
        """Each parameter tensor's step size in inner step ``step``: LSLR's learned one, or the configured one."""
        if self.lslr is None:
            return {name: step_size for name, _ in self.policy.named_parameters()}
        k = min(step, self.lslr.num_steps - 1)
        return {name: self.lslr[step_size_key(name)][k].detach() for name, _ in self.policy.named_parameters()}

    @contextlib.contextmanager
    def rates_set_to(self, rates: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """LSLR's rates replaced by ``rates`` (by name) inside the block, as the line search's candidates need, and
        restored after it (the accepted candidate is written by the TRPO step itself)."""
        if self.lslr is None:
            yield
            return
        saved = {name: value.detach().clone() for name, value in self.lslr.named_parameters()}
        try:
            with torch.no_grad():
                for name, value in self.lslr.named_parameters():
                    value.copy_(rates[name])
            yield
        finally:
            with torch.no_grad():
                for name, value in self.lslr.named_parameters():
                    value.copy_(saved[name])


class LinearisedAdaptation:
    """The adaptation θ'_k = θ'_{k-1} - α_k ⊙ g_k(θ'_{k-1}) of every task, linearised in (θ, α) at the current point.

    α_k ⊙ scales each parameter tensor by its rate in step k (LSLR's α_{k,l}, or the configured step size), g_k is
    the inner loss's gradient. The Jacobian of step k's parameters applies, in tangents,

        δθ'_k = δθ'_{k-1} - α_k ⊙ (H_k δθ'_{k-1}) - δα_k ⊙ g_k,   δθ'_0 = δθ for every task,

    with H_k the inner loss's Hessian at θ'_{k-1} (left out in first order, where g_k is a constant), and its
    transpose the same steps in reverse: ū_{k-1} = ū_k - H_k (α_k ⊙ ū_k), ᾱ_k = -Σ_{tasks, entries} g_k ⊙ ū_k per
    tensor, θ̄ = Σ_tasks ū_0. Both are the policy's written-out R-operators (:mod:`metarl.agents.curvature`), as
    MAML-TRPO's are; the flat vector is θ's entries, then (with LSLR) the rates, in
    :meth:`MAMLPlusPlusTRPO.trust_region_parameters`'s order.
    """

    def __init__(
        self,
        theta: Params,
        points: list[Params],
        inner_gradients: list[Params],
        hessians: list[HessianProduct | None],
        rates: list[dict[str, torch.Tensor | float]],
        learned_rates: bool,
    ) -> None:
        self.theta = theta
        self.points = points
        self.inner_gradients = inner_gradients
        self.hessians = hessians
        self.rates = rates
        self.learned_rates = learned_rates
        self.num_tasks = next(iter(points[0].values())).shape[0]
        self.num_steps = len(inner_gradients)
        self.num_theta = sum(value.numel() for value in theta.values())

    def push_forward(self, vector: torch.Tensor) -> list[Params]:
        """J_k v for every step k = 1..K: the tangents of each step's parameters (per task) along ``vector``."""
        theta_part = unflatten_like(vector[: self.num_theta], self.theta)
        rate_tangents = vector[self.num_theta :].reshape(len(self.theta), -1) if self.learned_rates else None
        tangent = {name: value.unsqueeze(0).expand(self.num_tasks, *value.shape) for name, value in theta_part.items()}
        tangents = []
        for step in range(self.num_steps):
            hessian, rates, gradient = self.hessians[step], self.rates[step], self.inner_gradients[step]
            curvature = hessian(tangent) if hessian is not None else None
            new_tangent = {}
            for index, (name, value) in enumerate(tangent.items()):
                if curvature is not None:
                    value = value - rates[name] * curvature[name]
                if rate_tangents is not None:
                    value = value - rate_tangents[index, step] * gradient[name]
                new_tangent[name] = value
            tangent = new_tangent
            tangents.append(tangent)
        return tangents

    def pull_back(self, cotangents: Sequence[Params]) -> torch.Tensor:
        """Σ_k J_kᵀ u_k: the flat (θ, α) vector of the per-task cotangents ``u_k`` of each step's parameters."""
        adjoint = {name: torch.zeros_like(value) for name, value in self.points[0].items()}
        like = next(iter(adjoint.values()))
        rate_adjoints = torch.zeros(len(self.theta), self.num_steps, dtype=like.dtype, device=like.device)
        for step in reversed(range(self.num_steps)):
            adjoint = {name: value + cotangents[step][name] for name, value in adjoint.items()}
            hessian, rates, gradient = self.hessians[step], self.rates[step], self.inner_gradients[step]
            for index, name in enumerate(adjoint):
                rate_adjoints[index, step] = -(gradient[name] * adjoint[name]).sum()
            if hessian is not None:
                curvature = hessian({name: rates[name] * value for name, value in adjoint.items()})
                adjoint = {name: value - curvature[name] for name, value in adjoint.items()}
        theta_gradient = flatten_tensors([value.sum(dim=0) for value in adjoint.values()])
        if not self.learned_rates:
            return theta_gradient
        return torch.cat([theta_gradient, rate_adjoints.flatten()])


def _zero_product(vectors: Params) -> Params:
    return {name: torch.zeros_like(value) for name, value in vectors.items()}


def _unprefixed(parameters: Mapping[str, torch.Tensor], prefix: str) -> Params:
    """The entries of ``parameters`` whose name starts with ``prefix``, under their names without it."""
    return {name[len(prefix) :]: value for name, value in parameters.items() if name.startswith(prefix)}


register_agent("maml-plus-plus-trpo", MAMLPlusPlusTRPO, MAMLPlusPlusTRPOConfig)
