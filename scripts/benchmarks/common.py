"""What the benchmarks share: the step budget, timing vector envs side by side, machine info and JSON results.

The env-step benchmarks (:mod:`benchmarks.env_steps`, :mod:`benchmarks.mujoco`, :mod:`benchmarks.metaworld`) wrap
each implementation under test in a :class:`Runner` and time them with :func:`interleaved_rates`: every runner is
calibrated to a :class:`Budget`, then the runners' repeats take turns. Every benchmark starts its results with
:func:`run_header` and writes them with :func:`save_results` (atomically, :func:`write_json_atomic`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shlex
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import metarl.envs as _envs  # noqa: F401 - registers the suite's families, which every benchmark looks up
import numpy as np
import torch

LIGHT_FAMILIES = ("MetaRL/Bandit-v0", "MetaRL/TabularMDP-v0", "MetaRL/Navigation2D-v0", "MetaRL/SparsePointRobot-v0")
"""The families with a cheap native batched env; the default of ``--families``."""
DEFAULT_REPEATS = 5


@dataclasses.dataclass(frozen=True)
class Budget:
    """How many steps one timed repeat runs: enough for about ``target_seconds``, within ``[min, max]_steps``."""

    target_seconds: float
    """Wanted duration of one repeat; the steps per repeat are calibrated to it per implementation."""
    calibration_seconds: float
    """The calibration doubles its number of steps until a run lasts this long (it also warms up)."""
    min_steps: int
    """Fewest steps per repeat."""
    max_steps: int
    """Most steps per repeat (bounds the memory of the pre-generated actions)."""


DEFAULT_BUDGET = Budget(target_seconds=0.4, calibration_seconds=0.05, min_steps=5, max_steps=100_000)
QUICK_BUDGET = Budget(target_seconds=0.005, calibration_seconds=0.0, min_steps=2, max_steps=20)


def budget_for(args: argparse.Namespace) -> Budget:
    """The quick budget with ``--quick``, else the default one with ``--target-seconds``."""
    return QUICK_BUDGET if args.quick else dataclasses.replace(DEFAULT_BUDGET, target_seconds=args.target_seconds)


def requested_repeats(args: argparse.Namespace) -> int:
    """``--repeats``, by default one with ``--quick`` and :data:`DEFAULT_REPEATS` otherwise; exits if not positive."""
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else DEFAULT_REPEATS
    if repeats < 1:
        raise SystemExit(f"--repeats must be a positive integer, got {repeats}")
    return repeats


# -- timing vector envs ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Runner:
    """One implementation under test: a vector env, its step function and how it takes the actions."""

    name: str
    """The implementation's name in the results."""
    envs: gym.vector.VectorEnv
    """The vector env being stepped."""
    step: Callable[[Any], Any]
    """Steps every sub-env once with one batch of actions."""
    to_inputs: Callable[[np.ndarray], list[Any]]
    """Turns actions ``[steps, num_envs, ...]`` into the per-step arguments of ``step`` (outside the timing)."""
    synchronize: Callable[[], None]
    """Waits for queued device work, so that it is inside the timing."""


def numpy_inputs(actions: np.ndarray) -> list[np.ndarray]:
    """The per-step NumPy actions of a runner that takes them as they are."""
    return list(actions)


def no_op() -> None:
    """Host-side envs have no queued device work to wait for."""


def random_actions(space: gym.Space, num_envs: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random valid actions for ``steps`` steps of ``num_envs`` sub-envs, ``[steps, num_envs, ...]``.

    Args:
        space: the single (per sub-env) action space, ``Discrete`` or a bounded ``Box``.
        num_envs: number of sub-envs.
        steps: number of steps.
        rng: the generator the actions are drawn from.

    Returns:
        int64 actions for ``Discrete``, actions of the space's dtype for ``Box``.
    """
    if isinstance(space, gym.spaces.Discrete):
        start = int(space.start)
        return rng.integers(start, start + int(space.n), size=(steps, num_envs), dtype=np.int64)
    if isinstance(space, gym.spaces.Box) and space.is_bounded("both"):
        low = np.broadcast_to(space.low, space.shape)
        high = np.broadcast_to(space.high, space.shape)
        return rng.uniform(low, high, size=(steps, num_envs, *space.shape)).astype(space.dtype)
    raise TypeError(f"random_actions supports Discrete and bounded Box action spaces, got {space!r}")


def time_steps(runner: Runner, inputs: Sequence[Any]) -> float:
    """Seconds ``runner`` takes to step once per element of ``inputs``."""
    step = runner.step
    runner.synchronize()
    start = time.perf_counter()
    for actions in inputs:
        step(actions)
    runner.synchronize()
    return time.perf_counter() - start


def calibrate(runner: Runner, num_envs: int, budget: Budget, rng: np.random.Generator) -> int:
    """Warm ``runner`` up and return the steps per repeat that take about ``budget.target_seconds``."""
    space = runner.envs.single_action_space
    steps = 1
    while True:
        seconds = time_steps(runner, runner.to_inputs(random_actions(space, num_envs, steps, rng)))
        if seconds >= budget.calibration_seconds or steps >= budget.max_steps:
            break
        steps *= 2
    wanted = math.ceil(budget.target_seconds * steps / max(seconds, 1e-9))
    return min(max(wanted, budget.min_steps), budget.max_steps)


def interleaved_rates(
    runners: Sequence[Runner], budget: Budget, repeats: int, rng: np.random.Generator
) -> tuple[list[int], list[list[float]]]:
    """Calibrate each runner, then time them in turns, ``repeats`` times (so that a slow phase of the machine hits
    them all alike). Returns each runner's steps per repeat and its env steps per second in every repeat; closes
    the runners' envs."""
    try:
        steps = [calibrate(runner, runner.envs.num_envs, budget, rng) for runner in runners]
        inputs = [
            runner.to_inputs(random_actions(runner.envs.single_action_space, runner.envs.num_envs, n, rng))
            for runner, n in zip(runners, steps, strict=True)
        ]
        gc.collect()  # once per case: a full collection takes ~0.1 s with torch loaded
        rates: list[list[float]] = [[] for _ in runners]
        for _ in range(repeats):
            for i, runner in enumerate(runners):
                rates[i].append(runner.envs.num_envs * steps[i] / time_steps(runner, inputs[i]))
    finally:
        for runner in runners:
            runner.envs.close()
    return steps, rates


def median_rates(
    runners: Sequence[Runner], budget: Budget, repeats: int, rng: np.random.Generator, **fields: Any
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """:func:`interleaved_rates`, summarised: each runner's median env steps per second by name, and one result
    record per runner (``fields``, then its number of sub-envs, name, median and every repeat's rate)."""
    _, rates = interleaved_rates(runners, budget, repeats, rng)
    median = {runner.name: statistics.median(rates[i]) for i, runner in enumerate(runners)}
    records = [
        {
            **fields,
            "num_envs": runner.envs.num_envs,
            "implementation": runner.name,
            "median_steps_per_second": median[runner.name],
            "repeat_steps_per_second": rates[i],
        }
        for i, runner in enumerate(runners)
    ]
    return median, records


# -- reporting ------------------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    """Where the numbers were measured: platform, library versions, CPUs, torch threads and device."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gymnasium": gym.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
    return info


def format_rate(steps_per_second: float) -> str:
    """Steps per second in 4 significant digits with a k / M / G suffix."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if steps_per_second >= scale:
            return f"{steps_per_second / scale:.4g}{suffix}"
    return f"{steps_per_second:.4g}"


def run_header(device: torch.device, argv: Sequence[str]) -> dict[str, Any]:
    """What every results file starts with: the machine, the command that made it and when."""
    return {
        "machine": machine_info(device),
        "command": shlex.join(["python", "scripts/benchmark.py", *argv]),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def save_results(data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write a mode's results to ``out`` atomically, say where, and return them."""
    write_json_atomic(out, data)
    print(f"wrote {out}")
    return data


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        tmp = Path(f.name)
        try:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # the permissions open() would have given, not the temporary file's 0600
    os.replace(tmp, path)
