"""MAML++ on the TRPO outer loop (agents/maml_plus_plus_trpo.py): the gradient and curvature in (θ, α) against autograd
through the adaptation, the rates moving inside the trust region, MAML-TRPO's update with every switch off, exact
resume, refused configs, and learning on held-out tasks."""

from __future__ import annotations

import metarl.envs  # noqa: F401 - registers the families
import pytest
import torch
from conftest import (
    SHORT_NAVIGATION_TRAINING,
    as_float64,
    assert_refused_before_a_run_folder,
    assert_resumed_equals_reference,
    interrupted_and_resumed,
    sampled_meta_batch,
    tiny_agent_and_tasks,
    tiny_values,
    trained_and_untrained_test_returns,
)
from metarl.agents.maml_plus_plus import step_targets
from metarl.agents.maml_plus_plus_trpo import MAMLPlusPlusTRPO
from metarl.agents.maml_trpo import MAMLTRPO

from metarl.optim import flatten_tensors

ALGO = "maml-plus-plus-trpo"
SMALL = {
    "meta_batch_size": 3,
    "episodes_per_task": 3,
    "hidden_sizes": [8],
    "family_kwargs": {"horizon": 10},
    "iterations": 4,
}
SCHEDULES = {"first_order_iterations": 2, "msl_annealing_iterations": 2}


def build(agent_class, **overrides):
    """An agent of a tiny Navigation2D config (the policy initialised from torch seed 0) and the three tasks."""
    return tiny_agent_and_tasks(agent_class, {**SMALL, **(SCHEDULES if overrides["algo"] == ALGO else {}), **overrides})


def in_float64(agent, batch):
    """The agent and its batch in float64, so that the analytic and the autograd values agree to ~1e-10."""
    agent.policy.double()
    if agent.lslr is not None:
        agent.lslr.double()
    return batch._replace(inner=[as_float64(d) for d in batch.inner], post=as_float64(batch.post))


def autograd_problem(agent, batch, weights, second_order):
    """The reference: the multi-step surrogate's gradient and the weighted KL's Hessian-vector product in (θ, α), by
    autograd through the batched adaptation (a graph through the inner gradients at second order, the Hessian by
    double backward of the KL at new = old)."""
    theta = dict(agent.policy.named_parameters())
    parameters = list(agent.trust_region_parameters().values())
    old_distributions = agent.old_distributions(theta, batch)
    old_log_probs = [
        old.log_prob(data.actions) for old, data in zip(old_distributions, step_targets(batch), strict=True)
    ]
    points = agent.adaptation_path(theta, batch.inner, create_graph=second_order)[1:]
    loss, kl = agent.multi_step_surrogate(points, batch, old_distributions, old_log_probs, weights)
    gradient = flatten_tensors(torch.autograd.grad(loss, parameters, retain_graph=True))
    kl_gradient = flatten_tensors(torch.autograd.grad(kl, parameters, create_graph=True))

    def hessian_vector_product(vector):
        product = torch.autograd.grad(torch.dot(kl_gradient, vector), parameters, retain_graph=True)
        return flatten_tensors(product) + agent.config.cg_damping * vector

    return float(loss.detach()), gradient, hessian_vector_product


@pytest.mark.parametrize(("second_order", "lslr"), [(True, True), (False, True), (True, False)])
def test_gradient_and_curvature_in_theta_and_rates_match_autograd_through_the_adaptation(second_order, lslr):
    """The R-operator Jacobian in (θ, α) (LinearisedAdaptation) against autograd, through two inner steps with the
    multi-step loss's weights on both: the surrogate, its gradient (the rates' block included) and the curvature
    product on random directions."""
    agent, tasks = build(MAMLPlusPlusTRPO, algo=ALGO, lslr=lslr, inner_step_sizes=[0.3, 0.2])
    batch = in_float64(agent, sampled_meta_batch(agent, tasks))
    weights = [0.4, 0.6]
    problem = agent.trust_region_problem(batch, weights, second_order)
    loss, gradient, hessian_vector_product = autograd_problem(agent, batch, weights, second_order)
    num_rates = sum(value.numel() for value in agent.lslr.parameters()) if lslr else 0
    assert gradient.numel() == sum(value.numel() for value in agent.policy.parameters()) + num_rates
    assert problem.loss == pytest.approx(loss, abs=1e-12)
    torch.testing.assert_close(problem.gradient, gradient, rtol=1e-9, atol=1e-12)
    if lslr:
        assert gradient[-num_rates:].abs().sum() > 0  # the rates do get a gradient
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        vector = torch.randn(gradient.shape, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(
            problem.hessian_vector_product(vector), hessian_vector_product(vector), rtol=1e-8, atol=1e-11
        )
    if lslr:  # the curvature couples the rates with θ: a direction in the rates alone moves θ's block too
        only_rates = torch.zeros_like(gradient)
        only_rates[-num_rates:] = 1.0
        assert problem.hessian_vector_product(only_rates)[:-num_rates].abs().sum() > 0


def test_the_rates_move_inside_the_trust_region():
    """One meta-update moves θ and the rates together, and the KL the line search accepted (within max_kl) is the one
    of the policies adapted with the new θ *and* the new rates: with the old rates the KL is another number."""
    agent, tasks = build(MAMLPlusPlusTRPO, algo=ALGO, inner_step_sizes=[0.3, 0.2], max_kl=0.02)
    batch = sampled_meta_batch(agent, tasks)
    iteration_weights = agent.step_loss_weights(0)
    theta_before = {name: value.detach().clone() for name, value in agent.policy.named_parameters()}
    rates_before = {name: value.detach().clone() for name, value in agent.lslr.named_parameters()}
    # the old policies: adapted from the parameters before the update
    old_distributions = agent.old_distributions(dict(agent.policy.named_parameters()), batch)
    old_log_probs = [o.log_prob(d.actions) for o, d in zip(old_distributions, step_targets(batch), strict=True)]

    metrics = agent.meta_update(batch)

    assert metrics["losses/line_search_accepted"] == 1.0
    assert all(not torch.equal(value, rates_before[name]) for name, value in agent.lslr.named_parameters())
    assert all(not torch.equal(value, theta_before[name]) for name, value in agent.policy.named_parameters())

    def weighted_kl() -> float:
        theta = {name: value.detach() for name, value in agent.policy.named_parameters()}
        points = agent.adaptation_points(theta, batch.inner, batch.shard.size)[1:]
        with torch.no_grad():
            return float(
                agent.multi_step_surrogate(points, batch, old_distributions, old_log_probs, iteration_weights)[1]
            )

    joint_kl = weighted_kl()
    assert joint_kl == pytest.approx(metrics["losses/kl"], rel=1e-5)
    assert joint_kl <= agent.config.max_kl
    new_rates = {name: value.detach().clone() for name, value in agent.lslr.named_parameters()}
    with agent.rates_set_to(rates_before):
        kl_with_old_rates = weighted_kl()
    assert all(torch.equal(value, new_rates[name]) for name, value in agent.lslr.named_parameters())  # restored
    assert abs(kl_with_old_rates - joint_kl) > 0.01 * joint_kl


@pytest.mark.parametrize("first_order", [False, True])
def test_without_the_switches_the_update_is_maml_trpos(first_order):
    """Without LSLR and the multi-step loss, the update is MAML-TRPO's with the same two inner steps: second order
    after ``first_order_iterations``, FO-MAML's during them (float64: in float32 the conjugate gradient's rounding
    alone moves the KL by ~2 %)."""
    common = {"num_inner_steps": 2, "inner_step_sizes": [0.2, 0.1]}
    agent, tasks = build(MAMLPlusPlusTRPO, algo=ALGO, lslr=False, multi_step_loss=False, **common)
    batch = in_float64(agent, sampled_meta_batch(agent, tasks))
    agent.meta_iterations_done = 1 if first_order else 2
    assert agent.second_order(agent.meta_iterations_done) == (not first_order)
    reference, _ = build(MAMLTRPO, algo="maml-trpo", first_order=first_order, **common)
    reference.policy.double()
    expected, metrics = reference.meta_update(batch), agent.meta_update(batch)
    assert metrics["losses/line_search_accepted"] == 1.0
    assert metrics["losses/kl"] == pytest.approx(expected["losses/kl"], rel=1e-3)
    assert metrics["losses/step_fraction"] == expected["losses/step_fraction"]
    for (name, value), (_, reference_value) in zip(
        agent.policy.named_parameters(), reference.policy.named_parameters(), strict=True
    ):
        torch.testing.assert_close(value, reference_value, rtol=1e-4, atol=1e-6, msg=name)


def test_a_run_interrupted_after_its_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    """4 iterations straight, and the same run stopped during iteration 3 (checkpoint at 2) then resumed: the same
    parameters, learned rates, schedule counter, metrics and test returns."""
    values = tiny_values(ALGO, num_inner_steps=2)
    reference, resumed = interrupted_and_resumed(MAMLPlusPlusTRPO, values, tmp_path, monkeypatch)
    final = assert_resumed_equals_reference(reference, resumed)
    assert final["meta_iterations_done"] == 4 and "lslr" in final


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["num_inner_steps=0"], "num_inner_steps must be >= 1, got 0"),
        (["inner_step_sizes=[-0.1]"], "inner_step_sizes must be finite numbers > 0"),
        (["max_kl=-0.01"], "max_kl must be a finite number > 0, got -0.01"),
        (["first_order_iterations=4"], "first_order_iterations 4 must be < iterations 4"),
        (["msl_annealing_iterations=5"], "msl_annealing_iterations 5 must be <= iterations 4"),
        (["curvature_fraction=0.25"], "curvature_fraction must be 1.0 for maml-plus-plus-trpo, got 0.25"),
        (["pre_adaptation_trust_region=true"], "pre_adaptation_trust_region must be false for maml-plus-plus-trpo"),
        (["cosine_annealing=true"], "cosine_annealing"),
    ],
)
def test_bad_values_are_refused_before_a_run_folder_exists(tmp_path, capsys, overrides, message):
    assert_refused_before_a_run_folder(ALGO, overrides, message, r"must|unknown|cosine", tmp_path, capsys)


@pytest.mark.slow
def test_adaptation_improves_held_out_navigation_tasks_after_meta_training(tmp_path):
    """MAML++-TRPO on MetaRL/Navigation2D-v0: after a short meta-training the return on held-out test tasks after two
    adapted steps beats the untrained policy's by a clear margin."""
    values = {
        **SHORT_NAVIGATION_TRAINING,
        "algo": ALGO,
        "max_kl": 0.05,
        "first_order_iterations": 4,
        "msl_annealing_iterations": 6,
    }
    trained, untrained = trained_and_untrained_test_returns(MAMLPlusPlusTRPO, values, tmp_path / "trained")
    # seed 0: untrained -166.1 -> -133.7 after two steps; trained -54.2 -> -26.3 -> -17.7; about half the margins
    assert trained[2] > untrained[2] + 50.0
    assert trained[2] > trained[0] + 15.0
