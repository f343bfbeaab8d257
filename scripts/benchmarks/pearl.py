"""Gradient steps per second of PEARL's SAC step: the meta-batch stacked into one pass against a loop over its tasks.

For each setting (:data:`PEARL_SETTINGS`: the presets ``halfcheetah-vel-pearl`` and ``sparse-point-robot-pearl``,
the paper's networks, batch sizes and meta-batch of 16 tasks; and the first with 64 and 16 transitions per task, to
see how the gain depends on the work per task), one agent's buffers are filled with its initial collection, then two
copies of the agent take SAC steps on the same draws: ``batched`` (``PEARL.sac_update``: the 16 tasks' batches
stacked, one forward and one backward pass per network) and ``per-task loop`` (``loop_over_tasks=True``: each task's
losses computed and back-propagated on its own, gradients summed, the same optimiser steps). The two are timed in
interleaved rounds of ``--pearl-steps`` steps each, so that a slow phase of the machine hits both alike; reported: the
median gradient steps per second of each and the ratio of medians (batched over loop; the issue's target is at
least 3).

Usage (from the repository root)::

    python scripts/benchmark.py --pearl                       # 3 rounds of 20 steps per preset
    python scripts/benchmark.py --pearl --quick               # small networks, 2 steps: a smoke test

The results go to ``--out`` (default ``benchmarks/pearl.json``) as JSON.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import requested_repeats, run_header, save_results

PEARL_SETTINGS = (
    ("halfcheetah-vel-pearl", ()),
    ("halfcheetah-vel-pearl", ("pearl_batch_size=64",)),
    ("halfcheetah-vel-pearl", ("pearl_batch_size=16",)),
    ("sparse-point-robot-pearl", ()),
)
"""(preset, overrides) of each timed setting; ``--quick`` times the presets only."""
DEFAULT_PEARL_OUT = Path("benchmarks/pearl.json")
DEFAULT_PEARL_STEPS = 20
"""Timed SAC steps per implementation and round."""
QUICK_OVERRIDES = (
    "pearl_hidden_sizes=[32,32]",
    "pearl_encoder_hidden_sizes=[32]",
    "pearl_batch_size=16",
    "pearl_context_batch_size=16",
    "pearl_initial_steps=40",
    "num_tasks=40",
)


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Time both implementations on each preset, print the rates, write the JSON to ``--out`` and return it."""
    from metarl.agents.pearl import PEARL

    from metarl.presets import load_config
    from metarl.registry import make_family
    from metarl.seeding import seed_everything

    torch.set_num_threads(args.threads)
    rounds = 1 if args.quick else requested_repeats(args)
    steps = 2 if args.quick else args.pearl_steps
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    overrides = list(QUICK_OVERRIDES) if args.quick else []
    data: dict[str, Any] = {
        **run_header(device, argv),
        "settings": {"overrides": overrides, "rounds": rounds, "steps": steps},
        "results": [],
    }
    print(f"device={device} torch_threads={args.threads} rounds={rounds} x {steps} SAC steps (median steps/s)")
    settings = [(preset, extra) for preset, extra in PEARL_SETTINGS if not (args.quick and extra)]
    for preset, extra in settings:
        config = load_config(preset, [*extra, *overrides])
        family = make_family(config.family, **config.family_kwargs)
        seed_everything(args.seed)
        agent = PEARL(family, config, device)
        rng = np.random.default_rng(args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        block = agent.initial_collection_envs(len(agent.train_tasks))
        for first in range(0, len(agent.train_tasks), block):
            indices = list(range(first, min(first + block, len(agent.train_tasks))))
            agent.collect(indices, config.pearl_initial_steps, False, True, rng, generator)
        looped = PEARL(family, config, device)  # the same state and buffers: the two start equal
        looped.load_state_dict(copy.deepcopy(agent.state_dict()))
        looped.load_buffers_state_dict(agent.buffers_state_dict())
        agents = {"batched": agent, "per-task loop": looped}
        rates: dict[str, list[float]] = {name: [] for name in agents}
        for _ in range(rounds + 1):  # the first round warms up and is not counted
            for name, timed in agents.items():
                draws = torch.Generator().manual_seed(args.seed)
                start = time.perf_counter()
                for _ in range(steps):
                    task_indices = torch.randint(
                        len(timed.train_tasks), (config.pearl_task_batch_size,), generator=draws
                    ).tolist()
                    context = timed.encoder_replay.sample(task_indices, config.pearl_context_batch_size, draws)
                    batch = timed.replay.sample(task_indices, config.pearl_batch_size, draws)
                    noise = timed.sac_noise(len(task_indices), draws)
                    timed.sac_update(batch, context, noise, loop_over_tasks=name == "per-task loop")
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rates[name].append(steps / (time.perf_counter() - start))
        medians = {name: statistics.median(values[1:]) for name, values in rates.items()}
        record = {
            "preset": preset,
            "overrides": list(extra),
            "tasks_per_step": config.pearl_task_batch_size,
            "rows_per_step": config.pearl_task_batch_size * config.pearl_batch_size,
            "context_per_task": config.pearl_context_batch_size,
            "hidden_sizes": list(config.pearl_hidden_sizes),
            "batched_steps_per_second": medians["batched"],
            "loop_steps_per_second": medians["per-task loop"],
            "batched_over_loop": medians["batched"] / medians["per-task loop"],
            "all_rates": {name: values[1:] for name, values in rates.items()},
        }
        data["results"].append(record)
        print(
            f"{preset:26s} {' '.join(extra):22s} batched {record['batched_steps_per_second']:7.2f}  per-task loop "
            f"{record['loop_steps_per_second']:7.2f} steps/s  ratio {record['batched_over_loop']:.2f}x",
            flush=True,
        )
    return save_results(data, args.out or DEFAULT_PEARL_OUT)
