"""The meta-agent protocol: what the trainer, the evaluator, checkpoints and ``torchrun`` ask of an algorithm.

An algorithm is a class with the members of :class:`MetaAgent` and a config dataclass (a subclass of
:class:`metarl.config.RunConfig` holding its own fields), registered under a name with
:func:`metarl.registry.register_agent`. Nothing in ``metarl/`` names an algorithm: the trainer draws the tasks of
each meta-iteration and calls ``train_step``; validation, the final test and ``metarl evaluate`` call
``adaptation_curve``; checkpoints hold ``state_dict()``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np
import torch

from metarl.config import RunConfig
from metarl.distributed import Workers
from metarl.tasks import TaskFamily
from metarl.trials import TrialBatch


class CurveKind(enum.StrEnum):
    """What the points of an agent's adaptation curve are."""

    STEP = "step"
    """The return after k gradient steps of adaptation, k = 0, 1, ..., K (MAML and its baselines)."""
    EPISODE = "episode"
    """The return of the k-th episode of a trial, k = 1, ..., n, memory carried across them (RL², classical)."""

    @property
    def first_point(self) -> int:
        """The number of the curve's first point: step 0 or episode 1."""
        return 0 if self is CurveKind.STEP else 1

    @property
    def axis_label(self) -> str:
        """The x axis of a plot of such curves."""
        return "adaptation steps" if self is CurveKind.STEP else "episode of the trial"


class AdaptationCurve(NamedTuple):
    """What an agent's ``adaptation_curve`` returns: one value per point of its adaptation and task."""

    returns: np.ndarray
    """``[num_points, num_tasks]`` float64 mean episode return."""
    success: np.ndarray | None
    """``[num_points, num_tasks]`` float64 share of the episodes that succeeded (any step with
    ``info["success"]``), or ``None`` when the family does not define success."""

    @classmethod
    def from_tensors(cls, returns: Sequence[torch.Tensor], success: Sequence[torch.Tensor] | None) -> AdaptationCurve:
        """From per-point ``[num_tasks]`` tensors (on any device)."""

        def stacked(values: Sequence[torch.Tensor]) -> np.ndarray:
            return torch.stack(list(values)).cpu().numpy().astype(np.float64)

        return cls(stacked(returns), None if success is None else stacked(success))

    def means_over_tasks(self) -> tuple[list[float], list[float] | None]:
        """The mean return at each point, and the mean success rate (``None`` where success is not defined)."""
        success = None if self.success is None else self.success.mean(axis=1).tolist()
        return self.returns.mean(axis=1).tolist(), success

    @classmethod
    def from_trials(cls, batch: TrialBatch) -> AdaptationCurve:
        """One trial per task: each episode of the trial is a point."""
        successes = batch.episode_successes
        return cls.from_tensors(batch.episode_returns.T, None if successes is None else successes.T)


class MetaAgent(Protocol):
    """A meta-learning algorithm (or a baseline) as the suite runs it.

    Constructed as ``AgentClass(family, config, device, workers)``: ``config`` is the algorithm's own config class
    (the run's common fields and its own), ``workers`` the processes of a ``torchrun`` job (one process otherwise;
    an agent with ``trains_across_processes = False`` is only ever given one).

    Optional: a classmethod ``memory_estimate(config, family) -> metarl.budget.MemoryEstimate``, the memory the
    run's largest step needs (its buffers, from the config and the family's spaces and horizon). With it the trainer
    refuses a run that cannot fit in the memory available before anything is written
    (:func:`metarl.budget.check_memory_budget`); without it nothing is checked.

    Optional, together: ``buffers_state_dict()`` and ``load_buffers_state_dict(state)``, state that a resumed run
    needs but that is too large to copy before every update or to keep in ``best.pt`` (PEARL's replay buffers). The
    trainer saves it beside ``last.pt`` as ``buffers-<iteration>.pt`` and restores it on resume
    (:data:`metarl.checkpoint.BUFFERS_CHECKPOINT_PREFIX`); a skipped update does not undo it.
    """

    curve_kind: ClassVar[CurveKind]
    """What the points of :meth:`adaptation_curve` are."""
    trains_across_processes: ClassVar[bool]
    """Whether :meth:`train_step` and :meth:`adaptation_curve` split a meta-batch over ``workers`` (each process
    handles its block and the agent reduces what its update needs); ``False``: the trainer refuses ``torchrun``."""
    progress_metrics: ClassVar[tuple[str, ...]]
    """Prefixes of the :meth:`train_step` metrics the terminal's progress line shows (``meta/return_step``, ...)."""

    def __init__(self, family: TaskFamily, config: RunConfig, device: torch.device, workers: Workers) -> None: ...

    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        """One meta-update on a meta-batch of training ``tasks`` (every process is given the whole meta-batch);
        ``rng`` seeds the episodes. Returns finite scalar metrics for the logs (``time/...`` keys are wall-clock
        seconds)."""
        ...

    def adaptation_curve(self, tasks: Sequence[Any], rng: np.random.Generator, num_points: int) -> AdaptationCurve:
        """Each task's mean return (and success rate) at each of ``num_points`` points of adaptation to it."""
        ...

    def default_num_points(self) -> int:
        """How many points the validation and test curves have (``eval_steps + 1``, ``trial_episodes``, ...)."""
        ...

    def selection_score(self, curve: Sequence[float]) -> float:
        """The validation number the kept parameters maximise, from the mean return at each point."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes in training (parameters, optimiser state, normalisers, learned step sizes), as
        tensors and plain Python values that ``torch.load(weights_only=True)`` reads back."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` exactly."""
        ...


PROTOCOL_METHODS = (
    "train_step",
    "adaptation_curve",
    "default_num_points",
    "selection_score",
    "state_dict",
    "load_state_dict",
)
"""The methods :func:`metarl.registry.register_agent` checks a class for."""
PROTOCOL_ATTRIBUTES = {"curve_kind": CurveKind, "trains_across_processes": bool, "progress_metrics": tuple}
"""The class attributes it checks, with their types."""
OPTIONAL_METHODS = ("memory_estimate", "buffers_state_dict", "load_buffers_state_dict")
"""Methods an agent class may have: :func:`metarl.registry.register_agent` checks that they are callable where present
(``memory_estimate``, a classmethod: :mod:`metarl.budget`; the buffers pair: see :class:`MetaAgent`)."""
