"""The multi-task pretraining baseline of the MAML paper: pretrain on all training tasks, fine-tune on a new one.

One policy is trained with TRPO on the pooled episodes of the training tasks, with the meta-batch, episodes and
iterations of MAML (the same budget), but with no inner loop in its objective: it maximises the return before any
adaptation. At evaluation it is fine-tuned on each new task exactly as MAML adapts: the same number of vanilla
policy-gradient steps with the same step sizes and the same episodes (the evaluator's ``adaptation_curve`` is
MAML's). The difference between the two curves is what meta-learning the initialisation buys.

References:
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017, §5.3
    ("pretrained": one policy pretrained on all tasks, then fine-tuned).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from metarl.agents.maml_trpo import MAMLTRPO, MAMLTRPOConfig

from metarl.registry import register_agent


@dataclasses.dataclass
class PretrainTRPOConfig(MAMLTRPOConfig):
    """MAML-TRPO's fields: the same budget, TRPO settings and fine-tuning (``num_inner_steps`` and
    ``inner_step_sizes`` are unused in training: its objective has no inner loop)."""

    algo: str = "pretrain-trpo"


class MultiTaskPretrain(MAMLTRPO):
    """Baseline: one policy trained with TRPO on the pooled tasks, fine-tuned on a new task exactly as MAML adapts.

    MAML-TRPO's sampler, TRPO step, fine-tuning and evaluation, with an objective that has no inner loop."""

    @classmethod
    def training_samplings(cls, config: PretrainTRPOConfig) -> int:
        """One batch per training iteration: the pre-adaptation episodes its objective is computed on."""
        return 1

    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        """Collect episodes of every task with the current parameters and take one TRPO step on them all."""
        start = time.perf_counter()
        batch = self.sample(tasks, rng, num_steps=0, evaluation=False)  # pre-adaptation episodes only
        metrics = {"time/sample_s": time.perf_counter() - start}
        metrics.update(self.meta_update(batch))  # no inner steps: TRPO's plain surrogate on the pooled tasks
        metrics["meta/return_pre_adapt"] = batch.returns[0]
        return metrics

    def selection_score(self, curve: Sequence[float]) -> float:
        """Validation picks the parameters by the return after one fine-tuning step, as MAML's are picked."""
        return curve[min(1, len(curve) - 1)]


register_agent("pretrain-trpo", MultiTaskPretrain, PretrainTRPOConfig)
