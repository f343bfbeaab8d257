"""A run's memory budget, checked before the run starts.

Without it, ``metarl train episodes_per_task=10000000`` passed validation, made its run folder and died with a
``MemoryError`` half a minute later (or, without a memory cap, took the machine's memory). :func:`check_memory_budget`
refuses such a run before anything is written: the agent class estimates the memory of the run's largest step from
the config and the family (``memory_estimate``, an optional classmethod of an agent class, returning a
:class:`MemoryEstimate`), and the estimate, with :data:`RUN_OVERHEAD_BYTES` and the :data:`SAFETY_FACTOR`, is
compared with the memory available now (Linux: ``MemAvailable`` of ``/proc/meminfo``, or the headroom under a cgroup
v2 / v1 memory limit where that is lower). Where the available memory is unknown (not Linux) or the agent class has
no ``memory_estimate``, nothing is checked.

The estimates model what grows with the config: the episode buffers ``[T, E, H, ...]`` of every sampling that an
iteration keeps, and what the update builds on them (activations of the policy's layers, autograd graphs). Their
per-step constants are calibrated against the measured peak resident memory of real runs; docs/adding-an-algorithm.md
gives the measurements.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np

from metarl.config import RunConfig
from metarl.tasks import TaskFamily
from metarl.vector import TorchVectorEnv

SAFETY_FACTOR = 1.25
"""The estimate is multiplied by this before it is compared with the available memory: the models are within about
±30% of the measured growth. A run is refused only when it clearly cannot fit; one near the limit is left to try.
(glibc keeps freed chunks under its adaptive mmap threshold, at most 32 MiB, on its heap: runs whose tensors are
that small can peak up to ~1.8x their live memory, but they are far below any limit; the tensors of a run near one
are larger, and freed at once.)"""
RUN_OVERHEAD_BYTES = 512 * 2**20
"""What a run adds whatever its config, beyond the process at the time of the check (which already holds torch and
the task split): the agent's model and optimiser, the logger, torch's first allocations (about 0.2 GiB measured on
Navigation2D, rounded up generously)."""
FLOAT_BYTES = 4
"""Buffers are float32 (int64 for discrete actions: two floats' worth)."""
SUB_ENV_BYTES = 4 * 1024
"""What one sub-env of a vector env keeps (its state, task parameters, random stream): 3.6 and 5.0 KiB measured for
the MuJoCo batched envs of HalfCheetah and Ant with 2000 sub-envs."""
TORCH_SUB_ENV_BYTES = 2 * 1024
"""The same for a native torch batched env (:class:`metarl.vector.TorchVectorEnv`): 2.0 KiB measured on
Navigation2D."""
_UNLIMITED = 2**60
"""A cgroup v1 limit at or above this is "no limit" (the kernel writes 2**63 rounded down to a page)."""


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """How much memory a run's largest step needs, and what drives it.

    ``description`` and ``fields`` make the refusal's message: ``this run needs about 478.1 GiB at its largest step
    (training's episode buffers of meta_batch_size 20 × episodes_per_task 10000000 × horizon 100 × 2 samplings
    (about 2.6 KiB a step); ...), but 21.7 GiB are available; lower episodes_per_task, meta_batch_size or
    num_inner_steps``.
    """

    bytes: int
    """Peak bytes beyond what the process holds before the run starts."""
    fields: tuple[str, ...]
    """The config fields that drive it, the biggest lever first: what a refusal says to lower."""
    description: str
    """What the bytes are, with the numbers that multiply into them."""

    def __post_init__(self) -> None:
        if isinstance(self.bytes, bool) or not isinstance(self.bytes, int) or self.bytes < 0:
            raise ValueError(f"MemoryEstimate.bytes must be an int >= 0, got {self.bytes!r}")
        if not self.fields or not all(isinstance(field, str) for field in self.fields):
            raise ValueError(f"MemoryEstimate.fields must name at least one config field, got {self.fields!r}")


def largest(*estimates: MemoryEstimate) -> MemoryEstimate:
    """The estimate of the phase that needs the most (the phases of a run do not overlap: training's buffers are
    freed before validation collects its own), naming the other phases' fields after its own: a run refused for its
    largest phase may be refused next for another, and the message lists every lever at once."""
    winner = max(estimates, key=lambda estimate: estimate.bytes)
    fields = dict.fromkeys(winner.fields)
    for estimate in estimates:
        fields.update(dict.fromkeys(estimate.fields))
    return dataclasses.replace(winner, fields=tuple(fields))


def largest_task_set(config: RunConfig, fields: Sequence[str]) -> tuple[str, int]:
    """The config field among ``fields`` that counts the most tasks played at once, and that count (ties: the first
    field): the task set whose buffers are the largest."""
    counts = {field: getattr(config, field) for field in fields}
    field = max(counts, key=counts.__getitem__)
    return field, counts[field]


def buffer_estimate(
    what: str, factors: Sequence[tuple[str, int]], step_bytes: float, fields: Sequence[str], note: str = ""
) -> MemoryEstimate:
    """``what``: the product of ``factors`` steps of ``step_bytes`` bytes each.

    Args:
        what: the buffers' name, e.g. ``"episode buffers"``.
        factors: ``(label, count)`` pairs whose counts multiply into the number of steps held; a label is a format
            string for the count (``"meta_batch_size {}"``, ``"{} samplings"``).
        step_bytes: bytes per step held.
        fields: the config fields to lower, biggest lever first.
        note: said after the product (``"4 samplings"``).

    Returns:
        The estimate, described as ``"<what> of meta_batch_size 20 × ... (<note>, <step bytes> a step)"``.
    """
    steps = math.prod(count for _, count in factors)
    product = " × ".join(label.format(count) for label, count in factors)
    return MemoryEstimate(
        bytes=math.ceil(steps * step_bytes),
        fields=tuple(fields),
        description=f"{what} of {product} ({note + ', ' if note else ''}about {format_bytes(step_bytes)} a step)",
    )


def trials_estimate(
    what: str, config: RunConfig, episodes: int, horizon: int, step_bytes: float, fields: Sequence[str], note: str = ""
) -> MemoryEstimate:
    """``what``: a training iteration's trials, ``meta_batch_size`` trials of ``episodes`` episodes of ``horizon``
    steps, ``step_bytes`` bytes each (:func:`buffer_estimate`)."""
    factors = [("meta_batch_size {}", config.meta_batch_size), ("trial_episodes {}", episodes), ("horizon {}", horizon)]
    return buffer_estimate(what, factors, step_bytes, fields, note)


def evaluation_trials_estimate(
    config: RunConfig, episodes: int, horizon: int, step_bytes: float, what: str = "an evaluation's trials"
) -> MemoryEstimate:
    """An evaluation's trials: one trial of ``episodes`` episodes per task of the larger of the validation and test
    sets, ``step_bytes`` bytes a step."""
    field, tasks = largest_task_set(config, ("test_tasks", "eval_tasks"))
    factors = [(f"{field} {{}}", tasks), ("trial_episodes {}", episodes), ("horizon {}", horizon)]
    return buffer_estimate(what, factors, step_bytes, (field, "trial_episodes"))


def with_sub_envs(estimate: MemoryEstimate, sizes: Sequence[int], family: TaskFamily) -> MemoryEstimate:
    """``estimate`` plus the vector envs an agent builds and keeps, one per distinct size in ``sizes`` (the agents
    cache an env per size: training's, validation's, the test's), :func:`sub_env_bytes` per sub-env."""
    count = sum(set(sizes))
    each = sub_env_bytes(family)
    return dataclasses.replace(
        estimate,
        bytes=estimate.bytes + count * each,
        description=f"{estimate.description}; and {count:,} vector sub-envs of about {format_bytes(each)}",
    )


def sub_env_bytes(family: TaskFamily) -> int:
    """Memory one sub-env of ``family``'s vector env keeps: :data:`TORCH_SUB_ENV_BYTES` in a native torch env,
    otherwise :data:`SUB_ENV_BYTES` plus, in a MuJoCo family whose tasks change the dynamics (``varies_dynamics``),
    the sub-env's own copy of the model (about 0.5 MiB)."""
    vector_env_class = family.vector_env_class
    if vector_env_class is not None and issubclass(vector_env_class, TorchVectorEnv):
        return TORCH_SUB_ENV_BYTES
    # metarl.mujoco_envs is loaded whenever such a family exists; looking it up leaves mujoco unimported otherwise
    mujoco_envs = sys.modules.get("metarl.mujoco_envs")
    if mujoco_envs is not None and isinstance(family, mujoco_envs.MuJoCoFamily) and family.varies_dynamics:
        return SUB_ENV_BYTES + int(family.model.nbuffer)
    return SUB_ENV_BYTES


def episode_step_bytes(family: TaskFamily) -> int:
    """Bytes one step of an :class:`metarl.rollout.EpisodeBatch` holds: observation, action, reward, mask and
    termination flag."""
    return FLOAT_BYTES * (observation_floats(family) + action_floats(family.action_space) + 2) + 1


def trial_step_bytes(family: TaskFamily) -> int:
    """Bytes one step of a :class:`metarl.trials.TrialBatch` holds: observation, previous and taken action, previous
    and taken reward, episode-end flag, mask, episode index (int64) and two per-step extras (log-prob, value)."""
    return FLOAT_BYTES * (observation_floats(family) + 2 * action_floats(family.action_space) + 8)


def observation_floats(family: TaskFamily) -> int:
    """Numbers one observation of ``family`` takes in a buffer (float32 each)."""
    return max(1, int(np.prod(family.observation_space.shape)))


def action_floats(space: gym.Space) -> int:
    """Float32 slots one action takes in a buffer: a Box's size, 2 for a Discrete action (int64)."""
    if isinstance(space, gym.spaces.Discrete):
        return 2
    return max(1, int(np.prod(space.shape)))


# -- the check -----------------------------------------------------------------------------------------------------
def estimate_memory(config: RunConfig, family: TaskFamily, agent_class: type) -> MemoryEstimate | None:
    """``agent_class.memory_estimate(config, family)``, or ``None`` for a class without one (no check)."""
    estimator = getattr(agent_class, "memory_estimate", None)
    if estimator is None:
        return None
    estimate = estimator(config, family)
    if not isinstance(estimate, MemoryEstimate):
        raise TypeError(
            f"{agent_class.__name__}.memory_estimate must return a metarl.budget.MemoryEstimate, got {estimate!r}"
        )
    return estimate


def check_memory_budget(
    config: RunConfig, family: TaskFamily, agent_class: type, available: int | None = None
) -> MemoryEstimate | None:
    """Refuse a run whose largest step cannot fit in the memory available, before any work or file.

    Args:
        config: the run's config.
        family: the family it trains on.
        agent_class: the class of ``config.algo``; one without ``memory_estimate`` is not checked.
        available: bytes available; default :func:`available_memory` (``None`` there: not checked).

    Returns:
        The agent's estimate (``None`` when it has none).

    Raises:
        ValueError: the estimate, with :data:`RUN_OVERHEAD_BYTES` and :data:`SAFETY_FACTOR` (and every process this
            machine runs under ``torchrun``), exceeds the available memory; the message names the estimate, the
            memory available and the fields to lower.
    """
    estimate = estimate_memory(config, family, agent_class)
    if estimate is None:
        return None
    if available is None:
        available = available_memory()
    if available is None:
        return estimate  # not Linux, or nothing readable: no check rather than a guess
    local, world = _processes()
    # under torchrun each process holds its block of the tasks (about 1/world of the buffers), and this machine runs
    # `local` of them, each with its own overhead
    needed = SAFETY_FACTOR * (estimate.bytes * local / world + RUN_OVERHEAD_BYTES * local)
    if needed > available:
        processes = f" for the {local} of {world} torchrun processes on this machine" if world > 1 else ""
        fields = list(estimate.fields)
        lower = fields[0] if len(fields) == 1 else f"{', '.join(fields[:-1])} or {fields[-1]}"
        raise ValueError(
            f"this run needs about {format_bytes(needed)}{processes} at its largest step ({estimate.description}; "
            f"with a {format_bytes(RUN_OVERHEAD_BYTES)} run overhead and a {SAFETY_FACTOR}× safety factor), but "
            f"{format_bytes(available)} are available; lower {lower}"
        )
    return estimate


def _processes() -> tuple[int, int]:
    """``(processes on this machine, processes in the job)``: torchrun's ``LOCAL_WORLD_SIZE`` and ``WORLD_SIZE``."""
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    local = max(1, min(world, int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))))
    return local, world


def format_bytes(count: float) -> str:
    """``412.3 GiB``, ``512.0 MiB``, ``2.6 KiB``, ``52 B``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"


# -- available memory ----------------------------------------------------------------------------------------------
def available_memory(proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process can still allocate: the lower of the kernel's ``MemAvailable`` and the headroom under
    every cgroup memory limit above this process; ``None`` where neither is known (not Linux, nothing readable)."""
    if not sys.platform.startswith("linux"):
        return None
    candidates = [parse_meminfo(_read(proc_root / "meminfo"))]
    candidates += cgroup_headrooms(_read(proc_root / "self" / "cgroup"), cgroup_root)
    known = [value for value in candidates if value is not None]
    return min(known) if known else None


def parse_meminfo(text: str | None) -> int | None:
    """``MemAvailable`` of a ``/proc/meminfo`` text, in bytes (``None`` if absent)."""
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "MemAvailable":
            number, _, unit = value.strip().partition(" ")
            return int(number) * (1024 if unit.strip().lower() == "kb" else 1)
    return None


def cgroup_headroom(limit: str | None, usage: str | None, stat: str | None = None) -> int | None:
    """Bytes left under one cgroup's memory limit (v2: ``memory.max``, ``memory.current``, ``memory.stat``; v1:
    ``memory.limit_in_bytes``, ``memory.usage_in_bytes``, ``memory.stat``); ``None`` without a limit.

    The usage counts the page cache, which the kernel reclaims before it runs out; the inactive part of it is taken
    off, as ``docker stats`` and Kubernetes' working set do.
    """
    if limit is None or usage is None or limit.strip() in ("", "max"):
        return None
    limit_bytes = int(limit.strip())
    if limit_bytes >= _UNLIMITED:
        return None
    stats = {}
    for line in (stat or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stats[key] = int(value)
    # v1's hierarchical total first, then the cgroup's own (v2 has only inactive_file, hierarchical already)
    reclaimable = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    working_set = max(0, int(usage.strip()) - reclaimable)
    return max(0, limit_bytes - working_set)


def cgroup_headrooms(self_cgroup: str | None, cgroup_root: Path) -> list[int]:
    """The headroom under each memory limit from this process's cgroup up to the root, from ``/proc/self/cgroup``
    (``0::/path`` for v2; ``N:memory,...:/path`` for v1, mounted at ``<cgroup_root>/memory``)."""
    headrooms = []
    for line in (self_cgroup or "").splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            files = ("memory.max", "memory.current", "memory.stat")
            # a hybrid setup mounts the v2 hierarchy at <root>/unified, beside the v1 controllers
            base = cgroup_root if (cgroup_root / "cgroup.controllers").is_file() else cgroup_root / "unified"
        elif "memory" in controllers.split(","):
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat")
            base = cgroup_root / "memory"
        else:
            continue
        for folder in _cgroup_folders(base, path):
            headroom = cgroup_headroom(*(_read(folder / name) for name in files))
            if headroom is not None:
                headrooms.append(headroom)
    return headrooms


def _cgroup_folders(base: Path, path: str) -> list[Path]:
    """The existing folders of cgroup ``path`` and its ancestors under ``base`` (inside a container the path the
    kernel names may not exist in its view: then the mount's root, which is the container's own cgroup)."""
    parts = [part for part in path.strip().split("/") if part]
    folders = [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [folder for folder in folders if folder.is_dir()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
