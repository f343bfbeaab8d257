"""Fast adaptation on held-out tasks: one evaluation protocol for every agent, its statistics and its reports.

Every meta-agent says how it adapts to a task it has never seen through one method,
``adaptation_returns(tasks, rng, num_points) -> [num_points, num_tasks]``: the mean episode return of each task at
each point of its adaptation (MAML: before adaptation and after each gradient step; RL²: each episode of a trial,
its hidden state carried across them). The evaluator runs it on a split of the family (the held-out *test* split
by default, never seen in training or model selection) for several evaluation seeds, and reports the mean over
tasks with a 95 % bootstrap confidence interval, and every per-task number.

Usage::

    result = evaluate_run("runs/MetaRL_Navigation2D-v0__maml-trpo__0__...", num_points=4, seeds=(0, 1, 2))
    write_evaluation([result], Path("runs/.../evaluation"), "test-best")   # JSON, CSV and PNG
    print(comparison_table([result]))
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metarl.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint, write_text_atomically
from metarl.config import load_run_config
from metarl.device import resolve_device
from metarl.registry import make_family
from metarl.seeding import seed_everything
from metarl.tasks import check_count

SPLITS = ("test", "validation", "train")
CHECKPOINTS = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One agent's adaptation curve on one split: every number the reports are made of."""

    name: str
    """How the agent is called in tables and plots (the run folder's name by default)."""
    run_dir: str
    checkpoint: str
    """``best`` (kept by validation) or ``last``."""
    algo: str
    family: str
    split: str
    curve_label: str
    """``step`` (return after k adaptation steps, from 0) or ``episode`` (return of the k-th episode, from 1)."""
    points: tuple[int, ...]
    """The x axis: adaptation steps 0..K or episode numbers 1..n."""
    task_indices: tuple[int, ...]
    """Which tasks of the split were evaluated (their positions in it)."""
    seeds: tuple[int, ...]
    """Evaluation seeds."""
    returns: np.ndarray
    """``[num_seeds, num_points, num_tasks]`` mean episode return of each task at each point."""

    def per_task(self) -> np.ndarray:
        """``[num_points, num_tasks]``: each task's return averaged over the evaluation seeds."""
        return self.returns.mean(axis=0)

    def summary(self) -> list[dict[str, float]]:
        """Per point: the mean over tasks and its 95 % bootstrap confidence interval (tasks resampled)."""
        rows = []
        for k, point in enumerate(self.points):
            values = self.per_task()[k]
            low, high = bootstrap_ci(values)
            rows.append({"point": point, "mean": float(values.mean()), "ci_low": low, "ci_high": high})
        return rows


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values``.

    Args:
        values: one number per unit of observation (per task here), at least one, all finite.
        confidence: the interval's coverage, in (0, 1).
        resamples: bootstrap resamples (with replacement, of the same size).
        seed: seeds the resampling, so that the same values always give the same interval.

    Returns:
        ``(low, high)``; both equal the value itself for a single value.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D array of finite values, got {values!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    check_count("resamples", resamples)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def evaluate_run(
    run: str | Path,
    *,
    split: str = "test",
    num_tasks: int | None = None,
    num_points: int | None = None,
    seeds: Sequence[int] = (0,),
    checkpoint: str = "best",
    name: str | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> Evaluation:
    """Evaluate the agent of a run folder on ``split``: its adaptation curve on each task, for each seed.

    Args:
        run: a run folder written by ``metarl train``.
        split: ``test`` (held out: the default), ``validation`` or ``train``.
        num_tasks: the first this many tasks of the split (default: the run's ``test_tasks``); a family with only a
            few tasks cycles through them.
        num_points: adaptation points: steps 0..num_points-1 for MAML (default the run's ``eval_steps`` + 1),
            episodes 1..num_points of a trial for RL² (default the run's ``trial_episodes``).
        seeds: evaluation seeds (environment resets, sampled actions); each gives one curve per task.
        checkpoint: ``best`` (the parameters kept by validation) or ``last``.
        name: the agent's name in reports (default: the run folder's name).
        device: where the agent runs (``cpu``, ``cuda`` or ``auto``).
        progress: print a line per seed to stderr (seconds, mean return at the last point).

    Raises:
        ValueError: a bad argument, a missing run folder, or a checkpoint that is not this run's (all checked
            before anything is evaluated).
    """
    from metarl.trainer import make_agent  # imported here: the command line loads this module for its choices

    run_dir = Path(run)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {sorted(CHECKPOINTS)}, got {checkpoint!r}")
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    for seed in seeds:
        check_count("evaluation seed", seed, minimum=0)
    if not run_dir.is_dir():
        raise ValueError(f"no run folder at {run_dir}")
    config = load_run_config(run_dir)
    num_tasks = check_count("num_tasks", config.test_tasks if num_tasks is None else num_tasks)
    family = make_family(config.family, **config.family_kwargs)
    split_tasks = family.split(seed=config.split_seed, num_tasks=config.num_tasks)[split]
    if num_tasks > len(split_tasks) and family.num_distinct_tasks is None:
        raise ValueError(f"num_tasks {num_tasks} exceeds the {len(split_tasks)} tasks of the {split} split")
    task_indices = tuple(i % len(split_tasks) for i in range(num_tasks))
    tasks = [split_tasks[i] for i in task_indices]

    agent = make_agent(config, family, resolve_device(device))
    state = _load_agent_state(run_dir / CHECKPOINTS[checkpoint], run_dir)
    try:
        agent.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"{run_dir / CHECKPOINTS[checkpoint]} does not hold this run's agent ({config.algo} on {config.family}): "
            f"{error}"
        ) from error
    num_points = agent.default_num_points() if num_points is None else check_count("num_points", num_points)

    returns = []
    for seed in seeds:
        started = time.perf_counter()
        seed_everything(seed)  # the actions the agent samples
        rng = np.random.default_rng([seed, 2**21])  # the envs' resets
        curve = np.asarray(agent.adaptation_returns(tasks, rng, num_points), dtype=np.float64)
        returns.append(curve)
        if progress:
            print(
                f"  {name or run_dir.name}: seed {seed}, {num_tasks} {split} tasks, {num_points} points: "
                f"last point {curve[-1].mean():.2f} ({time.perf_counter() - started:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    first = 0 if agent.curve_label == "step" else 1
    return Evaluation(
        name=name or run_dir.name,
        run_dir=str(run_dir),
        checkpoint=checkpoint,
        algo=config.algo,
        family=config.family,
        split=split,
        curve_label=agent.curve_label,
        points=tuple(range(first, first + num_points)),
        task_indices=task_indices,
        seeds=seeds,
        returns=np.stack(returns),
    )


def _load_agent_state(path: Path, run_dir: Path) -> dict[str, Any]:
    """The agent state of a checkpoint, read with the weights-only unpickler; anything else is a clear error."""
    if not path.is_file():
        raise ValueError(f"{run_dir} has no checkpoint {path.name} (was the run trained to its first evaluation?)")
    try:
        checkpoint = load_checkpoint(path)
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise ValueError(f"{path} is not a readable metarl checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("agent"), dict):
        raise ValueError(f"{path} is not a metarl checkpoint: it holds no agent state")
    return checkpoint["agent"]


# -- reports -------------------------------------------------------------------------------------------------------
def evaluation_to_json(evaluation: Evaluation) -> dict[str, Any]:
    """Every number of one evaluation, JSON-ready: settings, the summary per point and each task's values."""
    fields = {
        field.name: getattr(evaluation, field.name)
        for field in dataclasses.fields(evaluation)
        if field.name != "returns"
    }
    return {
        **{key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()},
        "confidence": CONFIDENCE,
        "summary": evaluation.summary(),
        "per_task": evaluation.per_task().T.tolist(),
        "per_seed_task": evaluation.returns.tolist(),
    }


def _dumps_with_compact_arrays(document: dict[str, Any], array_keys: Sequence[str]) -> str:
    """JSON with two-space indents, except that the (large) arrays under ``array_keys`` each take one line."""
    arrays: dict[str, str] = {}

    def placeholder(value: Any) -> str:
        key = f"@@array{len(arrays)}@@"
        arrays[key] = json.dumps(value, separators=(",", ":"))
        return key

    def replace(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: placeholder(v) if k in array_keys else replace(v) for k, v in node.items()}
        if isinstance(node, list):
            return [replace(item) for item in node]
        return node

    text = json.dumps(replace(document), indent=2)
    for key, array in arrays.items():
        text = text.replace(f'"{key}"', array)
    return text + "\n"


def evaluations_csv(evaluations: Sequence[Evaluation]) -> str:
    """One row per agent, point and task (the return averaged over seeds), then one summary row per agent and point
    (``task`` empty) with the mean and its confidence interval."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["agent", "curve", "point", "task", "return", "ci_low", "ci_high"])
    for evaluation in evaluations:
        per_task = evaluation.per_task()
        for k, point in enumerate(evaluation.points):
            for j, task_index in enumerate(evaluation.task_indices):
                writer.writerow(
                    [evaluation.name, evaluation.curve_label, point, task_index, repr(per_task[k, j]), "", ""]
                )
        for row in evaluation.summary():
            writer.writerow(
                [evaluation.name, evaluation.curve_label, row["point"], "", row["mean"], row["ci_low"], row["ci_high"]]
            )
    return buffer.getvalue()


def comparison_table(evaluations: Sequence[Evaluation]) -> str:
    """A plain-text table: one line per agent, the mean return at each point with its 95 % interval."""
    width = max(len(evaluation.name) for evaluation in evaluations)
    lines = []
    for evaluation in evaluations:
        cells = [
            f"{evaluation.curve_label} {row['point']}: {row['mean']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
            for row in evaluation.summary()
        ]
        lines.append(f"{evaluation.name:<{width}}  " + "  ".join(cells))
    tasks = {len(evaluation.task_indices) for evaluation in evaluations}
    splits = {evaluation.split for evaluation in evaluations}
    header = (
        f"mean episode return on {'/'.join(sorted(map(str, tasks)))} {'/'.join(sorted(splits))} tasks "
        f"[{CONFIDENCE:.0%} bootstrap interval over tasks]"
    )
    return "\n".join([header, *lines])


def curve_figure(curves: Sequence[dict[str, Any]], x_label: str, title: str) -> Any:
    """A matplotlib figure of adaptation curves: each ``{"name", "points", "mean"}`` a line, with a band where it
    has ``"ci_low"`` and ``"ci_high"``. Drawn off-screen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for curve in curves:
        axes.plot(curve["points"], curve["mean"], marker="o", label=curve["name"])
        if "ci_low" in curve:
            axes.fill_between(curve["points"], curve["ci_low"], curve["ci_high"], alpha=0.2)
    axes.set_xlabel(x_label)
    axes.set_ylabel("mean episode return")
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def x_axis_label(curve_label: str) -> str:
    """What the points of a curve are: adaptation steps (MAML) or episodes of a trial (RL²)."""
    return "adaptation steps" if curve_label == "step" else "episode of the trial"


def plot_evaluations(evaluations: Sequence[Evaluation], path: Path) -> None:
    """The adaptation curves, one line per agent with its confidence band, to a PNG (written atomically)."""
    import matplotlib.pyplot as plt

    curves = []
    for evaluation in evaluations:
        summary = evaluation.summary()
        curves.append(
            {"name": evaluation.name, **{key: [row[key] for row in summary] for key in ("mean", "ci_low", "ci_high")}}
        )
        curves[-1]["points"] = [row["point"] for row in summary]
    x_label = " / ".join(sorted({x_axis_label(evaluation.curve_label) for evaluation in evaluations}))
    families = ", ".join(sorted({evaluation.family for evaluation in evaluations}))
    figure = curve_figure(curves, x_label, f"{families}: {evaluations[0].split} tasks")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(buffer.getvalue())
    temporary.replace(path)


def write_evaluation(evaluations: Sequence[Evaluation], out_dir: Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.csv`` and ``<stem>.png`` into ``out_dir`` (atomically) and return their paths."""
    out_dir = Path(out_dir)
    paths = {suffix: out_dir / f"{stem}.{suffix}" for suffix in ("json", "csv", "png")}
    document = {"agents": [evaluation_to_json(evaluation) for evaluation in evaluations]}
    write_text_atomically(paths["json"], _dumps_with_compact_arrays(document, ("per_task", "per_seed_task")))
    write_text_atomically(paths["csv"], evaluations_csv(evaluations))
    plot_evaluations(evaluations, paths["png"])
    return paths


__all__ = [
    "Evaluation",
    "bootstrap_ci",
    "comparison_table",
    "evaluate_run",
    "evaluations_csv",
    "plot_evaluations",
    "write_evaluation",
]
