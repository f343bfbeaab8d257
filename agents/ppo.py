"""PPO's settings, shared by the algorithms whose outer loop is plain clipped PPO (RL², the SB3 oracle)."""

from __future__ import annotations

import dataclasses

from metarl.config import RunConfig, check_at_least, check_positive_numbers, check_unit_interval


@dataclasses.dataclass
class PPOConfig(RunConfig):
    """The fields of clipped PPO with GAE, a value loss, an entropy bonus and gradient clipping."""

    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE λ."""
    ppo_epochs: int = 5
    """Epochs over each meta-iteration's data."""
    ppo_minibatches: int = 4
    """Minibatches per epoch."""
    ppo_clip: float = 0.2
    """The clip range of the probability ratio."""
    ppo_learning_rate: float = 1e-3
    """Adam's learning rate."""
    ppo_entropy_coeff: float = 0.0
    """Weight of the policy's entropy bonus."""
    ppo_value_coeff: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Gradients are clipped to this global norm."""

    def validate(self) -> None:
        super().validate()
        check_unit_interval(self, "gamma gae_lambda")
        check_at_least(self, 1, "ppo_epochs ppo_minibatches")
        check_positive_numbers(self, "ppo_clip ppo_learning_rate max_grad_norm")
        check_positive_numbers(self, "ppo_entropy_coeff ppo_value_coeff", zero_allowed=True)
