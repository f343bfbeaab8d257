"""The metarl command line: listing, the demo main job, and clear errors before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import TINY_RL2_CONFIG

from metarl.cli import main
from metarl.device import resolve_device


def test_families_lists_every_suite_family(capsys):
    assert main(["families"]) == 0
    out = capsys.readouterr().out
    for name in ("Bandit", "TabularMDP", "Navigation2D", "SparsePointRobot"):
        assert f"MetaRL/{name}-v0" in out


def test_demo_rolls_out_every_family(capsys):
    assert main(["demo", "--tasks", "2", "--episodes", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith("MetaRL/")}
    assert set(rows) >= {"MetaRL/Bandit-v0", "MetaRL/TabularMDP-v0", "MetaRL/Navigation2D-v0"}
    # 2 tasks x 2 episodes x horizon 10 steps of the tabular MDP
    assert rows["MetaRL/TabularMDP-v0"].split()[-2] == "40"


def test_demo_is_deterministic(capsys):
    args = ["demo", "--family", "MetaRL/TabularMDP-v0", "--tasks", "3", "--seed", "4"]
    main(args)
    first = capsys.readouterr().out.splitlines()[2].split()[:4]
    main(args)
    assert capsys.readouterr().out.splitlines()[2].split()[:4] == first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--family", "MetaRL/Navigaton2D-v0"], "did you mean MetaRL/Navigation2D-v0"),
        (["demo", "--tasks", "0"], "must be an int >= 1, got 0"),
        (["demo", "--episodes", "-3"], "must be an int >= 1, got -3"),
        (["demo", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["train", "--algo", "rl3"], "unknown algo 'rl3'; did you mean rl2"),
        (["--threads", "0", "families"], "must be an int >= 1, got 0"),
        (["--import", "no_such_module_here", "families"], "No module named 'no_such_module_here'"),
        (["--import", "missing_file.py", "families"], "missing_file.py: no such file"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            resolve_device("cuda")


def test_console_entry_point_runs_as_module():
    result = subprocess.run(
        [sys.executable, "-m", "metarl", "families"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "MetaRL/Bandit-v0" in result.stdout


def test_train_algo_flag_picks_the_algorithm(tmp_path, capsys):
    overrides = [f"{key}={json.dumps(value)}" for key, value in TINY_RL2_CONFIG.items() if key != "algo"]
    assert main(["train", "--algo", "rl2", *overrides, f"run_root={tmp_path}"]) == 0
    (run_dir,) = tmp_path.iterdir()
    assert "__rl2__" in run_dir.name and json.loads((run_dir / "config.json").read_text())["algo"] == "rl2"
    assert "trials of 4 episodes" in capsys.readouterr().out
