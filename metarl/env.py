"""The single Gymnasium env every family builds: task handling, seeding, horizon and action checks in one place.

A family's env subclasses :class:`MetaEnv` and fills three small hooks (``_reset_state``, ``_observe``,
``_step_state``); ``reset`` and ``step`` live here so that every family handles tasks, seeds, time limits and bad
actions the same way, and so that the native batched envs (``metarl.vector``) can mirror it exactly. The task
semantics alone live in :class:`TaskHolder`, which the MuJoCo families' envs (``metarl.mujoco_envs``) share.
"""

from __future__ import annotations

from typing import Any, Generic

import gymnasium as gym
import numpy as np

from metarl.seeding import draw_key, uniform_python
from metarl.tasks import TaskFamily, TaskT


class TaskHolder(Generic[TaskT]):
    """The task semantics every single env of a family shares, whatever simulates it (mixed into the env class).

    ``set_task(task)`` validates the task at once and makes it effective at the next ``reset``;
    ``reset(options={"task": task})`` sets and applies it in one call; ``get_task()`` returns the task being
    played. An env reset before any task was set draws one from the family's distribution with its own seeded
    ``np_random``. The env's ``reset`` calls ``_activate_task`` at the point where the task takes effect.
    """

    family: TaskFamily[TaskT]

    def _init_task(self, family: TaskFamily[TaskT], task: TaskT | None) -> None:
        self.family = family
        self._task: TaskT | None = None
        self.task_params: dict[str, np.ndarray] = {}
        """Parameters of the task being played, as ``family.task_arrays`` gives them (without the task dim)."""
        self._pending_task: TaskT | None = None if task is None else family.check_task(task)

    def set_task(self, task: TaskT) -> None:
        """Validate ``task`` now and play it from the next ``reset``."""
        self._pending_task = self.family.check_task(task)

    def get_task(self) -> TaskT | None:
        """The task being played (``None`` before the first reset if none was set)."""
        return self._task

    @property
    def task(self) -> TaskT | None:
        """The task being played; assigning it is ``set_task`` (so ``VectorEnv.set_attr("task", tasks)`` works)."""
        return self._task

    @task.setter
    def task(self, task: TaskT) -> None:
        self.set_task(task)

    def _activate_task(self, rng: np.random.Generator) -> None:
        """Make the pending task (or, if the env never had one, a task drawn from ``rng``) the one being played."""
        if self._pending_task is None and self._task is None:
            self._pending_task = self.family.sample_tasks(rng, 1)[0]
        if self._pending_task is not None:
            self._task, self._pending_task = self._pending_task, None
            self.task_params = {name: array[0] for name, array in self.family.task_arrays([self._task]).items()}
            self._on_task_activated()

    def _on_task_activated(self) -> None:
        """Hook: called when a new task takes effect (a dynamics family changes its model here)."""


class MetaEnv(TaskHolder[TaskT], gym.Env):
    """One sub-env of a task family: a Gymnasium env whose task is set with ``set_task``.

    A family's env subclasses it and fills three hooks; ``reset`` and ``step`` are written here once and call them
    (``scripts/custom_family_example.py`` is a whole family in one short file):

    * ``_reset_state(self) -> None``: put the env in its initial state for the task being played. Called by every
      ``reset``, after the new task (if any) took effect: ``self.task_params`` and ``self.get_task()`` are the new
      task's.
    * ``_observe(self) -> np.ndarray``: the current observation, an element of ``family.observation_space``. Called
      after ``_reset_state`` and after each ``_step_state``.
    * ``_step_state(self, action, uniforms: tuple[float, ...]) -> tuple[float, bool, dict]``: advance the state by
      one step; returns ``(reward, terminated, info)``. ``step`` adds the truncation at ``family.horizon`` steps.
      ``info["success"]`` (a number, > 0 on success), where the family defines success, becomes the evaluator's
      success rate.

    Optional: ``draws_per_step`` (class attribute, default 0) is how many uniform numbers in [0, 1) each step's
    ``uniforms`` holds, drawn from the env's seeded counter-based stream (``metarl.seeding``): a stochastic family
    draws its randomness there, never from a global generator, so that a batched twin can reproduce it.
    ``_on_task_activated(self) -> None`` is called when a new task takes effect, before ``_reset_state`` (a family
    that rebuilds a model per task does it there).

    ``self.task_params``: the parameters of the task being played, ``family.task_arrays([task])`` without the task
    dim: a dict of NumPy arrays, float64 by default, one per field of the task dataclass (``task_params["goal"]``; a
    scalar field gives a 0-d array). The task itself is ``self.get_task()``.

    Actions reach ``_step_state`` checked but not clipped (:func:`check_action`): a Box action has the space's shape
    and dtype and no NaN, but may lie outside the bounds (a Gaussian policy's sample), so a family clips it where its
    dynamics need it (every family of the suite does); a Discrete action is a Python ``int`` in range.

    Task semantics (``set_task``, ``reset(options={"task": ...})``, ``get_task``): see :class:`TaskHolder`.

    Randomness: seeding (``reset(seed=...)``) draws the key of a counter-based stream from ``np_random``; every
    stochastic step consumes ``draws_per_step`` numbers of that stream (see ``metarl.seeding``). The episode ends
    by truncation after ``family.horizon`` steps unless the family terminates it first; ``step`` after the end (or
    before the first ``reset``) raises ``RuntimeError``.

    Batched: a family whose ``vector_env_class`` is ``None`` runs through Gymnasium's vector envs of this env,
    ``family.make_vec_env(n, tasks)`` (a ``SyncVectorEnv``) or ``gymnasium.make_vec(id, num_envs=n,
    vectorization_mode="sync")`` (or ``"async"``), and :func:`metarl.tasks.set_vector_tasks` gives their sub-envs
    their tasks (docs/families.md). A native batched env (:class:`metarl.TorchVectorEnv`) mirrors these hooks on
    tensors with a leading sub-env dim.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - Gymnasium's own convention
    draws_per_step: int = 0
    """Uniform random numbers one step consumes; the batched twin consumes the same per sub-env."""

    def __init__(self, family: TaskFamily[TaskT], task: TaskT | None = None) -> None:
        self._init_task(family, task)
        self.observation_space = family.observation_space
        self.action_space = family.action_space
        self._stream_key: int | None = None
        self._stream_counter = 0
        self._elapsed_steps = 0
        self._needs_reset = True

    # -- Gymnasium API -----------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if options is not None and "task" in options:
            self.set_task(options["task"])
        if seed is not None or self._stream_key is None:
            self._stream_key = draw_key(self.np_random)
            self._stream_counter = 0
        self._activate_task(self.np_random)
        self._elapsed_steps = 0
        self._needs_reset = False
        self._reset_state()
        return self._observe(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._needs_reset:
            raise RuntimeError(f"{type(self).__name__}.step() called before reset() or after the episode ended")
        action = check_action(self.action_space, action)
        uniforms = self._draw_uniforms()
        reward, terminated, info = self._step_state(action, uniforms)
        self._elapsed_steps += 1
        truncated = not terminated and self._elapsed_steps >= self.family.horizon
        self._needs_reset = terminated or truncated
        return self._observe(), reward, terminated, truncated, info

    def _draw_uniforms(self) -> tuple[float, ...]:
        start = self._stream_counter
        self._stream_counter += self.draws_per_step
        return tuple(uniform_python(self._stream_key, counter) for counter in range(start, self._stream_counter))

    # -- hooks for families ------------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        """Put the env in its initial state for ``self._task``."""
        raise NotImplementedError

    def _observe(self) -> np.ndarray:
        """The current observation, an element of ``observation_space``."""
        raise NotImplementedError

    def _step_state(self, action: Any, uniforms: tuple[float, ...]) -> tuple[float, bool, dict]:
        """Advance the state by a checked ``action`` using ``uniforms`` (``draws_per_step`` numbers in [0, 1)).

        A Box ``action`` has the space's shape and dtype but is not clipped to its bounds (clip it here where the
        dynamics need it); a Discrete one is an ``int`` in range.

        Returns:
            ``(reward, terminated, info)``.
        """
        raise NotImplementedError


def check_action(space: gym.Space, action: Any) -> Any:
    """Return ``action`` as the space's dtype if its shape and dtype fit ``space``, else raise.

    Box actions must be real arrays of the space's shape without NaN (out-of-bound values are left to the env,
    which clips); Discrete actions must be integer scalars in range.
    """
    if isinstance(space, gym.spaces.Discrete):
        if isinstance(action, bool | np.bool_) or not isinstance(action, int | np.integer | np.ndarray):
            raise TypeError(f"action must be an integer in [0, {space.n}), got {type(action).__name__} {action!r}")
        array = np.asarray(action)
        if array.shape != () or array.dtype.kind not in "iu":
            raise TypeError(
                f"action must be an integer scalar in [0, {space.n}), got shape {array.shape} dtype {array.dtype}"
            )
        if not 0 <= int(array) - int(space.start) < space.n:
            raise ValueError(f"action must be in [{space.start}, {space.start + space.n}), got {int(array)}")
        return int(array)
    if isinstance(space, gym.spaces.Box):
        array = np.asarray(action)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"action must be a real array of shape {space.shape}, got dtype {array.dtype}")
        if array.shape != space.shape:
            raise ValueError(f"action must have shape {space.shape}, got shape {array.shape}")
        if np.isnan(array).any():
            raise ValueError(f"action contains NaN: {array!r}")
        return array.astype(space.dtype, copy=False)
    raise TypeError(f"unsupported action space {space!r}")
