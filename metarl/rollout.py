"""Collect E episodes for each of T tasks at once, as one typed batch of tensors shaped ``[T, E, H, ...]``.

Every episode runs in its own sub-env of one vector env with ``T * E`` sub-envs (sub-env ``t * E + e`` plays
episode ``e`` of task ``t``), so a whole meta-batch advances in one env step and one policy call per time step.
With a native batched env (:class:`metarl.vector.TorchVectorEnv`) observations, actions and rewards never leave the
device; any other Gymnasium vector env works too, through NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from metarl.tasks import TaskFamily, set_vector_tasks
from metarl.vector import TorchVectorEnv

# After an episode ends its sub-env keeps stepping until the slowest episode of the batch ends; those steps are
# masked out. Both modes below make that safe (NEXT_STEP resets, SAME_STEP has reset already); DISABLED would step
# an ended episode, which Gymnasium forbids.
ROLLOUT_AUTORESET_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)

SUCCESS_KEY = "success"
"""The step-info key of a family that defines success (a goal reached); an episode succeeds if any of its steps
does, as Meta-World counts it."""


class RolloutPolicy(Protocol):
    """What ``collect_episodes`` needs of a policy.

    Called with observations shaped ``[T, E, *observation_shape]`` (on the rollout's device) and the per-task
    parameters passed to ``collect_episodes`` (a dict of tensors with leading dim T, e.g. MAML's adapted
    parameters, or ``None``); returns actions shaped ``[T, E, *action_shape]``.
    """

    def __call__(self, observations: torch.Tensor, params: Mapping[str, torch.Tensor] | None) -> torch.Tensor: ...


class EpisodeBatch(NamedTuple):
    """E episodes for each of T tasks, padded to the horizon H; step ``h`` is real where ``masks[..., h] == 1``.

    Shapes: T tasks, E episodes per task, H the family's horizon.
    """

    observations: torch.Tensor
    """``[T, E, H, *obs_shape]`` observation before each step."""
    actions: torch.Tensor
    """``[T, E, H, *act_shape]`` action taken (0 on padded steps)."""
    rewards: torch.Tensor
    """``[T, E, H]`` float32 reward (0 on padded steps)."""
    masks: torch.Tensor
    """``[T, E, H]`` float32, 1 on the steps the episode really took."""
    terminated: torch.Tensor
    """``[T, E, H]`` bool, True on a step that ended the episode by termination (no bootstrapping past it)."""
    last_observations: torch.Tensor
    """``[T, E, *obs_shape]`` observation after each episode's last step (to bootstrap truncated episodes)."""
    infos: dict[str, torch.Tensor]
    """``[T, E, H]`` per-step values the family reports in ``info`` (``"success"``, say), 0 on padded steps."""
    tasks: tuple[Any, ...]
    """The T tasks."""
    task_params: dict[str, torch.Tensor]
    """The tasks' parameters (``family.task_arrays``), ``[T, ...]`` tensors, for per-task breakdowns."""

    @property
    def lengths(self) -> torch.Tensor:
        """``[T, E]`` number of steps of each episode."""
        return self.masks.sum(dim=-1)

    @property
    def returns(self) -> torch.Tensor:
        """``[T, E]`` undiscounted return of each episode."""
        return self.rewards.sum(dim=-1)

    @property
    def successes(self) -> torch.Tensor | None:
        """``[T, E]`` float32, 1 for an episode that succeeded at any of its steps (``info["success"]``), or
        ``None`` when the family does not define success."""
        if SUCCESS_KEY not in self.infos:
            return None
        return (self.infos[SUCCESS_KEY] > 0).any(dim=-1).to(torch.float32)  # padded steps hold 0

    def with_float_dtype(self, dtype: torch.dtype) -> EpisodeBatch:
        """The same episodes with every floating-point tensor (observations, continuous actions, rewards, masks, last
        observations) in ``dtype``: float64 for checks that must tell rounding from the algorithm."""

        def cast(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(dtype) if tensor.is_floating_point() else tensor

        return self._replace(
            observations=cast(self.observations),
            actions=cast(self.actions),
            rewards=cast(self.rewards),
            masks=cast(self.masks),
            last_observations=cast(self.last_observations),
        )


@torch.no_grad()
def collect_episodes(
    envs: gym.vector.VectorEnv,
    family: TaskFamily,
    tasks: Sequence[Any],
    episodes_per_task: int,
    policy: RolloutPolicy,
    *,
    params: Mapping[str, torch.Tensor] | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
) -> EpisodeBatch:
    """Run ``episodes_per_task`` episodes of each task in ``tasks`` with ``policy`` and return them as one batch.

    Args:
        envs: a vector env of ``family`` with ``len(tasks) * episodes_per_task`` sub-envs (``family.make_vec_env``),
            in ``NEXT_STEP`` or ``SAME_STEP`` autoreset mode. Its sub-envs' tasks are replaced.
        family: the task family (horizon, ``task_arrays``).
        tasks: the T tasks.
        episodes_per_task: E, >= 1.
        policy: see :class:`RolloutPolicy`.
        params: per-task policy parameters passed through to ``policy``.
        seed: env seed (sub-env ``i`` gets ``seed + i``); ``None`` continues the envs' random streams.
        device: where the batch lives; defaults to a native env's device, else CPU.

    Returns:
        An :class:`EpisodeBatch` on ``device``.
    """
    num_tasks = len(tasks)
    if num_tasks == 0:
        raise ValueError("collect_episodes needs at least one task, got an empty sequence")
    if isinstance(episodes_per_task, bool) or not isinstance(episodes_per_task, int) or episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be an int >= 1, got {episodes_per_task!r}")
    num_envs = num_tasks * episodes_per_task
    if envs.num_envs != num_envs:
        raise ValueError(
            f"envs has {envs.num_envs} sub-envs but {num_tasks} tasks x {episodes_per_task} episodes need {num_envs}"
        )
    mode = envs.metadata.get("autoreset_mode")
    if mode not in ROLLOUT_AUTORESET_MODES:
        raise ValueError(
            f"collect_episodes needs a vector env in autoreset mode {[m.value for m in ROLLOUT_AUTORESET_MODES]}, "
            f"got {mode!r}"
        )
    native = isinstance(envs, TorchVectorEnv)
    device = torch.device(device) if device is not None else (envs.device if native else torch.device("cpu"))
    horizon = family.horizon
    obs_shape = envs.single_observation_space.shape
    act_space = envs.single_action_space
    act_dtype = torch.int64 if isinstance(act_space, gym.spaces.Discrete) else torch.float32

    def to_tensor(array: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype, device=device)

    # one task per sub-env: sub-env t * E + e runs episode e of task t
    set_vector_tasks(envs, [task for task in tasks for _ in range(episodes_per_task)])
    if native:
        observations, _ = envs.reset_tensor(seed=seed)
        observations = observations.to(device)
    else:
        observations, _ = envs.reset(seed=seed)
        observations = to_tensor(observations, torch.float32)

    # storage, time-major while collecting
    obs_buffer = torch.zeros((horizon, num_envs, *obs_shape), dtype=torch.float32, device=device)
    action_buffer = torch.zeros((horizon, num_envs, *act_space.shape), dtype=act_dtype, device=device)
    reward_buffer = torch.zeros((horizon, num_envs), dtype=torch.float32, device=device)
    mask_buffer = torch.zeros((horizon, num_envs), dtype=torch.float32, device=device)
    terminated_buffer = torch.zeros((horizon, num_envs), dtype=torch.bool, device=device)
    info_buffers: dict[str, torch.Tensor] = {}
    last_observations = observations.clone()
    alive = torch.ones(num_envs, dtype=torch.bool, device=device)

    for step in range(horizon):
        obs_buffer[step] = observations
        actions = policy(observations.reshape(num_tasks, episodes_per_task, *obs_shape), params)
        actions = actions.reshape(num_envs, *act_space.shape).to(act_dtype)
        if native:
            next_observations, rewards, terminated, truncated, info = envs.step_tensor(actions.to(envs.device))
        else:
            next_observations, rewards, terminated, truncated, info = envs.step(actions.cpu().numpy())
            info = numeric_step_infos(info, num_envs)
        next_observations = to_tensor(next_observations, torch.float32)
        terminated, truncated = to_tensor(terminated, torch.bool), to_tensor(truncated, torch.bool)

        # record the step for the episodes still running
        action_buffer[step] = torch.where(_expand(alive, actions), actions, 0)
        reward_buffer[step] = torch.where(alive, to_tensor(rewards, torch.float32), 0.0)
        mask_buffer[step] = alive.to(torch.float32)
        terminated_buffer[step] = terminated & alive
        for key, value in info.items():
            if key.startswith("final_obs"):
                continue
            buffer = info_buffers.setdefault(key, torch.zeros((horizon, num_envs), dtype=torch.float32, device=device))
            buffer[step] = torch.where(alive, to_tensor(value, torch.float32), 0.0)

        # the observation after the step (before a same-step autoreset replaced it) ends the episodes that ended
        final_observations = next_observations
        if "final_obs" in info:
            ended = to_tensor(info["final_obs_mask"], torch.bool)
            final_obs = to_tensor(info["final_obs"], torch.float32)
            final_observations = torch.where(_expand(ended, final_obs), final_obs, next_observations)
        last_observations = torch.where(_expand(alive, final_observations), final_observations, last_observations)
        alive = alive & ~(terminated | truncated)
        observations = next_observations
        if not bool(alive.any()):
            break

    def task_major(buffer: torch.Tensor) -> torch.Tensor:
        # [H, T*E, ...] -> [T, E, H, ...]
        return buffer.movedim(0, 1).reshape(num_tasks, episodes_per_task, horizon, *buffer.shape[2:])

    task_params = {name: to_tensor(array) for name, array in family.task_arrays(list(tasks)).items()}
    return EpisodeBatch(
        observations=task_major(obs_buffer),
        actions=task_major(action_buffer),
        rewards=task_major(reward_buffer),
        masks=task_major(mask_buffer),
        terminated=task_major(terminated_buffer),
        last_observations=last_observations.reshape(num_tasks, episodes_per_task, *obs_shape),
        infos={key: task_major(buffer) for key, buffer in info_buffers.items()},
        tasks=tuple(tasks),
        task_params=task_params,
    )


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a ``[N]`` mask over the trailing dims of ``like``."""
    return mask.reshape(mask.shape[0], *([1] * (like.dim() - 1)))


def numeric_step_infos(info: dict[str, Any], num_envs: int) -> dict[str, Any]:
    """A Gymnasium vector info dict in the native envs' form: per-sub-env numeric entries, and same-step final
    observations as one dense array (``final_obs``) with the mask of the sub-envs they belong to."""
    kept: dict[str, Any] = {}
    for key, value in info.items():
        if key.startswith("_") or key == "final_info":
            continue
        if key == "final_obs":
            ended = np.asarray(info["_final_obs"], dtype=bool)
            example = next(obs for obs, end in zip(value, ended, strict=True) if end)
            dense = np.zeros((num_envs, *np.shape(example)), dtype=np.float32)
            for i in np.flatnonzero(ended):
                dense[i] = value[i]
            kept["final_obs"], kept["final_obs_mask"] = dense, ended
        elif isinstance(value, np.ndarray) and value.shape == (num_envs,) and value.dtype.kind in "biuf":
            kept[key] = value
    # same-step autoreset moves the step info of the sub-envs that ended into final_info
    final_info = info.get("final_info", {})
    for key, value in final_info.items():
        if key.startswith("_") or not isinstance(value, np.ndarray) or value.shape != (num_envs,):
            continue
        if value.dtype.kind in "biuf":
            ended = np.asarray(final_info[f"_{key}"], dtype=bool)
            kept[key] = np.where(ended, value, kept[key]) if key in kept else np.where(ended, value, 0)
    return kept


class RandomPolicy:
    """Acts uniformly at random in a Box or Discrete action space, from its own seeded generator.

    Usable wherever :class:`RolloutPolicy` is: called with observations ``[T, E, ...]`` it returns
    actions ``[T, E, *action_shape]`` on the observations' device.
    """

    def __init__(self, action_space: gym.Space, seed: int = 0, device: str | torch.device = "cpu") -> None:
        if not isinstance(action_space, gym.spaces.Box | gym.spaces.Discrete):
            raise TypeError(f"RandomPolicy supports Box and Discrete action spaces, got {action_space!r}")
        self.action_space = action_space
        self.generator = torch.Generator(device=device).manual_seed(seed)
        if isinstance(action_space, gym.spaces.Box):
            self._low = torch.as_tensor(action_space.low, dtype=torch.float32, device=device)
            self._high = torch.as_tensor(action_space.high, dtype=torch.float32, device=device)

    def __call__(self, observations: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        batch_shape = observations.shape[:2]  # [T, E]
        device = self.generator.device
        if isinstance(self.action_space, gym.spaces.Discrete):
            start, n = int(self.action_space.start), int(self.action_space.n)
            actions = torch.randint(start, start + n, batch_shape, generator=self.generator, device=device)
        else:
            uniform = torch.rand((*batch_shape, *self.action_space.shape), generator=self.generator, device=device)
            actions = self._low + (self._high - self._low) * uniform
        return actions.to(observations.device)
