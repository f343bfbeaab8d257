"""PEARL's probabilistic context encoder: a Gaussian posterior over a task's latent z from a set of its transitions.

Each transition c_n = (s, a, r, s') of a task's context is mapped by one MLP to a Gaussian factor N(μ_n, σ_n²) per
latent dimension; the posterior is their product with a unit Gaussian prior left out, as in the paper,

    σ² = 1 / Σ_n σ_n⁻²,    μ = σ² · Σ_n μ_n σ_n⁻²,

which does not depend on the order of the transitions (permutation invariant) and sharpens as context accrues. The
information bottleneck is the KL of that posterior to the prior N(0, I), weighted by ``kl_weight`` in the encoder's
loss (the paper: 0.1). σ_n² is a softplus of the MLP's output, floored at 1e-7 as in the authors' code, so that the
product stays finite.

Batched over tasks: ``[tasks, transitions, input]`` in, one ``[tasks, latent]`` mean and variance out; a task's
context may be padded with transitions whose ``mask`` is 0, which then do not count.

References:
    Rakelly, Zhou, Quillen, Finn, Levine. "Efficient Off-Policy Meta-Reinforcement Learning via Probabilistic
    Context Variables", ICML 2019 (its section 4.1 and appendix).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

MIN_FACTOR_VARIANCE = 1e-7
"""The floor of each transition's factor variance σ_n² (the authors' code clamps it at this value)."""


class GaussianPosterior(NamedTuple):
    """A diagonal Gaussian over the latent, per task: ``mean`` and ``variance`` are ``[tasks, latent]``."""

    mean: torch.Tensor
    variance: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = μ + σ ε with ε ~ N(0, I), differentiable in μ and σ (the reparameterisation)."""
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype).to(self.mean.device)
        return self.mean + self.variance.sqrt() * noise

    def kl_to_unit_gaussian(self) -> torch.Tensor:
        """KL(N(μ, σ²) ‖ N(0, I)) per task, ``[tasks]``: ½ Σ_d (σ_d² + μ_d² - 1 - log σ_d²)."""
        return 0.5 * (self.variance + self.mean.square() - 1.0 - self.variance.log()).sum(dim=-1)


def product_of_gaussians(
    means: torch.Tensor, variances: torch.Tensor, mask: torch.Tensor | None = None
) -> GaussianPosterior:
    """The product of each task's Gaussian factors: ``means`` and ``variances`` ``[tasks, transitions, latent]``,
    ``mask`` ``[tasks, transitions]`` (1: the transition counts). A task must have at least one counted transition."""
    precisions = 1.0 / variances.clamp_min(MIN_FACTOR_VARIANCE)
    if mask is not None:
        precisions = precisions * mask.unsqueeze(-1).to(precisions.dtype)
    total_precision = precisions.sum(dim=1)
    if bool((total_precision == 0).any()):
        raise ValueError("every task needs at least one transition in its context (its mask is all zero)")
    variance = 1.0 / total_precision
    return GaussianPosterior(variance * (means * precisions).sum(dim=1), variance)


class ContextEncoder(torch.nn.Module):
    """The MLP from one transition to its Gaussian factor, and the product over a task's context.

    Args:
        input_size: the width of one transition's vector (observation, action, reward, next observation).
        latent_size: the latent's dimensions (the paper: 5).
        hidden_sizes: the MLP's hidden layers (the paper: three of 200 for the encoder).
    """

    def __init__(self, input_size: int, latent_size: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = input_size
        for hidden in hidden_sizes:
            layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
            width = hidden
        layers.append(torch.nn.Linear(width, 2 * latent_size))
        self.network = torch.nn.Sequential(*layers)
        self.latent_size = latent_size

    def factors(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each transition's factor mean and variance, ``[tasks, transitions, latent]`` each."""
        output = self.network(context)
        means, raw_variances = output.split(self.latent_size, dim=-1)
        return means, torch.nn.functional.softplus(raw_variances).clamp_min(MIN_FACTOR_VARIANCE)

    def forward(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> GaussianPosterior:
        """The posterior of every task from its context ``[tasks, transitions, input]`` (``mask`` as in
        :func:`product_of_gaussians`)."""
        means, variances = self.factors(context)
        return product_of_gaussians(means, variances, mask)
