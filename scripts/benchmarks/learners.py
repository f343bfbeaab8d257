"""Seconds per meta-iteration of the gradient-based learners with two inner steps, on the Navigation2D paper presets.

A meta-iteration is the agent's ``train_step(tasks, rng)``: sample and adapt every task of the meta-batch, then the
outer update. Every learner takes K = 2 inner steps, so the speed target "neither MAML++ nor the learned optimizer
is slower per meta-iteration than 1.5x MAML-PPO with the same K" reads off the ratios. The learners
(:data:`LEARNERS`):

* ``maml-ppo-k2``: ``navigation2d-maml-plus-plus`` with every MAML++ switch off (no LSLR, no multi-step loss, second
  order from the start, no cosine schedule): MAML-PPO's update with K = 2, second order; the PPO baseline;
* ``maml-plus-plus-second-order``, ``maml-plus-plus-first-order``: MAML++ (PPO outer loop) after and during its
  derivative-order annealing (the preset's first 150 iterations are first order);
* ``maml-lstm-optimizer``: the coordinate-wise LSTM as the inner step (second order);
* ``maml-trpo-k2``: ``navigation2d-maml-trpo`` with two inner steps; the TRPO baseline;
* ``maml-plus-plus-trpo-second-order``, ``maml-plus-plus-trpo-first-order``: MAML++ with the TRPO outer loop (its
  preset is second order throughout; the first-order learner sets ``first_order_iterations=150``).

Every agent starts from the same seed and trains on the same meta-batch of tasks; each ``train_step`` gets a fresh
``np.random.default_rng(seed)``, so that the learners of a round sample from the same seeds. After one untimed
warm-up iteration per learner, the timed rounds are interleaved (every learner one iteration per round), so that a
slow phase of the machine hits all alike. Reported per learner: the median seconds per iteration (wall clock around
``train_step``) and the median of each ``time/...`` phase its metrics report (``sample_s``: sampling and adaptation;
``outer_update_s`` for PPO; ``inner_and_gradient_s``, ``conjugate_gradient_s``, ``line_search_s`` for TRPO); and
the ratio of medians of each PPO learner to ``maml-ppo-k2`` and of each TRPO learner to ``maml-trpo-k2``, with
whether it is within :data:`SPEED_TARGET`.

Usage (from the repository root)::

    python scripts/benchmark.py --learners                           # 3 timed rounds
    python scripts/benchmark.py --learners --learners-iterations 5 --threads 4 --out /tmp/learners.json
    python scripts/benchmark.py --learners --quick                   # 4 tasks of 4 episodes, 1 round: a smoke test

The results go to ``--out`` (default ``benchmarks/learners.json``) as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import run_header, save_results


@dataclasses.dataclass(frozen=True)
class Learner:
    """One learner under test: a preset, its overrides, and what its time is compared with."""

    preset: str
    """The shipped preset it starts from."""
    overrides: tuple[str, ...]
    """``key=value`` overrides of the preset (before ``--quick``'s)."""
    baseline: str | None
    """The learner of :data:`LEARNERS` with the same outer loop and K that it is compared with; ``None`` for one."""
    first_order: bool = False
    """Timed inside the preset's ``first_order_iterations`` (checked: the warm-up and the rounds must fit)."""


PPO_BASELINE = "maml-ppo-k2"
TRPO_BASELINE = "maml-trpo-k2"
LEARNERS: dict[str, Learner] = {
    # MAML++ with every switch off is MAML-PPO's update; its preset gives the same env, sizes and K = 2 as the others
    PPO_BASELINE: Learner(
        "navigation2d-maml-plus-plus",
        ("lslr=false", "multi_step_loss=false", "first_order_iterations=0", "cosine_annealing=false"),
        None,
    ),
    "maml-plus-plus-second-order": Learner("navigation2d-maml-plus-plus", ("first_order_iterations=0",), PPO_BASELINE),
    "maml-plus-plus-first-order": Learner("navigation2d-maml-plus-plus", (), PPO_BASELINE, first_order=True),
    "maml-lstm-optimizer": Learner("navigation2d-maml-lstm-optimizer", (), PPO_BASELINE),
    TRPO_BASELINE: Learner("navigation2d-maml-trpo", ("num_inner_steps=2", "inner_step_sizes=[0.1]"), None),
    "maml-plus-plus-trpo-second-order": Learner("navigation2d-maml-plus-plus-trpo", (), TRPO_BASELINE),
    # the TRPO preset is second order throughout; its first-order phase is the switch's, as MAML++ (PPO) anneals it
    "maml-plus-plus-trpo-first-order": Learner(
        "navigation2d-maml-plus-plus-trpo", ("first_order_iterations=150",), TRPO_BASELINE, first_order=True
    ),
}
"""The learners ``--learners`` times, by name."""
QUICK_OVERRIDES = ("meta_batch_size=4", "episodes_per_task=4")
SPEED_TARGET = 1.5
"""The issue's target: at most this many times its baseline's seconds per meta-iteration."""
DEFAULT_LEARNERS_ITERATIONS = 3
DEFAULT_LEARNERS_OUT = Path("benchmarks/learners.json")


def requested_iterations(args: argparse.Namespace) -> int:
    """``--learners-iterations``, by default one round with ``--quick`` and :data:`DEFAULT_LEARNERS_ITERATIONS`
    otherwise."""
    if args.learners_iterations is not None:
        return args.learners_iterations
    return 1 if args.quick else DEFAULT_LEARNERS_ITERATIONS


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Time one warm-up and ``--learners-iterations`` interleaved meta-iterations of every learner, print the
    medians and the ratios, write the JSON to ``--out`` and return it."""
    from metarl.distributed import Workers
    from metarl.presets import load_config
    from metarl.registry import agent_spec, make_family
    from metarl.seeding import seed_everything

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    iterations = requested_iterations(args)
    quick = list(QUICK_OVERRIDES) if args.quick else []
    data: dict[str, Any] = {
        **run_header(device, argv),
        "settings": {
            "learners": {
                name: {"preset": learner.preset, "overrides": list(learner.overrides), "baseline": learner.baseline}
                for name, learner in LEARNERS.items()
            },
            "overrides": quick,
            "warm_up_iterations": 1,
            "iterations": iterations,
            "seed": args.seed,
            "speed_target": SPEED_TARGET,
        },
        "results": {},
        "ratios": {},
    }
    agents = {}
    tasks: list[Any] | None = None
    for name, learner in LEARNERS.items():
        config = load_config(learner.preset, [*learner.overrides, *quick])
        # a first-order learner timed past its schedule would silently be second order
        if learner.first_order and 1 + iterations > config.first_order_iterations:
            raise SystemExit(
                f"{name} is first order for {config.first_order_iterations} iterations only: --learners-iterations "
                f"must be < {config.first_order_iterations}, got {iterations}"
            )
        family = make_family(config.family, **config.family_kwargs)
        if tasks is None:  # the presets share the family and the meta-batch size: one meta-batch for all
            tasks = family.sample_tasks(np.random.default_rng(args.seed), config.meta_batch_size)
        seed_everything(args.seed)  # the same initial policy for every learner
        agents[name] = agent_spec(config.algo).make_agent(family, config, device, Workers())
    assert tasks is not None
    records: dict[str, list[dict[str, float]]] = {name: [] for name in LEARNERS}
    for agent in agents.values():
        timed_train_step(agent, tasks, args.seed)  # warm-up: allocator, lazily built buffers, first-call paths
    gc.collect()  # once, before the rounds: a full collection takes ~0.1 s with torch loaded
    for _ in range(iterations):
        for name, agent in agents.items():
            records[name].append(timed_train_step(agent, tasks, args.seed))
    for name, learner_records in records.items():
        # a phase some iteration lacks is left out rather than given a median over fewer iterations
        phases = [key for key in learner_records[0] if all(key in record for record in learner_records)]
        median = {phase: statistics.median(record[phase] for record in learner_records) for phase in phases}
        data["results"][name] = {"median": median, "iterations": learner_records}
    for name, learner in LEARNERS.items():
        if learner.baseline is not None:
            ratio = (
                data["results"][name]["median"]["iteration_s"]
                / data["results"][learner.baseline]["median"]["iteration_s"]
            )
            data["ratios"][name] = {
                "baseline": learner.baseline,
                "ratio": ratio,
                "within_target": ratio <= SPEED_TARGET,
            }
    print_table(data)
    return save_results(data, args.out or DEFAULT_LEARNERS_OUT)


def timed_train_step(agent: Any, tasks: Sequence[Any], seed: int) -> dict[str, float]:
    """One ``agent.train_step`` on ``tasks`` with a fresh ``np.random.default_rng(seed)``: its wall-clock seconds
    (``iteration_s``) and the ``time/...`` phases its metrics report, without the prefix."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    metrics = agent.train_step(tasks, rng)
    seconds = time.perf_counter() - start  # CPU only: nothing queued on a device to wait for
    phases = {key.removeprefix("time/"): float(value) for key, value in metrics.items() if key.startswith("time/")}
    return {"iteration_s": seconds, **phases}


def print_table(data: dict[str, Any]) -> None:
    """One line per learner: median seconds per iteration, its ratio to its baseline, and the median phases."""
    print(f"{'learner':34s} {'s/iter':>8s}  {'vs baseline':24s}  phases (median s)")
    for name, result in data["results"].items():
        median = result["median"]
        ratio = data["ratios"].get(name)
        versus = (
            "baseline"
            if ratio is None
            else f"{ratio['ratio']:.2f}x {ratio['baseline']}" + ("" if ratio["within_target"] else " (!)")
        )
        cells = "  ".join(
            f"{phase.removesuffix('_s')} {seconds:.3f}" for phase, seconds in median.items() if phase != "iteration_s"
        )
        print(f"{name:34s} {median['iteration_s']:8.3f}  {versus:24s}  {cells}", flush=True)
    if not all(ratio["within_target"] for ratio in data["ratios"].values()):
        print(f"(!) more than {SPEED_TARGET}x its baseline's seconds per meta-iteration")
