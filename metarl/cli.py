"""The ``metarl`` command line.

``metarl families`` and ``metarl algos`` list the registered task families and algorithms (``metarl algos NAME``: an
algorithm's config fields, defaults and docs); ``metarl train`` / ``evaluate`` / ``from-scratch`` meta-train and
evaluate; ``metarl demo`` rolls out a random policy on held-out tasks of every family (or the ones named) through the
batched multi-task rollout. ``--import MODULE`` imports a user's module first, so that the families and algorithms it
registers (``metarl.register_family``, ``metarl.register_agent``) are available to every command.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from metarl import console
from metarl.config import RunConfig, field_docs
from metarl.device import DEVICE_CHOICES, resolve_device, set_threads
from metarl.distributed import end_worker_process, is_main_process, launched_world_size
from metarl.evaluate import CHECKPOINTS, SPLITS
from metarl.registry import agent_spec, family_spec, list_agents, list_families, load_builtins
from metarl.rollout import RandomPolicy, collect_episodes
from metarl.run_folder import describe_os_error


def _int_at_least(text: str, minimum: int) -> int:
    """``text`` as an int >= ``minimum``; argparse prints the message of the ``ArgumentTypeError`` after the option's
    name (``argument --seeds: must be an int >= 0, got 'abc'``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


# argparse names a type by its __name__ when the type raises ValueError or TypeError: a readable name, not ours
_positive_int.__name__ = "integer >= 1"
_non_negative_int.__name__ = "integer >= 0"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metarl", description="Meta reinforcement learning suite.")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (a module name or a .py file) first, e.g. one that registers your own task families "
        "or algorithms",
    )
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch intra-op threads (default 1)")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("families", help="list the registered task families")
    algos = commands.add_parser(
        "algos",
        help="list the registered algorithms, or one algorithm's config fields with their defaults and docs",
        description="Without a name: every registered algorithm and its one-line summary. With names: each one's "
        "own config fields (key=value overrides of `metarl train --algo NAME`) with defaults and docs; --common adds "
        "the fields every run has.",
    )
    algos.add_argument("names", nargs="*", metavar="NAME", help="algorithms to document (default: list them all)")
    algos.add_argument("--common", action="store_true", help="also list the fields every algorithm has")

    train = commands.add_parser(
        "train",
        help="meta-train (default: MAML-TRPO on Navigation2D, a few minutes)",
        description="Meta-train. Config: the algorithm's defaults (`metarl algos NAME`), then --preset, then key=value "
        "overrides (flat keys: common and algorithm fields side by side).",
    )
    train.add_argument("--preset", default=None, help="a preset under configs/ (name) or a YAML file")
    train.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="resume the run in RUN_DIR from last.pt; with iterations=N, train it on to N iterations in all",
    )
    train.add_argument(
        "--algo",
        default=None,
        help="a registered algorithm (`metarl algos`; short for algo=...; overrides the preset's)",
    )
    train.add_argument(
        "--quiet",
        action="store_true",
        help="for scripts: print nothing but errors and, at the end, the run folder's path on stdout (the run's "
        "progress field, saved in config.json, turns off only the progress lines on stderr)",
    )
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config field overrides, e.g. seed=3")

    evaluate = commands.add_parser(
        "evaluate",
        help="fast adaptation of trained runs on held-out test tasks: tables, JSON, CSV and a plot",
        description="Evaluate the agent of each run folder on a split (the held-out test tasks by default) for "
        "several seeds: mean return at each adaptation point with a 95% bootstrap interval over tasks. Each run "
        "gets evaluation/<split>-<checkpoint>.{json,csv,png} in its folder; several runs also a comparison in --out.",
    )
    evaluate.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by metarl train")
    evaluate.add_argument("--split", choices=SPLITS, default="test", help="which tasks (default: test, held out)")
    evaluate.add_argument("--tasks", type=_positive_int, default=None, help="tasks (default: the run's test_tasks)")
    evaluate.add_argument(
        "--task-pool",
        type=_positive_int,
        default=None,
        metavar="N",
        help="draw the split from a pool of N tasks instead of the run's num_tasks (more held-out tasks, or the "
        "test tasks of a run trained with num_tasks=N); the run's training tasks are left out",
    )
    evaluate.add_argument(
        "--points",
        type=_positive_int,
        nargs="+",
        default=None,
        help="adaptation points: MAML steps 0..N-1, RL² episodes 1..N (default: the run's eval_steps + 1 or "
        "trial_episodes); one number for every run, or one per run",
    )
    evaluate.add_argument("--seeds", type=_non_negative_int, nargs="+", default=[0], help="evaluation seeds")
    evaluate.add_argument("--names", nargs="+", default=None, help="the agents' names in reports, one per run")
    evaluate.add_argument("--checkpoint", choices=sorted(CHECKPOINTS), default="best", help="default: best")
    evaluate.add_argument("--device", choices=DEVICE_CHOICES, default="cpu", help="device of the agents")
    evaluate.add_argument(
        "--foreign-checkpoint",
        action="store_true",
        help="evaluate a checkpoint even when it belongs to another run (a transfer experiment: that run's "
        "parameters on this run's family and tasks); the results record that run. Without it, refused",
    )
    evaluate.add_argument(
        "--out", type=Path, default=None, help="folder of the comparison of several runs (default: runs/comparison)"
    )

    scratch = commands.add_parser(
        "from-scratch",
        help="env steps SB3 PPO needs, learning each held-out task alone, to reach a MAML run's one-step return",
        description="For each of the first --tasks test tasks: the MAML run's return after one adaptation step on "
        "that task, then PPO from scratch on it until its policy reaches that return (checked every --check-every "
        "env steps). Reports the median steps and their ratio to the env steps MAML's one adaptation step used; "
        "writes evaluation/from-scratch.json in the run folder.",
    )
    scratch.add_argument("run", metavar="RUN_DIR", help="a MAML (or pretrain) run folder")
    scratch.add_argument("--tasks", type=_positive_int, default=5, help="test tasks (default 5)")
    scratch.add_argument("--max-steps", type=_positive_int, default=200_000, help="PPO budget per task")
    scratch.add_argument("--check-every", type=_positive_int, default=2_000, help="env steps between checks")
    scratch.add_argument("--seed", type=_non_negative_int, default=0, help="PPO and evaluation seed (default 0)")

    demo = commands.add_parser("demo", help="roll out a random policy on held-out tasks of every family")
    demo.add_argument("--family", action="append", default=None, metavar="ID", help="family id (repeatable)")
    demo.add_argument("--tasks", type=_positive_int, default=8, help="held-out tasks per family (default 8)")
    demo.add_argument("--episodes", type=_positive_int, default=4, help="episodes per task (default 4)")
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="split, env and policy seed (default 0)")
    demo.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="device of the native envs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    set_threads(args.threads)
    for module in args.imports:
        _import(module, parser)
    try:
        load_builtins()  # the suite's own families and algorithms, after the user's modules
        world_size = launched_world_size()
        if world_size > 1 and args.command != "train":
            raise ValueError(
                f"`metarl {args.command}` runs in one process, but WORLD_SIZE={world_size} (torchrun): only "
                "`metarl train` runs across processes"
            )
        if args.command == "families":
            return _families()
        if args.command == "algos":
            return _algos(args)
        if args.command == "train":
            status = _train(args)
            if world_size > 1:
                end_worker_process(status)
            return status
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "from-scratch":
            return _from_scratch(args)
        return _demo(args)
    except (TypeError, ValueError) as error:
        _exit_with_error(parser, str(error))
    except OSError as error:  # a permission or disk error reading or writing a file: name it, no traceback
        _exit_with_error(parser, describe_os_error(error))
    return 2  # unreachable: _exit_with_error exits


def _exit_with_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exit with status 2 and one line, ``metarl: error: <message>``. No usage text: the arguments parsed, and the
    message names the value or file at fault and what to do."""
    parser.exit(2, f"{parser.prog}: error: {' '.join(message.split())}\n")


def _import(module: str, parser: argparse.ArgumentParser) -> None:
    """Import a module by name, or a Python file by path (registered in ``sys.modules`` under its stem)."""
    path = Path(module)
    if module.endswith(".py"):
        if not path.is_file():
            parser.error(f"--import {module}: no such file")
        loaded_before = sys.modules.get(path.stem)
        if loaded_before is not None and getattr(loaded_before, "__file__", None) == str(path.resolve()):
            return  # like `import`, importing the same file twice runs it once
        spec = importlib.util.spec_from_file_location(path.stem, path.resolve())
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = loaded
        spec.loader.exec_module(loaded)
    else:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            parser.error(f"--import {module}: {error}")


def _train(args: argparse.Namespace) -> int:
    from metarl.presets import load_config
    from metarl.trainer import train

    extend_to = None
    if args.resume is not None:
        # a resumed run keeps its own config; only its length can change (iterations=N trains a finished run on)
        overrides = dict(override.partition("=")[::2] for override in args.overrides)
        if args.preset is not None or args.algo is not None or set(overrides) - {"iterations"}:
            raise ValueError(
                "--resume continues a run with its own config: drop --preset and every override but iterations=N"
            )
        if "iterations" in overrides:
            extend_to = load_config(None, [f"iterations={overrides['iterations']}"]).iterations
    algo_override = [] if args.algo is None else [f"algo={args.algo}"]
    config = None if args.resume is not None else load_config(args.preset, [*algo_override, *args.overrides])
    with console.quiet() if args.quiet else contextlib.nullcontext():
        result = train(config, resume=args.resume, iterations=extend_to)
        if is_main_process():  # under torchrun, rank 0 reports
            console.print_run_report(result)  # stdout: the held-out table and the run folder (--quiet: the folder)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from metarl.evaluate import check_run, comparison_table, evaluate_run, write_evaluation
    from metarl.run_folder import check_writable_folder

    resolve_device(args.device, fix="use --device auto or --device cpu")
    # every run is checked before any is evaluated, and nothing is written before all checks pass: the folder, its
    # config, family and checkpoint (readable, this run's), and that its evaluation/ folder can be written
    for run in args.runs:
        if not Path(run).is_dir():
            raise ValueError(f"no run folder at {run}; pass folders made by metarl train")
        check_run(run, checkpoint=args.checkpoint, allow_foreign=args.foreign_checkpoint)
        check_writable_folder(
            Path(run) / "evaluation",
            f"{Path(run) / 'evaluation'}, where metarl evaluate writes its reports,",
            "make the run folder writable (or evaluate a writable copy of it)",
        )
    if len(args.runs) > 1:
        out = args.out or Path("runs") / "comparison"
        check_writable_folder(out, f"--out {out}", "pass --out a folder you can write to")
    points = args.points or [None]
    if len(points) not in (1, len(args.runs)):
        raise ValueError(f"--points takes one number or one per run ({len(args.runs)}), got {len(points)}")
    points = points * len(args.runs) if len(points) == 1 else points
    names = args.names or [None] * len(args.runs)
    if len(names) != len(args.runs):
        raise ValueError(f"--names takes one name per run ({len(args.runs)}), got {len(names)}")
    evaluations = []
    for run, num_points, name in zip(args.runs, points, names, strict=True):
        evaluation = evaluate_run(
            run,
            split=args.split,
            num_tasks=args.tasks,
            num_points=num_points,
            seeds=args.seeds,
            checkpoint=args.checkpoint,
            name=name,
            device=args.device,
            progress=True,
            allow_foreign=args.foreign_checkpoint,
            task_pool=args.task_pool,
        )
        paths = write_evaluation([evaluation], Path(run) / "evaluation", f"{args.split}-{args.checkpoint}")
        print(f"wrote {paths['json']}, .csv, .png", file=sys.stderr)
        evaluations.append(evaluation)
    if len(evaluations) > 1:
        out = args.out or Path("runs") / "comparison"
        paths = write_evaluation(evaluations, out, f"{args.split}-{args.checkpoint}")
        print(f"wrote {paths['json']}, .csv, .png", file=sys.stderr)
    print(comparison_table(evaluations))
    return 0


def _from_scratch(args: argparse.Namespace) -> int:
    import json

    from metarl.checkpoint import write_text_atomically
    from metarl.evaluate import evaluate_run
    from metarl.from_scratch import adaptation_env_steps, ppo_steps_to_reach, summarize
    from metarl.presets import load_run_config
    from metarl.registry import make_family

    config = load_run_config(args.run)
    if config.algo not in ("maml-trpo", "maml-ppo", "reptile", "pretrain-trpo"):
        raise ValueError(f"from-scratch compares with a gradient-based agent's one-step return, got algo {config.algo}")
    evaluation = evaluate_run(args.run, num_tasks=args.tasks, num_points=2, seeds=(args.seed,), progress=True)
    family = make_family(config.family, **config.family_kwargs)
    split = family.split(seed=config.split_seed, num_tasks=config.num_tasks)
    results = []
    for j, task_index in enumerate(evaluation.task_indices):
        target = float(evaluation.per_task()[1, j])
        result = ppo_steps_to_reach(
            family,
            split.test[task_index],
            target,
            max_steps=args.max_steps,
            check_every=args.check_every,
            episodes=config.episodes_per_task,
            seed=args.seed + j,
            hidden_sizes=tuple(config.hidden_sizes),
            task_index=task_index,
        )
        reached = "not within the budget" if result.steps_to_target is None else f"{result.steps_to_target} steps"
        print(f"  test task {task_index}: target {target:.2f}: {reached} ({result.seconds:.0f} s)", file=sys.stderr)
        results.append(result)
    summary = summarize(results, adaptation_env_steps(config.episodes_per_task, family.horizon), args.max_steps)
    summary.update({"run_dir": str(args.run), "family": config.family, "algo": config.algo, "command": sys.argv})
    path = Path(args.run) / "evaluation" / "from-scratch.json"
    write_text_atomically(path, json.dumps(summary, indent=2) + "\n")
    at_least = "at least " if summary["ratio_is_lower_bound"] else ""
    print(
        f"PPO from scratch reached the one-step return on {summary['reached']}/{summary['tasks']} tasks within "
        f"{args.max_steps} env steps; median {at_least}{summary['median_steps_to_target']:.0f} env steps = "
        f"{at_least}{summary['ratio']:.1f}x the {summary['adaptation_env_steps']} steps of one adaptation step ({path})"
    )
    return 0


def _families() -> int:
    for env_id in list_families():
        family = family_spec(env_id).make_family()
        native = "native batched" if family.vector_env_class else "Gymnasium vector fallback"
        print(
            f"{env_id:32s} horizon {family.horizon:4d}  obs {family.observation_space}  "
            f"actions {family.action_space}  [{native}]"
        )
    return 0


def _algos(args: argparse.Namespace) -> int:
    names = args.names or list_agents()
    specs = [agent_spec(name) for name in names]  # an unknown name fails here, listing the registered ones
    if not args.names:
        for spec in specs:
            summary = (spec.agent_class.__doc__ or "").strip().split("\n")[0]  # the docstring's summary line
            processes = "torchrun" if spec.agent_class.trains_across_processes else "one process"
            print(f"{spec.name:16s} {spec.agent_class.curve_kind:8s} {processes:12s} {summary}")
        print("\n`metarl algos NAME` lists an algorithm's config fields; `--common` adds those every run has")
        return 0
    common = {field.name for field in dataclasses.fields(RunConfig)}
    for spec in specs:
        docs = field_docs(spec.config_class)
        defaults = spec.config_class()
        print(
            f"{spec.name}: {spec.agent_class.__module__}.{spec.agent_class.__qualname__}, "
            f"config {spec.config_class.__qualname__}"
        )
        for name, doc in docs.items():
            if name in common and not args.common:
                continue
            print(f"  {name} = {getattr(defaults, name)!r}")
            if doc:
                print(textwrap.fill(doc, width=116, initial_indent="      ", subsequent_indent="      "))
    return 0


def _demo(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    family_ids = args.family or list_families()
    specs = [family_spec(env_id) for env_id in family_ids]  # unknown ids fail here, before any work
    print(f"random policy, {args.tasks} held-out tasks x {args.episodes} episodes per family, device {device}")
    print(f"{'family':32s} {'return (mean ± std over tasks)':>32s} {'steps':>8s} {'seconds':>8s}")
    for spec in specs:
        family = spec.make_family()
        test_tasks = family.split(seed=args.seed, num_tasks=max(10 * args.tasks, 20)).test[: args.tasks]
        envs = family.make_vec_env(len(test_tasks) * args.episodes, device=device)
        policy = RandomPolicy(family.action_space, seed=args.seed, device=device)
        start = time.perf_counter()
        batch = collect_episodes(envs, family, test_tasks, args.episodes, policy, seed=args.seed)
        seconds = time.perf_counter() - start
        envs.close()
        task_returns = batch.returns.mean(dim=1)
        spread = task_returns.std().item() if len(test_tasks) > 1 else 0.0
        summary = f"{task_returns.mean().item():.3f} ± {spread:.3f}"
        print(f"{spec.id:32s} {summary:>32s} {int(batch.lengths.sum().item()):8d} {seconds:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
