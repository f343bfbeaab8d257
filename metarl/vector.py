"""Native batched envs in torch (setting per-sub-env tasks on any vector env: :func:`metarl.tasks.set_vector_tasks`).

:class:`TorchVectorEnv` is the base of every light family's batched implementation. Its state lives in tensors on
one device (CPU or CUDA); all sub-envs step in a handful of tensor operations. It has two faces:

* the Gymnasium ``VectorEnv`` API (``reset`` / ``step``) taking and returning NumPy arrays, like any vector env;
* a tensor API (``reset_tensor`` / ``step_tensor``) that the rollout code uses to stay on the device, no copies.

It mirrors :class:`metarl.env.MetaEnv` exactly: sub-env ``i`` reset with seed ``s + i`` draws the same stream key
(and, with no task set, the same task) from the same ``np_random`` as a single env reset with seed ``s + i``, and
consumes the same counter-based random numbers per step, so both produce identical observations and rewards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from metarl.seeding import draw_key, uniform_torch
from metarl.tasks import TaskFamily, TaskT, check_count

_DRAW_BLOCK_STEPS = 8
"""Steps of random draws computed ahead per sub-env (see ``TorchVectorEnv._draw_randomness``)."""
SUPPORTED_AUTORESET_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED)


class TorchVectorEnv(gym.vector.VectorEnv, Generic[TaskT]):
    """Base of the native batched envs: N sub-envs of one family, each with its own task, stepped in torch.

    Subclasses implement ``_reset_state(mask)``, ``_observe()`` and ``_step_state(actions, randomness)`` on
    tensors with a leading sub-env dimension; this class handles tasks, seeding, horizons, autoreset and checks.
    Per-task parameters are in ``self.task_params`` (a dict of ``[num_envs, ...]`` tensors built by the family's
    ``task_arrays``), always those of the task each sub-env is playing.

    Args:
        family: the task family.
        num_envs: number of sub-envs, >= 1.
        tasks: optional task per sub-env (``len(tasks) == num_envs``), effective at the next reset.
        device: torch device of the state and of the tensor API.
        autoreset_mode: Gymnasium autoreset mode; ``NEXT_STEP`` (Gymnasium's default), ``SAME_STEP`` or
            ``DISABLED``. It is stored in ``metadata["autoreset_mode"]``.
    """

    draws_per_step: int = 0
    """Uniform random numbers one sub-env consumes per step; must equal the single env's."""

    def __init__(
        self,
        family: TaskFamily[TaskT],
        num_envs: int,
        tasks: Sequence[TaskT] | None = None,
        device: str | torch.device = "cpu",
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    ) -> None:
        self.family = family
        self.num_envs = check_count("num_envs", num_envs)
        self.device = torch.device(device)
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError as error:
            allowed = [mode.value for mode in SUPPORTED_AUTORESET_MODES]
            raise ValueError(f"unknown autoreset_mode {autoreset_mode!r}; allowed: {allowed}") from error
        self.metadata = {"autoreset_mode": self.autoreset_mode, "render_modes": []}
        self.render_mode = None
        self.single_observation_space = family.observation_space
        self.single_action_space = family.action_space
        self.observation_space = batch_space(family.observation_space, self.num_envs)
        self.action_space = batch_space(family.action_space, self.num_envs)

        self._tasks: list[TaskT | None] = [None] * self.num_envs
        self._pending_tasks: list[TaskT | None] = [None] * self.num_envs
        self._num_pending = 0
        self.task_params: dict[str, torch.Tensor] = {}
        self._stream_keys = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        # a sub-env's stream position is draw_block_start + draws_per_step * its step in the block (_draw_randomness)
        self._draw_block: torch.Tensor | None = None
        self._draw_block_start = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self._draw_block_index: torch.Tensor | None = None  # [N, 1, width]: every entry the sub-env's step in the block
        self._steps_since_refill = 0
        self._no_draws = torch.empty((self.num_envs, 0), dtype=torch.float64, device=self.device)
        self._seeded = np.zeros(self.num_envs, dtype=bool)
        self._all_seeded = False
        self._elapsed_steps = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self._needs_reset = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._info_mask: torch.Tensor | None = None  # sub-envs whose step info is real (None: all)
        if tasks is not None:
            self.set_tasks(tasks)

    # -- tasks -------------------------------------------------------------------------------------------------
    def set_tasks(self, tasks: Sequence[TaskT]) -> None:
        """Validate one task per sub-env now; sub-env ``i`` plays ``tasks[i]`` from its next reset."""
        if len(tasks) != self.num_envs:
            raise ValueError(f"set_tasks needs one task per sub-env ({self.num_envs}), got {len(tasks)}")
        self._pending_tasks = [self.family.check_task(task) for task in tasks]
        self._num_pending = self.num_envs

    def get_tasks(self) -> tuple[TaskT | None, ...]:
        """The task each sub-env is playing (``None`` for a sub-env never reset)."""
        return tuple(self._tasks)

    def _activate_pending_tasks(self, mask: np.ndarray) -> None:
        indices = [i for i in np.flatnonzero(mask) if self._pending_tasks[i] is not None]
        if not indices:
            return
        arrays = self.family.task_arrays([self._pending_tasks[i] for i in indices])
        index = torch.as_tensor(indices, device=self.device)
        for name, array in arrays.items():
            values = torch.as_tensor(array, device=self.device)
            if name not in self.task_params:
                self.task_params[name] = torch.zeros(
                    (self.num_envs, *values.shape[1:]), dtype=values.dtype, device=self.device
                )
            self.task_params[name][index] = values
        for i in indices:
            self._tasks[i], self._pending_tasks[i] = self._pending_tasks[i], None
        self._num_pending -= len(indices)

    # -- tensor API --------------------------------------------------------------------------------------------
    def reset_tensor(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reset all sub-envs (or those in ``options["reset_mask"]``); observations stay on the device.

        ``seed``: ``None``, an int ``s`` (sub-env ``i`` gets ``s + i``) or one seed per sub-env.
        ``options``: ``"tasks"`` (one task per sub-env, as ``set_tasks``) and ``"reset_mask"`` (bool, one per
        sub-env; a NumPy array or a tensor).
        """
        options = dict(options or {})
        mask = self._reset_mask(options.pop("reset_mask", None))
        if "tasks" in options:
            self.set_tasks(options.pop("tasks"))
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; allowed: 'tasks', 'reset_mask'")
        seeds = self._seeds(seed)
        self._seed_streams(mask, seeds)
        self._reset_subenvs(torch.as_tensor(mask, device=self.device))
        return self._observe(), {}

    def step_tensor(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Step every sub-env with ``actions`` (a tensor shaped like ``action_space``); results stay on the device.

        Returns:
            ``(observations, rewards float32, terminated bool, truncated bool, info)``, each with leading dim N.
        """
        if not self._all_seeded:
            raise RuntimeError(f"step() before reset() on sub-envs {np.flatnonzero(~self._seeded).tolist()}")
        actions = self._check_actions(actions)
        resetting = stepping = None
        if bool(self._needs_reset.any()):
            if self.autoreset_mode != AutoresetMode.NEXT_STEP:
                raise RuntimeError(
                    f"step() on sub-envs {torch.nonzero(self._needs_reset).flatten().tolist()} that need a reset; "
                    f"with autoreset_mode={self.autoreset_mode.value} call reset(options={{'reset_mask': ...}}) first"
                )
            resetting = self._needs_reset
            stepping = ~resetting
        randomness = self._draw_randomness(stepping)
        rewards, terminated, info = self._step_state(actions, randomness)
        self._elapsed_steps += 1
        if resetting is not None:
            # next-step autoreset: these sub-envs ended last step, so this step is their reset (what _step_state
            # computed for them is discarded; their reward is 0 and they neither terminate nor truncate)
            if self._num_pending:
                self._activate_pending_tasks(resetting.cpu().numpy())
            self._reset_state(resetting)
            self._elapsed_steps.masked_fill_(resetting, 0)
            rewards.masked_fill_(resetting, 0.0)
            if terminated is not None:
                terminated = terminated & stepping
            info = {key: value.masked_fill(resetting, 0) for key, value in info.items()}
        self._info_mask = stepping
        if terminated is None:  # a family whose episodes never terminate saves the termination bookkeeping
            done = self._elapsed_steps >= self.family.horizon
            truncated = done.clone()  # step() hands out NumPy views of returned tensors: done must not be one
            terminated = torch.zeros_like(done)
        else:
            truncated = ~terminated & (self._elapsed_steps >= self.family.horizon)
            done = terminated | truncated
        observations = self._observe()
        if self.autoreset_mode == AutoresetMode.SAME_STEP and bool(done.any()):
            info["final_obs"] = observations.clone()
            info["final_obs_mask"] = done.clone()
            self._reset_subenvs(done)
            observations = self._observe()
            done = torch.zeros_like(done)
        self._needs_reset = done
        return observations, rewards, terminated, truncated, info

    # -- Gymnasium VectorEnv API (NumPy in, NumPy out) ---------------------------------------------------------
    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        observations, info = self.reset_tensor(seed=seed, options=options)
        return _to_numpy(observations), _info_to_numpy(info)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        try:
            action_tensor = torch.as_tensor(np.asarray(actions), device=self.device)
        except (TypeError, ValueError) as error:
            raise TypeError(f"actions must be a numeric array shaped {self.action_space.shape}: {error}") from error
        observations, rewards, terminated, truncated, info = self.step_tensor(action_tensor)
        info = _info_to_numpy(info, None if self._info_mask is None else _to_numpy(self._info_mask))
        return _to_numpy(observations), _to_numpy(rewards), _to_numpy(terminated), _to_numpy(truncated), info

    # -- internals ---------------------------------------------------------------------------------------------
    def _reset_mask(self, reset_mask: Any) -> np.ndarray:
        return resolve_reset_mask(reset_mask, self.num_envs)

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        return resolve_seeds(seed, self.num_envs)

    def _seed_streams(self, mask: np.ndarray, seeds: list[int | None]) -> None:
        """Draw stream keys (and default tasks) exactly as ``MetaEnv.reset`` does for each re-seeded sub-env."""
        reseed = mask & (np.array([s is not None for s in seeds]) | ~self._seeded)
        if not reseed.any():
            return
        indices = np.flatnonzero(reseed)
        # the keys feed only the per-step draws: a family with none needs a NumPy generator per sub-env (~30 µs each,
        # a tenth of a meta-batch's rollout) only to draw a default task
        if self.draws_per_step > 0 or not all(self._has_task(i) for i in indices):
            self._draw_stream_keys(indices, seeds)
        self._seeded[indices] = True
        self._all_seeded = bool(self._seeded.all())

    def _has_task(self, index: int) -> bool:
        """Whether sub-env ``index`` has a task, active or waiting for its next reset."""
        return self._tasks[index] is not None or self._pending_tasks[index] is not None

    def _draw_stream_keys(self, indices: np.ndarray, seeds: list[int | None]) -> None:
        """The new stream key of each sub-env in ``indices`` from its seed, and a default task for one without."""
        keys = []
        for i in indices:
            rng, _ = seeding.np_random(seeds[i])
            keys.append(draw_key(rng))
            if not self._has_task(i):
                self._pending_tasks[i] = self.family.sample_tasks(rng, 1)[0]
                self._num_pending += 1
        index = torch.as_tensor(indices, device=self.device)
        self._stream_keys[index] = torch.as_tensor(keys, dtype=torch.int64, device=self.device)
        if self._draw_block_index is not None:
            self._draw_block_start += self.draws_per_step * self._draw_block_index[:, 0, 0]
        self._draw_block_start[index] = 0
        self._draw_block = self._draw_block_index = None  # the precomputed draws belong to the old keys

    def _reset_subenvs(self, mask: torch.Tensor) -> None:
        if self._num_pending:
            self._activate_pending_tasks(mask.cpu().numpy())
        self._elapsed_steps = torch.where(mask, 0, self._elapsed_steps)
        self._needs_reset = self._needs_reset & ~mask
        self._reset_state(mask)

    def _draw_randomness(self, stepping: torch.Tensor | None) -> torch.Tensor:
        """This step's random inputs of every sub-env: ``_transform_draws`` of its next ``draws_per_step`` draws.

        Draws are a pure function of (key, counter), so they are computed (and transformed) ahead for
        ``_DRAW_BLOCK_STEPS`` steps in one vectorised call and read from that block: the same numbers, a fraction
        of the per-step operations. A sub-env being autoreset does not step, so it does not advance in its stream,
        as in the single env.
        """
        if self.draws_per_step == 0:
            return self._no_draws
        if self._draw_block is None or self._steps_since_refill == _DRAW_BLOCK_STEPS:
            if self._draw_block_index is not None:
                self._draw_block_start += self.draws_per_step * self._draw_block_index[:, 0, 0]
            block_counters = self._draw_block_start[:, None] + torch.arange(
                _DRAW_BLOCK_STEPS * self.draws_per_step, device=self.device
            )
            uniforms = uniform_torch(self._stream_keys[:, None], block_counters)
            self._draw_block = self._transform_draws(uniforms.view(self.num_envs, _DRAW_BLOCK_STEPS, -1))
            width = self._draw_block.shape[2]
            self._draw_block_index = torch.zeros((self.num_envs, 1, width), dtype=torch.int64, device=self.device)
            self._steps_since_refill = 0
        randomness = self._draw_block.gather(1, self._draw_block_index)[:, 0]
        self._draw_block_index += 1 if stepping is None else stepping[:, None, None]
        self._steps_since_refill += 1
        return randomness

    def _check_actions(self, actions: torch.Tensor) -> torch.Tensor:
        space = self.single_action_space
        if not isinstance(actions, torch.Tensor):
            raise TypeError(f"step_tensor expects a torch.Tensor, got {type(actions).__name__}")
        expected_shape = (self.num_envs, *space.shape)
        if isinstance(space, gym.spaces.Discrete):
            if actions.dtype.is_floating_point or actions.dtype.is_complex or actions.dtype == torch.bool:
                raise TypeError(f"discrete actions must be integers, got dtype {actions.dtype}")
            if tuple(actions.shape) != expected_shape:
                raise ValueError(f"actions must have shape {expected_shape}, got {tuple(actions.shape)}")
            low, high = int(space.start), int(space.start + space.n)
            smallest, largest = (int(value) for value in torch.aminmax(actions))
            if smallest < low or largest >= high:
                raise ValueError(f"actions must be in [{low}, {high}), got values {actions.unique().tolist()}")
            return actions.to(self.device, torch.int64)
        if actions.dtype.is_complex or actions.dtype == torch.bool:
            raise TypeError(f"box actions must be real numbers, got dtype {actions.dtype}")
        if tuple(actions.shape) != expected_shape:
            raise ValueError(f"actions must have shape {expected_shape}, got {tuple(actions.shape)}")
        actions = actions.to(self.device, torch.float32)
        if bool(actions.isnan().any()):
            raise ValueError("actions contain NaN")
        return actions

    # -- hooks for families ------------------------------------------------------------------------------------
    def _reset_state(self, mask: torch.Tensor) -> None:
        """Put the sub-envs selected by the bool tensor ``mask`` in their initial state."""
        raise NotImplementedError

    def _observe(self) -> torch.Tensor:
        """Observations of all sub-envs, ``[num_envs, *observation_shape]``."""
        raise NotImplementedError

    def _transform_draws(self, uniforms: torch.Tensor) -> torch.Tensor:
        """Map uniform draws ``[num_envs, steps, draws_per_step]`` to the random inputs ``_step_state`` takes.

        The identity by default. A family overrides it to move per-draw maths (a Box-Muller transform, say) out of
        the per-step path; its single env applies the same maths to its uniforms in ``_step_state``.
        """
        return uniforms

    def _step_state(
        self, actions: torch.Tensor, randomness: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Advance every sub-env; ``randomness`` is this step's ``_transform_draws`` output, ``[num_envs, ...]``.

        Returns:
            ``(rewards float32 [N], terminated bool [N] or None for a family whose episodes never terminate,
            info)``.
        """
        raise NotImplementedError


def resolve_reset_mask(reset_mask: Any, num_envs: int) -> np.ndarray:
    """A vector env's ``options["reset_mask"]`` as a NumPy bool array (all sub-envs when ``None``), checked."""
    if reset_mask is None:
        return np.ones(num_envs, dtype=bool)
    mask = reset_mask.cpu().numpy() if isinstance(reset_mask, torch.Tensor) else np.asarray(reset_mask)
    if mask.shape != (num_envs,) or mask.dtype != np.bool_:
        raise ValueError(
            f"options['reset_mask'] must be a bool array of shape ({num_envs},), "
            f"got shape {mask.shape} dtype {mask.dtype}"
        )
    if not mask.any():
        raise ValueError("options['reset_mask'] must select at least one sub-env")
    return mask


def resolve_seeds(seed: int | Sequence[int | None] | None, num_envs: int) -> list[int | None]:
    """One seed (or ``None``) per sub-env from a vector env's ``reset(seed=...)``: ``None``, an int ``s`` (sub-env
    ``i`` gets ``s + i``, Gymnasium's convention) or one seed per sub-env."""
    if seed is None:
        return [None] * num_envs
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        return [int(seed) + i for i in range(num_envs)]
    seeds = list(seed)
    if len(seeds) != num_envs:
        raise ValueError(f"seed list must have one seed per sub-env ({num_envs}), got {len(seeds)}")
    return seeds


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    # step() results are fresh tensors, so on the CPU the array can share their memory
    return tensor.numpy() if tensor.device.type == "cpu" else tensor.cpu().numpy()


def _info_to_numpy(info: dict[str, torch.Tensor], stepped: np.ndarray | None = None) -> dict[str, Any]:
    """Gymnasium's vector info convention: one array per key, plus a ``_key`` mask of the sub-envs it covers.

    ``stepped`` marks the sub-envs that really stepped (not autoreset); their infos are the ones reported.
    """
    out: dict[str, Any] = {}
    for key, value in info.items():
        if key == "final_obs_mask":
            continue
        out[key] = _to_numpy(value)
        if key == "final_obs":
            out["_final_obs"] = _to_numpy(info["final_obs_mask"])
        else:
            out[f"_{key}"] = np.ones(len(value), dtype=bool) if stepped is None else stepped
    return out
