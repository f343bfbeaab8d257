"""Validation curves of several runs against the env steps they trained on: one panel per adaptation point.

Reads each run folder's ``metrics.jsonl`` (the env steps of every iteration, ``meta/env_steps``, summed; the
validation return and success rate at each point of the curve, logged every ``eval_interval`` iterations) and plots,
for each point asked for, every run's validation return (and, with ``--success``, success rate) against its
cumulative env steps (estimated from the config for agents that log none: MAML's), with optional horizontal reference
lines for results measured elsewhere. Writes the figure and
the plotted numbers as JSON.

    python scripts/plot_learning_curves.py RUN_A RUN_B --names PEARL RL² --points 1 2 3 \\
        --reference "MAML-TRPO after one step (48M steps)=-55.2" --out docs/results/pearl/halfcheetah-vel.png

A run whose curve is per episode (PEARL, RL²) has points 1..n; one whose curve is per gradient step (MAML) 0..K.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metarl.checkpoint import write_bytes_atomically, write_text_atomically


def estimated_steps_per_iteration(run_dir: Path) -> float:
    """Env steps per iteration from the run's config, for agents that do not log ``meta/env_steps`` (MAML and its
    kin: whole episodes of the horizon, as ``metarl train`` prints at its start)."""
    from metarl.console import env_steps_per_iteration
    from metarl.presets import load_run_config
    from metarl.registry import make_family

    config = load_run_config(run_dir)
    family = make_family(config.family, **config.family_kwargs)
    estimate = env_steps_per_iteration(None, config, family.horizon)
    if estimate is None:
        raise ValueError(f"{run_dir} logs no meta/env_steps and its config does not tell its env steps per iteration")
    return float(estimate[0])


def learning_curve(run_dir: Path, point: int, metric: str = "return") -> tuple[list[float], list[float]]:
    """``(env steps, value)`` at each validation of ``run_dir``: the validation ``metric`` (``return`` or
    ``success``) at ``point`` (episode n or step k) against the env steps trained on before it (the logged
    ``meta/env_steps``, or :func:`estimated_steps_per_iteration` where the agent logs none)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no metrics.jsonl: pass run folders written by metarl train")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    per_iteration = None
    if not any("meta/env_steps" in record for record in records):
        per_iteration = estimated_steps_per_iteration(run_dir)
    steps, values, total = [], [], 0.0
    for record in records:
        total += float(record.get("meta/env_steps", 0.0)) if per_iteration is None else per_iteration
        for kind in ("episode", "step"):
            key = f"validation/{metric}_{kind}_{point}"
            if key in record:
                steps.append(total)
                values.append(float(record[key]))
    return steps, values


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--names", nargs="+", default=None, help="one name per run (default: the folder names)")
    parser.add_argument("--points", nargs="+", type=int, default=[1], help="adaptation points, one panel each")
    parser.add_argument("--success", action="store_true", help="a second row of panels: the success rate")
    parser.add_argument(
        "--reference", action="append", default=[], metavar="LABEL=VALUE", help="a horizontal line (repeatable)"
    )
    parser.add_argument("--title", default="", help="the figure's title")
    parser.add_argument("--out", type=Path, required=True, help="the figure (.png); the numbers go beside it (.json)")
    args = parser.parse_args(argv)
    names = args.names or [run.name for run in args.runs]
    if len(names) != len(args.runs):
        parser.error(f"--names gives {len(names)} names for {len(args.runs)} runs")
    references = []
    for item in args.reference:
        label, _, value = item.rpartition("=")
        try:
            references.append((label, float(value)))
        except ValueError:
            parser.error(f"--reference must be LABEL=NUMBER, got {item!r}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["return", "success"] if args.success else ["return"]
    figure, axes = plt.subplots(
        len(metrics), len(args.points), figsize=(4.2 * len(args.points), 3.4 * len(metrics)), squeeze=False
    )
    plotted: dict[str, Any] = {"runs": {}, "references": dict(references)}
    for name, run in zip(names, args.runs, strict=True):
        plotted["runs"][name] = {"run_dir": str(run)}
        for row, metric in enumerate(metrics):
            for column, point in enumerate(args.points):
                steps, values = learning_curve(run, point, metric)
                plotted["runs"][name][f"{metric}_{point}"] = {"env_steps": steps, "values": values}
                if steps:
                    axes[row][column].plot(steps, values, marker=".", label=name)
    for row, metric in enumerate(metrics):
        for column, point in enumerate(args.points):
            axis = axes[row][column]
            if metric == "return":
                for label, value in references:
                    axis.axhline(value, linestyle="--", linewidth=1, color="gray")
                    axis.annotate(label, (0, value), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
            axis.set_xscale("log")
            axis.set_xlabel("env steps trained on")
            axis.set_ylabel(f"validation {metric}")
            axis.set_title(f"point {point}")
            axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if args.title:
        figure.suptitle(args.title)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from io import BytesIO

    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_bytes_atomically(args.out, buffer.getvalue())
    write_text_atomically(args.out.with_suffix(".json"), json.dumps(plotted, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}", file=sys.stderr)
    return plotted


if __name__ == "__main__":
    main()
