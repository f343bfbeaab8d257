"""What a meta-training run says on the terminal: every line ``metarl train`` prints is made here.

* At the start, one block (:func:`start_lines`): the family and its kwargs, the algorithm, the device and threads, the
  iterations (and where a resumed run picks up), the env steps of one iteration and the run folder.
* Each iteration, one line (:class:`Progress`): the returns of the meta-batch's *train* tasks, labelled by the
  agent's ``progress_metrics``, the seconds per iteration and an estimate of the time left. On a terminal the line is
  rewritten in place; otherwise (a log file, a pipe) one plain line every :func:`report_every` iterations, and always
  the first and the last.
* At each validation, one line: the validation curve and whether it became the best, i.e. which iteration ``best.pt``
  now holds.
* At the end, the held-out test table (:func:`run_report`): the number of test tasks, each point's mean return with
  its 95 % bootstrap interval over tasks, which checkpoint each row used, and the time of the run across resumes.

Progress goes to stderr, the final table to stdout, so that a script captures the result alone. The ``progress``
config field turns the progress lines off for a run (it is saved in ``config.json`` and kept on resume);
``metarl train --quiet`` turns every line but errors off for one invocation (:func:`quiet`) and prints the run folder
alone at the end. Nothing here draws from a shared random generator: the bootstrap intervals use their own seeded one,
so printing or not never changes a run.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import math
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import torch

from metarl.agent import CurveKind
from metarl.evaluate import CONFIDENCE, bootstrap_ci

if TYPE_CHECKING:
    from metarl.config import RunConfig
    from metarl.trainer import RunResult

PLAIN_LINES = 40
"""Off a terminal, at most about this many per-iteration lines per run (plus the first and the last)."""
ETA_WINDOW = 10
"""The time left is the mean of this many most recent iterations times the iterations left."""
SHOWN_POINTS = 6
"""A curve with more points shows its first three and last two."""
BOOTSTRAP_SEED = 0
"""The end table's intervals resample tasks with this seed: the same returns always give the same intervals."""

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("metarl_console_quiet", default=False)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Within it, runs print no progress (start block, iteration and validation lines), whatever their ``progress``
    field says; warnings about skipped updates and errors still go to stderr. ``metarl train --quiet`` trains in
    it."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def is_quiet() -> bool:
    """Whether :func:`quiet` is in force."""
    return _QUIET.get()


def warn(message: str) -> None:
    """A line on stderr that is shown even under :func:`quiet` (a skipped meta-update, say)."""
    print(message, file=sys.stderr, flush=True)


# -- formatting -------------------------------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    """``42s``, ``4m05s``, ``2h07m``; ``?`` for a negative or non-finite number."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def eta_text(recent_seconds: Sequence[float], iterations_left: int) -> str:
    """``ETA 4m05s``: the mean of the ``recent_seconds`` per iteration times the ``iterations_left``; ``ETA ?`` before
    any iteration was timed."""
    if iterations_left <= 0:
        return "ETA 0s"
    if not recent_seconds:
        return "ETA ?"
    return f"ETA {format_duration(sum(recent_seconds) / len(recent_seconds) * iterations_left)}"


def report_every(total: int, lines: int = PLAIN_LINES) -> int:
    """The interval of the plain per-iteration lines: the smallest of 1, 2, 5, 10, 20, 25, 50, 100, 200, 250, ...
    that gives at most ``lines`` lines over ``total`` iterations (a 500-iteration run: every 20th, 25 lines)."""
    step, scale = 1, 1
    while total / step > lines:
        candidates = [m * scale for m in (1, 2, 2.5, 5) if float(m * scale).is_integer() and m * scale > step]
        if candidates:
            step = int(candidates[0])
        else:
            scale *= 10
    return step


def shows_iteration(done: int, total: int, first: int, every: int) -> bool:
    """Whether the plain (not a terminal) output has a line for iteration ``done``: the first of this invocation
    (``first``), the last, and every ``every``-th."""
    return done == first or done == total or done % every == 0


def curve_text(kind: CurveKind, curve: Sequence[float], precision: int = 2) -> str:
    """``steps 0..1: -40.12 -18.30`` or ``episodes 1..100: 0.50 0.61 0.62 ... 0.70 0.71`` (a long curve shortened)."""
    first = kind.first_point
    points = f"{kind}s {first}..{first + len(curve) - 1}" if len(curve) > 1 else f"{kind} {first}"
    values = [f"{value:.{precision}f}" for value in curve]
    if len(values) > SHOWN_POINTS:
        values = [*values[:3], "...", *values[-2:]]
    return f"{points}: {' '.join(values)}"


def metric_label(key: str) -> str:
    """A progress metric's short name: ``meta/return_step_1`` -> ``step_1``, ``meta/trial_return`` ->
    ``trial_return`` (the TensorBoard key's last part, so that the plot is easy to find)."""
    return key.split("/")[-1].replace("return_", "")


def iteration_line(
    done: int,
    total: int,
    metrics: Mapping[str, float],
    shown: Sequence[str],
    eta: str,
) -> str:
    """``iter    12/500  train tasks: pre_adapt   -40.10  step_1   -18.20  ETA 9m51s  [1.23 s/it]``: the returns
    on this iteration's meta-batch of train tasks (the metrics that start with one of ``shown``), the env steps where
    the agent counts them (``meta/env_steps``), the time left and the wall time of the iteration."""
    returns = "  ".join(
        f"{metric_label(key)} {value:8.2f}" for key, value in metrics.items() if key.startswith(tuple(shown))
    )
    parts = [f"iter {done:5d}/{total}"]
    if returns:
        parts.append(f"train tasks: {returns}")
    if "meta/env_steps" in metrics:
        parts.append(f"{metrics['meta/env_steps']:,.0f} env steps")
    parts.append(f"{eta:<9s}")  # ETA 4m05s: the s/it column stays put
    seconds = metrics.get("time/iteration_s", math.nan)
    parts.append(f"[{seconds:.2f} s/it]")
    return "  ".join(parts)


def validation_line(
    done: int,
    total: int,
    kind: CurveKind,
    curve: Sequence[float],
    score: float,
    is_best: bool,
    best_iteration: int | None,
    best_score: float,
) -> str:
    """``validation at iter 20/80: steps 0..1: -40.12 -18.30  score -18.30  new best: best.pt holds iteration 20``
    (or ``not better: best.pt keeps iteration 20 (-15.02)``; ``best_iteration`` is ``None`` where the best came
    before a resume)."""
    head = f"validation at iter {done}/{total}: {curve_text(kind, curve)}  score {score:.2f}"
    if is_best:
        return f"{head}  new best: best.pt holds iteration {done}"
    kept = "the best from before the resume" if best_iteration is None else f"iteration {best_iteration}"
    if not math.isfinite(best_score):
        return f"{head}  not kept: no finite score yet, no best.pt"
    return f"{head}  not better: best.pt keeps {kept} ({best_score:.2f})"


# -- the start block ----------------------------------------------------------------------------------------------
def env_steps_per_iteration(agent: Any, config: RunConfig, horizon: int) -> tuple[int, str] | None:
    """How many env steps one meta-iteration takes, and how that number was reached, or ``None`` where it cannot be
    told.

    An agent that knows says so through an optional method ``env_steps_per_iteration() -> int | None``. Otherwise
    the number is worked out from the config's common fields, counting whole episodes of ``horizon`` steps (an
    upper bound where episodes can end early): trials (``trial_episodes``: RL², classical) or
    ``episodes_per_task`` per rollout, one rollout before adaptation and one after each of ``num_inner_steps``
    inner steps (MAML and its kin), or as many as the agent's ``training_samplings(config)`` says (the pretrained
    baseline samples once).
    """
    hook = getattr(agent, "env_steps_per_iteration", None)
    if callable(hook):
        steps = hook()
        if steps is not None:
            return int(steps), "as the agent counts them"
    tasks = config.meta_batch_size
    trial_episodes = getattr(config, "trial_episodes", None)
    if isinstance(trial_episodes, int):
        steps = tasks * trial_episodes * horizon
        return steps, f"{tasks} trials x {trial_episodes} episodes x {_count(horizon, 'step')}"
    episodes = getattr(config, "episodes_per_task", None)
    if not isinstance(episodes, int):
        return None
    inner_steps = getattr(config, "num_inner_steps", 0)
    rollouts = inner_steps + 1 if isinstance(inner_steps, int) else 1
    samplings = getattr(agent, "training_samplings", None)  # an agent that samples otherwise says how often
    if callable(samplings):
        rollouts = int(samplings(config))
    how = f"{tasks} tasks x {episodes} episodes x {_count(horizon, 'step')}"
    if rollouts > 1 and rollouts == inner_steps + 1:
        how += f" x {rollouts}: before and after {inner_steps} inner step{'s' * (inner_steps > 1)}"
    elif rollouts > 1:
        how += f" x {rollouts} samplings"
    return tasks * episodes * horizon * rollouts, how


def _count(count: int, noun: str) -> str:
    """``1 step``, ``10 steps``."""
    return f"{count} {noun}{'s' * (count != 1)}"


def start_lines(
    config: RunConfig,
    agent: Any,
    horizon: int,
    device: torch.device,
    world_size: int,
    run_dir: Path,
    start_iteration: int,
    earlier_seconds: float | None,
) -> list[str]:
    """The block printed before the first iteration: what is trained, where, for how long, and where it is saved.

    Args:
        config: the run's config.
        agent: the agent (asked for its env steps per iteration, see :func:`env_steps_per_iteration`).
        horizon: the family's episode length.
        device: where the agent trains.
        world_size: processes of the job (``torchrun``), 1 otherwise.
        run_dir: the run folder.
        start_iteration: iterations done before this invocation (a resumed run), 0 for a new run.
        earlier_seconds: wall time of the earlier invocations of a resumed run, ``None`` where its checkpoint
            predates that record.
    """
    kwargs = ", ".join(f"{key}={value!r}" for key, value in config.family_kwargs.items())
    family = config.family + (f" ({kwargs})" if kwargs else "")
    label = config.run_label()
    algorithm = config.algo if label == config.algo else f"{config.algo} ({label})"
    where = str(device)
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    where += f", {threads} thread{'s' * (threads > 1)}"
    if world_size > 1:
        where += f" per process, {world_size} processes (torchrun)"
    iterations = str(config.iterations)
    if start_iteration:
        before = "time before unknown: its checkpoint predates that record"
        if earlier_seconds is not None:
            before = f"{format_duration(earlier_seconds)} so far"
        iterations += f", resuming at iteration {start_iteration} ({before})"
    estimate = env_steps_per_iteration(agent, config, horizon)
    steps = "unknown" if estimate is None else f"about {estimate[0]:,} per iteration ({estimate[1]})"
    return [
        f"metarl train: {algorithm} on {family}",
        f"  device      {where}",
        f"  iterations  {iterations}",
        f"  env steps   {steps}",
        f"  validation  every {_count(config.eval_interval, 'iteration')} on {_count(config.eval_tasks, 'task')} (the "
        f"best is kept in best.pt); the end: {config.test_tasks} held-out test tasks",
        f"  run folder  {run_dir}",
    ]


# -- the progress of a run ------------------------------------------------------------------------------------
class Progress:
    """The progress lines of one invocation of the trainer, on stderr.

    Args:
        total: the run's iterations.
        start_iteration: iterations done before this invocation.
        enabled: whether to print at all (the run's ``progress`` field); :func:`quiet` turns it off too.
        stream: where to print (default: ``sys.stderr`` when constructed).
    """

    def __init__(self, total: int, start_iteration: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = total
        self.first = start_iteration + 1
        self.enabled = enabled and not is_quiet()
        self.stream = sys.stderr if stream is None else stream
        self.tty = _is_terminal(self.stream)
        self.every = report_every(total)
        self.recent: collections.deque[float] = collections.deque(maxlen=ETA_WINDOW)
        self.best_iteration: int | None = None
        self._open_line = 0  # characters of an in-place line on the terminal not yet ended by a newline

    def start(self, lines: Sequence[str]) -> None:
        """The start block (:func:`start_lines`)."""
        if self.enabled:
            for line in lines:
                self._line(line)

    def iteration(self, done: int, metrics: Mapping[str, float], shown: Sequence[str]) -> None:
        """The line of iteration ``done`` (its ``time/iteration_s`` feeds the estimate of the time left)."""
        seconds = metrics.get("time/iteration_s")
        if seconds is not None and math.isfinite(seconds):
            self.recent.append(seconds)
        if not self.enabled:
            return
        line = iteration_line(done, self.total, metrics, shown, eta_text(self.recent, self.total - done))
        if self.tty:  # rewritten in place (cut to the terminal's width: \r cannot go back up a wrapped line)
            line = line[: shutil.get_terminal_size().columns - 1]
            self.stream.write("\r" + line.ljust(self._open_line))
            self.stream.flush()
            self._open_line = len(line)
        elif shows_iteration(done, self.total, self.first, self.every):
            self._line(line)

    def validation(
        self, done: int, kind: CurveKind, curve: Sequence[float], score: float, is_best: bool, best_score: float
    ) -> None:
        """The line of a validation at iteration ``done``: its curve, its score, and which iteration best.pt holds
        (``best_score`` is the best score after this validation)."""
        if is_best:
            self.best_iteration = done
        if self.enabled:
            self._line(validation_line(done, self.total, kind, curve, score, is_best, self.best_iteration, best_score))

    def close(self) -> None:
        """End an in-place line on the terminal."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = 0

    def _line(self, text: str) -> None:
        self.close()
        print(text, file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# -- the end of a run ---------------------------------------------------------------------------------------------
def interval_text(values: Sequence[float] | np.ndarray) -> str:
    """``[-20.21, -16.40]``: the 95 % bootstrap interval of the mean of per-task ``values`` (fixed seed); ``[n/a]``
    where a value is not finite."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        return "[n/a]"
    low, high = bootstrap_ci(values, seed=BOOTSTRAP_SEED)
    return f"[{low:.2f}, {high:.2f}]"


def run_report(result: RunResult) -> str:
    """The table ``metarl train`` prints at the end: the mean return on the held-out test tasks at each point of the
    agent's curve with its 95 % bootstrap interval over tasks, one row per checkpoint (the parameters validation
    kept, and the last ones where they differ), then the run folder, iterations and wall time across resumes."""
    steps = result.curve_kind is CurveKind.STEP
    num_points = len(result.test_returns)
    per_task = result.test_task_returns
    tasks = len(per_task[0]) if per_task else None
    over = f" over {tasks} test tasks" if tasks is not None else ""
    if steps:
        head = f"held-out test tasks ({num_points - 1} adaptation steps), mean episode return{over}"
        labels = ["before" if k == 0 else f"step {k}" for k in range(num_points)]
        shown = list(range(num_points))
    else:
        head = f"held-out test tasks (trials of {num_points} episodes), mean return of episodes and of the trial{over}"
        shown = list(range(num_points)) if num_points <= 10 else [0, 1, 2, num_points - 2, num_points - 1]
        labels = [*(f"ep {k + 1}" for k in shown), "trial"]
    if per_task:
        head += f" [{CONFIDENCE:.0%} bootstrap interval over tasks]"

    last = f"last (iteration {result.iterations})"
    kept = f"kept (iteration {result.kept_iteration})"
    if result.kept_iteration is None:  # no validation score was finite: nothing was kept
        rows = [(f"{last}, nothing kept  last.pt", result.test_returns, per_task, result.test_success)]
    elif result.kept_iteration == result.iterations:
        rows = [(f"{kept}  best.pt = last.pt", result.test_returns, per_task, result.test_success)]
    else:
        rows = [(f"{kept}  best.pt", result.test_returns, per_task, result.test_success)]
        if result.last_test_returns is not None:
            rows.append(
                (f"{last}  last.pt", result.last_test_returns, result.last_test_task_returns, result.last_test_success)
            )

    table: list[tuple[str, list[str], str]] = [("", labels, "")]  # (row name, cells, what follows the cells)
    for name, returns, task_returns, success in rows:
        table.append((name, [f"{returns[k]:.2f}" for k in shown] + ([] if steps else [f"{sum(returns):.2f}"]), ""))
        if task_returns:
            columns = np.asarray(task_returns, dtype=np.float64)  # [points, tasks]
            per_column = [columns[k] for k in shown] + ([] if steps else [columns.sum(axis=0)])
            table.append(("", [interval_text(column) for column in per_column], ""))
        if success is not None:
            table.append(("", [f"{success[k]:.1%}" for k in shown], "   success rate"))
    name_width = max(len(name) for name, _, _ in table)
    width = max(8, *(len(cell) for _, cells, _ in table for cell in cells))
    lines = [head + ":"]
    for name, cells, suffix in table:
        lines.append(f"  {name:<{name_width}s}  " + "  ".join(f"{cell:>{width}s}" for cell in cells) + suffix)
    lines.append(f"run folder: {result.run_dir}  ({result.iterations} iterations, {time_text(result)})")
    return "\n".join(lines)


def time_text(result: RunResult) -> str:
    """``3m12s``; for a resumed run ``1m06s since resuming at iteration 40, 4m18s in all``, or where its checkpoint
    predates the record of the earlier time, that it is unknown."""
    here, resumed = format_duration(result.minutes * 60), result.start_iteration
    if not resumed:
        return here
    if result.total_minutes is None:
        return f"{here} since resuming at iteration {resumed}; the time before is unknown (an older checkpoint)"
    return f"{here} since resuming at iteration {resumed}, {format_duration(result.total_minutes * 60)} in all"


def print_run_report(result: RunResult) -> None:
    """The end of ``metarl train`` on stdout: :func:`run_report`, or under :func:`quiet` the run folder alone."""
    print(result.run_dir if is_quiet() else run_report(result), flush=True)


def elapsed_seconds(earlier_seconds: float | None, started: float) -> float | None:
    """Wall time of the run so far across resumes: the earlier invocations' (``None``: unknown) and this one's since
    ``started`` (a ``time.perf_counter()``)."""
    if earlier_seconds is None:
        return None
    return earlier_seconds + time.perf_counter() - started
