"""The memory budget: runs that cannot fit are refused before anything is written, with the estimate, the memory
available and the fields to lower; the estimates grow as the buffers do; the available memory is read from
/proc/meminfo and the cgroup limits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_values

import metarl.budget
import metarl.registry
import metarl.trainer
from metarl.budget import (
    RUN_OVERHEAD_BYTES,
    SAFETY_FACTOR,
    MemoryEstimate,
    available_memory,
    buffer_estimate,
    cgroup_headroom,
    check_memory_budget,
    estimate_memory,
    largest,
    parse_meminfo,
)
from metarl.cli import main as cli_main
from metarl.presets import load_config
from metarl.registry import agent_spec, list_agents, make_family
from metarl.trainer import train

GiB = 2**30
CUSTOM_AGENT_EXAMPLE = Path(__file__).resolve().parents[1] / "scripts" / "custom_agent_example.py"


@pytest.fixture
def not_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that gets past the checks fails at once instead of allocating its buffers (were the check gone, these
    tests would otherwise try to take the machine's memory)."""

    def started(*args: object) -> None:
        raise AssertionError("the run started: the memory check did not refuse it")

    monkeypatch.setattr(metarl.trainer, "init_workers", started)


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch):
    """``memory(bytes)`` makes the check see that much memory available, whatever this machine has."""

    def set_available(available: int | None) -> None:
        monkeypatch.setattr(metarl.budget, "available_memory", lambda: available)

    return set_available


def tiny_overrides(algo: str, **changes: object) -> list[str]:
    values = {**tiny_values(algo), **changes}
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def estimate_for(overrides: list[str]) -> MemoryEstimate:
    config = load_config(None, overrides)
    family = make_family(config.family, **config.family_kwargs)
    estimate = estimate_memory(config, family, agent_spec(config.algo).agent_class)
    assert estimate is not None
    return estimate


# -- the check in the trainer -------------------------------------------------------------------------------------
def test_a_run_that_cannot_fit_is_refused_before_its_folder_exists(tmp_path, memory, not_started):
    memory(16 * GiB)
    run_root = tmp_path / "runs"
    config = load_config(None, ["episodes_per_task=10000000", f"run_root={run_root}", "progress=false"])
    with pytest.raises(ValueError) as error:
        train(config)
    message = str(error.value)
    assert re.search(r"this run needs about [\d.]+ GiB", message)
    assert "episodes_per_task 10000000 × horizon 100" in message
    assert "but 16.0 GiB are available" in message
    assert re.search(r"lower episodes_per_task, test_tasks, meta_batch_size or num_inner_steps$", message)
    assert not run_root.exists() or not any(run_root.iterdir())


def test_the_command_line_refuses_it_with_one_line(tmp_path, memory, not_started, capsys):
    memory(16 * GiB)
    run_root = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--algo", "rl2", "trial_episodes=1000000", f"run_root={run_root}"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("metarl: error: this run needs about ")
    assert "trial_episodes 1000000" in error and "lower meta_batch_size, trial_episodes" in error
    assert not run_root.exists() or not any(run_root.iterdir())


def test_a_tiny_run_passes_the_live_check(tmp_path):
    # the machine's own available memory (no check where it is unknown)
    result = train(load_config(None, tiny_overrides("maml-trpo", iterations=1, run_root=str(tmp_path))))
    assert result.iterations == 1 and (result.run_dir / "config.json").is_file()


@pytest.fixture
def custom_agent():
    """scripts/custom_agent_example.py's algorithm (it has no memory estimate), registered as ``--import`` does and
    forgotten afterwards unless it was registered before (test_agent_registry checks where every algorithm lives)."""
    registered_before = "fo-maml-reinforce" in metarl.registry._AGENTS
    assert cli_main(["--import", str(CUSTOM_AGENT_EXAMPLE), "algos", "fo-maml-reinforce"]) == 0
    yield
    if not registered_before:
        metarl.registry._AGENTS.pop("fo-maml-reinforce", None)
        sys.modules.pop(CUSTOM_AGENT_EXAMPLE.stem, None)


def test_an_agent_without_an_estimate_is_not_checked(tmp_path, memory, custom_agent):
    memory(1)  # one byte: any agent that is checked is refused
    agent_class = agent_spec("fo-maml-reinforce").agent_class
    assert not hasattr(agent_class, "memory_estimate")
    result = train(load_config(None, tiny_overrides("fo-maml-reinforce", iterations=1, run_root=str(tmp_path))))
    assert result.iterations == 1
    # the same budget refuses an agent that has an estimate: the one byte above is really seen
    with pytest.raises(ValueError, match="but 1 B are available"):
        train(load_config(None, tiny_overrides("maml-trpo", iterations=1, run_root=str(tmp_path / "other"))))


def test_unknown_available_memory_skips_the_check(memory):
    config = load_config(None, ["episodes_per_task=10000000"])
    family = make_family(config.family)
    agent_class = agent_spec(config.algo).agent_class
    with pytest.raises(ValueError, match="are available"):
        check_memory_budget(config, family, agent_class, available=GiB)
    memory(None)  # not Linux, say
    assert check_memory_budget(config, family, agent_class) is not None  # estimated, not checked


def test_the_threshold_counts_the_overhead_the_safety_factor_and_the_processes_of_a_machine(monkeypatch):
    family = make_family("MetaRL/Navigation2D-v0")

    class Fixed:
        @classmethod
        def memory_estimate(cls, config, family) -> MemoryEstimate:
            return MemoryEstimate(bytes=8 * GiB, fields=("episodes_per_task",), description="a fixed estimate")

    config = load_config(None, [])
    needed = SAFETY_FACTOR * (8 * GiB + RUN_OVERHEAD_BYTES)
    assert check_memory_budget(config, family, Fixed, available=int(needed) + 1) is not None
    with pytest.raises(ValueError, match=r"\(a fixed estimate; with a 512.0 MiB run overhead"):
        check_memory_budget(config, family, Fixed, available=int(needed) - 1)
    # torchrun, 2 of the job's 4 processes on this machine: half the buffers, two overheads
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    needed = SAFETY_FACTOR * (8 * GiB / 2 + 2 * RUN_OVERHEAD_BYTES)
    assert check_memory_budget(config, family, Fixed, available=int(needed) + 1) is not None
    with pytest.raises(ValueError, match="for the 2 of 4 torchrun processes on this machine"):
        check_memory_budget(config, family, Fixed, available=int(needed) - 1)


def test_an_estimate_of_the_wrong_type_is_refused():
    class Wrong:
        @classmethod
        def memory_estimate(cls, config, family) -> int:
            return 123

    with pytest.raises(TypeError, match=r"Wrong.memory_estimate must return a metarl.budget.MemoryEstimate, got 123"):
        estimate_memory(load_config(None, []), make_family("MetaRL/Navigation2D-v0"), Wrong)
    with pytest.raises(ValueError, match="bytes must be an int >= 0, got -1"):
        MemoryEstimate(bytes=-1, fields=("x",), description="")
    with pytest.raises(ValueError, match="must name at least one config field"):
        MemoryEstimate(bytes=1, fields=(), description="")


def test_register_agent_refuses_a_memory_estimate_that_is_not_callable():
    from metarl.registry import register_agent

    spec = agent_spec("random")

    class NotCallable(spec.agent_class):
        memory_estimate = 3

    with pytest.raises(TypeError, match=r"NotCallable\.memory_estimate must be a method or absent, got 3"):
        register_agent("not-callable", NotCallable, spec.config_class)
    assert "not-callable" not in list_agents()


# -- the estimates ------------------------------------------------------------------------------------------------
def test_every_builtin_algorithm_estimates_its_memory():
    builtins = [name for name in list_agents() if agent_spec(name).agent_class.__module__.startswith("metarl.agents")]
    assert {"maml-trpo", "maml-ppo", "reptile", "pretrain-trpo", "rl2", "random", "oracle-ppo", "classical"} <= set(
        builtins
    )
    for name in builtins:
        family = "MetaRL/Bandit-v0" if name == "classical" else "MetaRL/Navigation2D-v0"
        estimate = estimate_for([f"algo={name}", f"family={family}"])
        assert 0 < estimate.bytes < 4 * GiB, name  # the defaults are small runs
        assert estimate.fields and estimate.description


@pytest.mark.parametrize(
    ("algo", "field", "other"),
    [
        ("maml-trpo", "episodes_per_task", []),
        ("maml-ppo", "episodes_per_task", []),
        ("reptile", "episodes_per_task", []),
        ("pretrain-trpo", "episodes_per_task", []),
        ("random", "episodes_per_task", []),
        ("oracle-ppo", "episodes_per_task", []),
        ("rl2", "trial_episodes", []),
        ("rl2", "meta_batch_size", ["num_tasks=20000"]),
        ("classical", "trial_episodes", ["family=MetaRL/Bandit-v0"]),
    ],
)
def test_the_estimate_grows_linearly_in_the_buffers_sizes(algo, field, other):
    sizes = [1000, 2000, 4000]
    estimates = [estimate_for([f"algo={algo}", f"{field}={size}", *other]).bytes for size in sizes]
    first, second = estimates[1] - estimates[0], estimates[2] - estimates[1]
    assert first > 0
    assert second == pytest.approx(2 * first, rel=1e-6)  # a + b·size, up to rounding to whole bytes
    assert estimates[0] == pytest.approx(first, rel=0.05)  # and nearly proportional: little else is estimated


def test_the_estimate_names_what_drives_it():
    training = estimate_for(["episodes_per_task=100", "test_tasks=10", "eval_tasks=10", "num_inner_steps=2"])
    assert training.description.startswith(
        "training's episode buffers of meta_batch_size 20 × episodes_per_task 100 × horizon 100 × 3 samplings"
    )
    assert training.fields[:3] == ("episodes_per_task", "meta_batch_size", "num_inner_steps")
    evaluation = estimate_for(["episodes_per_task=100", "meta_batch_size=2"])
    assert evaluation.description.startswith(
        "an evaluation's episode buffers of test_tasks 100 × episodes_per_task 100"
    )
    assert evaluation.fields[:2] == ("episodes_per_task", "test_tasks")


def test_largest_and_buffer_estimate():
    small = buffer_estimate("a", [("x {}", 2), ("{} steps", 3)], 10.0, ("x",))
    big = buffer_estimate("b", [("y {}", 5)], 100.0, ("y", "x"), note="a note")
    assert small.bytes == 60 and small.description == "a of x 2 × 3 steps (about 10 B a step)"
    assert big.description == "b of y 5 (a note, about 100 B a step)"
    assert largest(small, big) == MemoryEstimate(500, ("y", "x"), big.description)
    assert largest(big, small).fields == ("y", "x")


@pytest.mark.slow
def test_the_estimate_is_within_a_factor_of_two_of_the_measured_growth():
    """Peak resident memory of one MAML-TRPO training step on Navigation2D at two episode counts, each in a fresh
    process, against the estimate's growth between them.

    glibc keeps freed heap chunks below its (adaptive, up to 32 MiB) mmap threshold, which inflates the peak of
    mid-sized runs by up to ~1.8x; a fixed 1 MiB threshold returns freed tensors at once, so the peak measured is the
    live memory the estimate models (as it is for the large tensors of a run near the limit).

    The peak is the step's own: the kernel's high-water mark is reset just before it (``/proc/self/clear_refs``).
    The process's lifetime peak (``ru_maxrss``) is not: in the full suite a transient peak while the probe starts up
    reached 544 MB against a resident 259 MB, above the small step's whole peak."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident memory")
    probe = textwrap.dedent(
        """
        import sys
        import numpy as np, torch
        from metarl.distributed import Workers
        from metarl.presets import load_config
        from metarl.registry import agent_spec, make_family

        def status_kib(field):
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith(field))

        torch.set_num_threads(1)  # one thread: one malloc arena, so the peak does not depend on the scheduling
        config = load_config(None, [f"episodes_per_task={sys.argv[1]}", "meta_batch_size=10"])
        family = make_family(config.family)
        agent = agent_spec(config.algo).make_agent(family, config, torch.device("cpu"), Workers())
        tasks = family.sample_tasks(np.random.default_rng(0), config.meta_batch_size)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # the high-water mark VmHWM restarts from the resident memory now
        before = status_kib("VmRSS:")
        agent.train_step(tasks, np.random.default_rng(0))
        print(status_kib("VmHWM:") - before)
        """
    )

    def measured_kib(episodes: int) -> int:
        output = subprocess.run(
            [sys.executable, "-c", probe, str(episodes)],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)},
        )
        return int(output.stdout.split()[-1])

    measured = (measured_kib(80) - measured_kib(10)) * 1024
    overrides = ["meta_batch_size=10", "test_tasks=1", "eval_tasks=1"]  # the training step alone
    estimated = estimate_for(["episodes_per_task=80", *overrides]).bytes
    estimated -= estimate_for(["episodes_per_task=10", *overrides]).bytes
    assert 0.5 < estimated / measured < 2.0, (estimated, measured)


# -- the available memory -----------------------------------------------------------------------------------------
MEMINFO = """MemTotal:       24683772 kB
MemFree:        20760228 kB
MemAvailable:   23225124 kB
Buffers:          312244 kB
"""


def test_meminfo_is_parsed():
    assert parse_meminfo(MEMINFO) == 23225124 * 1024
    assert parse_meminfo("MemTotal: 10 kB\n") is None  # an old kernel without MemAvailable
    assert parse_meminfo(None) is None


def test_cgroup_limits_are_parsed():
    # v2: a limit, the usage and the reclaimable page cache
    stat = "anon 1000\nfile 9000\ninactive_file 4000\nactive_file 5000\n"
    assert cgroup_headroom("10000\n", "7000\n", stat) == 10000 - (7000 - 4000)
    assert cgroup_headroom("max\n", "7000\n", stat) is None
    # v1: the unlimited value, and the hierarchical inactive file pages first
    assert cgroup_headroom("9223372036854771712\n", "100\n", "") is None
    v1_stat = "inactive_file 10\ntotal_inactive_file 30\n"
    assert cgroup_headroom("1000\n", "500\n", v1_stat) == 1000 - (500 - 30)
    assert cgroup_headroom("1000\n", "5000\n", "") == 0  # over the limit already
    assert cgroup_headroom(None, "1", "") is None


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_available_memory_is_the_lowest_of_meminfo_and_every_cgroup_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    write_files(proc, {"meminfo": MEMINFO, "self/cgroup": "0::/job/step\n"})
    assert available_memory(proc, cgroup) == 23225124 * 1024  # no cgroup files: MemAvailable
    # a v2 hierarchy: the job's limit is lower than MemAvailable, its parent's lower still
    write_files(
        cgroup,
        {
            "cgroup.controllers": "memory\n",
            "job/step/memory.max": str(8 * GiB),
            "job/step/memory.current": str(GiB),
            "job/step/memory.stat": "inactive_file 0\n",
            "job/memory.max": str(6 * GiB),
            "job/memory.current": str(2 * GiB),
        },
    )
    assert available_memory(proc, cgroup) == 4 * GiB
    # a v1 memory controller whose path is not visible from inside the container: the mount's root is the container's
    write_files(proc, {"self/cgroup": "4:memory:/docker/abc\n1:cpu:/docker/abc\n"})
    write_files(
        cgroup,
        {
            "memory/memory.limit_in_bytes": str(3 * GiB),
            "memory/memory.usage_in_bytes": str(GiB),
            "memory/memory.stat": "",
        },
    )
    assert available_memory(proc, cgroup) == 2 * GiB
    monkeypatch.setattr(sys, "platform", "darwin")
    assert available_memory(proc, cgroup) is None  # elsewhere: unknown, and nothing is checked


def test_the_live_reading_is_plausible():
    available = available_memory()
    if sys.platform.startswith("linux"):
        assert available is not None and 0 < available < 2**50
    else:
        assert available is None
