"""PEARL: off-policy meta-RL with a probabilistic context encoder and soft actor-critic, batched over tasks.

A latent z summarises what the agent knows of the task. The context encoder (:mod:`metarl.agents.context_encoder`)
maps a task's transitions (s, a, r[, s']) to a Gaussian posterior q(z | c) (a product of per-transition factors);
the policy π(a | s, z) and the critics Q(s, a, z), V(s, z) are soft actor-critic's, conditioned on z. Adapting to a
new task is posterior sampling: the first episode acts with z from the prior N(0, I), each later one with z drawn
from the posterior over all the transitions seen so far in the task.

One meta-iteration (the paper's Algorithm 1; the first iteration first fills every training task's buffers with
``pearl_initial_steps`` steps acting with z from the prior):

1. for each of the ``meta_batch_size`` training tasks the trainer hands over (the paper's ``num_tasks_sample``):
   empty its encoder buffer, then collect, all tasks in parallel, ``pearl_prior_steps`` with z from the prior
   (drawn anew each episode; into both buffers), ``pearl_posterior_steps`` with z from the posterior over context
   drawn from the encoder buffer (into both buffers) and ``pearl_extra_posterior_steps`` likewise (into the RL buffer
   only). As in the authors' code each posterior phase starts from the prior and updates z after every episode;
   steps are collected in whole episodes (the count rounded up to a multiple of the horizon).
2. ``pearl_gradient_steps`` times: draw ``pearl_task_batch_size`` training tasks, a context batch of each from its
   encoder buffer and an RL batch from its replay buffer, and take one SAC step on all of them at once:
   z ~ q(z | c) per task (reparameterised), then

   - critics and encoder: Q targets r·``pearl_reward_scale`` + γ (1 - done) V̄(s', z); the encoder learns from the
     critics' Bellman error plus ``pearl_kl_weight`` · Σ_tasks KL(q(z | c) ‖ N(0, I));
   - V(s, z) toward min_i Q_i(s, ã, z) - log π(ã | s, z), ã ~ π, and V̄ by Polyak averaging (``pearl_target_tau``);
   - the policy minimises E[log π(ã | s, z) - min_i Q_i(s, ã, z)] plus ``1e-3`` × (mean² + log-std²) of its Gaussian;
     z is detached from the policy and V losses (the encoder learns only from the critics, as in the paper).

Entropy handling, as in the paper (SAC v1): a fixed entropy weight of 1 with the rewards scaled by
``pearl_reward_scale`` (the authors' code calls it "effectively the weight on the entropy"), a state-value network
V with a Polyak-averaged target, twin Q functions, a tanh-squashed Gaussian policy (log-std clamped to [-20, 2]).

Batched over tasks: the ``T`` tasks' batches are stacked ``[T, B, ...]`` and flattened to ``T·B`` rows with each
task's z repeated over its rows, so one forward and one backward pass per network covers the whole meta-batch
(``loop_over_tasks=True`` in :meth:`PEARL.sac_update` computes the same step task by task, for the benchmark and the
test that the two agree).

Replay buffers: one ring per training task (:class:`metarl.replay.TaskReplayBuffers`), an RL buffer and a separate
encoder buffer of recent prior/posterior data, as in the paper. They are the run's state but too large to copy each
iteration or keep in ``best.pt``: the trainer saves them beside ``last.pt`` (``buffers_state_dict``).

Differences from the authors' code (katerakelly/oyster), by choice: actions are stored and learned in [-1, 1] and
scaled to the family's action box when stepping; the critics learn from the family's reward unless
``pearl_critic_reward`` names a step-info value (the sparse point robot's ``dense_reward``: the authors' env gave the
dense reward and their encoder read the sparse one); the training tasks are the train split of the run's
``num_tasks`` (the presets: 100, or 80 on the sparse point robot, as the paper's).

References:
    Rakelly, Zhou, Quillen, Finn, Levine. "Efficient Off-Policy Meta-Reinforcement Learning via Probabilistic
    Context Variables", ICML 2019.
    Haarnoja, Zhou, Abbeel, Levine. "Soft Actor-Critic: Off-Policy Maximum Entropy Deep Reinforcement Learning with a
    Stochastic Actor", ICML 2018.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from metarl.agents.context_encoder import ContextEncoder, GaussianPosterior
from torch import nn

from metarl.agent import AdaptationCurve, CurveKind
from metarl.budget import FLOAT_BYTES, MemoryEstimate, buffer_estimate, largest, observation_floats, with_sub_envs
from metarl.config import RunConfig, check_at_least, check_layer_sizes, check_positive_numbers, check_unit_interval
from metarl.distributed import Workers
from metarl.registry import register_agent
from metarl.replay import TaskReplayBuffers, replay_bytes
from metarl.tasks import TaskFamily
from metarl.trials import TrialBatch, TrialInputs, collect_trials, make_trial_envs

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
"""The policy's log-std is clamped to this range (SAC's, and the authors')."""
TANH_EPSILON = 1e-6
"""Added inside log(1 - tanh²) of the squashed Gaussian's log-density, which is 0 at the box's edge."""
POLICY_REGULARIZATION = 1e-3
"""Weight of the policy's mean² and log-std² penalties (the authors' code)."""
# Memory estimate (metarl.budget), calibrated on the peak resident memory of PEARL's first SAC step after the buffers
# were filled (HalfCheetahVel and sparse point robot presets; batch 256 and 512; hidden layers of 300 and 600): the
# buffers are exact, the step's activations and gradients grow with its rows and the networks' widths.
STEP_FLOATS_PER_UNIT = 8
"""Floats a SAC step holds per row of the stacked batch and per hidden unit of the networks (the five networks'
passes, their gradients)."""
CONTEXT_FLOATS_PER_UNIT = 2
"""Floats it holds per context transition and per hidden unit of the encoder."""
PARAMETER_COPIES = 4
"""Each trained parameter is held with its gradient and Adam's two moments."""


@dataclasses.dataclass
class PEARLConfig(RunConfig):
    """PEARL's fields, defaulting to the paper's HalfCheetahVel settings (Rakelly et al. 2019, appendix; the
    authors' ``configs/default.py``). ``meta_batch_size`` is the number of training tasks whose data is collected
    each meta-iteration (the paper's ``num_tasks_sample``); a gradient step draws ``pearl_task_batch_size``."""

    algo: str = "pearl"
    num_tasks: int = 250
    """Size of the task pool split 80 / 10 / 10: PEARL keeps replay buffers for each of the 200 training tasks."""
    meta_batch_size: int = 5
    """Training tasks whose data is collected each meta-iteration (the paper's ``num_tasks_sample``)."""
    eval_tasks: int = 25
    """Validation tasks per evaluation (at most the validation split's size)."""
    test_tasks: int = 25
    """Held-out test tasks of the final evaluation (at most the test split's size)."""
    eval_interval: int = 10
    """Evaluate on validation tasks every this many iterations (and keep the best checkpoint)."""
    pearl_latent_size: int = 5
    """Dimensions of the task latent z."""
    pearl_hidden_sizes: tuple[int, ...] = (300, 300, 300)
    """Hidden layers of the policy, the Q functions and V."""
    pearl_encoder_hidden_sizes: tuple[int, ...] = (200, 200, 200)
    """Hidden layers of the context encoder."""
    pearl_learning_rate: float = 3e-4
    """Adam's learning rate for every network."""
    pearl_batch_size: int = 256
    """Transitions per task in a SAC batch."""
    pearl_context_batch_size: int = 100
    """Transitions per task in the context a gradient step infers z from (the paper's ``embedding_batch_size``)."""
    pearl_task_batch_size: int = 16
    """Training tasks per gradient step (the paper's ``meta_batch``)."""
    pearl_gradient_steps: int = 2000
    """SAC gradient steps per meta-iteration."""
    pearl_kl_weight: float = 0.1
    """Weight of the KL of the posterior to the prior in the encoder's loss."""
    pearl_reward_scale: float = 5.0
    """Rewards are multiplied by this in the Q targets (with SAC v1's entropy weight of 1: its inverse weighs the
    entropy)."""
    pearl_discount: float = 0.99
    """Discount γ of the Q targets."""
    pearl_target_tau: float = 0.005
    """Polyak rate of the target V network."""
    pearl_initial_steps: int = 2000
    """Steps collected for every training task, z from the prior, before the first gradient step."""
    pearl_prior_steps: int = 400
    """Steps per sampled task and iteration with z from the prior (into both buffers)."""
    pearl_posterior_steps: int = 0
    """Steps per sampled task and iteration with z from the posterior (into both buffers)."""
    pearl_extra_posterior_steps: int = 600
    """Steps per sampled task and iteration with z from the posterior, into the RL buffer only."""
    pearl_buffer_capacity: int = 100_000
    """Transitions each training task's RL buffer keeps (the oldest are replaced)."""
    pearl_exploration_episodes: int = 1
    """Evaluation: episodes acting with one z from the prior before z is drawn from the posterior (the paper's
    ``num_exp_traj_eval``)."""
    pearl_eval_episodes: int = 3
    """Episodes per task of the validation and test curves."""
    pearl_next_obs_in_context: bool = False
    """Put s' in the context too (for families whose tasks differ in their dynamics)."""
    pearl_critic_reward: str = "reward"
    """What the critics learn from: ``reward`` (the family's), or the name of a per-step ``info`` value the family
    reports (the sparse point robot's ``dense_reward``, as the authors trained it). The context keeps the reward."""
    pearl_deterministic_evaluation: bool = True
    """Evaluation acts with the policy's mean action (tanh of the Gaussian's mean), as the paper evaluates."""

    def validate(self) -> None:
        super().validate()
        check_at_least(
            self,
            1,
            "pearl_latent_size pearl_batch_size pearl_context_batch_size pearl_task_batch_size pearl_gradient_steps "
            "pearl_initial_steps pearl_buffer_capacity pearl_eval_episodes",
        )
        check_at_least(
            self, 0, "pearl_prior_steps pearl_posterior_steps pearl_extra_posterior_steps pearl_exploration_episodes"
        )
        if not self.pearl_critic_reward:
            raise ValueError("pearl_critic_reward must be 'reward' or the name of a per-step info value, got ''")
        if self.pearl_prior_steps + self.pearl_posterior_steps == 0:
            raise ValueError(
                "pearl_prior_steps + pearl_posterior_steps must be >= 1: the encoder buffer of a sampled task is "
                "emptied each iteration and refilled from these two phases only"
            )
        check_layer_sizes(self, "pearl_hidden_sizes pearl_encoder_hidden_sizes")
        check_positive_numbers(self, "pearl_learning_rate pearl_reward_scale pearl_target_tau")
        check_positive_numbers(self, "pearl_kl_weight", zero_allowed=True)
        check_unit_interval(self, "pearl_discount pearl_target_tau")


# -- networks -----------------------------------------------------------------------------------------------------
def mlp(
    input_size: int, hidden_sizes: Sequence[int], output_size: int, activation: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """Hidden layers with ``activation`` (ReLU), linear output."""
    layers: list[nn.Module] = []
    width = input_size
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(nn.Linear(width, output_size))
    return nn.Sequential(*layers)


class SquashedAction(NamedTuple):
    """A tanh-Gaussian policy's output on a batch of rows."""

    action: torch.Tensor
    """``[rows, A]`` tanh(u), u ~ N(mean, std²), in [-1, 1]."""
    log_prob: torch.Tensor
    """``[rows]`` log π(action | s, z), with the tanh's change of variables."""
    mean: torch.Tensor
    """``[rows, A]`` the Gaussian's mean (before the tanh)."""
    log_std: torch.Tensor
    """``[rows, A]`` its clamped log-std."""


class TanhGaussianPolicy(nn.Module):
    """π(a | s, z): a Gaussian over pre-squash actions whose mean and log-std come from one MLP, squashed by tanh."""

    def __init__(self, observation_size: int, latent_size: int, action_size: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.network = mlp(observation_size + latent_size, hidden_sizes, 2 * action_size)
        self.action_size = action_size

    def forward(self, observations: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor) -> SquashedAction:
        """Actions for ``observations [rows, S]`` and ``latents [rows, Z]`` from standard normal ``noise [rows, A]``
        (reparameterised: differentiable in the policy's parameters)."""
        mean, log_std = self.network(torch.cat([observations, latents], dim=-1)).split(self.action_size, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        std = log_std.exp()
        pre_squash = mean + std * noise
        action = torch.tanh(pre_squash)
        gaussian_log_prob = (-0.5 * noise.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)
        log_prob = gaussian_log_prob - torch.log(1 - action.square() + TANH_EPSILON).sum(dim=-1)
        return SquashedAction(action, log_prob, mean, log_std)

    def mean_action(self, observations: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """tanh of the Gaussian's mean: the deterministic action evaluation uses."""
        mean, _ = self.network(torch.cat([observations, latents], dim=-1)).split(self.action_size, dim=-1)
        return torch.tanh(mean)


class SACNetworks(nn.Module):
    """The five networks PEARL trains (and V's target), as one module for the state dict and the devices."""

    def __init__(self, observation_size: int, action_size: int, context_size: int, config: PEARLConfig) -> None:
        super().__init__()
        latent, hidden = config.pearl_latent_size, config.pearl_hidden_sizes
        self.encoder = ContextEncoder(context_size, latent, config.pearl_encoder_hidden_sizes)
        self.policy = TanhGaussianPolicy(observation_size, latent, action_size, hidden)
        self.q1 = mlp(observation_size + action_size + latent, hidden, 1)
        self.q2 = mlp(observation_size + action_size + latent, hidden, 1)
        self.value = mlp(observation_size + latent, hidden, 1)
        self.target_value = mlp(observation_size + latent, hidden, 1)
        self.target_value.load_state_dict(self.value.state_dict())
        self.target_value.requires_grad_(False)

    def min_q(self, observations: torch.Tensor, actions: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """min(Q1, Q2) ``[rows]``."""
        inputs = torch.cat([observations, actions, latents], dim=-1)
        return torch.minimum(self.q1(inputs), self.q2(inputs))[:, 0]


class SACNoise(NamedTuple):
    """The standard normal draws of one SAC step: each task's z, and each row's policy action."""

    latent: torch.Tensor
    """``[T, Z]``."""
    action: torch.Tensor
    """``[T, B, A]``."""


class SACLosses(NamedTuple):
    """One step's losses (on a slice of the tasks: sums over the slice divided by the whole step's counts)."""

    critic: torch.Tensor
    """Both Q functions' mean squared Bellman error."""
    kl: torch.Tensor
    """Σ over tasks of KL(q(z | c) ‖ N(0, I))."""
    value: torch.Tensor
    """V's mean squared error to its soft target."""
    policy: torch.Tensor
    """The policy's loss with its regularisation."""


# -- the agent ------------------------------------------------------------------------------------------------------
def check_step_info(family: TaskFamily, key: str) -> None:
    """That ``family``'s envs report ``info[key]`` at every step (one step of one env, before any run starts)."""
    env = family.make_env(family.sample_tasks(np.random.default_rng(0), 1)[0])
    try:
        env.reset(seed=0)
        info = env.step(env.action_space.sample())[4]
    finally:
        env.close()
    if key not in info:
        reported = sorted(name for name, value in info.items() if np.isscalar(value) and not name.startswith("_"))
        raise ValueError(
            f"pearl_critic_reward={key!r} is not a step info value of {family.name}; allowed: 'reward' or one of "
            f"{reported}"
        )


class PEARL:
    """PEARL (Rakelly et al. 2019): SAC conditioned on a latent task variable inferred by a probabilistic context
    encoder, trained off-policy from per-task replay buffers. Its fields are :class:`PEARLConfig`'s.

    Continuous (``Box``) action spaces with finite bounds only: SAC's tanh-Gaussian policy needs them.
    """

    curve_kind: ClassVar[CurveKind] = CurveKind.EPISODE
    """Evaluation curves are the mean return of each episode: the first with z from the prior, then the posterior."""
    trains_across_processes: ClassVar[bool] = False
    """One process: the gradient steps sample every training task's buffers."""
    progress_metrics: ClassVar[tuple[str, ...]] = ("meta/return_prior", "meta/return_posterior", "losses/critic")

    def __init__(
        self, family: TaskFamily, config: PEARLConfig, device: torch.device, workers: Workers | None = None
    ) -> None:
        action_space = family.action_space
        if not (isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1):
            raise ValueError(
                f"PEARL needs a 1-d Box action space (SAC's tanh-Gaussian policy), got {action_space!r} for "
                f"{config.family}; for discrete actions use rl2 or maml-trpo"
            )
        if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
            raise ValueError(f"PEARL needs finite action bounds to squash actions into, got {action_space!r}")
        if config.pearl_critic_reward != "reward":
            check_step_info(family, config.pearl_critic_reward)
        self.family = family
        self.config = config
        self.device = device
        self.workers = workers or Workers()
        self.observation_size = observation_floats(family)
        self.action_size = int(action_space.shape[0])
        self.action_low = torch.as_tensor(action_space.low, dtype=torch.float32, device=device)
        self.action_high = torch.as_tensor(action_space.high, dtype=torch.float32, device=device)
        self.train_tasks = tuple(family.split(seed=config.split_seed, num_tasks=config.num_tasks).train)
        self.task_index = {task: index for index, task in enumerate(self.train_tasks)}
        self.networks = SACNetworks(self.observation_size, self.action_size, self.context_size, config).to(device)
        lr = config.pearl_learning_rate
        networks = self.networks
        self.critic_optimizer = torch.optim.Adam([*networks.q1.parameters(), *networks.q2.parameters()], lr=lr)
        self.encoder_optimizer = torch.optim.Adam(networks.encoder.parameters(), lr=lr)
        self.value_optimizer = torch.optim.Adam(networks.value.parameters(), lr=lr)
        self.policy_optimizer = torch.optim.Adam(networks.policy.parameters(), lr=lr)
        self._buffers: tuple[TaskReplayBuffers, TaskReplayBuffers] | None = None  # made when first used
        self.env_steps = 0
        """Env steps collected for training so far (the initial collection included)."""
        self._envs: dict[int, gym.vector.VectorEnv] = {}

    # -- sizes ------------------------------------------------------------------------------------------------------
    @property
    def replay(self) -> TaskReplayBuffers:
        """The RL buffers of the training tasks, allocated when training first needs them (an evaluation does not)."""
        return self._allocated_buffers()[0]

    @property
    def encoder_replay(self) -> TaskReplayBuffers:
        """The encoder buffers of the training tasks (allocated with :attr:`replay`)."""
        return self._allocated_buffers()[1]

    def _allocated_buffers(self) -> tuple[TaskReplayBuffers, TaskReplayBuffers]:
        if self._buffers is None:
            config, family, fields = self.config, self.family, self.transition_fields(self.family)
            tasks = len(self.train_tasks)
            self._buffers = (
                TaskReplayBuffers(tasks, config.pearl_buffer_capacity, fields, self.device),
                TaskReplayBuffers(tasks, self.encoder_capacity(config, family), fields, self.device),
            )
        return self._buffers

    @property
    def context_size(self) -> int:
        """Width of one context transition: s, a, r (and s' with ``pearl_next_obs_in_context``)."""
        size = self.observation_size + self.action_size + 1
        return size + self.observation_size if self.config.pearl_next_obs_in_context else size

    @staticmethod
    def transition_fields(family: TaskFamily) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """What the replay buffers hold per transition of ``family``: actions in [-1, 1]; ``rewards`` the family's,
        which the context sees; ``critic_rewards`` what the critics learn from (``pearl_critic_reward``);
        ``terminals`` 1 where the episode terminated, not where it was truncated, so that a truncated step still
        bootstraps."""
        observation = (observation_floats(family),)
        action = (int(np.prod(family.action_space.shape)),)
        return {
            "observations": (observation, torch.float32),
            "actions": (action, torch.float32),
            "rewards": ((), torch.float32),
            "critic_rewards": ((), torch.float32),
            "next_observations": (observation, torch.float32),
            "terminals": ((), torch.float32),
        }

    @staticmethod
    def episodes(steps: int, horizon: int) -> int:
        """Whole episodes that collect at least ``steps`` steps."""
        return math.ceil(steps / horizon)

    @classmethod
    def encoder_capacity(cls, config: PEARLConfig, family: TaskFamily) -> int:
        """The encoder buffer's rows per task: the initial collection, or one iteration's prior and posterior data."""
        horizon = family.horizon
        iteration = cls.episodes(config.pearl_prior_steps, horizon) + cls.episodes(
            config.pearl_posterior_steps, horizon
        )
        return horizon * max(cls.episodes(config.pearl_initial_steps, horizon), iteration)

    @classmethod
    def memory_estimate(cls, config: PEARLConfig, family: TaskFamily) -> MemoryEstimate:
        """The two replay buffers of every training task, plus the larger of a SAC step's batch and an evaluation's
        trials (:mod:`metarl.budget`)."""
        train_tasks = len(family.split(seed=config.split_seed, num_tasks=config.num_tasks).train)
        fields = cls.transition_fields(family)
        per_transition = replay_bytes(1, 1, fields)
        buffers = buffer_estimate(
            "the replay buffers",
            [
                (f"{train_tasks} training tasks (num_tasks {config.num_tasks})", train_tasks),
                (
                    f"{{}} rows (pearl_buffer_capacity {config.pearl_buffer_capacity} + the encoder buffer's "
                    f"{cls.encoder_capacity(config, family)})",
                    config.pearl_buffer_capacity + cls.encoder_capacity(config, family),
                ),
            ],
            per_transition,
            ("pearl_buffer_capacity", "num_tasks"),
        )
        context_rows = config.pearl_task_batch_size * config.pearl_context_batch_size
        step_bytes = FLOAT_BYTES * (
            STEP_FLOATS_PER_UNIT * sum(config.pearl_hidden_sizes)
            + CONTEXT_FLOATS_PER_UNIT
            * sum(config.pearl_encoder_hidden_sizes)
            * context_rows
            / (config.pearl_task_batch_size * config.pearl_batch_size)
        )
        step = buffer_estimate(
            "a SAC step",
            [
                ("pearl_task_batch_size {}", config.pearl_task_batch_size),
                ("pearl_batch_size {}", config.pearl_batch_size),
            ],
            step_bytes,
            ("pearl_task_batch_size", "pearl_batch_size", "pearl_hidden_sizes", "pearl_context_batch_size"),
            note=f"with the context's encoder pass and {cls._parameter_count(config, family):,} parameters",
        )
        step = dataclasses.replace(
            step, bytes=step.bytes + FLOAT_BYTES * PARAMETER_COPIES * cls._parameter_count(config, family)
        )
        evaluation_tasks = max(config.eval_tasks, config.test_tasks)
        evaluation = buffer_estimate(
            "an evaluation's trials",
            [
                ("tasks {}", evaluation_tasks),
                ("pearl_eval_episodes {}", config.pearl_eval_episodes),
                ("horizon {}", family.horizon),
            ],
            FLOAT_BYTES * (3 * observation_floats(family) + 3 * int(np.prod(family.action_space.shape)) + 8),
            ("eval_tasks", "test_tasks", "pearl_eval_episodes"),
        )
        larger = largest(step, evaluation)
        total = dataclasses.replace(
            buffers,
            bytes=buffers.bytes + larger.bytes,
            fields=tuple(dict.fromkeys(buffers.fields + larger.fields)),
            description=f"{buffers.description}; and {larger.description}",
        )
        sizes = [config.meta_batch_size, config.eval_tasks, config.test_tasks, cls.initial_collection_envs(train_tasks)]
        return with_sub_envs(total, sizes, family)

    @staticmethod
    def _parameter_count(config: PEARLConfig, family: TaskFamily) -> int:
        """The parameters of the five networks and V's target, from the config and the family's spaces."""

        def count(inputs: int, hidden: Sequence[int], outputs: int) -> int:
            widths = [inputs, *hidden, outputs]
            return sum((a + 1) * b for a, b in itertools.pairwise(widths))

        observation, action = observation_floats(family), int(np.prod(family.action_space.shape))
        latent, hidden = config.pearl_latent_size, config.pearl_hidden_sizes
        context = observation + action + 1 + (observation if config.pearl_next_obs_in_context else 0)
        return (
            count(context, config.pearl_encoder_hidden_sizes, 2 * latent)
            + count(observation + latent, hidden, 2 * action)
            + 2 * count(observation + action + latent, hidden, 1)
            + 2 * count(observation + latent, hidden, 1)
        )

    @staticmethod
    def initial_collection_envs(num_train_tasks: int) -> int:
        """Sub-envs of the initial collection, which plays the training tasks in blocks of this many."""
        return min(num_train_tasks, 50)

    def env_steps_per_iteration(self) -> int:
        """Env steps one meta-iteration collects after the first (whole episodes, at most the horizon each); the first
        also collects ``pearl_initial_steps`` for every training task (the console's estimate)."""
        config, horizon = self.config, self.family.horizon
        episodes = sum(
            self.episodes(steps, horizon)
            for steps in (config.pearl_prior_steps, config.pearl_posterior_steps, config.pearl_extra_posterior_steps)
        )
        return config.meta_batch_size * episodes * horizon

    # -- actions ----------------------------------------------------------------------------------------------------
    def to_env_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions in [-1, 1] scaled to the family's action box."""
        return self.action_low + (actions + 1) * 0.5 * (self.action_high - self.action_low)

    def context_vectors(self, transitions: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[..., context_size]``: s, a, r (and s') of each transition."""
        parts = [transitions["observations"], transitions["actions"], transitions["rewards"].unsqueeze(-1)]
        if self.config.pearl_next_obs_in_context:
            parts.append(transitions["next_observations"])
        return torch.cat(parts, dim=-1)

    def posterior(self, transitions: Mapping[str, torch.Tensor]) -> GaussianPosterior:
        """q(z | c) of each task from its context transitions (every field ``[T, C, ...]``)."""
        return self.networks.encoder(self.context_vectors(transitions))

    def prior_latents(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """``[num_tasks, Z]`` draws from N(0, I)."""
        noise = torch.randn((num_tasks, self.config.pearl_latent_size), generator=generator)
        return noise.to(self.device)

    # -- collecting data ----------------------------------------------------------------------------------------------
    def _trial_envs(self, size: int) -> gym.vector.VectorEnv:
        if size not in self._envs:
            self._envs[size] = make_trial_envs(self.family, size, device=self.device)
        return self._envs[size]

    @torch.no_grad()
    def collect(
        self,
        task_indices: Sequence[int],
        steps: int,
        from_posterior: bool,
        into_encoder_buffer: bool,
        rng: np.random.Generator,
        generator: torch.Generator,
    ) -> list[torch.Tensor]:
        """Play ``ceil(steps / horizon)`` whole episodes of each of the training tasks ``task_indices`` (all in
        parallel; fewer steps where episodes terminate early), and store them in the RL buffer (and the encoder
        buffer). The first episode acts with z from the prior; with ``from_posterior`` each later one with z from the
        posterior over a context batch of the task's encoder buffer (after the episodes before it were stored), else
        with a new prior draw.

        Returns each episode's ``[tasks]`` return.
        """
        tasks = [self.train_tasks[index] for index in task_indices]
        envs = self._trial_envs(len(tasks))
        returns = []
        for episode in range(self.episodes(steps, self.family.horizon)):
            if from_posterior and episode > 0:
                context = self.encoder_replay.sample(task_indices, self.config.pearl_context_batch_size, generator)
                latents = self.posterior(context).sample(generator)
            else:
                latents = self.prior_latents(len(tasks), generator)
            actor = _LatentActor(self, latents, generator, deterministic=False)
            seed = int(rng.integers(2**31 - len(tasks)))
            batch = collect_trials(
                envs, self.family, tasks, 1, actor, seed=seed, device=self.device, keep_transitions=True
            )
            self._store(task_indices, batch, into_encoder_buffer)
            returns.append(batch.episode_returns[:, 0])
        return returns

    def _store(self, task_indices: Sequence[int], batch: TrialBatch, into_encoder_buffer: bool) -> None:
        """Add each trial's real steps to its task's buffers."""
        key = self.config.pearl_critic_reward
        critic_rewards = batch.rewards if key == "reward" else batch.infos[key]
        for row, index in enumerate(task_indices):
            real = batch.masks[row] > 0
            count = int(real.sum())
            transitions = {
                "observations": batch.inputs.observations[row][real].reshape(count, -1),
                "actions": batch.extras["squashed_action"][row][real],
                "rewards": batch.rewards[row][real],
                "critic_rewards": critic_rewards[row][real],
                "next_observations": batch.next_observations[row][real].reshape(count, -1),
                "terminals": batch.terminated[row][real],
            }
            self.replay.add(index, transitions)
            if into_encoder_buffer:
                self.encoder_replay.add(index, transitions)
            self.env_steps += count

    # -- SAC ----------------------------------------------------------------------------------------------------------
    def sac_noise(self, num_tasks: int, generator: torch.Generator) -> SACNoise:
        """The standard normal draws of one SAC step on ``num_tasks`` tasks."""
        config = self.config
        latent = torch.randn((num_tasks, config.pearl_latent_size), generator=generator)
        action = torch.randn((num_tasks, config.pearl_batch_size, self.action_size), generator=generator)
        return SACNoise(latent.to(self.device), action.to(self.device))

    def critic_losses(
        self, batch: Mapping[str, torch.Tensor], context: Mapping[str, torch.Tensor], noise: SACNoise, total_tasks: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The critics' and the encoder's losses on the tasks of ``batch`` (fields ``[T, B, ...]``) and ``context``
        (``[T, C, ...]``), as their share of a step over ``total_tasks`` tasks. Returns ``(critic, kl, latents)``:
        the Bellman error, Σ KL, and each task's sampled z ``[T, Z]`` (differentiable in the encoder)."""
        config, networks = self.config, self.networks
        posterior = self.posterior(context)
        latents = posterior.mean + posterior.variance.sqrt() * noise.latent
        batch_size = batch["rewards"].shape[1]
        rows = _rows(latents, batch_size)
        observations, actions = _flat(batch["observations"]), _flat(batch["actions"])
        inputs = torch.cat([observations, actions, rows], dim=-1)
        with torch.no_grad():
            next_values = networks.target_value(torch.cat([_flat(batch["next_observations"]), rows], dim=-1))[:, 0]
            targets = config.pearl_reward_scale * _flat(batch["critic_rewards"])
            targets = targets + (1 - _flat(batch["terminals"])) * config.pearl_discount * next_values
        total_rows = total_tasks * batch_size
        critic = (
            (networks.q1(inputs)[:, 0] - targets).square().sum() + (networks.q2(inputs)[:, 0] - targets).square().sum()
        ) / total_rows
        kl = posterior.kl_to_unit_gaussian().sum()
        return critic, kl, latents

    def actor_losses(
        self, batch: Mapping[str, torch.Tensor], latents: torch.Tensor, noise: SACNoise, total_tasks: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """V's and the policy's losses on the tasks of ``batch`` given their z (detached here), as their share of a
        step over ``total_tasks`` tasks: ``(value, policy)``."""
        networks = self.networks
        batch_size = batch["rewards"].shape[1]
        rows = _rows(latents.detach(), batch_size)
        observations = _flat(batch["observations"])
        squashed = networks.policy(observations, rows, _flat(noise.action))
        min_q = networks.min_q(observations, squashed.action, rows)
        values = networks.value(torch.cat([observations, rows], dim=-1))[:, 0]
        total_rows = total_tasks * batch_size
        value_loss = (values - (min_q - squashed.log_prob).detach()).square().sum() / total_rows
        regularization = squashed.mean.square().mean(dim=-1) + squashed.log_std.square().mean(dim=-1)
        policy_loss = (squashed.log_prob - min_q + POLICY_REGULARIZATION * regularization).sum() / total_rows
        return value_loss, policy_loss

    def sac_update(
        self,
        batch: Mapping[str, torch.Tensor],
        context: Mapping[str, torch.Tensor],
        noise: SACNoise,
        loop_over_tasks: bool = False,
    ) -> SACLosses:
        """One SAC step on ``T`` tasks: ``batch`` fields ``[T, B, ...]`` from the RL buffers, ``context`` fields
        ``[T, C, ...]`` from the encoder buffers, ``noise`` the step's normal draws.

        The critics and the encoder step on the Bellman error and the weighted KL; then V and the policy step, on the
        critics just updated; then V̄ moves toward V. With ``loop_over_tasks`` each loss is computed and
        back-propagated task by task, gradients summed, then the same steps are taken: what a per-task
        implementation does (the benchmark's baseline; equal up to rounding).
        """
        num_tasks = batch["rewards"].shape[0]
        slices = [slice(t, t + 1) for t in range(num_tasks)] if loop_over_tasks else [slice(0, num_tasks)]

        def part(values: Mapping[str, torch.Tensor], where: slice) -> dict[str, torch.Tensor]:
            return {key: value[where] for key, value in values.items()}

        def noise_part(where: slice) -> SACNoise:
            return SACNoise(noise.latent[where], noise.action[where])

        self.critic_optimizer.zero_grad(set_to_none=True)
        self.encoder_optimizer.zero_grad(set_to_none=True)
        critic_total, kl_total, latents = 0.0, 0.0, []
        for where in slices:
            critic, kl, task_latents = self.critic_losses(
                part(batch, where), part(context, where), noise_part(where), num_tasks
            )
            (critic + self.config.pearl_kl_weight * kl).backward()
            critic_total, kl_total = critic_total + critic.detach(), kl_total + kl.detach()
            latents.append(task_latents.detach())
        self.critic_optimizer.step()
        self.encoder_optimizer.step()

        self.value_optimizer.zero_grad(set_to_none=True)
        self.policy_optimizer.zero_grad(set_to_none=True)
        value_total, policy_total = 0.0, 0.0
        for where, task_latents in zip(slices, latents, strict=True):
            value_loss, policy_loss = self.actor_losses(part(batch, where), task_latents, noise_part(where), num_tasks)
            (value_loss + policy_loss).backward()
            value_total, policy_total = value_total + value_loss.detach(), policy_total + policy_loss.detach()
        self.value_optimizer.step()
        self.policy_optimizer.step()
        with torch.no_grad():
            tau = self.config.pearl_target_tau
            for target, source in zip(
                self.networks.target_value.parameters(), self.networks.value.parameters(), strict=True
            ):
                target.lerp_(source, tau)
        return SACLosses(critic_total, kl_total, value_total, policy_total)

    def gradient_step(self, generator: torch.Generator) -> SACLosses:
        """Draw the step's tasks, batches and noise from ``generator`` and take one SAC step."""
        config = self.config
        drawn = torch.randint(len(self.train_tasks), (config.pearl_task_batch_size,), generator=generator)
        task_indices = drawn.tolist()
        context = self.encoder_replay.sample(task_indices, config.pearl_context_batch_size, generator)
        batch = self.replay.sample(task_indices, config.pearl_batch_size, generator)
        return self.sac_update(batch, context, self.sac_noise(len(task_indices), generator))

    # -- the meta-trainer's protocol ------------------------------------------------------------------------------
    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        config = self.config
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        steps_before = self.env_steps
        self.networks.eval()
        if self.env_steps == 0:  # the first iteration fills every training task's buffers, z from the prior
            block = self.initial_collection_envs(len(self.train_tasks))
            for first in range(0, len(self.train_tasks), block):
                indices = list(range(first, min(first + block, len(self.train_tasks))))
                self.collect(indices, config.pearl_initial_steps, False, True, rng, generator)
        try:
            task_indices = [self.task_index[task] for task in tasks]
        except KeyError as error:
            raise ValueError(f"PEARL trains on the tasks of its train split only, got {error.args[0]!r}") from error
        for index in dict.fromkeys(task_indices):
            self.encoder_replay.clear(index)
        prior = self.collect(task_indices, config.pearl_prior_steps, False, True, rng, generator)
        posterior = self.collect(task_indices, config.pearl_posterior_steps, True, True, rng, generator)
        extra = self.collect(task_indices, config.pearl_extra_posterior_steps, True, False, rng, generator)
        sampled = time.perf_counter()

        self.networks.train()
        totals = torch.zeros(4, device=self.device)
        for _ in range(config.pearl_gradient_steps):
            losses = self.gradient_step(generator)
            totals += torch.stack([torch.as_tensor(loss, device=self.device) for loss in losses])
        self.networks.eval()
        updated = time.perf_counter()
        critic, kl, value, policy = (totals / config.pearl_gradient_steps).tolist()
        if not all(math.isfinite(loss) for loss in (critic, kl, value, policy)):
            raise FloatingPointError(f"PEARL losses are not finite: critic {critic}, kl {kl}, value {value}")

        # posterior episodes: those of the posterior phases after their first (prior) episode
        posterior_returns = posterior[1:] + extra[1:]
        metrics["meta/return_prior"] = float(torch.stack(prior or [torch.zeros(1)]).mean())
        if posterior_returns:
            metrics["meta/return_posterior"] = float(torch.stack(posterior_returns).mean())
        metrics.update(
            {
                "meta/env_steps": float(self.env_steps - steps_before),
                "meta/total_env_steps": float(self.env_steps),
                "losses/critic": critic,
                "losses/kl": kl,
                "losses/value": value,
                "losses/policy": policy,
                "time/sample_s": sampled - start,
                "time/update_s": updated - sampled,
                "time/gradient_steps_per_s": config.pearl_gradient_steps / max(updated - sampled, 1e-9),
            }
        )
        return metrics

    def default_num_points(self) -> int:
        """Points of the evaluation curve: ``pearl_eval_episodes`` episodes per task."""
        return self.config.pearl_eval_episodes

    @torch.no_grad()
    def adaptation_curve(self, tasks: Sequence[Any], rng: np.random.Generator, num_points: int) -> AdaptationCurve:
        """Each task's return (and success) in each of ``num_points`` episodes played back to back: the first
        ``pearl_exploration_episodes`` with one z from the prior, each later one with z drawn from the posterior over
        every transition of the task seen so far (updated at each episode's end)."""
        self.networks.eval()
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        envs = self._trial_envs(len(tasks))
        actor = _PosteriorSamplingActor(self, generator)
        seed = int(rng.integers(2**31 - len(tasks)))
        batch = collect_trials(envs, self.family, list(tasks), num_points, actor, seed=seed, device=self.device)
        return AdaptationCurve.from_trials(batch)

    def selection_score(self, curve: Sequence[float]) -> float:
        """Validation score that picks the kept parameters: the mean return of the episodes that act on the posterior
        (after the ``pearl_exploration_episodes``; all of them when there are no others). The prior episodes measure
        the prior's policy, not adaptation, and their return swings by ±15 between validations on HalfCheetahVel."""
        posterior = list(curve)[self.config.pearl_exploration_episodes :]
        return float(np.mean(posterior if posterior else list(curve)))

    def state_dict(self) -> dict[str, Any]:
        """The networks, their optimisers and the env-step count (the replay buffers: :meth:`buffers_state_dict`)."""
        return {
            "networks": self.networks.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "encoder_optimizer": self.encoder_optimizer.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "env_steps": self.env_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.networks.load_state_dict(state["networks"])
        for name in ("critic_optimizer", "encoder_optimizer", "value_optimizer", "policy_optimizer"):
            if name in state:
                getattr(self, name).load_state_dict(state[name])
        self.env_steps = int(state.get("env_steps", self.env_steps))

    def buffers_state_dict(self) -> dict[str, Any]:
        """The replay buffers, saved beside ``last.pt`` (too large to copy each iteration or keep in ``best.pt``)."""
        return {"replay": self.replay.state_dict(), "encoder_replay": self.encoder_replay.state_dict()}

    def load_buffers_state_dict(self, state: Mapping[str, Any]) -> None:
        self.replay.load_state_dict(state["replay"])
        self.encoder_replay.load_state_dict(state["encoder_replay"])


def _rows(latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Each task's z ``[T, Z]`` repeated over its ``batch_size`` rows: ``[T·B, Z]``."""
    return latents.unsqueeze(1).expand(-1, batch_size, -1).reshape(-1, latents.shape[-1])


def _flat(values: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...]`` → ``[T·B, ...]``."""
    return values.reshape(values.shape[0] * values.shape[1], *values.shape[2:])


class _LatentActor:
    """Acts with a fixed z per trial (a :class:`metarl.trials.TrialPolicy` with no memory)."""

    def __init__(self, agent: PEARL, latents: torch.Tensor, generator: torch.Generator, deterministic: bool) -> None:
        self.agent, self.latents, self.generator, self.deterministic = agent, latents, generator, deterministic

    def initial_state(self, num_trials: int) -> None:
        return None

    def act(self, inputs: TrialInputs, state: None) -> tuple[torch.Tensor, None, dict[str, torch.Tensor]]:
        actions = _policy_actions(self.agent, inputs.observations, self.latents, self.generator, self.deterministic)
        return self.agent.to_env_actions(actions), state, {"squashed_action": actions}


def _policy_actions(
    agent: PEARL, observations: torch.Tensor, latents: torch.Tensor, generator: torch.Generator, deterministic: bool
) -> torch.Tensor:
    """Actions in [-1, 1]: sampled from π(· | s, z), or its mean action."""
    observations = observations.reshape(observations.shape[0], -1).to(agent.device)
    if deterministic:
        return agent.networks.policy.mean_action(observations, latents)
    noise = torch.randn((observations.shape[0], agent.action_size), generator=generator).to(agent.device)
    return agent.networks.policy(observations, latents, noise).action


class _PosteriorState(NamedTuple):
    """What the posterior-sampling actor remembers of each trial."""

    latents: torch.Tensor
    """``[N, Z]`` the z of the current episode."""
    precision: torch.Tensor
    """``[N, Z]`` Σ of the context factors' precisions (0: no context yet)."""
    weighted_means: torch.Tensor
    """``[N, Z]`` Σ of the factors' precision-weighted means."""
    previous_observations: torch.Tensor
    """``[N, S]`` the observation the last action was taken in."""
    steps: torch.Tensor
    """``[N]`` steps taken in the trial."""
    episodes: torch.Tensor
    """``[N]`` episodes finished."""


class _PosteriorSamplingActor:
    """PEARL's adaptation at test time (a :class:`metarl.trials.TrialPolicy`): z from the prior for the first
    ``pearl_exploration_episodes`` episodes, then at each episode's end a new z from the posterior over all the
    transitions of the trial so far. The posterior is kept as running sums of the factors' precisions and
    precision-weighted means, which is the product of Gaussians over the whole context, updated one step at a time.
    With ``pearl_next_obs_in_context`` the last transition of each episode is left out of the context (its s' is not
    among the trial's inputs)."""

    def __init__(self, agent: PEARL, generator: torch.Generator) -> None:
        self.agent, self.generator = agent, generator

    def initial_state(self, num_trials: int) -> _PosteriorState:
        agent = self.agent
        zeros = torch.zeros((num_trials, agent.config.pearl_latent_size), device=agent.device)
        return _PosteriorState(
            agent.prior_latents(num_trials, self.generator),
            zeros,
            zeros.clone(),
            torch.zeros((num_trials, agent.observation_size), device=agent.device),
            torch.zeros(num_trials, dtype=torch.long, device=agent.device),
            torch.zeros(num_trials, dtype=torch.long, device=agent.device),
        )

    def act(
        self, inputs: TrialInputs, state: _PosteriorState
    ) -> tuple[torch.Tensor, _PosteriorState, dict[str, torch.Tensor]]:
        agent, config = self.agent, self.agent.config
        observations = inputs.observations.reshape(inputs.observations.shape[0], -1).to(agent.device)
        ended = inputs.episode_ended.to(agent.device) > 0
        previous_actions = inputs.prev_actions.to(agent.device)
        span = agent.action_high - agent.action_low
        squashed_previous = (2 * (previous_actions - agent.action_low) / span - 1).clamp(-1, 1)
        transition = {
            "observations": state.previous_observations,
            "actions": squashed_previous,
            "rewards": inputs.prev_rewards.to(agent.device),
            "next_observations": observations,
        }
        counts = state.steps > 0
        if config.pearl_next_obs_in_context:
            counts = counts & ~ended
        means, variances = agent.networks.encoder.factors(agent.context_vectors(transition))
        precisions = counts.unsqueeze(-1).to(variances.dtype) / variances
        precision = state.precision + precisions
        weighted_means = state.weighted_means + precisions * means
        episodes = state.episodes + ended.long()

        # at an episode's end, past the exploration episodes: a new z from the posterior over the context so far
        resample = ended & (episodes >= config.pearl_exploration_episodes) & (precision > 0).all(dim=-1)
        latents = state.latents
        if bool(resample.any()):
            variance = 1.0 / precision.clamp_min(1e-12)
            posterior = GaussianPosterior(variance * weighted_means, variance)
            latents = torch.where(resample.unsqueeze(-1), posterior.sample(self.generator), latents)
        actions = _policy_actions(agent, observations, latents, self.generator, config.pearl_deterministic_evaluation)
        next_state = _PosteriorState(latents, precision, weighted_means, observations, state.steps + 1, episodes)
        return agent.to_env_actions(actions), next_state, {}


register_agent("pearl", PEARL, PEARLConfig)
