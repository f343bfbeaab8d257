"""Bad input to ``metarl train``, ``train --resume`` and ``evaluate``: one line naming the file or value and what to do,
exit status 2, raised before any work starts, and every file of the run folder as it was (bytes and modification
times). A write that fails mid-run (a full disk) names its file and leaves the last checkpoint whole; the temporary
files of a killed write are removed when the run resumes."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from conftest import tiny_values

from metarl.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint
from metarl.cli import main
from metarl.presets import config_from_dict
from metarl.trainer import train

EXAMPLE_FAMILY = str(Path(__file__).resolve().parents[1] / "scripts" / "custom_family_example.py")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished run: 2 iterations, best.pt and last.pt at iteration 2."""
    config = config_from_dict(tiny_values("maml-trpo", iterations=2))
    return train(config, run_dir=tmp_path_factory.mktemp("finished") / "run").run_dir


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of :func:`finished_run` this test may change."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file's bytes and modification time under ``folder`` (folders map to None)."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns) if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI in this process expecting exit status 2 and one line on stderr; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return one_line(capsys.readouterr().err)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarl: error: "), lines
    assert "Traceback" not in stderr
    return lines[0]


def metarl(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m metarl ...`` in a fresh process (so that this process's registrations do not leak into it)."""
    return subprocess.run([sys.executable, "-m", "metarl", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """``read_only(folder)`` takes the write permission off ``folder``. Root may write anyway, so as root (the test
    machines) ``os.access`` is made to answer as for any other user: the up-front check is what these tests test."""
    made: list[Path] = []

    def make(folder: Path) -> None:
        folder.chmod(0o555)
        made.append(folder)

    if os.geteuid() == 0:
        real_access = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and not os.stat(path).st_mode & 0o222:
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    yield make
    for folder in made:
        folder.chmod(0o755)


# -- --resume: the folder, the config, the family, the checkpoint, iterations= -----------------------------------
def test_resuming_a_user_familys_run_without_its_import_changes_nothing(tmp_path):
    overrides = [f"{key}={json.dumps(value)}" for key, value in tiny_values("maml-trpo", iterations=2).items()]
    trained = metarl(
        "--import", EXAMPLE_FAMILY, "train", *overrides, "family=MetaRL/LineGoal-v0", f"run_root={tmp_path}"
    )
    assert trained.returncode == 0, trained.stderr
    (run,) = tmp_path.iterdir()
    before = snapshot(run)
    refused = metarl("train", "--resume", str(run), "iterations=41")
    assert refused.returncode == 2
    error = one_line(refused.stderr)
    assert "unknown family id 'MetaRL/LineGoal-v0'" in error and "metarl --import your_module" in error
    assert snapshot(run) == before  # config.json still says 2 iterations
    extended = metarl("--import", EXAMPLE_FAMILY, "train", "--resume", str(run), "iterations=3")
    assert extended.returncode == 0, extended.stderr
    assert json.loads((run / "config.json").read_text())["iterations"] == 3


def test_resuming_a_folder_that_does_not_exist(tmp_path, capsys):
    error = cli_error(capsys, ["train", "--resume", str(tmp_path / "nope")])
    assert f"no run folder at {tmp_path / 'nope'} (it does not exist); pass a folder made by metarl train" in error
    assert list(tmp_path.iterdir()) == []


def exploit_pickle(path: Path, marker: Path) -> None:
    """A pickle that would create ``marker`` when loaded by the unrestricted unpickler."""

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path.write_bytes(pickle.dumps({"agent": Exploit(), "iteration": 2}, protocol=2))


@pytest.mark.parametrize("damage", ["truncated", "empty", "random bytes", "code"])
def test_resuming_from_a_damaged_last_pt(run, tmp_path, capsys, damage):
    last = run / LAST_CHECKPOINT
    marker = tmp_path / "code-ran"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # torch reads it as OSError Errno 22
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "random bytes":
        last.write_bytes(os.urandom(4096))
    else:
        exploit_pickle(last, marker)
    before = snapshot(run)
    error = cli_error(capsys, ["train", "--resume", str(run), "iterations=3"])
    assert f"{last} is not a readable metarl checkpoint (" in error and "restore it from a copy" in error
    assert "weights_only" not in error and "Weights only" not in error
    assert not marker.exists()
    assert snapshot(run) == before


def test_resuming_without_last_pt_or_with_a_checkpoint_that_cannot_resume(run, capsys):
    (run / LAST_CHECKPOINT).unlink()
    error = cli_error(capsys, ["train", "--resume", str(run)])
    assert f"{run} has no last.pt to resume from" in error and "start the run again" in error
    shutil.copy2(run / BEST_CHECKPOINT, run / LAST_CHECKPOINT)  # an agent, but no random states
    before = snapshot(run)
    error = cli_error(capsys, ["train", "--resume", str(run)])
    assert f"{run / LAST_CHECKPOINT} cannot be resumed from: it lacks rng, best_validation" in error
    assert snapshot(run) == before


def test_resuming_from_a_last_pt_of_other_shapes_without_an_identity(run, capsys):
    """A checkpoint from before identities is not compared, but it still has to fit the agent."""
    legacy = Path(__file__).parent / "data" / "legacy_runs" / "maml-ppo-meta-sgd" / LAST_CHECKPOINT
    shutil.copy2(legacy, run / LAST_CHECKPOINT)
    before = snapshot(run)
    error = cli_error(capsys, ["train", "--resume", str(run), "iterations=3"])
    assert f"{run / LAST_CHECKPOINT} does not hold a state this run (maml-trpo on MetaRL/Navigation2D-v0)" in error
    assert snapshot(run) == before


def test_metrics_torn_by_a_kill_are_repaired_and_damaged_ones_refused(run, capsys):
    metrics = run / "metrics.jsonl"
    intact = metrics.read_text()
    metrics.write_text(intact + '{"iteration": 3, "losses/kl": 0.0')  # killed while appending iteration 3
    assert main(["train", "--resume", str(run), "iterations=3"]) == 0
    assert [record["iteration"] for record in metrics_without_timings(run)] == [1, 2, 3]

    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    before = snapshot(run)
    error = cli_error(capsys, ["train", "--resume", str(run), "iterations=4"])
    assert f"{metrics} line 2 is not a metrics record" in error
    assert snapshot(run) == before


@pytest.mark.parametrize("value", ["1", "abc"])
def test_an_extension_that_would_not_extend_changes_nothing(run, capsys, value):
    before = snapshot(run)
    error = cli_error(capsys, ["train", "--resume", str(run), f"iterations={value}"])
    assert "iterations" in error
    assert snapshot(run) == before


# -- permissions and the run root ---------------------------------------------------------------------------------
def overrides(run_root: Path | str) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in tiny_values("maml-trpo", iterations=2).items()] + [
        f"run_root={run_root}"
    ]


def test_a_run_root_that_is_read_only(tmp_path, capsys, read_only):
    root = tmp_path / "root"
    root.mkdir()
    read_only(root)
    error = cli_error(capsys, ["train", *overrides(root)])
    assert f"run_root={root} is not writable by this user; set run_root= to a folder you can write to" in error
    error = cli_error(capsys, ["train", *overrides(root / "deeper" / "still")])
    assert f"cannot be created: {root} is not writable" in error
    assert list(root.iterdir()) == []


def test_a_run_root_that_is_a_file(tmp_path, capsys):
    (tmp_path / "notes").write_text("mine")
    error = cli_error(capsys, ["train", *overrides(tmp_path / "notes")])
    assert f"run_root={tmp_path / 'notes'} is a file; set run_root= to a folder you can write to" in error
    error = cli_error(capsys, ["train", *overrides(tmp_path / "notes" / "runs")])
    assert f"cannot be created: {tmp_path / 'notes'} is a file" in error
    assert [path.name for path in tmp_path.iterdir()] == ["notes"] and (tmp_path / "notes").read_text() == "mine"


def test_a_run_dir_that_exists_already(run, tmp_path):
    before = snapshot(run)
    with pytest.raises(ValueError, match=f"run folder {run} exists already; choose a new folder"):
        train(config_from_dict(tiny_values("maml-trpo", iterations=2)), run_dir=run)
    assert snapshot(run) == before


def test_resuming_a_read_only_run_folder(run, capsys, read_only):
    before = snapshot(run)
    read_only(run)
    error = cli_error(capsys, ["train", "--resume", str(run), "iterations=3"])
    assert f"run folder {run} is not writable by this user; make it writable to resume the run" in error
    assert snapshot(run) == before


def test_evaluating_a_read_only_run_folder(run, capsys, read_only):
    before = snapshot(run)
    read_only(run)
    error = cli_error(capsys, ["evaluate", str(run)])
    assert f"{run / 'evaluation'}, where metarl evaluate writes its reports, cannot be created: {run} is not" in error
    assert "make the run folder writable" in error
    assert snapshot(run) == before


def without_root_bypass() -> list[str] | None:
    """A command prefix that runs a process as root without the capabilities that let root ignore permissions (so
    that a read-only folder is read-only to it), or None where that cannot be done here."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


@pytest.mark.skipif(without_root_bypass() is None, reason="needs root and setpriv to drop root's permission bypass")
def test_a_read_only_run_folder_for_real(run, tmp_path):
    """The same as the tests above with no emulation: the kernel refuses the writes."""
    root = tmp_path / "root"
    root.mkdir()
    for folder in (run, root):
        folder.chmod(0o555)
    before = snapshot(run)
    try:
        for args, message in (
            (["train", "--resume", str(run), "iterations=3"], f"run folder {run} is not writable by this user"),
            (["evaluate", str(run)], f"cannot be created: {run} is not writable by this user"),
            (["train", *overrides(root)], f"run_root={root} is not writable by this user"),
        ):
            command = [*without_root_bypass(), sys.executable, "-m", "metarl", *args]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
            assert result.returncode == 2 and message in one_line(result.stderr), result.stderr
    finally:
        for folder in (run, root):
            folder.chmod(0o755)
    assert snapshot(run) == before and list(root.iterdir()) == []


def test_evaluate_checks_every_run_before_it_writes_any(run, tmp_path, capsys):
    other = Path(shutil.copytree(run, tmp_path / "other"))
    (other / BEST_CHECKPOINT).write_bytes(b"damaged")
    before = snapshot(run)
    error = cli_error(capsys, ["evaluate", str(run), str(other), "--out", str(tmp_path / "cmp")])
    assert f"{other / BEST_CHECKPOINT} is not a readable metarl checkpoint" in error
    assert snapshot(run) == before and not (tmp_path / "cmp").exists()  # the first run's evaluation/ not written


# -- evaluate: checkpoints that are not checkpoints ---------------------------------------------------------------
@pytest.mark.parametrize("damage", ["random bytes", "pickle", "code", "a folder"])
def test_evaluating_a_file_that_is_not_a_checkpoint(run, tmp_path, capsys, damage):
    best = run / BEST_CHECKPOINT
    marker = tmp_path / "code-ran"
    if damage == "random bytes":
        best.write_bytes(os.urandom(1000))
    elif damage == "pickle":
        best.write_bytes(pickle.dumps({"agent": {"policy": [1.0, 2.0]}, "iteration": 2}, protocol=2))
    elif damage == "code":
        exploit_pickle(best, marker)
    else:
        best.unlink()
        best.mkdir()
    before = snapshot(run)
    error = cli_error(capsys, ["evaluate", str(run)])
    if damage == "a folder":
        assert f"{run} has no checkpoint best.pt" in error and "--checkpoint last" in error
    else:
        assert f"{best} is not a readable metarl checkpoint (" in error
    # only a short reason: none of torch's advice to load it with weights_only=False
    assert "weights_only" not in error and "Weights only" not in error and "add_safe_globals" not in error
    assert not marker.exists()
    assert snapshot(run) == before


# -- messages --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "RUN", "--seeds", "abc"], "argument --seeds: must be an int >= 0, got 'abc'"),
        (["evaluate", "RUN", "--seeds", "-1"], "argument --seeds: must be an int >= 0, got -1"),
        (["evaluate", "RUN", "--tasks", "many"], "argument --tasks: must be an int >= 1, got 'many'"),
    ],
)
def test_an_integer_option_names_itself_and_what_it_allows(run, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(run) if arg == "RUN" else arg for arg in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1]
    assert "_non_negative_int" not in err and "_positive_int" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the message on a machine without CUDA")
def test_cuda_without_a_gpu_tells_each_command_its_own_way_to_set_the_device(run, tmp_path, capsys):
    error = cli_error(capsys, ["train", *overrides(tmp_path / "runs"), "device=cuda"])
    assert "torch sees no CUDA device here; set device=auto or device=cpu" in error and "--device" not in error
    assert not (tmp_path / "runs").exists()
    error = cli_error(capsys, ["evaluate", str(run), "--device", "cuda"])
    assert "torch sees no CUDA device here; use --device auto or --device cpu" in error
    values = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**values, "device": "cuda"}))
    before = snapshot(run)
    error = cli_error(capsys, ["train", "--resume", str(run)])
    assert f'set "device": "auto" in {run / "config.json"}' in error  # --resume takes no device=
    assert snapshot(run) == before


@pytest.mark.parametrize("content", [b"{bad", b"\xff\xfe not utf-8", b'{"algo": "maml-trpo", "seed": "zero"}'])
@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_a_damaged_config_json_is_named(run, capsys, content, command):
    (run / "config.json").write_bytes(content)
    before = snapshot(run)
    argv = ["evaluate", str(run)] if command == "evaluate" else ["train", "--resume", str(run), "iterations=3"]
    error = cli_error(capsys, argv)
    assert f"{run / 'config.json'}" in error
    assert snapshot(run) == before


# -- a write that fails mid-run; leftovers -----------------------------------------------------------------------
def metrics_without_timings(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if not key.startswith("time/")} for record in records]


def test_a_full_disk_mid_run_names_the_file_and_loses_nothing(run, tmp_path, capsys, monkeypatch):
    checkpoints = {name: (run / name).read_bytes() for name in (LAST_CHECKPOINT, BEST_CHECKPOINT)}
    real_save = torch.save

    def full_disk(obj, file, *args, **kwargs):
        file.write(b"the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    error = cli_error(capsys, ["train", "--resume", str(run), "iterations=4"])
    assert f"{run}{os.sep}" in error and ".pt: No space left on device; free some disk space" in error
    assert {name: (run / name).read_bytes() for name in checkpoints} == checkpoints
    assert not [path.name for path in run.iterdir() if path.name.endswith(".tmp")]

    # space freed, the run resumes from the checkpoint it had, to the uninterrupted run's numbers
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "--resume", str(run)]) == 0
    reference = train(config_from_dict(tiny_values("maml-trpo", iterations=4)), run_dir=tmp_path / "reference")
    final, expected = (load_checkpoint(folder / LAST_CHECKPOINT) for folder in (run, reference.run_dir))
    for name, value in expected["agent"]["policy"].items():
        assert torch.equal(final["agent"]["policy"][name], value), name
    assert metrics_without_timings(run) == metrics_without_timings(reference.run_dir)


def test_a_refused_rename_names_the_file_and_leaves_it_whole(run, capsys, monkeypatch):
    config_before = (run / "config.json").read_bytes()

    def refused(source, target):
        raise PermissionError(errno.EACCES, "Permission denied", source)

    monkeypatch.setattr("metarl.checkpoint.os.replace", refused)
    error = cli_error(capsys, ["train", "--resume", str(run), "iterations=3"])
    assert f"{run / 'config.json'}: Permission denied; make it writable" in error  # the first write of the resume
    assert (run / "config.json").read_bytes() == config_before
    assert not [path.name for path in run.iterdir() if path.name.endswith(".tmp")]


def test_leftovers_of_a_killed_write_are_removed_on_resume_and_nothing_else(run, capsys):
    stale = [
        ".best.pt.abc123.tmp",
        ".last.pt.x1y2z3_q.tmp",
        ".metrics.jsonl.k2j3h4g5.tmp",
        ".run.json.0a1b2c3d.tmp",
        ".buffers-4.pt.abc123.tmp",  # an agent's replay buffers (PEARL)
    ]
    kept = [
        ".buffers-x.pt.abc123.tmp",  # not an iteration: not a buffers file
        "notes.tmp",
        ".best.pt.tmp",  # no random part: not made by our writers
        ".best.pt.ABC123.tmp",  # mkstemp's names are lower case
        ".notes.txt.abc123.tmp",  # not a run folder file
        "my.best.pt.abc123.tmp",
        ".best.pt.abc123.tmp.bak",
        "evaluation/.test-best.json.abc123.tmp",  # in a sub-folder
    ]
    (run / "evaluation").mkdir()
    for name in [*stale, *kept]:
        (run / name).write_bytes(b"half a file")
    (run / ".config.json.dir12345.tmp").mkdir()  # a folder of that name is not a file we wrote
    kept.append(".config.json.dir12345.tmp")

    before = snapshot(run)
    cli_error(capsys, ["train", "--resume", str(run), "iterations=1"])  # a refused resume removes nothing either
    assert snapshot(run) == before

    assert main(["train", "--resume", str(run), "iterations=3"]) == 0
    for name in stale:
        assert not (run / name).exists(), name
    for name in kept:
        assert (run / name).exists(), name
        assert (run / name).is_dir() or (run / name).read_bytes() == b"half a file"
