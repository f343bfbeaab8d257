"""Env steps per second of the light families: native batched envs against Gymnasium's ``SyncVectorEnv``.

For every family and number of sub-envs this times three implementations side by side, all in ``NEXT_STEP``
autoreset mode, each sub-env playing its own task from ``family.sample_tasks``:

* ``native_numpy``: the family's native batched env through the Gymnasium NumPy API, ``envs.step(np_actions)``;
* ``native_tensor``: the same env class through the tensor API, ``envs.step_tensor(tensor_actions)``;
* ``sync``: ``gymnasium.vector.SyncVectorEnv([family.make_env] * num_envs)``, one Python env per sub-env.

Throughput counts sub-env steps, ``num_envs * steps / seconds``; episodes cross autoresets (a Bandit episode is one
step, so every other step of it is a reset step, in every implementation alike). Random valid actions are drawn
before the timed loop. The steps per repeat are calibrated per implementation so that a repeat takes about
``--target-seconds``; the implementations' repeats are interleaved, the median over repeats is reported with every
repeat's value, and the ratios native / sync come from those medians.

Usage (from the repository root)::

    python scripts/benchmark.py                     # all light families at 1, 64 and 1024 sub-envs
    python scripts/benchmark.py --quick --out /tmp/bench.json    # a smoke test of a few seconds
    python scripts/benchmark.py --families MetaRL/Bandit-v0 --num-envs 4096 --device cuda

The results go to ``--out`` (default ``benchmarks/env_steps.json``) as JSON (written atomically) and a table to
stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from metarl.registry import family_spec
from metarl.tasks import TaskFamily, set_vector_tasks
from metarl.vector import TorchVectorEnv

from .common import (
    DEFAULT_REPEATS,
    Budget,
    Runner,
    budget_for,
    format_rate,
    interleaved_rates,
    no_op,
    numpy_inputs,
    run_header,
    write_json_atomic,
)

IMPLEMENTATIONS = ("native_numpy", "native_tensor", "sync")
"""What is timed, in this order; ``native_*`` are compared with ``sync``."""
DEFAULT_NUM_ENVS = (1, 64, 1024)
QUICK_NUM_ENVS = (1, 64)
DEFAULT_OUT = Path("benchmarks/env_steps.json")


@dataclasses.dataclass(frozen=True)
class Config:
    """Validated settings of one benchmark run."""

    families: tuple[str, ...]
    """Registered family ids to benchmark."""
    num_envs: tuple[int, ...]
    """Numbers of sub-envs to benchmark each family at."""
    repeats: int
    """Timed repeats per (family, num_envs, implementation)."""
    device: torch.device
    """Device of the native envs (``SyncVectorEnv`` always runs on the host)."""
    threads: int
    """``torch.set_num_threads`` during the run."""
    seed: int
    """Seeds the tasks, the envs' resets and the actions."""
    budget: Budget
    """Steps per repeat."""
    out: Path
    """Where the JSON results are written."""


def build_config(args: argparse.Namespace) -> Config:
    """Validate the parsed arguments; a bad value raises ``ValueError`` naming it and what is allowed."""
    families = tuple(dict.fromkeys(family_spec(family_id).id for family_id in args.families))
    for family_id in families:
        if family_spec(family_id).family_class.vector_env_class is None:
            raise ValueError(f"--families: {family_id} has no native batched env to benchmark")
    num_envs = args.num_envs or list(QUICK_NUM_ENVS if args.quick else DEFAULT_NUM_ENVS)
    for n in num_envs:
        if n < 1:
            raise ValueError(f"--num-envs must be positive integers, got {n}")
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else DEFAULT_REPEATS
    if repeats < 1:
        raise ValueError(f"--repeats must be a positive integer, got {repeats}")
    if args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    if not (math.isfinite(args.target_seconds) and args.target_seconds > 0):
        raise ValueError(f"--target-seconds must be a positive number, got {args.target_seconds}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch.cuda.is_available() is False; use --device cpu or auto")
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    return Config(
        families=families,
        num_envs=tuple(dict.fromkeys(num_envs)),
        repeats=repeats,
        device=device,
        threads=args.threads,
        seed=args.seed,
        budget=budget_for(args),
        out=args.out or DEFAULT_OUT,
    )


# -- the implementations under test ----------------------------------------------------------------------------
def make_runners(family: TaskFamily, num_envs: int, device: torch.device, seed: int) -> list[Runner]:
    """Build the three implementations for ``num_envs`` sub-envs, each reset with ``seed`` on the same tasks."""
    tasks = family.sample_tasks(np.random.default_rng(seed), num_envs)

    def synchronize_device() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def tensor_inputs(actions: np.ndarray) -> list[torch.Tensor]:
        return list(torch.as_tensor(actions).to(device).unbind(0))

    runners = []
    for name in IMPLEMENTATIONS:
        if name == "sync":
            envs = gym.vector.SyncVectorEnv([family.make_env] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)
            set_vector_tasks(envs, tasks)
        else:
            envs = family.make_vec_env(num_envs, tasks, device=str(device), autoreset_mode=AutoresetMode.NEXT_STEP)
            if not isinstance(envs, TorchVectorEnv):
                raise TypeError(f"{type(family).__name__}.make_vec_env did not return a native batched env: {envs!r}")
        assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP, envs.metadata
        envs.reset(seed=seed)
        if name == "native_tensor":
            runners.append(Runner(name, envs, envs.step_tensor, tensor_inputs, synchronize_device))
        else:
            synchronize = no_op if name == "sync" else synchronize_device
            runners.append(Runner(name, envs, envs.step, numpy_inputs, synchronize))
    return runners


def benchmark_case(family_id: str, num_envs: int, config: Config) -> list[dict[str, Any]]:
    """Time every implementation of ``family_id`` at ``num_envs`` sub-envs, repeats interleaved.

    Returns:
        One record per implementation: the median and every repeat's steps per second, and the steps per repeat.
    """
    family = family_spec(family_id).make_family()
    rng = np.random.default_rng(config.seed)
    runners = make_runners(family, num_envs, config.device, config.seed)
    steps, rates = interleaved_rates(runners, config.budget, config.repeats, rng)
    return [
        {
            "family": family_id,
            "num_envs": num_envs,
            "implementation": runner.name,
            "device": "cpu" if runner.name == "sync" else str(config.device),
            "steps_per_repeat": steps[i],
            "median_steps_per_second": statistics.median(rates[i]),
            "repeat_steps_per_second": rates[i],
        }
        for i, runner in enumerate(runners)
    ]


def ratios(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Native / sync ratios of the median steps per second of one (family, num_envs)."""
    median = {record["implementation"]: record["median_steps_per_second"] for record in records}
    return {
        "family": records[0]["family"],
        "num_envs": records[0]["num_envs"],
        "native_numpy_over_sync": median["native_numpy"] / median["sync"],
        "native_tensor_over_sync": median["native_tensor"] / median["sync"],
    }


# -- the table ------------------------------------------------------------------------------------------------------
TABLE_HEADER = (
    f"{'family':<28} {'envs':>5} {'native_numpy':>12} {'native_tensor':>13} {'sync':>9} "
    f"{'numpy/sync':>10} {'tensor/sync':>11}"
)


def table_row(records: Sequence[dict[str, Any]], ratio: dict[str, Any]) -> str:
    """One line of the stdout table: median steps/s of each implementation and the two ratios."""
    median = {record["implementation"]: format_rate(record["median_steps_per_second"]) for record in records}
    return (
        f"{ratio['family']:<28} {ratio['num_envs']:>5} {median['native_numpy']:>12} {median['native_tensor']:>13} "
        f"{median['sync']:>9} {ratio['native_numpy_over_sync']:>9.1f}x {ratio['native_tensor_over_sync']:>10.1f}x"
    )


# -- the run --------------------------------------------------------------------------------------------------------
def run(config: Config, argv: Sequence[str]) -> dict[str, Any]:
    """Time every family at every number of sub-envs, print a table, write the JSON to ``config.out`` and return it.

    Returns:
        The results as written: ``machine``, ``command``, ``timestamp``, ``settings``, ``results`` (one record per
        family, num_envs and implementation), ``ratios`` (one per family and num_envs) and ``wall_seconds``.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        data: dict[str, Any] = {
            **run_header(config.device, argv),
            "settings": {
                "families": list(config.families),
                "num_envs": list(config.num_envs),
                "repeats": config.repeats,
                "seed": config.seed,
                "autoreset_mode": AutoresetMode.NEXT_STEP.value,
                "budget": dataclasses.asdict(config.budget),
            },
            "results": [],
            "ratios": [],
        }
        start = time.perf_counter()
        print(f"device={config.device} torch_threads={config.threads} repeats={config.repeats} (median steps/s)")
        print(TABLE_HEADER)
        for family_id in config.families:
            for num_envs in config.num_envs:
                records = benchmark_case(family_id, num_envs, config)
                data["results"].extend(records)
                data["ratios"].append(ratios(records))
                print(table_row(records, data["ratios"][-1]), flush=True)
        data["wall_seconds"] = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    write_json_atomic(config.out, data)
    print(f"wrote {config.out} ({data['wall_seconds']:.1f} s)")
    return data
