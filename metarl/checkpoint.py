"""Checkpoints: written atomically, read back with ``torch.load(..., weights_only=True)``.

A checkpoint holds tensors and plain Python values only (dicts, lists, tuples, numbers, strings), so the restricted
unpickler can read it: a checkpoint from elsewhere cannot run code when it is loaded.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST_CHECKPOINT = "last.pt"
"""A run folder's latest state (everything needed to resume)."""
BEST_CHECKPOINT = "best.pt"
"""A run folder's agent as kept by validation (what evaluations use)."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        _default_permissions(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with the restricted (weights-only) unpickler."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write a text file atomically (configs, results)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        _default_permissions(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
