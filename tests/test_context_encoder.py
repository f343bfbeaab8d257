"""PEARL's context encoder (agents/context_encoder.py): the product of Gaussians against its closed form, order and
padding invariance, the KL to the prior against torch.distributions, and the encoder's shapes and gradients."""

from __future__ import annotations

import pytest
import torch
from metarl.agents.context_encoder import ContextEncoder, GaussianPosterior, product_of_gaussians


def test_the_product_of_two_gaussians_is_the_closed_form():
    means = torch.tensor([[[1.0, -2.0], [3.0, 0.5]]], dtype=torch.float64)
    variances = torch.tensor([[[0.5, 2.0], [1.5, 0.25]]], dtype=torch.float64)
    posterior = product_of_gaussians(means, variances)
    (m1, m2), (v1, v2) = means[0], variances[0]
    expected_variance = v1 * v2 / (v1 + v2)
    expected_mean = (m1 * v2 + m2 * v1) / (v1 + v2)
    torch.testing.assert_close(posterior.variance[0], expected_variance)
    torch.testing.assert_close(posterior.mean[0], expected_mean)


def test_the_product_is_bayes_rule_applied_one_transition_at_a_time_in_any_order():
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(3, 6, 4, generator=generator, dtype=torch.float64)
    variances = torch.rand(3, 6, 4, generator=generator, dtype=torch.float64) + 0.1
    posterior = product_of_gaussians(means, variances)
    # sequential conjugate updates, starting from the first factor
    mean, variance = means[:, 0], variances[:, 0]
    for n in range(1, 6):
        gain = variance / (variance + variances[:, n])
        mean, variance = mean + gain * (means[:, n] - mean), variance * variances[:, n] / (variance + variances[:, n])
    torch.testing.assert_close(posterior.mean, mean)
    torch.testing.assert_close(posterior.variance, variance)
    order = torch.randperm(6, generator=generator)
    shuffled = product_of_gaussians(means[:, order], variances[:, order])
    torch.testing.assert_close(shuffled.mean, posterior.mean)
    torch.testing.assert_close(shuffled.variance, posterior.variance)


def test_masked_transitions_do_not_count_and_an_empty_context_is_refused():
    generator = torch.Generator().manual_seed(1)
    means = torch.randn(2, 5, 3, generator=generator)
    variances = torch.rand(2, 5, 3, generator=generator) + 0.1
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 0, 1]])
    padded = product_of_gaussians(means, variances, mask)
    for task in range(2):
        kept = mask[task].bool()
        alone = product_of_gaussians(means[task : task + 1, kept], variances[task : task + 1, kept])
        torch.testing.assert_close(padded.mean[task], alone.mean[0])
        torch.testing.assert_close(padded.variance[task], alone.variance[0])
    with pytest.raises(ValueError, match="at least one transition"):
        product_of_gaussians(means, variances, torch.tensor([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]))


def test_the_kl_to_the_prior_matches_torch_distributions():
    generator = torch.Generator().manual_seed(2)
    posterior = GaussianPosterior(
        torch.randn(4, 5, generator=generator, dtype=torch.float64),
        torch.rand(4, 5, generator=generator, dtype=torch.float64) + 0.05,
    )
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(posterior.mean, posterior.variance.sqrt()),
        torch.distributions.Normal(torch.zeros_like(posterior.mean), torch.ones_like(posterior.mean)),
    ).sum(dim=-1)
    torch.testing.assert_close(posterior.kl_to_unit_gaussian(), reference)
    assert posterior.kl_to_unit_gaussian().shape == (4,)


def test_the_encoder_maps_a_batch_of_contexts_to_one_posterior_per_task_and_is_trained_through_samples():
    torch.manual_seed(0)
    encoder = ContextEncoder(input_size=7, latent_size=5, hidden_sizes=[16, 16])
    context = torch.randn(3, 10, 7)
    posterior = encoder(context)
    assert posterior.mean.shape == posterior.variance.shape == (3, 5)
    assert bool((posterior.variance > 0).all())
    # more context, a sharper posterior: the variance shrinks as factors are added
    fewer = encoder(context[:, :2])
    assert bool((posterior.variance < fewer.variance).all())
    z = posterior.sample(torch.Generator().manual_seed(0))
    (z.square().sum() + posterior.kl_to_unit_gaussian().sum()).backward()
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in encoder.parameters())
