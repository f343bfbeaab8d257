"""Benchmarks of the suite, one entry point: this script parses the command line and runs one benchmark module.

Each mode is a module of ``scripts/benchmarks/`` whose docstring says what it measures:

* (default) :mod:`benchmarks.env_steps`: env steps per second of the light families' native batched envs against
  Gymnasium's ``SyncVectorEnv``;
* ``--maml``: :mod:`benchmarks.maml`, MAML-TRPO meta-iterations by phase, batched against a per-task loop;
* ``--learners``: :mod:`benchmarks.learners`, seconds per meta-iteration of MAML++, the learned optimiser and
  MAML++-TRPO against MAML-PPO and MAML-TRPO, all with two inner steps;
* ``--rl2``: :mod:`benchmarks.rl2`, RL² trial rollouts and PPO updates;
* ``--transformer``: :mod:`benchmarks.transformer`, the trial transformer against RL²'s GRU at equal parameter counts;
* ``--pearl``: :mod:`benchmarks.pearl`, PEARL's SAC step on the stacked meta-batch against a loop over its tasks;
* ``--distributed``: :mod:`benchmarks.distributed`, seconds per meta-iteration of ``metarl train`` on 1 and 2
  processes;
* ``--mujoco``: :mod:`benchmarks.mujoco`, the MuJoCo batched env against Gymnasium's vector envs and bare ``mj_step``;
* ``--metaworld``: :mod:`benchmarks.metaworld`, the Meta-World adapter against Meta-World's own vector env.

Usage (from the repository root)::

    python scripts/benchmark.py                     # all light families at 1, 64 and 1024 sub-envs
    python scripts/benchmark.py --quick --out /tmp/bench.json    # a smoke test of a few seconds
    python scripts/benchmark.py --families MetaRL/Bandit-v0 --num-envs 4096 --device cuda
    python scripts/benchmark.py --maml              # or --learners, --rl2, --pearl, --distributed, --mujoco, ...
    python scripts/benchmark.py --learners --quick --out /tmp/learners.json    # a smoke test of the learners

The results go to ``--out`` as JSON (written atomically; each mode has its own default under ``benchmarks/``) and a
table to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is no package: its benchmarks/ is imported

from benchmarks import distributed, env_steps, learners, maml, metaworld, mujoco, pearl, rl2, transformer
from benchmarks.common import DEFAULT_BUDGET, DEFAULT_REPEATS, LIGHT_FAMILIES
from benchmarks.distributed import DEFAULT_DISTRIBUTED_OUT, DISTRIBUTED_RUNS
from benchmarks.env_steps import DEFAULT_OUT
from benchmarks.learners import DEFAULT_LEARNERS_ITERATIONS, DEFAULT_LEARNERS_OUT
from benchmarks.maml import DEFAULT_MAML_OUT
from benchmarks.metaworld import DEFAULT_METAWORLD_OUT, METAWORLD_NUM_ENVS
from benchmarks.mujoco import DEFAULT_MUJOCO_OUT, MUJOCO_FAMILIES, MUJOCO_NUM_ENVS
from benchmarks.pearl import DEFAULT_PEARL_OUT, DEFAULT_PEARL_STEPS
from benchmarks.rl2 import DEFAULT_RL2_OUT
from benchmarks.transformer import DEFAULT_TRANSFORMER_OUT


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
        "--learners",
        action="store_true",
        help="instead of env steps, seconds per meta-iteration of MAML-PPO, MAML++ (first and second order), the "
        "LSTM learned optimiser, MAML-TRPO and MAML++-TRPO (first and second order), all with two inner steps, on "
        f"the Navigation2D paper presets, with the ratios to MAML-PPO and MAML-TRPO (default --out "
        f"{DEFAULT_LEARNERS_OUT})",
    )
    parser.add_argument(
        "--learners-iterations",
        type=int,
        default=None,
        help=f"with --learners: timed rounds after one warm-up iteration (default: {DEFAULT_LEARNERS_ITERATIONS}; "
        "1 with --quick)",
    )
    parser.add_argument(
        "--rl2",
        action="store_true",
        help="instead of env steps, time RL² meta-iterations (trial rollout + PPO update) of the bandit and tabular "
        f"MDP presets at GRU sizes 256 and 128, separate and shared critic (default --out {DEFAULT_RL2_OUT})",
    )
    parser.add_argument(
        "--transformer",
        action="store_true",
        help="instead of env steps, the trial transformer against RL²'s GRU at equal parameter counts on the bandit "
        f"and tabular MDP presets: rollout, PPO update and total steps per second (default --out "
        f"{DEFAULT_TRANSFORMER_OUT})",
    )
    parser.add_argument(
        "--pearl",
        action="store_true",
        help="instead of env steps, gradient steps per second of PEARL's SAC step on the HalfCheetahVel and sparse "
        "point robot presets, the meta-batch stacked vs a loop over its tasks (default --out "
        f"{DEFAULT_PEARL_OUT})",
    )
    parser.add_argument(
        "--pearl-steps",
        type=int,
        default=DEFAULT_PEARL_STEPS,
        help=f"with --pearl: timed SAC steps per implementation and round (default: {DEFAULT_PEARL_STEPS})",
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark the arguments name, print a table, write the JSON to ``--out`` and return it.

    Args:
        argv: command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The results as written. For the default mode: ``machine``, ``command``, ``timestamp``, ``settings``,
        ``results`` (one record per family, num_envs and implementation) and ``ratios`` (one per family and
        num_envs).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.maml:
        if args.maml_iterations < 1:
            parser.error(f"--maml-iterations must be a positive integer, got {args.maml_iterations}")
        return maml.run(args, argv)
    if args.learners:
        if args.learners_iterations is not None and args.learners_iterations < 1:
            parser.error(f"--learners-iterations must be a positive integer, got {args.learners_iterations}")
        return learners.run(args, argv)
    if args.rl2:
        return rl2.run(args, argv)
    if args.transformer:
        return transformer.run(args, argv)
    if args.pearl:
        if args.pearl_steps < 1:
            parser.error(f"--pearl-steps must be a positive integer, got {args.pearl_steps}")
        return pearl.run(args, argv)
    if args.mujoco:
        return mujoco.run(args, argv)
    if args.metaworld:
        return metaworld.run(args, argv)
    if args.distributed:
        if any(n < 1 for n in args.processes) or args.distributed_iterations < 3:
            parser.error(
                f"--processes must be positive integers and --distributed-iterations >= 3, got {args.processes} and "
                f"{args.distributed_iterations}"
            )
        if "cuda" in args.devices and not torch.cuda.is_available():
            parser.error("--devices cuda, but torch.cuda.is_available() is False on this machine")
        return distributed.run(args, argv)
    try:
        config = env_steps.build_config(args)
    except ValueError as error:
        parser.error(str(error))
    return env_steps.run(config, argv)


if __name__ == "__main__":
    main()
