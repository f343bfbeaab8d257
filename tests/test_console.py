"""What ``metarl train`` prints (metarl.console): the start block, labelled per-iteration lines with s/it and ETA,
validation lines that say which iteration best.pt holds, the end table with intervals over the test tasks and the
time across resumes, ``--quiet``, plain lines off a terminal, and ``metarl evaluate --help``."""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_RL2_CONFIG, tiny_values

from metarl import console
from metarl.agent import CurveKind
from metarl.checkpoint import load_checkpoint, save_checkpoint
from metarl.cli import main
from metarl.device import resolve_device
from metarl.evaluate import bootstrap_ci
from metarl.presets import config_from_dict
from metarl.registry import make_family
from metarl.trainer import LAST_CHECKPOINT, RunResult, train

INTERVAL = re.compile(r"\[(-?\d+\.\d\d), (-?\d+\.\d\d)\]")


def train_args(run_root: Path, **overrides) -> list[str]:
    """``metarl train`` arguments of the tiny MAML-TRPO run (4 iterations, validation every 2, 3 test tasks)."""
    values = {key: value for key, value in tiny_values("maml-trpo", **overrides).items() if key != "algo"}
    return ["train", *(f"{key}={json.dumps(value)}" for key, value in values.items()), f"run_root={run_root}"]


def only_run_dir(root: Path) -> Path:
    (run_dir,) = root.iterdir()
    return run_dir


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- formatting ---------------------------------------------------------------------------------------------------
def test_durations_and_the_time_left():
    assert [console.format_duration(s) for s in (0, 42.4, 59.6, 245, 3600, 7620)] == [
        "0s",
        "42s",
        "1m00s",
        "4m05s",
        "1h00m",
        "2h07m",
    ]
    assert console.format_duration(float("nan")) == "?" and console.format_duration(-1) == "?"
    # the mean of the recent iterations (2 s) times the 150 left
    assert console.eta_text([1.0, 3.0], 150) == "ETA 5m00s"
    assert console.eta_text([], 10) == "ETA ?"
    assert console.eta_text([2.0], 0) == "ETA 0s"


@pytest.mark.parametrize("total", [1, 7, 40, 80, 130, 200, 500, 1000, 2000, 5000])
def test_plain_lines_are_throttled_to_a_few_dozen_with_the_first_and_last(total):
    every = console.report_every(total)
    shown = [done for done in range(1, total + 1) if console.shows_iteration(done, total, 1, every)]
    assert shown[0] == 1 and shown[-1] == total
    assert len(shown) <= console.PLAIN_LINES + 2
    if total >= 200:
        assert len(shown) >= 20
    if total <= console.PLAIN_LINES:
        assert every == 1
    assert console.report_every(500) == 20  # 25 lines (and the first) for a 500-iteration run


def test_a_resumed_runs_first_iteration_gets_a_line():
    every = console.report_every(500)
    assert console.shows_iteration(203, 500, 203, every)
    assert not console.shows_iteration(204, 500, 203, every)


def test_curves_are_labelled_by_their_kind_and_long_ones_shortened():
    assert console.curve_text(CurveKind.STEP, [-40.123, -18.3]) == "steps 0..1: -40.12 -18.30"
    assert console.curve_text(CurveKind.EPISODE, [1.0]) == "episode 1: 1.00"
    long = console.curve_text(CurveKind.EPISODE, [float(k) for k in range(100)])
    assert long == "episodes 1..100: 0.00 1.00 2.00 ... 98.00 99.00"


def test_iteration_line_labels_the_train_task_returns_and_gives_s_it_and_eta():
    metrics = {"meta/return_pre_adapt": -40.1, "meta/return_step_1": -18.2, "losses/kl": 0.01, "time/iteration_s": 1.5}
    line = console.iteration_line(12, 500, metrics, ("meta/return_pre_adapt", "meta/return_step"), "ETA 4m05s")
    assert line == "iter    12/500  train tasks: pre_adapt   -40.10  step_1   -18.20  ETA 4m05s  [1.50 s/it]"
    # an agent that counts its env steps (RL²) gets them on the line
    rl2 = {"meta/trial_return": 2.0, "meta/env_steps": 12000.0, "time/iteration_s": 0.5}
    assert "train tasks: trial_return     2.00  12,000 env steps  ETA" in console.iteration_line(
        1, 10, rl2, ("meta/trial_return",), "ETA 5s"
    )


def test_validation_lines_say_which_iteration_best_pt_holds():
    best = console.validation_line(20, 80, CurveKind.STEP, [-40.0, -18.0], -18.0, True, 20, -18.0)
    assert best.startswith("validation at iter 20/80: steps 0..1: -40.00 -18.00  score -18.00")
    assert best.endswith("new best: best.pt holds iteration 20")
    worse = console.validation_line(40, 80, CurveKind.STEP, [-41.0, -19.0], -19.0, False, 20, -18.0)
    assert worse.endswith("not better: best.pt keeps iteration 20 (-18.00)")
    resumed = console.validation_line(60, 80, CurveKind.EPISODE, [1.0, 2.0], 3.0, False, None, 4.0)
    assert "episodes 1..2" in resumed and "keeps the best from before the resume (4.00)" in resumed


def test_env_steps_per_iteration_from_the_agent_or_the_config():
    maml = SimpleNamespace(meta_batch_size=20, episodes_per_task=20, num_inner_steps=1)
    assert console.env_steps_per_iteration(None, maml, 100)[0] == 20 * 20 * 100 * 2
    trials = SimpleNamespace(meta_batch_size=8, trial_episodes=4)
    assert console.env_steps_per_iteration(None, trials, 10) == (320, "8 trials x 4 episodes x 10 steps")
    assert console.env_steps_per_iteration(None, SimpleNamespace(meta_batch_size=3), 10) is None
    once = SimpleNamespace(training_samplings=lambda config: 1)  # the pretrained baseline: no inner steps sampled
    assert console.env_steps_per_iteration(once, maml, 100) == (20 * 20 * 100, "20 tasks x 20 episodes x 100 steps")
    counting = SimpleNamespace(env_steps_per_iteration=lambda: 1234)
    assert console.env_steps_per_iteration(counting, maml, 100) == (1234, "as the agent counts them")


def test_the_trial_estimate_is_what_rl2_counts(tmp_path):
    config = config_from_dict({**TINY_RL2_CONFIG, "run_root": str(tmp_path), "iterations": 1})
    run_dir = train(config).run_dir
    (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    horizon = make_family(config.family, **config.family_kwargs).horizon
    assert console.env_steps_per_iteration(None, config, horizon)[0] == record["meta/env_steps"]


# -- the progress object --------------------------------------------------------------------------------------
def iterate(progress: console.Progress, total: int, first: int = 1) -> None:
    for done in range(first, total + 1):
        progress.iteration(done, {"meta/return_pre_adapt": -1.0, "time/iteration_s": 0.5}, ("meta/return_pre_adapt",))


def test_off_a_terminal_plain_lines_every_nth_iteration():
    stream = io.StringIO()
    progress = console.Progress(500, 0, stream=stream)
    iterate(progress, 500)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert 25 <= len(lines) <= 51
    assert lines[0].startswith("iter     1/500") and lines[-1].startswith("iter   500/500")
    assert all(line.endswith("[0.50 s/it]") for line in lines)
    assert "ETA 4m00s" in lines[1]  # iteration 20: 0.5 s x 480 left


def test_on_a_terminal_one_line_rewritten_in_place_and_ended_by_validation():
    stream = FakeTerminal()
    progress = console.Progress(4, 0, stream=stream)
    iterate(progress, 2)
    progress.validation(2, CurveKind.STEP, [-1.0, -0.5], -0.5, True, -0.5)
    iterate(progress, 4, first=3)
    progress.close()
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n")
    visible = [segment.split("\r")[-1] for segment in text.split("\n")]  # what the terminal shows
    assert visible[0].startswith("iter     2/4") and visible[1].startswith("validation at iter 2/4")
    assert visible[2].startswith("iter     4/4")


def test_disabled_or_quiet_progress_prints_nothing():
    stream = io.StringIO()
    iterate(console.Progress(10, 0, enabled=False, stream=stream), 10)
    with console.quiet():
        quiet = console.Progress(10, 0, stream=stream)
        quiet.start(["metarl train"])
        iterate(quiet, 10)
        quiet.validation(10, CurveKind.STEP, [0.0], 0.0, True, 0.0)
    assert stream.getvalue() == ""
    assert not console.is_quiet()


def fake_result(**overrides) -> RunResult:
    per_task = [[-3.0, -5.0, -4.0], [-1.0, -2.0, -3.0]]
    values = {
        "run_dir": Path("runs/x"),
        "test_returns": [-4.0, -2.0],
        "curve_kind": CurveKind.STEP,
        "best_validation_return": -2.0,
        "iterations": 4,
        "minutes": 0.5,
        "kept_iteration": 2,
        "last_test_returns": [-4.5, -2.5],
        "test_task_returns": per_task,
        "last_test_task_returns": [[-4.0, -5.0, -4.5], [-2.0, -2.5, -3.0]],
        "total_minutes": 0.5,
    }
    return RunResult(**{**values, **overrides})


def test_printing_touches_no_random_generator():
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    progress = console.Progress(10, 0, stream=io.StringIO())
    iterate(progress, 10)
    progress.validation(10, CurveKind.STEP, [0.0, 1.0], 1.0, True, 1.0)
    console.run_report(fake_result())
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])


def test_end_table_intervals_checkpoints_and_time():
    result = fake_result()
    report = console.run_report(result)
    assert "over 3 test tasks [95% bootstrap interval over tasks]" in report
    lines = report.splitlines()
    kept = next(i for i, line in enumerate(lines) if "kept (iteration 2)  best.pt" in line)
    low, high = bootstrap_ci([-1.0, -2.0, -3.0], seed=console.BOOTSTRAP_SEED)
    assert f"[{low:.2f}, {high:.2f}]" in lines[kept + 1]
    assert "last (iteration 4)  last.pt" in lines[kept + 2]
    assert lines[-1] == "run folder: runs/x  (4 iterations, 30s)"
    # the kept parameters are the last ones: one row that says so
    same = console.run_report(fake_result(kept_iteration=4, last_test_returns=[-4.0, -2.0]))
    assert "kept (iteration 4)  best.pt = last.pt" in same and "last (iteration" not in same
    # a resumed run gives the time in all; a checkpoint from before that record says it is unknown
    resumed = console.run_report(fake_result(start_iteration=2, total_minutes=1.25))
    assert resumed.endswith("(4 iterations, 30s since resuming at iteration 2, 1m15s in all)")
    unknown = console.run_report(fake_result(start_iteration=2, total_minutes=None))
    assert "the time before is unknown" in unknown
    # RL²: episodes and the trial, whose interval is over the tasks' trial returns
    trial = console.run_report(fake_result(curve_kind=CurveKind.EPISODE, kept_iteration=4))
    assert "trials of 2 episodes" in trial and "ep 1" in trial and "trial" in trial
    low, high = bootstrap_ci([-4.0, -7.0, -7.0], seed=console.BOOTSTRAP_SEED)
    assert f"[{low:.2f}, {high:.2f}]" in trial


# -- metarl train, end to end -------------------------------------------------------------------------------------
def test_train_prints_start_block_iterations_validations_and_the_end_table(tmp_path, monkeypatch, capsys):
    from metarl.agents.maml_trpo import MAMLTRPO

    # validation keeps iteration 2 of 4: the second validation is not better
    scores = iter([-1.0, -2.0])
    monkeypatch.setattr(MAMLTRPO, "selection_score", lambda self, curve: next(scores))
    assert main(train_args(tmp_path, progress=True)) == 0
    captured = capsys.readouterr()
    run_dir = only_run_dir(tmp_path)
    err = captured.err.splitlines()

    # the start block, before the first iteration
    start = err[: err.index(next(line for line in err if line.startswith("iter ")))]
    block = "\n".join(start)
    assert start[0] == "metarl train: maml-trpo on MetaRL/Navigation2D-v0 (horizon=10)"  # algorithm, family
    assert f"device      {resolve_device('auto')}, 1 thread" in block
    assert "iterations  4" in block and "resuming" not in block
    assert "env steps   about 180 per iteration (3 tasks x 3 episodes x 10 steps x 2" in block
    assert f"run folder  {run_dir}" in block

    iterations = [line for line in err if line.startswith("iter ")]
    assert [line.split()[1] for line in iterations] == ["1/4", "2/4", "3/4", "4/4"]  # 4 plain lines, no \r
    assert all(
        re.search(r"train tasks: pre_adapt .* step_1 .* ETA \S+ +\[\d+\.\d\d s/it\]$", line) for line in iterations
    )
    validations = [line for line in err if line.startswith("validation")]
    assert len(validations) == 2
    assert validations[0].startswith("validation at iter 2/4: steps 0..1: ")
    assert validations[0].endswith("score -1.00  new best: best.pt holds iteration 2")
    assert validations[1].endswith("score -2.00  not better: best.pt keeps iteration 2 (-1.00)")
    assert "\r" not in captured.err

    # the end table, on stdout alone
    out = captured.out
    assert "held-out test tasks (" not in captured.err and "iter " not in out
    assert "held-out test tasks (1 adaptation steps), mean episode return over 3 test tasks" in out
    lines = out.splitlines()
    kept = next(i for i, line in enumerate(lines) if "kept (iteration 2)  best.pt" in line)
    assert "last (iteration 4)  last.pt" in lines[kept + 2]
    results = json.loads((run_dir / "results.json").read_text())
    for row, returns, per_task in ((kept, "test_returns", "test_task_returns"), (kept + 2, "last_test_returns", None)):
        per_task = per_task or "last_test_task_returns"
        intervals = INTERVAL.findall(lines[row + 1])
        assert len(intervals) == 2  # before, step 1
        for k, (low, high) in enumerate(intervals):
            assert len(results[per_task][k]) == 3
            assert float(low) <= round(results[returns][k], 2) <= float(high)
            expected = bootstrap_ci(results[per_task][k], seed=console.BOOTSTRAP_SEED)
            assert (float(low), float(high)) == tuple(round(bound, 2) for bound in expected)
    assert lines[-1].startswith(f"run folder: {run_dir}  (4 iterations, ")


def test_quiet_prints_the_run_folder_alone_and_changes_nothing(tmp_path, capsys):
    assert main(train_args(tmp_path / "loud", progress=True)) == 0
    capsys.readouterr()
    assert main(["train", "--quiet", *train_args(tmp_path / "quiet", progress=True)[1:]]) == 0
    captured = capsys.readouterr()
    run_dir = only_run_dir(tmp_path / "quiet")
    assert captured.out == f"{run_dir}\n"
    assert "iter" not in captured.err and "validation" not in captured.err and "metarl train" not in captured.err
    # printing draws no random number: the quiet run is the loud one
    loud = json.loads((only_run_dir(tmp_path / "loud") / "results.json").read_text())
    quiet = json.loads((run_dir / "results.json").read_text())
    assert quiet["test_task_returns"] == loud["test_task_returns"]
    assert quiet["last_test_task_returns"] == loud["last_test_task_returns"]


def test_time_in_all_counts_both_segments_of_a_resumed_run(tmp_path, capsys):
    assert main(train_args(tmp_path, iterations=2, progress=True)) == 0
    capsys.readouterr()
    run_dir = only_run_dir(tmp_path)
    first_elapsed = load_checkpoint(run_dir / LAST_CHECKPOINT)["elapsed_s"]
    first_minutes = json.loads((run_dir / "results.json").read_text())["minutes"]
    assert 0 < first_elapsed <= first_minutes * 60

    assert main(["train", "--resume", str(run_dir), "iterations=4"]) == 0
    captured = capsys.readouterr()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["start_iteration"] == 2
    assert results["total_minutes"] == pytest.approx(first_elapsed / 60 + results["minutes"])
    assert results["total_minutes"] * 60 >= first_elapsed + results["minutes"] * 60 - 1e-6
    assert load_checkpoint(run_dir / LAST_CHECKPOINT)["elapsed_s"] > first_elapsed
    assert re.search(r"\(4 iterations, \S+ since resuming at iteration 2, \S+ in all\)$", captured.out.strip())
    assert re.search(r"iterations  4, resuming at iteration 2 \(\S+ so far\)", captured.err)
    assert [line.split()[1] for line in captured.err.splitlines() if line.startswith("iter ")] == ["3/4", "4/4"]


def test_a_resume_from_an_older_checkpoint_says_the_earlier_time_is_unknown(tmp_path, capsys):
    config = config_from_dict({**tiny_values("maml-trpo", iterations=2, progress=True), "run_root": str(tmp_path)})
    run_dir = train(config).run_dir
    state = load_checkpoint(run_dir / LAST_CHECKPOINT)
    del state["elapsed_s"]  # as last.pt was written before it held the elapsed time
    save_checkpoint(run_dir / LAST_CHECKPOINT, state)
    capsys.readouterr()
    result = train(None, resume=run_dir, iterations=4)
    err = capsys.readouterr().err
    assert "iterations  4, resuming at iteration 2 (time before unknown" in err
    assert result.total_minutes is None and result.start_iteration == 2
    assert "the time before is unknown" in console.run_report(result)
    assert load_checkpoint(run_dir / LAST_CHECKPOINT)["elapsed_s"] is None  # still unknown, not this segment's alone


def test_evaluate_help_shows_95_percent(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "95% bootstrap interval" in help_text and "%%" not in help_text
