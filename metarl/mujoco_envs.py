"""MuJoCo task families: a Gymnasium v5 env that plays a task, and a batched env stepped in C threads.

**Single env.** :class:`MuJoCoTaskEnv` is mixed in before one of Gymnasium's v5 MuJoCo env classes
(``HalfCheetahEnv``, ``AntEnv``, ...). Gymnasium keeps the model loading, ``reset`` (``reset_model``'s noise),
``step`` and rendering; the mixin overrides the hooks ``_get_obs``, ``_get_rew``, ``is_healthy`` and
``_step_mujoco_simulation`` with the family's vectorised functions (called on a batch of one), and adds the task
semantics of :class:`metarl.env.TaskHolder`, action checks and clipping, and the family's horizon. Every seeding draws
a default task from the fresh generator (played only by an env that has no task), so that what follows a seed never
depends on the env's history.

**Batched env.** :class:`MuJoCoVectorEnv` steps every sub-env in one call of ``mujoco.rollout`` on a persistent pool
of C threads (the GIL is released; one ``MjData`` per thread), ``nstep`` = the frame skip with the action held
across it, each sub-env from its own full physics state (and its own ``MjModel`` in the dynamics families).
Observations, rewards and terminations are the family's vectorised NumPy functions, the same ones the single env
calls, and reset noise is drawn from one generator per sub-env exactly as the single env's ``reset_model`` draws it.

**Exactness and the solver's warm start.** MuJoCo's constraint solver starts from the previous step's accelerations
(``qacc_warmstart``), which are not part of the physics state a rollout restarts from. Both envs therefore zero the
warm start at the start of every env step (the frame-skip substeps inside one env step keep it), which makes them
bit-identical (tested). Compared with Gymnasium's own env this changes only the solver's starting point: the
physics agree to the solver's tolerance, which HalfCheetah's chaotic contacts amplify to about 0.06 in the state
after 100 steps.

**Unstable simulations.** Both envs check after every step that the state is finite and that MuJoCo did not reset
the simulation itself (it does so, counting a warning, when accelerations, velocities or positions blow up); either
raises ``FloatingPointError`` naming the task, rather than handing out NaN or silently restarted observations.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from mujoco import rollout

from metarl.env import TaskHolder, check_action
from metarl.tasks import TaskFamily, TaskT, check_count
from metarl.vector import resolve_reset_mask, resolve_seeds

FULL_PHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS
SUPPORTED_AUTORESET_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED)
GYMNASIUM_ASSETS = Path(gym.__file__).parent / "envs" / "mujoco" / "assets"


class MuJoCoFamily(TaskFamily[TaskT]):
    """Base of the MuJoCo families: the robot's model and the vectorised functions both envs share.

    A subclass sets ``xml_file``, ``frame_skip`` and ``terminates``, calls ``_load_model()`` at the end of its
    ``__init__`` (after storing its arguments, ``horizon`` and ``reset_noise_scale`` among them), and implements
    ``observe``, ``rewards`` and ``reset_state`` (and ``healthy`` when it terminates, ``apply_task`` when tasks
    change the dynamics). The arrays these functions take have a leading sub-env dimension N.
    """

    xml_file: ClassVar[str]
    """Model file, in Gymnasium's MuJoCo assets unless a path."""
    frame_skip: ClassVar[int]
    """Physics steps per env step (Gymnasium's v5 value for the robot)."""
    terminates: ClassVar[bool] = False
    """Whether an episode ends (terminated) when ``healthy`` is False."""
    varies_dynamics: ClassVar[bool] = False
    """Whether ``apply_task`` changes the model (each sub-env of the batched env then has its own model)."""
    vector_env_class: ClassVar[type[gym.vector.VectorEnv] | None]  # MuJoCoVectorEnv, set below its definition

    reset_noise_scale: float

    def _load_model(self) -> None:
        path = Path(self.xml_file) if "/" in self.xml_file else GYMNASIUM_ASSETS / self.xml_file
        self.model = mujoco.MjModel.from_xml_path(str(path))
        """The robot's model as loaded; the dynamics families scale copies of it, never it."""
        self.dt = self.model.opt.timestep * self.frame_skip
        """Seconds per env step."""
        self.init_qpos = self.model.qpos0.copy()
        self.init_qvel = np.zeros(self.model.nv)
        low, high = self.model.actuator_ctrlrange.copy().astype(np.float32).T
        self.action_space = gym.spaces.Box(low=low, high=high, dtype=np.float32)
        observation_size = self.observe(self.init_qpos[None], self.init_qvel[None]).shape[1]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (observation_size,), np.float64)

    # -- the functions both envs share --------------------------------------------------------------------------
    def observe(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Observations ``[N, obs_dim]`` (float64) of states ``qpos [N, nq]``, ``qvel [N, nv]``."""
        raise NotImplementedError

    def healthy(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Whether each state is healthy, ``[N]`` bool; always True by default."""
        return np.ones(qpos.shape[0], dtype=bool)

    def rewards(
        self,
        task_params: dict[str, np.ndarray],
        qpos_before: np.ndarray,
        qpos: np.ndarray,
        qvel: np.ndarray,
        actions: np.ndarray,
        healthy: np.ndarray,
    ) -> np.ndarray:
        """Rewards ``[N]`` of the steps from ``qpos_before`` to ``(qpos, qvel)`` under clipped ``actions [N, nu]``;
        ``task_params`` holds each sub-env's task parameters (``task_arrays``)."""
        raise NotImplementedError

    def reset_state(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The initial ``(qpos, qvel)`` of one episode, drawn from ``rng`` exactly as the Gymnasium env's
        ``reset_model`` draws them (same calls, same order)."""
        raise NotImplementedError

    def apply_task(self, model: mujoco.MjModel, task_params: dict[str, np.ndarray]) -> None:
        """Set a model's parameters for one task (``task_params`` without the task dim); nothing by default."""

    # -- envs ---------------------------------------------------------------------------------------------------
    def x_velocity(self, qpos_before: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        """Forward velocity of the root over the env step, ``[N]`` (Gymnasium's formula)."""
        return (qpos[:, 0] - qpos_before[:, 0]) / self.dt

    def make_vec_env(
        self,
        num_envs: int,
        tasks: Sequence[TaskT] | None = None,
        *,
        device: Any = "cpu",
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        num_threads: int | None = None,
    ) -> MuJoCoVectorEnv:
        """The batched env (see :class:`MuJoCoVectorEnv`); ``num_threads`` defaults to the CPUs available."""
        return MuJoCoVectorEnv(self, num_envs, tasks, device, autoreset_mode, num_threads=num_threads)

    def make_env(self, task: TaskT | None = None, render_mode: str | None = None) -> MuJoCoTaskEnv[TaskT]:
        """The single env; ``render_mode`` is Gymnasium's MuJoCo rendering (``"human"``, ``"rgb_array"``, ...)."""
        return self.env_class(self, task, render_mode=render_mode)


class MuJoCoTaskEnv(TaskHolder[TaskT]):
    """Mixin that turns a Gymnasium v5 MuJoCo env class into a family's single env: ``class
    HalfCheetahTaskEnv(MuJoCoTaskEnv, HalfCheetahEnv)``. See the module docstring for what it overrides."""

    family: MuJoCoFamily[TaskT]

    def __init__(self, family: MuJoCoFamily[TaskT], task: TaskT | None = None, render_mode: str | None = None) -> None:
        self._init_task(family, task)
        # the Gymnasium env's constructor
        super().__init__(reset_noise_scale=family.reset_noise_scale, render_mode=render_mode)
        self.observation_space = family.observation_space
        self.action_space = family.action_space
        self._elapsed_steps = 0
        self._needs_reset = True
        self._qpos_before = self.data.qpos.copy()

    # -- tasks and episodes ---------------------------------------------------------------------------------------
    def _on_task_activated(self) -> None:
        self.family.apply_task(self.model, self.task_params)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        fresh_generator = seed is not None or self._np_random is None
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        options = dict(options or {})
        if "task" in options:
            self.set_task(options.pop("task"))
        if fresh_generator:
            self._pending_task = _seeded_default_task(self.family, self.np_random, self._task, self._pending_task)
        self._activate_task(self.np_random)
        self._elapsed_steps = 0
        self._needs_reset = False
        return super().reset(seed=None, options=options or None)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._needs_reset:
            raise RuntimeError(f"{type(self).__name__}.step() called before reset() or after the episode ended")
        action = np.clip(check_action(self.action_space, action), self.action_space.low, self.action_space.high)
        observation, reward, terminated, _, info = super().step(action)
        self._elapsed_steps += 1
        truncated = not terminated and self._elapsed_steps >= self.family.horizon
        self._needs_reset = terminated or truncated
        return observation, reward, terminated, truncated, info

    # -- Gymnasium's hooks --------------------------------------------------------------------------------------
    def _step_mujoco_simulation(self, ctrl: np.ndarray, n_frames: int) -> None:
        self._qpos_before = self.data.qpos.copy()
        warnings_before = _instability_warnings(self.data)
        self.data.qacc_warmstart[:] = 0.0  # what the batched env's restart from the state does (module docstring)
        super()._step_mujoco_simulation(ctrl, n_frames)
        finite = np.isfinite(self.data.qpos).all() and np.isfinite(self.data.qvel).all()
        if not finite or _instability_warnings(self.data) > warnings_before:
            self._needs_reset = True  # the state is lost: only a reset may follow
            raise FloatingPointError(_unstable_message(self.family, self._task))

    def _get_obs(self) -> np.ndarray:
        return self.family.observe(self.data.qpos[None], self.data.qvel[None])[0]

    @property
    def is_healthy(self) -> bool:
        return bool(self.family.healthy(self.data.qpos[None], self.data.qvel[None])[0])

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict]:
        qpos, qvel = self.data.qpos[None], self.data.qvel[None]
        healthy = self.family.healthy(qpos, qvel)
        task_params = {name: value[None] for name, value in self.task_params.items()}
        reward = self.family.rewards(task_params, self._qpos_before[None], qpos, qvel, action[None], healthy)
        return float(reward[0]), {}


class MuJoCoVectorEnv(gym.vector.VectorEnv, Generic[TaskT]):
    """All sub-envs of a MuJoCo family stepped by ``mujoco.rollout`` in C threads; NumPy in, NumPy out.

    Gives exactly the observations, rewards, terminations and truncations of the family's single env for the same
    tasks, seeds and actions (sub-env ``i`` reset with seed ``s + i`` is the single env reset with ``s + i``).
    Autoreset modes ``NEXT_STEP`` (Gymnasium's default), ``SAME_STEP`` (final observations in
    ``info["final_obs"]``, a dense array, with the mask ``info["_final_obs"]``) and ``DISABLED``.

    Args:
        family: the task family.
        num_envs: number of sub-envs, >= 1.
        tasks: optional task per sub-env, effective at its next reset.
        device: accepted for the family protocol; MuJoCo runs on the CPU and the arrays are NumPy.
        autoreset_mode: see above.
        num_threads: threads of the rollout pool; default the CPUs this process may use, at most ``num_envs``;
            1 runs on the calling thread.
    """

    def __init__(
        self,
        family: MuJoCoFamily[TaskT],
        num_envs: int,
        tasks: Sequence[TaskT] | None = None,
        device: Any = "cpu",
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        *,
        num_threads: int | None = None,
    ) -> None:
        self.family = family
        self.num_envs = check_count("num_envs", num_envs)
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError as error:
            allowed = [mode.value for mode in SUPPORTED_AUTORESET_MODES]
            raise ValueError(f"unknown autoreset_mode {autoreset_mode!r}; allowed: {allowed}") from error
        if num_threads is None:
            num_threads = min(len(os.sched_getaffinity(0)), self.num_envs)
        self.num_threads = check_count("num_threads", num_threads)
        self.metadata = {"autoreset_mode": self.autoreset_mode, "render_modes": []}
        self.render_mode = None
        self.single_observation_space = family.observation_space
        self.single_action_space = family.action_space
        self.observation_space = batch_space(family.observation_space, self.num_envs)
        self.action_space = batch_space(family.action_space, self.num_envs)

        model = family.model
        self._models = [copy.copy(model) for _ in range(self.num_envs)] if family.varies_dynamics else None
        # a pool of 0 threads runs the rollout on the calling thread: no hand-off cost for a single thread
        self._pool = rollout.Rollout(nthread=0 if self.num_threads == 1 else self.num_threads)
        self._thread_data = [mujoco.MjData(model) for _ in range(self.num_threads)]
        self._scratch = mujoco.MjData(model)
        nstate = mujoco.mj_stateSize(model, FULL_PHYSICS)
        self._qpos_slice = slice(1, 1 + model.nq)  # the full physics state is [time, qpos, qvel, act, ...]
        self._qvel_slice = slice(1 + model.nq, 1 + model.nq + model.nv)
        self._states = np.zeros((self.num_envs, nstate))
        self._rollout_states = np.zeros((self.num_envs, family.frame_skip, nstate))
        self._rollout_sensors = np.zeros((self.num_envs, family.frame_skip, model.nsensordata))
        self._controls = np.zeros((self.num_envs, family.frame_skip, model.nu))
        self._model_list = self._models if self._models is not None else [model] * self.num_envs
        self._observations = np.zeros((self.num_envs, *family.observation_space.shape))

        self._tasks: list[TaskT | None] = [None] * self.num_envs
        self._pending_tasks: list[TaskT | None] = [None] * self.num_envs
        self.task_params: dict[str, np.ndarray] = {}
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._elapsed_steps = np.zeros(self.num_envs, dtype=np.int64)
        self._needs_reset = np.ones(self.num_envs, dtype=bool)
        if tasks is not None:
            self.set_tasks(tasks)

    # -- tasks ----------------------------------------------------------------------------------------------------
    def set_tasks(self, tasks: Sequence[TaskT]) -> None:
        """Validate one task per sub-env now; sub-env ``i`` plays ``tasks[i]`` from its next reset."""
        if len(tasks) != self.num_envs:
            raise ValueError(f"set_tasks needs one task per sub-env ({self.num_envs}), got {len(tasks)}")
        self._pending_tasks = [self.family.check_task(task) for task in tasks]

    def get_tasks(self) -> tuple[TaskT | None, ...]:
        """The task each sub-env is playing (``None`` for a sub-env never reset)."""
        return tuple(self._tasks)

    # -- Gymnasium VectorEnv API ------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all sub-envs (or those in ``options["reset_mask"]``); ``seed`` is ``None``, an int ``s`` (sub-env
        ``i`` gets ``s + i``) or one seed per sub-env; ``options["tasks"]`` sets one task per sub-env."""
        options = dict(options or {})
        mask = resolve_reset_mask(options.pop("reset_mask", None), self.num_envs)
        if "tasks" in options:
            self.set_tasks(options.pop("tasks"))
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; allowed: 'tasks', 'reset_mask'")
        seeds = resolve_seeds(seed, self.num_envs)
        for i in np.flatnonzero(mask):
            if seeds[i] is not None or self._rngs[i] is None:
                self._rngs[i] = seeding.np_random(seeds[i])[0]
                self._pending_tasks[i] = _seeded_default_task(
                    self.family, self._rngs[i], self._tasks[i], self._pending_tasks[i]
                )
        self._reset_subenvs(np.flatnonzero(mask))
        return self._observations.copy(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if any(rng is None for rng in self._rngs):
            never = [i for i, rng in enumerate(self._rngs) if rng is None]
            raise RuntimeError(f"step() before reset() on sub-envs {never}")
        actions = self._check_actions(actions)
        resetting = self._needs_reset.copy()
        if resetting.any() and self.autoreset_mode != AutoresetMode.NEXT_STEP:
            raise RuntimeError(
                f"step() on sub-envs {np.flatnonzero(resetting).tolist()} that need a reset; with "
                f"autoreset_mode={self.autoreset_mode.value} call reset(options={{'reset_mask': ...}}) first"
            )
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        stepping = np.flatnonzero(~resetting)
        if stepping.size:
            rewards[stepping], terminated[stepping] = self._simulate(stepping, actions[stepping])
        truncated = ~terminated & ~resetting & (self._elapsed_steps >= self.family.horizon)
        if resetting.any():  # next-step autoreset: these sub-envs ended last step, so this step is their reset
            self._reset_subenvs(np.flatnonzero(resetting))
        done = terminated | truncated
        info: dict[str, Any] = {}
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            info["final_obs"] = self._observations.copy()
            info["_final_obs"] = done.copy()
            self._reset_subenvs(np.flatnonzero(done))
            done = np.zeros_like(done)
        self._needs_reset = done
        return self._observations.copy(), rewards, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        self._pool.close()

    # -- internals ------------------------------------------------------------------------------------------------
    def _simulate(self, indices: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One env step of the sub-envs ``indices``: physics, then rewards and terminations."""
        family = self.family
        count = indices.size
        everyone = count == self.num_envs
        # contiguous inputs and outputs, preallocated: the rollout then skips its checks and copies
        states_before = self._states if everyone else np.ascontiguousarray(self._states[indices])
        qpos_before = states_before[:, self._qpos_slice].copy()
        states = self._rollout_states[:count]
        controls = self._controls[:count]
        controls[:] = actions[:, None, :]  # the action held across the frame skip, as the single env's ctrl
        models = self._model_list if everyone else [self._model_list[i] for i in indices]
        warnings_before = sum(_instability_warnings(data) for data in self._thread_data)
        self._pool.rollout(
            models,
            self._thread_data,
            states_before,
            controls,
            skip_checks=True,
            nstep=family.frame_skip,
            control_spec=mujoco.mjtState.mjSTATE_CTRL.value,
            state=states,
            sensordata=self._rollout_sensors[:count],
        )
        states_after = states[:, -1]
        qpos, qvel = states_after[:, self._qpos_slice], states_after[:, self._qvel_slice]
        finite = np.isfinite(qpos).all() and np.isfinite(qvel).all()
        if not finite or sum(_instability_warnings(data) for data in self._thread_data) > warnings_before:
            first = self._first_unstable(indices, states_before, controls)
            raise FloatingPointError(_unstable_message(family, self._tasks[first], sub_env=first))
        healthy = family.healthy(qpos, qvel)
        task_params = {name: values if everyone else values[indices] for name, values in self.task_params.items()}
        rewards = family.rewards(task_params, qpos_before, qpos, qvel, actions, healthy)
        self._states[indices] = states_after
        self._observations[indices] = family.observe(qpos, qvel)
        self._elapsed_steps[indices] += 1
        terminated = ~healthy if family.terminates else np.zeros(count, dtype=bool)
        return rewards, terminated

    def _first_unstable(self, indices: np.ndarray, states: np.ndarray, controls: np.ndarray) -> int:
        """The first sub-env whose step was unstable, found by stepping each again on its own (the threads'
        warning counters do not say which sub-env warned); only called once a step has gone wrong."""
        scratch = self._scratch
        for i, state, control in zip(indices, states, controls, strict=True):
            model = self.family.model if self._models is None else self._models[i]
            mujoco.mj_resetData(model, scratch)
            mujoco.mj_setState(model, scratch, state, FULL_PHYSICS)
            for substep_control in control:
                scratch.ctrl[:] = substep_control
                mujoco.mj_step(model, scratch)
            finite = np.isfinite(scratch.qpos).all() and np.isfinite(scratch.qvel).all()
            if not finite or _instability_warnings(scratch) > 0:
                return int(i)
        return int(indices[0])

    def _reset_subenvs(self, indices: np.ndarray) -> None:
        """Start a new episode in each sub-env of ``indices``, as the single env's ``reset`` does."""
        family, scratch = self.family, self._scratch
        for i in indices:
            rng = self._rngs[i]
            if self._pending_tasks[i] is not None:
                self._activate_task(i)
            model = family.model if self._models is None else self._models[i]
            qpos, qvel = family.reset_state(rng)
            mujoco.mj_resetData(model, scratch)
            scratch.qpos[:] = qpos
            scratch.qvel[:] = qvel
            mujoco.mj_getState(model, scratch, self._states[i], FULL_PHYSICS)
        self._elapsed_steps[indices] = 0
        self._needs_reset[indices] = False
        states = self._states[indices]
        self._observations[indices] = family.observe(states[:, self._qpos_slice], states[:, self._qvel_slice])

    def _activate_task(self, i: int) -> None:
        task = self._pending_tasks[i]
        for name, values in self.family.task_arrays([task]).items():
            if name not in self.task_params:
                self.task_params[name] = np.zeros((self.num_envs, *values.shape[1:]), dtype=values.dtype)
            self.task_params[name][i] = values[0]
        if self._models is not None:
            self.family.apply_task(self._models[i], {name: values[i] for name, values in self.task_params.items()})
        self._tasks[i], self._pending_tasks[i] = task, None

    def _check_actions(self, actions: Any) -> np.ndarray:
        array = np.asarray(actions)
        expected = (self.num_envs, *self.single_action_space.shape)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"actions must be a real array of shape {expected}, got dtype {array.dtype}")
        if array.shape != expected:
            raise ValueError(f"actions must have shape {expected}, got {array.shape}")
        if np.isnan(array).any():
            raise ValueError("actions contain NaN")
        space = self.single_action_space
        return np.clip(array.astype(np.float32), space.low, space.high)


MuJoCoFamily.vector_env_class = MuJoCoVectorEnv


def _seeded_default_task(family: TaskFamily, rng: np.random.Generator, task: Any, pending_task: Any) -> Any:
    """The pending task after a generator was (re)seeded: a task is drawn from it every time, and kept only if the
    env has none (set or played), so that the reset noise that follows depends on the seed alone, never on the
    env's history."""
    default = family.sample_tasks(rng, 1)[0]
    return default if task is None and pending_task is None else pending_task


_INSTABILITY_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQACC,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADQPOS,
)


def _instability_warnings(data: mujoco.MjData) -> int:
    """How many times MuJoCo found a huge or non-finite acceleration, velocity or position in ``data`` (each time it
    resets the simulation and carries on)."""
    return sum(int(data.warning[warning].number) for warning in _INSTABILITY_WARNINGS)


def _unstable_message(family: MuJoCoFamily, task: Any, sub_env: int | None = None) -> str:
    where = "" if sub_env is None else f" in sub-env {sub_env}"
    return (
        f"the {type(family).__name__} simulation became unstable{where} (non-finite state, or MuJoCo reset it after "
        f"its accelerations blew up) with task {task!r}; the task's parameters are outside what this model can "
        "simulate"
    )
