"""The meta-trainer: determinism, exact resume after SIGKILL, NaN safety, config validation before any work."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import metarl.envs  # noqa: F401 - registers the families
import numpy as np
import pytest
import torch
from conftest import TINY_RL2_CONFIG, TINY_TRAIN_CONFIG, tiny_values

from metarl import MetaEnv, TaskFamily
from metarl.checkpoint import load_checkpoint
from metarl.presets import config_from_dict, load_config
from metarl.trainer import LAST_CHECKPOINT, guarded_train_step, train


def tiny_config(tmp_path: Path, **overrides):
    return config_from_dict({**tiny_values(overrides.get("algo", "maml-trpo")), "run_root": str(tmp_path), **overrides})


def metrics_without_timings(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if not k.startswith("time/")} for record in records]


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / LAST_CHECKPOINT)["agent"]["policy"]


def test_same_seed_and_config_give_identical_metrics(tmp_path):
    first = train(tiny_config(tmp_path / "a"))
    second = train(tiny_config(tmp_path / "b"))
    assert metrics_without_timings(first.run_dir) == metrics_without_timings(second.run_dir)
    assert first.test_returns == second.test_returns
    for name, value in final_parameters(first.run_dir).items():
        assert torch.equal(value, final_parameters(second.run_dir)[name])
    other_seed = train(tiny_config(tmp_path / "c", seed=1))
    assert metrics_without_timings(other_seed.run_dir) != metrics_without_timings(first.run_dir)


def test_results_give_the_last_parameters_test_return_beside_the_kept_ones(tmp_path, monkeypatch, capsys):
    from metarl.agents.maml_trpo import MAMLTRPO

    from metarl.cli import main

    # a validation score that falls at every evaluation: validation keeps iteration 2 of 4
    scores = iter([-1.0, -2.0])
    monkeypatch.setattr(MAMLTRPO, "selection_score", lambda self, curve: next(scores))
    result = train(tiny_config(tmp_path / "a"))
    assert result.kept_iteration == 2 and result.iterations == 4
    assert result.last_test_returns != result.test_returns
    # a run that keeps its last parameters evaluates them once
    scores = iter([-2.0, -1.0])
    final = train(tiny_config(tmp_path / "b"))
    assert final.kept_iteration == 4 and final.last_test_returns == final.test_returns
    saved = json.loads((result.run_dir / "results.json").read_text())
    assert saved["kept_iteration"] == 2 and saved["last_test_returns"] == result.last_test_returns

    # the end-of-run table shows both rows
    scores = iter([-1.0, -2.0])
    monkeypatch.setattr(MAMLTRPO, "selection_score", lambda self, curve: next(scores))
    overrides = [f"{key}={json.dumps(value)}" for key, value in TINY_TRAIN_CONFIG.items()]
    assert main(["train", *overrides, f"run_root={tmp_path / 'c'}"]) == 0
    table = capsys.readouterr().out
    assert "kept (iteration 2)" in table and "last (iteration 4)" in table


def test_progress_shows_each_iterations_wall_time_and_returns_for_every_agent(tmp_path, capsys):
    # the random agent times no parts of its step: the line must still show its real seconds per iteration
    result = train(tiny_config(tmp_path, algo="random", iterations=2, progress=True))
    lines = capsys.readouterr().err.splitlines()
    progress = [line for line in lines if line.startswith("iter ")]
    assert [line.split()[1] for line in progress] == ["1/2", "2/2"]
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(record["time/iteration_s"] > 0 for record in records)
    for line, record in zip(progress, records, strict=True):
        assert "pre_adapt" in line and line.endswith(f"[{record['time/iteration_s']:.2f} s/it]")


def test_run_folder_holds_config_metrics_checkpoints_and_results(tmp_path):
    result = train(tiny_config(tmp_path))
    names = {path.name for path in result.run_dir.iterdir()}
    assert {"config.json", "metrics.jsonl", "last.pt", "best.pt", "results.json"} <= names
    assert any(name.startswith("events.out.tfevents") for name in names)
    assert json.loads((result.run_dir / "config.json").read_text())["meta_batch_size"] == 3
    records = metrics_without_timings(result.run_dir)
    assert [record["iteration"] for record in records] == [1, 2, 3, 4]
    assert "validation/return_step_1" in records[1] and "validation/return_step_1" not in records[0]
    assert all(record["policy/log_std_mean"] < 0.5 and "losses/pre_adaptation_kl" in record for record in records)
    assert result.test_success is None  # Navigation2D defines no success
    assert not any(key.startswith("validation/success") for record in records for key in record)


@pytest.mark.parametrize("tiny_config", [TINY_TRAIN_CONFIG, TINY_RL2_CONFIG], ids=["maml-trpo", "rl2"])
def test_killed_run_resumes_to_the_same_final_parameters(tmp_path, tiny_config):
    """SIGKILL a training process after its first checkpoint; resuming reaches the uninterrupted run's result."""
    overrides = [f"{key}={json.dumps(value)}" for key, value in tiny_config.items() if key != "progress"]
    overrides += ["iterations=8", "progress=false"]
    reference = train(load_config(None, [*overrides, f"run_root={tmp_path / 'reference'}"]))

    killed_root = tmp_path / "killed"
    command = [sys.executable, "-m", "metarl", "train", *overrides, f"run_root={killed_root}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and not list(killed_root.glob(f"*/{LAST_CHECKPOINT}")):
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    (run_dir,) = killed_root.iterdir()
    iteration_at_kill = load_checkpoint(run_dir / LAST_CHECKPOINT)["iteration"]
    assert iteration_at_kill < 8

    resumed = subprocess.run(
        [sys.executable, "-m", "metarl", "train", "--resume", str(run_dir)], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    for name, value in final_parameters(reference.run_dir).items():
        assert torch.equal(value, final_parameters(run_dir)[name]), name
    assert metrics_without_timings(run_dir) == metrics_without_timings(reference.run_dir)


def test_a_finished_run_extended_equals_the_longer_run(tmp_path):
    """``--resume RUN iterations=N`` trains a finished run on, to where a run of N iterations from the start ends."""
    overrides = [f"{key}={json.dumps(value)}" for key, value in TINY_RL2_CONFIG.items()]  # eval_interval 2
    reference = train(load_config(None, [*overrides, "iterations=8"]), run_dir=tmp_path / "reference")
    run_dir = train(load_config(None, [*overrides, "iterations=4"]), run_dir=tmp_path / "extended").run_dir

    for bad in ("seed=3", "iterations=2"):  # only the length may change, and only upward
        refused = subprocess.run(
            [sys.executable, "-m", "metarl", "train", "--resume", str(run_dir), bad], capture_output=True, text=True
        )
        assert refused.returncode != 0 and ("iterations" in refused.stderr), refused.stderr
    assert json.loads((run_dir / "config.json").read_text())["iterations"] == 4

    extended = subprocess.run(
        [sys.executable, "-m", "metarl", "train", "--resume", str(run_dir), "iterations=8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert extended.returncode == 0, extended.stderr
    assert json.loads((run_dir / "config.json").read_text())["iterations"] == 8
    for name, value in final_parameters(reference.run_dir).items():
        assert torch.equal(value, final_parameters(run_dir)[name]), name
    assert metrics_without_timings(run_dir) == metrics_without_timings(reference.run_dir)


class _CorruptingAgent:
    """Wraps a policy; its train step writes NaN into the policy parameters."""

    def __init__(self, policy: torch.nn.Module) -> None:
        self.policy = policy

    def train_step(self, tasks, rng):
        with torch.no_grad():
            next(self.policy.parameters()).fill_(float("nan"))
        return {"losses/kl": float("nan")}

    def state_dict(self):
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state):
        self.policy.load_state_dict(state["policy"])


def test_a_nan_update_is_undone_and_reported():
    policy = torch.nn.Linear(2, 2)
    before = {name: value.clone() for name, value in policy.state_dict().items()}
    metrics = guarded_train_step(_CorruptingAgent(policy), [], np.random.default_rng(0))
    assert metrics == {"errors/skipped_update": 1.0}
    for name, value in policy.state_dict().items():
        assert torch.equal(value, before[name])


def test_nan_parameters_are_never_saved(tmp_path, monkeypatch):
    from metarl.agents.maml_trpo import MAMLTRPO

    original = MAMLTRPO.meta_update
    calls = {"count": 0}

    def sometimes_corrupt(self, batch):
        calls["count"] += 1
        metrics = original(self, batch)
        if calls["count"] == 2:
            with torch.no_grad():
                next(self.policy.parameters()).fill_(float("nan"))
        return metrics

    monkeypatch.setattr(MAMLTRPO, "meta_update", sometimes_corrupt)
    result = train(tiny_config(tmp_path))
    assert all(torch.isfinite(value).all() for value in final_parameters(result.run_dir).values())
    records = metrics_without_timings(result.run_dir)
    assert records[1].get("errors/skipped_update") == 1.0
    assert "errors/skipped_update" not in records[0]


class _MultiDiscreteFamily(TaskFamily):
    """A family whose action space the MLP policies do not support."""

    name = "MultiDiscreteProbe"
    task_type = type(None)
    env_class = MetaEnv

    def __init__(self) -> None:
        self.horizon = 5
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete([2, 3])

    def sample_tasks(self, rng, num_tasks):
        return [
            dataclasses.make_dataclass("ProbeTask", [("x", float)], frozen=True)(float(v))
            for v in rng.random(num_tasks)
        ]

    def _check_task_values(self, task):
        return None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["inner_step_sizes=[-0.1]"], "inner_step_sizes must be finite numbers > 0"),
        (["family=MetaRL/Navigaton2D-v0"], "did you mean MetaRL/Navigation2D-v0"),
        (["algo=reptile-xl"], "unknown algo 'reptile-xl'"),
        (["meta_batch_size=0"], "meta_batch_size must be >= 1, got 0"),
        (["num_tasks=100", "eval_tasks=5", "test_tasks=20"], "test_tasks 20 exceeds the 10 tasks of its split"),
        (["max_kl=-1"], "max_kl must be a finite number > 0"),
        (["weighting=trial"], "unknown weighting 'trial'; allowed: episode, step"),
        (["algo=rl2", "hidden_sizes=[8]"], "unknown config fields ['hidden_sizes'] for algo 'rl2'; its own fields"),
        (["no_such_field=3"], "unknown config fields ['no_such_field']"),
        (["seed=abc"], "config seed must be an integer, got 'abc'"),
        (["family=MetaRL/MultiDiscreteProbe-v0"], "MultiDiscrete"),
    ],
)
def test_bad_config_is_rejected_before_any_work(tmp_path, temporary_family, overrides, message):
    temporary_family(_MultiDiscreteFamily)
    with pytest.raises(ValueError) as error:
        train(load_config(None, [*overrides, f"run_root={tmp_path}"]))
    assert message in str(error.value)
    assert not any(tmp_path.iterdir()), "a run folder was created for a rejected config"


def test_unknown_preset_is_rejected():
    expected = "unknown preset 'nope'; available: antdir2d-pearl, antdir2d-varibad, halfcheetah-dir-maml-trpo"
    with pytest.raises(ValueError, match=expected):
        load_config("nope")


def test_preset_and_overrides_compose():
    config = load_config("navigation2d-maml-trpo", ["iterations=7", "inner_step_sizes=[0.2, 0.1]"])
    assert config.iterations == 7 and config.inner_step_sizes == (0.2, 0.1)
    assert config.meta_batch_size == 20 and config.max_kl == 0.01 and config.cg_damping == 1e-5


def test_a_sparse_reward_family_without_any_reward_yet_trains_on(tmp_path):
    # no episode reaches a goal of radius 0.01 at first: every advantage, hence the meta-gradient, is zero
    sparse = {"family": "MetaRL/SparsePointRobot-v0", "family_kwargs": {"goal_radius": 0.01}, "iterations": 2}
    result = train(tiny_config(tmp_path, **sparse))
    records = metrics_without_timings(result.run_dir)
    assert [record["losses/line_search_accepted"] for record in records] == [0.0, 0.0]
    assert all(record["meta/return_pre_adapt"] == 0.0 for record in records)
    # the family defines success: validation logs the success rate, the run reports it on the test tasks
    assert records[-1]["validation/success_step_1"] == 0.0
    assert result.test_success == [0.0] * len(result.test_returns)
    assert json.loads((result.run_dir / "results.json").read_text())["test_success"] == result.test_success


def test_exponent_numbers_without_a_dot_are_numbers():
    # PyYAML follows YAML 1.1, which reads 3e-4 as a string; a researcher writes it that way.
    config = load_config(None, ["algo=maml-ppo", "ppo_learning_rate=3e-4"])
    assert config.ppo_learning_rate == 3e-4
    config = load_config(None, ["cg_damping=1E-5", "max_kl=.5e-2"])
    assert (config.cg_damping, config.max_kl) == (1e-5, 0.005)
    with pytest.raises(ValueError, match="config max_kl must be a number, got 'e-4'"):
        load_config(None, ["max_kl=e-4"])


def test_a_nan_loss_skips_the_update_with_a_message(tmp_path, monkeypatch, capsys):
    from metarl.agents.maml_trpo import MAMLTRPO

    # the surrogate loss: its first evaluation is the first update's meta-gradient
    original = MAMLTRPO._surrogate_loss
    calls = {"count": 0}

    def nan_on_the_first_update(distribution, post, old_log_probs, total_tasks=None):
        loss = original(distribution, post, old_log_probs, total_tasks)
        calls["count"] += 1
        return loss * float("nan") if calls["count"] == 1 else loss

    monkeypatch.setattr(MAMLTRPO, "_surrogate_loss", staticmethod(nan_on_the_first_update))
    result = train(tiny_config(tmp_path))
    assert "skipped a meta-update: non-finite surrogate loss (nan)" in capsys.readouterr().err
    records = metrics_without_timings(result.run_dir)
    assert records[0] == {"iteration": 1, "errors/skipped_update": 1.0}
    assert "errors/skipped_update" not in records[1]
    assert all(torch.isfinite(value).all() for value in final_parameters(result.run_dir).values())


def test_tensorboard_gets_the_adaptation_curve_at_each_evaluation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tiny_config(tmp_path))
    events = EventAccumulator(str(result.run_dir), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("validation/adaptation_curve")
    assert [image.step for image in images] == [2, 4]  # eval_interval 2 over 4 iterations
    assert all(image.encoded_image_string.startswith(b"\x89PNG") for image in images)
    assert [scalar.step for scalar in events.Scalars("validation/return_step_1")] == [2, 4]


def test_atomic_writes_give_files_the_usual_permissions(tmp_path):
    from metarl.checkpoint import save_checkpoint, write_text_atomically

    umask = os.umask(0o022)
    try:
        write_text_atomically(tmp_path / "a.json", "{}")
        save_checkpoint(tmp_path / "b.pt", {"x": torch.zeros(1)})
    finally:
        os.umask(umask)
    for name in ("a.json", "b.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name  # not the temporary file's 0600
