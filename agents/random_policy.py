"""The random baseline: the floor every meta-learner must beat (its policy: :class:`metarl.rollout.RandomPolicy`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from metarl.agents.non_adaptive import NonAdaptiveAgent, NonAdaptiveConfig

from metarl.registry import register_agent
from metarl.rollout import RandomPolicy


@dataclasses.dataclass
class RandomConfig(NonAdaptiveConfig):
    """The random baseline's fields: how its curve is measured."""

    algo: str = "random"


class RandomAgent(NonAdaptiveAgent):
    """Baseline: uniformly random actions; nothing to learn (``algo=random``).

    It fits the trainer and the evaluator like any agent, so that ``metarl train --algo random iterations=1`` makes
    a run folder that ``metarl evaluate`` compares with the others.
    """

    def rollout_policy(self, tasks: Sequence[Any], rng: np.random.Generator) -> RandomPolicy:
        return RandomPolicy(self.family.action_space, seed=int(rng.integers(2**31)), device=self.device)

    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        """Nothing to learn; the return of random episodes on the meta-batch, for the logs."""
        return {"meta/return_pre_adapt": float(self.adaptation_curve(tasks, rng, 1).returns.mean())}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """No parameters."""


register_agent("random", RandomAgent, RandomConfig)
