"""``scripts/reproduce_rl2.py`` end to end on small budgets: baselines only, a finished RL² run, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_RL2_CONFIG, load_script

from metarl.presets import config_from_dict, load_config
from metarl.trainer import train


def few_tasks(out: Path) -> list[str]:
    return ["--no-train", "--allow-few-tasks", "--test-tasks", "200", "--out", str(out)]


def test_baselines_only_writes_every_agent_beside_the_paper_and_cells_accumulate(tmp_path: Path) -> None:
    script, out = load_script("reproduce_rl2"), tmp_path / "rl2.md"
    script.main([*few_tasks(out), "--cells", "bandit-k5-n10"])
    results = script.main([*few_tasks(out), "--cells", "tabular-n10"])

    assert set(results) == {"bandit-k5-n10", "tabular-n10"}  # the first cell was kept
    saved = json.loads(out.with_suffix(".json").read_text())["cells"]
    assert saved == json.loads(json.dumps(results))
    bandit = saved["bandit-k5-n10"]["agents"]
    assert set(bandit) == {"random", "greedy", "epsilon_greedy", "ucb1", "ucb1_prior", "thompson", "gittins"}
    assert all(summary["tasks"] == 200 for summary in bandit.values())
    assert abs(bandit["random"]["mean"] - 5.0) < 3 * bandit["random"]["ci95"]  # uniform arm means: 0.5 per pull
    assert bandit["gittins"]["mean"] > bandit["random"]["mean"] + 1.0
    assert bandit["gittins"]["paper"] == 6.6 and bandit["ucb1"]["paper"] is None
    tabular = saved["tabular-n10"]["agents"]
    assert set(tabular) == {"random", "greedy", "psrl", "psrl_zero_prior"}
    assert tabular["psrl_zero_prior"]["mean"] > tabular["random"]["mean"] + 20

    markdown = out.read_text()
    assert "## Bandits k=5, n=10" in markdown and "## Tabular MDPs, n=10" in markdown
    assert "| gittins | " in markdown and "| 6.6 | 200 |" in markdown
    assert "| rl2 | not run | 6.7 | |" in markdown
    assert "RL²: not trained here; command: `metarl train --preset rl2-bandit-k5-n10` (3.0M env steps" in markdown


def test_same_seed_gives_the_same_table(tmp_path: Path) -> None:
    script = load_script("reproduce_rl2")
    first = script.main([*few_tasks(tmp_path / "a.md"), "--cells", "bandit-k5-n10"])
    second = script.main([*few_tasks(tmp_path / "b.md"), "--cells", "bandit-k5-n10"])
    means = [{name: s["mean"] for name, s in r["bandit-k5-n10"]["agents"].items()} for r in (first, second)]
    assert means[0] == means[1]


def tiny_bandit_k5_n10_run(tmp_path: Path) -> Path:
    """A few RL² iterations on the cell's own family, trial length and split."""
    preset = load_config("rl2-bandit-k5-n10")
    overrides = {**TINY_RL2_CONFIG, "family_kwargs": preset.family_kwargs, "trial_episodes": preset.trial_episodes}
    overrides |= {"num_tasks": preset.num_tasks, "split_seed": preset.split_seed, "iterations": 2}
    return train(config_from_dict(overrides), run_dir=tmp_path / "run").run_dir


def test_a_finished_run_is_evaluated_beside_the_baselines(tmp_path: Path) -> None:
    run_dir, out = tiny_bandit_k5_n10_run(tmp_path), tmp_path / "rl2.md"
    argv = [*few_tasks(out), "--cells", "bandit-k5-n10", "--run", f"bandit-k5-n10={run_dir}"]
    results = load_script("reproduce_rl2").main(argv)

    cell = results["bandit-k5-n10"]
    assert cell["agents"]["rl2"]["tasks"] == 200 and cell["agents"]["rl2"]["paper"] == 6.7
    assert 0.0 <= cell["agents"]["rl2"]["mean"] <= 10.0
    assert cell["rl2_training"]["iterations"] == 2
    assert cell["rl2_training"]["env_steps"] == 2 * TINY_RL2_CONFIG["meta_batch_size"] * 10
    assert "| rl2 | " in out.read_text() and "2 iterations" in out.read_text()
    # the command is the run's own: the preset and every field the run changed
    assert cell["train_command"].startswith("metarl train --preset rl2-bandit-k5-n10 ")
    assert "rl2_hidden_size=16" in cell["train_command"] and "iterations=2" in cell["train_command"]


def test_bad_inputs_fail_before_any_work(tmp_path: Path) -> None:
    script, out = load_script("reproduce_rl2"), tmp_path / "rl2.md"
    with pytest.raises(SystemExit):
        script.main(["--no-train", "--test-tasks", "50", "--out", str(out)])  # fewer than 1000 tasks
    with pytest.raises(SystemExit):
        script.main([*few_tasks(out), "--run", f"bandit-k5-n10={tmp_path}"])  # not a run folder
    with pytest.raises(SystemExit):
        script.main([*few_tasks(out), "--run", f"no-such-cell={tmp_path}"])
    with pytest.raises(SystemExit):
        script.main([*few_tasks(out), "--train-override", "no_such_field=1"])
    with pytest.raises(SystemExit):  # a test split of 10 tasks cannot give the 1000 the table needs
        script.main(["--no-train", "--cells", "bandit-k5-n10", "--train-override", "num_tasks=100", "--out", str(out)])
    assert not out.exists()


def test_a_run_of_another_experiment_is_refused(tmp_path: Path) -> None:
    # 3 arms and 4 pulls: not the k=5, n=10 cell
    run_dir = train(config_from_dict(TINY_RL2_CONFIG), run_dir=tmp_path / "run").run_dir
    with pytest.raises(SystemExit):
        load_script("reproduce_rl2").main([*few_tasks(tmp_path / "rl2.md"), "--run", f"bandit-k5-n10={run_dir}"])
    assert not (tmp_path / "rl2.md").exists()
