"""An algorithm registered from a user's own module (scripts/custom_agent_example.py) works with the suite's CLI,
trainer, evaluator and checkpoints, resumes exactly after a kill, and learns to adapt on held-out tasks."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import metrics_without_timings, tiny_values

from metarl.checkpoint import LAST_CHECKPOINT, load_checkpoint
from metarl.cli import main as cli_main
from metarl.config import field_docs
from metarl.presets import config_from_dict
from metarl.registry import agent_spec
from metarl.trainer import train

EXAMPLE = str(Path(__file__).resolve().parents[1] / "scripts" / "custom_agent_example.py")
ALGO = "fo-maml-reinforce"
OWN_FIELDS = ["hidden_sizes", "episodes_per_task", "inner_step_size", "outer_learning_rate", "gamma", "eval_steps"]


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    """Import the example as ``metarl --import`` does (under the file's stem), so that the runs in this process and
    the ``python -m metarl --import ...`` subprocesses know the same classes."""
    assert cli_main(["--import", EXAMPLE, "algos", ALGO]) == 0


def cli_overrides(**changes: Any) -> list[str]:
    """The suite's tiny run as ``key=value`` arguments of ``metarl train``."""
    values = {**tiny_values(ALGO), **changes}
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def killed_after_its_first_checkpoint(command: list[str], run_root: Path) -> int:
    """Run ``command`` and SIGKILL it once it has written a checkpoint under ``run_root``; returns its exit status."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and not list(run_root.glob(f"*/{LAST_CHECKPOINT}")):
        time.sleep(0.01)
    process.kill()  # SIGKILL: no handler runs, the run stops wherever it is (a no-op if it has already ended)
    return process.wait()


def test_algos_lists_its_fields_with_their_docs(capsys):
    assert cli_main(["--import", EXAMPLE, "algos"]) == 0
    assert ALGO in capsys.readouterr().out
    assert cli_main(["--import", EXAMPLE, "algos", ALGO]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{ALGO}: custom_agent_example.FOMAMLReinforce, config FOMAMLReinforceConfig")
    listed = re.findall(r"^  (\w+) = ", out, flags=re.MULTILINE)  # field lines; their docs are indented more
    assert listed == OWN_FIELDS  # its own fields only; --common adds the run's
    docs = field_docs(agent_spec(ALGO).config_class)
    for name in OWN_FIELDS:
        assert docs[name] and docs[name].split()[0] in out, name


def test_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    assert cli_main(["--import", EXAMPLE, "train", "--algo", ALGO, *cli_overrides(run_root=str(tmp_path))]) == 0
    assert "held-out test tasks (1 adaptation steps)" in capsys.readouterr().out
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "config.json").read_text())["algo"] == ALGO
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["test_returns"]) == 2 and results["iterations"] == 4
    records = metrics_without_timings(run_dir)
    assert [record["iteration"] for record in records] == [1, 2, 3, 4]
    assert {"meta/return_pre_adapt", "meta/return_step_1", "losses/outer"} <= records[0].keys()

    assert cli_main(["--import", EXAMPLE, "evaluate", str(run_dir), "--points", "3"]) == 0
    evaluation = json.loads((run_dir / "evaluation" / "test-best.json").read_text())
    assert "return" in capsys.readouterr().out
    assert evaluation["agents"][0]["algo"] == ALGO and len(evaluation["agents"][0]["points"]) == 3


def test_a_killed_run_resumes_to_the_uninterrupted_runs_parameters_optimiser_and_metrics(tmp_path):
    overrides = cli_overrides(iterations=24, progress=False)
    reference = train(config_from_dict({**tiny_values(ALGO), "iterations": 24}), run_dir=tmp_path / "reference")

    killed_root = tmp_path / "killed"
    command = [sys.executable, "-m", "metarl", "--import", EXAMPLE, "train", *overrides, f"run_root={killed_root}"]
    status = killed_after_its_first_checkpoint(command, killed_root)
    assert status == -signal.SIGKILL, "the run finished before it could be killed"
    (run_dir,) = killed_root.iterdir()
    assert load_checkpoint(run_dir / LAST_CHECKPOINT)["iteration"] < 24

    # the run folder names its algorithm: without the module that registers it, resuming says what to do
    forgotten = subprocess.run(
        [sys.executable, "-m", "metarl", "train", "--resume", str(run_dir)], capture_output=True, text=True
    )
    assert forgotten.returncode == 2 and "unknown algo 'fo-maml-reinforce'" in forgotten.stderr
    assert "metarl --import your_module" in forgotten.stderr
    resumed = subprocess.run(
        [sys.executable, "-m", "metarl", "--import", EXAMPLE, "train", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(run_dir / LAST_CHECKPOINT)
    expected = load_checkpoint(reference.run_dir / LAST_CHECKPOINT)
    assert final["iteration"] == 24 and final["agent"]["optimizer"]["state"]  # Adam's moments are in the state
    for name, value in expected["agent"]["policy"].items():
        assert torch.equal(final["agent"]["policy"][name], value), name
    optimizer, expected_optimizer = final["agent"]["optimizer"], expected["agent"]["optimizer"]
    assert optimizer["param_groups"] == expected_optimizer["param_groups"]
    for index, moments in expected_optimizer["state"].items():  # Adam's step count and moments, per parameter
        for key, value in moments.items():
            assert torch.equal(optimizer["state"][index][key], value), (index, key)
    assert metrics_without_timings(run_dir) == metrics_without_timings(reference.run_dir)
    assert json.loads((run_dir / "results.json").read_text())["test_returns"] == reference.test_returns


def test_one_inner_step_improves_held_out_navigation_tasks_after_meta_training(tmp_path):
    """FO-MAML on MetaRL/Navigation2D-v0 (goals in [-0.5, 0.5]², horizon 100): after meta-training, one inner
    policy-gradient step raises the return on held-out test tasks by a clear margin, to a return no policy that ignores
    the goal can reach (standing still, the best such policy, gets -37.4 on these 40 tasks)."""
    config = config_from_dict(
        {
            "algo": ALGO,
            "seed": 0,
            "iterations": 40,
            "meta_batch_size": 10,
            "episodes_per_task": 10,
            "outer_learning_rate": 0.01,
            "eval_interval": 10,
            "eval_tasks": 20,
            "test_tasks": 40,
            "checkpoint_interval": 40,
            "progress": False,
        }
    )
    before, after_one_step = train(config, run_dir=tmp_path / "run").test_returns
    # seeds 0-4 gave -40.2 -> -22.3, -43.6 -> -29.4, -40.3 -> -18.4, -37.4 -> -16.5, -42.8 -> -20.8; an untrained
    # policy gains more from one step (it sheds its wide initial noise) but stays near -150
    assert after_one_step > before + 10.0, (before, after_one_step)
    assert after_one_step > -32.0, (before, after_one_step)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "inner_lr=0.1",
            f"unknown config fields ['inner_lr'] for algo '{ALGO}'; its own fields: {', '.join(OWN_FIELDS)}",
        ),
        ("max_kl=0.01", f"unknown config fields ['max_kl'] for algo '{ALGO}'"),  # another algorithm's field
        ("inner_step_size=-0.1", "inner_step_size must be a finite number > 0, got -0.1"),
        ("eval_steps=-1", "eval_steps must be >= 0, got -1"),
    ],
)
def test_bad_fields_are_refused_naming_the_algorithms_fields(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--import", EXAMPLE, "train", "--algo", ALGO, override, f"run_root={tmp_path}"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "a run folder was made for a refused config"
