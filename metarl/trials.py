"""Trials: n episodes of one task played back to back by an agent whose memory persists across them.

A trial is what RL² and the classical bandit / tabular-MDP algorithms are evaluated on: the agent starts a trial
knowing nothing of the task, keeps its state (a recurrent hidden state, or arm counts) across the episode
boundaries inside the trial, and is reset between trials. At every step it sees :class:`TrialInputs`: the
observation, the previous action (one-hot when discrete), the previous reward and a flag for "an episode just
ended". :func:`trial_input_vector` concatenates them into the one vector a recurrent policy reads; the Gymnasium
wrapper (:class:`metarl.wrappers.TrialWrapper`) returns that same vector as its observation.

:func:`collect_trials` plays one trial per sub-env of a vector env built with same-step autoreset, all trials in
parallel: sub-env ``i`` plays ``tasks[i]``. With a native batched env (:class:`metarl.vector.TorchVectorEnv`) the
data never leaves the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from metarl.rollout import SUCCESS_KEY, numeric_step_infos
from metarl.tasks import TaskFamily, check_count, set_vector_tasks
from metarl.vector import TorchVectorEnv


class TrialInputs(NamedTuple):
    """What an agent sees at one step of N parallel trials (leading dim N).

    At the first step of a trial the previous action, reward and flag are zero.
    """

    observations: torch.Tensor
    """``[N, *obs_shape]`` float32 observation."""
    prev_actions: torch.Tensor
    """``[N]`` int64 previous action (Discrete; ``start - 1`` before the first action) or ``[N, act_dim]`` float32
    (Box, clipped to the space; zeros before the first action)."""
    prev_rewards: torch.Tensor
    """``[N]`` float32 reward of the previous step."""
    episode_ended: torch.Tensor
    """``[N]`` float32, 1 when the previous step ended an episode (this observation starts the next one)."""
    reached_observations: torch.Tensor | None = None
    """``[N, *obs_shape]`` float32 observation the previous action led to: ``observations``, except where the previous
    step ended an episode, where it is that episode's final observation (zeros at a trial's first step). Given to
    acting agents that infer the task from whole transitions (VariBAD's encoder) when :func:`collect_trials` keeps
    transitions; ``None`` otherwise, and in a :class:`TrialBatch`, which keeps ``next_observations`` instead."""


class TrialPolicy(Protocol):
    """An agent that plays trials: RL²'s recurrent policy and the classical algorithms alike.

    ``initial_state(n)`` is its memory at the start of ``n`` trials; ``act(inputs, state)`` returns the actions,
    the state after this step, and extra per-step tensors to keep (``log_prob`` and ``value`` for PPO; ``{}``).
    """

    def initial_state(self, num_trials: int) -> Any: ...

    def act(self, inputs: TrialInputs, state: Any) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]: ...


def trial_input_size(family: TaskFamily) -> int:
    """Length of :func:`trial_input_vector` for ``family``: observation, previous action, reward and flag."""
    return int(np.prod(family.observation_space.shape)) + _action_width(family.action_space) + 2


def trial_input_vector(inputs: TrialInputs, action_space: gym.Space) -> torch.Tensor:
    """``[..., D]`` float32: ``[observation, previous action (one-hot if discrete), previous reward, flag]``.

    Leading dims are kept (``[N]`` while acting, ``[N, L]`` over whole trials). A discrete previous action at the
    start of a trial (no action yet) is encoded as all zeros: ``prev_actions`` holds ``start - 1`` there.
    """
    lead = inputs.prev_rewards.shape
    observations = inputs.observations.reshape(*lead, -1).to(torch.float32)
    if isinstance(action_space, gym.spaces.Discrete):
        actions = inputs.prev_actions - int(action_space.start)
        one_hot = torch.zeros((*lead, int(action_space.n)), dtype=torch.float32, device=actions.device)
        valid = actions >= 0
        one_hot.scatter_(-1, actions.clamp(min=0).unsqueeze(-1), valid.unsqueeze(-1).to(torch.float32))
        previous_action = one_hot
    else:
        previous_action = inputs.prev_actions.reshape(*lead, -1).to(torch.float32)
    return torch.cat(
        [observations, previous_action, inputs.prev_rewards[..., None], inputs.episode_ended[..., None]], dim=-1
    )


def initial_prev_actions(action_space: gym.Space, num_trials: int, device: torch.device | str) -> torch.Tensor:
    """The "no action yet" previous action of a trial's first step: ``start - 1`` (Discrete) or zeros (Box)."""
    if isinstance(action_space, gym.spaces.Discrete):
        return torch.full((num_trials,), int(action_space.start) - 1, dtype=torch.int64, device=device)
    return torch.zeros((num_trials, *action_space.shape), dtype=torch.float32, device=device)


def encode_prev_actions(action_space: gym.Space, actions: torch.Tensor) -> torch.Tensor:
    """Actions as the next step's ``prev_actions``: int64 (Discrete) or float32 clipped to the box (Box)."""
    if isinstance(action_space, gym.spaces.Discrete):
        return actions.to(torch.int64)
    low = torch.as_tensor(action_space.low, dtype=torch.float32, device=actions.device)
    high = torch.as_tensor(action_space.high, dtype=torch.float32, device=actions.device)
    return torch.minimum(torch.maximum(actions.to(torch.float32), low), high)


def _action_width(action_space: gym.Space) -> int:
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, gym.spaces.Box):
        return int(np.prod(action_space.shape))
    raise TypeError(f"trials support Discrete and Box action spaces, got {action_space!r}")


class TrialBatch(NamedTuple):
    """N trials of up to ``num_episodes`` episodes each, padded to the longest trial's L steps (at most
    ``num_episodes * horizon``).

    Step ``l`` of trial ``i`` is real where ``masks[i, l] == 1``; a trial ends after its n-th episode.
    """

    inputs: TrialInputs
    """What the agent saw at each step, every field ``[N, L, ...]``."""
    actions: torch.Tensor
    """``[N, L, *act_shape]`` action taken."""
    rewards: torch.Tensor
    """``[N, L]`` float32 reward (0 on padded steps)."""
    masks: torch.Tensor
    """``[N, L]`` float32, 1 on the real steps of the trial."""
    episode_index: torch.Tensor
    """``[N, L]`` int64: the episode (0..n-1) each step belongs to (n on padded steps)."""
    extras: dict[str, torch.Tensor]
    """``[N, L]`` per-step values the policy returned (``log_prob``, ``value``, ...)."""
    infos: dict[str, torch.Tensor]
    """``[N, L]`` float32 per-step values the family reports in ``info`` (``"success"``, say), 0 on padded steps."""
    num_episodes: int
    """Episodes per trial."""
    tasks: tuple[Any, ...]
    """The task of each trial."""
    next_observations: torch.Tensor | None = None
    """``[N, L, *obs_shape]`` float32 observation each step led to (the episode's final observation where it ended,
    not the next episode's first), when :func:`collect_trials` was asked to keep transitions (off-policy learners
    store ``(s, a, r, s', terminated)``); else ``None``."""
    terminated: torch.Tensor | None = None
    """``[N, L]`` float32, 1 where the step terminated its episode (not where it was truncated), kept with
    ``next_observations``; else ``None``."""

    @property
    def episode_returns(self) -> torch.Tensor:
        """``[N, n]`` return of each episode of each trial."""
        num_trials = self.rewards.shape[0]
        returns = torch.zeros((num_trials, self.num_episodes + 1), dtype=torch.float32, device=self.rewards.device)
        returns.scatter_add_(1, self.episode_index, self.rewards * self.masks)
        return returns[:, : self.num_episodes]

    @property
    def episode_successes(self) -> torch.Tensor | None:
        """``[N, n]`` float32, 1 for an episode that succeeded at any of its steps (``info["success"]``), or
        ``None`` when the family does not define success."""
        if SUCCESS_KEY not in self.infos:
            return None
        num_trials = self.rewards.shape[0]
        succeeded = torch.zeros((num_trials, self.num_episodes + 1), dtype=torch.float32, device=self.rewards.device)
        step_success = (self.infos[SUCCESS_KEY] > 0).to(torch.float32)  # padded steps hold 0
        succeeded.scatter_reduce_(1, self.episode_index, step_success, reduce="amax")
        return succeeded[:, : self.num_episodes]

    @property
    def trial_returns(self) -> torch.Tensor:
        """``[N]`` total reward of each trial."""
        return (self.rewards * self.masks).sum(dim=1)


def make_trial_envs(family: TaskFamily, num_trials: int, device: torch.device | str = "cpu") -> gym.vector.VectorEnv:
    """A vector env of ``num_trials`` sub-envs in the same-step autoreset mode that :func:`collect_trials` needs."""
    return family.make_vec_env(num_trials, device=device, autoreset_mode=AutoresetMode.SAME_STEP)


@torch.no_grad()
def collect_trials(
    envs: gym.vector.VectorEnv,
    family: TaskFamily,
    tasks: Sequence[Any],
    num_episodes: int,
    policy: TrialPolicy,
    seed: int | None = None,
    device: torch.device | str | None = None,
    keep_transitions: bool = False,
) -> TrialBatch:
    """Play one trial of ``num_episodes`` episodes of ``tasks[i]`` in sub-env ``i``, all trials in parallel.

    Args:
        envs: a vector env of ``len(tasks)`` sub-envs of ``family`` with same-step autoreset
            (:func:`make_trial_envs`), so that every env step is a real step of every unfinished trial.
        family: the task family.
        tasks: one task per trial.
        num_episodes: episodes per trial, >= 1.
        policy: the agent; its state is initialised once per trial and carried across episode boundaries.
        seed: reset seed (sub-env ``i`` gets ``seed + i``); ``None`` continues the envs' random streams.
        device: where the batch is stored (default: the native env's device, else CPU).
        keep_transitions: also store each step's next observation and whether it terminated the episode
            (``TrialBatch.next_observations`` and ``TrialBatch.terminated``), and show the policy the observation
            each action reached (``TrialInputs.reached_observations``).

    Returns:
        The trials as a :class:`TrialBatch`.
    """
    num_episodes = check_count("num_episodes", num_episodes)
    num_trials = len(tasks)
    if envs.num_envs != num_trials:
        raise ValueError(f"envs has {envs.num_envs} sub-envs but {num_trials} tasks were given (one per trial)")
    mode = envs.metadata.get("autoreset_mode")
    if mode != AutoresetMode.SAME_STEP:
        raise ValueError(f"collect_trials needs a vector env with autoreset_mode=SAME_STEP, got {mode!r}")
    native = isinstance(envs, TorchVectorEnv)
    device = torch.device(device) if device is not None else (envs.device if native else torch.device("cpu"))
    action_space = family.action_space
    obs_shape = family.observation_space.shape
    act_dtype = torch.int64 if isinstance(action_space, gym.spaces.Discrete) else torch.float32
    max_steps = num_episodes * family.horizon

    def to_tensor(array: Any, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype, device=device)

    set_vector_tasks(envs, list(tasks))
    observations = envs.reset_tensor(seed=seed)[0] if native else envs.reset(seed=seed)[0]
    observations = to_tensor(observations, torch.float32)
    prev_actions = initial_prev_actions(action_space, num_trials, device)
    prev_rewards = torch.zeros(num_trials, dtype=torch.float32, device=device)
    episode_ended = torch.zeros(num_trials, dtype=torch.float32, device=device)
    episodes_done = torch.zeros(num_trials, dtype=torch.int64, device=device)
    state = policy.initial_state(num_trials)

    # storage, time-major while collecting
    def buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros((max_steps, num_trials, *shape), dtype=dtype, device=device)

    obs_buffer = buffer(obs_shape, torch.float32)
    prev_action_buffer = buffer(tuple(prev_actions.shape[1:]), prev_actions.dtype)
    prev_reward_buffer = buffer((), torch.float32)
    ended_buffer = buffer((), torch.float32)
    action_buffer = buffer(action_space.shape, act_dtype)
    reward_buffer = buffer((), torch.float32)
    mask_buffer = buffer((), torch.float32)
    episode_buffer = torch.full((max_steps, num_trials), num_episodes, dtype=torch.int64, device=device)
    next_obs_buffer = buffer(obs_shape, torch.float32) if keep_transitions else None
    terminated_buffer = buffer((), torch.float32) if keep_transitions else None
    extra_buffers: dict[str, torch.Tensor] = {}
    info_buffers: dict[str, torch.Tensor] = {}

    reached_observations = torch.zeros_like(observations) if keep_transitions else None
    steps_taken = 0
    for step in range(max_steps):
        inputs = TrialInputs(observations, prev_actions, prev_rewards, episode_ended, reached_observations)
        actions, state, extras = policy.act(inputs, state)
        actions = actions.to(act_dtype)
        if native:
            next_observations, rewards, terminated, truncated, info = envs.step_tensor(actions.to(envs.device))
        else:
            next_observations, rewards, terminated, truncated, info = envs.step(actions.cpu().numpy())
            info = numeric_step_infos(info, num_trials)
        rewards = to_tensor(rewards, torch.float32)
        ended = to_tensor(terminated, torch.bool) | to_tensor(truncated, torch.bool)

        # record the step for the trials still running
        alive = episodes_done < num_episodes
        obs_buffer[step], prev_action_buffer[step] = observations, prev_actions
        prev_reward_buffer[step], ended_buffer[step] = prev_rewards, episode_ended
        action_buffer[step] = actions
        reward_buffer[step] = torch.where(alive, rewards, 0.0)
        mask_buffer[step] = alive.to(torch.float32)
        episode_buffer[step] = torch.where(alive, episodes_done, num_episodes)
        for key, value in extras.items():
            if key not in extra_buffers:
                extra_buffers[key] = buffer(tuple(value.shape[1:]), value.dtype)
            extra_buffers[key][step] = value
        for key, value in info.items():
            if key.startswith("final_obs"):
                continue
            if key not in info_buffers:
                info_buffers[key] = buffer((), torch.float32)
            info_buffers[key][step] = torch.where(alive, to_tensor(value, torch.float32), 0.0)
        steps_taken = step + 1
        if next_obs_buffer is not None and terminated_buffer is not None:
            terminated_buffer[step] = torch.where(alive, to_tensor(terminated, torch.float32), 0.0)
            next_obs_buffer[step] = to_tensor(next_observations, torch.float32)
            if "final_obs" in info:  # where an episode ended, next_observations already starts the next one
                ended_here = to_tensor(info["final_obs_mask"], torch.bool)
                final = to_tensor(info["final_obs"], torch.float32)
                next_obs_buffer[step] = torch.where(
                    ended_here.reshape(-1, *([1] * len(obs_shape))), final, next_obs_buffer[step]
                )
            reached_observations = next_obs_buffer[step]

        # the same-step autoreset already put the next episode's first observation in next_observations
        episodes_done = episodes_done + (ended & alive).to(torch.int64)
        observations = to_tensor(next_observations, torch.float32)
        prev_actions = encode_prev_actions(action_space, actions)
        prev_rewards, episode_ended = rewards, ended.to(torch.float32)
        if not bool((episodes_done < num_episodes).any()):
            break

    def trial_major(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[:steps_taken].movedim(0, 1).contiguous()

    return TrialBatch(
        inputs=TrialInputs(
            *(trial_major(b) for b in (obs_buffer, prev_action_buffer, prev_reward_buffer, ended_buffer))
        ),
        actions=trial_major(action_buffer),
        rewards=trial_major(reward_buffer),
        masks=trial_major(mask_buffer),
        episode_index=trial_major(episode_buffer),
        extras={key: trial_major(value) for key, value in extra_buffers.items()},
        infos={key: trial_major(value) for key, value in info_buffers.items()},
        num_episodes=num_episodes,
        tasks=tuple(tasks),
        next_observations=None if next_obs_buffer is None else trial_major(next_obs_buffer),
        terminated=None if terminated_buffer is None else trial_major(terminated_buffer),
    )
