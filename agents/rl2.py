"""RL²: a recurrent policy whose hidden state carries across the episodes of a trial, trained with PPO.

The policy reads, at every step, the observation, the previous action, the previous reward and a flag for "an
episode just ended" (:func:`metarl.trials.trial_input_vector`); its GRU hidden state persists across the episode
boundaries inside a trial and is reset between trials. Meta-training is plain RL on trials: the reward of the
whole trial is what PPO maximises, so the GRU learns to explore early and exploit later. Adaptation at test time is
nothing but running the policy: the "learning" happens in the hidden state.

One meta-iteration:

1. play one trial of ``trial_episodes`` episodes on each task of the meta-batch, all trials in parallel
   (:func:`metarl.trials.collect_trials` over the family's native batched env);
2. GAE over whole trials (the trial is the episode: no cut at the inner episode boundaries), with the critic's
   values de-normalised by a running return normaliser;
3. ``ppo_epochs`` epochs of clipped-PPO updates over minibatches of whole trials (or of ``rl2_bptt_steps``-long
   chunks with truncated backpropagation through time, starting from the hidden states of the rollout).

References:
    Duan et al. "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", arXiv:1611.02779, 2016.
    Wang et al. "Learning to reinforcement learn", arXiv:1611.05763, 2016.
    Schulman et al. "Proximal Policy Optimization Algorithms", arXiv:1707.06347, 2017.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from metarl.agents.ppo import PPOConfig
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from metarl.advantages import gae
from metarl.agent import AdaptationCurve, CurveKind
from metarl.budget import (
    FLOAT_BYTES,
    MemoryEstimate,
    evaluation_trials_estimate,
    largest,
    trial_step_bytes,
    trials_estimate,
    with_sub_envs,
)
from metarl.config import check_at_least
from metarl.distributed import TaskShard, Workers, sample_actions
from metarl.registry import register_agent
from metarl.tasks import TaskFamily
from metarl.trials import TrialBatch, TrialInputs, collect_trials, make_trial_envs, trial_input_size, trial_input_vector

# Memory estimate (metarl.budget), calibrated on the peak resident memory of RL² on Navigation2D as the meta-batch
# grows (100 -> 1600 trials; GRUs of 128 and 512 units; 1 and 4 minibatches). PPO's update is the peak: per step of the
# meta-batch, a fixed part, and the graph of one minibatch (its GRUs' activations: per unit of each GRU).
UPDATE_FLOATS_PER_STEP = 200
"""The update's per-step tensors (advantages, targets, normalised values, minibatch copies), beyond the trial
buffers and four copies of the input vector."""
MINIBATCH_FLOATS_PER_STEP = 750
"""A minibatch's graph per step, beside its GRUs (heads, distribution, losses)."""
GRU_FLOATS_PER_UNIT = 11
"""A minibatch's graph per step and GRU unit (gates, states and their gradients, in each GRU)."""


@dataclasses.dataclass
class RL2Config(PPOConfig):
    """RL²'s fields: the trials, the recurrent actor-critic and PPO (``meta_batch_size`` is the number of trials
    per meta-iteration, one per task; PPO's minibatches are of whole trials, or of BPTT chunks, and GAE runs over
    whole trials)."""

    algo: str = "rl2"
    trial_episodes: int = 2
    """Episodes per trial (n); the hidden state persists across them and is reset between trials."""
    rl2_hidden_size: int = 256
    """GRU units of the actor (and of the critic)."""
    rl2_shared_critic: bool = False
    """One GRU feeds both heads (default: a separate critic GRU)."""
    rl2_bptt_steps: int = 0
    """Truncated backpropagation through time over chunks of this many steps (0: whole trials)."""

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "trial_episodes rl2_hidden_size")
        check_at_least(self, 0, "rl2_bptt_steps")


class RecurrentActorCritic(nn.Module):
    """A GRU actor and a GRU critic (or one GRU shared by both heads) over trial inputs.

    The state of ``N`` trials is one tensor ``[G, N, hidden_size]`` (G = 2 GRUs, or 1 when shared), so that the
    rollout, the checkpoint and truncated BPTT handle a single object.

    Args:
        input_size: length of the trial input vector.
        action_space: ``Discrete`` (categorical head) or ``Box`` (Gaussian head with a learned state-independent
            log-std).
        hidden_size: GRU units.
        shared_critic: one GRU feeds both heads (cheaper; the default is a separate critic GRU, which keeps the
            value loss from shaping the policy's memory).
    """

    def __init__(
        self, input_size: int, action_space: gym.Space, hidden_size: int = 256, shared_critic: bool = False
    ) -> None:
        super().__init__()
        action_outputs, self.log_std = action_outputs_and_log_std(action_space, "RL²")
        self.action_space = action_space
        self.hidden_size = hidden_size
        self.actor_gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.critic_gru = None if shared_critic else nn.GRU(input_size, hidden_size, batch_first=True)
        self.action_head = nn.Linear(hidden_size, action_outputs)
        self.value_head = nn.Linear(hidden_size, 1)
        # small initial action outputs: a near-uniform (or unit-std) policy explores evenly at the start
        nn.init.orthogonal_(self.action_head.weight, gain=0.01)
        nn.init.zeros_(self.action_head.bias)
        nn.init.orthogonal_(self.value_head.weight, gain=1.0)
        nn.init.zeros_(self.value_head.bias)

    @property
    def num_grus(self) -> int:
        return 1 if self.critic_gru is None else 2

    def initial_state(self, num_trials: int) -> torch.Tensor:
        """The zero hidden state of ``num_trials`` new trials, ``[G, N, hidden_size]``."""
        device = self.action_head.weight.device
        return torch.zeros((self.num_grus, num_trials, self.hidden_size), device=device)

    def forward(self, inputs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run ``inputs [N, L, D]`` from ``state [G, N, H]``.

        Returns:
            ``(action_outputs [N, L, A], values [N, L], final_state [G, N, H])``; values are in the normalised
            scale of the return normaliser.
        """
        actor_features, actor_state = self.actor_gru(inputs, state[:1].contiguous())
        if self.critic_gru is None:
            critic_features, final_state = actor_features, actor_state
        else:
            critic_features, critic_state = self.critic_gru(inputs, state[1:].contiguous())
            final_state = torch.cat([actor_state, critic_state])
        return self.action_head(actor_features), self.value_head(critic_features)[..., 0], final_state

    def distribution(self, action_outputs: torch.Tensor) -> Distribution:
        """The action distribution given the action head's outputs."""
        return action_distribution(action_outputs, self.log_std)


def action_outputs_and_log_std(action_space: gym.Space, who: str) -> tuple[int, nn.Parameter | None]:
    """The action head's width for ``action_space`` and, for a 1-d ``Box``, the learned state-independent log-std
    of its Gaussian (zeros: std 1); ``None`` for a ``Discrete`` space's categorical. Other spaces are refused,
    naming ``who``."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n), None
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return int(action_space.shape[0]), nn.Parameter(torch.zeros(int(action_space.shape[0])))
    raise ValueError(f"{who} supports Discrete and 1-d Box action spaces, got {action_space!r}")


def action_distribution(action_outputs: torch.Tensor, log_std: torch.Tensor | None) -> Distribution:
    """A categorical over logits ``action_outputs`` (``log_std`` None: discrete actions), or a diagonal Gaussian with
    mean ``action_outputs`` and the state-independent ``log_std``."""
    if log_std is None:
        return Categorical(logits=action_outputs, validate_args=False)
    std = log_std.exp().expand_as(action_outputs)
    return Independent(Normal(action_outputs, std, validate_args=False), 1, validate_args=False)


class ReturnNormalizer(nn.Module):
    """Running mean and variance of the value targets (exponential average, bias-corrected).

    The critic predicts returns in this normalised scale: trial returns range from ~1 (bandits) to ~400 (tabular
    MDPs, 25 episodes), and a fixed-scale value head would learn the large ones slowly.
    """

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("mean_of_squares", torch.zeros(()))
        self.register_buffer("debias", torch.zeros(()))

    def update(self, targets: torch.Tensor, masks: torch.Tensor, workers: Workers | None = None) -> None:
        """Fold in the real steps' ``targets``; with ``workers``, those of every process's block of the batch."""
        sums = torch.stack([masks.sum(), (targets * masks).sum(), (targets.square() * masks).sum()])
        weight, batch_mean, batch_mean_of_squares = (workers or Workers()).sum(sums)
        batch_mean, batch_mean_of_squares = batch_mean / weight, batch_mean_of_squares / weight
        self.mean.mul_(self.decay).add_((1 - self.decay) * batch_mean)
        self.mean_of_squares.mul_(self.decay).add_((1 - self.decay) * batch_mean_of_squares)
        self.debias.mul_(self.decay).add_(1 - self.decay)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The running ``(mean, std)``; ``(0, 1)`` before the first update."""
        if float(self.debias) == 0.0:
            return torch.zeros_like(self.mean), torch.ones_like(self.mean)
        mean = self.mean / self.debias
        variance = (self.mean_of_squares / self.debias - mean.square()).clamp(min=1e-4)
        return mean, variance.sqrt()

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        mean, std = self.moments()
        return (values - mean) / std

    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        mean, std = self.moments()
        return values * std + mean


class RL2:
    """RL²: a GRU policy whose memory spans the episodes of a trial, trained with PPO over whole trials.

    Its fields are :class:`RL2Config`'s. With several ``workers`` each process plays its block of the trials and the
    PPO gradients, advantage moments and return moments are summed over processes (:mod:`metarl.distributed`).

    References:
        Duan et al. "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", arXiv:1611.02779, 2016.
    """

    curve_kind: ClassVar[CurveKind] = CurveKind.EPISODE
    """Evaluation curves are the mean return of each episode of the trial."""
    trains_across_processes: ClassVar[bool] = True
    """Each process plays its block of the trials; PPO's gradients and moments are summed over processes."""
    progress_metrics: ClassVar[tuple[str, ...]] = (
        "meta/trial_return",
        "meta/return_first_episode",
        "meta/return_last_episode",
    )

    def __init__(
        self, family: TaskFamily, config: RL2Config, device: torch.device, workers: Workers | None = None
    ) -> None:
        self.family = family
        self.config = config
        self.device = device
        self.workers = workers or Workers()
        self.policy = self.make_policy(family, config).to(device)
        self.return_normalizer = ReturnNormalizer().to(device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.ppo_learning_rate, eps=1e-5)
        self._envs: dict[int, gym.vector.VectorEnv] = {}

    @staticmethod
    def make_policy(family: TaskFamily, config: Any) -> nn.Module:
        """The sequence model over trial inputs: a module with ``initial_state(n)``, ``forward(inputs [N, L, D],
        state) -> (action_outputs, values, final_state)`` and ``distribution(action_outputs)``; a subclass of RL² with
        another memory (a transformer's) overrides this and :attr:`bptt_steps`."""
        return RecurrentActorCritic(
            trial_input_size(family), family.action_space, config.rl2_hidden_size, config.rl2_shared_critic
        )

    @property
    def bptt_steps(self) -> int:
        """Truncated backpropagation through time over chunks of this many steps (0: whole trials)."""
        return self.config.rl2_bptt_steps

    @classmethod
    def memory_estimate(cls, config: RL2Config, family: TaskFamily) -> MemoryEstimate:
        """The memory of the larger of a training iteration (its trials and PPO's update on them) and an evaluation's
        trials, and of the trial envs kept for each size (:mod:`metarl.budget`)."""
        grus = 1 if config.rl2_shared_critic else 2
        stored = 2 * trial_step_bytes(family)  # time-major while collecting, then trial-major
        update_floats = UPDATE_FLOATS_PER_STEP + 4 * trial_input_size(family)
        update_floats += (MINIBATCH_FLOATS_PER_STEP + GRU_FLOATS_PER_UNIT * grus * config.rl2_hidden_size) / min(
            config.ppo_minibatches, config.meta_batch_size
        )
        if config.rl2_bptt_steps:
            update_floats += 2 * grus * config.rl2_hidden_size  # each step's hidden state, kept to start chunks from
        episodes, horizon = config.trial_episodes, family.horizon
        training = trials_estimate(
            "training's trials and PPO update",
            config,
            episodes,
            horizon,
            stored + FLOAT_BYTES * update_floats,
            ("meta_batch_size", "trial_episodes", "rl2_hidden_size"),
            note=f"rl2_hidden_size {config.rl2_hidden_size}, ppo_minibatches {config.ppo_minibatches}",
        )
        evaluation = evaluation_trials_estimate(config, episodes, horizon, stored)
        sizes = [config.meta_batch_size, config.eval_tasks, config.test_tasks]
        return with_sub_envs(largest(training, evaluation), sizes, family)

    # -- acting: a TrialPolicy ------------------------------------------------------------------------------------
    def initial_state(self, num_trials: int) -> torch.Tensor:
        return self.policy.initial_state(num_trials)

    def act(
        self, inputs: TrialInputs, state: torch.Tensor, shard: TaskShard | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Actions of every trial; with a ``shard`` these trials are that block of the meta-batch's and the noise is
        drawn for the whole meta-batch."""
        vector = trial_input_vector(inputs, self.family.action_space).to(self.device)[:, None]
        action_outputs, values, next_state = self.policy(vector, state)
        distribution = self.policy.distribution(action_outputs[:, 0])
        actions = sample_actions(distribution, shard)
        extras = {"log_prob": distribution.log_prob(actions), "value": values[:, 0]}
        if self.bptt_steps:
            extras["state"] = state.movedim(0, 1)  # [N, G, H]: where a truncated-BPTT chunk starts from
        return actions, next_state, extras

    def collect(self, tasks: Sequence[Any], rng: np.random.Generator, num_episodes: int | None = None) -> TrialBatch:
        """One trial of ``num_episodes`` episodes (default ``trial_episodes``) per task, all in parallel: the trials
        of this process's block of ``tasks`` (all of them with one process), each seeded by its position in
        ``tasks``."""
        shard = self.workers.shard(len(tasks))
        seed = int(rng.integers(2**31 - shard.total)) + shard.start
        if shard.size not in self._envs:
            self._envs[shard.size] = make_trial_envs(self.family, shard.size, device=self.device)
        return collect_trials(
            self._envs[shard.size],
            self.family,
            shard.select(tasks),
            self.config.trial_episodes if num_episodes is None else num_episodes,
            _ShardActor(self, shard),
            seed=seed,
            device=self.device,
        )

    # -- the meta-trainer's protocol ------------------------------------------------------------------------------
    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        start = time.perf_counter()
        self.policy.eval()
        batch = self.collect(tasks, rng)
        sampled = time.perf_counter()
        metrics = self.update(batch, len(tasks))
        trial_return, first_episode, last_episode, env_steps = self.workers.sum_floats(
            [
                batch.trial_returns.sum(),
                batch.episode_returns[:, 0].sum(),
                batch.episode_returns[:, -1].sum(),
                batch.masks.sum(),
            ]
        )
        metrics["meta/env_steps"] = env_steps  # of the whole meta-batch (throughput = env_steps / time/iteration_s)
        metrics["meta/trial_return"] = trial_return / len(tasks)
        metrics["meta/return_first_episode"] = first_episode / len(tasks)
        metrics["meta/return_last_episode"] = last_episode / len(tasks)
        metrics["time/sample_s"] = sampled - start
        metrics["time/update_s"] = time.perf_counter() - sampled
        return metrics

    def evaluate_trials(
        self, tasks: Sequence[Any], rng: np.random.Generator, num_episodes: int | None = None
    ) -> TrialBatch:
        """One trial per task with the current policy (actions sampled, as in training)."""
        self.policy.eval()
        return self.collect(tasks, rng, num_episodes)

    def default_num_points(self) -> int:
        """Points of the evaluation curve: the episodes of a trial as trained."""
        return self.config.trial_episodes

    def adaptation_curve(self, tasks: Sequence[Any], rng: np.random.Generator, num_points: int) -> AdaptationCurve:
        """Each task's return (and success) in each episode of one trial of ``num_points`` episodes (the hidden
        state carried across them; more episodes than trained on measure how the agent extrapolates)."""
        batch = self.evaluate_trials(tasks, rng, num_points)
        gather = functools.partial(self.workers.gather, shard=self.workers.shard(len(tasks)))
        successes = batch.episode_successes
        return AdaptationCurve.from_tensors(
            gather(batch.episode_returns).T, None if successes is None else gather(successes).T
        )

    def selection_score(self, curve: Sequence[float]) -> float:
        """Validation score that picks the kept parameters: the mean total reward of a trial."""
        return float(sum(curve))

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "return_normalizer": self.return_normalizer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.return_normalizer.load_state_dict(state["return_normalizer"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])

    # -- PPO ------------------------------------------------------------------------------------------------------
    def _normalize_advantages(self, advantages: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Advantages standardised over the real steps of the whole meta-batch (every process's trials)."""
        count, total = self.workers.sum(torch.stack([masks.sum(), (advantages * masks).sum()]))
        mean = total / count
        (squares,) = self.workers.sum(((advantages - mean).square() * masks).sum().unsqueeze(0))
        std = (squares / (count - 1)).sqrt()  # unbiased, as torch.std
        return (advantages - mean) / (std + 1e-8)

    def update(self, batch: TrialBatch, total_trials: int | None = None) -> dict[str, float]:
        """Clipped-PPO epochs over the trials of ``batch``; returns the loss metrics.

        ``batch`` holds this process's block of a meta-batch of ``total_trials`` trials (default: all of them). The
        minibatches are drawn over the whole meta-batch; each process computes its members' share of a minibatch's
        losses, and the gradients are summed over processes before the step.
        """
        config = self.config
        masks = batch.masks
        old_log_probs = batch.extras["log_prob"]
        shard = self.workers.shard(total_trials or masks.shape[0])

        # advantages over whole trials: the trial is the episode, it ends (terminally) after its n-th episode
        values = self.return_normalizer.denormalize(batch.extras["value"])
        advantages, value_targets = trial_advantages(batch.rewards, values, masks, config.gamma, config.gae_lambda)
        self.return_normalizer.update(value_targets, masks, self.workers)
        normalized_targets = self.return_normalizer.normalize(value_targets)
        advantages = self._normalize_advantages(advantages, masks)

        inputs = trial_input_vector(batch.inputs, self.family.action_space)
        sequences = _Sequences(inputs, batch.actions, old_log_probs, advantages, normalized_targets, masks)
        initial_states = None
        chunks_per_trial = 1
        if self.bptt_steps:
            sequences, initial_states = sequences.chunked(self.bptt_steps, batch.extras["state"])
            chunks_per_trial = sequences.inputs.shape[0] // shard.size
        # this process's sequences are the block [first, first + count) of the meta-batch's (trial-major)
        first, count = shard.start * chunks_per_trial, shard.size * chunks_per_trial
        num_sequences = shard.total * chunks_per_trial
        num_minibatches = min(config.ppo_minibatches, num_sequences)

        self.policy.train()
        totals: dict[str, float] = {}
        updates = 0
        for _ in range(config.ppo_epochs):
            order = torch.randperm(num_sequences, device=self.device)
            for minibatch in order.tensor_split(num_minibatches):
                mine = minibatch[(minibatch >= first) & (minibatch < first + count)] - first
                part = sequences.select(mine)
                (weight,) = self.workers.sum_floats([part.masks.sum()])  # real steps in the whole minibatch
                state = (
                    self.policy.initial_state(len(mine))
                    if initial_states is None
                    else initial_states[mine].movedim(0, 1).contiguous()
                )
                action_outputs, predicted_values, _ = self.policy(part.inputs, state)
                distribution = self.policy.distribution(action_outputs)
                log_probs = distribution.log_prob(part.actions)

                # this process's share of each loss: sums over its members, divided by the minibatch's real steps
                ratio = torch.exp(log_probs - part.old_log_probs)
                policy_loss = clipped_surrogate_loss(ratio, part.advantages, part.masks, config.ppo_clip, weight)
                # value loss, in the normalised scale
                value_loss = ((predicted_values - part.value_targets).square() * part.masks).sum() / weight
                entropy = (distribution.entropy() * part.masks).sum() / weight
                loss = policy_loss + config.ppo_value_coeff * value_loss - config.ppo_entropy_coeff * entropy
                with torch.no_grad():
                    log_ratio = log_probs - part.old_log_probs
                    approx_kl = (((ratio - 1) - log_ratio) * part.masks).sum() / weight  # Schulman's k3 estimator
                    clip_fraction = (((ratio - 1).abs() > config.ppo_clip).float() * part.masks).sum() / weight
                minibatch_metrics = dict(
                    zip(
                        (
                            "losses/total",
                            "losses/policy",
                            "losses/value",
                            "losses/entropy",
                            "losses/approx_kl",
                            "losses/clip_fraction",
                        ),
                        self.workers.sum_floats([loss, policy_loss, value_loss, entropy, approx_kl, clip_fraction]),
                        strict=True,
                    )
                )
                # the whole minibatch's loss decides, so that every process raises together
                total_loss = minibatch_metrics.pop("losses/total")
                if not math.isfinite(total_loss):
                    raise FloatingPointError(f"RL² PPO loss is {total_loss}")

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.workers.sum_gradients(self.policy.parameters())
                grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), config.max_grad_norm)
                self.optimizer.step()

                minibatch_metrics["losses/grad_norm"] = float(grad_norm)
                for key, value in minibatch_metrics.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        self.policy.eval()
        metrics = {key: value / updates for key, value in totals.items()}
        metrics["losses/value_scale"] = float(self.return_normalizer.moments()[1])
        return metrics


def clipped_surrogate_loss(
    ratio: torch.Tensor, advantages: torch.Tensor, masks: torch.Tensor, clip: float, weight: float | None = None
) -> torch.Tensor:
    """PPO's policy loss: ``-mean(min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A))`` over the real steps
    (the sum divided by ``weight`` instead when given: a share of a mean over more steps than these)."""
    clipped_ratio = ratio.clamp(1 - clip, 1 + clip)
    surrogate = torch.minimum(ratio * advantages, clipped_ratio * advantages)
    return -(surrogate * masks).sum() / (masks.sum() if weight is None else weight)


def trial_advantages(
    rewards: torch.Tensor, values: torch.Tensor, masks: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over whole trials ``[N, L]`` and the value targets (advantages + values).

    The trial is RL²'s episode: the inner episode boundaries are not cut (the agent's memory, and so its value,
    runs on), and the trial ends terminally after its last real step (no bootstrap).
    """
    advantages = gae(rewards, values, masks, gamma, lam)
    return advantages, advantages + values


class _Sequences:
    """The per-step training data of PPO, sequence-major ``[S, L, ...]`` (S trials or chunks of L steps)."""

    def __init__(
        self,
        inputs: torch.Tensor,
        actions: torch.Tensor,
        old_log_probs: torch.Tensor,
        advantages: torch.Tensor,
        value_targets: torch.Tensor,
        masks: torch.Tensor,
    ) -> None:
        self.inputs, self.actions, self.old_log_probs = inputs, actions, old_log_probs
        self.advantages, self.value_targets, self.masks = advantages, value_targets, masks

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.inputs, self.actions, self.old_log_probs, self.advantages, self.value_targets, self.masks)

    def select(self, index: torch.Tensor) -> _Sequences:
        return _Sequences(*(field[index] for field in self._fields()))

    def chunked(self, chunk_steps: int, states: torch.Tensor) -> tuple[_Sequences, torch.Tensor]:
        """Cut every trial into chunks of ``chunk_steps`` steps (the last one padded with masked steps).

        Returns the chunks and the rollout's hidden state at the start of each, ``[S', G, H]``: truncated BPTT
        starts each chunk from the state the policy really had there, and gradients stop at the chunk's start.
        """
        length = self.inputs.shape[1]
        num_chunks = math.ceil(length / chunk_steps)
        padding = num_chunks * chunk_steps - length

        def cut(field: torch.Tensor) -> torch.Tensor:
            if padding:
                pad = torch.zeros((field.shape[0], padding, *field.shape[2:]), dtype=field.dtype, device=field.device)
                field = torch.cat([field, pad], dim=1)
            return field.reshape(field.shape[0] * num_chunks, chunk_steps, *field.shape[2:])

        chunk_states = states[:, ::chunk_steps].reshape(-1, *states.shape[2:])
        return _Sequences(*(cut(field) for field in self._fields())), chunk_states


class _ShardActor:
    """The agent acting on one block of a meta-batch's trials (a :class:`metarl.trials.TrialPolicy`)."""

    def __init__(self, agent: RL2, shard: TaskShard) -> None:
        self.agent = agent
        self.shard = shard

    def initial_state(self, num_trials: int) -> torch.Tensor:
        return self.agent.initial_state(num_trials)

    def act(self, inputs: TrialInputs, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        return self.agent.act(inputs, state, self.shard)


register_agent("rl2", RL2, RL2Config)
