"""Smoke tests of the long-run check scripts: tiny runs trained (plain, --autograd, --float64), reported beside a
reference curve, and one meta-update diagnosed five ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script

from metarl import trainer
from metarl.config import config_to_json
from metarl.presets import config_from_dict

TINY = [
    "iterations=2",
    "meta_batch_size=2",
    "episodes_per_task=2",
    "hidden_sizes=[8]",
    "eval_interval=2",
    "eval_tasks=2",
    "test_tasks=2",
    "checkpoint_interval=2",
    "progress=false",
    "family_kwargs={horizon: 6}",
]


@pytest.mark.slow
def test_long_run_trains_each_variant_and_reports_beside_the_reference(tmp_path: Path) -> None:
    script = load_script("maml_long_run")
    make_agent = trainer.make_agent
    for variant in ([], ["--autograd"], ["--float64"]):
        root = tmp_path / ("plain" if not variant else variant[0].strip("-"))
        script.main(["train", *variant, "--run-root", str(root), "--seeds", "0", "--", *TINY])
        assert trainer.make_agent is make_agent  # the variant's agent does not outlive the command
    runs = sorted(str(path) for path in tmp_path.glob("*/*") if (path / "metrics.jsonl").is_file())
    assert len(runs) == 3
    reference = tmp_path / "reference.csv"
    reference.write_text(
        "iteration,return_pre_adapt,return_step_1,wall_s,cpu_s\n"
        + "".join(f"{i},{-50 + i},{-40 + i},1.0,{2.0 + i}\n" for i in range(20))
    )
    out = tmp_path / "report.json"
    script.main(["report", *runs, "--tasks", "2", "--seeds", "0", "--reference", str(reference), "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["runs"]) == set(runs)
    for run in report["runs"].values():
        assert set(run["held_out"]) == {"last", "best"} and run["kept_iteration"] == 2
        assert set(run["train_return_step_1"]) == {"0-1"}  # a 2-iteration run has only its last-20 window
        assert "train_pre_adaptation_kl" in run and "train_log_std_mean" in run
    assert report["reference"]["train_return_step_1"]["10-19"] == pytest.approx(-40 + 14.5)
    assert report["reference"]["median_cpu_s"] == pytest.approx(2.0 + 9.5)
    # the float64 run's parameters are float64, the others' float32
    dtypes = {
        Path(run).parent.name: torch.load(Path(run) / "last.pt", weights_only=True)["agent"]["policy"]["log_std"].dtype
        for run in runs
    }
    assert dtypes == {"plain": torch.float32, "autograd": torch.float32, "float64": torch.float64}


@pytest.mark.slow
def test_step_diagnostics_find_the_plain_implementation_equal_to_ours(tmp_path: Path) -> None:
    load_script("maml_long_run").main(["train", "--run-root", str(tmp_path), "--seeds", "0", "--", *TINY])
    (run,) = tmp_path.glob("*")
    out = tmp_path / "diagnostics.json"
    load_script("maml_step_diagnostics").main([str(run), str(run / "last.pt"), "--out", str(out)])
    (result,) = json.loads(out.read_text())["results"]
    directions = result["directions"]
    assert set(directions) == {
        "exact_float64",
        "exact_float32",
        "fast_float64",
        "fast_float32",
        "plain_autograd_float64",
    }
    assert directions["plain_autograd_float64"]["cosine_with_exact_float64"] == pytest.approx(1.0, abs=1e-6)
    for row in directions.values():
        assert row["step_norm"] > 0 and row["post_adaptation_kl"] > 0


def test_learning_curves_are_plotted_against_cumulative_env_steps(tmp_path: Path) -> None:
    """``scripts/plot_learning_curves.py``: each validation's value at a point, against the env steps summed up to
    it, for per-episode and per-step curves alike."""
    episode_run, step_run = tmp_path / "episodes", tmp_path / "steps"
    records = {
        episode_run: [
            {"iteration": 1, "meta/env_steps": 100.0},
            {"iteration": 2, "meta/env_steps": 50.0, "validation/return_episode_2": -3.0},
            {"iteration": 3, "meta/env_steps": 50.0, "validation/return_episode_2": -1.0},
        ],
        step_run: [{"iteration": 1, "meta/env_steps": 10.0, "validation/return_step_2": -7.0}],
    }
    for run, lines in records.items():
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    unlogged = tmp_path / "unlogged"  # a MAML run logs no env steps: its config's estimate stands in
    unlogged.mkdir()
    (unlogged / "config.json").write_text(config_to_json(config_from_dict({"family_kwargs": {"horizon": 10}})))
    (unlogged / "metrics.jsonl").write_text(json.dumps({"iteration": 1, "validation/return_step_2": -6.0}) + "\n")
    out = tmp_path / "curves.png"
    runs = [str(episode_run), str(step_run), str(unlogged)]
    plotted = load_script("plot_learning_curves").main(
        [*runs, "--names", "a", "b", "c", "--points", "2", "--reference", "x=-5", "--out", str(out)]
    )
    assert plotted["runs"]["a"]["return_2"] == {"env_steps": [150.0, 200.0], "values": [-3.0, -1.0]}
    assert plotted["runs"]["b"]["return_2"] == {"env_steps": [10.0], "values": [-7.0]}
    # the default config: 20 tasks x 20 episodes x 10 steps, before and after one inner step
    assert plotted["runs"]["c"]["return_2"] == {"env_steps": [8000.0], "values": [-6.0]}
    assert plotted["references"] == {"x": -5.0}
    assert out.stat().st_size > 0 and json.loads(out.with_suffix(".json").read_text()) == plotted
