"""Env steps per second of the MuJoCo batched env against Gymnasium's vector envs and a bare ``mj_step`` loop.

For each family and number of sub-envs this times, side by side on the same tasks, in ``NEXT_STEP`` autoreset mode:

* ``batched_1_thread`` and ``batched_{N}_threads``: the family's batched env on one thread and on all N CPUs;
* ``sync`` and ``async``: Gymnasium's ``SyncVectorEnv`` and ``AsyncVectorEnv`` over the single env (``async`` up to
  :data:`ASYNC_MAX_ENVS` sub-envs);
* ``bare_mj_step`` (at one sub-env only): :class:`BareMjStep`, the physical limit on one core.

The implementations' repeats are interleaved and the median reported. ``physics_per_thread_over_bare`` compares the
batched env's physics steps per second per thread it used with the bare loop's on one core (1.0 means no overhead
at all).

Usage (from the repository root)::

    python scripts/benchmark.py --mujoco                # HalfCheetahVel and AntVel at 1, 64 and 1024 sub-envs
    python scripts/benchmark.py --mujoco --quick --families MetaRL/HalfCheetahVel-v0    # 1 and 4 sub-envs

The results go to ``--out`` (default ``benchmarks/mujoco_env_steps.json``) as JSON.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from metarl.registry import family_spec
from metarl.tasks import set_vector_tasks

from .common import (
    LIGHT_FAMILIES,
    Runner,
    budget_for,
    format_rate,
    median_rates,
    no_op,
    numpy_inputs,
    requested_repeats,
    run_header,
    save_results,
)

MUJOCO_FAMILIES = ("MetaRL/HalfCheetahVel-v0", "MetaRL/AntVel-v0")
"""The families timed unless ``--families`` names others."""
MUJOCO_NUM_ENVS = (1, 64, 1024)
ASYNC_MAX_ENVS = 64
"""``AsyncVectorEnv`` runs one process per sub-env: beyond this many they would not fit a small machine."""
DEFAULT_MUJOCO_OUT = Path("benchmarks/mujoco_env_steps.json")


class BareMjStep:
    """The physical limit on one core: a plain loop of ``mujoco.mj_step`` on one ``MjData`` of the family's model,
    the action held for the frame skip, the state reset to the initial one every horizon; no env around it. Shaped
    like a one-sub-env vector env so that the benchmark's timing code runs it like the others."""

    def __init__(self, family: Any) -> None:
        import mujoco

        self._mujoco = mujoco
        self.family = family
        self.num_envs = 1
        self.single_action_space = family.action_space
        self.model = family.model
        self.data = mujoco.MjData(self.model)
        self._elapsed = 0

    def step(self, actions: np.ndarray) -> None:
        if self._elapsed == self.family.horizon:
            self._mujoco.mj_resetData(self.model, self.data)
            self._elapsed = 0
        self.data.ctrl[:] = actions[0]
        self._mujoco.mj_step(self.model, self.data, nstep=self.family.frame_skip)
        self._elapsed += 1

    def close(self) -> None:
        """Nothing to release."""


def mujoco_runners(family: Any, num_envs: int, seed: int, threads: int) -> list[Runner]:
    """The batched env (one thread and ``threads`` threads), Gymnasium's Sync and Async vector envs over the
    single env, and the bare ``mj_step`` loop; all on the same tasks, reset with ``seed``."""
    tasks = family.sample_tasks(np.random.default_rng(seed), num_envs)
    runners = []
    for name, envs in (
        ("batched_1_thread", family.make_vec_env(num_envs, tasks, num_threads=1)),
        (f"batched_{threads}_threads", family.make_vec_env(num_envs, tasks, num_threads=min(threads, num_envs))),
        ("sync", gym.vector.SyncVectorEnv([family.make_env] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)),
        *(
            [("async", gym.vector.AsyncVectorEnv([family.make_env] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP))]
            if num_envs <= ASYNC_MAX_ENVS
            else []
        ),
    ):
        if not isinstance(envs, gym.vector.VectorEnv) or envs.metadata["autoreset_mode"] != AutoresetMode.NEXT_STEP:
            raise TypeError(f"{name}: expected a vector env in NEXT_STEP autoreset mode, got {envs!r}")
        set_vector_tasks(envs, tasks)
        envs.reset(seed=seed)
        runners.append(Runner(name, envs, envs.step, numpy_inputs, no_op))
    if num_envs == 1:
        bare = BareMjStep(family)
        runners.append(Runner("bare_mj_step", bare, bare.step, numpy_inputs, no_op))  # type: ignore[arg-type]
    return runners


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Time every family at every number of sub-envs, print the medians and ratios, write the JSON to ``--out`` and
    return it."""
    torch.set_num_threads(args.threads)
    repeats = requested_repeats(args)
    families = args.families if args.families != list(LIGHT_FAMILIES) else list(MUJOCO_FAMILIES)
    num_envs_list = args.num_envs or ([1, 4] if args.quick else list(MUJOCO_NUM_ENVS))
    threads = len(os.sched_getaffinity(0))
    budget = budget_for(args)
    data: dict[str, Any] = {
        **run_header(torch.device("cpu"), argv),
        "settings": {"families": families, "num_envs": num_envs_list, "repeats": repeats, "threads": threads},
        "results": [],
        "ratios": [],
    }
    print(f"repeats={repeats} rollout threads={threads} (median env steps/s; bare: physics steps / frame skip)")
    for family_id in families:
        family = family_spec(family_id).make_family()
        bare_rate = None
        for num_envs in num_envs_list:
            rng = np.random.default_rng(args.seed)
            runners = mujoco_runners(family, num_envs, args.seed, threads)
            median, records = median_rates(runners, budget, repeats, rng, family=family_id)
            data["results"].extend(records)
            bare_rate = median.get("bare_mj_step", bare_rate)
            batched_name = f"batched_{threads}_threads"
            used = min(threads, num_envs)
            ratio: dict[str, Any] = {
                "family": family_id,
                "num_envs": num_envs,
                "batched_over_sync": median[batched_name] / median["sync"],
                "batched_1_thread_over_sync": median["batched_1_thread"] / median["sync"],
                "threads_used": used,
            }
            if "async" in median:
                ratio["batched_over_async"] = median[batched_name] / median["async"]
            if bare_rate is not None:
                ratio["physics_per_thread_over_bare"] = median[batched_name] / used / bare_rate
                ratio["physics_1_thread_over_bare"] = median["batched_1_thread"] / bare_rate
            data["ratios"].append(ratio)
            cells = "  ".join(f"{name} {format_rate(rate)}" for name, rate in median.items())
            print(
                f"{family_id:26s} {num_envs:5d}  {cells}  | batched/sync {ratio['batched_over_sync']:.1f}x"
                + (
                    f"  per-thread/bare {ratio['physics_per_thread_over_bare']:.2f}"
                    if "physics_per_thread_over_bare" in ratio
                    else ""
                ),
                flush=True,
            )
    out = args.out or DEFAULT_MUJOCO_OUT
    return save_results(data, out)
