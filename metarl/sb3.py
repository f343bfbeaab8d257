"""What the baselines built on Stable-Baselines3 (the oracle, PPO from scratch) share."""

from __future__ import annotations


def minibatch_size(rollout_size: int, minibatches: int) -> int:
    """The divisor of the rollout's size nearest to ``rollout_size / minibatches`` (SB3 splits a rollout into
    minibatches of one size; a divisor leaves no truncated last one)."""
    target = rollout_size / minibatches
    divisors = [d for d in range(1, rollout_size + 1) if rollout_size % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))
