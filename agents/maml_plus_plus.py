"""MAML++ for meta-RL: MAML-PPO with the paper's fixes, each a config switch that defaults to the paper's choice.

One meta-iteration is MAML-PPO's (:class:`metarl.agents.maml_ppo.MAMLPPO`): sample every task of the meta-batch and
adapt it with K policy-gradient steps, collecting episodes after each step (:class:`metarl.agents.inner_loop.MetaBatch`
``inner[k]`` before step k, ``post`` after the last), then ``ppo_epochs`` Adam steps on PPO's clipped surrogate
through the adaptation. MAML++ changes it in four places:

- **LSLR** (``lslr``): the inner update of step k is θ_{k+1} = θ_k - α_{k,l} ∇_l L_inner for each parameter tensor l
  (weight or bias of a layer, the log std), one learned scalar α_{k,l} per tensor and step, initialised at
  ``inner_step_sizes`` and meta-learned with θ by the same Adam steps (the outer loss reaches them through the
  adapted parameters). Evaluation uses the learned rates too (``eval_step_sizes`` is then unused); an evaluation with
  more steps than were trained (``eval_steps`` > ``num_inner_steps``) reuses the last trained step's rates for every
  extra step, as the fixed step sizes' "the last one repeats" does.
- **Multi-step loss** (``multi_step_loss``): the outer loss is Σ_k w_k L_k, L_k the clipped surrogate of the
  policies after inner step k on the episodes collected with them (``inner[k]`` for k < K, ``post`` for k = K), so
  every step's adapted policy gets a direct learning signal. The weights start uniform (1/K each); over
  ``msl_annealing_iterations`` meta-iterations each non-final weight decays linearly to its floor
  ``msl_floor / K`` and the final one grows so that they sum to 1 (the authors' code:
  ``get_per_step_loss_importance_vector``, :func:`multi_step_loss_weights`).
- **Derivative-order annealing** (``first_order_iterations``): the first N meta-iterations differentiate the
  adaptation to first order (FO-MAML: the inner gradients are constants), the rest to second order.
- **Cosine annealing of the outer learning rate** (``cosine_annealing``): Adam's rate follows
  η_i = η_min + (η_max - η_min)(1 + cos(π i / I)) / 2 over the run's I iterations, from ``ppo_learning_rate`` to
  ``min_learning_rate`` (:func:`cosine_learning_rate`).

The schedules count the meta-updates this agent has made (a counter in its state, so that a resumed run continues
them exactly); an update the trainer's NaN guard skips is not counted, and extending a finished run with
``iterations=`` stretches the cosine schedule to the new total from there.

Not carried over: the paper's per-step batch normalisation (BNRS, per-step running statistics; BNWB, per-step
weights and biases) does not apply, since the suite's policies are MLPs without batch normalisation (a policy-gradient
batch is the episodes of one task, its statistics would be the task's). ProMP's KL penalty (``ppo_kl_coeff``) still
applies; Meta-SGD's per-entry step sizes (``meta_sgd``) are the alternative to LSLR, and the two are not combined.

The first three changes are not tied to PPO: :class:`MAMLPlusPlusSwitches` and :class:`MAMLPlusPlusInnerLoop` hold
them for both outer loops, and ``maml-plus-plus-trpo`` (:mod:`metarl.agents.maml_plus_plus_trpo`) puts them on
MAML-TRPO's trust-region step, where the learned rates move inside the trust region with θ.

References:
    Antoniou, Edwards, Storkey. "How to train your MAML", ICLR 2019.
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Schulman et al. "Proximal Policy Optimization Algorithms", arXiv:1707.06347, 2017.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from metarl.agents.inner_loop import (
    MetaBatch,
    Params,
    PolicyGradientData,
    average_per_task,
    detach_distribution,
    detach_params,
    mean_kl,
)
from metarl.agents.maml_ppo import MAMLPPO, MAMLPPOConfig
from metarl.agents.meta_sgd import PerStepLayerStepSizes

from metarl.config import check_at_least, check_positive_numbers, check_unit_interval
from metarl.distributed import Workers
from metarl.registry import register_agent
from metarl.tasks import TaskFamily


@dataclasses.dataclass
class MAMLPlusPlusSwitches:
    """The switches MAML++ adds to either outer loop (``maml-plus-plus``: PPO; ``maml-plus-plus-trpo``: TRPO), mixed
    into the outer loop's config."""

    lslr: bool = True
    """LSLR: learn one inner step size per parameter tensor and per inner step (initialised at
    ``inner_step_sizes``); evaluation steps beyond ``num_inner_steps`` reuse the last step's rates."""
    multi_step_loss: bool = True
    """MSL: the outer loss is the weighted sum of the surrogates after every inner step (false: the last step's)."""
    msl_annealing_iterations: int = 10
    """Meta-iterations over which the multi-step loss's weights go from uniform to the last step (the authors' code:
    15 of its 100-150 epochs); at most ``iterations``."""
    msl_floor: float = 0.03
    """Where each non-final weight's decay stops, as a fraction of its uniform start 1/K (the authors' code: 0.03;
    0: all weight on the last step after the annealing)."""
    first_order_iterations: int = 25
    """Derivative-order annealing: meta-iterations of first-order meta-gradients before second order (the paper:
    its first 50 of 150 epochs); less than ``iterations`` (0: second order throughout; ``first_order=true``: first
    order throughout)."""

    def validate_switches(self) -> None:
        """The switches' own checks and their schedules against the run's length (``iterations``)."""
        check_at_least(self, 0, "first_order_iterations")
        check_at_least(self, 1, "msl_annealing_iterations")
        check_unit_interval(self, "msl_floor")
        iterations = self.iterations  # type: ignore[attr-defined]  # RunConfig's, beside which this is mixed in
        if not self.first_order and self.first_order_iterations >= iterations:  # type: ignore[attr-defined]
            raise ValueError(
                f"first_order_iterations {self.first_order_iterations} must be < iterations {iterations} "
                "(the run would never reach second order); lower it, or set first_order=true for a first-order run"
            )
        if self.multi_step_loss and self.msl_annealing_iterations > iterations:
            raise ValueError(
                f"msl_annealing_iterations {self.msl_annealing_iterations} must be <= iterations {iterations} "
                "(the multi-step loss's weights would never reach the last step); lower it"
            )


@dataclasses.dataclass
class MAMLPlusPlusConfig(MAMLPPOConfig, MAMLPlusPlusSwitches):
    """MAML++'s fields: MAML-PPO's, the switches (and their schedules) and the cosine learning rate."""

    algo: str = "maml-plus-plus"
    num_inner_steps: int = 2
    """Policy-gradient adaptation steps during meta-training (2 by default: with one step the multi-step loss and
    the per-step rates are MAML-PPO's plain loss and a per-layer rate)."""
    cosine_annealing: bool = True
    """Anneal Adam's learning rate from ``ppo_learning_rate`` to ``min_learning_rate`` on a cosine over the run."""
    min_learning_rate: float = 1e-5
    """The cosine schedule's final learning rate (the authors' code: 1e-5); at most ``ppo_learning_rate``."""

    def validate(self) -> None:
        super().validate()
        self.validate_switches()
        check_positive_numbers(self, "min_learning_rate", zero_allowed=True)
        if self.cosine_annealing and self.min_learning_rate > self.ppo_learning_rate:
            raise ValueError(
                f"min_learning_rate {self.min_learning_rate} must be <= ppo_learning_rate {self.ppo_learning_rate}"
            )
        if self.lslr and self.meta_sgd:
            raise ValueError("lslr and meta_sgd both learn the inner step sizes: set one of them to false")


def multi_step_loss_weights(num_steps: int, iteration: int, annealing_iterations: int, floor: float) -> list[float]:
    """The multi-step loss's weight of each inner step's surrogate at meta-iteration ``iteration`` (0-based).

    Uniform (1/K) at iteration 0; each non-final weight decays by 1/(K · annealing_iterations) per iteration down to
    ``floor / K``, and the final one grows by as much as the others lose, up to 1 - (K - 1) · floor / K, so that they
    always sum to 1 and reach their end values at ``annealing_iterations`` (the authors' code,
    ``get_per_step_loss_importance_vector``).
    """
    if num_steps == 1:
        return [1.0]
    decay = iteration / (num_steps * annealing_iterations)
    minimum = floor / num_steps
    weights = [max(1.0 / num_steps - decay, minimum) for _ in range(num_steps - 1)]
    weights.append(min(1.0 / num_steps + (num_steps - 1) * decay, 1.0 - (num_steps - 1) * minimum))
    return weights


def cosine_learning_rate(iteration: int, iterations: int, maximum: float, minimum: float) -> float:
    """η_i = η_min + (η_max - η_min)(1 + cos(π i / I)) / 2: ``maximum`` at iteration 0, ``minimum`` at ``iterations``
    (and after)."""
    progress = min(iteration, iterations) / iterations
    return minimum + (maximum - minimum) * (1.0 + math.cos(math.pi * progress)) / 2.0


class MAMLPlusPlusInnerLoop:
    """MAML++'s parts that do not depend on the outer loop, mixed in before it (``class X(MAMLPlusPlusInnerLoop,
    OuterLoop)``): LSLR's inner update, the multi-step loss's weights and the derivative-order schedule, the old
    policies after every inner step, and their state. The outer loop's ``__init__`` calls :meth:`add_plus_plus`."""

    config: Any
    policy: Any
    device: torch.device

    def add_plus_plus(self) -> None:
        """LSLR's rates (with ``lslr``) and the count of meta-updates the schedules follow."""
        self.lslr: PerStepLayerStepSizes | None = None
        if self.config.lslr:
            initial = self.step_sizes(self.config.num_inner_steps)  # type: ignore[attr-defined]
            self.lslr = PerStepLayerStepSizes(self.policy, initial).to(self.device)
        self.meta_iterations_done = 0

    # -- the schedules -------------------------------------------------------------------------------------------
    def step_loss_weights(self, iteration: int) -> list[float]:
        """The weight of the surrogate after each inner step at meta-iteration ``iteration`` (0-based)."""
        config = self.config
        if not config.multi_step_loss:
            return [0.0] * (config.num_inner_steps - 1) + [1.0]
        return multi_step_loss_weights(
            config.num_inner_steps, iteration, config.msl_annealing_iterations, config.msl_floor
        )

    def second_order(self, iteration: int) -> bool:
        """Whether meta-iteration ``iteration`` differentiates through the inner gradients."""
        return not self.config.first_order and iteration >= self.config.first_order_iterations

    # -- the inner loop --------------------------------------------------------------------------------------------
    def inner_update(self, params: Params, grads: Sequence[torch.Tensor], step_size: float, step: int = 0) -> Params:
        """θ - α_{k,l} g with LSLR's learned rate of step ``step`` and tensor l; without LSLR the outer loop's."""
        if self.lslr is None:
            return super().inner_update(params, grads, step_size, step=step)  # type: ignore[misc]
        return self.lslr.step(params, grads, step)

    def old_distributions(self, theta: Params, batch: MetaBatch) -> list[Any]:
        """The distributions, cut from the graph, of the policies after each inner step (adapted from the current θ)
        on the episodes collected with them: the outer loop's old policies."""
        points = self.adaptation_path(theta, batch.inner, create_graph=False)[1:]  # type: ignore[attr-defined]
        return [
            detach_distribution(self.policy.distribution(data.observations, detach_params(point)))
            for data, point in zip(step_targets(batch), points, strict=True)
        ]

    def schedule_metrics(self, weights: Sequence[float], second_order: bool) -> dict[str, float]:
        """The derivative order, the multi-step loss's weights and LSLR's mean rate of each step, for the log."""
        metrics = {
            "schedule/second_order": float(second_order),
            **{f"schedule/msl_weight_step_{k + 1}": weight for k, weight in enumerate(weights)},
        }
        if self.lslr is not None:
            rates = torch.stack([value.detach() for value in self.lslr.values()])  # [tensors, K]
            metrics.update(
                {f"lslr/mean_step_size_step_{k + 1}": float(rates[:, k].mean()) for k in range(len(weights))}
            )
        return metrics

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "meta_iterations_done": self.meta_iterations_done}  # type: ignore[misc]
        if self.lslr is not None:
            state["lslr"] = self.lslr.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.lslr is not None:
            self.lslr.load_state_dict(state["lslr"])
        super().load_state_dict(state)  # type: ignore[misc]
        self.meta_iterations_done = int(state["meta_iterations_done"])


def step_targets(batch: MetaBatch) -> list[PolicyGradientData]:
    """The episodes each inner step's adapted policies collected: ``inner[k]`` after step k < K, ``post`` after the
    last; the multi-step loss's data."""
    return [*batch.inner[1:], batch.post]


class MAMLPlusPlus(MAMLPlusPlusInnerLoop, MAMLPPO):
    """MAML++ (LSLR, multi-step loss, derivative-order annealing, cosine learning rate) on MAML-PPO's outer loop.

    ``algo=maml-plus-plus``.

    References:
        Antoniou, Edwards, Storkey. "How to train your MAML", ICLR 2019.
    """

    def __init__(
        self, family: TaskFamily, config: MAMLPlusPlusConfig, device: torch.device, workers: Workers | None = None
    ) -> None:
        super().__init__(family, config, device, workers)
        self.add_plus_plus()
        if self.lslr is not None:  # MAMLPPO's optimiser was made before the rates existed
            self.optimizer = torch.optim.Adam(self.optimizer_parameters(), lr=config.ppo_learning_rate)

    def optimizer_parameters(self) -> list[torch.nn.Parameter]:
        """The policy's parameters and, with LSLR, its step sizes (Meta-SGD's with ``meta_sgd``)."""
        parameters = super().optimizer_parameters()
        if getattr(self, "lslr", None) is not None:
            parameters += list(self.lslr.parameters())
        return parameters

    def learning_rate(self, iteration: int) -> float:
        """Adam's learning rate at meta-iteration ``iteration`` (0-based)."""
        config = self.config
        if not config.cosine_annealing:
            return config.ppo_learning_rate
        return cosine_learning_rate(iteration, config.iterations, config.ppo_learning_rate, config.min_learning_rate)

    # -- the outer loop --------------------------------------------------------------------------------------------
    def multi_step_loss(
        self,
        theta: Params,
        batch: MetaBatch,
        old_log_probs: Sequence[torch.Tensor],
        weights: Sequence[float],
        create_graph: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Σ_k w_k L_k: each inner step's clipped surrogate on the episodes its policies collected, weighted; also the
        last step's probability ratio and distribution, for the metrics. ``create_graph``: second order."""
        points = self.adaptation_path(theta, batch.inner, create_graph=create_graph)[1:]
        loss: torch.Tensor | float = 0.0
        for weight, point, data, old in zip(weights, points, step_targets(batch), old_log_probs, strict=True):
            if weight == 0.0:  # without MSL only the last step's surrogate counts
                continue
            step_loss, ratio, distribution = self.clipped_surrogate_loss(point, data, old, batch.shard.total)
            loss = loss + weight * step_loss
        assert isinstance(loss, torch.Tensor)  # the last weight is at least 1/K
        return loss, ratio, distribution

    def meta_update(self, batch: MetaBatch) -> dict[str, float]:
        """Adam epochs on the multi-step clipped surrogate, re-adapting at every epoch, to first or second order as
        the derivative-order schedule says, at the cosine schedule's learning rate."""
        config = self.config
        start = time.perf_counter()
        iteration = self.meta_iterations_done
        learning_rate = self.learning_rate(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        second_order = self.second_order(iteration)
        weights = self.step_loss_weights(iteration)
        theta = dict(self.policy.named_parameters())
        total_tasks = batch.shard.total
        old_distributions = self.old_distributions(theta, batch)
        old_log_probs = [
            old.log_prob(data.actions) for old, data in zip(old_distributions, step_targets(batch), strict=True)
        ]
        pre = batch.inner[0]
        old_pre_distribution = detach_distribution(self.policy.distribution(pre.observations, detach_params(theta)))
        for _ in range(config.ppo_epochs):
            loss, ratio, distribution = self.multi_step_loss(theta, batch, old_log_probs, weights, second_order)
            if config.ppo_kl_coeff > 0:  # ProMP's penalty, as in MAML-PPO
                pre_distribution = self.policy.distribution(pre.observations, theta)
                loss = loss + config.ppo_kl_coeff * mean_kl(
                    pre_distribution, old_pre_distribution, pre.weights, total_tasks
                )
            # the whole meta-batch's loss decides, so that every process skips together
            (total_loss,) = self.workers.sum_floats([loss])
            if not math.isfinite(total_loss):
                raise FloatingPointError(f"non-finite MAML++ loss ({total_loss}); update skipped")
            self.optimizer.zero_grad()
            loss.backward()
            self.workers.sum_gradients(self.optimizer_parameters())
            self.optimizer.step()
        with torch.no_grad():  # the last step's, as MAML-PPO's
            clip_fraction = average_per_task(((ratio - 1.0).abs() > config.ppo_clip).float(), batch.post.weights)
            kl = mean_kl(distribution, old_distributions[-1], batch.post.weights, total_tasks)
        total_kl, total_clip_fraction = self.workers.sum_floats([kl, clip_fraction.sum() / total_tasks])
        self.meta_iterations_done += 1
        metrics = {
            "losses/ppo_loss": total_loss,
            "losses/kl": total_kl,
            "losses/clip_fraction": total_clip_fraction,
            "schedule/learning_rate": learning_rate,
            **self.schedule_metrics(weights, second_order),
            "time/outer_update_s": time.perf_counter() - start,
        }
        return metrics


register_agent("maml-plus-plus", MAMLPlusPlus, MAMLPlusPlusConfig)
