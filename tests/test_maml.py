"""MAML maths against independent computations: finite differences, the per-task loop, the naive double-backward
Hessian-vector product; and a small learning check on held-out Navigation2D tasks."""

from __future__ import annotations

import metarl.envs  # noqa: F401 - registers the families
import numpy as np
import pytest
import torch
from metarl.agents.inner_loop import MetaBatch, PolicyGradientData, detach_distribution, detach_params, mean_kl
from metarl.agents.maml_trpo import MAMLTRPO

from metarl.optim import flatten_tensors, unflatten_like
from metarl.presets import config_from_dict
from metarl.registry import make_family
from metarl.trainer import train


def make_agent(num_inner_steps: int = 1, first_order: bool = False, family_id: str = "MetaRL/Navigation2D-v0"):
    config = config_from_dict(
        {
            "family": family_id,
            "meta_batch_size": 3,
            "episodes_per_task": 2,
            "hidden_sizes": [8],
            "num_inner_steps": num_inner_steps,
            "inner_step_sizes": [0.3, 0.2],
            "first_order": first_order,
        }
    )
    family = make_family(family_id, horizon=6) if "Navigation" in family_id else make_family(family_id)
    torch.manual_seed(0)
    agent = MAMLTRPO(family, config, torch.device("cpu"))
    tasks = family.sample_tasks(np.random.default_rng(0), config.meta_batch_size)
    batch = agent.sample(tasks, np.random.default_rng(1), num_inner_steps, evaluation=False)
    # float64 so that finite differences and 1e-8 agreement are meaningful
    agent.policy.double()

    def to_double(data: PolicyGradientData) -> PolicyGradientData:
        return PolicyGradientData(*(t.double() if t.is_floating_point() else t for t in data))

    batch = batch._replace(inner=[to_double(d) for d in batch.inner], post=to_double(batch.post), adapted=None)
    return agent, batch


def outer_objective(agent: MAMLTRPO, batch: MetaBatch, params: dict, create_graph: bool):
    """The TRPO surrogate at adapt(params) with the old policy fixed at the agent's current parameters."""
    theta = dict(agent.policy.named_parameters())
    with torch.enable_grad():
        old = agent.policy.distribution(batch.post.observations, detach_params(agent.adapt(theta, batch.inner, False)))
    old_log_probs = old.log_prob(batch.post.actions).detach()
    adapted = agent.adapt(params, batch.inner, create_graph=create_graph)
    loss, kl = agent.surrogate(adapted, batch.post, old_log_probs, detach_distribution(old))
    return loss, kl, adapted


@pytest.mark.parametrize("num_inner_steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(num_inner_steps):
    agent, batch = make_agent(num_inner_steps)
    theta = dict(agent.policy.named_parameters())
    loss, _, _ = outer_objective(agent, batch, theta, create_graph=True)
    gradient = flatten_tensors(torch.autograd.grad(loss, list(theta.values())))
    flat = flatten_tensors([value.detach() for value in theta.values()])
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        direction = torch.randn(flat.shape, generator=generator, dtype=torch.float64)
        epsilon = 1e-5
        values = []
        for sign in (1.0, -1.0):
            shifted = {
                k: v.requires_grad_() for k, v in unflatten_like(flat + sign * epsilon * direction, theta).items()
            }
            with torch.enable_grad():
                values.append(outer_objective(agent, batch, shifted, create_graph=False)[0].item())
        finite_difference = (values[0] - values[1]) / (2 * epsilon)
        assert gradient @ direction == pytest.approx(finite_difference, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize(
    ("num_inner_steps", "first_order", "env_id"),
    [
        (1, False, "MetaRL/Navigation2D-v0"),
        (2, False, "MetaRL/Navigation2D-v0"),
        (1, True, "MetaRL/Navigation2D-v0"),
        (2, False, "MetaRL/TabularMDP-v0"),
    ],
)
def test_trpo_meta_gradient_equals_autograd_through_the_adaptation(num_inner_steps, first_order, env_id):
    """TRPO's meta-gradient (the surrogate's gradient pulled back by the written-out inner-loss Hessians) is
    autograd's gradient through the inner loop, built with or without the inner gradients' graph."""
    agent, batch = make_agent(num_inner_steps, first_order=first_order, family_id=env_id)
    theta = dict(agent.policy.named_parameters())
    meta = agent.meta_gradient(theta, batch, second_order=not first_order)
    # its adaptation, with the written-out inner gradients, is autograd's
    for k, got in enumerate(meta.points):
        want = agent.adapt(theta, batch.inner[:k], create_graph=False, num_tasks=batch.shard.size)
        for name in theta:
            torch.testing.assert_close(got[name], want[name].detach(), rtol=1e-10, atol=1e-12)
    loss, _, _ = outer_objective(agent, batch, theta, create_graph=not first_order)
    expected = flatten_tensors(torch.autograd.grad(loss, list(theta.values())))
    assert meta.loss.item() == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(meta.gradient, expected, rtol=1e-9, atol=1e-12)


def test_first_order_gradient_is_the_gradient_at_the_adapted_parameters():
    agent, batch = make_agent(num_inner_steps=1, first_order=True)
    theta = dict(agent.policy.named_parameters())
    loss, _, adapted = outer_objective(agent, batch, theta, create_graph=False)
    first_order = torch.autograd.grad(loss, list(theta.values()))
    # the same loss as a function of the adapted parameters, taken as independent leaves
    leaves = {name: value.detach().requires_grad_() for name, value in adapted.items()}
    theta_detached = dict(agent.policy.named_parameters())
    with torch.enable_grad():
        old = agent.policy.distribution(
            batch.post.observations, detach_params(agent.adapt(theta_detached, batch.inner, False))
        )
    loss_at_adapted, _ = agent.surrogate(
        leaves, batch.post, old.log_prob(batch.post.actions).detach(), detach_distribution(old)
    )
    at_adapted = torch.autograd.grad(loss_at_adapted, list(leaves.values()))
    for got, per_task in zip(first_order, at_adapted, strict=True):
        torch.testing.assert_close(got, per_task.sum(dim=0), rtol=1e-10, atol=1e-12)
    # and it differs from the second-order gradient (the test would pass vacuously otherwise)
    second_order = torch.autograd.grad(outer_objective(agent, batch, theta, create_graph=True)[0], list(theta.values()))
    assert not torch.allclose(flatten_tensors(first_order), flatten_tensors(second_order), rtol=1e-3)


@pytest.mark.parametrize("num_inner_steps", [1, 2])
def test_batched_inner_loop_equals_the_per_task_loop(num_inner_steps):
    agent, batch = make_agent(num_inner_steps)
    theta = dict(agent.policy.named_parameters())
    batched = agent.adapt(theta, batch.inner, create_graph=True)
    looped = agent.adapt_per_task(theta, batch.inner, create_graph=True)
    for name in theta:
        torch.testing.assert_close(batched[name], looped[name], rtol=1e-10, atol=1e-12)
    # the meta-gradients through both agree as well
    probe = {name: torch.randn_like(value) for name, value in batched.items()}
    grad_batched = torch.autograd.grad(sum((batched[n] * probe[n]).sum() for n in probe), list(theta.values()))
    grad_looped = torch.autograd.grad(sum((looped[n] * probe[n]).sum() for n in probe), list(theta.values()))
    for a, b in zip(grad_batched, grad_looped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(
    ("num_inner_steps", "env_id"),
    [(1, "MetaRL/Navigation2D-v0"), (2, "MetaRL/Navigation2D-v0"), (1, "MetaRL/TabularMDP-v0")],
)
def test_kl_hessian_vector_product_equals_double_backward(num_inner_steps, env_id):
    agent, batch = make_agent(num_inner_steps, family_id=env_id)
    theta = dict(agent.policy.named_parameters())
    points = agent.adaptation_points(theta, batch.inner, batch.shard.size)
    hessians = agent._inner_hessians(points, batch.inner)
    product = agent._kl_hessian_vector_product(theta, points[-1], hessians, batch.post)

    # naive: differentiate the KL through the adaptation twice (third derivatives of the inner loss included)
    adapted = agent.adapt(theta, batch.inner, create_graph=True)
    old = detach_distribution(agent.policy.distribution(batch.post.observations, detach_params(adapted)))
    kl = mean_kl(agent.policy.distribution(batch.post.observations, adapted), old, batch.post.weights)
    kl_gradient = flatten_tensors(torch.autograd.grad(kl, list(theta.values()), create_graph=True))
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        vector = torch.randn(kl_gradient.shape, generator=generator, dtype=torch.float64)
        naive = flatten_tensors(torch.autograd.grad(kl_gradient @ vector, list(theta.values()), retain_graph=True))
        got = product(vector) - agent.config.cg_damping * vector
        torch.testing.assert_close(got, naive, rtol=1e-7, atol=1e-10)


@pytest.mark.slow
def test_maml_improves_after_one_step_on_held_out_navigation_tasks(tmp_path):
    config = config_from_dict(
        {
            "iterations": 12,
            "meta_batch_size": 10,
            "episodes_per_task": 10,
            "eval_interval": 6,
            "eval_tasks": 10,
            "test_tasks": 20,
            "eval_steps": 1,
            "checkpoint_interval": 6,
            "run_root": str(tmp_path),
            "progress": False,
        }
    )
    result = train(config)
    before, after_one_step = result.test_returns
    # held-out test tasks: one policy-gradient step must help by a clear margin (seed 0 gives about 10)
    assert after_one_step > before + 3.0, result.test_returns


def test_fast_mode_curvature_is_symmetric_positive_definite_and_cheaper_data():
    agent, batch = make_agent(num_inner_steps=1)
    agent.config.curvature_fraction = 0.5
    theta = dict(agent.policy.named_parameters())
    points = agent.adaptation_points(theta, batch.inner, batch.shard.size)
    curvature_hessians, curvature_post = agent._curvature_data(
        points, agent._inner_hessians(points, batch.inner), batch
    )
    assert curvature_post.observations.shape[1] == 1  # half of 2 episodes per task
    product = agent._kl_hessian_vector_product(theta, points[-1], curvature_hessians, curvature_post)
    generator = torch.Generator().manual_seed(7)
    size = sum(value.numel() for value in theta.values())
    u, v = (torch.randn(size, generator=generator, dtype=torch.float64) for _ in range(2))
    assert (u @ product(v)).item() == pytest.approx((v @ product(u)).item(), rel=1e-8)
    assert v @ product(v) > 0
    # and the whole meta-update runs and moves the parameters within the trust region
    before = flatten_tensors([value.detach().clone() for value in theta.values()])
    metrics = agent.meta_update(batch)
    assert metrics["losses/line_search_accepted"] == 1.0
    assert metrics["losses/kl"] <= agent.config.max_kl
    assert not torch.equal(before, flatten_tensors([value.detach() for value in theta.values()]))


@pytest.mark.parametrize("curvature_fraction", [1.0, 0.5])
def test_pre_adaptation_fisher_product_equals_double_backward(curvature_fraction):
    agent, batch = make_agent(num_inner_steps=1)
    agent.config.curvature_fraction = curvature_fraction
    theta = dict(agent.policy.named_parameters())
    points = agent.adaptation_points(theta, batch.inner, batch.shard.size)
    product = agent._pre_adaptation_fisher_product(theta, points[0], batch.inner[0], batch.shard.total)
    # naive: the Hessian of the pre-adaptation policies' mean KL (on the curvature's share of the episodes) at θ
    pre = agent._curvature_share(batch.inner[0])
    assert pre.observations.shape[1] == (2 if curvature_fraction == 1.0 else 1)
    old = detach_distribution(agent.policy.distribution(pre.observations, detach_params(theta)))
    kl = mean_kl(agent.policy.distribution(pre.observations, theta), old, pre.weights)
    kl_gradient = flatten_tensors(torch.autograd.grad(kl, list(theta.values()), create_graph=True))
    generator = torch.Generator().manual_seed(6)
    for _ in range(2):
        vector = torch.randn(kl_gradient.shape, generator=generator, dtype=torch.float64)
        naive = flatten_tensors(torch.autograd.grad(kl_gradient @ vector, list(theta.values()), retain_graph=True))
        torch.testing.assert_close(product(vector), naive, rtol=1e-7, atol=1e-10)


def test_pre_adaptation_trust_region_bounds_both_policies_kl():
    metrics = {}
    for bound_pre in (False, True):
        agent, batch = make_agent(num_inner_steps=1)
        agent.config.pre_adaptation_trust_region = bound_pre
        theta = dict(agent.policy.named_parameters())
        pre = batch.inner[0]
        old_pre = detach_distribution(agent.policy.distribution(pre.observations, detach_params(theta)))
        metrics[bound_pre] = agent.meta_update(batch)
        assert metrics[bound_pre]["losses/line_search_accepted"] == 1.0
        # the logged pre-adaptation KL is that of the step taken
        pre_kl = mean_kl(agent.policy.distribution(pre.observations, detach_params(theta)), old_pre, pre.weights)
        assert metrics[bound_pre]["losses/pre_adaptation_kl"] == pytest.approx(pre_kl.item(), rel=1e-9)
    unbounded, bounded = metrics[False], metrics[True]
    # bounded: the line search's KL is the sum of the two, within the trust region
    assert bounded["losses/pre_adaptation_kl"] < bounded["losses/kl"] <= 0.01
    assert bounded["losses/pre_adaptation_kl"] < unbounded["losses/pre_adaptation_kl"]
