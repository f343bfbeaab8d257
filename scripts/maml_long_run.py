"""Long MAML-TRPO runs beside a reference: training curves in windows, held-out returns of the last and the kept
parameters. A benchmark-style check (minutes to hours), not a test.

    # train (each run is an ordinary run folder; start several at once to use several cores)
    python scripts/maml_long_run.py train --seeds 0 1 -- iterations=200                    # default env
    python scripts/maml_long_run.py train --preset navigation2d-maml-trpo --seeds 0 1 2    # the paper's env, exact
    python scripts/maml_long_run.py train --preset navigation2d-maml-trpo --seeds 0 -- curvature_fraction=0.25
    python scripts/maml_long_run.py train --autograd --preset navigation2d-maml-trpo --seeds 0  # plain autograd

    # report: windowed training return before / after one step, validation curve, held-out returns of last.pt and
    # best.pt, beside pytorch-maml-rl's measured curve (../shared/reference/) where given
    python scripts/maml_long_run.py report runs/long/* --tasks 200 --seeds 0 1 \\
        --reference ../shared/reference/pytorch-maml-rl-navigation2d-200.csv --out docs/results/long-runs/default.json

``--autograd`` trains with :class:`metarl.agents.maml_autograd.AutogradMAML`: the same sampling and evaluation, the
meta-update by plain autograd, task by task (several times slower). ``--float64`` computes in float64.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import metarl.envs  # noqa: F401 - registers the families
import numpy as np
import torch
from metarl.agents.maml_trpo import MAMLTRPO

from metarl import trainer
from metarl.checkpoint import BEST_CHECKPOINT, load_checkpoint, write_text_atomically
from metarl.evaluate import evaluate_run
from metarl.presets import load_config, load_run_config
from metarl.rollout import EpisodeBatch

WINDOWS = [(0, 10), (10, 20), (20, 50), (50, 100), (100, 150), (150, 200), (200, 300), (300, 400), (400, 500)]
"""Iteration windows ``[start, end)`` of the training curve (those a run reaches), plus its last 20 iterations."""


def windows_for(iterations: int) -> list[tuple[int, int]]:
    return [(a, b) for a, b in WINDOWS if b <= iterations] + [(max(0, iterations - 20), iterations)]


def windowed(values: Sequence[float], windows: Sequence[tuple[int, int]]) -> dict[str, float]:
    return {f"{a}-{b - 1}": float(np.mean(values[a:b])) for a, b in windows if len(values) >= b}


def float64_agent(agent_class: type[MAMLTRPO]) -> type[MAMLTRPO]:
    """``agent_class`` computing in float64: the policy's parameters, its action sampling and every episode tensor
    (the envs stay float32), to tell rounding from the algorithm."""

    class Float64Agent(agent_class):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.policy.double()
            policy_act = self.policy.act
            self.policy.act = lambda observations, *a, **k: policy_act(observations.double(), *a, **k).float()

        def collect(self, *args: Any, **kwargs: Any) -> EpisodeBatch:
            return super().collect(*args, **kwargs).with_float_dtype(torch.float64)

    return Float64Agent


def train_runs(args: argparse.Namespace) -> None:
    agent_class = MAMLTRPO
    if args.autograd:
        from metarl.agents.maml_autograd import AutogradMAML

        agent_class = AutogradMAML
    if args.float64:
        agent_class = float64_agent(agent_class)
    make_agent = trainer.make_agent
    if agent_class is not MAMLTRPO:
        # the trainer builds agents by algo name; these variants are not algorithms of their own
        trainer.make_agent = lambda config, family, device, workers=None: agent_class(family, config, device, workers)
    try:
        for seed in args.seeds:
            config = load_config(args.preset, [*args.overrides, f"seed={seed}", f"run_root={args.run_root}"])
            result = trainer.train(config)
            print(f"{result.run_dir}: kept iteration {result.kept_iteration}, held-out returns {result.test_returns}")
            print(f"  last parameters: {result.last_test_returns}")
    finally:
        trainer.make_agent = make_agent


def reference_curve(path: Path) -> dict[str, list[float]]:
    with path.open() as file:
        rows = list(csv.DictReader(file))
    return {
        "return_pre_adapt": [float(row["return_pre_adapt"]) for row in rows],
        "return_step_1": [float(row["return_step_1"]) for row in rows],
        "cpu_s": [float(row["cpu_s"]) for row in rows],
    }


def report(args: argparse.Namespace) -> None:
    results: dict = {"runs": {}}
    for run in args.runs:
        run_dir = Path(run)
        config = load_run_config(run_dir)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        windows = windows_for(len(records))
        pre = [record["meta/return_pre_adapt"] for record in records]
        post = [record["meta/return_step_1"] for record in records]
        validation = {
            record["iteration"]: [record[key] for key in sorted(record) if key.startswith("validation/return_step_")]
            for record in records
            if "validation/return_step_1" in record
        }
        held_out = {
            checkpoint: evaluate_run(
                run_dir, num_tasks=args.tasks, num_points=args.points, seeds=args.seeds, checkpoint=checkpoint
            ).summary()
            for checkpoint in ("last", "best")
        }
        kept = load_checkpoint(run_dir / BEST_CHECKPOINT)["iteration"]
        train_return_step_1 = windowed(post, windows)
        seconds = [record["time/iteration_s"] for record in records]
        results["runs"][str(run_dir)] = {
            "config": {
                key: getattr(config, key)
                for key in ("family", "family_kwargs", "seed", "weighting", "curvature_fraction", "iterations")
            },
            "train_return_pre_adapt": windowed(pre, windows),
            "train_return_step_1": train_return_step_1,
            **{
                f"train_{key.split('/')[-1]}": windowed([record[key] for record in records], windows)
                for key in ("losses/pre_adaptation_kl", "policy/log_std_mean")
                if key in records[0]
            },
            "validation_return_by_iteration": validation,
            "kept_iteration": kept,
            "held_out": held_out,
            "median_iteration_s": float(np.median(seconds)),
        }
        print(f"{run_dir}: kept {kept}; step 1 by window {train_return_step_1}")
        for checkpoint, summary in held_out.items():
            print(f"  {checkpoint}: {summary}")
    if args.reference is not None:
        curve = reference_curve(args.reference)
        windows = windows_for(len(curve["return_step_1"]))
        results["reference"] = {
            "file": str(args.reference),
            "train_return_pre_adapt": windowed(curve["return_pre_adapt"], windows),
            "train_return_step_1": windowed(curve["return_step_1"], windows),
            "median_cpu_s": float(np.median(curve["cpu_s"])),
        }
        print(f"reference: step 1 by window {results['reference']['train_return_step_1']}")
    results["command"] = sys.argv
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.out, json.dumps(results, indent=2, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train one run per seed")
    train.add_argument("--preset", default=None)
    train.add_argument("--seeds", type=int, nargs="+", default=[0])
    train.add_argument("--autograd", action="store_true", help="the plain autograd meta-update")
    train.add_argument("--float64", action="store_true", help="compute in float64 (the envs stay float32)")
    train.add_argument("--run-root", default="runs/long")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    summary = commands.add_parser("report", help="windowed curves and held-out returns of run folders")
    summary.add_argument("runs", nargs="+")
    summary.add_argument("--reference", type=Path, default=None, help="pytorch-maml-rl's curve (CSV)")
    summary.add_argument("--tasks", type=int, default=200)
    summary.add_argument("--points", type=int, default=None)
    summary.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    summary.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "train":
        train_runs(args)
    else:
        report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
