"""MAML++ (agents/maml_plus_plus.py): LSLR's step-size gradient, the multi-step loss's weights, derivative-order
annealing against FO-MAML, the cosine learning rate, exact resume, refused configs, and learning on held-out tasks."""

from __future__ import annotations

import itertools
import math

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
from metarl.agents.maml_plus_plus import MAMLPlusPlus, cosine_learning_rate, multi_step_loss_weights
from metarl.agents.maml_ppo import MAMLPPO

from metarl.presets import config_from_dict

ALGO = "maml-plus-plus"
SMALL = {
    "meta_batch_size": 3,
    "episodes_per_task": 3,
    "hidden_sizes": [16],
    "family_kwargs": {"horizon": 10},
    "iterations": 4,
}
SCHEDULES = {"first_order_iterations": 2, "msl_annealing_iterations": 2}
"""MAML++'s schedules fitted to the 4 iterations."""


def build(agent_class, **overrides):
    """An agent of a tiny Navigation2D config (the policy initialised from torch seed 0) and the three tasks."""
    return tiny_agent_and_tasks(agent_class, {**SMALL, **(SCHEDULES if overrides["algo"] == ALGO else {}), **overrides})


def parameters(agent) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in agent.policy.named_parameters()}


# -- LSLR ----------------------------------------------------------------------------------------------------------
def test_lslr_step_size_gradient_matches_central_finite_differences():
    """The multi-step loss's gradient with respect to every per-layer, per-step rate, through two second-order inner
    steps, against central differences in float64."""
    agent, tasks = build(MAMLPlusPlus, algo=ALGO, num_inner_steps=2, hidden_sizes=[4], inner_step_sizes=[0.3, 0.2])
    batch = sampled_meta_batch(agent, tasks)
    agent.policy.double()
    agent.lslr.double()
    batch = batch._replace(inner=[as_float64(d) for d in batch.inner], post=as_float64(batch.post))
    theta = dict(agent.policy.named_parameters())
    targets = [*batch.inner[1:], batch.post]
    old_log_probs = [
        old.log_prob(data.actions) for old, data in zip(agent.old_distributions(theta, batch), targets, strict=True)
    ]
    weights = [0.4, 0.6]

    def loss() -> torch.Tensor:
        return agent.multi_step_loss(theta, batch, old_log_probs, weights, create_graph=True)[0]

    rates = dict(agent.lslr.items())
    assert all(value.shape == (2,) for value in rates.values()) and len(rates) == len(theta)
    analytic = torch.autograd.grad(loss(), list(rates.values()))
    eps = 1e-6
    for (name, rate), gradient in zip(rates.items(), analytic, strict=True):
        for k in range(2):
            with torch.no_grad():
                rate[k] += eps
            up = loss().item()
            with torch.no_grad():
                rate[k] -= 2 * eps
            down = loss().item()
            with torch.no_grad():
                rate[k] += eps
            numeric = (up - down) / (2 * eps)
            assert gradient[k].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9), (name, k)
    assert any(g.abs().sum() > 0 for g in analytic)


def test_lslr_rates_are_learned_per_step_and_extra_evaluation_steps_reuse_the_last():
    agent, tasks = build(MAMLPlusPlus, algo=ALGO, num_inner_steps=2, inner_step_sizes=[0.2, 0.1], ppo_epochs=2)
    initial = {name: value.detach().clone() for name, value in agent.lslr.items()}
    assert all(torch.equal(value, torch.tensor([0.2, 0.1])) for value in initial.values())
    metrics = agent.meta_update(sampled_meta_batch(agent, tasks))
    for name, value in agent.lslr.items():
        assert not torch.equal(value.detach()[0], initial[name][0]) and not torch.equal(
            value.detach()[1], initial[name][1]
        )
    assert {"lslr/mean_step_size_step_1", "lslr/mean_step_size_step_2"} <= set(metrics)
    # a third (evaluation) step uses the second step's rates
    params = parameters(agent)
    grads = [torch.ones_like(value) for value in params.values()]
    third, second = agent.inner_update(params, grads, 0.05, step=2), agent.inner_update(params, grads, 0.05, step=1)
    for name in params:
        assert torch.equal(third[name], second[name])
        torch.testing.assert_close(
            params[name] - third[name], agent.lslr[name.replace(".", "__")][1].detach().expand_as(params[name])
        )


# -- the multi-step loss ---------------------------------------------------------------------------------------------
def test_multi_step_loss_weights_start_uniform_and_anneal_to_the_last_step():
    annealing = 10
    history = [multi_step_loss_weights(3, i, annealing, floor=0.0) for i in range(2 * annealing)]
    assert history[0] == pytest.approx([1 / 3] * 3)
    assert history[5] == pytest.approx([1 / 6, 1 / 6, 2 / 3])
    for weights in history[annealing:]:
        assert weights == pytest.approx([0.0, 0.0, 1.0])
    for before, after in itertools.pairwise(history):
        assert sum(after) == pytest.approx(1.0)
        assert all(a <= b for a, b in zip(after[:-1], before[:-1], strict=True))  # non-final weights never grow
        assert after[-1] >= before[-1]
    # the authors' floor: each non-final weight stops at 0.03 / K
    assert multi_step_loss_weights(3, annealing, annealing, floor=0.03) == pytest.approx([0.01, 0.01, 0.98])
    assert sum(multi_step_loss_weights(3, 7, annealing, floor=0.03)) == pytest.approx(1.0)
    assert multi_step_loss_weights(1, 0, annealing, floor=0.03) == [1.0]


def test_the_agent_uses_the_schedules_weights_or_only_the_last_step_without_msl():
    agent, tasks = build(MAMLPlusPlus, algo=ALGO, num_inner_steps=2, msl_floor=0.0, ppo_epochs=1)
    batch = sampled_meta_batch(agent, tasks)
    assert agent.meta_update(batch)["schedule/msl_weight_step_1"] == pytest.approx(0.5)
    assert agent.meta_update(batch)["schedule/msl_weight_step_1"] == pytest.approx(0.25)
    assert agent.meta_update(batch)["schedule/msl_weight_step_2"] == pytest.approx(1.0)
    plain, _ = build(MAMLPlusPlus, algo=ALGO, num_inner_steps=2, multi_step_loss=False)
    assert plain.step_loss_weights(0) == [0.0, 1.0]


# -- derivative-order annealing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("lslr", "epochs"), [(False, 3), (True, 1)])
def test_first_order_iterations_update_as_fo_maml_then_as_second_order_maml(lslr, epochs):
    """With the multi-step loss and the cosine schedule off, MAML++'s update of θ is MAML-PPO's: first order during
    the first ``first_order_iterations``, second order after. With LSLR (rates starting at MAML-PPO's step sizes)
    one Adam epoch moves θ as MAML-PPO's does: Adam's step is per parameter."""
    common = {"num_inner_steps": 2, "inner_step_sizes": [0.2, 0.1], "ppo_epochs": epochs, "ppo_learning_rate": 3e-3}
    own = {"algo": ALGO, "lslr": lslr, "multi_step_loss": False, "cosine_annealing": False}

    def moved(agent, batch) -> dict[str, torch.Tensor]:
        before = parameters(agent)
        agent.meta_update(batch)
        return {name: value - before[name] for name, value in parameters(agent).items()}

    changes = {}
    for second_order in (False, True):
        agent, tasks = build(MAMLPlusPlus, **common, **own)
        batch = sampled_meta_batch(agent, tasks)
        agent.meta_iterations_done = 2 if second_order else 1
        assert agent.second_order(agent.meta_iterations_done) == second_order
        reference, _ = build(MAMLPPO, **common, algo="maml-ppo", first_order=not second_order)
        expected = moved(reference, batch)
        changes[second_order] = moved(agent, batch)
        for name, value in expected.items():
            torch.testing.assert_close(changes[second_order][name], value, rtol=1e-5, atol=1e-8)
    assert any(not torch.allclose(changes[False][n], changes[True][n]) for n in changes[False])


# -- the cosine learning rate --------------------------------------------------------------------------------------
def test_cosine_learning_rate_goes_from_the_maximum_to_the_minimum():
    assert cosine_learning_rate(0, 100, 1e-3, 1e-5) == pytest.approx(1e-3)
    assert cosine_learning_rate(50, 100, 1e-3, 1e-5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cosine_learning_rate(25, 100, 1e-3, 1e-5) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.sqrt(0.5)) / 2)
    assert cosine_learning_rate(100, 100, 1e-3, 1e-5) == pytest.approx(1e-5)
    assert cosine_learning_rate(150, 100, 1e-3, 1e-5) == pytest.approx(1e-5)
    agent, tasks = build(MAMLPlusPlus, algo=ALGO, ppo_epochs=1, ppo_learning_rate=2e-3, min_learning_rate=1e-4)
    batch = sampled_meta_batch(agent, tasks)
    rates = [agent.meta_update(batch)["schedule/learning_rate"] for _ in range(3)]
    assert rates == pytest.approx([2e-3, 1e-4 + 1.9e-3 * (1 + math.sqrt(0.5)) / 2, 1.05e-3])
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(1.05e-3)
    fixed, _ = build(MAMLPlusPlus, algo=ALGO, cosine_annealing=False, ppo_learning_rate=2e-3)
    assert fixed.learning_rate(3) == 2e-3


# -- runs ------------------------------------------------------------------------------------------------------------
def test_a_run_interrupted_after_its_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    """4 iterations straight, and the same run stopped during iteration 3 (checkpoint at 2) then resumed: the same
    parameters, learned rates, Adam state, schedule counter, metrics and test returns."""
    values = tiny_values(ALGO, num_inner_steps=2, ppo_epochs=2)
    reference, resumed = interrupted_and_resumed(MAMLPlusPlus, values, tmp_path, monkeypatch)

    final = assert_resumed_equals_reference(reference, resumed)
    assert final["meta_iterations_done"] == 4 and final["optimizer"]["state"] and "lslr" in final


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["inner_step_sizes=[-0.1]"], "inner_step_sizes must be finite numbers > 0"),
        (["num_inner_steps=0"], "num_inner_steps must be >= 1, got 0"),
        (["min_learning_rate=-0.001"], "min_learning_rate must be a finite number >= 0, got -0.001"),
        (["min_learning_rate=0.01"], "min_learning_rate 0.01 must be <= ppo_learning_rate 0.001"),
        (["msl_floor=1.5"], "msl_floor must be in [0, 1], got 1.5"),
        (["msl_annealing_iterations=5"], "msl_annealing_iterations 5 must be <= iterations 4"),
        (["msl_annealing_iterations=0"], "msl_annealing_iterations must be >= 1, got 0"),
        (["first_order_iterations=4"], "first_order_iterations 4 must be < iterations 4"),
        (["first_order_iterations=-1"], "first_order_iterations must be >= 0, got -1"),
        (["meta_sgd=true"], "lslr and meta_sgd both learn the inner step sizes"),
    ],
)
def test_bad_values_are_refused_before_a_run_folder_exists(tmp_path, capsys, overrides, message):
    assert_refused_before_a_run_folder(ALGO, overrides, message, r"must|both learn", tmp_path, capsys)


def test_a_first_order_run_needs_no_derivative_order_schedule():
    config = config_from_dict(tiny_values(ALGO, first_order=True, first_order_iterations=10))
    assert config.first_order_iterations == 10


@pytest.mark.slow
def test_adaptation_improves_held_out_navigation_tasks_after_meta_training(tmp_path):
    """MAML++ on MetaRL/Navigation2D-v0 (goals in [-0.5, 0.5]², horizon 100): after a short meta-training the return
    on held-out test tasks after two adapted steps beats the untrained policy's by a clear margin."""
    values = {
        **SHORT_NAVIGATION_TRAINING,
        "algo": ALGO,
        "ppo_epochs": 3,
        "ppo_learning_rate": 0.01,
        "min_learning_rate": 0.001,
        "first_order_iterations": 4,
        "msl_annealing_iterations": 6,
    }
    trained, untrained = trained_and_untrained_test_returns(MAMLPlusPlus, values, tmp_path / "trained")
    # seed 0: untrained -166.1 -> -133.7 after two steps; trained -43.3 -> -26.4 -> -18.3 (seeds 1-4 after training:
    # -40.8 -> -16.8, -48.6 -> -37.9, -42.6 -> -23.9, -46.0 -> -22.2); half of seed 0's margins as slack
    assert trained[-1] > untrained[-1] + 50.0, (untrained, trained)
    assert trained[-1] > trained[0] + 12.0, (untrained, trained)  # the adaptation itself was meta-learned
    assert trained[-1] > -30.0, (untrained, trained)  # beyond a goal-blind policy (standing still: about -37)
