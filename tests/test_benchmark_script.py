"""End-to-end smoke test of ``scripts/benchmark.py`` with its ``--quick`` budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script


def test_quick_benchmark_writes_rates_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    returned = load_script("benchmark").main(["--quick", "--families", "MetaRL/Navigation2D-v0", "--out", str(out)])

    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned))
    assert {record["implementation"] for record in data["results"]} == {"native_numpy", "native_tensor", "sync"}
    assert {record["num_envs"] for record in data["results"]} == {1, 64}
    for record in data["results"]:
        assert record["family"] == "MetaRL/Navigation2D-v0"
        assert record["median_steps_per_second"] > 0
        assert len(record["repeat_steps_per_second"]) == 1
    assert len(data["ratios"]) == 2
    for ratio in data["ratios"]:
        assert ratio["native_numpy_over_sync"] > 0 and ratio["native_tensor_over_sync"] > 0


def test_quick_maml_benchmark_times_every_phase_of_every_implementation(tmp_path: Path) -> None:
    out = tmp_path / "maml.json"
    load_script("benchmark").main(["--maml", "--quick", "--maml-iterations", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"batched", "batched_fast", "per_task"}
    for implementation in data["results"].values():
        median = implementation["median"]
        assert set(median) == {"sample_s", "inner_and_gradient_s", "conjugate_gradient_s", "line_search_s", "total_s"}
        assert all(value > 0 for value in median.values())
        assert median["total_s"] >= median["conjugate_gradient_s"]
    assert data["speedup_total"] > 0 and data["speedup_fast_over_exact"] > 0


def test_quick_learners_benchmark_times_every_learner_against_its_baseline(tmp_path: Path) -> None:
    out = tmp_path / "learners.json"
    returned = load_script("benchmark").main(["--learners", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned))
    learners = {
        "maml-ppo-k2": "maml-ppo-k2",
        "maml-plus-plus-second-order": "maml-ppo-k2",
        "maml-plus-plus-first-order": "maml-ppo-k2",
        "maml-lstm-optimizer": "maml-ppo-k2",
        "maml-trpo-k2": "maml-trpo-k2",
        "maml-plus-plus-trpo-second-order": "maml-trpo-k2",
        "maml-plus-plus-trpo-first-order": "maml-trpo-k2",
    }
    assert set(data["results"]) == set(learners)
    for result in data["results"].values():
        assert len(result["iterations"]) == 1  # --quick: one timed round after the warm-up
        median = result["median"]
        assert median["iteration_s"] > 0 and median["sample_s"] > 0
        assert median["iteration_s"] >= median["sample_s"]
    assert set(data["ratios"]) == {name for name, baseline in learners.items() if name != baseline}
    for name, ratio in data["ratios"].items():
        assert ratio["baseline"] == learners[name]
        assert ratio["ratio"] > 0 and ratio["within_target"] == (ratio["ratio"] <= data["settings"]["speed_target"])


def test_quick_rl2_benchmark_reports_rollout_and_update_throughput(tmp_path: Path) -> None:
    out = tmp_path / "rl2.json"
    # as a script, the way users run it: everything main() dispatches to must be defined by then
    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
    subprocess.run([sys.executable, str(script), "--rl2", "--quick", "--out", str(out)], check=True, timeout=300)
    data = json.loads(out.read_text())
    assert {record["preset"] for record in data["results"]} == {"rl2-bandit-k5-n100", "rl2-tabular-mdp-n10"}
    for record in data["results"]:
        assert record["steps_per_iteration"] == 16 * 100  # 16 trials of 100 steps
        rates = [record[key] for key in ("rollout_steps_per_second", "update_steps_per_second")]
        assert all(rate > 0 for rate in rates)
        assert record["total_steps_per_second"] < min(rates)


def test_quick_transformer_benchmark_compares_equal_sized_models(tmp_path: Path) -> None:
    out = tmp_path / "transformer.json"
    data = load_script("benchmark").main(["--transformer", "--quick", "--out", str(out)])
    assert data == json.loads(out.read_text())
    assert [record["preset"] for record in data["results"]] == ["rl2-bandit-k5-n100", "rl2-tabular-mdp-n10"]
    for record in data["results"]:
        assert record["steps_per_iteration"] == 16 * 100
        gru = record["gru"]
        for name, ratios, shared in (("transformer", "ratios", False), ("transformer_shared", "ratios_shared", True)):
            transformer = record[name]
            assert transformer["transformer_shared_critic"] is shared
            assert abs(transformer["parameters"] - gru["parameters"]) < 0.2 * gru["parameters"]  # equal-sized models
            for part in ("rollout", "update", "total"):
                assert gru[part] > 0 and transformer[part] > 0
                assert record[ratios][part] == pytest.approx(transformer[part] / gru[part])


def test_quick_pearl_benchmark_times_the_batched_step_and_the_loop(tmp_path: Path) -> None:
    out = tmp_path / "pearl.json"
    data = load_script("benchmark").main(["--pearl", "--quick", "--out", str(out)])
    assert data == json.loads(out.read_text())
    assert [record["preset"] for record in data["results"]] == ["halfcheetah-vel-pearl", "sparse-point-robot-pearl"]
    for record in data["results"]:
        assert record["tasks_per_step"] == 16
        assert record["batched_steps_per_second"] > 0 and record["loop_steps_per_second"] > 0
        ratio = record["batched_steps_per_second"] / record["loop_steps_per_second"]
        assert record["batched_over_loop"] == pytest.approx(ratio)


def test_quick_mujoco_benchmark_compares_batched_sync_async_and_bare(tmp_path: Path) -> None:
    out = tmp_path / "mujoco.json"
    data = load_script("benchmark").main(
        ["--mujoco", "--quick", "--families", "MetaRL/HalfCheetahVel-v0", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(data))
    implementations = {(record["num_envs"], record["implementation"]) for record in data["results"]}
    threads = data["settings"]["threads"]
    for num_envs in (1, 4):
        for name in ("batched_1_thread", f"batched_{threads}_threads", "sync", "async"):
            assert (num_envs, name) in implementations
    assert (1, "bare_mj_step") in implementations  # the physical limit, measured once per family
    assert all(record["median_steps_per_second"] > 0 for record in data["results"])
    for ratio in data["ratios"]:
        assert ratio["batched_over_sync"] > 0 and ratio["physics_per_thread_over_bare"] > 0


def test_quick_distributed_benchmark_times_training_on_one_and_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "distributed.json"
    data = load_script("benchmark").main(["--distributed", "--quick", "--out", str(out)])
    assert data == json.loads(out.read_text())
    settings = {(record["run"], record["device"], record["processes"]) for record in data["results"]}
    runs = ("navigation2d-maml-trpo", "navigation2d-maml-trpo-fast", "rl2-bandit-k5-n10")
    assert settings == {(run, "cpu", processes) for run in runs for processes in (1, 2)}
    for record in data["results"]:
        assert record["median_iteration_s"] > 0 and len(record["iteration_s"]) == 1  # 3 iterations, 1 timed
        assert record["speedup"] > 0
        assert ("env_steps_per_s" in record) == record["preset"].startswith("rl2")
    rl2 = next(record for record in data["results"] if record["preset"].startswith("rl2"))
    assert rl2["env_steps_per_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, scripts/gpu_check.sh runs the real check")
def test_the_gpu_check_says_when_there_is_no_gpu() -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    environment = {**os.environ, "PYTHON": sys.executable}
    finished = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, env=environment)
    assert finished.returncode == 2
    assert "torch sees no CUDA device on this machine" in finished.stderr
