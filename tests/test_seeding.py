"""The one seeding path and the counter-based streams shared by the single and the batched envs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from metarl.seeding import (
    KEY_HIGH,
    draw_key,
    seed_everything,
    standard_normal_python,
    standard_normal_torch,
    uniform_python,
    uniform_torch,
)

MASK_64 = 2**64 - 1


def splitmix64_reference(key: int, counter: int) -> float:
    """SplitMix64 in plain Python integers: output number ``counter`` of the generator whose state starts at ``key``."""
    z = (key + (counter + 1) * 0x9E3779B97F4A7C15) & MASK_64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK_64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK_64
    z ^= z >> 31
    return (z >> 11) * 2.0**-53


def as_bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)


KEYS = np.array(
    [0, 1, 2, 3, 12345, 2**31 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 3, 2**63 - 2, 2**63 - 1], dtype=np.int64
)
COUNTERS = np.array([0, 1, 2, 3, 7, 1000, 2**31, 2**32 + 5, 2**40, 2**53, 2**62 + 11, 2**63 - 2], dtype=np.int64)


def uniform_numpy(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """The torch stream evaluated on NumPy arrays (broadcast), for statistics over many draws."""
    keys, counters = np.broadcast_arrays(np.asarray(keys, dtype=np.int64), np.asarray(counters, dtype=np.int64))
    return uniform_torch(torch.from_numpy(keys.copy()), torch.from_numpy(counters.copy())).numpy()


def test_uniform_matches_splitmix64_test_vectors():
    # the first three outputs of SplitMix64 seeded with 0 (Vigna's reference splitmix64.c), top 53 bits
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert [uniform_python(0, counter) for counter in range(3)] == [(value >> 11) * 2.0**-53 for value in expected]
    np.testing.assert_array_equal(uniform_numpy(0, np.arange(3)), [(value >> 11) * 2.0**-53 for value in expected])


def test_uniform_python_matches_reference_on_extreme_keys_and_counters():
    draws = np.array([[uniform_python(int(k), int(c)) for c in COUNTERS] for k in KEYS])
    expected = np.array([[splitmix64_reference(int(k), int(c)) for c in COUNTERS] for k in KEYS])
    np.testing.assert_array_equal(as_bits(draws), as_bits(expected))


def test_uniform_python_and_torch_are_bitwise_equal_on_extreme_keys_and_counters():
    python_draws = np.array([[uniform_python(int(k), int(c)) for c in COUNTERS] for k in KEYS])
    torch_draws = uniform_torch(torch.from_numpy(KEYS)[:, None], torch.from_numpy(COUNTERS)[None, :])
    assert torch_draws.dtype == torch.float64
    assert torch_draws.shape == (len(KEYS), len(COUNTERS))
    np.testing.assert_array_equal(as_bits(python_draws), as_bits(torch_draws.numpy()))


def test_uniform_python_and_torch_are_bitwise_equal_on_many_random_keys_and_counters():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, KEY_HIGH, size=20_000, dtype=np.int64)
    small, large = rng.integers(0, 2**20, size=10_000), rng.integers(0, 2**62, size=10_000)
    counters = np.concatenate([small, large]).astype(np.int64)
    python_draws = np.array([uniform_python(int(k), int(c)) for k, c in zip(keys, counters, strict=True)])
    torch_draws = uniform_torch(torch.from_numpy(keys), torch.from_numpy(counters)).numpy()
    np.testing.assert_array_equal(as_bits(python_draws), as_bits(torch_draws))


def test_uniform_draws_are_in_unit_interval_and_uniform():
    num_draws = 100_000
    # one stream (consecutive counters) and many streams (consecutive keys, as seeds s, s+1, ... would not give)
    for draws in (uniform_numpy(123456789, np.arange(num_draws)), uniform_numpy(np.arange(num_draws), 0)):
        assert draws.dtype == np.float64
        assert draws.min() >= 0.0
        assert draws.max() < 1.0
        # the mean of 100k U[0,1) draws has std 0.29 / sqrt(1e5) ~ 0.0009: 0.005 is over 5 sigma
        assert abs(draws.mean() - 0.5) < 0.005
        # chi-square over 20 equal bins (19 dof: mean 19, std ~6.2); 60 is far in the tail for a uniform stream
        counts, _ = np.histogram(draws, bins=20, range=(0.0, 1.0))
        expected = num_draws / 20
        chi_square = ((counts - expected) ** 2 / expected).sum()
        assert chi_square < 60.0, counts
        # consecutive draws are uncorrelated (std of the estimate ~0.003)
        assert abs(np.corrcoef(draws[:-1], draws[1:])[0, 1]) < 0.02


def test_uniform_streams_of_different_keys_differ():
    counters = np.arange(100)
    assert not np.array_equal(uniform_numpy(1, counters), uniform_numpy(2, counters))
    assert len(np.unique(uniform_numpy(7, np.arange(10_000)))) == 10_000


def test_standard_normal_moments():
    num_draws = 100_000
    u1 = uniform_numpy(11, np.arange(num_draws))
    u2 = uniform_numpy(12, np.arange(num_draws))
    normal = standard_normal_torch(torch.from_numpy(u1), torch.from_numpy(u2)).numpy()
    assert np.isfinite(normal).all()
    # std of the sample mean ~0.003, of the sample std ~0.0022
    assert abs(normal.mean()) < 0.02
    assert abs(normal.std() - 1.0) < 0.02
    # the tails of a standard normal: P(|x| > 1.96) = 0.05
    assert abs((np.abs(normal) > 1.959964).mean() - 0.05) < 0.005
    # the Python twin computes the same (up to the last bits of log/cos, which may differ between libraries)
    normal_python = [standard_normal_python(a, b) for a, b in zip(u1[:10_000], u2[:10_000], strict=True)]
    np.testing.assert_allclose(normal_python, normal[:10_000], rtol=1e-12, atol=1e-12)


def test_standard_normal_is_finite_at_the_edges_of_the_unit_interval():
    largest_below_one = np.nextafter(1.0, 0.0)
    edges = [(0.0, 0.0), (0.0, 0.5), (largest_below_one, 0.0), (largest_below_one, 0.5)]
    normal = [standard_normal_python(u1, u2) for u1, u2 in edges]
    assert np.isfinite(normal).all()
    assert normal[:2] == [0.0, -0.0]
    u1, u2 = (torch.tensor(values, dtype=torch.float64) for values in zip(*edges, strict=True))
    assert torch.isfinite(standard_normal_torch(u1, u2)).all()


def test_draw_key_is_in_range_and_reproducible():
    keys = [draw_key(np.random.default_rng(seed)) for seed in range(200)]
    assert all(isinstance(key, int) and 0 <= key < KEY_HIGH for key in keys)
    assert len(set(keys)) == 200
    assert keys[5] == draw_key(np.random.default_rng(5))


def _global_draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(5).tolist(), np.random.rand(5).tolist(), [random.random() for _ in range(5)]


@pytest.mark.parametrize("seed", [0, 1, 2**32 + 1, 2**40])
def test_seed_everything_makes_global_generators_reproducible(seed):
    seed_everything(seed)
    first = _global_draws()
    seed_everything(seed)
    second = _global_draws()
    assert first == second
    seed_everything(seed + 1)
    third = _global_draws()
    for a, b in zip(first, third, strict=True):
        assert a != b


@pytest.mark.parametrize("seed", [-1, -(2**40), 1.0, 0.5, "3", None, True, False, np.float64(2.0)])
def test_seed_everything_rejects_negative_and_non_int_seeds(seed):
    with pytest.raises(ValueError, match=r"seed must be a non-negative int, got"):
        seed_everything(seed)
