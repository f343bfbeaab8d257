"""The batched inner loop of the gradient-based meta-learners (MAML-TRPO, MAML-PPO, Meta-SGD, Reptile, pretraining).

What they share, as in the MAML paper's Algorithm 3 up to the outer update:

1. collect E episodes of every task with the meta-parameters θ (pre-adaptation);
2. adapt: K steps of vanilla policy gradient per task, θ'_t = θ - α_k ∇ L_inner(θ; D_t), collecting new episodes
   with the adapted parameters after each step;
3. hand the episodes to the algorithm's outer update (``meta_update``: TRPO in :mod:`metarl.agents.maml_trpo`, PPO in
   :mod:`metarl.agents.maml_ppo`, Reptile's interpolation in :mod:`metarl.agents.reptile`).

All tasks adapt at once: the meta-parameters are expanded to a leading task dimension and one batched autograd graph
computes every task's inner gradient (``batch_params``); ``adapt_per_task`` is the per-task loop kept as the
reference the tests compare against. The sampler's inner steps are cut from the graph and reuse the written-out
derivatives of the policy (:mod:`metarl.agents.curvature`), which also give the product with the inner loss's Hessian
that TRPO's curvature needs.

Under ``torchrun`` each process samples and adapts its block of the meta-batch (``self.workers.shard``); the
returns are summed over processes here, and each outer update sums what it needs.

References:
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from metarl.agents.policies import GaussianMLPPolicy, batch_params, make_policy

from metarl.advantages import (
    WEIGHTINGS,
    average_weights,
    discounted_returns,
    fit_and_predict_linear_baseline,
    gae,
    normalize_advantages,
)
from metarl.agent import AdaptationCurve, CurveKind
from metarl.budget import (
    FLOAT_BYTES,
    MemoryEstimate,
    action_floats,
    buffer_estimate,
    episode_step_bytes,
    largest,
    largest_task_set,
    observation_floats,
    with_sub_envs,
)
from metarl.config import RunConfig, check_at_least, check_choice, check_hidden_sizes, check_unit_interval
from metarl.distributed import TaskShard, Workers
from metarl.rollout import EpisodeBatch, collect_episodes
from metarl.tasks import TaskFamily

Params = dict[str, torch.Tensor]
HessianProduct = Callable[[Params], Params]
"""``v ↦ H v`` for per-task vectors (dicts with a leading task dim)."""

# Memory estimate (metarl.budget), calibrated on the peak resident memory of Navigation2D runs as episodes_per_task
# grows (20 -> 200; hidden sizes 64 and 256, 2 and 3 samplings): what a step costs beyond its episode buffers, in
# floats per unit of the policy's width (hidden units + observation + action sizes).
PROCESSED_STEP_BYTES = 8
"""A processed step's advantage and weight (float32 each), kept beside its episode buffers."""
EVALUATION_FLOATS_PER_STEP = 3.5
"""An evaluation's inner step: the policy's activations and derivatives over one sampling's steps (3.5 measured
with 2 and 4 samplings alike)."""


@dataclasses.dataclass
class InnerLoopConfig(RunConfig):
    """The fields of every algorithm built on the batched inner loop."""

    episodes_per_task: int = 20
    """Episodes collected per task before and after each adaptation step."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the MLP policy."""
    activation: str = "tanh"
    """Hidden activation: ``tanh`` or ``relu``."""
    min_log_std: float = -13.815510557964274
    """Gaussian policies: the floor of the log standard deviation (log 1e-6 by default, only an overflow guard, as
    pytorch-maml-rl's ``min_log_std``; rllab's ``min_std`` is the same knob)."""
    num_inner_steps: int = 1
    """Policy-gradient adaptation steps during meta-training."""
    inner_step_sizes: tuple[float, ...] = (0.1,)
    """Inner step size α per step (the last one repeats)."""
    first_order: bool = False
    """Ignore the second-order terms of the meta-gradient (FO-MAML)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE λ for the advantages (1.0: discounted return minus the linear baseline)."""
    weighting: str = "episode"
    """How a task's average over episodes of unequal length (an early termination) weighs them, in the advantage
    normalisation, the inner loss, the surrogate, the KL and TRPO's curvature alike: ``episode`` (each episode's
    time-average, then the mean over episodes: pytorch-maml-rl) or ``step`` (every real step the same: rllab, the MAML
    paper's code). Equal-length episodes make them the same."""
    eval_steps: int = 3
    """Adaptation steps at evaluation (returns are reported after 0..eval_steps steps)."""
    eval_step_sizes: tuple[float, ...] = (0.1, 0.05)
    """Step sizes at evaluation (the MAML paper halves α after the first step; the last one repeats)."""

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "episodes_per_task num_inner_steps")
        check_at_least(self, 0, "eval_steps")
        check_choice(self, "activation", ("tanh", "relu"))
        check_choice(self, "weighting", WEIGHTINGS)
        check_hidden_sizes(self)
        for name in ("inner_step_sizes", "eval_step_sizes"):
            sizes = getattr(self, name)
            if not sizes or any(not math.isfinite(s) or s <= 0 for s in sizes):
                raise ValueError(f"{name} must be finite numbers > 0, got {sizes}")
        check_unit_interval(self, "gamma gae_lambda")
        if not (math.isfinite(self.min_log_std) and self.min_log_std <= 0.0):
            raise ValueError(
                f"min_log_std must be a finite number <= 0 (the initial log std is 0), got {self.min_log_std}"
            )


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


class InnerLoopAgent:
    """The sampling, adaptation and evaluation of the gradient-based meta-learners; a subclass adds the outer update
    (:meth:`meta_update`) and registers itself with its config class.

    Args:
        family: the task family to meta-train on.
        config: an :class:`InnerLoopConfig` (the subclass's).
        device: where the policy, the inner loops, the updates and the native envs live.
        workers: the processes meta-training together (:mod:`metarl.distributed`); one by default.
    """

    curve_kind: ClassVar[CurveKind] = CurveKind.STEP
    """Evaluation curves are the mean return after 0, 1, ..., K adaptation steps."""
    trains_across_processes: ClassVar[bool] = True
    """Each process samples and adapts its block of the meta-batch."""
    progress_metrics: ClassVar[tuple[str, ...]] = ("meta/return_pre_adapt", "meta/return_step")
    """The returns before and after each inner step."""
    update_floats_per_step: ClassVar[float] = 5.0
    """Memory estimate: floats per step and sampling, per unit of the policy's width, that a training iteration's
    outer update holds beside the episodes. TRPO's curvature products keep every sampling's activations: 4.5-5.2
    measured; MAML-PPO's graph through the adaptation 2.8, Reptile's plain adaptation 1.8."""

    def __init__(
        self, family: TaskFamily, config: InnerLoopConfig, device: torch.device, workers: Workers | None = None
    ) -> None:
        self.family = family
        self.config = config
        self.device = device
        self.workers = workers or Workers()
        self.policy = make_policy(
            family.observation_space, family.action_space, config.hidden_sizes, config.activation, config.min_log_std
        ).to(device)
        self._envs: dict[int, Any] = {}

    def meta_update(self, batch: MetaBatch) -> dict[str, float]:
        """The outer update of the meta-parameters from one meta-iteration's episodes; returns metrics."""
        raise NotImplementedError

    # -- memory ----------------------------------------------------------------------------------------------------
    @classmethod
    def training_samplings(cls, config: InnerLoopConfig) -> int:
        """Episode batches one training iteration collects and keeps: before each inner step and after the last."""
        return config.num_inner_steps + 1

    @classmethod
    def memory_estimate(cls, config: InnerLoopConfig, family: TaskFamily) -> MemoryEstimate:
        """The memory of the larger of a training iteration and an evaluation (validation or the final test), and of
        the vector envs kept for each (:mod:`metarl.budget`).

        A training iteration keeps the episodes of every sampling and what the outer update builds on them
        (:attr:`update_floats_per_step`); an evaluation keeps its samplings' episodes and, during an inner step, the
        policy's activations over one sampling (:data:`EVALUATION_FLOATS_PER_STEP`).
        """
        width = sum(config.hidden_sizes) + observation_floats(family) + action_floats(family.action_space)
        stored = episode_step_bytes(family) + PROCESSED_STEP_BYTES
        episodes, horizon, samplings = config.episodes_per_task, family.horizon, cls.training_samplings(config)
        training = buffer_estimate(
            "training's episode buffers",
            [
                ("meta_batch_size {}", config.meta_batch_size),
                ("episodes_per_task {}", episodes),
                ("horizon {}", horizon),
                ("{} samplings" if samplings > 1 else "{} sampling", samplings),
            ],
            stored + cls.update_floats_per_step * FLOAT_BYTES * width,
            ("episodes_per_task", "meta_batch_size", "num_inner_steps"),
        )
        # validation and the final test differ only in their task count
        evaluation_field, evaluation_tasks = largest_task_set(config, ("test_tasks", "eval_tasks"))
        evaluation = buffer_estimate(
            "an evaluation's episode buffers",
            [
                (f"{evaluation_field} {{}}", evaluation_tasks),
                ("episodes_per_task {}", episodes),
                ("horizon {}", horizon),
            ],
            (config.eval_steps + 1) * stored + EVALUATION_FLOATS_PER_STEP * FLOAT_BYTES * width,
            ("episodes_per_task", evaluation_field),
            note=f"{config.eval_steps + 1} samplings",
        )
        sizes = [tasks * episodes for tasks in (config.meta_batch_size, config.eval_tasks, config.test_tasks)]
        return with_sub_envs(largest(training, evaluation), sizes, family)

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
        return -average_per_task(log_probs * data.advantages, data.weights)

    def inner_update(self, params: Params, grads: Sequence[torch.Tensor], step_size: float, step: int = 0) -> Params:
        """θ - α g for every parameter (Meta-SGD overrides it with its learned per-entry step sizes, MAML++ with its
        learned per-layer, per-step ones: ``step`` is the inner step's index, 0 for the first)."""
        return {name: value - step_size * g for (name, value), g in zip(params.items(), grads, strict=True)}

    def begin_adaptation(self, num_tasks: int) -> None:
        """Called before the first inner step of every adaptation (:meth:`adapt`, :meth:`sample`,
        :meth:`adaptation_points`; :meth:`adapt_per_task` once per task, with 1): an inner update that keeps a state
        across the steps (the learned optimiser's LSTM, :mod:`metarl.agents.learned_optimizer`) resets it here. Nothing
        by default."""

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
        return self.adaptation_path(params, inner, create_graph, num_tasks)[-1]

    def adaptation_path(
        self, params: Params, inner: Sequence[PolicyGradientData], create_graph: bool, num_tasks: int | None = None
    ) -> list[Params]:
        """Every task's parameters before the first inner step and after each one (``len(inner) + 1`` dicts with a
        leading task dim), with the graph :meth:`adapt` keeps: MAML++'s multi-step loss uses every point."""
        # with no steps (the pretraining baseline's objective) the task count comes from the caller
        num_tasks = inner[0].observations.shape[0] if inner else num_tasks
        path = [batch_params(params, num_tasks)]
        self.begin_adaptation(num_tasks)
        for step, (step_size, data) in enumerate(zip(self.step_sizes(len(inner)), inner, strict=True)):
            loss = self.inner_losses(path[-1], data).sum()  # tasks are independent: the sum's gradient is per task
            grads = torch.autograd.grad(loss, list(path[-1].values()), create_graph=create_graph)
            path.append(self.inner_update(path[-1], grads, step_size, step=step))
        return path

    def _adaptation_step(
        self, current: Params, data: PolicyGradientData, step_size: float, step: int = 0
    ) -> tuple[Params, HessianProduct, Params]:
        """One inner step of every task from ``current`` (leading task dim), cut from the graph; the product with
        the inner loss's Hessian at ``current``, which reuses the passes of the step's gradient; and that gradient."""
        gradient, hessian_product = self._inner_derivatives(detach_params(current), data)
        with torch.no_grad():
            update = self.inner_update(detach_params(current), list(gradient.values()), step_size, step=step)
            return update, hessian_product, gradient

    def adaptation_points(self, params: Params, inner: Sequence[PolicyGradientData], num_tasks: int) -> list[Params]:
        """Every task's parameters before each inner step and after the last (``len(inner) + 1`` dicts with a
        leading task dim, no graph), as TRPO's line search re-adapts at each candidate."""
        return self._adapt_detached(params, inner, num_tasks)[0]

    def _adapt_detached(
        self, params: Params, inner: Sequence[PolicyGradientData], num_tasks: int
    ) -> tuple[list[Params], list[tuple[float, HessianProduct]], list[Params]]:
        """:meth:`adaptation_points`, each step's size and inner-loss Hessian product at the point it left, and each
        step's inner gradient there."""
        points = [detach_params(batch_params(params, num_tasks))]
        hessians, gradients = [], []
        self.begin_adaptation(num_tasks)
        for step, (step_size, data) in enumerate(zip(self.step_sizes(len(inner)), inner, strict=True)):
            point, hessian_product, gradient = self._adaptation_step(points[-1], data, step_size, step=step)
            points.append(point)
            hessians.append((step_size, hessian_product))
            gradients.append(gradient)
        return points, hessians, gradients

    def adapt_per_task(self, params: Params, inner: Sequence[PolicyGradientData], create_graph: bool) -> Params:
        """The reference implementation of :meth:`adapt`: a Python loop over tasks, one at a time."""
        adapted_per_task = []
        for t in range(inner[0].observations.shape[0]):
            task_params = dict(params)
            self.begin_adaptation(1)
            for step, (step_size, data) in enumerate(zip(self.step_sizes(len(inner)), inner, strict=True)):
                task_data = PolicyGradientData(*(tensor[t : t + 1] for tensor in data))
                loss = self.inner_losses(batch_params(task_params, 1), task_data).sum()
                grads = torch.autograd.grad(loss, list(task_params.values()), create_graph=create_graph)
                task_params = self.inner_update(task_params, grads, step_size, step=step)
            adapted_per_task.append(task_params)
        return {name: torch.stack([p[name] for p in adapted_per_task]) for name in params}

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
        self.begin_adaptation(len(tasks))
        for step, step_size in enumerate([*self.step_sizes(num_steps, evaluation), None]):
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
                batch_params(params, len(tasks)) if adapted is None else adapted, data, step_size, step=step
            )[0]
        raise AssertionError("unreachable")

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
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])


def mean_kl(
    distribution: Any, old_distribution: Any, weights: torch.Tensor, total_tasks: int | None = None
) -> torch.Tensor:
    """This process's share of the mean over the meta-batch's tasks of each task's average KL(old ‖ new), each task's
    average taken with its step ``weights``."""
    kl = torch.distributions.kl_divergence(old_distribution, distribution)
    return average_per_task(kl, weights).sum() / (total_tasks or weights.shape[0])


def average_per_task(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each task's average of ``values`` with its step ``weights`` (:attr:`PolicyGradientData.weights`):
    ``[T, E, H] -> [T]``."""
    return (values * weights).flatten(1).sum(dim=1)


def detach_params(params: Params) -> Params:
    return {name: value.detach() for name, value in params.items()}


def detach_distribution(distribution: Any) -> Any:
    """A copy of a Normal/Independent/Categorical distribution cut from the graph."""
    if isinstance(distribution, torch.distributions.Independent):
        return torch.distributions.Independent(
            detach_distribution(distribution.base_dist), distribution.reinterpreted_batch_ndims
        )
    if isinstance(distribution, torch.distributions.Normal):
        return torch.distributions.Normal(distribution.loc.detach(), distribution.scale.detach())
    if isinstance(distribution, torch.distributions.Categorical):
        return torch.distributions.Categorical(logits=distribution.logits.detach())
    raise TypeError(f"unsupported distribution {type(distribution).__name__}")
