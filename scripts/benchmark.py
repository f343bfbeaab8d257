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

The results go to ``--out`` as JSON (written atomically) and a table to stdout.
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

import envs as _envs  # noqa: F401 - registers the suite's families
from metarl.registry import family_spec
from metarl.tasks import TaskFamily, set_vector_tasks
from metarl.vector import TorchVectorEnv

LIGHT_FAMILIES = ("MetaRL/Bandit-v0", "MetaRL/TabularMDP-v0", "MetaRL/Navigation2D-v0", "MetaRL/SparsePointRobot-v0")
"""The families with a cheap native batched env; the default set."""
IMPLEMENTATIONS = ("native_numpy", "native_tensor", "sync")
"""What is timed, in this order; ``native_*`` are compared with ``sync``."""
DEFAULT_NUM_ENVS = (1, 64, 1024)
QUICK_NUM_ENVS = (1, 64)
DEFAULT_REPEATS = 5
DEFAULT_RL2_OUT = Path("benchmarks/rl2.json")
DEFAULT_MAML_OUT = Path("benchmarks/maml_iteration.json")
DEFAULT_OUT = Path("benchmarks/env_steps.json")
DEFAULT_MUJOCO_OUT = Path("benchmarks/mujoco_env_steps.json")
DEFAULT_METAWORLD_OUT = Path("benchmarks/metaworld_env_steps.json")
DEFAULT_DISTRIBUTED_OUT = Path("benchmarks/distributed.json")
DISTRIBUTED_RUNS = {
    "navigation2d-maml-trpo": ("navigation2d-maml-trpo", []),
    "navigation2d-maml-trpo-fast": ("navigation2d-maml-trpo", ["curvature_fraction=0.25"]),
    "rl2-bandit-k5-n10": ("rl2-bandit-k5-n10", []),
}
"""The training runs ``--distributed`` times: name -> (preset, config overrides)."""
METAWORLD_ENV = "reach-v3"
METAWORLD_NUM_ENVS = (1, 10)


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


@dataclasses.dataclass
class Runner:
    """One implementation under test: a vector env, its step function and how it takes the actions."""

    name: str
    """One of ``IMPLEMENTATIONS``."""
    envs: gym.vector.VectorEnv
    """The vector env being stepped."""
    step: Callable[[Any], Any]
    """Steps every sub-env once with one batch of actions."""
    to_inputs: Callable[[np.ndarray], list[Any]]
    """Turns actions ``[steps, num_envs, ...]`` into the per-step arguments of ``step`` (outside the timing)."""
    synchronize: Callable[[], None]
    """Waits for queued device work, so that it is inside the timing."""


# -- actions -------------------------------------------------------------------------------------------------------
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


# -- the implementations under test ----------------------------------------------------------------------------
def make_runners(family: TaskFamily, num_envs: int, device: torch.device, seed: int) -> list[Runner]:
    """Build the three implementations for ``num_envs`` sub-envs, each reset with ``seed`` on the same tasks."""
    tasks = family.sample_tasks(np.random.default_rng(seed), num_envs)

    def synchronize_device() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def numpy_inputs(actions: np.ndarray) -> list[np.ndarray]:
        return list(actions)

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
            synchronize = _no_op if name == "sync" else synchronize_device
            runners.append(Runner(name, envs, envs.step, numpy_inputs, synchronize))
    return runners


def _no_op() -> None:
    """Host-side envs have no queued device work to wait for."""


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


# -- reporting -----------------------------------------------------------------------------------------------------
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


# -- command line --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        description="Env steps per second of the light families: native batched envs vs gymnasium SyncVectorEnv."
    )
    parser.add_argument(
        "--families", nargs="+", default=list(LIGHT_FAMILIES), metavar="ID", help="family ids (default: all light)"
    )
    parser.add_argument(
        "--num-envs", nargs="+", type=int, default=None, metavar="N", help="numbers of sub-envs (default: 1 64 1024)"
    )
    parser.add_argument("--repeats", type=int, default=None, help=f"timed repeats (default: {DEFAULT_REPEATS})")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="device of the native envs; auto is cuda if available (default: auto)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tasks, resets and actions (default: 0)")
    parser.add_argument(
        "--target-seconds",
        type=float,
        default=DEFAULT_BUDGET.target_seconds,
        help=f"wanted duration of one repeat (default: {DEFAULT_BUDGET.target_seconds})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny budget for a smoke test: 1 repeat, few steps, 1 and 64 sub-envs"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--maml",
        action="store_true",
        help="instead of env steps, time MAML-TRPO meta-iterations of the Navigation2D paper preset, split into "
        f"phases, batched vs a per-task loop (default --out {DEFAULT_MAML_OUT})",
    )
    parser.add_argument("--maml-iterations", type=int, default=3, help="timed meta-iterations per implementation")
    parser.add_argument(
        "--rl2",
        action="store_true",
        help="instead of env steps, time RL² meta-iterations (trial rollout + PPO update) of the bandit and tabular "
        f"MDP presets at GRU sizes 256 and 128, separate and shared critic (default --out {DEFAULT_RL2_OUT})",
    )
    parser.add_argument(
        "--metaworld",
        action="store_true",
        help="instead of the light families, the Meta-World adapter (MetaRL/MetaWorld-ML1-reach-v0's vector env) vs "
        "Meta-World's own gymnasium.make_vec('Meta-World/ML1-train', env_name='reach-v3') at "
        f"{', '.join(map(str, METAWORLD_NUM_ENVS))} sub-envs (needs the metaworld extra; default --out "
        f"{DEFAULT_METAWORLD_OUT})",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="instead of env steps, seconds per meta-iteration of `metarl train` on 1 and on 2 processes (torchrun, "
        f"gloo) for the runs {', '.join(DISTRIBUTED_RUNS)} (default --out {DEFAULT_DISTRIBUTED_OUT})",
    )
    parser.add_argument(
        "--processes",
        nargs="+",
        type=int,
        default=[1, 2],
        metavar="N",
        help="with --distributed: the numbers of processes compared (default: 1 2)",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=("cpu", "cuda"),
        default=["cpu"],
        help="with --distributed: the devices compared (default: cpu; scripts/gpu_check.sh compares cpu and cuda)",
    )
    parser.add_argument(
        "--distributed-iterations",
        type=int,
        default=6,
        help="with --distributed: meta-iterations per run; the first and the last (which validates) are not timed",
    )
    parser.add_argument(
        "--mujoco",
        action="store_true",
        help="instead of the light families, the MuJoCo batched env (1 thread and all CPUs) vs Gymnasium's "
        f"SyncVectorEnv and AsyncVectorEnv and a bare mj_step loop, for {', '.join(MUJOCO_FAMILIES)} at "
        f"{', '.join(map(str, MUJOCO_NUM_ENVS))} sub-envs (default --out {DEFAULT_MUJOCO_OUT})",
    )
    return parser


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
    budget = QUICK_BUDGET if args.quick else dataclasses.replace(DEFAULT_BUDGET, target_seconds=args.target_seconds)
    return Config(
        families=families,
        num_envs=tuple(dict.fromkeys(num_envs)),
        repeats=repeats,
        device=device,
        threads=args.threads,
        seed=args.seed,
        budget=budget,
        out=args.out or DEFAULT_OUT,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table, write the JSON to ``--out`` and return it.

    Args:
        argv: command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The results as written: ``machine``, ``command``, ``timestamp``, ``settings``, ``results`` (one record per
        family, num_envs and implementation) and ``ratios`` (one per family and num_envs).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.maml:
        if args.maml_iterations < 1:
            parser.error(f"--maml-iterations must be a positive integer, got {args.maml_iterations}")
        return benchmark_maml(args, argv)
    if args.rl2:
        return benchmark_rl2(args, argv)
    if args.mujoco:
        return benchmark_mujoco(args, argv)
    if args.metaworld:
        return benchmark_metaworld(args, argv)
    if args.distributed:
        if any(n < 1 for n in args.processes) or args.distributed_iterations < 3:
            parser.error(
                f"--processes must be positive integers and --distributed-iterations >= 3, got {args.processes} and "
                f"{args.distributed_iterations}"
            )
        if "cuda" in args.devices and not torch.cuda.is_available():
            parser.error("--devices cuda, but torch.cuda.is_available() is False on this machine")
        return benchmark_distributed(args, argv)
    try:
        config = build_config(args)
    except ValueError as error:
        parser.error(str(error))

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


# -- MAML meta-iterations -------------------------------------------------------------------------------------------
MAML_PHASES = ("sample_s", "inner_and_gradient_s", "conjugate_gradient_s", "line_search_s")


MAML_IMPLEMENTATIONS = {
    "batched": [],
    "batched_fast": ["curvature_fraction=0.25"],
    "per_task": [],
}
"""The implementations ``--maml`` times, with their config overrides of the preset."""


def benchmark_maml(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Seconds per MAML-TRPO meta-iteration of the Navigation2D paper preset, by phase, for three implementations.

    ``batched``: the suite's MAML (all tasks sampled, adapted and differentiated at once; KL curvature as JᵀFJ from
    the written-out curvature products). ``batched_fast``: the same in fast mode (the curvature on a quarter of each
    task's episodes). ``per_task``: the same algorithm written as a loop over tasks, the shape of the reference
    implementations: each task sampled with its own E sub-envs, adapted on its own, and the KL's Hessian-vector
    product by double backward through the per-task adaptations. The implementations' meta-iterations are
    interleaved, each agent starting from the same seed.
    """
    from agents.maml_trpo import MAMLTRPO
    from metarl.presets import load_config
    from metarl.registry import make_family
    from metarl.seeding import seed_everything

    torch.set_num_threads(args.threads)
    overrides = ["meta_batch_size=4", "episodes_per_task=4"] if args.quick else []
    data: dict[str, Any] = {
        **run_header(torch.device("cpu"), argv),
        "settings": {
            "preset": "navigation2d-maml-trpo",
            "overrides": overrides,
            "implementation_overrides": MAML_IMPLEMENTATIONS,
            "iterations": args.maml_iterations,
        },
        "results": {},
    }
    runs = {}
    for implementation, implementation_overrides in MAML_IMPLEMENTATIONS.items():
        config = load_config("navigation2d-maml-trpo", [*overrides, *implementation_overrides])
        family = make_family(config.family, **config.family_kwargs)
        split = family.split(seed=config.split_seed, num_tasks=config.num_tasks)
        seed_everything(args.seed)
        agent = MAMLTRPO(family, config, torch.device("cpu"))
        step = _per_task_meta_iteration if implementation == "per_task" else _batched_meta_iteration
        runs[implementation] = (agent, split, np.random.default_rng(args.seed), step, [])
    for _ in range(args.maml_iterations):
        for agent, split, rng, step, records in runs.values():
            tasks = [split.train[i] for i in rng.choice(len(split.train), agent.config.meta_batch_size, replace=False)]
            records.append(step(agent, tasks, rng))
    for implementation, (_, _, _, _, records) in runs.items():
        summary = {phase: statistics.median(r[phase] for r in records) for phase in MAML_PHASES}
        summary["total_s"] = statistics.median(sum(r[p] for p in MAML_PHASES) for r in records)
        data["results"][implementation] = {"median": summary, "iterations": records}
        cells = "  ".join(f"{phase.removesuffix('_s')} {summary[phase]:.3f}" for phase in MAML_PHASES)
        print(f"{implementation:12s} total {summary['total_s']:.3f} s/iteration  ({cells})", flush=True)
    medians = {name: result["median"]["total_s"] for name, result in data["results"].items()}
    data["speedup_total"] = medians["per_task"] / medians["batched"]
    data["speedup_fast_over_exact"] = medians["batched"] / medians["batched_fast"]
    print(
        f"batched is {data['speedup_total']:.1f}x faster per meta-iteration than the per-task loop; "
        f"the fast mode {data['speedup_fast_over_exact']:.1f}x faster than exact"
    )
    out = args.out or DEFAULT_MAML_OUT
    return save_results(data, out)


def _batched_meta_iteration(agent: Any, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
    start = time.perf_counter()
    batch = agent.sample(tasks, rng, agent.config.num_inner_steps, evaluation=False)
    timings = {"sample_s": time.perf_counter() - start}
    metrics = agent.meta_update(batch)
    timings.update({phase: metrics[f"time/{phase}"] for phase in MAML_PHASES[1:]})
    return timings


def _per_task_meta_iteration(agent: Any, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
    from agents.inner_loop import detach_distribution, detach_params
    from metarl.optim import flatten_tensors, unflatten_like

    config = agent.config
    start = time.perf_counter()
    batches = [agent.sample([task], rng, config.num_inner_steps, evaluation=False) for task in tasks]
    timings = {"sample_s": time.perf_counter() - start}

    start = time.perf_counter()
    theta = dict(agent.policy.named_parameters())
    olds = []
    for batch in batches:
        adapted = agent.adapt_per_task(theta, batch.inner, create_graph=False)
        old = agent.policy.distribution(batch.post.observations, detach_params(adapted))
        olds.append((old.log_prob(batch.post.actions).detach(), detach_distribution(old)))

    def total(params: dict[str, torch.Tensor], create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        losses, kls = [], []
        for batch, (old_log_probs, old) in zip(batches, olds, strict=True):
            adapted = agent.adapt_per_task(params, batch.inner, create_graph=create_graph)
            loss, kl = agent.surrogate(adapted, batch.post, old_log_probs, old)
            losses.append(loss)
            kls.append(kl)
        return torch.stack(losses).mean(), torch.stack(kls).mean()

    loss, _ = total(theta, create_graph=True)
    gradient = flatten_tensors(torch.autograd.grad(loss, list(theta.values())))
    timings["inner_and_gradient_s"] = time.perf_counter() - start

    start = time.perf_counter()
    _, kl = total(theta, create_graph=True)
    kl_gradient = flatten_tensors(torch.autograd.grad(kl, list(theta.values()), create_graph=True))

    def hessian_vector_product(vector: torch.Tensor) -> torch.Tensor:
        product = torch.autograd.grad(kl_gradient @ vector, list(theta.values()), retain_graph=True)
        return flatten_tensors(product) + config.cg_damping * vector

    curvature_setup_seconds = time.perf_counter() - start

    def loss_and_kl(candidate: torch.Tensor) -> tuple[float, float]:
        params = {name: value.requires_grad_() for name, value in unflatten_like(candidate, theta).items()}
        with torch.enable_grad():
            candidate_loss, candidate_kl = total(params, create_graph=False)
        return candidate_loss.item(), candidate_kl.item()

    _, step_timings = agent.apply_trpo_step(
        theta, gradient, hessian_vector_product, loss_and_kl, loss.item(), curvature_setup_seconds
    )
    return {**timings, **step_timings}


# -- RL² meta-iterations --------------------------------------------------------------------------------------------
RL2_PRESETS = ("rl2-bandit-k5-n100", "rl2-tabular-mdp-n10")
RL2_NETWORKS = ((256, False), (256, True), (128, False), (128, True))


def benchmark_rl2(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Env steps per second of RL² meta-iterations: the batched trial rollout and the PPO update, timed apart.

    Every (preset, GRU size, shared critic) runs ``--repeats`` meta-iterations from the same seed, one after the
    other in this process, so their ratios are measured side by side.
    """
    from agents.rl2 import RL2
    from metarl.presets import load_config
    from metarl.registry import make_family
    from metarl.seeding import seed_everything

    torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else DEFAULT_REPEATS
    if repeats < 1:
        raise SystemExit(f"--repeats must be a positive integer, got {repeats}")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    overrides = ["meta_batch_size=16", "ppo_epochs=1"] if args.quick else []
    networks = RL2_NETWORKS[2:] if args.quick else RL2_NETWORKS
    data: dict[str, Any] = {
        **run_header(device, argv),
        "settings": {"presets": list(RL2_PRESETS), "overrides": overrides, "repeats": repeats},
        "results": [],
    }
    print(f"device={device} torch_threads={args.threads} repeats={repeats} (median env steps per second)")
    for preset in RL2_PRESETS:
        for hidden_size, shared in networks:
            config = load_config(
                preset, [*overrides, f"rl2_hidden_size={hidden_size}", f"rl2_shared_critic={str(shared).lower()}"]
            )
            family = make_family(config.family, **config.family_kwargs)
            tasks = family.sample_tasks(np.random.default_rng(args.seed), config.meta_batch_size)
            seed_everything(args.seed)
            agent = RL2(family, config, device)
            rng = np.random.default_rng(args.seed)
            rollout_rates, update_rates, total_rates = [], [], []
            for _ in range(repeats):
                start = time.perf_counter()
                batch = agent.collect(tasks, rng)
                collected = time.perf_counter()
                agent.update(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                done = time.perf_counter()
                steps = float(batch.masks.sum())
                rollout_rates.append(steps / (collected - start))
                update_rates.append(steps / (done - collected))
                total_rates.append(steps / (done - start))
            record = {
                "preset": preset,
                "rl2_hidden_size": hidden_size,
                "rl2_shared_critic": shared,
                "steps_per_iteration": int(batch.masks.sum()),
                "ppo_epochs": config.ppo_epochs,
                "rollout_steps_per_second": statistics.median(rollout_rates),
                "update_steps_per_second": statistics.median(update_rates),
                "total_steps_per_second": statistics.median(total_rates),
            }
            data["results"].append(record)
            print(
                f"{preset:22s} GRU {hidden_size:3d} {'shared' if shared else 'separate'} critic: "
                f"rollout {format_rate(record['rollout_steps_per_second'])}  "
                f"update {format_rate(record['update_steps_per_second'])}  "
                f"total {format_rate(record['total_steps_per_second'])} steps/s",
                flush=True,
            )
    out = args.out or DEFAULT_RL2_OUT
    return save_results(data, out)


# -- meta-iterations over processes ------------------------------------------------------------------------------
def benchmark_distributed(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Seconds per meta-iteration of ``metarl train`` for each device in ``--devices`` and number of processes in
    ``--processes``.

    Every run is a real training job (``torchrun --standalone`` for more than one process: gloo on the CPU, NCCL on
    GPUs; one torch thread per process) of a preset for ``--distributed-iterations`` iterations with a small
    validation and test set; the time is the median of the trainer's ``time/iteration_s`` over the iterations
    between the first (warm-up) and the last (it validates). RL² runs also report env steps per second. ``--repeats``
    runs per setting are interleaved across the settings, and each speed-up is the ratio of the medians over all
    timed iterations against the first setting (first device, first number of processes).
    """
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else 2
    iterations = 3 if args.quick else args.distributed_iterations
    quick = {"maml": ["meta_batch_size=4", "episodes_per_task=4"], "rl2": ["meta_batch_size=16", "ppo_epochs=1"]}
    # one adaptation step at validation for MAML (RL²'s curve is its trial)
    evaluation = {"maml": ["eval_steps=1"], "rl2": []}
    common = ["eval_tasks=4", "test_tasks=4", "progress=false", f"seed={args.seed}"]
    settings = [(device, processes) for device in args.devices for processes in args.processes]
    data: dict[str, Any] = {
        **run_header(torch.device("cuda" if "cuda" in args.devices else "cpu"), argv),
        "settings": {
            "runs": {name: [preset, *overrides] for name, (preset, overrides) in DISTRIBUTED_RUNS.items()},
            "devices": args.devices,
            "processes": args.processes,
            "iterations": iterations,
            "repeats": repeats,
            "overrides": common,
            "quick_overrides": quick if args.quick else {},
        },
        "results": [],
    }
    timings: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="metarl-distributed-") as scratch:
        for repeat in range(repeats):
            for name, (preset, run_overrides) in DISTRIBUTED_RUNS.items():
                for device, processes in settings:
                    run_root = Path(scratch) / f"{name}-{device}-{processes}-{repeat}"
                    kind = "rl2" if preset.startswith("rl2") else "maml"
                    smaller = quick[kind] if args.quick else []
                    overrides = [
                        *run_overrides,
                        *smaller,
                        *common,
                        *evaluation[kind],
                        f"iterations={iterations}",
                        f"device={device}",
                    ]
                    records = _timed_training_run(preset, overrides, processes, run_root)
                    timings.setdefault((name, device, processes), []).extend(records)
    print(f"median seconds per meta-iteration ({repeats} run(s) x {iterations - 2} timed iteration(s) each)")
    for name, (preset, run_overrides) in DISTRIBUTED_RUNS.items():
        baseline = statistics.median(r["time/iteration_s"] for r in timings[(name, *settings[0])])
        for device, processes in settings:
            records = timings[(name, device, processes)]
            median = statistics.median(r["time/iteration_s"] for r in records)
            record = {
                "run": name,
                "preset": preset,
                "overrides": run_overrides,
                "device": device,
                "processes": processes,
                "median_iteration_s": median,
                "iteration_s": [r["time/iteration_s"] for r in records],
                "speedup": baseline / median,
            }
            steps = ""
            if all("meta/env_steps" in r for r in records):
                record["env_steps_per_s"] = statistics.median(
                    r["meta/env_steps"] / r["time/iteration_s"] for r in records
                )
                steps = f"  {format_rate(record['env_steps_per_s'])} env steps/s"
            data["results"].append(record)
            print(
                f"{name:28s} {device:4s} x{processes}: {median:7.3f} s  ({baseline / median:.2f}x){steps}", flush=True
            )
    out = args.out or DEFAULT_DISTRIBUTED_OUT
    return save_results(data, out)


def _timed_training_run(preset: str, overrides: list[str], processes: int, run_root: Path) -> list[dict[str, float]]:
    """Train ``preset`` on ``processes`` processes; the logged metrics of the iterations between the first and the
    last."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, "-m", "metarl", "train", "--preset", preset, *overrides, f"run_root={run_root}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{finished.stdout}\n{finished.stderr}")
    (run_dir,) = run_root.iterdir()
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:-1]


# -- MuJoCo batched env -------------------------------------------------------------------------------------------
MUJOCO_FAMILIES = ("MetaRL/HalfCheetahVel-v0", "MetaRL/AntVel-v0")
MUJOCO_NUM_ENVS = (1, 64, 1024)
ASYNC_MAX_ENVS = 64
"""``AsyncVectorEnv`` runs one process per sub-env: beyond this many they would not fit a small machine."""


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

    def numpy_inputs(actions: np.ndarray) -> list[np.ndarray]:
        return list(actions)

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
        runners.append(Runner(name, envs, envs.step, numpy_inputs, _no_op))
    if num_envs == 1:
        bare = BareMjStep(family)
        runners.append(Runner("bare_mj_step", bare, bare.step, numpy_inputs, _no_op))  # type: ignore[arg-type]
    return runners


def benchmark_mujoco(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Env steps per second of the MuJoCo batched env against Gymnasium's vector envs and the bare ``mj_step`` loop.

    For each family and number of sub-envs the implementations' repeats are interleaved and the median reported.
    ``physics_per_thread_over_bare`` compares the batched env's physics steps per second per thread it used with
    the bare loop's on one core (the physical limit: 1.0 means no overhead at all).
    """
    torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else DEFAULT_REPEATS
    if repeats < 1:
        raise SystemExit(f"--repeats must be a positive integer, got {repeats}")
    families = args.families if args.families != list(LIGHT_FAMILIES) else list(MUJOCO_FAMILIES)
    num_envs_list = args.num_envs or ([1, 4] if args.quick else list(MUJOCO_NUM_ENVS))
    threads = len(os.sched_getaffinity(0))
    budget = QUICK_BUDGET if args.quick else dataclasses.replace(DEFAULT_BUDGET, target_seconds=args.target_seconds)
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
            _, rates = interleaved_rates(runners, budget, repeats, rng)
            median = {runner.name: statistics.median(rates[i]) for i, runner in enumerate(runners)}
            for i, runner in enumerate(runners):
                data["results"].append(
                    {
                        "family": family_id,
                        "num_envs": runner.envs.num_envs,
                        "implementation": runner.name,
                        "median_steps_per_second": median[runner.name],
                        "repeat_steps_per_second": rates[i],
                    }
                )
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


# -- the Meta-World adapter -----------------------------------------------------------------------------------------


def metaworld_runners(num_envs: int, seed: int) -> list[Runner]:
    """The adapter's vector env (``MetaRL/MetaWorld-ML1-reach-v0``, one Meta-World task per sub-env) and Meta-World's
    own ML1 vector env, both synchronous, in NEXT_STEP autoreset mode, episodes of Meta-World's 500 steps."""
    import metaworld  # noqa: F401 - registers Meta-World's own ids

    family = family_spec("MetaRL/MetaWorld-ML1-reach-v0").make_family()
    tasks = family.split(seed=0).train[:num_envs]

    def numpy_inputs(actions: np.ndarray) -> list[np.ndarray]:
        return list(actions)

    adapter = family.make_vec_env(num_envs, tasks, autoreset_mode=AutoresetMode.NEXT_STEP)
    theirs = gym.make_vec(
        "Meta-World/ML1-train",
        env_name=METAWORLD_ENV,
        meta_batch_size=num_envs,
        vector_strategy="sync",
        autoreset_mode=AutoresetMode.NEXT_STEP,
        seed=seed,
    )
    theirs.call("sample_tasks")  # Meta-World's loop gives each sub-env a task explicitly, then resets keep it
    runners = []
    for name, envs in (("adapter", adapter), ("metaworld", theirs)):
        envs.reset(seed=seed)
        runners.append(Runner(name, envs, envs.step, numpy_inputs, _no_op))
    return runners


def benchmark_metaworld(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Env steps per second of the Meta-World adapter against Meta-World's own vector env, repeats interleaved;
    ``adapter_over_metaworld`` below 1 is the adapter's overhead (the goal: at most 10 %)."""
    torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else DEFAULT_REPEATS
    if repeats < 1:
        raise SystemExit(f"--repeats must be a positive integer, got {repeats}")
    num_envs_list = args.num_envs or ([1] if args.quick else list(METAWORLD_NUM_ENVS))
    budget = QUICK_BUDGET if args.quick else dataclasses.replace(DEFAULT_BUDGET, target_seconds=args.target_seconds)
    data: dict[str, Any] = {
        **run_header(torch.device("cpu"), argv),
        "settings": {"env_name": METAWORLD_ENV, "num_envs": num_envs_list, "repeats": repeats},
        "results": [],
        "ratios": [],
    }
    print(f"repeats={repeats} (median env steps/s)")
    for num_envs in num_envs_list:
        rng = np.random.default_rng(args.seed)
        runners = metaworld_runners(num_envs, args.seed)
        _, rates = interleaved_rates(runners, budget, repeats, rng)
        median = {runner.name: statistics.median(rates[i]) for i, runner in enumerate(runners)}
        for i, runner in enumerate(runners):
            data["results"].append(
                {
                    "num_envs": num_envs,
                    "implementation": runner.name,
                    "median_steps_per_second": median[runner.name],
                    "repeat_steps_per_second": rates[i],
                }
            )
        ratio = median["adapter"] / median["metaworld"]
        data["ratios"].append({"num_envs": num_envs, "adapter_over_metaworld": ratio})
        print(
            f"{num_envs:5d} sub-envs  adapter {format_rate(median['adapter'])}  metaworld "
            f"{format_rate(median['metaworld'])}  adapter/metaworld {ratio:.3f}",
            flush=True,
        )
    out = args.out or DEFAULT_METAWORLD_OUT
    return save_results(data, out)


if __name__ == "__main__":
    main()
