"""One seeding path for the suite, and the counter-based random streams of the native batched envs.

Two kinds of randomness live here:

* ``seed_everything`` seeds Python, NumPy and torch from one integer (the only place the global RNGs are touched).
* ``uniform_python`` / ``uniform_torch`` are the *same* counter-based generator (SplitMix64) written twice: once in
  Python integers, used by the single envs, and once for torch, used by the batched envs on any device. A sub-env's
  random draws are a pure function of ``(key, counter)``, so 1024 sub-envs draw in one vectorised call and still
  produce bit-for-bit the numbers a single env seeded the same way produces. The key of an env is drawn once from its
  Gymnasium ``np_random`` when it is seeded; the counter counts the draws made since.

References:
    Steele, Lea, Flood. "Fast splittable pseudorandom number generators", OOPSLA 2014 (SplitMix64).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB
_MASK_64 = 2**64 - 1
_TWO_POW_MINUS_53 = 2.0**-53
KEY_HIGH = 2**63
"""Keys are drawn from ``[0, KEY_HIGH)`` so that they fit a signed int64 tensor."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators from one integer."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def draw_key(rng: np.random.Generator) -> int:
    """Draw the key of one env's random stream from its (seeded) NumPy generator."""
    return int(rng.integers(0, KEY_HIGH, dtype=np.int64))


def _as_signed_int64(value: int) -> int:
    """The int64 whose two's-complement bit pattern is the uint64 ``value`` (torch has no uint64 arithmetic)."""
    return value - 2**64 if value >= 2**63 else value


def uniform_python(key: int, counter: int) -> float:
    """Draw number ``counter`` of the stream ``key``: a float in [0, 1), in plain Python integers.

    The single envs use this scalar version: a handful of integer operations, several times cheaper than NumPy on
    one number.

    Args:
        key: the stream's key, in ``[0, 2**63)``.
        counter: index of the draw in the stream, non-negative.
    """
    z = (key + (counter + 1) * _GOLDEN_GAMMA) & _MASK_64
    z = ((z ^ (z >> 30)) * _MIX_1) & _MASK_64
    z = ((z ^ (z >> 27)) * _MIX_2) & _MASK_64
    z ^= z >> 31
    return (z >> 11) * _TWO_POW_MINUS_53


def _logical_shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic; masking the sign-extended bits makes it the uint64 shift
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def uniform_torch(key: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """The torch twin of :func:`uniform_python`: int64 ``key`` and ``counter`` tensors (broadcast), float64 draws.

    int64 multiplication and addition wrap modulo 2**64 like uint64 arithmetic, so the bit patterns and therefore
    the draws are identical to the Python version on every device.
    """
    z = key + (counter + 1) * _as_signed_int64(_GOLDEN_GAMMA)
    z = (z ^ _logical_shift_right(z, 30)) * _as_signed_int64(_MIX_1)
    z = (z ^ _logical_shift_right(z, 27)) * _as_signed_int64(_MIX_2)
    z = z ^ _logical_shift_right(z, 31)
    return _logical_shift_right(z, 11).to(torch.float64) * _TWO_POW_MINUS_53


def standard_normal_python(u1: float, u2: float) -> float:
    """Box-Muller transform of two uniform draws into one standard normal draw."""
    return math.sqrt(-2.0 * math.log1p(-u1)) * math.cos(2.0 * math.pi * u2)


def standard_normal_torch(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """The torch twin of :func:`standard_normal_python` (equal up to the last bits of the library's log and cos)."""
    return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * torch.pi * u2)
