"""Choosing the torch device and thread count, the same way for every command."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
NO_CUDA_FIX = "set device=auto or device=cpu (metarl train) or --device auto or --device cpu (metarl evaluate, demo)"
"""What :func:`resolve_device` tells a caller that does not say how its user sets the device: each command sets it
its own way (a config field for ``train``, an option for the others)."""


def resolve_device(name: str, *, fix: str = NO_CUDA_FIX) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are taken as given.

    Args:
        name: the device asked for.
        fix: how the user asks for another device, ending the error when CUDA is asked for but absent (a command
            that knows passes its own way, e.g. ``use --device auto or --device cpu``).

    Raises:
        ValueError: an unknown name, or CUDA asked for on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or name.startswith("cuda:")):
        raise ValueError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device here; {fix}")
    return torch.device(name)


def set_threads(num_threads: int = 1) -> None:
    """Set torch's intra-op threads: 1 by default, since small networks on a shared CPU run slower with more."""
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")
    torch.set_num_threads(num_threads)
