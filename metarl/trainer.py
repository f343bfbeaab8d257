"""The meta-trainer: one loop for every meta-learning agent.

Each iteration samples a meta-batch of tasks from the *train* split and hands it to the agent, which collects
pre-adaptation episodes, adapts, collects post-adaptation episodes and meta-updates (``agent.train_step``). Every
``eval_interval`` iterations the agent is evaluated on *validation* tasks and the best parameters by validation
return are kept; the final evaluation runs on held-out *test* tasks with those parameters. Checkpoints hold
everything needed to resume exactly: parameters, every random state, the iteration and the best validation score.

The loop names no algorithm: it builds the agent registered under ``config.algo`` (:func:`metarl.registry.make_agent`)
and uses only the members of :class:`metarl.agent.MetaAgent`. A meta-update that yields non-finite metrics or state
is undone as a whole: parameters, optimiser state, normalisers, learned step sizes (``state_dict`` round trip).

Under ``torchrun`` the same loop runs in every process (:mod:`metarl.distributed`): each draws the same meta-batch,
the agent samples and adapts its block of it and reduces what the update needs across processes, and only rank 0
writes the run folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl import console
from metarl.agent import CurveKind, MetaAgent
from metarl.budget import check_memory_budget
from metarl.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    buffers_checkpoint,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    write_text_atomically,
)
from metarl.config import RunConfig, config_to_json
from metarl.device import resolve_device, set_threads
from metarl.distributed import (
    Workers,
    close_workers,
    init_workers,
    is_main_process,
    launched_world_size,
    local_device,
)
from metarl.logging import RunLogger
from metarl.registry import agent_spec, list_agents, make_agent, make_family
from metarl.run_folder import (
    ResumePoint,
    RunIdentity,
    check_new_run_folder,
    create_run_record,
    load_run_buffers,
    read_resume_point,
    remove_other_buffers,
    resume_run_folder,
)
from metarl.seeding import seed_everything
from metarl.tasks import TaskFamily


@dataclasses.dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    """The run folder: config, metrics, TensorBoard events, checkpoints, results."""
    test_returns: list[float]
    """Mean return on held-out test tasks at each point of the agent's adaptation curve (see ``curve_kind``)."""
    curve_kind: CurveKind
    """``step``: ``test_returns[k]`` is after k gradient steps (MAML); ``episode``: it is episode k + 1 of a trial
    (RL²)."""
    best_validation_return: float
    """The validation score (the agent's ``selection_score``) of the kept parameters."""
    iterations: int
    """Meta-iterations done."""
    minutes: float
    """Wall-clock minutes of this invocation."""
    test_success: list[float] | None = None
    """Success rate on the test tasks at each point, where the family defines success (``info["success"]``)."""
    kept_iteration: int | None = None
    """The iteration whose parameters validation kept (and ``test_returns`` measures); ``None``: none was kept."""
    last_test_returns: list[float] | None = None
    """The same test tasks, episodes and seeds with the *last* parameters: a run that degraded after the kept
    iteration shows here, where validation-based selection would hide it."""
    last_test_success: list[float] | None = None
    """The last parameters' success rate, where the family defines success."""
    test_task_returns: list[list[float]] | None = None
    """``[points][tasks]``: each test task's mean return at each point (``test_returns`` is their mean), from which
    the 95 % intervals over tasks are computed."""
    last_test_task_returns: list[list[float]] | None = None
    """The same for the last parameters."""
    start_iteration: int = 0
    """The iteration this invocation resumed at (0: it started the run)."""
    total_minutes: float | None = None
    """Wall-clock minutes across resumes: the earlier invocations' up to the checkpoint this one resumed from, and
    this one's; ``None`` where that checkpoint predates the record (``elapsed_s`` in ``last.pt``)."""


def train(
    config: RunConfig | None,
    resume: str | Path | None = None,
    run_dir: str | Path | None = None,
    iterations: int | None = None,
) -> RunResult:
    """Meta-train as ``config`` says, or resume the run folder ``resume`` (whose own config is used).

    ``iterations`` (with ``resume`` only) extends the run to that many meta-iterations: a finished run trains on
    from its last checkpoint, and its ``config.json`` records the new total. The continuation is exactly the run
    that was started with that total when the old total was a multiple of ``eval_interval`` (otherwise the extra
    validation at the old end has drawn from the task sampler).

    Everything that can be checked is checked before any work starts and before a byte is written: the family id,
    the policy's support of its action space, the device, an extension that would not extend, an agent or meta-batch
    that cannot be split over the processes of a ``torchrun`` job, a run folder that cannot be created (``run_root``
    a file or not writable, ``run_dir`` existing already); on resume the folder (there, writable), its
    ``config.json`` and ``run.json``, and its checkpoints (readable and this run's own:
    :func:`metarl.run_folder.read_resume_point`).

    Under ``torchrun`` every process calls this; rank 0 creates and writes the run folder (resuming reads it in
    every process: across machines it must be on a shared filesystem).
    """
    started = time.perf_counter()
    resume_point = None
    if iterations is not None and resume is None:
        raise ValueError("iterations= extends a resumed run; start a new run with the iterations config field")
    if resume is not None:
        # read and check all of the folder first: its config.json is rewritten (iterations=) only once training starts
        run_dir = Path(resume)
        config, resume_point = read_resume_point(run_dir, iterations, writable=is_main_process())
        no_cuda_fix = f'resume it where torch sees CUDA, or set "device": "auto" in {run_dir / "config.json"}'
    elif config is None:
        raise ValueError("train() needs a config or a run folder to resume")
    else:
        if is_main_process():  # only rank 0 creates the folder
            check_new_run_folder(run_dir, config.run_root)
        no_cuda_fix = "set device=auto or device=cpu"
    device = local_device(resolve_device(config.device, fix=no_cuda_fix))
    set_threads(config.threads)
    family = make_family(config.family, **config.family_kwargs)
    split = family.split(seed=config.split_seed, num_tasks=config.num_tasks)
    few_tasks = family.num_distinct_tasks is not None  # meta-batches are drawn with replacement from a few tasks
    for field, wanted, available in (
        ("meta_batch_size", config.meta_batch_size, math.inf if few_tasks else len(split.train)),
        ("eval_tasks", config.eval_tasks, math.inf if few_tasks else len(split.validation)),
        ("test_tasks", config.test_tasks, math.inf if few_tasks else len(split.test)),
    ):
        if wanted > available:
            raise ValueError(
                f"{field} {wanted} exceeds the {available} tasks of its split (num_tasks={config.num_tasks} gives "
                f"{len(split.train)} train, {len(split.validation)} validation, {len(split.test)} test tasks); "
                "lower it or raise num_tasks"
            )
    check_memory_budget(config, family, agent_spec(config.algo).agent_class)  # before any buffer or file is made
    _check_splittable(config)
    workers = init_workers(device, config.dist_timeout_s)
    try:
        checkpoint = None if resume_point is None else resume_point.checkpoint
        return _train(config, family, split, device, workers, checkpoint, run_dir, started, resume_point)
    finally:
        if workers.distributed:
            close_workers()


def _train(
    config: RunConfig,
    family: TaskFamily,
    split: Any,
    device: torch.device,
    workers: Workers,
    checkpoint: dict[str, Any] | None,
    run_dir: str | Path | None,
    started: float,
    resume_point: ResumePoint | None = None,
) -> RunResult:
    """The meta-training loop and the final test evaluation of :func:`train` (resuming from ``checkpoint``, the
    ``last.pt`` of ``resume_point``), in one process of the job."""
    few_tasks = family.num_distinct_tasks is not None
    resume = checkpoint is not None
    seed_everything(config.seed)
    agent = make_agent(config, family, device, workers)  # rejects an action space the policy cannot handle
    task_rng = np.random.default_rng(config.seed)

    start_iteration, best_validation = 0, -math.inf
    run_id = None  # the run's id (run.json), which rank 0 writes into every checkpoint
    if resume:
        try:  # a checkpoint of the same run fits: anything else stops here, before any write
            agent.load_state_dict(checkpoint["agent"])
            if callable(getattr(agent, "load_buffers_state_dict", None)):  # checked by read_resume_point
                folder_run_id = None if resume_point is None else resume_point.run_id
                buffers = load_run_buffers(Path(run_dir), checkpoint["iteration"], config, folder_run_id)
                agent.load_buffers_state_dict(buffers)
                del buffers  # mapped from the file: the agent's copies are the ones kept
            restore_rng_states(checkpoint["rng"], task_rng)
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            raise ValueError(
                f"{Path(run_dir) / LAST_CHECKPOINT} does not hold a state this run ({config.algo} on {config.family}) "
                f"can resume from: {type(error).__name__}: {' '.join(str(error).split())[:300]}; restore it from a copy"
            ) from error
        start_iteration, best_validation = checkpoint["iteration"], checkpoint["best_validation"]
        if workers.is_main:  # every check passed: the resume's writes (leftovers, run.json, config, metrics)
            run_id = resume_run_folder(Path(run_dir), config, resume_point)
    elif workers.is_main:
        run_dir = Path(run_dir) if run_dir is not None else _new_run_dir(config)
        run_dir.mkdir(parents=True, exist_ok=False)
        run_id = create_run_record(run_dir)  # before any checkpoint, which records it
        write_text_atomically(run_dir / "config.json", config_to_json(config))
    run_dir = Path(workers.broadcast(str(run_dir)))  # the folder rank 0 named (a time stamp)
    identity = RunIdentity.of(config, run_id).to_dict() if workers.is_main else None  # which run a checkpoint is of
    logger = RunLogger(run_dir, resume_after=start_iteration if resume else None) if workers.is_main else None

    validation_tasks = _first_tasks(split.validation, config.eval_tasks)
    # wall time of the earlier invocations of a resumed run; None: its checkpoint was written before it was recorded
    earlier_seconds = 0.0 if checkpoint is None else checkpoint.get("elapsed_s")
    progress = console.Progress(config.iterations, start_iteration, enabled=config.progress and workers.is_main)
    if progress.enabled:
        progress.start(
            console.start_lines(
                config, agent, family.horizon, device, workers.world_size, run_dir, start_iteration, earlier_seconds
            )
        )
    try:
        for iteration in range(start_iteration, config.iterations):
            indices = task_rng.choice(len(split.train), config.meta_batch_size, replace=few_tasks)
            tasks = [split.train[i] for i in indices]
            iteration_started = time.perf_counter()
            metrics = guarded_train_step(agent, tasks, task_rng)
            done = iteration + 1
            validated = None  # this iteration's validation curve, score and whether it became the best (to print)
            if done % config.eval_interval == 0 or done == config.iterations:
                validation = agent.adaptation_curve(validation_tasks, task_rng, agent.default_num_points())
                curve, success = validation.means_over_tasks()
                metrics.update(_curve_metrics("validation/return", agent.curve_kind, curve))
                if success is not None:
                    metrics.update(_curve_metrics("validation/success", agent.curve_kind, success))
                if logger is not None:
                    logger.log_curve(done, "validation", agent.curve_kind, curve, success)
                score = agent.selection_score(curve)
                validated = (curve, score, score > best_validation)
                if score > best_validation:
                    best_validation = score
                    if workers.is_main:
                        best_state = {"agent": agent.state_dict(), "iteration": done, "identity": identity}
                        save_checkpoint(run_dir / BEST_CHECKPOINT, best_state)
            # wall time of the whole iteration, validation included; the parts agents time are summed in it
            metrics["time/iteration_s"] = time.perf_counter() - iteration_started
            if not workers.is_main:
                continue
            logger.log(done, metrics)
            progress.iteration(done, metrics, agent.progress_metrics)
            if validated is not None:
                progress.validation(done, agent.curve_kind, *validated, best_score=best_validation)
            if done % config.checkpoint_interval == 0 or done == config.iterations:
                state = {
                    "agent": agent.state_dict(),
                    "rng": rng_states(task_rng),
                    "iteration": done,
                    "best_validation": best_validation,
                    "identity": identity,
                    "elapsed_s": console.elapsed_seconds(earlier_seconds, started),  # None: unknown (see above)
                }
                buffers = getattr(agent, "buffers_state_dict", None)
                if callable(buffers):  # first, so that last.pt never names buffers that were not written
                    saved = {"buffers": buffers(), "iteration": done, "identity": identity}
                    save_checkpoint(run_dir / buffers_checkpoint(done), saved)
                save_checkpoint(run_dir / LAST_CHECKPOINT, state)
                if callable(buffers):
                    remove_other_buffers(run_dir, done)
    finally:
        progress.close()
        if logger is not None:
            logger.close()

    # final evaluation on held-out test tasks: the last parameters, then the ones kept by validation (rank 0 reads
    # them), on the same tasks with the same seed
    test_tasks = _first_tasks(split.test, config.test_tasks)

    def test_curve() -> tuple[list[float], list[float] | None, list[list[float]]]:
        """The mean return and success rate over the test tasks at each point, and each task's return there."""
        curve = agent.adaptation_curve(
            test_tasks, np.random.default_rng([config.seed, 2**20]), agent.default_num_points()
        )
        return (*curve.means_over_tasks(), curve.returns.tolist())

    # the last parameters' actions draw from a fork of torch's RNG: the kept ones then draw the same noise, as they
    # did before the last parameters were evaluated too
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        last_returns, last_success, last_task_returns = test_curve()
    best_path = run_dir / BEST_CHECKPOINT
    best = load_checkpoint(best_path) if workers.is_main and best_path.is_file() else None
    kept_iteration = workers.broadcast(None if best is None else best["iteration"])
    if kept_iteration is not None and kept_iteration != config.iterations:
        agent.load_state_dict(workers.broadcast(best["agent"] if best is not None else None))
        test_returns, test_success, test_task_returns = test_curve()
    else:  # the last parameters are the kept ones (or nothing was kept)
        test_returns, test_success, test_task_returns = last_returns, last_success, last_task_returns
    minutes = (time.perf_counter() - started) / 60
    result = RunResult(
        run_dir=run_dir,
        test_returns=test_returns,
        curve_kind=agent.curve_kind,
        best_validation_return=best_validation,
        test_success=test_success,
        iterations=config.iterations,
        minutes=minutes,
        kept_iteration=kept_iteration,
        last_test_returns=last_returns,
        last_test_success=last_success,
        test_task_returns=test_task_returns,
        last_test_task_returns=last_task_returns,
        start_iteration=start_iteration,
        total_minutes=None if earlier_seconds is None else earlier_seconds / 60 + minutes,
    )
    if workers.is_main:
        results = {**dataclasses.asdict(result), "run_dir": str(run_dir)}
        write_text_atomically(run_dir / "results.json", json.dumps(results, indent=2))
    return result


def _check_splittable(config: RunConfig) -> None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): an agent that trains across processes and task counts that give
    every process at least one task."""
    world_size = launched_world_size()
    if world_size == 1:
        return
    if not agent_spec(config.algo).agent_class.trains_across_processes:
        allowed = [name for name in list_agents() if agent_spec(name).agent_class.trains_across_processes]
        raise ValueError(
            f"algo {config.algo!r} does not train across processes (WORLD_SIZE={world_size}); "
            f"allowed under torchrun: {', '.join(allowed)}"
        )
    for field in ("meta_batch_size", "eval_tasks", "test_tasks"):
        if getattr(config, field) < world_size:
            raise ValueError(
                f"{field} {getattr(config, field)} is less than the {world_size} processes (WORLD_SIZE): every "
                "process needs at least one task"
            )


def guarded_train_step(agent: MetaAgent, tasks: list[Any], rng: np.random.Generator) -> dict[str, float]:
    """One agent step; a step that yields non-finite metrics or state is undone as a whole (the agent's
    ``state_dict`` before it is restored: parameters, optimiser state, normalisers, learned step sizes), never saved.
    The metrics then say ``errors/skipped_update``."""
    before = _cloned(agent.state_dict())
    try:
        metrics = agent.train_step(tasks, rng)
        finite = all(math.isfinite(value) for value in metrics.values()) and _all_finite(agent.state_dict())
    except FloatingPointError as error:
        metrics, finite = {}, False
        console.warn(f"skipped a meta-update: {error}")
    if not finite:
        agent.load_state_dict(before)
        metrics = {key: value for key, value in metrics.items() if math.isfinite(value)}
        metrics["errors/skipped_update"] = 1.0
    return metrics


def _cloned(state: Any) -> Any:
    """A copy of a (nested) state dict whose tensors no longer share memory with the agent's."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {key: _cloned(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_cloned(value) for value in state)
    return state


def _all_finite(state: Any) -> bool:
    """Whether every floating-point tensor and float in a (nested) state dict is finite."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, float):
        return math.isfinite(state)
    if isinstance(state, dict):
        return all(_all_finite(value) for value in state.values())
    if isinstance(state, list | tuple):
        return all(_all_finite(value) for value in state)
    return True


def _curve_metrics(prefix: str, curve_kind: CurveKind, curve: list[float]) -> dict[str, float]:
    """``validation/return_step_0..K`` (MAML) or ``validation/return_episode_1..n`` (RL²), likewise
    ``validation/success_...`` for the success rate."""
    first = curve_kind.first_point
    return {f"{prefix}_{curve_kind}_{k + first}": value for k, value in enumerate(curve)}


def _first_tasks(tasks: Sequence[Any], count: int) -> tuple[Any, ...]:
    """The first ``count`` tasks of a split's set, cycling through it when it holds fewer (a family with only a
    few distinct tasks evaluates each of them several times)."""
    return tuple(tasks[i % len(tasks)] for i in range(count))


def _new_run_dir(config: RunConfig) -> Path:
    family = config.family.replace("/", "_")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(config.run_root) / f"{family}__{config.run_label()}__{config.seed}__{stamp}"
