"""Reptile for RL: adapt each task with policy-gradient steps, then move the meta-parameters toward the results.

The cheap first-order alternative to MAML: no meta-gradient at all. It shares MAML's sampling and inner loop
(:class:`metarl.agents.inner_loop.InnerLoopAgent`) and replaces the outer update by θ ← θ + ε · mean_t(θ'_t - θ).

References:
    Nichol, Achiam, Schulman. "On First-Order Meta-Learning Algorithms", arXiv:1803.02999, 2018.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import torch
from metarl.agents.inner_loop import InnerLoopAgent, InnerLoopConfig, MetaBatch

from metarl.config import check_positive_numbers
from metarl.registry import register_agent


@dataclasses.dataclass
class ReptileConfig(InnerLoopConfig):
    """Reptile's fields: the inner loop's and the outer step's size."""

    algo: str = "reptile"
    reptile_step_size: float = 0.5
    """The fraction of the way the meta-parameters move toward the mean adapted parameters."""

    def validate(self) -> None:
        super().validate()
        check_positive_numbers(self, "reptile_step_size")


class Reptile(InnerLoopAgent):
    """Reptile: adapt each task, then move θ part of the way (reptile_step_size) to the mean adapted parameters."""

    update_floats_per_step: ClassVar[float] = 2.0
    """Memory estimate: no outer graph, only the adaptation's derivatives (1.8 measured)."""

    def meta_update(self, batch: MetaBatch) -> dict[str, float]:
        start = time.perf_counter()
        step_size = self.config.reptile_step_size
        with torch.no_grad():
            distance = 0.0
            for name, parameter in self.policy.named_parameters():
                # the mean over the whole meta-batch: each process sums its tasks
                difference = self.workers.sum(batch.adapted[name].sum(dim=0)) / batch.shard.total - parameter
                parameter.add_(step_size * difference)
                distance += float(difference.pow(2).sum())
        return {"losses/adaptation_distance": distance**0.5, "time/outer_update_s": time.perf_counter() - start}


register_agent("reptile", Reptile, ReptileConfig)
