"""Env steps per second of the Meta-World adapter against Meta-World's own vector env.

The adapter's vector env (``MetaRL/MetaWorld-ML1-reach-v0``, one Meta-World task per sub-env) and Meta-World's
``gymnasium.make_vec("Meta-World/ML1-train", env_name="reach-v3")``, both synchronous, in ``NEXT_STEP`` autoreset
mode, episodes of Meta-World's 500 steps, are timed with their repeats interleaved. ``adapter_over_metaworld``
below 1 is the adapter's overhead (the goal: at most 10 %). Needs the metaworld extra
(``pip install "metarl[metaworld]"``).

Usage (from the repository root)::

    python scripts/benchmark.py --metaworld                 # 1 and 10 sub-envs
    python scripts/benchmark.py --metaworld --quick         # 1 sub-env, a few steps: a smoke test

The results go to ``--out`` (default ``benchmarks/metaworld_env_steps.json``) as JSON.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from metarl.registry import family_spec

from .common import (
    Runner,
    budget_for,
    format_rate,
    median_rates,
    no_op,
    numpy_inputs,
    requested_repeats,
    run_header,
    save_results,
)

METAWORLD_ENV = "reach-v3"
METAWORLD_NUM_ENVS = (1, 10)
DEFAULT_METAWORLD_OUT = Path("benchmarks/metaworld_env_steps.json")


def metaworld_runners(num_envs: int, seed: int) -> list[Runner]:
    """The adapter's vector env (``MetaRL/MetaWorld-ML1-reach-v0``, one Meta-World task per sub-env) and Meta-World's
    own ML1 vector env, both synchronous, in NEXT_STEP autoreset mode, episodes of Meta-World's 500 steps."""
    import metaworld  # noqa: F401 - registers Meta-World's own ids

    family = family_spec("MetaRL/MetaWorld-ML1-reach-v0").make_family()
    tasks = family.split(seed=0).train[:num_envs]
    adapter = family.make_vec_env(num_envs, tasks, autoreset_mode=AutoresetMode.NEXT_STEP)
    theirs = gym.make_vec(
        "Meta-World/ML1-train",
        env_name=METAWORLD_ENV,
        meta_batch_size=num_envs,
        vector_strategy="sync",
        autoreset_mode=AutoresetMode.NEXT_STEP,
        seed=seed,
    )
    theirs.call("sample_tasks")  # Meta-World's loop gives each sub-env a task explicitly, then resets keep it
    runners = []
    for name, envs in (("adapter", adapter), ("metaworld", theirs)):
        envs.reset(seed=seed)
        runners.append(Runner(name, envs, envs.step, numpy_inputs, no_op))
    return runners


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Time both vector envs at every number of sub-envs, print the medians and ratio, write the JSON to ``--out``
    and return it."""
    torch.set_num_threads(args.threads)
    repeats = requested_repeats(args)
    num_envs_list = args.num_envs or ([1] if args.quick else list(METAWORLD_NUM_ENVS))
    budget = budget_for(args)
    data: dict[str, Any] = {
        **run_header(torch.device("cpu"), argv),
        "settings": {"env_name": METAWORLD_ENV, "num_envs": num_envs_list, "repeats": repeats},
        "results": [],
        "ratios": [],
    }
    print(f"repeats={repeats} (median env steps/s)")
    for num_envs in num_envs_list:
        rng = np.random.default_rng(args.seed)
        runners = metaworld_runners(num_envs, args.seed)
        median, records = median_rates(runners, budget, repeats, rng)
        data["results"].extend(records)
        ratio = median["adapter"] / median["metaworld"]
        data["ratios"].append({"num_envs": num_envs, "adapter_over_metaworld": ratio})
        print(
            f"{num_envs:5d} sub-envs  adapter {format_rate(median['adapter'])}  metaworld "
            f"{format_rate(median['metaworld'])}  adapter/metaworld {ratio:.3f}",
            flush=True,
        )
    out = args.out or DEFAULT_METAWORLD_OUT
    return save_results(data, out)
