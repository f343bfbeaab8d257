"""Gymnasium wrappers over a family's single env: one trial per episode (RL²'s setting), and the oracle's view.

:class:`TrialWrapper` is for users who train their own recurrent agents with Stable-Baselines3 / sb3-contrib
(``RecurrentPPO``) or any single-env Gymnasium code: one wrapper episode is one trial, ``num_episodes`` episodes of
one task, and its observation is the vector :func:`metarl.trials.trial_input_vector` builds, so it is exactly what
the suite's own RL² agent sees through :func:`metarl.trials.collect_trials`. The encoding is not rewritten here: the
wrapper calls the torch functions of :mod:`metarl.trials` on tensors of leading dim 1, so the two paths cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding

from metarl.env import TaskHolder
from metarl.registry import make_family
from metarl.tasks import TaskFamily, check_count
from metarl.trials import (
    TrialInputs,
    encode_prev_actions,
    initial_prev_actions,
    trial_input_size,
    trial_input_vector,
)


class TaskDrawingWrapper(gym.Wrapper[np.ndarray, Any, np.ndarray, Any]):
    """Base of the wrappers that pick a task at every reset of a family's single env.

    The task is, in order of precedence: ``reset(options={"task": task})``; drawn uniformly from ``tasks`` with the
    wrapper's generator (``np_random``); or sampled from the family's task distribution with it. The wrapper's
    generator is its own, seeded by ``reset(seed=s)`` from a child of ``s``'s ``SeedSequence``, so that the tasks
    are independent of the inner env's random stream (which ``s`` seeds too).
    """

    def __init__(self, env: gym.Env, tasks: Sequence[Any] | None = None) -> None:
        if not isinstance(env, gym.Env) or not isinstance(env.unwrapped, TaskHolder):
            raise TypeError(
                f"{type(self).__name__} wraps a task family's single env (family.make_env() or "
                f"gymnasium.make('MetaRL/...')), got {env!r}"
            )
        super().__init__(env)
        self.family: TaskFamily = env.unwrapped.family
        """The inner env's task family."""
        self.tasks: tuple[Any, ...] | None = None if tasks is None else _check_tasks(self.family, tasks)
        """The tasks resets draw from, or ``None`` for the family's distribution."""
        # Gymnasium's Wrapper forwards np_random to the inner env and forbids its own _np_random: hence new names
        self._task_rng: np.random.Generator | None = None
        self._task_rng_seed: int | None = None
        self._task: Any = None

    # -- the wrapper's own generator, which draws the tasks -----------------------------------------------------
    @property
    def np_random(self) -> np.random.Generator:
        """The generator the tasks are drawn from (not the inner env's, which drives its dynamics)."""
        if self._task_rng is None:
            self._task_rng, self._task_rng_seed = seeding.np_random()
        return self._task_rng

    @np_random.setter
    def np_random(self, value: np.random.Generator) -> None:
        self._task_rng, self._task_rng_seed = value, -1

    @property
    def np_random_seed(self) -> int:
        """The seed of :attr:`np_random` (-1 when it was set directly)."""
        if self._task_rng_seed is None:
            self._task_rng, self._task_rng_seed = seeding.np_random()
        return self._task_rng_seed

    @property
    def task(self) -> Any:
        """The task being played (``None`` before the first reset)."""
        return self._task

    def _draw_task(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, int | None]:
        """The task of the episode a ``reset(seed, options)`` starts, and the checked seed for the inner env."""
        options = dict(options or {})
        task = options.pop("task", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; allowed: 'task'")
        if task is not None:
            task = self.family.check_task(task)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
                raise TypeError(f"seed must be a non-negative int or None, got {type(seed).__name__} {seed!r}")
            if seed < 0:
                raise ValueError(f"seed must be a non-negative int or None, got {seed}")
            seed = int(seed)
            # a child of the seed: the tasks do not share random bits with the inner env, seeded with `seed` itself
            child = np.random.SeedSequence(seed).spawn(1)[0]
            self._task_rng, self._task_rng_seed = np.random.Generator(np.random.PCG64(child)), seed
        if task is None:
            if self.tasks is not None:
                task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
            else:
                task = self.family.sample_tasks(self.np_random, 1)[0]
        return task, seed


class TrialWrapper(TaskDrawingWrapper):
    """One trial per episode: ``num_episodes`` episodes of one task, seen through RL²'s input vector.

    ## Description
    Wraps the single env of a task family (any env with the :class:`metarl.env.TaskHolder` mixin: a
    :class:`metarl.MetaEnv`, a MuJoCo family's env) so that one episode of the wrapper is one *trial*:
    ``num_episodes`` episodes of the inner env on the same task, played back to back. A recurrent agent that keeps
    its hidden state for the whole wrapper episode (as SB3's ``RecurrentPPO`` does) is then trained as in RL²: it
    must explore the task in the first episodes and exploit it in the later ones.

    Each trial's task is, in order of precedence: ``reset(options={"task": task})``; drawn uniformly from ``tasks``
    with the wrapper's generator (``np_random``); or sampled from the family's task distribution with it. The
    wrapper's generator is its own, seeded by ``reset(seed=s)`` from a child of ``s``'s ``SeedSequence``, so that the
    tasks are independent of the inner env's random stream (which ``s`` seeds too).

    ## Action Space
    The inner env's action space (``Discrete`` or ``Box``).

    ## Observation Space
    ``Box(float32)`` of size :func:`metarl.trials.trial_input_size`, exactly
    :func:`metarl.trials.trial_input_vector`: ``[observation (flattened), previous action, previous reward, flag]``.
    The previous action is one-hot for ``Discrete`` actions (bounds 0..1) and the action clipped to the box for
    ``Box`` actions (the box's bounds); it is all zeros at the trial's first step. The previous reward is unbounded,
    zero at the first step. The flag (0..1) is 1 when the previous step ended an inner episode, i.e. at the first
    step of episodes 2..n (and in the trial's final observation, which no action follows).

    ## Rewards
    The inner env's reward.

    ## Starting State
    ``reset(seed=s)`` resets the inner env with seed ``s`` and the trial's task. When an inner episode ends
    (terminated or truncated) and the trial has episodes left, the inner env is reset without a seed (its random
    stream continues) and the step returns the new episode's first observation with the flag set.

    ## Episode End
    Terminates after the ``num_episodes``-th inner episode ends: the trial is the whole meta-episode, so it is a
    true end (no bootstrapping), whether that inner episode terminated or was truncated. Never truncates.
    ``info["episode_index"]`` is the inner episode (0..n-1) of the step, merged with the inner env's step info.

    ## Arguments
    ``env``: the family's single env (``family.make_env()``, or ``gymnasium.make("MetaRL/...")``).
    ``num_episodes``: inner episodes per trial, >= 1.
    ``tasks``: optional tasks of the family to draw each trial's task from (a train split, say).

    ## Version History
    * v0: initial version.

    References:
        Duan et al. "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", arXiv:1611.02779, 2016.
    """

    def __init__(self, env: gym.Env, num_episodes: int, tasks: Sequence[Any] | None = None) -> None:
        super().__init__(env, tasks)
        self.num_episodes = check_count("num_episodes", num_episodes)
        """Inner episodes per trial."""
        self.observation_space = trial_observation_space(self.family)
        self._episode_index = 0
        self._needs_reset = True
        self._prev_action = initial_prev_actions(self.family.action_space, 1, "cpu")
        self._prev_reward = torch.zeros(1, dtype=torch.float32)
        self._episode_ended = torch.zeros(1, dtype=torch.float32)

    @property
    def episode_index(self) -> int:
        """The inner episode being played (0..n-1); ``num_episodes`` once the trial is over."""
        return self._episode_index

    # -- Gymnasium API -------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start a trial: pick its task, reset the inner env with ``seed`` and that task.

        Args:
            seed: seeds the inner env and (through a child seed) the wrapper's task generator.
            options: ``{"task": task}`` plays ``task`` in this trial; no other option is allowed.

        Returns:
            The trial's first input vector and ``{"episode_index": 0, **inner reset info}``.
        """
        task, seed = self._draw_task(seed, options)
        observation, info = self.env.reset(seed=seed, options={"task": task})
        self._task = task
        self._episode_index = 0
        self._needs_reset = False
        self._prev_action = initial_prev_actions(self.family.action_space, 1, "cpu")
        self._prev_reward = torch.zeros(1, dtype=torch.float32)
        self._episode_ended = torch.zeros(1, dtype=torch.float32)
        return self._input_vector(observation), {**info, "episode_index": 0}

    def step(self, action: Any) -> tuple[np.ndarray, Any, bool, bool, dict]:
        """Step the inner env; start its next episode when one ends, end the trial after the n-th.

        Returns:
            ``(input vector, inner reward, trial over, False, {**inner step info, "episode_index": k})``.
        """
        if self._needs_reset:
            raise RuntimeError("TrialWrapper.step() called before reset() or after the trial ended")
        observation, reward, terminated, truncated, info = self.env.step(action)  # the inner env checks the action
        info = {**info, "episode_index": self._episode_index}
        episode_ended = bool(terminated or truncated)
        if episode_ended:
            self._episode_index += 1
            if self._episode_index < self.num_episodes:
                # the same task (the family's env keeps it); no seed, so the inner env's random stream continues
                observation, _ = self.env.reset()
        trial_over = self._episode_index == self.num_episodes
        self._needs_reset = trial_over

        # what the next step's input vector carries, encoded as collect_trials encodes it
        action_space = self.family.action_space
        action_tensor = torch.as_tensor(np.asarray(action)).reshape(1, *action_space.shape)
        self._prev_action = encode_prev_actions(action_space, action_tensor)
        self._prev_reward = torch.tensor([reward], dtype=torch.float32)
        self._episode_ended = torch.tensor([float(episode_ended)], dtype=torch.float32)
        return self._input_vector(observation), reward, trial_over, False, info

    def _input_vector(self, observation: np.ndarray) -> np.ndarray:
        """The trial input vector of ``observation`` and the stored previous action, reward and flag."""
        observations = torch.as_tensor(np.asarray(observation))[None]
        inputs = TrialInputs(observations, self._prev_action, self._prev_reward, self._episode_ended)
        return trial_input_vector(inputs, self.family.action_space)[0].numpy()


def trial_observation_space(family: TaskFamily) -> gym.spaces.Box:
    """The bounds of :func:`metarl.trials.trial_input_vector` for ``family``, as a float32 ``Box``.

    Observation bounds, then 0..1 for a one-hot (``Discrete``) or the box's bounds (``Box``) for the previous action,
    -inf..inf for the previous reward and 0..1 for the flag.
    """
    observation_space, action_space = family.observation_space, family.action_space
    if not isinstance(observation_space, gym.spaces.Box):
        raise TypeError(f"trials need a Box observation space, got {observation_space!r}")
    if isinstance(action_space, gym.spaces.Discrete):
        action_low, action_high = np.zeros(int(action_space.n)), np.ones(int(action_space.n))
    elif isinstance(action_space, gym.spaces.Box):
        action_low, action_high = action_space.low.ravel(), action_space.high.ravel()
    else:
        raise TypeError(f"trials support Discrete and Box action spaces, got {action_space!r}")
    low = np.concatenate([observation_space.low.ravel(), action_low, [-np.inf, 0.0]]).astype(np.float32)
    high = np.concatenate([observation_space.high.ravel(), action_high, [np.inf, 1.0]]).astype(np.float32)
    assert low.shape == (trial_input_size(family),)  # the same layout as trial_input_vector
    return gym.spaces.Box(low, high, dtype=np.float32)


class TaskObservationWrapper(TaskDrawingWrapper):
    """The oracle's view of a family: every observation with the parameters of the task being played appended.

    ## Description
    Knowing the task, an agent needs no adaptation: a policy trained on this wrapper (with Stable-Baselines3's PPO,
    say: the ``oracle-ppo`` baseline) bounds what a meta-learner can reach. Each reset picks a task as
    :class:`TaskDrawingWrapper` says (from ``tasks``, a train split, for training).

    ## Observation Space
    ``Box(-inf, inf, (obs_dim + task_dim,), float32)``: the inner observation (flattened), then
    :func:`task_vectors` of the task.

    ## Action Space, Rewards, Starting State, Episode End
    The inner env's.

    ## Version History
    * v0: initial version.
    """

    def __init__(self, env: gym.Env, tasks: Sequence[Any] | None = None) -> None:
        super().__init__(env, tasks)
        self.observation_space = task_observation_space(self.family)
        self._task_vector = np.zeros(0, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Reset the inner env with ``seed`` and the episode's task (``options={"task": task}`` chooses it)."""
        task, seed = self._draw_task(seed, options)
        observation, info = self.env.reset(seed=seed, options={"task": task})
        self._task = task
        self._task_vector = task_vectors(self.family, [task])[0]
        return self._with_task(observation), info

    def step(self, action: Any) -> tuple[np.ndarray, Any, bool, bool, dict]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._with_task(observation), reward, terminated, truncated, info

    def _with_task(self, observation: Any) -> np.ndarray:
        return np.concatenate([np.asarray(observation, dtype=np.float32).ravel(), self._task_vector])


def task_vectors(family: TaskFamily, tasks: Sequence[Any]) -> np.ndarray:
    """``[len(tasks), task_dim]`` float32: each task's parameters (``family.task_arrays``, every field flattened, in
    field order) as one vector."""
    arrays = family.task_arrays(list(tasks))
    return np.concatenate([array.reshape(len(tasks), -1) for array in arrays.values()], axis=1).astype(np.float32)


def task_observation_space(family: TaskFamily) -> gym.spaces.Box:
    """The observation space of :class:`TaskObservationWrapper` for ``family``."""
    if not isinstance(family.observation_space, gym.spaces.Box):
        raise TypeError(f"the oracle's view needs a Box observation space, got {family.observation_space!r}")
    example = family.sample_tasks(np.random.default_rng(0), 1)
    size = int(np.prod(family.observation_space.shape)) + task_vectors(family, example).shape[1]
    return gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)


def make_trial_env(
    env_id: str, num_episodes: int, tasks: Sequence[Any] | None = None, **family_kwargs: Any
) -> TrialWrapper:
    """A :class:`TrialWrapper` over the single env of the registered family ``env_id``.

    Args:
        env_id: a registered family id, ``MetaRL/<Name>-v<N>``.
        num_episodes: inner episodes per trial, >= 1.
        tasks: optional tasks of the family to draw each trial's task from.
        **family_kwargs: the family's constructor arguments (``horizon=...``), over its registered defaults.

    Returns:
        The wrapped env; reset it (with a seed) before stepping.
    """
    family = make_family(env_id, **family_kwargs)
    return TrialWrapper(family.make_env(), num_episodes, tasks)


def _check_tasks(family: TaskFamily, tasks: Sequence[Any]) -> tuple[Any, ...]:
    """``tasks`` as a tuple if it is a non-empty sequence of valid tasks of ``family``; raises naming the bad one."""
    if isinstance(tasks, str) or not isinstance(tasks, Sequence):
        raise TypeError(f"tasks must be a sequence of {type(family).__name__} tasks or None, got {tasks!r}")
    if len(tasks) == 0:
        raise ValueError(f"tasks must hold at least one task of {type(family).__name__}, got {tasks!r}")
    for i, task in enumerate(tasks):
        try:
            family.check_task(task)
        except (TypeError, ValueError) as error:
            raise type(error)(f"tasks[{i}] is not a valid task of {type(family).__name__}: {error}") from error
    return tuple(tasks)
