"""Seconds per MAML-TRPO meta-iteration of the Navigation2D paper preset, by phase, for three implementations.

* ``batched``: the suite's MAML (all tasks sampled, adapted and differentiated at once; KL curvature as JᵀFJ from
  the written-out curvature products);
* ``batched_fast``: the same in fast mode (the curvature on a quarter of each task's episodes);
* ``per_task``: the same algorithm written as a loop over tasks, the shape of the reference implementations
  (:func:`per_task_meta_iteration`): each task sampled with its own E sub-envs, adapted on its own, and the KL's
  Hessian-vector product by double backward through the per-task adaptations.

The phases are ``sample_s``, ``inner_and_gradient_s``, ``conjugate_gradient_s`` and ``line_search_s``. The
implementations' meta-iterations are interleaved, each agent starting from the same seed; the medians over the
iterations are reported, with the speed-ups batched / per-task and fast / exact.

Usage (from the repository root)::

    python scripts/benchmark.py --maml                          # 3 timed meta-iterations per implementation
    python scripts/benchmark.py --maml --maml-iterations 5 --out /tmp/maml_iteration.json
    python scripts/benchmark.py --maml --quick                  # 4 tasks of 4 episodes: a smoke test

The results go to ``--out`` (default ``benchmarks/maml_iteration.json``) as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import run_header, save_results

MAML_PHASES = ("sample_s", "inner_and_gradient_s", "conjugate_gradient_s", "line_search_s")
MAML_IMPLEMENTATIONS = {
    "batched": [],
    "batched_fast": ["curvature_fraction=0.25"],
    "per_task": [],
}
"""The implementations ``--maml`` times, with their config overrides of the preset."""
DEFAULT_MAML_OUT = Path("benchmarks/maml_iteration.json")


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Time ``--maml-iterations`` meta-iterations of each implementation, print the medians by phase, write the
    JSON to ``--out`` and return it."""
    from metarl.agents.maml_trpo import MAMLTRPO

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
        step = per_task_meta_iteration if implementation == "per_task" else batched_meta_iteration
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


def batched_meta_iteration(agent: Any, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
    """One meta-iteration of the suite's MAML-TRPO: ``agent.sample`` of every task at once, then
    ``agent.meta_update``; the seconds of each of :data:`MAML_PHASES`."""
    start = time.perf_counter()
    batch = agent.sample(tasks, rng, agent.config.num_inner_steps, evaluation=False)
    timings = {"sample_s": time.perf_counter() - start}
    metrics = agent.meta_update(batch)
    timings.update({phase: metrics[f"time/{phase}"] for phase in MAML_PHASES[1:]})
    return timings


def per_task_meta_iteration(agent: Any, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
    """One MAML-TRPO meta-iteration written as a loop over tasks, the shape of the reference implementations.

    Each task is sampled alone (``agent.sample([task], ...)``, its own ``episodes_per_task`` sub-envs and its own
    seeds drawn from ``rng``), then :func:`per_task_meta_update` takes the TRPO step on the agent's policy in place.
    The episodes differ from those of one ``agent.sample(tasks, rng, ...)`` of the whole meta-batch, so the step
    does too; on the same episodes the two steps agree (tests/test_benchmark_maml_reference.py).

    Args:
        agent: a :class:`metarl.agents.maml_trpo.MAMLTRPO` (second order, exact curvature, no pre-adaptation trust
        region:
            the paper's algorithm, which is all this reference implements).
        tasks: the meta-batch's tasks.
        rng: draws the sampling seeds.

    Returns:
        The seconds of each phase: ``sample_s``, ``inner_and_gradient_s``, ``conjugate_gradient_s``,
        ``line_search_s``.
    """
    start = time.perf_counter()
    batches = [agent.sample([task], rng, agent.config.num_inner_steps, evaluation=False) for task in tasks]
    timings = {"sample_s": time.perf_counter() - start}
    return {**timings, **per_task_meta_update(agent, batches)}


def per_task_meta_update(agent: Any, batches: Sequence[Any]) -> dict[str, float]:
    """The TRPO step of :func:`per_task_meta_iteration` on given episodes: one one-task meta-batch per task.

    Every task is adapted on its own (``agent.adapt_per_task``, plain autograd through the inner steps); the loss
    and the mean KL are the averages over tasks of ``agent.surrogate`` at the adapted parameters, against the old
    adapted policy; the KL's Hessian-vector product is autograd's double backward (plus ``cg_damping``); and
    ``agent.apply_trpo_step`` runs the conjugate gradient and the line search, which re-adapts at every candidate.

    Args:
        agent: a :class:`metarl.agents.maml_trpo.MAMLTRPO`; its policy's parameters are updated in place.
        batches: :class:`metarl.agents.inner_loop.MetaBatch` es of one task each (only ``inner`` and ``post`` are read).

    Returns:
        The seconds of the phases ``inner_and_gradient_s``, ``conjugate_gradient_s`` and ``line_search_s``.
    """
    from metarl.agents.inner_loop import detach_distribution, detach_params

    from metarl.optim import flatten_tensors, unflatten_like

    config = agent.config
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
    timings = {"inner_and_gradient_s": time.perf_counter() - start}

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
