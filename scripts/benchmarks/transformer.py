"""The trial transformer against RL²'s GRU at equal parameter counts: env steps per second of the rollout, of the
PPO update alone and end to end.

For the bandit and tabular MDP presets (``rl2-bandit-k5-n100``, ``rl2-tabular-mdp-n10``: GRU 128 with a separate
critic GRU), two transformers are timed: one with a separate critic trunk (the default) and one with a shared trunk,
each at the width whose parameter count is closest to the GRU agent's (the other sizes at their defaults). The agents
play and update from the same seed, their meta-iterations interleaved (GRU, transformer, shared transformer, GRU,
...) so that all see the same load on a shared machine; each meta-iteration is timed in two parts,
``agent.collect`` (the rollout, a key/value-cached step per env step for the transformer) and ``agent.update`` (PPO
over whole trials: the GRU steps through time, the transformer takes each minibatch's trials in one pass), and the
medians and the transformer/GRU ratios of the medians are reported.

Usage (from the repository root)::

    python scripts/benchmark.py --transformer              # 5 rounds per preset
    python scripts/benchmark.py --transformer --quick      # 16 trials, one PPO epoch, 2 rounds: a smoke test

The results go to ``--out`` (default ``benchmarks/transformer.json``) as JSON.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import format_rate, requested_repeats, run_header, save_results
from .rl2 import timed_iteration

TRANSFORMER_PRESETS = ("rl2-bandit-k5-n100", "rl2-tabular-mdp-n10")
TRANSFORMER_WIDTHS = (32, 48, 64, 80, 96, 128)
"""Widths tried for the closest parameter count to the GRU agent's (heads: width / 16)."""
TRANSFORMER_VARIANTS = {"transformer": False, "transformer_shared": True}
"""The transformers timed against the GRU, by ``transformer_shared_critic``: a separate critic trunk (the default, as
the GRU agent's separate critic GRU) and one trunk for both heads."""
RATIO_KEYS = {"transformer": "ratios", "transformer_shared": "ratios_shared"}
"""Where each variant's transformer / GRU ratios go in a result."""
DEFAULT_TRANSFORMER_OUT = Path("benchmarks/transformer.json")


def parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Time both agents on every preset, print their rates and ratios, write the JSON to ``--out`` and return it."""
    from metarl.agents.rl2 import RL2
    from metarl.agents.trial_transformer import TrialTransformerAgent

    from metarl.presets import config_from_dict, load_config
    from metarl.registry import make_family
    from metarl.seeding import seed_everything

    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick and args.repeats is None else requested_repeats(args)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    overrides = ["meta_batch_size=16", "ppo_epochs=1"] if args.quick else []
    data: dict[str, Any] = {
        **run_header(device, argv),
        "settings": {"presets": list(TRANSFORMER_PRESETS), "overrides": overrides, "rounds": repeats},
        "results": [],
    }
    print(f"device={device} torch_threads={args.threads} rounds={repeats} (median env steps per second)")
    for preset in TRANSFORMER_PRESETS:
        gru_config = load_config(preset, overrides)
        family = make_family(gru_config.family, **gru_config.family_kwargs)
        tasks = family.sample_tasks(np.random.default_rng(args.seed), gru_config.meta_batch_size)
        seed_everything(args.seed)
        gru = RL2(family, gru_config, device)
        target = parameter_count(gru.policy)

        def transformer_config(width: int, shared: bool, gru_config: Any = gru_config) -> Any:
            values = {
                key: value
                for key, value in vars(gru_config).items()
                if not key.startswith("rl2_") and key not in ("algo",)
            }
            values.update(
                algo="rl2-transformer",
                transformer_width=width,
                transformer_heads=max(1, width // 16),
                transformer_shared_critic=shared,
                progress=False,
            )
            return config_from_dict(values)

        agents: dict[str, Any] = {"gru": gru}
        sizes: dict[str, dict[str, Any]] = {
            "gru": {"rl2_hidden_size": gru_config.rl2_hidden_size, "parameters": target}
        }
        for name, shared in TRANSFORMER_VARIANTS.items():
            counts = {
                width: parameter_count(TrialTransformerAgent(family, transformer_config(width, shared), device).policy)
                for width in TRANSFORMER_WIDTHS
            }
            width = min(counts, key=lambda w: abs(counts[w] - target))
            seed_everything(args.seed)
            agents[name] = TrialTransformerAgent(family, transformer_config(width, shared), device)
            sizes[name] = {
                "transformer_width": width,
                "transformer_heads": max(1, width // 16),
                "transformer_layers": agents[name].config.transformer_layers,
                "transformer_shared_critic": shared,
                "parameters": counts[width],
            }
        rngs = {name: np.random.default_rng(args.seed) for name in agents}
        rates: dict[str, dict[str, list[float]]] = {name: {"rollout": [], "update": [], "total": []} for name in agents}
        steps_per_iteration = {}
        for _ in range(repeats):
            for name, agent in agents.items():
                steps, rollout_seconds, update_seconds = timed_iteration(agent, tasks, rngs[name], device)
                steps_per_iteration[name] = int(steps)
                rates[name]["rollout"].append(steps / rollout_seconds)
                rates[name]["update"].append(steps / update_seconds)
                rates[name]["total"].append(steps / (rollout_seconds + update_seconds))
        medians = {
            name: {part: statistics.median(values) for part, values in parts.items()} for name, parts in rates.items()
        }
        record: dict[str, Any] = {
            "preset": preset,
            "steps_per_iteration": steps_per_iteration["gru"],
            "ppo_epochs": gru_config.ppo_epochs,
            **{name: {**sizes[name], **medians[name]} for name in agents},
        }
        for name in TRANSFORMER_VARIANTS:
            record[RATIO_KEYS[name]] = {
                part: medians[name][part] / medians["gru"][part] for part in ("rollout", "update", "total")
            }
        data["results"].append(record)
        for name in agents:
            print(
                f"{preset:20s} {name:18s} {record[name]['parameters']:7,d} parameters: "
                f"rollout {format_rate(medians[name]['rollout'])}  update {format_rate(medians[name]['update'])}  "
                f"total {format_rate(medians[name]['total'])} steps/s",
                flush=True,
            )
        for name in TRANSFORMER_VARIANTS:
            ratios = record[RATIO_KEYS[name]]
            print(
                f"{preset:20s} {name} / GRU: rollout {ratios['rollout']:.2f}x  update {ratios['update']:.2f}x  "
                f"total {ratios['total']:.2f}x",
                flush=True,
            )
    return save_results(data, args.out or DEFAULT_TRANSFORMER_OUT)
