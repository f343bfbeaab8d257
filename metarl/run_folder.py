"""Run folders that belong to themselves: a run's identity, the checks made before a run folder is written, and the
leftovers of a killed write.

A run folder holds ``run.json``, written atomically when ``metarl train`` creates the folder: the run's id (a uuid)
and the checkpoint format (:data:`metarl.checkpoint.CHECKPOINT_FORMAT`). Each checkpoint (``last.pt``, ``best.pt``)
records an *identity* (:class:`RunIdentity`): that run id, the family id and its kwargs, the algorithm, a fingerprint
of the config fields that shape the parameters and the training (:func:`config_fingerprint`: every field but
:data:`RUN_CONTROL_FIELDS`) and the checkpoint format. ``metarl evaluate`` and ``metarl train --resume`` load a
checkpoint only into the run it belongs to (:func:`load_run_checkpoint`): another run's parameters of the same shapes
(a Navigation2D run's in a SparsePointRobot run, say) are never evaluated or trained on by mistake.
``metarl evaluate --foreign-checkpoint`` evaluates them on purpose (a transfer experiment); a resume has no such way.

Folders and checkpoints written before run ids existed (no ``run.json``, no identity) keep working, and what can be
compared is compared (:func:`check_belongs`):

* a checkpoint without an identity: nothing (the agent's ``load_state_dict`` still checks the shapes);
* a checkpoint with an identity, in a folder without ``run.json``: family, kwargs, algorithm and fingerprint against
  the folder's ``config.json``;
* a folder with ``run.json``: the run ids, and the family and algorithm (which a hand-edited ``config.json`` could
  change). The fingerprint is not compared there: the run id decides, and a config class that gains a field changes
  the fingerprint of every run made before it, runs that must still resume.

Resuming a folder without ``run.json`` gives it one (:func:`resume_run_folder`), so that its new checkpoints name
their run. Everything a resume reads is checked before it writes a byte (:func:`read_resume_point`), and its writes
happen in one place afterwards, on the process that writes the run folder (rank 0 under ``torchrun``).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from metarl.checkpoint import (
    BEST_CHECKPOINT,
    BUFFERS_CHECKPOINT_PREFIX,
    CHECKPOINT_FORMAT,
    LAST_CHECKPOINT,
    TEMPORARY_SUFFIX,
    buffers_checkpoint,
    load_checkpoint,
    write_text_atomically,
)
from metarl.config import RunConfig, config_to_json
from metarl.presets import load_run_config
from metarl.registry import agent_spec

RUN_RECORD = "run.json"
"""The run folder's record of its run id and checkpoint format, written when the folder is created."""
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
OWN_FILES = (LAST_CHECKPOINT, BEST_CHECKPOINT, CONFIG_FILE, RESULTS_FILE, RUN_RECORD, METRICS_FILE)
"""The files a run folder's own writers replace atomically; :func:`remove_stale_temporaries` removes their leftovers
and no other file."""
RUN_CONTROL_FIELDS = frozenset(
    {"iterations", "run_root", "progress", "device", "threads", "checkpoint_interval", "dist_timeout_s", "test_tasks"}
)
"""Config fields left out of the fingerprint: they say how long, where and how visibly a run goes, not what it learns.
``iterations`` (extending a run with ``iterations=N`` keeps its fingerprint), ``run_root``, ``progress``, ``device``
and ``threads`` (where it runs), ``checkpoint_interval`` (when it saves), ``dist_timeout_s`` (how long processes wait)
and ``test_tasks`` (the size of the final held-out evaluation, which draws from its own generator after training).
The validation fields (``eval_interval``, ``eval_tasks``, ``eval_steps``...) stay in: validation draws from the task
sampler and picks ``best.pt``, so it shapes the run."""
RESUMABLE_KEYS = ("agent", "rng", "iteration", "best_validation")
"""What ``last.pt`` must hold for a run to resume from it."""

_BUFFERS_FILE = re.compile(rf"{re.escape(BUFFERS_CHECKPOINT_PREFIX)}(\d+)\.pt")
"""``buffers-<iteration>.pt`` (:func:`metarl.checkpoint.buffers_checkpoint`)."""
_STALE_TEMPORARY = re.compile(
    rf"\.(?:{'|'.join(re.escape(name) for name in OWN_FILES)}|{_BUFFERS_FILE.pattern})\.[a-z0-9_]+"
    rf"{re.escape(TEMPORARY_SUFFIX)}"
)
"""``.<own file>.<random>.tmp``, as ``tempfile.mkstemp`` names the atomic writers' temporary files (the random part is
lower-case letters, digits and ``_``); the buffers files' likewise."""


# -- identity ------------------------------------------------------------------------------------------------------
def config_fingerprint(config: RunConfig) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of every config field but :data:`RUN_CONTROL_FIELDS`."""
    values = {key: value for key, value in dataclasses.asdict(config).items() if key not in RUN_CONTROL_FIELDS}
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """Which run a checkpoint belongs to (stored in it as a plain dict, so the weights-only unpickler reads it)."""

    run_id: str | None
    """The uuid of the run folder's ``run.json``; ``None``: a folder made before run ids."""
    family: str
    family_kwargs: dict[str, Any]
    algo: str
    fingerprint: str
    """:func:`config_fingerprint` of the run's config."""
    format: int = CHECKPOINT_FORMAT
    """The checkpoint format it was written in."""

    @classmethod
    def of(cls, config: RunConfig, run_id: str | None) -> RunIdentity:
        """The identity of the run ``run_id`` trained with ``config``."""
        return cls(run_id, config.family, _plain(config.family_kwargs), config.algo, config_fingerprint(config))

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], path: Path) -> RunIdentity | None:
        """The identity a checkpoint records, or ``None`` for one written before checkpoints had one.

        Raises:
            ValueError: a damaged record, or one written in a newer format than this suite reads.
        """
        record = checkpoint.get("identity")
        if record is None:
            return None
        version = record.get("format") if isinstance(record, dict) else None
        if isinstance(version, int) and version > CHECKPOINT_FORMAT:
            raise ValueError(
                f"{path} was written by a newer metarl (checkpoint format {version}; this one reads up to "
                f"{CHECKPOINT_FORMAT}): upgrade metarl to load it"
            )
        types = {"run_id": (str, type(None)), "family": str, "family_kwargs": dict, "algo": str, "fingerprint": str}
        fields = record if isinstance(record, dict) else {}
        bad = [key for key, kind in types.items() if not isinstance(fields.get(key), kind)]
        if bad or not isinstance(version, int):
            raise ValueError(f"{path} holds a damaged identity record (bad {', '.join(bad) or 'format'}); restore it")
        return cls(
            fields.get("run_id"),
            fields["family"],
            _plain(fields["family_kwargs"]),
            fields["algo"],
            fields["fingerprint"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The record stored in a checkpoint (``"identity"``) and in an evaluation's JSON (``"foreign_checkpoint"``)."""
        return dataclasses.asdict(self)

    def label(self, *, kwargs: bool = False, fingerprint: bool = False) -> str:
        """``3f2a9c1e… (MetaRL/Navigation2D-v0, maml-trpo)``, with the family's kwargs or the config's fingerprint
        where they are what tells two runs apart."""
        run = f"{self.run_id[:8]}…" if self.run_id else "without run id"
        return f"{run} {self.setup(kwargs=kwargs, fingerprint=fingerprint)}"

    def setup(self, *, kwargs: bool = False, fingerprint: bool = False) -> str:
        """``(MetaRL/Navigation2D-v0, maml-trpo)``, the family's kwargs and the config's fingerprint where asked."""
        family = f"{self.family} {json.dumps(self.family_kwargs, sort_keys=True)}" if kwargs else self.family
        config = f", config {self.fingerprint[:8]}…" if fingerprint else ""
        return f"({family}, {self.algo}{config})"


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists), so that kwargs from a config and from a checkpoint
    compare equal when they say the same."""
    return json.loads(json.dumps(value))


class ForeignCheckpointError(ValueError):
    """A checkpoint of another run; ``identity`` is that run's."""

    def __init__(self, message: str, identity: RunIdentity) -> None:
        super().__init__(message)
        self.identity = identity


def check_belongs(path: Path, found: RunIdentity | None, config: RunConfig, run_id: str | None, fix: str) -> None:
    """That the checkpoint at ``path``, whose identity is ``found``, belongs to the run of ``config`` and ``run_id``
    (see the module's docstring for what is compared where).

    Raises:
        ForeignCheckpointError: another run's checkpoint, in one line naming both runs and ending with ``fix``.
        ValueError: this run's checkpoint, but the folder's ``config.json`` names another family or algorithm.
    """
    if found is None:
        return  # written before checkpoints had an identity: the shapes are all there is to check
    here = RunIdentity.of(config, run_id)
    same_setup = (found.family, found.family_kwargs, found.algo) == (here.family, here.family_kwargs, here.algo)
    if run_id is not None and found.run_id == run_id:
        if not same_setup:
            raise ValueError(
                f"{path.parent / CONFIG_FILE} names run {here.label(kwargs=True)}, but this run's {path.name} was "
                f"written for run {found.label(kwargs=True)}: config.json was edited; restore it from a copy"
            )
        return
    if run_id is None and same_setup and found.fingerprint == here.fingerprint:
        return  # a folder made before run ids: its config is all there is to compare
    shown = {
        "kwargs": found.family == here.family and found.family_kwargs != here.family_kwargs,
        "fingerprint": same_setup and found.fingerprint != here.fingerprint,
    }
    this = (
        f"this run {here.label(**shown)}"
        if run_id
        else f"this run folder {here.setup(**shown)}, which has no {RUN_RECORD}"
    )
    raise ForeignCheckpointError(
        f"{path} does not hold this run's agent: it belongs to run {found.label(**shown)}, not to {this}; {fix}", found
    )


def create_run_record(run_dir: Path) -> str:
    """Write ``run.json`` (a new run id and the checkpoint format) into ``run_dir``; returns the run id."""
    run_id = uuid.uuid4().hex
    record = {"run_id": run_id, "checkpoint_format": CHECKPOINT_FORMAT}
    write_text_atomically(Path(run_dir) / RUN_RECORD, json.dumps(record, indent=2) + "\n")
    return run_id


def read_run_id(run_dir: Path) -> str | None:
    """The run id of ``run_dir``'s ``run.json``; ``None`` when it has none (a folder made before run ids).

    Raises:
        ValueError: a ``run.json`` that cannot be read, is damaged, or was written by a newer metarl.
    """
    path = Path(run_dir) / RUN_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error}); check its permissions") from error
    except ValueError as error:
        raise ValueError(
            f"{path} is not valid JSON ({' '.join(str(error).split())}); restore it from a copy (it names the run "
            "its checkpoints belong to)"
        ) from error
    version = record.get("checkpoint_format") if isinstance(record, dict) else None
    if isinstance(version, int) and version > CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} was written by a newer metarl (checkpoint format {version}; this one reads up to "
            f"{CHECKPOINT_FORMAT}): upgrade metarl to use this run"
        )
    if not isinstance(version, int) or not isinstance(record.get("run_id"), str) or not record["run_id"]:
        raise ValueError(f"{path} is damaged (it needs a run_id and a checkpoint_format); restore it from a copy")
    return record["run_id"]


# -- checkpoints -----------------------------------------------------------------------------------------------------
def load_run_checkpoint(
    run_dir: Path,
    name: str,
    config: RunConfig,
    run_id: str | None,
    *,
    fix: str,
    allow_foreign: bool = False,
    resumable: bool = False,
) -> tuple[dict[str, Any], RunIdentity | None]:
    """The checkpoint ``name`` of the run folder ``run_dir`` (whose config and run id are given), checked: readable
    by the weights-only unpickler, holding an agent state (and, with ``resumable``, all a resume needs), and this
    run's (:func:`check_belongs`).

    Args:
        fix: what the user should do about another run's checkpoint (the end of that error).
        allow_foreign: return another run's checkpoint instead of refusing it.

    Returns:
        The checkpoint, and the identity of the run it belongs to when that is another run (``allow_foreign``), else
        ``None``.

    Raises:
        ValueError: a missing, unreadable, damaged or foreign checkpoint (:class:`ForeignCheckpointError`), in one
            line naming the file.
    """
    path = Path(run_dir) / name
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("agent"), dict):
        raise ValueError(f"{path} is not a metarl checkpoint: it holds no agent state; restore it from a copy")
    if resumable:
        missing = [key for key in RESUMABLE_KEYS if key not in checkpoint]
        if missing or not isinstance(checkpoint["iteration"], int) or not isinstance(checkpoint["rng"], dict):
            raise ValueError(
                f"{path} cannot be resumed from: it lacks {', '.join(missing) or 'a valid iteration or rng state'} "
                f"({name} of metarl train holds {', '.join(RESUMABLE_KEYS)}); restore it from a copy"
            )
    identity = RunIdentity.from_checkpoint(checkpoint, path)
    try:
        check_belongs(path, identity, config, run_id, fix)
    except ForeignCheckpointError:
        if not allow_foreign:
            raise
        return checkpoint, identity
    return checkpoint, None


# -- resuming ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Everything a resume read and checked, and what it will write (:func:`resume_run_folder`)."""

    checkpoint: dict[str, Any]
    """``last.pt``: readable, resumable, this run's."""
    run_id: str | None
    """The id of ``run.json``; ``None``: a folder made before run ids, given one when the resume starts."""
    extended: bool
    """``iterations=`` changed the run's length: ``config.json`` is rewritten with it."""
    kept_metrics: str | None
    """``metrics.jsonl`` cut at the checkpoint's iteration (the later iterations are logged again); ``None``: left as
    it is (absent, or ends there already)."""


def read_resume_point(
    run_dir: str | Path, iterations: int | None, *, writable: bool = True
) -> tuple[RunConfig, ResumePoint]:
    """Read and check everything resuming ``run_dir`` needs, writing nothing: the folder (writable, with
    ``writable``: the process that will write it), ``config.json`` (and the algorithm it names), ``run.json``,
    ``last.pt`` and ``best.pt`` (readable and this run's), ``iterations`` (at least the iterations done) and
    ``metrics.jsonl``.

    Returns:
        The run's config (with ``iterations`` where given) and the resume point.

    Raises:
        ValueError: anything that would stop the resume, in one line naming the file and what to do.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)  # a missing folder, a bad config.json, an algorithm not registered
    if writable:
        check_writable_folder(run_dir, f"run folder {run_dir}", "make it writable to resume the run")
    run_id = read_run_id(run_dir)
    if not (run_dir / LAST_CHECKPOINT).is_file():
        raise ValueError(
            f"{run_dir} has no {LAST_CHECKPOINT} to resume from (the run stopped before its first checkpoint, every "
            f"checkpoint_interval={config.checkpoint_interval} iterations): start the run again"
        )
    checkpoint, _ = load_run_checkpoint(
        run_dir,
        LAST_CHECKPOINT,
        config,
        run_id,
        fix=f"put this run's own {LAST_CHECKPOINT} back (a run resumes only from its own checkpoint)",
        resumable=True,
    )
    if (run_dir / BEST_CHECKPOINT).is_file():  # the resumed run keeps it and its final evaluation uses it
        load_run_checkpoint(
            run_dir,
            BEST_CHECKPOINT,
            config,
            run_id,
            fix=f"put this run's own {BEST_CHECKPOINT} back (the resumed run keeps it as its best parameters)",
        )
    done = checkpoint["iteration"]
    extended = False
    if iterations is not None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < done:
            raise ValueError(
                f"iterations must be an integer >= the {done} iterations {run_dir} has done, got {iterations!r}"
            )
        extended = iterations != config.iterations
        config = dataclasses.replace(config, iterations=iterations)
    kept_metrics = _metrics_up_to(run_dir / METRICS_FILE, done)
    if callable(getattr(agent_spec(config.algo).agent_class, "load_buffers_state_dict", None)):
        load_run_buffers(run_dir, done, config, run_id)  # checked here; mapped, not held: the trainer reads them again
    return config, ResumePoint(checkpoint, run_id, extended, kept_metrics)


def load_run_buffers(run_dir: Path, iteration: int, config: RunConfig, run_id: str | None) -> dict[str, Any]:
    """The replay buffers saved with ``last.pt`` of ``iteration`` (``buffers-<iteration>.pt``), checked: readable by
    the weights-only unpickler, of that iteration and of this run. The tensors are memory-mapped from the file, so
    that checking them costs no memory and loading them costs only the agent's own copy.

    Raises:
        ValueError: a missing, unreadable, damaged or foreign buffers file, in one line naming the file.
    """
    path = Path(run_dir) / buffers_checkpoint(iteration)
    if not path.is_file():
        raise ValueError(
            f"{path} is missing: {LAST_CHECKPOINT} is of iteration {iteration} and this agent resumes only with the "
            "replay buffers saved with it; restore it from a copy, or start the run again"
        )
    saved = load_checkpoint(path, mmap=True)
    if not isinstance(saved, dict) or not isinstance(saved.get("buffers"), dict) or saved.get("iteration") != iteration:
        raise ValueError(
            f"{path} does not hold the replay buffers of iteration {iteration} (it is damaged or was not written by "
            "metarl train); restore it from a copy, or start the run again"
        )
    check_belongs(
        path,
        RunIdentity.from_checkpoint(saved, path),
        config,
        run_id,
        fix="put this run's own buffers file back (a run resumes only with its own replay buffers)",
    )
    return saved["buffers"]


def remove_other_buffers(run_dir: Path, iteration: int) -> None:
    """Remove the buffers files of iterations other than ``iteration`` (older ones, or a newer one whose ``last.pt``
    a killed run never wrote)."""
    for path in Path(run_dir).iterdir():
        match = _BUFFERS_FILE.fullmatch(path.name)
        if match and int(match.group(1)) != iteration and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


def resume_run_folder(run_dir: Path, config: RunConfig, point: ResumePoint) -> str:
    """The writes of a resume, once :func:`read_resume_point` has checked everything: leftovers of a killed write
    removed, a ``run.json`` for a folder made before run ids, ``config.json`` with the new length, ``metrics.jsonl``
    cut at the checkpoint. Returns the run id."""
    remove_stale_temporaries(run_dir)
    remove_other_buffers(run_dir, point.checkpoint["iteration"])
    run_id = point.run_id if point.run_id is not None else create_run_record(run_dir)
    if point.extended:
        write_text_atomically(run_dir / CONFIG_FILE, config_to_json(config))
    if point.kept_metrics is not None:
        write_text_atomically(run_dir / METRICS_FILE, point.kept_metrics)
    return run_id


def _metrics_up_to(path: Path, iteration: int) -> str | None:
    """The lines of ``metrics.jsonl`` up to ``iteration``, or ``None`` when there is nothing to cut. A torn last line
    (a process killed while appending it) is dropped; a damaged line elsewhere is an error."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} cannot be read ({error}); restore it from a copy") from error
    lines = text.splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            logged = json.loads(line)["iteration"]
            if isinstance(logged, bool) or not isinstance(logged, int):
                raise TypeError(logged)
        except (ValueError, KeyError, TypeError) as error:
            if number == len(lines):
                break  # the line being appended when the process died
            raise ValueError(
                f"{path} line {number} is not a metrics record ({type(error).__name__}); remove or repair that line"
            ) from error
        if logged <= iteration:
            kept.append(line)
    cut = "".join(line + "\n" for line in kept)
    return None if cut == text else cut


# -- folders ---------------------------------------------------------------------------------------------------------
def check_writable_folder(path: str | Path, label: str, fix: str) -> None:
    """That ``path`` is a folder this process can write into, or that it can be created as one (its nearest existing
    ancestor is a writable folder).

    Args:
        label: how the message names ``path`` (``run_root=runs``, ``run folder runs/x``).
        fix: what the user should do, ending the message.

    Raises:
        ValueError: in one line.
    """
    path = Path(path)
    existing = path
    while not (existing.exists() or existing.is_symlink()) and existing.parent != existing:
        existing = existing.parent
    made = "is" if existing == path else f"cannot be created: {existing} is"
    if not existing.is_dir():
        raise ValueError(f"{label} {made} {'a file' if existing.is_file() else 'not a folder'}; {fix}")
    # access() asks the kernel, so a read-only filesystem (EROFS) is caught too; root passes where it may write
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{label} {made} not writable by this user; {fix}")


def check_new_run_folder(run_dir: str | Path | None, run_root: str) -> None:
    """Before a new run starts: that its folder (``run_dir``, or a new one under ``run_root``) can be created.

    Raises:
        ValueError: ``run_dir`` exists already, or it (or ``run_root``) cannot be created as a writable folder.
    """
    if run_dir is None:
        check_writable_folder(Path(run_root), f"run_root={run_root}", "set run_root= to a folder you can write to")
        return
    run_dir = Path(run_dir)
    if run_dir.exists() or run_dir.is_symlink():
        raise ValueError(f"run folder {run_dir} exists already; choose a new folder, or resume it with --resume")
    check_writable_folder(run_dir.parent, f"the folder of run folder {run_dir}", "choose a folder you can write to")


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove the temporary files a killed atomic write left in ``run_dir``: ``.<name>.<random>.tmp`` for the run
    folder's own files (:data:`OWN_FILES`) only, never another file. Returns the removed paths."""
    removed = []
    for path in sorted(Path(run_dir).iterdir()):
        if _STALE_TEMPORARY.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def describe_os_error(error: OSError) -> str:
    """One line for a failed file operation: the file, the system's reason and what to do."""
    where = f"{error.filename}: " if error.filename else ""
    if error.filename2:
        where = f"{error.filename} -> {error.filename2}: "
    fixes = {
        errno.EACCES: "make it writable (or readable) by this user, or use another folder",
        errno.EPERM: "make it writable (or readable) by this user, or use another folder",
        errno.EROFS: "the filesystem is read-only: use another folder",
        errno.ENOSPC: "free some disk space, then run the command again (a run resumes with --resume)",
        errno.EDQUOT: "free some disk space, then run the command again (a run resumes with --resume)",
        errno.ENOENT: "check the path",
        errno.ENOTDIR: "a file stands where a folder is needed: check the path",
        errno.EISDIR: "a folder stands where a file is needed: check the path",
    }
    fix = fixes.get(error.errno, "check the path, its permissions and the free disk space")
    return f"{where}{error.strerror or error}; {fix}"
