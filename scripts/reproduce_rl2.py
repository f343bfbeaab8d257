"""Reproduce the RL² paper's Tables 1 and 2: RL² and the classical baselines on held-out bandits and tabular MDPs.

For every cell (bandits k ∈ {5, 10} × n ∈ {10, 100}, tabular MDPs n ∈ {10, 25}) this trains RL² with the cell's
preset (``configs/rl2-*.yaml``) or takes an existing run folder (``--run CELL=RUN_DIR``), then evaluates RL² and
every classical baseline on the same held-out *test* tasks (one trial each, at least 1000 tasks) and writes a
Markdown table beside the paper's numbers, with the command and the training time of each cell.

Results accumulate: ``docs/results/rl2.json`` keeps every cell evaluated so far, so cells can be run one at a time
(a long cell in the background, say) and the Markdown is rebuilt from all of them.

    python scripts/reproduce_rl2.py --cells bandit-k5-n10             # train and evaluate one cell
    python scripts/reproduce_rl2.py --run tabular-n10=runs/<run>      # evaluate a finished (or running) run
    python scripts/reproduce_rl2.py --no-train                        # baselines only, every cell
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import metarl.envs  # noqa: F401 - registers the families
import torch
from metarl.agents.classical import classical_agent_names, make_classical_agent

from metarl.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint, write_text_atomically
from metarl.device import set_threads
from metarl.presets import load_config, load_run_config
from metarl.registry import make_family
from metarl.trainer import train
from metarl.trials import TrialBatch, collect_trials, make_trial_envs

DEFAULT_OUT = Path("docs/results/rl2.md")
MIN_TEST_TASKS = 1000
ESTIMATE_STEPS_PER_SECOND = 8000
"""Training throughput behind the time estimate of a cell not trained: RL² with GRU 128 and a separate critic
ran at 7.9-9.1k env steps/s end to end on a 2-core CPU (``python scripts/benchmark.py --rl2``)."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of the paper's tables."""

    preset: str
    """The RL² preset under configs/ (it also fixes the family, n and the task split)."""
    table: str
    """Caption of the cell's group: which family and n."""
    paper: dict[str, float]
    """The paper's total reward over n episodes, by our agent name."""


CELLS: dict[str, Cell] = {
    "bandit-k5-n10": Cell(
        "rl2-bandit-k5-n10",
        "Bandits k=5, n=10",
        {"random": 5.0, "gittins": 6.6, "thompson": 5.7, "ucb1_prior": 6.7, "rl2": 6.7},
    ),
    "bandit-k5-n100": Cell(
        "rl2-bandit-k5-n100",
        "Bandits k=5, n=100",
        {"random": 49.9, "gittins": 78.3, "thompson": 74.7, "ucb1_prior": 78.0, "rl2": 78.7},
    ),
    "bandit-k10-n10": Cell("rl2-bandit-k10-n10", "Bandits k=10, n=10", {"gittins": 6.6, "rl2": 6.7}),
    "bandit-k10-n100": Cell("rl2-bandit-k10-n100", "Bandits k=10, n=100", {"gittins": 82.8, "rl2": 83.5}),
    "tabular-n10": Cell(
        "rl2-tabular-mdp-n10", "Tabular MDPs, n=10", {"random": 100.1, "psrl_zero_prior": 138.1, "rl2": 156.2}
    ),
    "tabular-n25": Cell(
        "rl2-tabular-mdp-n25", "Tabular MDPs, n=25", {"random": 250.2, "psrl_zero_prior": 408.8, "rl2": 445.7}
    ),
}
"""The cells of Tables 1 and 2. The paper's "UCB1" is the tuned variant (``ucb1_prior``: Beta-prior means in place of
the forced first pulls and a tuned exploration constant); the classic UCB1 is reported beside it. The paper's PSRL is
matched by ours with a N(0, 1) prior on the mean rewards (``psrl_zero_prior``); ``psrl`` uses the family's true
N(1, 1) prior and is reported beside it."""


def summarize(totals: torch.Tensor) -> dict[str, float]:
    """Mean total reward over trials and the half-width of its 95% confidence interval (normal approximation)."""
    values = totals.double()
    std = float(values.std()) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "ci95": 1.96 * std / math.sqrt(len(values)), "tasks": len(values)}


def evaluate_policy(family: Any, tasks: Sequence[Any], num_episodes: int, policy: Any, seed: int) -> TrialBatch:
    """One trial per task, all in parallel, through the same trial path as training."""
    trial_envs = make_trial_envs(family, len(tasks))
    try:
        return collect_trials(trial_envs, family, tasks, num_episodes, policy, seed=seed)
    finally:
        trial_envs.close()


def rl2_from_run(run_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The RL² agent of a run folder with its kept (best by validation) parameters, its config and training facts."""
    from metarl.agents.rl2 import RL2

    config = load_run_config(run_dir)
    if config.algo != "rl2":
        raise ValueError(f"{run_dir} is a {config.algo} run, not rl2")
    checkpoint_path = run_dir / BEST_CHECKPOINT if (run_dir / BEST_CHECKPOINT).is_file() else run_dir / LAST_CHECKPOINT
    if not checkpoint_path.is_file():
        raise ValueError(f"{run_dir} has no checkpoint yet ({BEST_CHECKPOINT} or {LAST_CHECKPOINT})")
    family = make_family(config.family, **config.family_kwargs)
    agent = RL2(family, config, torch.device("cpu"))
    agent.load_state_dict(load_checkpoint(checkpoint_path)["agent"])
    last = load_checkpoint(run_dir / LAST_CHECKPOINT) if (run_dir / LAST_CHECKPOINT).is_file() else {}
    iterations = int(last.get("iteration", 0))
    facts = {
        "run_dir": str(run_dir),
        "checkpoint": checkpoint_path.name,
        "iterations": iterations,
        "env_steps": iterations * config.meta_batch_size * config.trial_episodes * family.horizon,
        "training_minutes": _training_minutes(run_dir),
        "rl2_hidden_size": config.rl2_hidden_size,
    }
    return agent, config, facts


def _training_minutes(run_dir: Path) -> float | None:
    """Wall-clock minutes of the run: the per-iteration timings summed (robust to resumes and to runs in progress)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    seconds = 0.0
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "time/iteration_s" in record:
            seconds += record["time/iteration_s"]
        else:  # a run logged before the trainer timed whole iterations: its agent's timed parts
            seconds += sum(value for key, value in record.items() if key.startswith("time/"))
    return seconds / 60


EXPERIMENT_FIELDS = ("algo", "family", "family_kwargs", "trial_episodes", "num_tasks", "split_seed")
"""Config fields that define a cell's experiment: a run that differs in one of them belongs to another cell."""


def _differences(run_config: Any, cell_config: Any, fields: Sequence[str] | None = None) -> dict[str, Any]:
    """The run's value of every config field (of ``fields``, default all) that differs from the cell's preset."""
    names = fields if fields is not None else [field.name for field in dataclasses.fields(cell_config)]
    values = {name: getattr(run_config, name) for name in names}
    return {name: value for name, value in values.items() if value != getattr(cell_config, name)}


def run_cell(name: str, args: argparse.Namespace, runs: dict[str, Path]) -> dict[str, Any]:
    """Train (or load) RL² for one cell and evaluate it and every classical baseline on its test tasks."""
    cell = CELLS[name]
    config = load_config(cell.preset, args.train_override)
    family = make_family(config.family, **config.family_kwargs)
    num_episodes = config.trial_episodes
    overrides = list(args.train_override)
    rl2, training = None, None
    if name in runs:
        rl2, config, training = rl2_from_run(runs[name])
        # the run's own command: the preset plus whatever the run changed (its config.json is the record)
        changed = _differences(config, load_config(cell.preset))
        changed.pop("progress", None)
        overrides = [f"{key}={v if isinstance(v, str) else json.dumps(v)}" for key, v in changed.items()]
    command = shlex.join(["metarl", "train", "--preset", cell.preset, *overrides])
    result: dict[str, Any] = {"cell": name, "table": cell.table, "preset": cell.preset, "train_command": command}
    result["planned_env_steps"] = config.iterations * config.meta_batch_size * num_episodes * family.horizon
    if training is not None:
        result["rl2_training"] = training
    elif args.train:
        started = time.perf_counter()
        run = train(config)
        rl2, config, result["rl2_training"] = rl2_from_run(run.run_dir)
        result["rl2_training"]["training_minutes"] = (time.perf_counter() - started) / 60
    test_tasks = family.split(seed=config.split_seed, num_tasks=config.num_tasks).test[: args.test_tasks]

    agents: dict[str, Any] = {
        agent_name: make_classical_agent(agent_name, family, num_episodes, seed=args.seed)
        for agent_name in classical_agent_names(family)
    }
    if rl2 is not None:
        rl2.policy.eval()
        agents["rl2"] = rl2
    result["agents"] = {}
    for agent_name, agent in agents.items():
        torch.manual_seed(args.seed)  # RL² samples its actions from torch's global generator
        started = time.perf_counter()
        batch = evaluate_policy(family, test_tasks, num_episodes, agent, seed=args.seed)
        summary = summarize(batch.trial_returns)
        summary["eval_seconds"] = time.perf_counter() - started
        summary["paper"] = cell.paper.get(agent_name)
        result["agents"][agent_name] = summary
        print(f"{name:16s} {agent_name:14s} {summary['mean']:8.2f} ± {summary['ci95']:.2f}", flush=True)
    return result


def render_markdown(results: dict[str, dict[str, Any]], command: str) -> str:
    """The tables: one per cell, every agent's mean ± 95% CI beside the paper's number."""
    lines = [
        "# RL² paper, Tables 1 and 2, reproduced",
        "",
        "Total reward over a trial of n episodes on held-out **test** tasks (never seen in training or model",
        "selection): mean ± 95% confidence interval over the tasks, one trial per task. Produced by",
        f"`{command}` (cells accumulate across invocations; each cell names its own training command).",
        "The paper's UCB1 is our `ucb1_prior` (Beta-prior means in place of the forced first pulls and a tuned",
        "exploration constant); the classic `ucb1` that first pulls every arm once is shown beside it. The paper's",
        "PSRL is matched by `psrl_zero_prior` (a N(0, 1) prior on the mean rewards); `psrl` uses the family's true",
        "N(1, 1) prior. Baseline settings are documented in `agents/classical.py`. Training minutes are the sum of",
        "each run's timed phases; runs that shared the two cores with other runs took longer than they would alone.",
        "",
    ]
    for name in CELLS:
        if name not in results:
            continue
        result = results[name]
        lines += [f"## {result['table']}", ""]
        training = result.get("rl2_training")
        if training is None:
            steps = result.get("planned_env_steps")  # absent from cells written by older versions of this script
            estimate = (
                ""
                if steps is None
                else f" ({steps / 1e6:.1f}M env steps, about {steps / ESTIMATE_STEPS_PER_SECOND / 60:.0f} min at "
                f"{ESTIMATE_STEPS_PER_SECOND / 1000:.0f}k steps/s)"
            )
            lines.append(f"RL²: not trained here; command: `{result['train_command']}`{estimate}.")
        else:
            minutes = training.get("training_minutes")
            lines.append(
                f"RL² trained with `{result['train_command']}` (GRU {training['rl2_hidden_size']}): "
                f"{training['iterations']} iterations, {training['env_steps'] / 1e6:.1f}M env steps, "
                f"{'?' if minutes is None else f'{minutes:.0f}'} min on this machine (2-core CPU)."
            )
        lines += ["", "| agent | ours | paper | tasks |", "|---|---|---|---|"]
        for agent_name, summary in result["agents"].items():
            paper = "" if summary["paper"] is None else f"{summary['paper']:.1f}"
            lines.append(
                f"| {agent_name} | {summary['mean']:.2f} ± {summary['ci95']:.2f} | {paper} | {summary['tasks']} |"
            )
        missing = [agent for agent in CELLS[name].paper if agent not in result["agents"]]
        for agent_name in missing:
            lines.append(f"| {agent_name} | not run | {CELLS[name].paper[agent_name]:.1f} | |")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS), help="cells (default: all)")
    parser.add_argument(
        "--run", action="append", default=[], metavar="CELL=RUN_DIR", help="evaluate this run folder for CELL"
    )
    parser.add_argument(
        "--no-train", dest="train", action="store_false", help="do not train RL² for cells without --run"
    )
    parser.add_argument(
        "--train-override", action="append", default=[], metavar="KEY=VALUE", help="override the presets' fields"
    )
    parser.add_argument(
        "--test-tasks", type=int, default=None, help="held-out tasks per cell (default: the whole test split; >= 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (env resets, agents' randomness)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown output; the JSON goes beside it")
    parser.add_argument("--allow-few-tasks", action="store_true", help="accept --test-tasks below 1000 (smoke tests)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    set_threads(1)
    runs: dict[str, Path] = {}
    for item in args.run:
        cell, sep, path = item.partition("=")
        if not sep or cell not in CELLS:
            parser.error(f"--run {item!r}: expected CELL=RUN_DIR with CELL one of {', '.join(CELLS)}")
        if not (Path(path) / "config.json").is_file():
            parser.error(f"--run {item!r}: {path} is not a run folder (no config.json)")
        runs[cell] = Path(path)
        run_config = load_run_config(path)
        mismatch = _differences(run_config, load_config(CELLS[cell].preset), EXPERIMENT_FIELDS)
        if mismatch:
            parser.error(f"--run {item!r}: the run is another experiment than the cell's preset: {mismatch}")
    if args.test_tasks is not None and (
        args.test_tasks < 1 or (args.test_tasks < MIN_TEST_TASKS and not args.allow_few_tasks)
    ):
        parser.error(f"--test-tasks must be >= {MIN_TEST_TASKS} (or pass --allow-few-tasks), got {args.test_tasks}")
    for name in dict.fromkeys([*args.cells, *runs]):  # bad overrides and too small test splits fail before any work
        try:
            config = load_config(CELLS[name].preset, args.train_override)
        except ValueError as error:
            parser.error(str(error))
        family = make_family(config.family, **config.family_kwargs)
        available = len(family.split(seed=config.split_seed, num_tasks=config.num_tasks).test)
        if available < (args.test_tasks or (1 if args.allow_few_tasks else MIN_TEST_TASKS)):
            parser.error(f"cell {name}: its test split holds {available} tasks, fewer than asked for")

    json_path = args.out.with_suffix(".json")
    results = json.loads(json_path.read_text())["cells"] if json_path.is_file() else {}
    for name in dict.fromkeys([*args.cells, *runs]):
        results[name] = run_cell(name, args, runs)
        results[name]["evaluated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        # write after every cell: a crash later never loses the cells already evaluated
        command = shlex.join(["python", "scripts/reproduce_rl2.py", *argv])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(json_path, json.dumps({"command": command, "cells": results}, indent=2))
        write_text_atomically(args.out, render_markdown(results, "python scripts/reproduce_rl2.py"))
    print(f"wrote {args.out} and {json_path}")
    return results


if __name__ == "__main__":
    main()
