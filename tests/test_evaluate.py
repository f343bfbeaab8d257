"""The fast-adaptation evaluator: held-out tasks only, statistics, determinism, checkpoints, reports."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
import torch
from conftest import TINY_RL2_CONFIG, TINY_TRAIN_CONFIG, tiny_values

from metarl.agent import CurveKind
from metarl.checkpoint import BEST_CHECKPOINT, save_checkpoint
from metarl.cli import main as cli_main
from metarl.evaluate import (
    Evaluation,
    bootstrap_ci,
    comparison_table,
    evaluate_run,
    evaluation_to_json,
    write_evaluation,
)
from metarl.presets import config_from_dict
from metarl.registry import make_family
from metarl.trainer import train
from metarl.vector import TorchVectorEnv


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory):
    return train(config_from_dict(TINY_TRAIN_CONFIG), run_dir=tmp_path_factory.mktemp("maml") / "run").run_dir


@pytest.fixture(scope="module")
def rl2_run(tmp_path_factory):
    return train(config_from_dict(TINY_RL2_CONFIG), run_dir=tmp_path_factory.mktemp("rl2") / "run").run_dir


# -- statistics ----------------------------------------------------------------------------------------------------
def test_bootstrap_interval_of_a_known_distribution():
    values = np.random.default_rng(0).normal(3.0, 2.0, size=2000)
    low, high = bootstrap_ci(values)
    # the normal-theory 95 % interval of the mean: mean ± 1.96 σ / √n
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert low == pytest.approx(values.mean() - half_width, abs=0.1 * half_width)
    assert high == pytest.approx(values.mean() + half_width, abs=0.1 * half_width)
    assert low < 3.0 < high
    assert bootstrap_ci(values) == (low, high)  # seeded: the same values give the same interval
    assert bootstrap_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)
    narrow = bootstrap_ci(values, confidence=0.5)
    assert low < narrow[0] < narrow[1] < high


@pytest.mark.parametrize("values", [[], [1.0, np.nan], [[1.0, 2.0]]])
def test_bootstrap_interval_rejects_bad_values(values):
    with pytest.raises(ValueError, match="non-empty 1-D array of finite values"):
        bootstrap_ci(values)


# -- the protocol --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["maml", "rl2"])
def test_evaluation_touches_only_the_requested_split(which, maml_run, rl2_run, monkeypatch):
    run = maml_run if which == "maml" else rl2_run
    played = []
    original = TorchVectorEnv.set_tasks

    def spy(self, tasks):
        played.extend(tasks)
        return original(self, tasks)

    monkeypatch.setattr(TorchVectorEnv, "set_tasks", spy)
    evaluation = evaluate_run(run, num_tasks=3, seeds=(0, 1))
    config = json.loads((run / "config.json").read_text())
    family = make_family(config["family"], **config["family_kwargs"])
    split = family.split(seed=config["split_seed"], num_tasks=config["num_tasks"])
    assert played and set(played) <= set(split.test[:3])
    assert not set(played) & (set(split.train) | set(split.validation))
    assert evaluation.task_indices == (0, 1, 2)
    assert evaluation.returns.shape == (2, len(evaluation.points), 3)
    assert np.isfinite(evaluation.returns).all()


def test_a_larger_task_pool_gives_more_held_out_tasks_never_the_runs_training_tasks(maml_run, monkeypatch):
    played = []
    original = TorchVectorEnv.set_tasks
    monkeypatch.setattr(TorchVectorEnv, "set_tasks", lambda self, tasks: (played.extend(tasks), original(self, tasks)))
    config = json.loads((maml_run / "config.json").read_text())
    family = make_family(config["family"], **config["family_kwargs"])
    trained = set(family.split(seed=config["split_seed"], num_tasks=config["num_tasks"]).train)
    evaluation = evaluate_run(maml_run, num_tasks=250, task_pool=4000)
    assert len(set(played)) == 250 and not set(played) & trained
    assert set(played) <= set(family.split(seed=config["split_seed"], num_tasks=4000).test)
    assert evaluation.task_pool == 4000 and evaluation_to_json(evaluation)["task_pool"] == 4000
    assert "task_pool" not in evaluation_to_json(evaluate_run(maml_run, num_tasks=2))  # the run's own split
    with pytest.raises(ValueError, match=r"num_tasks 401 exceeds the \d+ tasks of the test split \(a pool of 4000"):
        evaluate_run(maml_run, num_tasks=401, task_pool=4000)


def test_maml_curve_is_steps_from_zero_and_rl2_curve_is_episodes_from_one(maml_run, rl2_run):
    maml = evaluate_run(maml_run, num_tasks=2, num_points=3)
    assert (maml.curve_kind, maml.points) == ("step", (0, 1, 2))
    rl2 = evaluate_run(rl2_run, num_tasks=2, num_points=6)  # more episodes than the 4 it was trained on
    assert (rl2.curve_kind, rl2.points) == ("episode", (1, 2, 3, 4, 5, 6))


def test_the_same_checkpoint_and_seed_give_identical_numbers(maml_run, rl2_run):
    for run in (maml_run, rl2_run):
        first = evaluate_run(run, num_tasks=3, seeds=(4,))
        second = evaluate_run(run, num_tasks=3, seeds=(4,))
        np.testing.assert_array_equal(first.returns, second.returns)
        other = evaluate_run(run, num_tasks=3, seeds=(5,))
        assert not np.array_equal(first.returns, other.returns)


# -- checkpoints and bad input -------------------------------------------------------------------------------------
def copy_run(run, tmp_path):
    target = tmp_path / run.name
    target.mkdir()
    for path in run.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
    return target


def test_a_corrupted_checkpoint_is_a_clear_error(maml_run, tmp_path):
    run = copy_run(maml_run, tmp_path)
    (run / BEST_CHECKPOINT).write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="is not a readable metarl checkpoint"):
        evaluate_run(run)


def test_a_checkpoint_that_would_run_code_is_refused(maml_run, tmp_path):
    run = copy_run(maml_run, tmp_path)

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    with (run / BEST_CHECKPOINT).open("wb") as file:
        pickle.dump({"agent": Exploit()}, file, protocol=2)
    with pytest.raises(ValueError, match="is not a readable metarl checkpoint"):
        evaluate_run(run)


def test_a_foreign_checkpoint_is_a_clear_error(maml_run, rl2_run, tmp_path):
    run = copy_run(maml_run, tmp_path)
    save_checkpoint(run / BEST_CHECKPOINT, {"weights": torch.zeros(3)})
    with pytest.raises(ValueError, match="holds no agent state"):
        evaluate_run(run)
    (run / BEST_CHECKPOINT).write_bytes((rl2_run / BEST_CHECKPOINT).read_bytes())  # another run's agent
    with pytest.raises(ValueError, match="does not hold this run's agent"):
        evaluate_run(run)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "holdout"}, "split must be one of"),
        ({"checkpoint": "newest"}, "checkpoint must be one of"),
        ({"seeds": ()}, "at least one seed"),
        ({"seeds": (-1,)}, "evaluation seed"),
        ({"num_tasks": 10_000}, "exceeds the"),
        ({"num_points": 0}, "num_points"),
    ],
)
def test_bad_arguments_are_rejected(maml_run, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        evaluate_run(maml_run, **kwargs)


def test_a_missing_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no run folder"):
        evaluate_run(tmp_path / "nope")


# -- reports -------------------------------------------------------------------------------------------------------
def test_reports_hold_every_number(maml_run, rl2_run, tmp_path):
    evaluations = [evaluate_run(maml_run, num_tasks=3, seeds=(0, 1)), evaluate_run(rl2_run, num_tasks=3)]
    paths = write_evaluation(evaluations, tmp_path / "out", "test-best")
    document = json.loads(paths["json"].read_text())
    assert [agent["algo"] for agent in document["agents"]] == ["maml-trpo", "rl2"]
    maml = document["agents"][0]
    assert np.allclose(np.asarray(maml["per_task"]).T, evaluations[0].per_task())
    assert np.asarray(maml["per_seed_task"]).shape == (2, 2, 3)
    assert [row["point"] for row in maml["summary"]] == [0, 1]
    rows = list(csv.DictReader(paths["csv"].open()))
    per_task_rows = [row for row in rows if row["task"] != ""]
    assert len(per_task_rows) == 3 * 2 + 3 * 4
    summary_rows = [row for row in rows if row["task"] == ""]
    for row, expected in zip(summary_rows[:2], evaluations[0].summary(), strict=True):
        assert float(row["return"]) == pytest.approx(expected["mean"])
        assert float(row["ci_low"]) <= float(row["return"]) <= float(row["ci_high"])
    assert paths["png"].read_bytes().startswith(b"\x89PNG")
    table = comparison_table(evaluations)
    assert "step 1:" in table and "episode 4:" in table


# -- success rate -----------------------------------------------------------------------------------------------------
# a goal radius of 0.8 lets even an untrained policy reach some goals (1 away) in 20 steps of at most 0.1 per axis
SPARSE = {"family": "MetaRL/SparsePointRobot-v0", "family_kwargs": {"goal_radius": 0.8}}


@pytest.fixture(scope="module")
def sparse_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse")
    configs = {
        "maml-trpo": {**TINY_TRAIN_CONFIG, **SPARSE},
        "rl2": {**TINY_RL2_CONFIG, **SPARSE},
        "random": tiny_values("random", **SPARSE),
    }
    return [train(config_from_dict(config), run_dir=root / algo).run_dir for algo, config in configs.items()]


def test_success_rate_is_measured_where_the_family_defines_success(sparse_runs):
    for run in sparse_runs:
        evaluation = evaluate_run(run, num_tasks=8, num_points=3, seeds=(0, 1))
        assert evaluation.success.shape == evaluation.returns.shape == (2, 3, 8)
        assert ((evaluation.success >= 0) & (evaluation.success <= 1)).all()
        assert 0 < evaluation.success.mean() < 1, evaluation.algo
        # the reward is positive only inside the goal radius: some episode of a task succeeded iff its return is > 0
        assert np.array_equal(evaluation.success > 0, evaluation.returns > 0), evaluation.algo
        again = evaluate_run(run, num_tasks=8, num_points=3, seeds=(0, 1))
        assert np.array_equal(again.success, evaluation.success)


def test_success_summary_of_known_values():
    success = np.array([[[0.0, 0.5, 1.0, 0.5]], [[0.0, 0.5, 1.0, 1.0]]])  # 2 seeds, 1 point, 4 tasks
    evaluation = Evaluation(
        name="known", run_dir="", checkpoint="best", algo="maml-trpo", family="f", split="test",
        curve_kind=CurveKind.STEP,
        points=(0,), task_indices=(0, 1, 2, 3), seeds=(0, 1), returns=np.zeros((2, 1, 4)), success=success,
    )  # fmt: skip
    assert np.array_equal(evaluation.per_task_success(), [[0.0, 0.5, 1.0, 0.75]])
    (row,) = evaluation.summary()
    assert row["success"] == pytest.approx(0.5625)
    assert (row["success_ci_low"], row["success_ci_high"]) == bootstrap_ci([0.0, 0.5, 1.0, 0.75])
    assert "success 56% [" in comparison_table([evaluation])


def test_reports_hold_success_rates_and_leave_them_out_where_undefined(sparse_runs, maml_run, tmp_path):
    evaluations = [evaluate_run(sparse_runs[0], num_tasks=3, seeds=(0, 1)), evaluate_run(maml_run, num_tasks=3)]
    paths = write_evaluation(evaluations, tmp_path, "test-best")
    sparse, navigation = json.loads(paths["json"].read_text())["agents"]
    assert np.allclose(np.asarray(sparse["per_task_success"]).T, evaluations[0].per_task_success())
    assert np.asarray(sparse["per_seed_task_success"]).shape == (2, 2, 3)
    assert all({"success", "success_ci_low", "success_ci_high"} <= set(row) for row in sparse["summary"])
    assert "per_task_success" not in navigation and all("success" not in row for row in navigation["summary"])
    rows = list(csv.DictReader(paths["csv"].open()))
    sparse_rows = [row for row in rows if row["agent"] == evaluations[0].name]
    navigation_rows = [row for row in rows if row["agent"] == evaluations[1].name]
    summary = [row for row in sparse_rows if row["task"] == ""]
    for row, expected in zip(summary, evaluations[0].summary(), strict=True):
        assert float(row["success"]) == pytest.approx(expected["success"])
    assert all(row["success"] == "" for row in navigation_rows)
    table = comparison_table(evaluations).splitlines()
    assert "success" in table[1] and "success" not in table[2]


def test_metarl_evaluate_writes_per_run_and_comparison_reports(maml_run, rl2_run, tmp_path, capsys):
    assert cli_main(["evaluate", str(maml_run), str(rl2_run), "--tasks", "2", "--out", str(tmp_path / "cmp")]) == 0
    for folder in (maml_run / "evaluation", rl2_run / "evaluation", tmp_path / "cmp"):
        assert {path.name for path in folder.iterdir()} >= {"test-best.json", "test-best.csv", "test-best.png"}
    assert "[95% bootstrap interval over tasks]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["evaluate", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):  # one number of points, or one per run
        cli_main(["evaluate", str(maml_run), str(rl2_run), "--points", "1", "2", "3"])
    arguments = ["--tasks", "2", "--points", "2", "5", "--names", "MAML", "RL²", "--out", str(tmp_path)]
    cli_main(["evaluate", str(maml_run), str(rl2_run), *arguments])
    document = json.loads((tmp_path / "test-best.json").read_text())
    assert [agent["points"] for agent in document["agents"]] == [[0, 1], [1, 2, 3, 4, 5]]
    assert [agent["name"] for agent in document["agents"]] == ["MAML", "RL²"]
