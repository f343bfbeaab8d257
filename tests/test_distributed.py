"""Meta-training across processes (torchrun, gloo on CPU): the split of the meta-batch, the action noise, equality with
one process, resume, and a job that ends when one of its processes dies or hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RL2_CONFIG, TINY_TRAIN_CONFIG, tiny_values
from torch.distributions import Categorical, Independent, Normal

from metarl.checkpoint import LAST_CHECKPOINT, load_checkpoint
from metarl.distributed import TaskShard, Workers, sample_actions
from metarl.presets import config_from_dict
from metarl.trainer import train

REPO = Path(__file__).resolve().parents[1]

# TRPO's conjugate gradient with the paper's damping (1e-5) amplifies the float-order differences of summing over
# processes to ~1 % of a step (docs/distributed.md); with damping 0.1 one and two processes agree to ~1e-6
MAML_CONFIG = {**TINY_TRAIN_CONFIG, "meta_batch_size": 5, "seed": 1}
TRPO_CONFIG = {**MAML_CONFIG, "cg_damping": 0.1}
# 7 trials over 2 processes: blocks of 3 and 4, so minibatches hold uneven shares (and sometimes none) of a process's
# trials
RL2_CONFIG = {**TINY_RL2_CONFIG, "meta_batch_size": 7, "eval_tasks": 5, "test_tasks": 5, "seed": 1}
TRANSFORMER_CONFIG = {
    **{key: value for key, value in RL2_CONFIG.items() if not key.startswith("rl2_")},
    "algo": "rl2-transformer",
    "transformer_width": 16,
    "transformer_heads": 2,
}
PARAMETER_TOLERANCE = 1e-4


def overrides(config: dict) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in config.items()]


def torchrun(args: list[str], processes: int = 2, **popen: object) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node=N -m metarl train ARGS`` in a child process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*command, "-m", "metarl", "train", *args],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def run_torchrun(args: list[str], timeout: float = 240) -> str:
    process = torchrun(args)
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def only_run_dir(root: Path) -> Path:
    (run_dir,) = root.iterdir()
    return run_dir


def assert_same_parameters(run_a: Path, run_b: Path) -> None:
    policy_a = load_checkpoint(run_a / LAST_CHECKPOINT)["agent"]["policy"]
    policy_b = load_checkpoint(run_b / LAST_CHECKPOINT)["agent"]["policy"]
    assert policy_a.keys() == policy_b.keys()
    difference = max(float((policy_a[name] - policy_b[name]).abs().max()) for name in policy_a)
    assert difference < PARAMETER_TOLERANCE, f"parameters differ by {difference}"
    print(f"largest parameter difference between the runs: {difference:.2e}")
    moved = max(float(policy_a[name].abs().max()) for name in policy_a)
    assert moved > 0.01  # a trained policy, not two zero tensors


# -- the split and the noise, in one process ---------------------------------------------------------------------
@pytest.mark.parametrize(("total", "world_size"), [(5, 2), (7, 3), (4, 4), (20, 8)])
def test_shards_cover_the_meta_batch_in_order_with_sizes_differing_by_at_most_one(total, world_size):
    shards = [Workers(rank, world_size).shard(total) for rank in range(world_size)]
    assert [index for shard in shards for index in range(shard.start, shard.stop)] == list(range(total))
    sizes = [shard.size for shard in shards]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_a_meta_batch_smaller_than_the_world_is_rejected():
    with pytest.raises(ValueError, match="a meta-batch of 2 tasks cannot be split over 3 processes"):
        Workers(1, 3).shard(2)
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        Workers(2, 2)


def test_one_process_collectives_are_the_identity():
    workers = Workers()
    values = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(workers.sum(values), values)
    assert torch.equal(workers.gather(values, workers.shard(3)), values)
    assert workers.broadcast({"a": 1}) == {"a": 1}
    assert workers.sum_floats([1.5, torch.tensor(2.0)]) == [1.5, 2.0]


def gaussian(tasks: int) -> Independent:
    mean = torch.linspace(-1, 1, tasks * 3 * 2).reshape(tasks, 3, 2)
    return Independent(Normal(mean, torch.full_like(mean, 0.5)), 1)


def categorical(tasks: int) -> Categorical:
    logits = torch.linspace(-2, 2, tasks * 3 * 4).reshape(tasks, 3, 4)
    return Categorical(logits=logits)


@pytest.mark.parametrize("make", [gaussian, categorical])
def test_each_block_draws_the_noise_one_process_draws_for_its_tasks(make):
    torch.manual_seed(0)
    whole = sample_actions(make(5))
    state_after_whole = torch.get_rng_state()
    for shard in (TaskShard(0, 2, 5), TaskShard(2, 5, 5)):
        torch.manual_seed(0)
        block = sample_actions(_block(make, shard), shard)
        assert torch.equal(block, whole[shard.start : shard.stop])
        # every process's RNG advances as one process's does: the next draws agree too
        assert torch.equal(torch.get_rng_state(), state_after_whole)


def _block(make, shard: TaskShard):
    """The distribution of the tasks of ``shard`` only (what a process holds)."""
    distribution = make(shard.total)
    if isinstance(distribution, Categorical):
        return Categorical(logits=distribution.logits[shard.start : shard.stop])
    base = distribution.base_dist
    return Independent(Normal(base.loc[shard.start : shard.stop], base.scale[shard.start : shard.stop]), 1)


def test_gaussian_actions_are_bitwise_those_of_torch_sampling():
    torch.manual_seed(3)
    expected = gaussian(4).sample()
    torch.manual_seed(3)
    assert torch.equal(sample_actions(gaussian(4)), expected)


def test_categorical_actions_follow_the_probabilities():
    probabilities = torch.tensor([0.1, 0.0, 0.6, 0.3])
    distribution = Categorical(probs=probabilities.expand(200_000, 4))
    torch.manual_seed(0)
    counts = torch.bincount(sample_actions(distribution), minlength=4).double() / 200_000
    assert torch.allclose(counts, probabilities.double(), atol=0.005)
    assert counts[1] == 0  # a zero-probability action is never drawn


def test_a_wrong_block_size_is_rejected():
    with pytest.raises(ValueError, match="a block of 2 tasks was expected, got a batch of 3"):
        sample_actions(gaussian(3), TaskShard(0, 2, 5))


# -- what torchrun rejects before any work -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"algo": "random"}, "algo 'random' does not train across processes"),
        ({"meta_batch_size": 1}, "meta_batch_size 1 is less than the 2 processes"),
        ({"eval_tasks": 1}, "eval_tasks 1 is less than the 2 processes"),
    ],
)
def test_a_job_that_cannot_be_split_is_rejected_before_any_work(tmp_path, monkeypatch, changes, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = config_from_dict({**tiny_values(changes.get("algo", "maml-trpo")), **changes, "run_root": str(tmp_path)})
    with pytest.raises(ValueError, match=message):
        train(config)
    assert list(tmp_path.iterdir()) == []


def test_a_nonpositive_timeout_is_rejected():
    with pytest.raises(ValueError, match="dist_timeout_s must be a finite number > 0, got 0"):
        config_from_dict({"dist_timeout_s": 0})


# -- two processes against one ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_maml_trpo_on_two_processes_matches_one_process_and_resumes_under_torchrun(tmp_path):
    single = train(config_from_dict({**TRPO_CONFIG, "run_root": str(tmp_path / "one")}))
    # two processes: half the run, then resumed under torchrun to the full length
    args = overrides({**TRPO_CONFIG, "iterations": 2, "run_root": str(tmp_path / "two")})
    run_torchrun(args)
    run_dir = only_run_dir(tmp_path / "two")
    output = run_torchrun(["--resume", str(run_dir), f"iterations={TRPO_CONFIG['iterations']}"])
    assert output.count("held-out test tasks") == 1  # rank 0 alone reports
    assert_same_parameters(single.run_dir, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    np.testing.assert_allclose(results["test_returns"], single.test_returns, rtol=0, atol=1e-3)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in metrics] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        RL2_CONFIG,
        {**MAML_CONFIG, "algo": "maml-ppo", "ppo_kl_coeff": 0.1},  # ProMP's penalty on the pre-adaptation policy
        {**MAML_CONFIG, "algo": "reptile"},
        TRANSFORMER_CONFIG,
    ],
    ids=["rl2", "maml-ppo", "reptile", "rl2-transformer"],
)
def test_two_uneven_processes_match_one_process(tmp_path, config):
    single = train(config_from_dict({**config, "run_root": str(tmp_path / "one")}))
    run_torchrun(overrides({**config, "run_root": str(tmp_path / "two")}))
    run_dir = only_run_dir(tmp_path / "two")  # only rank 0 wrote: one run folder
    assert_same_parameters(single.run_dir, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    np.testing.assert_allclose(results["test_returns"], single.test_returns, rtol=0, atol=1e-3)


# -- a process that dies or hangs ends the job ------------------------------------------------------------------------
def start_long_job(tmp_path: Path, extra: dict) -> tuple[subprocess.Popen, int]:
    """A 2-process job that would run for long; returns it and rank 1's pid once training is under way."""
    config = {**TINY_TRAIN_CONFIG, "iterations": 100_000, "meta_batch_size": 4, "run_root": str(tmp_path), **extra}
    job = torchrun(overrides(config))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # rank 0 logs the first iteration: both processes are training
        if any(tmp_path.glob("*/metrics.jsonl")) and any(p.stat().st_size for p in tmp_path.glob("*/metrics.jsonl")):
            break
        assert job.poll() is None, job.communicate()[0]
        time.sleep(0.2)
    else:
        job.kill()
        pytest.fail("the job did not start training within 120 s")
    children = " ".join(Path(path).read_text() for path in Path(f"/proc/{job.pid}/task").glob("*/children")).split()
    for child in children:
        environment = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if b"RANK=1" in environment:
            return job, int(child)
    job.kill()
    pytest.fail(f"no rank-1 worker among torchrun's children {children}")


def wait_for_exit(job: subprocess.Popen, bound: float) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        output, _ = job.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail(f"the job was still running {bound} s after one of its processes failed")
    return job.returncode, output, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through Linux's /proc")
def test_a_killed_process_ends_the_job_with_an_error_within_the_bound(tmp_path):
    job, rank_one = start_long_job(tmp_path, {})
    os.kill(rank_one, signal.SIGKILL)
    returncode, output, seconds = wait_for_exit(job, bound=60)
    assert returncode != 0
    assert "Signal 9 (SIGKILL) received by PID" in output and "rank      : 1" in output, output
    print(f"the job ended {seconds:.1f} s after rank 1 was killed")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through Linux's /proc")
def test_a_hung_process_ends_the_job_after_the_timeout(tmp_path):
    job, rank_one = start_long_job(tmp_path, {"dist_timeout_s": 5})
    os.kill(rank_one, signal.SIGSTOP)  # alive but silent: the others wait at their next collective
    # the bound: dist_timeout_s, then torchrun's 30 s grace before it SIGKILLs the stopped process
    returncode, output, seconds = wait_for_exit(job, bound=5 + 30 + 25)
    assert returncode != 0
    assert "did not complete within 5.0 s (dist_timeout_s): another process has died or hangs" in output, output
    print(f"the job ended {seconds:.1f} s after rank 1 stopped")


# -- the GPU path (runs where torch sees a CUDA device) ----------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("config", [TRPO_CONFIG, RL2_CONFIG], ids=["maml-trpo", "rl2"])
def test_training_on_cuda_keeps_the_policy_and_the_native_envs_on_the_gpu(tmp_path, config):
    from metarl.registry import make_family
    from metarl.trainer import make_agent

    cuda_config = config_from_dict({**config, "device": "cuda", "run_root": str(tmp_path)})
    result = train(cuda_config)
    assert np.isfinite(result.test_returns).all()
    family = make_family(cuda_config.family, **cuda_config.family_kwargs)
    agent = make_agent(cuda_config, family, torch.device("cuda"))
    agent.load_state_dict(load_checkpoint(result.run_dir / LAST_CHECKPOINT)["agent"])
    assert all(parameter.device.type == "cuda" for parameter in agent.policy.parameters())
    tasks = family.sample_tasks(np.random.default_rng(0), 4)
    curve = agent.adaptation_curve(tasks, np.random.default_rng(0), agent.default_num_points())
    assert np.isfinite(curve.returns).all()
    native_envs = list(agent._envs.values())  # the batched envs the evaluation above stepped
    assert native_envs and all(env.device.type == "cuda" for env in native_envs)


def test_only_training_runs_across_processes(monkeypatch, capsys):
    from metarl.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        main(["families"])
    assert "`metarl families` runs in one process, but WORLD_SIZE=2 (torchrun)" in capsys.readouterr().err
