"""Runs that belong to themselves: each checkpoint records its run's identity, and ``metarl evaluate`` and
``metarl train --resume`` refuse another run's checkpoint (``--foreign-checkpoint`` evaluates one on purpose), while
run folders written before identities existed keep evaluating and resuming."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_values

from metarl.checkpoint import BEST_CHECKPOINT, CHECKPOINT_FORMAT, LAST_CHECKPOINT, load_checkpoint, save_checkpoint
from metarl.cli import main
from metarl.evaluate import evaluate_run
from metarl.presets import config_from_dict, load_run_config
from metarl.run_folder import RUN_CONTROL_FIELDS, RUN_RECORD, config_fingerprint
from metarl.trainer import train

LEGACY_RUNS = Path(__file__).parent / "data" / "legacy_runs"
"""Run folders written before checkpoints had an identity (no run.json): see tests/test_agent_registry.py."""
NAVIGATION = "MetaRL/Navigation2D-v0"
SPARSE = "MetaRL/SparsePointRobot-v0"  # the same observation and action shapes as Navigation2D: its parameters fit


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny finished runs (2 iterations, best.pt and last.pt at iteration 2) of families of the same shapes."""
    root = tmp_path_factory.mktemp("runs")
    return {
        family: train(
            config_from_dict(tiny_values("maml-trpo", family=family, iterations=2)), run_dir=root / name
        ).run_dir
        for name, family in (("navigation", NAVIGATION), ("sparse", SPARSE))
    }


def copy_run(run: Path, target: Path) -> Path:
    return Path(shutil.copytree(run, target))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file's bytes and modification time under ``folder`` (folders map to None)."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns) if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


def run_id(run: Path) -> str:
    return json.loads((run / RUN_RECORD).read_text())["run_id"]


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI expecting exit status 2 and one line on stderr; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarl: error: "), lines
    return lines[0]


# -- what a checkpoint records -----------------------------------------------------------------------------------------
def test_every_checkpoint_records_its_runs_identity(runs):
    run = runs[NAVIGATION]
    record = json.loads((run / RUN_RECORD).read_text())
    assert set(record) == {"run_id", "checkpoint_format"} and record["checkpoint_format"] == CHECKPOINT_FORMAT
    config = load_run_config(run)
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        assert load_checkpoint(run / name)["identity"] == {
            "run_id": record["run_id"],
            "family": NAVIGATION,
            "family_kwargs": {"horizon": 10},
            "algo": "maml-trpo",
            "fingerprint": config_fingerprint(config),
            "format": CHECKPOINT_FORMAT,
        }
    assert run_id(runs[SPARSE]) != record["run_id"]


def test_the_fingerprint_covers_what_shapes_a_run_and_leaves_out_how_it_is_run(runs):
    config = load_run_config(runs[NAVIGATION])
    fingerprint = config_fingerprint(config)
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0  # sha256, hex
    run_control = {
        "iterations": 500,
        "run_root": "elsewhere",
        "progress": True,
        "device": "cpu",
        "threads": 3,
        "checkpoint_interval": 7,
        "dist_timeout_s": 9.0,
        "test_tasks": 50,
    }
    assert set(run_control) == RUN_CONTROL_FIELDS
    assert config_fingerprint(dataclasses.replace(config, **run_control)) == fingerprint
    for change in ({"seed": 1}, {"hidden_sizes": (32,)}, {"family_kwargs": {"horizon": 11}}, {"eval_interval": 1}):
        assert config_fingerprint(dataclasses.replace(config, **change)) != fingerprint, change
    assert config_fingerprint(dataclasses.replace(config, hidden_sizes=[16])) == fingerprint  # a list is a tuple


def test_a_runs_own_checkpoints_evaluate_and_resume(runs, tmp_path, capsys):
    run = copy_run(runs[NAVIGATION], tmp_path / "run")
    for checkpoint in ("best", "last"):
        assert main(["evaluate", str(run), "--tasks", "2", "--checkpoint", checkpoint]) == 0
        assert "foreign_checkpoint" not in (run / "evaluation" / f"test-{checkpoint}.json").read_text()
    assert main(["train", "--resume", str(run), "iterations=3"]) == 0
    assert load_checkpoint(run / LAST_CHECKPOINT)["iteration"] == 3
    assert "belongs to" not in capsys.readouterr().err


# -- another run's checkpoint --------------------------------------------------------------------------------------
@pytest.mark.parametrize("checkpoint", ["best", "last"])
def test_evaluate_refuses_another_runs_checkpoint_of_the_same_shapes(runs, tmp_path, capsys, checkpoint):
    name = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}[checkpoint]
    run = copy_run(runs[SPARSE], tmp_path / "sparse")
    shutil.copy2(runs[NAVIGATION] / name, run / name)
    before = snapshot(run)
    error = cli_error(capsys, ["evaluate", str(run), "--checkpoint", checkpoint])
    navigation, sparse = run_id(runs[NAVIGATION])[:8], run_id(run)[:8]
    assert (
        f"{run / name} does not hold this run's agent: it belongs to run {navigation}… ({NAVIGATION}, maml-trpo), "
        f"not to this run {sparse}… ({SPARSE}, maml-trpo)"
    ) in error
    assert "--foreign-checkpoint" in error
    assert snapshot(run) == before  # no evaluation/ written
    with pytest.raises(ValueError, match="belongs to run"):
        evaluate_run(run, checkpoint=checkpoint)


def test_resume_refuses_another_runs_last_pt(runs, tmp_path, capsys):
    run = copy_run(runs[SPARSE], tmp_path / "sparse")
    shutil.copy2(runs[NAVIGATION] / LAST_CHECKPOINT, run / LAST_CHECKPOINT)
    before = snapshot(run)
    error = cli_error(capsys, ["train", "--resume", str(run), "iterations=81"])
    navigation = run_id(runs[NAVIGATION])[:8]
    assert f"{run / LAST_CHECKPOINT} does not hold this run's agent: it belongs to run {navigation}…" in error
    assert f"not to this run {run_id(run)[:8]}… ({SPARSE}, maml-trpo)" in error
    assert "foreign" not in error  # a resume has no way round it
    assert snapshot(run) == before  # last.pt, results.json, metrics.jsonl and config.json as they were


def test_resume_refuses_another_runs_best_pt(runs, tmp_path, capsys):
    """The resumed run keeps best.pt and tests its parameters at the end: another run's is refused up front."""
    run = copy_run(runs[SPARSE], tmp_path / "sparse")
    shutil.copy2(runs[NAVIGATION] / BEST_CHECKPOINT, run / BEST_CHECKPOINT)
    before = snapshot(run)
    error = cli_error(capsys, ["train", "--resume", str(run), "iterations=3"])
    assert f"{run / BEST_CHECKPOINT} does not hold this run's agent: it belongs to run" in error
    assert snapshot(run) == before


def test_another_run_of_the_same_config_is_still_another_run(runs, tmp_path, capsys):
    twin = train(
        config_from_dict(tiny_values("maml-trpo", family=NAVIGATION, iterations=2)), run_dir=tmp_path / "twin"
    ).run_dir
    run = copy_run(runs[NAVIGATION], tmp_path / "run")
    shutil.copy2(twin / BEST_CHECKPOINT, run / BEST_CHECKPOINT)
    error = cli_error(capsys, ["evaluate", str(run)])
    assert f"belongs to run {run_id(twin)[:8]}… ({NAVIGATION}, maml-trpo), not to this run {run_id(run)[:8]}…" in error


def test_a_config_json_edited_to_another_family_is_refused(runs, tmp_path, capsys):
    run = copy_run(runs[NAVIGATION], tmp_path / "run")
    values = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**values, "family": SPARSE}))
    before = snapshot(run)
    error = cli_error(capsys, ["train", "--resume", str(run)])
    assert f"{run / 'config.json'} names run" in error and "config.json was edited" in error
    assert snapshot(run) == before


def test_a_checkpoint_of_a_newer_format_is_refused(runs, tmp_path, capsys):
    run = copy_run(runs[NAVIGATION], tmp_path / "run")
    state = load_checkpoint(run / BEST_CHECKPOINT)
    save_checkpoint(
        run / BEST_CHECKPOINT, {**state, "identity": {**state["identity"], "format": CHECKPOINT_FORMAT + 1}}
    )
    error = cli_error(capsys, ["evaluate", str(run)])
    assert f"{run / BEST_CHECKPOINT} was written by a newer metarl" in error and "upgrade metarl" in error


# -- on purpose ------------------------------------------------------------------------------------------------------
def test_foreign_checkpoint_evaluates_another_runs_parameters_and_records_it(runs, tmp_path, capsys):
    run = copy_run(runs[SPARSE], tmp_path / "sparse")
    shutil.copy2(runs[NAVIGATION] / BEST_CHECKPOINT, run / BEST_CHECKPOINT)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--tasks", "2", "--foreign-checkpoint"]) == 0
    err = capsys.readouterr().err
    assert f"belongs to run {run_id(runs[NAVIGATION])[:8]}… ({NAVIGATION}, maml-trpo)" in err and "on purpose" in err
    (agent,) = json.loads((run / "evaluation" / "test-best.json").read_text())["agents"]
    identity = load_checkpoint(runs[NAVIGATION] / BEST_CHECKPOINT)["identity"]
    assert agent["foreign_checkpoint"] == identity and agent["family"] == SPARSE

    evaluation = evaluate_run(run, num_tasks=2, allow_foreign=True)
    assert evaluation.foreign_checkpoint == identity
    assert evaluate_run(runs[SPARSE], num_tasks=2).foreign_checkpoint is None  # the run's own parameters


# -- iterations= -----------------------------------------------------------------------------------------------------
def test_extending_a_run_keeps_its_identity_and_fingerprint(runs, tmp_path):
    run = copy_run(runs[NAVIGATION], tmp_path / "run")
    before = load_checkpoint(run / LAST_CHECKPOINT)["identity"]
    assert main(["train", "--resume", str(run), "iterations=4"]) == 0
    after = load_checkpoint(run / LAST_CHECKPOINT)
    assert after["iteration"] == 4 and json.loads((run / "config.json").read_text())["iterations"] == 4
    assert after["identity"] == before
    assert before["fingerprint"] == config_fingerprint(load_run_config(run))
    assert run_id(run) == before["run_id"]


# -- run folders from before identities ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["maml-ppo-meta-sgd", "rl2"])
def test_a_legacy_run_folder_evaluates_and_resumes(tmp_path, name, capsys):
    legacy = copy_run(LEGACY_RUNS / name, tmp_path / "legacy")
    assert not (legacy / RUN_RECORD).exists() and "identity" not in load_checkpoint(legacy / LAST_CHECKPOINT)
    assert main(["evaluate", str(legacy), "--tasks", "2"]) == 0
    assert not (legacy / RUN_RECORD).exists()  # evaluating writes its reports only
    assert main(["train", "--resume", str(legacy), "iterations=2"]) == 0
    # resumed, the folder gets a run id, which its new checkpoints record
    assert load_checkpoint(legacy / LAST_CHECKPOINT)["identity"]["run_id"] == run_id(legacy)
    assert main(["evaluate", str(legacy), "--tasks", "2", "--checkpoint", "last"]) == 0
    assert "belongs to" not in capsys.readouterr().err


def test_a_legacy_folder_compares_a_checkpoints_identity_with_its_config(runs, tmp_path, capsys):
    """A folder without run.json: a checkpoint with an identity is compared by family, algorithm and fingerprint."""
    resumed = copy_run(LEGACY_RUNS / "maml-ppo-meta-sgd", tmp_path / "resumed")
    assert main(["train", "--resume", str(resumed), "iterations=2"]) == 0
    legacy = copy_run(LEGACY_RUNS / "maml-ppo-meta-sgd", tmp_path / "legacy")
    shutil.copy2(resumed / LAST_CHECKPOINT, legacy / LAST_CHECKPOINT)  # same family, algorithm and config
    assert main(["evaluate", str(legacy), "--tasks", "2", "--checkpoint", "last"]) == 0

    shutil.copy2(runs[NAVIGATION] / BEST_CHECKPOINT, legacy / BEST_CHECKPOINT)  # maml-trpo, not maml-ppo
    error = cli_error(capsys, ["evaluate", str(legacy)])
    navigation = run_id(runs[NAVIGATION])[:8]
    assert (
        f"belongs to run {navigation}… ({NAVIGATION}, maml-trpo), not to this run folder ({NAVIGATION}, maml-ppo), "
        in error
    )
    assert f"which has no {RUN_RECORD}" in error

    # the same family and algorithm, another seed: the fingerprint tells them apart
    other_seed = dataclasses.replace(load_run_config(legacy), device="cpu", seed=1)
    other = train(other_seed, run_dir=tmp_path / "other").run_dir
    shutil.copy2(other / BEST_CHECKPOINT, legacy / BEST_CHECKPOINT)
    error = cli_error(capsys, ["evaluate", str(legacy)])
    theirs, ours = (config_fingerprint(config)[:8] for config in (other_seed, load_run_config(legacy)))
    expected = (
        f"({NAVIGATION}, maml-ppo, config {theirs}…), not to this run folder ({NAVIGATION}, maml-ppo, config {ours}…)"
    )
    assert expected in error


def test_a_checkpoint_without_identity_loads_into_a_new_run_of_the_same_config(tmp_path, capsys):
    """Nothing to compare: the legacy checkpoint is accepted (its shapes still have to fit)."""
    legacy = LEGACY_RUNS / "maml-ppo-meta-sgd"
    config = dataclasses.replace(load_run_config(legacy), device="cpu")
    run = train(config, run_dir=tmp_path / "new").run_dir
    shutil.copy2(legacy / BEST_CHECKPOINT, run / BEST_CHECKPOINT)
    assert main(["evaluate", str(run), "--tasks", "2"]) == 0
    own = evaluate_run(legacy, num_tasks=2)
    copied = evaluate_run(run, num_tasks=2)
    assert torch.equal(torch.as_tensor(own.returns), torch.as_tensor(copied.returns))
