"""VariBAD: a variational belief over the task, inferred online by a recurrent encoder, and a PPO policy acting on it.

VariBAD treats meta-RL as a Bayes-adaptive MDP: the agent does not know the task m, holds a belief over it, and acts
on the belief. The belief is learned with a VAE over whole trials. A GRU encoder reads the transitions
``(a, r, s')`` of a trial one by one and gives, after every step t, a Gaussian posterior ``q(m | τ_{:t})`` over a
latent task variable (``q_0``, before any transition, is the prior). A decoder predicts rewards (and, optionally,
next observations) from a sample of m; the encoder and decoder are trained to maximise, for every t of the trial,

    ELBO_t = E_{m ~ q(m | τ_{:t})} [ Σ_{j over the whole trial, past and future} log p(r_j | s_j, a_j, s'_j, m) ]
             − KL( q(m | τ_{:t}) ‖ q(m | τ_{:t-1}) ),     with q(m | τ_{:-1}) = N(0, I),

so that the belief after a few steps predicts the rest of the trial. The policy ``π(a | s, mean_t, logvar_t)`` reads
the observation and the posterior's parameters and is trained with PPO on the trial's return; its gradient does not
flow into the encoder (the posterior is stored detached, the paper's default).

One meta-iteration:

1. play one trial of ``trial_episodes`` episodes on each task of the meta-batch, all trials in parallel on the
   family's batched env (:func:`metarl.trials.collect_trials`), the encoder stepped once per env step for all trials
   and the policy acting on the current posterior;
2. add the trials to the VAE's buffer of recent trials;
3. PPO on the trials: GAE over whole trials (the trial is the unit that ends, as in RL²), ``ppo_epochs`` epochs of
   ``ppo_minibatches`` minibatches of steps (the policy is feed-forward given the belief);
4. ``varibad_vae_updates`` VAE updates, each on ``varibad_vae_batch_trials`` trials drawn from the buffer: the encoder
   runs over the whole trials in one pass, and the ELBO terms (all of them, or ``varibad_elbo_samples`` posteriors ×
   ``varibad_decode_samples`` decoded steps drawn per trial, as the authors subsample) are decoded in one batch.

The defaults are the paper's MuJoCo settings (the authors' ``config/mujoco/args_cheetah_vel_varibad.py``); what differs
and why is in ``docs/algorithms/varibad.md``.

References:
    Zintgraf, Shiarlis, Igl, Schulze, Gal, Hofmann, Whiteson. "VariBAD: A Very Good Method for Bayes-Adaptive Deep RL
    via Meta-Learning", ICLR 2020 (arXiv:1910.08348).
    Schulman et al. "Proximal Policy Optimization Algorithms", arXiv:1707.06347, 2017.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from metarl.agents.pearl import mlp
from metarl.agents.ppo import PPOConfig
from metarl.agents.rl2 import (
    ReturnNormalizer,
    action_distribution,
    action_outputs_and_log_std,
    clipped_surrogate_loss,
    trial_advantages,
)
from torch import nn
from torch.distributions import Distribution

from metarl.agent import AdaptationCurve, CurveKind
from metarl.budget import (
    FLOAT_BYTES,
    MemoryEstimate,
    evaluation_trials_estimate,
    largest,
    observation_floats,
    trial_step_bytes,
    trials_estimate,
    with_sub_envs,
)
from metarl.config import check_at_least, check_layer_sizes, check_positive_numbers
from metarl.distributed import Workers, sample_actions
from metarl.registry import register_agent
from metarl.replay import TaskReplayBuffers, replay_bytes
from metarl.tasks import TaskFamily
from metarl.trials import TrialBatch, TrialInputs, collect_trials, encode_prev_actions, make_trial_envs

# Memory estimate (metarl.budget), calibrated on the growth of the peak resident memory over three training iterations
# and an evaluation (HalfCheetahVel and sparse point robot presets; 4 to 128 trials per iteration, VAE batches of 1 to
# 60 trials): the trial buffer is exact; a trial step holds the trial batch's tensors and the policy's PPO pass; a
# decoded (posterior, step) pair of the VAE batch holds the decoder's activations and their gradients.
POLICY_FLOATS_PER_UNIT = 2
"""Floats PPO's update holds per step of the meta-batch and per hidden unit of the policy (activations, gradients,
minibatch copies)."""
DECODER_FLOATS_PER_UNIT = 4
"""Floats the VAE update holds per decoded (posterior, step) pair and per input or hidden unit of the decoders."""


@dataclasses.dataclass
class VariBADConfig(PPOConfig):
    """VariBAD's fields, defaulting to the paper's MuJoCo settings (Zintgraf et al. 2020; the authors'
    ``args_cheetah_vel_varibad.py``). ``meta_batch_size`` is the number of trials per meta-iteration, one per task."""

    algo: str = "varibad"
    meta_batch_size: int = 16
    """Trials per meta-iteration (the authors' 16 processes)."""
    gamma: float = 0.97
    gae_lambda: float = 0.9
    ppo_epochs: int = 2
    ppo_minibatches: int = 8
    ppo_clip: float = 0.1
    ppo_learning_rate: float = 7e-4
    ppo_entropy_coeff: float = 0.01
    trial_episodes: int = 2
    """Episodes per trial (the BAMDP's horizon H+ = trial_episodes × the family's horizon); the belief persists
    across them and is reset between trials."""
    varibad_latent_size: int = 5
    """Dimensions of the latent task variable m."""
    varibad_encoder_hidden_size: int = 128
    """GRU units of the encoder."""
    varibad_action_embedding_size: int = 16
    """The encoder's (and the decoders') embedding of an action."""
    varibad_state_embedding_size: int = 32
    """The encoder's (and the decoders') embedding of an observation."""
    varibad_reward_embedding_size: int = 16
    """The encoder's embedding of a reward."""
    varibad_reward_decoder_sizes: tuple[int, ...] = (64, 32)
    """Hidden layers of the reward decoder."""
    varibad_decoder_sees_transition: bool = True
    """The reward decoder reads s and a beside s' and m (the authors' MuJoCo setting); off: s' and m only (their
    point robot's)."""
    varibad_decode_state: bool = False
    """Also decode next observations from (s, a, m) (off in the paper's MuJoCo runs)."""
    varibad_state_decoder_sizes: tuple[int, ...] = (64, 32)
    """Hidden layers of the state decoder."""
    varibad_state_loss_weight: float = 1.0
    """Weight of the state reconstruction term."""
    varibad_kl_weight: float = 0.1
    """Weight of the KL terms in the ELBO."""
    varibad_vae_learning_rate: float = 1e-3
    """Adam's learning rate for the encoder and decoders."""
    varibad_vae_max_grad_norm: float = 1.0
    """The encoder's and each decoder's gradients are clipped to this norm (0: no clipping)."""
    varibad_vae_buffer_trials: int = 10_000
    """Recent trials the VAE's buffer keeps (the oldest are replaced)."""
    varibad_vae_batch_trials: int = 10
    """Trials per VAE update."""
    varibad_vae_updates: int = 1
    """VAE updates per meta-iteration."""
    varibad_elbo_samples: int = 50
    """ELBO terms (posteriors q_t) per trial in a VAE update, drawn at random (0: all of them, t = 0 .. T)."""
    varibad_decode_samples: int = 50
    """Steps each drawn ELBO term decodes, drawn at random (0: every step of the trial)."""
    varibad_policy_hidden_sizes: tuple[int, ...] = (128, 128)
    """Hidden tanh layers of the actor and of the critic."""
    varibad_policy_embedding_size: int = 64
    """The policy's tanh embeddings of the observation and of the belief (mean and log-variance)."""

    def validate(self) -> None:
        super().validate()
        check_at_least(
            self,
            1,
            "trial_episodes varibad_latent_size varibad_encoder_hidden_size varibad_action_embedding_size "
            "varibad_state_embedding_size varibad_reward_embedding_size varibad_vae_buffer_trials "
            "varibad_vae_batch_trials varibad_policy_embedding_size",
        )
        check_at_least(self, 0, "varibad_vae_updates varibad_elbo_samples varibad_decode_samples")
        check_layer_sizes(self, "varibad_reward_decoder_sizes varibad_state_decoder_sizes varibad_policy_hidden_sizes")
        check_positive_numbers(self, "varibad_vae_learning_rate")
        check_positive_numbers(
            self, "varibad_kl_weight varibad_state_loss_weight varibad_vae_max_grad_norm", zero_allowed=True
        )


# -- networks -----------------------------------------------------------------------------------------------------
def _embedding(input_size: int, output_size: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(input_size, output_size), activation())


def action_features(actions: torch.Tensor, action_space: gym.Space) -> torch.Tensor:
    """Actions as the encoder and decoders read them: one-hot (Discrete) or clipped to the box (Box), ``[..., A]``."""
    if isinstance(action_space, gym.spaces.Discrete):
        index = (actions.long() - int(action_space.start)).clamp(min=0)
        return nn.functional.one_hot(index, int(action_space.n)).to(torch.float32)
    return encode_prev_actions(action_space, actions).reshape(*actions.shape[: actions.dim() - 1], -1)


def action_feature_size(action_space: gym.Space) -> int:
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    return int(np.prod(action_space.shape))


class Posterior(NamedTuple):
    """Diagonal Gaussians ``N(mean, exp(logvar))`` over the latent task variable, ``[..., Z]`` each."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def belief(self) -> torch.Tensor:
        """What the policy reads: ``[mean, logvar]``, ``[..., 2Z]``."""
        return torch.cat([self.mean, self.logvar], dim=-1)


class TrialEncoder(nn.Module):
    """A GRU over embedded transitions ``(a_j, r_j, s'_j)`` whose hidden state gives the posterior after each step.

    The hidden state starts at zero, so the prior ``q_0`` is the heads' output at zero (learned biases), as in the
    authors' code.
    """

    def __init__(self, observation_size: int, action_size: int, config: VariBADConfig) -> None:
        super().__init__()
        self.hidden_size = config.varibad_encoder_hidden_size
        self.action_embedding = _embedding(action_size, config.varibad_action_embedding_size)
        self.state_embedding = _embedding(observation_size, config.varibad_state_embedding_size)
        self.reward_embedding = _embedding(1, config.varibad_reward_embedding_size)
        input_size = (
            config.varibad_action_embedding_size
            + config.varibad_state_embedding_size
            + config.varibad_reward_embedding_size
        )
        self.gru = nn.GRU(input_size, self.hidden_size, batch_first=True)
        for name, parameter in self.gru.named_parameters():
            if "bias" in name:
                nn.init.zeros_(parameter)
            else:
                nn.init.orthogonal_(parameter)
        self.mean_head = nn.Linear(self.hidden_size, config.varibad_latent_size)
        self.logvar_head = nn.Linear(self.hidden_size, config.varibad_latent_size)

    def initial_hidden(self, num_trials: int) -> torch.Tensor:
        """The hidden state before any transition, ``[1, N, H]`` (zeros)."""
        return torch.zeros((1, num_trials, self.hidden_size), device=self.mean_head.weight.device)

    def posterior(self, hidden: torch.Tensor) -> Posterior:
        """The posterior given GRU states ``[..., H]``."""
        return Posterior(self.mean_head(hidden), self.logvar_head(hidden))

    def _inputs(self, actions: torch.Tensor, rewards: torch.Tensor, next_observations: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.action_embedding(actions),
                self.state_embedding(next_observations),
                self.reward_embedding(rewards.unsqueeze(-1)),
            ],
            dim=-1,
        )

    def step(
        self, actions: torch.Tensor, rewards: torch.Tensor, next_observations: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        """Fold one transition of each of N trials (``[N, A]``, ``[N]``, ``[N, O]``) into ``hidden [1, N, H]``."""
        inputs = self._inputs(actions, rewards, next_observations)[:, None]
        _, hidden = self.gru(inputs, hidden)
        return hidden

    def forward(self, actions: torch.Tensor, rewards: torch.Tensor, next_observations: torch.Tensor) -> Posterior:
        """The posteriors ``q_0 .. q_L`` of trials of L transitions (``[B, L, A]``, ``[B, L]``, ``[B, L, O]``), in one
        pass: ``[B, L + 1, Z]`` each, the prior first."""
        inputs = self._inputs(actions, rewards, next_observations)
        outputs, _ = self.gru(inputs, self.initial_hidden(inputs.shape[0]))
        hidden = torch.cat([torch.zeros_like(outputs[:, :1]), outputs], dim=1)
        return self.posterior(hidden)


class RewardDecoder(nn.Module):
    """``p(r | s, a, s', m)``, deterministic (the ELBO's log-likelihood is then a squared error, as the authors')."""

    def __init__(self, observation_size: int, action_size: int, config: VariBADConfig) -> None:
        super().__init__()
        self.sees_transition = config.varibad_decoder_sees_transition
        self.state_embedding = _embedding(observation_size, config.varibad_state_embedding_size)
        input_size = config.varibad_latent_size + config.varibad_state_embedding_size
        self.action_embedding = None
        if self.sees_transition:
            self.action_embedding = _embedding(action_size, config.varibad_action_embedding_size)
            input_size += config.varibad_state_embedding_size + config.varibad_action_embedding_size
        self.input_size = input_size
        self.body = mlp(input_size, config.varibad_reward_decoder_sizes, 1, nn.ReLU)

    def forward(
        self,
        latents: torch.Tensor,
        observations: torch.Tensor,
        actions: torch.Tensor,
        next_observations: torch.Tensor,
    ) -> torch.Tensor:
        """Predicted rewards ``[...]`` for inputs ``[..., Z]``, ``[..., O]``, ``[..., A]``, ``[..., O]``."""
        parts = [latents, self.state_embedding(next_observations)]
        if self.action_embedding is not None:
            parts += [self.state_embedding(observations), self.action_embedding(actions)]
        return self.body(torch.cat(parts, dim=-1))[..., 0]


class StateDecoder(nn.Module):
    """``p(s' | s, a, m)``, deterministic (a squared error per observation dimension, averaged)."""

    def __init__(self, observation_size: int, action_size: int, config: VariBADConfig) -> None:
        super().__init__()
        self.state_embedding = _embedding(observation_size, config.varibad_state_embedding_size)
        self.action_embedding = _embedding(action_size, config.varibad_action_embedding_size)
        self.input_size = (
            config.varibad_latent_size + config.varibad_state_embedding_size + config.varibad_action_embedding_size
        )
        self.body = mlp(self.input_size, config.varibad_state_decoder_sizes, observation_size, nn.ReLU)

    def forward(self, latents: torch.Tensor, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        parts = [latents, self.state_embedding(observations), self.action_embedding(actions)]
        return self.body(torch.cat(parts, dim=-1))


class RunningNormalizer(nn.Module):
    """Running mean and variance of a vector input (all samples seen, merged batch by batch), to standardise it.

    The policy standardises its observation and belief inputs with these, as the authors' policy does
    (``norm_state_for_policy``, ``norm_latent_for_policy``).
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("variance", torch.ones(size))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def update(self, values: torch.Tensor) -> None:
        """Fold in ``values [n, size]``."""
        count = values.shape[0]
        if count == 0:
            return
        batch_mean = values.mean(dim=0)
        batch_variance = values.var(dim=0, unbiased=False)
        total = float(self.count) + count
        delta = batch_mean - self.mean
        weight = count / total
        self.mean.add_(delta * weight)
        self.variance.copy_(
            self.variance * (1 - weight) + batch_variance * weight + delta.square() * weight * (1 - weight)
        )
        self.count.fill_(total)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / torch.sqrt(self.variance + 1e-8)


class BeliefActorCritic(nn.Module):
    """The policy and value function on the observation and the belief ``[mean, logvar]``.

    Both inputs are standardised by running statistics and embedded (tanh layers shared by the actor and the
    critic); the actor and the critic are separate tanh MLPs on the embeddings, as in the authors' policy.
    """

    def __init__(self, observation_size: int, latent_size: int, action_space: gym.Space, config: VariBADConfig) -> None:
        super().__init__()
        # a Gaussian's log-std starts at 0: std 1, the authors' policy_init_std
        action_outputs, self.log_std = action_outputs_and_log_std(action_space, "VariBAD")
        embedding = config.varibad_policy_embedding_size
        self.observation_normalizer = RunningNormalizer(observation_size)
        self.belief_normalizer = RunningNormalizer(2 * latent_size)
        self.state_embedding = _embedding(observation_size, embedding, nn.Tanh)
        self.belief_embedding = _embedding(2 * latent_size, embedding, nn.Tanh)
        self.actor = mlp(2 * embedding, config.varibad_policy_hidden_sizes, action_outputs, nn.Tanh)
        self.critic = mlp(2 * embedding, config.varibad_policy_hidden_sizes, 1, nn.Tanh)
        # small initial action outputs: an even policy explores evenly at the start
        nn.init.orthogonal_(self.actor[-1].weight, gain=0.01)
        nn.init.zeros_(self.actor[-1].bias)

    def forward(self, observations: torch.Tensor, beliefs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(action_outputs [..., A], values [...])`` for ``observations [..., O]`` and ``beliefs [..., 2Z]``; values
        are in the return normaliser's scale."""
        features = torch.cat(
            [
                self.state_embedding(self.observation_normalizer(observations)),
                self.belief_embedding(self.belief_normalizer(beliefs)),
            ],
            dim=-1,
        )
        return self.actor(features), self.critic(features)[..., 0]

    def distribution(self, action_outputs: torch.Tensor) -> Distribution:
        return action_distribution(action_outputs, self.log_std)


# -- the ELBO -----------------------------------------------------------------------------------------------------
def posterior_kl(posteriors: Posterior) -> torch.Tensor:
    """``KL(q_t ‖ q_{t-1})`` for each posterior of ``[B, L + 1, Z]`` trials, ``[B, L + 1]``; ``q_{-1}`` is N(0, I)."""
    mean, logvar = posteriors
    previous_mean = torch.cat([torch.zeros_like(mean[:, :1]), mean[:, :-1]], dim=1)
    previous_logvar = torch.cat([torch.zeros_like(logvar[:, :1]), logvar[:, :-1]], dim=1)
    # KL(N(μ, Σ) ‖ N(m, S)) = ½ Σ_d [log S/Σ − 1 + Σ/S + (m − μ)²/S]
    terms = (
        previous_logvar
        - logvar
        - 1.0
        + torch.exp(logvar - previous_logvar)
        + (mean - previous_mean).square() * torch.exp(-previous_logvar)
    )
    return 0.5 * terms.sum(dim=-1)


class VAETrials(NamedTuple):
    """Whole trials as the VAE reads them, ``[B, L, ...]``: transition j is ``(s_j, a_j, r_j, s'_j)``."""

    observations: torch.Tensor
    actions: torch.Tensor
    """``[B, L, A]`` action features (:func:`action_features`)."""
    rewards: torch.Tensor
    next_observations: torch.Tensor
    masks: torch.Tensor
    """``[B, L]`` 1 on the trial's real steps."""


class ELBOTerms(NamedTuple):
    """The negative ELBO of a VAE batch and its parts, each the mean over trials of the sum over ELBO terms."""

    loss: torch.Tensor
    reward_error: torch.Tensor
    state_error: torch.Tensor
    kl: torch.Tensor


def sample_elbo_indices(
    masks: torch.Tensor, elbo_samples: int, decode_samples: int, generator: torch.Generator
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Which ELBO terms and decoded steps a VAE update uses, per trial: ``elbo_samples`` posteriors drawn uniformly
    from ``q_0 .. q_T`` (T the trial's real steps) and, for each, ``decode_samples`` steps drawn uniformly from
    ``0 .. T-1``, with replacement (``[B, E]`` and ``[B, E, D]``). 0 keeps all of them (``None``)."""
    lengths = masks.sum(dim=1).round().long().cpu()  # [B]
    num_trials = lengths.shape[0]
    elbo_index = None
    if elbo_samples:
        uniform = torch.rand(num_trials, elbo_samples, generator=generator)
        elbo_index = (uniform * (lengths + 1).unsqueeze(1)).long().clamp_max(lengths.unsqueeze(1))
        elbo_index = elbo_index.to(masks.device)
    decode_index = None
    if decode_samples:
        num_elbos = elbo_samples or masks.shape[1] + 1
        uniform = torch.rand(num_trials, num_elbos, decode_samples, generator=generator)
        limit = lengths.clamp(min=1).view(-1, 1, 1)
        decode_index = (uniform * limit).long().clamp_max(limit - 1).to(masks.device)
    return elbo_index, decode_index


def negative_elbo(
    posteriors: Posterior,
    trials: VAETrials,
    reward_decoder: RewardDecoder,
    state_decoder: StateDecoder | None,
    kl_weight: float,
    state_loss_weight: float,
    elbo_index: torch.Tensor | None = None,
    decode_index: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> ELBOTerms:
    """The negative ELBO of trials ``[B, L]`` with posteriors ``q_0 .. q_L`` (``[B, L + 1, Z]``), averaged over trials.

    For each ELBO term t (all t = 0 .. T of a trial, or those of ``elbo_index [B, E]``) one latent is drawn from q_t
    (``mean + exp(logvar / 2) · noise``; ``noise [B, E, Z]``, standard normal by default) and decodes the rewards
    (and next observations) of every real step of the trial, past and future (or the steps of
    ``decode_index [B, E, D]``); the squared errors are summed over the decoded steps and the ELBO terms, as are the
    KL terms ``KL(q_t ‖ q_{t-1})``. Padded steps and ELBO terms past a trial's end count nothing.
    """
    mean, logvar = posteriors
    num_trials, num_steps = trials.masks.shape
    trial_index = torch.arange(num_trials, device=mean.device)
    # which posteriors (ELBO terms) are real: q_0 always, q_t when step t - 1 is
    term_masks = torch.cat([torch.ones_like(trials.masks[:, :1]), trials.masks], dim=1)
    if elbo_index is None:
        elbo_index = torch.arange(num_steps + 1, device=mean.device).expand(num_trials, -1)
    num_elbos = elbo_index.shape[1]
    if decode_index is None:
        decode_index = torch.arange(num_steps, device=mean.device).expand(num_trials, num_elbos, -1)
    chosen = trial_index[:, None], elbo_index
    chosen_mean, chosen_logvar = mean[chosen], logvar[chosen]  # [B, E, Z]
    if noise is None:
        noise = torch.randn_like(chosen_mean)
    latents = chosen_mean + torch.exp(0.5 * chosen_logvar) * noise
    chosen_terms = term_masks[chosen]  # [B, E]

    steps = trial_index[:, None, None], decode_index  # [B, E, D]
    pair_masks = trials.masks[steps] * chosen_terms[:, :, None]
    decoded_latents = latents[:, :, None].expand(-1, -1, decode_index.shape[2], -1)
    observations, actions = trials.observations[steps], trials.actions[steps]
    predicted_rewards = reward_decoder(decoded_latents, observations, actions, trials.next_observations[steps])
    reward_error = ((predicted_rewards - trials.rewards[steps]).square() * pair_masks).sum(dim=(1, 2))
    state_error = torch.zeros_like(reward_error)
    if state_decoder is not None:
        predicted_states = state_decoder(decoded_latents, observations, actions)
        squared = (predicted_states - trials.next_observations[steps]).square().mean(dim=-1)
        state_error = (squared * pair_masks).sum(dim=(1, 2))
    kl = (posterior_kl(posteriors)[chosen] * chosen_terms).sum(dim=1)
    loss = reward_error + state_loss_weight * state_error + kl_weight * kl
    return ELBOTerms(loss.mean(), reward_error.mean(), state_error.mean(), kl.mean())


# -- the agent ----------------------------------------------------------------------------------------------------
class VariBAD:
    """VariBAD (Zintgraf et al. 2020): a PPO policy on the observation and a learned belief over the task. Its fields
    are :class:`VariBADConfig`'s.

    Families with ``Discrete`` or 1-d ``Box`` actions (the reward decoder reads actions one-hot or clipped to the box).
    """

    curve_kind: ClassVar[CurveKind] = CurveKind.EPISODE
    """Evaluation curves are the mean return of each episode of a trial (the belief carried across them)."""
    trains_across_processes: ClassVar[bool] = False
    """One process: the VAE's buffer holds every trial played."""
    progress_metrics: ClassVar[tuple[str, ...]] = (
        "meta/trial_return",
        "meta/return_first_episode",
        "meta/return_last_episode",
        "losses/vae_reward",
    )

    def __init__(
        self, family: TaskFamily, config: VariBADConfig, device: torch.device, workers: Workers | None = None
    ) -> None:
        action_space = family.action_space
        if not (
            isinstance(action_space, gym.spaces.Discrete)
            or (isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1)
        ):
            raise ValueError(
                f"VariBAD supports Discrete and 1-d Box action spaces, got {action_space!r} for {config.family}"
            )
        self.family = family
        self.config = config
        self.device = device
        self.workers = workers or Workers()
        self.observation_size = observation_floats(family)
        self.action_size = action_feature_size(action_space)
        self.encoder = TrialEncoder(self.observation_size, self.action_size, config).to(device)
        self.reward_decoder = RewardDecoder(self.observation_size, self.action_size, config).to(device)
        self.state_decoder = (
            StateDecoder(self.observation_size, self.action_size, config).to(device)
            if config.varibad_decode_state
            else None
        )
        self.policy = BeliefActorCritic(self.observation_size, config.varibad_latent_size, action_space, config).to(
            device
        )
        self.return_normalizer = ReturnNormalizer().to(device)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.ppo_learning_rate, eps=1e-8)
        self.vae_optimizer = torch.optim.Adam(self._vae_parameters(), lr=config.varibad_vae_learning_rate)
        self._trials: TaskReplayBuffers | None = None  # made when training first needs it
        self._envs: dict[int, gym.vector.VectorEnv] = {}

    def _vae_modules(self) -> list[nn.Module]:
        return [self.encoder, self.reward_decoder, *([self.state_decoder] if self.state_decoder is not None else [])]

    def _vae_parameters(self) -> list[nn.Parameter]:
        return [parameter for module in self._vae_modules() for parameter in module.parameters()]

    # -- the VAE's buffer of recent trials ---------------------------------------------------------------------------
    @staticmethod
    def trial_fields(config: VariBADConfig, family: TaskFamily) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """What the VAE's buffer holds per trial: its transitions, padded to ``trial_episodes × horizon`` steps."""
        length = config.trial_episodes * family.horizon
        observation = (length, observation_floats(family))
        return {
            "observations": (observation, torch.float32),
            "actions": ((length, action_feature_size(family.action_space)), torch.float32),
            "rewards": ((length,), torch.float32),
            "next_observations": (observation, torch.float32),
            "masks": ((length,), torch.float32),
        }

    @property
    def trial_buffer(self) -> TaskReplayBuffers:
        """The VAE's ring of recent trials (one ring: the trials of every task share it), allocated when training
        first needs it (an evaluation does not)."""
        if self._trials is None:
            self._trials = TaskReplayBuffers(
                1, self.config.varibad_vae_buffer_trials, self.trial_fields(self.config, self.family), self.device
            )
        return self._trials

    def _store_trials(self, batch: TrialBatch) -> None:
        length = self.config.trial_episodes * self.family.horizon
        num_trials, steps = batch.masks.shape
        assert batch.next_observations is not None

        def padded(values: torch.Tensor) -> torch.Tensor:
            if steps == length:
                return values
            pad = torch.zeros((num_trials, length - steps, *values.shape[2:]), dtype=values.dtype, device=values.device)
            return torch.cat([values, pad], dim=1)

        self.trial_buffer.add(
            0,
            {
                "observations": padded(batch.inputs.observations.reshape(num_trials, steps, -1)),
                "actions": padded(action_features(batch.actions, self.family.action_space)),
                "rewards": padded(batch.rewards),
                "next_observations": padded(batch.next_observations.reshape(num_trials, steps, -1)),
                "masks": padded(batch.masks),
            },
        )

    @classmethod
    def memory_estimate(cls, config: VariBADConfig, family: TaskFamily) -> MemoryEstimate:
        """The VAE's trial buffer (exact), plus the larger of a training iteration (its trials, PPO's update and the
        VAE's batch) and an evaluation's trials (:mod:`metarl.budget`)."""
        length = config.trial_episodes * family.horizon
        fields = cls.trial_fields(config, family)
        buffer_bytes = replay_bytes(1, config.varibad_vae_buffer_trials, fields)
        observation, action = observation_floats(family), action_feature_size(family.action_space)
        latent = config.varibad_latent_size
        stored = 2 * trial_step_bytes(family) + FLOAT_BYTES * (observation + 2 * latent)  # s' and the belief
        policy_units = 2 * config.varibad_policy_embedding_size + 2 * sum(config.varibad_policy_hidden_sizes)
        step_bytes = stored + FLOAT_BYTES * POLICY_FLOATS_PER_UNIT * policy_units
        # the VAE batch: decoded pairs per trial, each through the decoders' inputs and hidden layers
        elbos = config.varibad_elbo_samples or length + 1
        decodes = config.varibad_decode_samples or length
        decoder_units = (
            latent + observation + config.varibad_state_embedding_size + sum(config.varibad_reward_decoder_sizes)
        )
        if config.varibad_decoder_sees_transition:
            decoder_units += observation + action + config.varibad_state_embedding_size
            decoder_units += config.varibad_action_embedding_size
        if config.varibad_decode_state:
            decoder_units += sum(config.varibad_state_decoder_sizes) + 2 * observation
        vae_bytes = (
            config.varibad_vae_batch_trials * elbos * decodes * FLOAT_BYTES * DECODER_FLOATS_PER_UNIT * decoder_units
        )
        training = trials_estimate(
            "training's trials and PPO update",
            config,
            config.trial_episodes,
            family.horizon,
            step_bytes,
            ("meta_batch_size", "trial_episodes"),
        )
        evaluation = evaluation_trials_estimate(config, config.trial_episodes, family.horizon, stored)
        peak = largest(training, evaluation)
        total = dataclasses.replace(
            peak,
            bytes=peak.bytes + buffer_bytes + vae_bytes,
            fields=("varibad_vae_buffer_trials", *peak.fields, "varibad_elbo_samples", "varibad_decode_samples"),
            description=(
                f"the VAE's buffer of varibad_vae_buffer_trials {config.varibad_vae_buffer_trials} trials of {length} "
                f"steps ({buffer_bytes / 2**20:.1f} MiB), a VAE batch of {config.varibad_vae_batch_trials} trials × "
                f"{elbos} ELBO terms × {decodes} decoded steps ({vae_bytes / 2**20:.1f} MiB), and {peak.description}"
            ),
        )
        sizes = [config.meta_batch_size, config.eval_tasks, config.test_tasks]
        return with_sub_envs(total, sizes, family)

    # -- acting: a TrialPolicy ------------------------------------------------------------------------------------
    def initial_state(self, num_trials: int) -> torch.Tensor | None:
        """No transition yet: the first step acts on the prior."""
        return None

    @torch.no_grad()
    def act(self, inputs: TrialInputs, hidden: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Fold the previous transition into each trial's encoder state, then sample actions on the posterior."""
        observations = inputs.observations.reshape(inputs.observations.shape[0], -1).to(self.device)
        if hidden is None:
            hidden = self.encoder.initial_hidden(observations.shape[0])
        else:
            if inputs.reached_observations is None:
                raise ValueError("VariBAD acts on trials collected with keep_transitions=True (it reads s')")
            reached = inputs.reached_observations.reshape(observations.shape[0], -1).to(self.device)
            previous_actions = action_features(inputs.prev_actions.to(self.device), self.family.action_space)
            hidden = self.encoder.step(previous_actions, inputs.prev_rewards.to(self.device), reached, hidden)
        belief = self.encoder.posterior(hidden[0]).belief()
        action_outputs, values = self.policy(observations, belief)
        distribution = self.policy.distribution(action_outputs)
        actions = sample_actions(distribution)
        return actions, hidden, {"log_prob": distribution.log_prob(actions), "value": values, "belief": belief}

    def collect(self, tasks: Sequence[Any], rng: np.random.Generator, num_episodes: int | None = None) -> TrialBatch:
        """One trial of ``num_episodes`` episodes (default ``trial_episodes``) per task, all in parallel."""
        if len(tasks) not in self._envs:
            self._envs[len(tasks)] = make_trial_envs(self.family, len(tasks), device=self.device)
        return collect_trials(
            self._envs[len(tasks)],
            self.family,
            list(tasks),
            self.config.trial_episodes if num_episodes is None else num_episodes,
            self,
            seed=int(rng.integers(2**31 - len(tasks))),
            device=self.device,
            keep_transitions=True,
        )

    # -- the meta-trainer's protocol ------------------------------------------------------------------------------
    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        start = time.perf_counter()
        self.policy.eval()
        batch = self.collect(tasks, rng)
        self._store_trials(batch)
        sampled = time.perf_counter()
        metrics = self.update_policy(batch)
        updated = time.perf_counter()
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        metrics.update(self.update_vae(generator))
        metrics.update(
            {
                "meta/env_steps": float(batch.masks.sum()),
                "meta/trial_return": float(batch.trial_returns.mean()),
                "meta/return_first_episode": float(batch.episode_returns[:, 0].mean()),
                "meta/return_last_episode": float(batch.episode_returns[:, -1].mean()),
                "time/sample_s": sampled - start,
                "time/update_s": updated - sampled,
                "time/vae_update_s": time.perf_counter() - updated,
            }
        )
        return metrics

    def update_policy(self, batch: TrialBatch) -> dict[str, float]:
        """Clipped-PPO epochs over the steps of ``batch``'s trials, the belief taken as stored while acting (no
        gradient reaches the encoder); returns the loss metrics."""
        config = self.config
        real = batch.masks > 0
        num_trials, steps = batch.masks.shape
        observations = batch.inputs.observations.reshape(num_trials, steps, -1)[real]
        beliefs = batch.extras["belief"][real]
        actions = batch.actions[real]

        # advantages over whole trials (the trial is the unit that ends), values de-normalised
        values = self.return_normalizer.denormalize(batch.extras["value"])
        advantages, value_targets = trial_advantages(
            batch.rewards, values, batch.masks, config.gamma, config.gae_lambda
        )
        self.return_normalizer.update(value_targets, batch.masks)
        targets = self.return_normalizer.normalize(value_targets)[real]
        advantages = advantages[real]
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        # the input statistics move first; the old log-probabilities are then those of the same inputs (as the
        # authors recompute them after updating the statistics)
        self.policy.observation_normalizer.update(observations)
        self.policy.belief_normalizer.update(beliefs)
        with torch.no_grad():
            old_log_probs = self.policy.distribution(self.policy(observations, beliefs)[0]).log_prob(actions)

        self.policy.train()
        num_steps = observations.shape[0]
        num_minibatches = min(config.ppo_minibatches, num_steps)
        totals: dict[str, float] = {}
        updates = 0
        for _ in range(config.ppo_epochs):
            order = torch.randperm(num_steps, device=self.device)
            for minibatch in order.tensor_split(num_minibatches):
                action_outputs, predicted_values = self.policy(observations[minibatch], beliefs[minibatch])
                distribution = self.policy.distribution(action_outputs)
                log_probs = distribution.log_prob(actions[minibatch])
                ratio = torch.exp(log_probs - old_log_probs[minibatch])
                ones = torch.ones_like(ratio)
                policy_loss = clipped_surrogate_loss(ratio, advantages[minibatch], ones, config.ppo_clip)
                value_loss = (predicted_values - targets[minibatch]).square().mean()
                entropy = distribution.entropy().mean()
                loss = policy_loss + config.ppo_value_coeff * value_loss - config.ppo_entropy_coeff * entropy
                if not math.isfinite(float(loss.detach())):
                    raise FloatingPointError(f"VariBAD PPO loss is {float(loss.detach())}")
                self.policy_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), config.max_grad_norm)
                self.policy_optimizer.step()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - torch.log(ratio)).mean()  # Schulman's k3 estimator
                step_metrics = {
                    "losses/policy": float(policy_loss.detach()),
                    "losses/value": float(value_loss.detach()),
                    "losses/entropy": float(entropy.detach()),
                    "losses/approx_kl": float(approx_kl),
                    "losses/grad_norm": float(grad_norm),
                }
                for key, value in step_metrics.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        self.policy.eval()
        metrics = {key: value / updates for key, value in totals.items()}
        metrics["losses/value_scale"] = float(self.return_normalizer.moments()[1])
        return metrics

    def vae_batch(self, num_trials: int, generator: torch.Generator) -> VAETrials:
        """``num_trials`` trials drawn uniformly (with replacement) from the VAE's buffer."""
        drawn = self.trial_buffer.sample([0], num_trials, generator)
        return VAETrials(**{name: value[0] for name, value in drawn.items()})

    def elbo(self, trials: VAETrials, generator: torch.Generator | None = None) -> ELBOTerms:
        """The negative ELBO of ``trials``: all ELBO terms and decoded steps without a ``generator``, else the
        config's random subsample of them."""
        config = self.config
        posteriors = self.encoder(trials.actions, trials.rewards, trials.next_observations)
        elbo_index = decode_index = None
        if generator is not None:
            elbo_index, decode_index = sample_elbo_indices(
                trials.masks, config.varibad_elbo_samples, config.varibad_decode_samples, generator
            )
        return negative_elbo(
            posteriors,
            trials,
            self.reward_decoder,
            self.state_decoder,
            config.varibad_kl_weight,
            config.varibad_state_loss_weight,
            elbo_index,
            decode_index,
        )

    def update_vae(self, generator: torch.Generator) -> dict[str, float]:
        """``varibad_vae_updates`` gradient steps on the negative ELBO of trials from the buffer."""
        config = self.config
        totals = {"losses/vae": 0.0, "losses/vae_reward": 0.0, "losses/vae_state": 0.0, "losses/vae_kl": 0.0}
        for module in self._vae_modules():
            module.train()
        for _ in range(config.varibad_vae_updates):
            terms = self.elbo(self.vae_batch(config.varibad_vae_batch_trials, generator), generator)
            if not math.isfinite(float(terms.loss.detach())):
                raise FloatingPointError(f"VariBAD's negative ELBO is {float(terms.loss.detach())}")
            self.vae_optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            if config.varibad_vae_max_grad_norm > 0:
                for module in self._vae_modules():
                    nn.utils.clip_grad_norm_(module.parameters(), config.varibad_vae_max_grad_norm)
            self.vae_optimizer.step()
            for key, value in zip(totals, terms, strict=True):
                totals[key] += float(value.detach()) / config.varibad_vae_updates
        for module in self._vae_modules():
            module.eval()
        return totals if config.varibad_vae_updates else {}

    def evaluate_trials(
        self, tasks: Sequence[Any], rng: np.random.Generator, num_episodes: int | None = None
    ) -> TrialBatch:
        """One trial per task with the current encoder and policy (actions sampled, as in training)."""
        self.policy.eval()
        return self.collect(tasks, rng, num_episodes)

    def default_num_points(self) -> int:
        """Points of the evaluation curve: the episodes of a trial as trained."""
        return self.config.trial_episodes

    def adaptation_curve(self, tasks: Sequence[Any], rng: np.random.Generator, num_points: int) -> AdaptationCurve:
        """Each task's return (and success) in each episode of one trial of ``num_points`` episodes, the belief
        updated at every step and carried across the episodes."""
        return AdaptationCurve.from_trials(self.evaluate_trials(tasks, rng, num_points))

    def selection_score(self, curve: Sequence[float]) -> float:
        """Validation score that picks the kept parameters: the mean total reward of a trial (what VariBAD
        maximises: the Bayes-adaptive return over the whole trial)."""
        return float(sum(curve))

    def state_dict(self) -> dict[str, Any]:
        """The networks, the normalisers and both optimisers (the VAE's trial buffer: :meth:`buffers_state_dict`)."""
        state = {
            "encoder": self.encoder.state_dict(),
            "reward_decoder": self.reward_decoder.state_dict(),
            "policy": self.policy.state_dict(),
            "return_normalizer": self.return_normalizer.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "vae_optimizer": self.vae_optimizer.state_dict(),
        }
        if self.state_decoder is not None:
            state["state_decoder"] = self.state_decoder.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.reward_decoder.load_state_dict(state["reward_decoder"])
        if self.state_decoder is not None:
            self.state_decoder.load_state_dict(state["state_decoder"])
        self.policy.load_state_dict(state["policy"])
        self.return_normalizer.load_state_dict(state["return_normalizer"])
        for name in ("policy_optimizer", "vae_optimizer"):
            if name in state:
                getattr(self, name).load_state_dict(state[name])

    def buffers_state_dict(self) -> dict[str, Any]:
        """The VAE's buffer of recent trials, saved beside ``last.pt`` (too large to copy each iteration)."""
        return {"trials": self.trial_buffer.state_dict()}

    def load_buffers_state_dict(self, state: Mapping[str, Any]) -> None:
        self.trial_buffer.load_state_dict(state["trials"])


register_agent("varibad", VariBAD, VariBADConfig)
