"""Seconds per meta-iteration of ``metarl train`` on one and on several processes (and devices).

Every run is a real training job (``torchrun --standalone`` for more than one process: gloo on the CPU, NCCL on
GPUs; one torch thread per process) of a preset for ``--distributed-iterations`` iterations with a small validation
and test set; the time is the median of the trainer's ``time/iteration_s`` over the iterations between the first
(warm-up) and the last (it validates). RL² runs also report env steps per second. ``--repeats`` runs per setting
are interleaved across the settings (each device in ``--devices`` times each number of processes in
``--processes``), and each speed-up is the ratio of the medians over all timed iterations against the first
setting (first device, first number of processes).

Usage (from the repository root)::

    python scripts/benchmark.py --distributed                 # cpu, 1 and 2 processes, 6 iterations per run
    python scripts/benchmark.py --distributed --quick         # 3 iterations, smaller meta-batches: a smoke test
    python scripts/benchmark.py --distributed --devices cpu cuda --processes 1 --repeats 1    # scripts/gpu_check.sh

The results go to ``--out`` (default ``benchmarks/distributed.json``) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .common import format_rate, run_header, save_results

DISTRIBUTED_RUNS = {
    "navigation2d-maml-trpo": ("navigation2d-maml-trpo", []),
    "navigation2d-maml-trpo-fast": ("navigation2d-maml-trpo", ["curvature_fraction=0.25"]),
    "rl2-bandit-k5-n10": ("rl2-bandit-k5-n10", []),
}
"""The training runs ``--distributed`` times: name -> (preset, config overrides)."""
DEFAULT_DISTRIBUTED_OUT = Path("benchmarks/distributed.json")


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Train every run of :data:`DISTRIBUTED_RUNS` in every setting, print the medians and speed-ups, write the
    JSON to ``--out`` and return it."""
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else 2
    iterations = 3 if args.quick else args.distributed_iterations
    quick = {"maml": ["meta_batch_size=4", "episodes_per_task=4"], "rl2": ["meta_batch_size=16", "ppo_epochs=1"]}
    # one adaptation step at validation for MAML (RL²'s curve is its trial)
    evaluation = {"maml": ["eval_steps=1"], "rl2": []}
    common = ["eval_tasks=4", "test_tasks=4", "progress=false", f"seed={args.seed}"]
    settings = [(device, processes) for device in args.devices for processes in args.processes]
    data: dict[str, Any] = {
        **run_header(torch.device("cuda" if "cuda" in args.devices else "cpu"), argv),
        "settings": {
            "runs": {name: [preset, *overrides] for name, (preset, overrides) in DISTRIBUTED_RUNS.items()},
            "devices": args.devices,
            "processes": args.processes,
            "iterations": iterations,
            "repeats": repeats,
            "overrides": common,
            "quick_overrides": quick if args.quick else {},
        },
        "results": [],
    }
    timings: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="metarl-distributed-") as scratch:
        for repeat in range(repeats):
            for name, (preset, run_overrides) in DISTRIBUTED_RUNS.items():
                for device, processes in settings:
                    run_root = Path(scratch) / f"{name}-{device}-{processes}-{repeat}"
                    kind = "rl2" if preset.startswith("rl2") else "maml"
                    smaller = quick[kind] if args.quick else []
                    overrides = [
                        *run_overrides,
                        *smaller,
                        *common,
                        *evaluation[kind],
                        f"iterations={iterations}",
                        f"device={device}",
                    ]
                    records = timed_training_run(preset, overrides, processes, run_root)
                    timings.setdefault((name, device, processes), []).extend(records)
    print(f"median seconds per meta-iteration ({repeats} run(s) x {iterations - 2} timed iteration(s) each)")
    for name, (preset, run_overrides) in DISTRIBUTED_RUNS.items():
        baseline = statistics.median(r["time/iteration_s"] for r in timings[(name, *settings[0])])
        for device, processes in settings:
            records = timings[(name, device, processes)]
            median = statistics.median(r["time/iteration_s"] for r in records)
            record = {
                "run": name,
                "preset": preset,
                "overrides": run_overrides,
                "device": device,
                "processes": processes,
                "median_iteration_s": median,
                "iteration_s": [r["time/iteration_s"] for r in records],
                "speedup": baseline / median,
            }
            steps = ""
            if all("meta/env_steps" in r for r in records):
                record["env_steps_per_s"] = statistics.median(
                    r["meta/env_steps"] / r["time/iteration_s"] for r in records
                )
                steps = f"  {format_rate(record['env_steps_per_s'])} env steps/s"
            data["results"].append(record)
            print(
                f"{name:28s} {device:4s} x{processes}: {median:7.3f} s  ({baseline / median:.2f}x){steps}", flush=True
            )
    out = args.out or DEFAULT_DISTRIBUTED_OUT
    return save_results(data, out)


def timed_training_run(preset: str, overrides: list[str], processes: int, run_root: Path) -> list[dict[str, float]]:
    """Train ``preset`` on ``processes`` processes; the logged metrics of the iterations between the first and the
    last."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, "-m", "metarl", "train", "--preset", preset, *overrides, f"run_root={run_root}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{finished.stdout}\n{finished.stderr}")
    (run_dir,) = run_root.iterdir()
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:-1]
