"""Env steps per second of RL² meta-iterations: the batched trial rollout and the PPO update, timed apart.

For the bandit and tabular MDP presets (``rl2-bandit-k5-n100``, ``rl2-tabular-mdp-n10``) at GRU sizes 256 and 128,
each with a separate and a shared critic, ``--repeats`` meta-iterations run from the same seed, one setting after
the other in this process, so that their ratios are measured side by side. Each meta-iteration is timed in two
parts, ``agent.collect`` (the rollout) and ``agent.update`` (PPO), and the medians of the env steps per second of
each and of the whole are reported.

Usage (from the repository root)::

    python scripts/benchmark.py --rl2                   # 5 meta-iterations per setting, on cuda if available
    python scripts/benchmark.py --rl2 --quick           # 16 trials, one PPO epoch, GRU size 128: a smoke test
    python scripts/benchmark.py --rl2 --device cpu --repeats 3

The results go to ``--out`` (default ``benchmarks/rl2.json``) as JSON.
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

from .common import format_rate, requested_repeats, run_header, save_results

RL2_PRESETS = ("rl2-bandit-k5-n100", "rl2-tabular-mdp-n10")
RL2_NETWORKS = ((256, False), (256, True), (128, False), (128, True))
"""(GRU size, shared critic) of each timed network; ``--quick`` times the last two."""
DEFAULT_RL2_OUT = Path("benchmarks/rl2.json")


def timed_iteration(agent: Any, tasks: Sequence[Any], rng: np.random.Generator, device: torch.device) -> tuple:
    """One meta-iteration of a trial agent (RL²'s collect, then its PPO update): ``(env steps, rollout seconds,
    update seconds)``."""
    start = time.perf_counter()
    batch = agent.collect(tasks, rng)
    collected = time.perf_counter()
    agent.update(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return float(batch.masks.sum()), collected - start, time.perf_counter() - collected


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Time every (preset, network), print its rates, write the JSON to ``--out`` and return it."""
    from metarl.agents.rl2 import RL2

    from metarl.presets import load_config
    from metarl.registry import make_family
    from metarl.seeding import seed_everything

    torch.set_num_threads(args.threads)
    repeats = requested_repeats(args)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    overrides = ["meta_batch_size=16", "ppo_epochs=1"] if args.quick else []
    networks = RL2_NETWORKS[2:] if args.quick else RL2_NETWORKS
    data: dict[str, Any] = {
        **run_header(device, argv),
        "settings": {"presets": list(RL2_PRESETS), "overrides": overrides, "repeats": repeats},
        "results": [],
    }
    print(f"device={device} torch_threads={args.threads} repeats={repeats} (median env steps per second)")
    for preset in RL2_PRESETS:
        for hidden_size, shared in networks:
            config = load_config(
                preset, [*overrides, f"rl2_hidden_size={hidden_size}", f"rl2_shared_critic={str(shared).lower()}"]
            )
            family = make_family(config.family, **config.family_kwargs)
            tasks = family.sample_tasks(np.random.default_rng(args.seed), config.meta_batch_size)
            seed_everything(args.seed)
            agent = RL2(family, config, device)
            rng = np.random.default_rng(args.seed)
            rollout_rates, update_rates, total_rates = [], [], []
            for _ in range(repeats):
                steps, rollout_seconds, update_seconds = timed_iteration(agent, tasks, rng, device)
                rollout_rates.append(steps / rollout_seconds)
                update_rates.append(steps / update_seconds)
                total_rates.append(steps / (rollout_seconds + update_seconds))
            record = {
                "preset": preset,
                "rl2_hidden_size": hidden_size,
                "rl2_shared_critic": shared,
                "steps_per_iteration": int(steps),
                "ppo_epochs": config.ppo_epochs,
                "rollout_steps_per_second": statistics.median(rollout_rates),
                "update_steps_per_second": statistics.median(update_rates),
                "total_steps_per_second": statistics.median(total_rates),
            }
            data["results"].append(record)
            print(
                f"{preset:22s} GRU {hidden_size:3d} {'shared' if shared else 'separate'} critic: "
                f"rollout {format_rate(record['rollout_steps_per_second'])}  "
                f"update {format_rate(record['update_steps_per_second'])}  "
                f"total {format_rate(record['total_steps_per_second'])} steps/s",
                flush=True,
            )
    out = args.out or DEFAULT_RL2_OUT
    return save_results(data, out)
