"""Checkpoints: written atomically, read back with ``torch.load(..., weights_only=True)``.

A checkpoint holds tensors and plain Python values only (dicts, lists, tuples, numbers, strings), so the restricted
unpickler can read it: a checkpoint from elsewhere cannot run code when it is loaded.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

LAST_CHECKPOINT = "last.pt"
"""A run folder's latest state (everything needed to resume)."""
BEST_CHECKPOINT = "best.pt"
"""A run folder's agent as kept by validation (what evaluations use)."""
BUFFERS_CHECKPOINT_PREFIX = "buffers-"
"""An agent with replay buffers (``buffers_state_dict``: PEARL) has them saved as ``buffers-<iteration>.pt`` beside
``last.pt`` (:func:`buffers_checkpoint`), written before ``last.pt`` of the same iteration, the older ones removed after
it: whatever moment a run is killed at, the buffers of its ``last.pt`` are there."""


def buffers_checkpoint(iteration: int) -> str:
    """The name of the buffers file that goes with ``last.pt`` of ``iteration``."""
    return f"{BUFFERS_CHECKPOINT_PREFIX}{iteration}.pt"


CHECKPOINT_FORMAT = 2
"""The suite's checkpoint format, recorded in each checkpoint's ``identity`` and in a run folder's ``run.json``.
1: checkpoints without an ``identity`` (written before checkpoints knew their run; they still load); 2: with one
(:mod:`metarl.run_folder`). A reader refuses a format newer than its own."""
TEMPORARY_SUFFIX = ".tmp"
"""The atomic writers write ``.<name>.<random>.tmp`` beside ``<name>``, then rename it over ``<name>``; a process
killed in between leaves that file behind (:func:`metarl.run_folder.remove_stale_temporaries` removes it)."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    _write_atomically(Path(path), "wb", lambda file: torch.save(state, file))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint with the restricted (weights-only) unpickler; with ``mmap`` its tensors are mapped from the
    file rather than read into memory (replay buffers of gigabytes: read only where they are copied).

    Raises:
        ValueError: no file at ``path``, a file that cannot be opened, or one the weights-only unpickler refuses
            (damaged, truncated, not a checkpoint, or one whose pickle would run code), in one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        file = path.open("rb")  # opened here, so that an I/O error is told apart from a file torch cannot parse
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error}); check its permissions") from error
    with file:
        try:
            if mmap:
                return torch.load(str(path), map_location=map_location, weights_only=True, mmap=True)
            return torch.load(file, map_location=map_location, weights_only=True)
        except Exception as error:  # torch raises many types (EOFError, RuntimeError, UnpicklingError, OSError...)
            raise ValueError(
                f"{path} is not a readable metarl checkpoint ({short_reason(error)}); it is damaged or was not "
                "written by metarl: restore it from a copy, or train the run again"
            ) from error


def short_reason(error: BaseException) -> str:
    """``<type>: <first sentence>`` of an exception from ``torch.load``, without the paragraphs torch adds (among
    them the advice to load with ``weights_only=False``, which would let the file run code)."""
    text = str(error)
    marker = "WeightsUnpickler error:"  # torch puts the actual reason after its advice, behind this marker
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = re.split(r"(?<=[.?!])\s", lines[0], maxsplit=1)[0].rstrip(".") if lines else "the file ends too early"
    return f"{type(error).__name__}: {first}"


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically (configs, results)."""
    _write_atomically(Path(path), "w", lambda file: file.write(text))


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    """Write a binary file atomically (plots)."""
    _write_atomically(Path(path), "wb", lambda file: file.write(data))


def _write_atomically(path: Path, mode: str, write: Callable[[IO[Any]], Any]) -> None:
    """Write through a temporary file beside ``path`` (``.<name>.<random>.tmp``), synced, then renamed over
    ``path``: readers see the old file or the new one, never a part. On any failure the temporary file is removed.
    An ``OSError`` is raised again naming ``path``, the file the user knows (a full disk fails a ``write``, which
    names no file; a refused rename names the temporary file, which is gone)."""
    path.parent.mkdir(parents=True, exist_ok=True)  # its errors name the folder that could not be made
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    except OSError as error:
        raise (_naming(error, path) if error.errno is not None else error) from error
    try:
        with os.fdopen(descriptor, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        _default_permissions(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        cause = _os_error_in(error) if isinstance(error, Exception) else None  # an interrupt stays one
        if cause is not None:
            raise _naming(cause, path) from error
        raise


def _os_error_in(error: BaseException) -> OSError | None:
    """``error`` or the error it arose from, when that is an ``OSError`` with an errno: on a full disk torch's zip
    writer fails again while closing, and raises a ``RuntimeError`` whose context is the ``OSError``."""
    seen: BaseException | None = error
    for _ in range(8):  # a short chain: the error, torch's, perhaps one more
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _naming(error: OSError, path: Path) -> OSError:
    """The same error (``OSError`` picks the subclass from the errno: ``PermissionError``...) naming ``path``."""
    return OSError(error.errno, error.strerror, str(path))


def _default_permissions(path: str) -> None:
    """The permissions ``open()`` would have given (0666 less the umask), not the temporary file's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def rng_states(task_rng: np.random.Generator) -> dict[str, Any]:
    """Every random state a run depends on: torch (CPU and CUDA), NumPy's global and task generators, Python."""
    return {
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_global": _numpy_state_to_plain(np.random.get_state()),
        "task_rng": task_rng.bit_generator.state,
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any], task_rng: np.random.Generator) -> None:
    """The inverse of :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available() and states["torch_cuda"]:
        torch.cuda.set_rng_state_all(states["torch_cuda"])
    np.random.set_state(_plain_to_numpy_state(states["numpy_global"]))
    task_rng.bit_generator.state = states["task_rng"]
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, position, has_gauss, cached_gaussian = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "position": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _plain_to_numpy_state(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["position"], state["has_gauss"], state["cached_gaussian"])
