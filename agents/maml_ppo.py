"""MAML-PPO and ProMP: the batched policy-gradient inner loop with a clipped-PPO outer loop through the adaptation.

One meta-iteration: sample and adapt every task of the meta-batch (:class:`metarl.agents.inner_loop.InnerLoopAgent`),
then ``ppo_epochs`` Adam steps on the clipped post-adaptation surrogate. Each epoch re-adapts from the current
meta-parameters with autograd's graph kept (``adapt(create_graph=True)``), so the gradient flows through the inner
steps (second order; ``first_order`` cuts it). With ``ppo_kl_coeff`` > 0 the loss adds ProMP's penalty on the KL
between the old and the new pre-adaptation policies. With ``meta_sgd`` the inner step sizes are learned too, one per
parameter entry (:mod:`metarl.agents.meta_sgd`), by the same Adam steps.

Under ``torchrun`` the loss decides for the whole meta-batch (summed over processes) and the gradients are summed
before each step.

References:
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Schulman et al. "Proximal Policy Optimization Algorithms", arXiv:1707.06347, 2017.
    Rothfuss et al. "ProMP: Proximal Meta-Policy Search", ICLR 2019.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from metarl.agents.inner_loop import (
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
from metarl.agents.meta_sgd import LearnedStepSizes

from metarl.config import check_at_least, check_positive_numbers
from metarl.distributed import Workers
from metarl.registry import register_agent
from metarl.tasks import TaskFamily


@dataclasses.dataclass
class MAMLPPOConfig(InnerLoopConfig):
    """MAML-PPO's fields: the inner loop's, PPO's, ProMP's penalty and Meta-SGD's switch."""

    algo: str = "maml-ppo"
    ppo_epochs: int = 5
    """Adam epochs per meta-iteration, each re-adapting through the inner loop."""
    ppo_clip: float = 0.2
    """The clip range of the probability ratio."""
    ppo_learning_rate: float = 1e-3
    """Adam's learning rate, for the meta-parameters and Meta-SGD's step sizes."""
    ppo_kl_coeff: float = 0.0
    """Weight of ProMP's penalty on KL(old ‖ new) of the pre-adaptation policy (0: plain MAML-PPO)."""
    meta_sgd: bool = False
    """Meta-SGD: learn one inner step size per parameter entry (starting at ``inner_step_sizes[0]``)."""

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "ppo_epochs")
        check_positive_numbers(self, "ppo_clip ppo_learning_rate")
        check_positive_numbers(self, "ppo_kl_coeff", zero_allowed=True)


class MAMLPPO(InnerLoopAgent):
    """MAML-PPO: REINFORCE inner loop, clipped-PPO outer loop; ProMP with ppo_kl_coeff > 0, Meta-SGD with meta_sgd.

    ``algo=maml-ppo``."""

    update_floats_per_step: ClassVar[float] = 3.0
    """Memory estimate: each epoch's graph through the adaptation, freed before the next (2.8 measured)."""

    def __init__(
        self, family: TaskFamily, config: MAMLPPOConfig, device: torch.device, workers: Workers | None = None
    ) -> None:
        super().__init__(family, config, device, workers)
        self.learned_step_sizes: LearnedStepSizes | None = None
        if config.meta_sgd:
            self.learned_step_sizes = LearnedStepSizes(self.policy, config.inner_step_sizes[0]).to(device)
        self.optimizer = torch.optim.Adam(self.optimizer_parameters(), lr=config.ppo_learning_rate)

    def optimizer_parameters(self) -> list[torch.nn.Parameter]:
        """What the outer loop updates: the policy and, with Meta-SGD, the learned step sizes."""
        parameters = list(self.policy.parameters())
        if self.learned_step_sizes is not None:
            parameters += list(self.learned_step_sizes.parameters())
        return parameters

    def inner_update(self, params: Params, grads: Sequence[torch.Tensor], step_size: float, step: int = 0) -> Params:
        """θ - α g: α the configured step size, or Meta-SGD's learned per-entry one (the same at every step)."""
        if self.learned_step_sizes is None:
            return super().inner_update(params, grads, step_size, step=step)
        return self.learned_step_sizes.step(params, grads)

    def meta_update(self, batch: MetaBatch) -> dict[str, float]:
        """MAML-PPO: Adam epochs on the clipped post-adaptation surrogate, re-adapting (and differentiating through
        the inner loop) at every epoch; with ``ppo_kl_coeff`` > 0, ProMP's penalty on the KL between the old and
        new pre-adaptation policies."""
        config = self.config
        start = time.perf_counter()
        theta = dict(self.policy.named_parameters())
        total_tasks = batch.shard.total
        old_distribution = detach_distribution(
            self.policy.distribution(batch.post.observations, detach_params(self.adapt(theta, batch.inner, False)))
        )
        old_log_probs = old_distribution.log_prob(batch.post.actions)
        pre = batch.inner[0]
        old_pre_distribution = detach_distribution(self.policy.distribution(pre.observations, detach_params(theta)))
        for _ in range(config.ppo_epochs):
            adapted = self.adapt(theta, batch.inner, create_graph=not config.first_order)
            loss, ratio, distribution = self.clipped_surrogate_loss(adapted, batch.post, old_log_probs, total_tasks)
            if config.ppo_kl_coeff > 0:
                pre_distribution = self.policy.distribution(pre.observations, theta)
                pre_kl = mean_kl(pre_distribution, old_pre_distribution, pre.weights, total_tasks)
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
            clip_fraction = average_per_task(((ratio - 1.0).abs() > config.ppo_clip).float(), batch.post.weights)
            kl = mean_kl(distribution, old_distribution, batch.post.weights, total_tasks)
        total_kl, total_clip_fraction = self.workers.sum_floats([kl, clip_fraction.sum() / total_tasks])
        return {
            "losses/ppo_loss": total_loss,
            "losses/kl": total_kl,
            "losses/clip_fraction": total_clip_fraction,
            "time/outer_update_s": time.perf_counter() - start,
        }

    def clipped_surrogate_loss(
        self, adapted: Params, data: PolicyGradientData, old_log_probs: torch.Tensor, total_tasks: int
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """PPO's clipped surrogate of the adapted policies on ``data`` (collected with them), negated and averaged
        over the meta-batch's ``total_tasks`` (this process's share); also the probability ratio and the adapted
        policies' distribution, for the metrics."""
        distribution = self.policy.distribution(data.observations, adapted)
        ratio = torch.exp(distribution.log_prob(data.actions) - old_log_probs)
        clipped_ratio = ratio.clamp(1.0 - self.config.ppo_clip, 1.0 + self.config.ppo_clip)
        objective = torch.min(ratio * data.advantages, clipped_ratio * data.advantages)
        return -average_per_task(objective, data.weights).sum() / total_tasks, ratio, distribution

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.learned_step_sizes is not None:
            state["learned_step_sizes"] = self.learned_step_sizes.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if self.learned_step_sizes is not None:
            self.learned_step_sizes.load_state_dict(state["learned_step_sizes"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


register_agent("maml-ppo", MAMLPPO, MAMLPPOConfig)
