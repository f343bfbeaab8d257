"""Fast adaptation on held-out tasks: one evaluation protocol for every agent, its statistics and its reports.

Every meta-agent says how it adapts to a task it has never seen through one method of its protocol
(:class:`metarl.agent.MetaAgent`), ``adaptation_curve(tasks, rng, num_points) -> AdaptationCurve``: the mean episode
return of each task at each point of its adaptation (MAML: before adaptation and after each gradient step; RL²: each
episode of a trial, its hidden state carried across them), and the share of those episodes that succeeded where the
family defines success (``info["success"]``). The evaluator runs it on a split of the family (the held-out *test*
split by default, never seen in training or model selection) for several evaluation seeds, and reports the mean over
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

from metarl.agent import AdaptationCurve, CurveKind
from metarl.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, write_bytes_atomically, write_text_atomically
from metarl.device import resolve_device
from metarl.presets import load_run_config
from metarl.registry import make_agent, make_family
from metarl.run_folder import RunIdentity, load_run_checkpoint, read_run_id
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
    curve_kind: CurveKind
    """``step`` (return after k adaptation steps, from 0) or ``episode`` (return of the k-th episode, from 1)."""
    points: tuple[int, ...]
    """The x axis: adaptation steps 0..K or episode numbers 1..n."""
    task_indices: tuple[int, ...]
    """Which tasks of the split were evaluated (their positions in it)."""
    seeds: tuple[int, ...]
    """Evaluation seeds."""
    returns: np.ndarray
    """``[num_seeds, num_points, num_tasks]`` mean episode return of each task at each point."""
    success: np.ndarray | None = None
    """``[num_seeds, num_points, num_tasks]`` share of each task's episodes that succeeded at each point, or
    ``None`` when the family does not define success."""
    foreign_checkpoint: dict[str, Any] | None = None
    """The identity (:class:`metarl.run_folder.RunIdentity`) of the run whose checkpoint was evaluated in this run,
    when it is another run's, evaluated on purpose (``allow_foreign``, ``--foreign-checkpoint``); ``None``: the run's
    own parameters."""
    task_pool: int | None = None
    """The size of the pool the split was drawn from when it was not the run's ``num_tasks`` (``task_pool``; the
    run's training tasks then left out of it); ``None``: the run's own split."""

    def per_task(self) -> np.ndarray:
        """``[num_points, num_tasks]``: each task's return averaged over the evaluation seeds."""
        return self.returns.mean(axis=0)

    def per_task_success(self) -> np.ndarray | None:
        """``[num_points, num_tasks]``: each task's success rate averaged over the evaluation seeds (or ``None``)."""
        return None if self.success is None else self.success.mean(axis=0)

    def summary(self) -> list[dict[str, float]]:
        """Per point: the mean return over tasks and its 95 % bootstrap confidence interval (tasks resampled); where
        the family defines success, the success rate (``success``) and its interval likewise."""
        rows = []
        success = self.per_task_success()
        for k, point in enumerate(self.points):
            values = self.per_task()[k]
            low, high = bootstrap_ci(values)
            row = {"point": point, "mean": float(values.mean()), "ci_low": low, "ci_high": high}
            if success is not None:
                success_low, success_high = bootstrap_ci(success[k])
                row.update(success=float(success[k].mean()), success_ci_low=success_low, success_ci_high=success_high)
            rows.append(row)
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
    allow_foreign: bool = False,
    task_pool: int | None = None,
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
        allow_foreign: evaluate the checkpoint even when it belongs to another run (a transfer experiment: another
            run's parameters on this run's family and tasks); it says so on stderr, and the evaluation records that
            run's identity (``foreign_checkpoint``). Without it such a checkpoint is refused.
        task_pool: draw the split from a pool of this many tasks instead of the run's ``num_tasks`` (more held-out
            tasks than the run's own split has; the test tasks of another run trained with that ``num_tasks``, to
            compare on the same tasks); the tasks the run trained on are left out of it.

    Raises:
        ValueError: a bad argument, a missing run folder, or a checkpoint that is unreadable or another run's (all
            checked before anything is evaluated).
    """
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
        raise ValueError(f"no run folder at {run_dir}; pass a folder made by metarl train")
    config = load_run_config(run_dir)
    state, foreign = _checked_checkpoint(run_dir, checkpoint, config, allow_foreign)
    num_tasks = check_count("num_tasks", config.test_tasks if num_tasks is None else num_tasks)
    family = make_family(config.family, **config.family_kwargs)
    split_tasks = family.split(seed=config.split_seed, num_tasks=config.num_tasks)[split]
    if task_pool is not None and task_pool != config.num_tasks:
        task_pool = check_count("task_pool", task_pool, minimum=2)
        trained = set(family.split(seed=config.split_seed, num_tasks=config.num_tasks).train)
        split_tasks = tuple(task for task in family.split(seed=config.split_seed, num_tasks=task_pool)[split])
        if split != "train":  # held-out tasks stay held out: the run's training tasks are left out of the pool's
            split_tasks = tuple(task for task in split_tasks if task not in trained)
    else:
        task_pool = None
    if num_tasks > len(split_tasks) and family.num_distinct_tasks is None:
        pool = "" if task_pool is None else f" (a pool of {task_pool}, the run's training tasks left out)"
        raise ValueError(f"num_tasks {num_tasks} exceeds the {len(split_tasks)} tasks of the {split} split{pool}")
    task_indices = tuple(i % len(split_tasks) for i in range(num_tasks))
    tasks = [split_tasks[i] for i in task_indices]

    agent = make_agent(config, family, resolve_device(device, fix="use device='auto' or device='cpu'"))
    try:
        agent.load_state_dict(state["agent"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"{run_dir / CHECKPOINTS[checkpoint]} does not hold this run's agent ({config.algo} on {config.family}): "
            f"{' '.join(str(error).split())[:300]}"
        ) from error
    num_points = agent.default_num_points() if num_points is None else check_count("num_points", num_points)
    if foreign is not None:
        print(
            f"{run_dir / CHECKPOINTS[checkpoint]} belongs to run {foreign.label()}: evaluating another run's "
            f"parameters on {config.family} on purpose (foreign checkpoint)",
            file=sys.stderr,
            flush=True,
        )

    curves: list[AdaptationCurve] = []
    for seed in seeds:
        started = time.perf_counter()
        seed_everything(seed)  # the actions the agent samples
        rng = np.random.default_rng([seed, 2**21])  # the envs' resets
        curve = agent.adaptation_curve(tasks, rng, num_points)
        if curve.returns.shape != (num_points, num_tasks):
            raise RuntimeError(
                f"{type(agent).__name__}.adaptation_curve returned returns shaped {curve.returns.shape}, "
                f"expected {(num_points, num_tasks)}"
            )
        curves.append(curve)
        if progress:
            success = "" if curve.success is None else f", success {curve.success[-1].mean():.1%}"
            print(
                f"  {name or run_dir.name}: seed {seed}, {num_tasks} {split} tasks, {num_points} points: "
                f"last point {curve.returns[-1].mean():.2f}{success} ({time.perf_counter() - started:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    first = agent.curve_kind.first_point
    return Evaluation(
        name=name or run_dir.name,
        run_dir=str(run_dir),
        checkpoint=checkpoint,
        algo=config.algo,
        family=config.family,
        split=split,
        curve_kind=agent.curve_kind,
        points=tuple(range(first, first + num_points)),
        task_indices=task_indices,
        seeds=seeds,
        returns=np.stack([curve.returns for curve in curves]),
        success=None if curves[0].success is None else np.stack([curve.success for curve in curves]),
        foreign_checkpoint=None if foreign is None else foreign.to_dict(),
        task_pool=task_pool,
    )


def check_run(run: str | Path, *, checkpoint: str = "best", allow_foreign: bool = False) -> RunIdentity | None:
    """Check, reading only, that :func:`evaluate_run` can evaluate ``run``: a run folder with a valid
    ``config.json``, a registered family and algorithm, and the checkpoint readable and this run's (another run's
    only with ``allow_foreign``). ``metarl evaluate`` checks every run this way before it evaluates any.

    Returns:
        The identity of the run the checkpoint belongs to when it is another's (``allow_foreign``), else ``None``.

    Raises:
        ValueError: what :func:`evaluate_run` would raise for these, in one line naming the file.
    """
    run_dir = Path(run)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {sorted(CHECKPOINTS)}, got {checkpoint!r}")
    config = load_run_config(run_dir)
    _, foreign = _checked_checkpoint(run_dir, checkpoint, config, allow_foreign)
    make_family(config.family, **config.family_kwargs)
    return foreign


def _checked_checkpoint(
    run_dir: Path, checkpoint: str, config: Any, allow_foreign: bool
) -> tuple[dict[str, Any], RunIdentity | None]:
    """The checkpoint ``checkpoint`` (``best`` or ``last``) of ``run_dir``, read with the weights-only unpickler and
    checked to be this run's; and the identity of its run when it is another's and ``allow_foreign``."""
    name = CHECKPOINTS[checkpoint]
    if not (run_dir / name).is_file():
        other = "last" if checkpoint == "best" else "best"
        raise ValueError(
            f"{run_dir} has no checkpoint {name} (was the run trained to its first "
            f"{'evaluation' if checkpoint == 'best' else 'checkpoint'}?); try --checkpoint {other}"
        )
    fix = (
        f"put the run's own {name} back, or evaluate another run's parameters on purpose with --foreign-checkpoint "
        "(evaluate_run(..., allow_foreign=True))"
    )
    return load_run_checkpoint(run_dir, name, config, read_run_id(run_dir), fix=fix, allow_foreign=allow_foreign)


# -- reports -------------------------------------------------------------------------------------------------------
def evaluation_to_json(evaluation: Evaluation) -> dict[str, Any]:
    """Every number of one evaluation, JSON-ready: settings, the summary per point and each task's values."""
    fields = {
        field.name: getattr(evaluation, field.name)
        for field in dataclasses.fields(evaluation)
        if field.name not in ("returns", "success")
    }
    if fields["foreign_checkpoint"] is None:  # recorded only where another run's parameters were evaluated
        del fields["foreign_checkpoint"]
    if fields["task_pool"] is None:  # recorded only where the split came from another pool than the run's
        del fields["task_pool"]
    document = {
        **{key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()},
        "confidence": CONFIDENCE,
        "summary": evaluation.summary(),
        "per_task": evaluation.per_task().T.tolist(),
        "per_seed_task": evaluation.returns.tolist(),
    }
    if evaluation.success is not None:
        document["per_task_success"] = evaluation.per_task_success().T.tolist()
        document["per_seed_task_success"] = evaluation.success.tolist()
    return document


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
    """One row per agent, point and task (the return, and the success rate where the family defines success,
    averaged over seeds), then one summary row per agent and point (``task`` empty) with the means and their
    confidence intervals."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "agent",
            "curve",
            "point",
            "task",
            "return",
            "ci_low",
            "ci_high",
            "success",
            "success_ci_low",
            "success_ci_high",
        ]
    )
    for evaluation in evaluations:
        per_task, success = evaluation.per_task(), evaluation.per_task_success()
        for k, point in enumerate(evaluation.points):
            for j, task_index in enumerate(evaluation.task_indices):
                task_success = "" if success is None else repr(success[k, j])
                task_return = repr(per_task[k, j])
                writer.writerow(
                    [
                        evaluation.name,
                        evaluation.curve_kind,
                        point,
                        task_index,
                        task_return,
                        "",
                        "",
                        task_success,
                        "",
                        "",
                    ]
                )
        for row in evaluation.summary():
            name, label, point = evaluation.name, evaluation.curve_kind, row["point"]
            success_cells = [row.get(key, "") for key in ("success", "success_ci_low", "success_ci_high")]
            writer.writerow([name, label, point, "", row["mean"], row["ci_low"], row["ci_high"], *success_cells])
    return buffer.getvalue()


def comparison_table(evaluations: Sequence[Evaluation]) -> str:
    """A plain-text table: one line per agent, the mean return at each point with its 95 % interval, and the
    success rate with its interval where the family defines success."""
    width = max(len(evaluation.name) for evaluation in evaluations)
    lines = []
    for evaluation in evaluations:
        cells = []
        for row in evaluation.summary():
            interval = f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
            cell = f"{evaluation.curve_kind} {row['point']}: {row['mean']:.2f} {interval}"
            if "success" in row:
                cell += f" success {row['success']:.0%} [{row['success_ci_low']:.0%}, {row['success_ci_high']:.0%}]"
            cells.append(cell)
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
    has ``"ci_low"`` and ``"ci_high"``. Curves with ``"success"`` (and ``"success_ci_low"`` / ``"success_ci_high"``)
    also get a line in a second panel, the success rate. Drawn off-screen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    with_success = any("success" in curve for curve in curves)
    figure, panels = plt.subplots(1, 2 if with_success else 1, figsize=(11.0 if with_success else 6.4, 4.2))
    panels = list(np.atleast_1d(panels))
    for panel, key, y_label in zip(panels, ("mean", "success"), ("mean episode return", "success rate"), strict=False):
        for index, curve in enumerate(curves):
            if key not in curve:
                continue
            color = f"C{index}"  # an agent keeps its colour across panels
            panel.plot(curve["points"], curve[key], marker="o", label=curve["name"], color=color)
            low, high = ("ci_low", "ci_high") if key == "mean" else ("success_ci_low", "success_ci_high")
            if low in curve:
                panel.fill_between(curve["points"], curve[low], curve[high], alpha=0.2, color=color)
        panel.set_xlabel(x_label)
        panel.set_ylabel(y_label)
        panel.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        panel.grid(alpha=0.3)
        panel.legend(fontsize="small")
    if with_success:
        panels[1].yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    figure.suptitle(title) if with_success else panels[0].set_title(title)
    figure.tight_layout()
    return figure


def plot_evaluations(evaluations: Sequence[Evaluation], path: Path) -> None:
    """The adaptation curves, one line per agent with its confidence band, to a PNG (written atomically)."""
    import matplotlib.pyplot as plt

    curves = []
    for evaluation in evaluations:
        summary = evaluation.summary()
        curve = {"name": evaluation.name, "points": [row["point"] for row in summary]}
        curve.update({key: [row[key] for row in summary] for key in summary[0] if key != "point"})
        curves.append(curve)
    x_label = " / ".join(sorted({evaluation.curve_kind.axis_label for evaluation in evaluations}))
    families = ", ".join(sorted({evaluation.family for evaluation in evaluations}))
    figure = curve_figure(curves, x_label, f"{families}: {evaluations[0].split} tasks")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    write_bytes_atomically(path, buffer.getvalue())


def write_evaluation(evaluations: Sequence[Evaluation], out_dir: Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.csv`` and ``<stem>.png`` into ``out_dir`` (atomically) and return their paths."""
    out_dir = Path(out_dir)
    paths = {suffix: out_dir / f"{stem}.{suffix}" for suffix in ("json", "csv", "png")}
    document = {"agents": [evaluation_to_json(evaluation) for evaluation in evaluations]}
    write_text_atomically(
        paths["json"],
        _dumps_with_compact_arrays(
            document, ("per_task", "per_seed_task", "per_task_success", "per_seed_task_success")
        ),
    )
    write_text_atomically(paths["csv"], evaluations_csv(evaluations))
    plot_evaluations(evaluations, paths["png"])
    return paths


__all__ = [
    "AdaptationCurve",
    "Evaluation",
    "bootstrap_ci",
    "check_run",
    "comparison_table",
    "evaluate_run",
    "evaluations_csv",
    "plot_evaluations",
    "write_evaluation",
]
