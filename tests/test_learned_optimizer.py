"""The learned inner-loop optimiser (agents/learned_optimizer.py): the gradient preprocessing, the batched LSTM step
against a per-task, per-coordinate loop and against adapt_per_task, the meta-gradient against finite differences,
more evaluation steps than trained, exact resume, refused configs, and learning on held-out tasks."""

from __future__ import annotations

import math

import metarl.envs  # noqa: F401 - registers the families
import numpy as np
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
from metarl.agents.inner_loop import detach_params
from metarl.agents.learned_optimizer import LearnedOptimizerMAML, preprocess_gradients
from metarl.agents.policies import batch_params

ALGO = "maml-lstm-optimizer"
SMALL = {
    "algo": ALGO,
    "meta_batch_size": 3,
    "episodes_per_task": 3,
    "hidden_sizes": [4],
    "family_kwargs": {"horizon": 10},
    "iterations": 4,
    "num_inner_steps": 2,
    "lstm_hidden_size": 3,
}


def build(**overrides):
    """An agent of a tiny Navigation2D config (torch seed 0) and the three tasks."""
    return tiny_agent_and_tasks(LearnedOptimizerMAML, {**SMALL, **overrides})


# -- the preprocessing ---------------------------------------------------------------------------------------------
def test_preprocessing_matches_hand_computed_values_on_both_branches():
    e = math.e
    gradients = torch.tensor([1.0, -(e**-5), e**-10 * 1.0001, 1e-5, -2e-5, 0.0], dtype=torch.float64)
    expected = torch.tensor(
        [
            [0.0, 1.0],  # log 1 / 10, sign
            [-0.5, -1.0],  # log e^-5 / 10
            [(-10 + math.log(1.0001)) / 10, 1.0],  # just above the threshold e^-10
            [-1.0, e**10 * 1e-5],  # below: (-1, e^p g) = (-1, 0.220265)
            [-1.0, -(e**10) * 2e-5],
            [-1.0, 0.0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(preprocess_gradients(gradients, p=10.0), expected)
    assert expected[3, 1].item() == pytest.approx(0.2202646579, rel=1e-9)
    # another p: e^-2 = 0.135 is the threshold
    other = preprocess_gradients(torch.tensor([-3.0, 0.1], dtype=torch.float64), p=2.0)
    torch.testing.assert_close(
        other, torch.tensor([[math.log(3.0) / 2, -1.0], [-1.0, e**2 * 0.1]], dtype=torch.float64)
    )
    # differentiable everywhere, zero included: the log branch not taken has a finite gradient
    probe = torch.tensor([0.0, 1e-6, 0.5, -2.0], dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(preprocess_gradients(probe).sum(), probe)
    torch.testing.assert_close(gradient, torch.tensor([e**10, e**10, 1 / (10 * 0.5), 1 / (10 * -2.0)]).double())


# -- the batched step ----------------------------------------------------------------------------------------------
def test_the_batched_update_equals_a_per_task_per_coordinate_loop():
    """Two inner updates of three tasks at once against the LSTM cells run on one coordinate of one task at a time,
    each coordinate carrying its own state across the two steps."""
    agent, _ = build(lstm_layers=2)
    theta = {name: value.detach() for name, value in agent.policy.named_parameters()}
    num_tasks = 3
    generator = torch.Generator().manual_seed(0)
    step_grads = [
        [torch.randn(num_tasks, *value.shape, generator=generator) * 10.0 ** (-4 * k) for value in theta.values()]
        for k in range(2)
    ]
    step_grads[1][0].view(-1)[0] = 0.0  # an exact zero and tiny ones take the linear branch
    agent.begin_adaptation(num_tasks)
    batched = batch_params(theta, num_tasks)
    with torch.no_grad():
        for k, grads in enumerate(step_grads):
            batched = agent.inner_update(batched, grads, 0.1, step=k)

    lstm = agent.lstm
    expected = {name: value.unsqueeze(0).repeat(num_tasks, *([1] * value.ndim)) for name, value in theta.items()}
    states: dict[tuple[int, str, int], list] = {}
    with torch.no_grad():
        for grads in step_grads:
            for (name, value), g in zip(theta.items(), grads, strict=True):
                for t in range(num_tasks):
                    for i in range(value.numel()):
                        key = (t, name, i)
                        state = states.get(key, [(torch.zeros(1, 3), torch.zeros(1, 3))] * len(lstm.cells))
                        x = preprocess_gradients(g[t].reshape(-1)[i].reshape(1))
                        new_state = []
                        for cell, hc in zip(lstm.cells, state, strict=True):
                            hc = cell(x, hc)
                            new_state.append(hc)
                            x = hc[0]
                        states[key] = new_state
                        update = lstm.output_scale * lstm.readout(x).reshape(())
                        expected[name][t].view(-1)[i] += update
    for name in theta:
        torch.testing.assert_close(batched[name], expected[name], rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(batched[name][0], theta[name]) for name in theta)


def test_batched_adapt_equals_the_per_task_reference_and_so_do_their_meta_gradients():
    agent, tasks = build()
    batch = sampled_meta_batch(agent, tasks)
    theta = dict(agent.policy.named_parameters())
    batched = agent.adapt(theta, batch.inner, create_graph=True)
    looped = agent.adapt_per_task(theta, batch.inner, create_graph=True)
    for name in theta:
        torch.testing.assert_close(batched[name], looped[name], rtol=1e-5, atol=1e-7)
    lstm_parameters = list(agent.lstm.parameters())
    probe = {name: torch.randn_like(value) for name, value in batched.items()}
    grads = [
        torch.autograd.grad(sum((adapted[n] * probe[n]).sum() for n in adapted), lstm_parameters)
        for adapted in (batched, looped)
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads[0])


def test_inner_update_without_begin_adaptation_is_refused():
    agent, _ = build()
    params = {name: value.detach() for name, value in agent.policy.named_parameters()}
    with pytest.raises(RuntimeError, match="call begin_adaptation"):
        agent.inner_update(params, list(params.values()), 0.1, step=0)
    agent.begin_adaptation(1)
    agent.inner_update(params, list(params.values()), 0.1, step=0)
    with pytest.raises(RuntimeError, match="inner step 0, but the LSTM optimiser has taken 1 steps"):
        agent.inner_update(params, list(params.values()), 0.1, step=0)


# -- the meta-gradient ---------------------------------------------------------------------------------------------
def test_meta_gradient_matches_central_finite_differences():
    """The clipped post-adaptation surrogate's gradient with respect to every LSTM weight and every entry of θ₀,
    through two second-order inner steps of the LSTM, against central differences in float64."""
    agent, tasks = build(lstm_output_scale=0.3)
    batch = sampled_meta_batch(agent, tasks)
    agent.policy.double()
    agent.lstm.double()
    inner, post = [as_float64(d) for d in batch.inner], as_float64(batch.post)
    theta = dict(agent.policy.named_parameters())
    adapted = detach_params(agent.adapt(theta, inner, create_graph=False))
    old_log_probs = agent.policy.distribution(post.observations, adapted).log_prob(post.actions).detach()

    def loss() -> torch.Tensor:
        adapted = agent.adapt(theta, inner, create_graph=True)
        return agent.clipped_surrogate_loss(adapted, post, old_log_probs, len(tasks))[0]

    parameters = dict(agent.lstm.named_parameters()) | {f"policy.{n}": v for n, v in theta.items()}
    analytic = torch.autograd.grad(loss(), list(parameters.values()))
    eps = 1e-6
    for (name, parameter), gradient in zip(parameters.items(), analytic, strict=True):
        flat = parameter.data.view(-1)
        for i in range(flat.numel()):
            flat[i] += eps
            up = loss().item()
            flat[i] -= 2 * eps
            down = loss().item()
            flat[i] += eps
            numeric = (up - down) / (2 * eps)
            assert gradient.view(-1)[i].item() == pytest.approx(numeric, rel=1e-4, abs=1e-8), (name, i)
    assert all(g.abs().sum() > 0 for g in analytic)


def test_first_order_drops_the_terms_through_the_gradient_inputs_but_still_trains_the_lstm():
    def moved(first_order: bool) -> dict[str, torch.Tensor]:
        agent, tasks = build(first_order=first_order, ppo_epochs=1)
        batch = sampled_meta_batch(agent, tasks)
        before = {name: value.detach().clone() for name, value in agent.lstm.named_parameters()}
        agent.meta_update(batch)
        return {name: value.detach() - before[name] for name, value in agent.lstm.named_parameters()}

    first, second = moved(True), moved(False)
    assert all(change.abs().sum() > 0 for change in first.values())
    assert any(not torch.allclose(first[name], second[name]) for name in first)


# -- evaluation ------------------------------------------------------------------------------------------------------
def test_more_inner_steps_at_evaluation_than_trained_keep_stepping_the_lstm():
    agent, tasks = build(num_inner_steps=2)
    num_points = agent.config.num_inner_steps + 3
    curve = agent.adaptation_curve(tasks, np.random.default_rng(0), num_points)
    assert curve.returns.shape == (num_points, len(tasks))
    assert np.isfinite(curve.returns).all()
    assert agent._steps_taken == num_points - 1
    # the extra steps move the policy: the sampler's last adapted parameters differ from those after K steps
    short = agent.sample(tasks, np.random.default_rng(0), 2, evaluation=True).adapted
    long = agent.sample(tasks, np.random.default_rng(0), 4, evaluation=True).adapted
    assert any(not torch.allclose(short[name], long[name]) for name in short)


# -- runs ------------------------------------------------------------------------------------------------------------
def test_a_run_interrupted_after_its_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    """4 iterations straight, and the same run stopped during iteration 3 (checkpoint at 2) then resumed: the same
    policy, LSTM, Adam state, metrics and test returns."""
    values = tiny_values(ALGO, ppo_epochs=2, lstm_hidden_size=4)
    reference, resumed = interrupted_and_resumed(LearnedOptimizerMAML, values, tmp_path, monkeypatch)

    final = assert_resumed_equals_reference(reference, resumed)
    assert "lstm" in final and final["optimizer"]["state"]
    # Adam holds the LSTM's moments beside the policy's
    policy_size = len(final["policy"])
    assert len(final["optimizer"]["state"]) == policy_size + len(final["lstm"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lstm_hidden_size=0"], "lstm_hidden_size must be >= 1, got 0"),
        (["lstm_layers=0"], "lstm_layers must be >= 1, got 0"),
        (["lstm_output_scale=0"], "lstm_output_scale must be a finite number > 0, got 0"),
        (["lstm_output_scale=-0.1"], "lstm_output_scale must be a finite number > 0, got -0.1"),
        (["gradient_preprocessing_p=0"], "gradient_preprocessing_p must be a finite number > 0, got 0"),
        (["num_inner_steps=0"], "num_inner_steps must be >= 1, got 0"),
        (["ppo_epochs=0"], "ppo_epochs must be >= 1, got 0"),
        (["meta_sgd=true"], "meta_sgd learns step sizes, but the learned optimiser has none"),
    ],
)
def test_bad_values_are_refused_before_a_run_folder_exists(tmp_path, capsys, overrides, message):
    assert_refused_before_a_run_folder(ALGO, overrides, message, r"must|meta_sgd", tmp_path, capsys)


@pytest.mark.slow
def test_adaptation_improves_held_out_navigation_tasks_after_meta_training(tmp_path):
    """The learned optimiser on MetaRL/Navigation2D-v0 (goals in [-0.5, 0.5]², horizon 100): after a short
    meta-training the return on held-out test tasks after two LSTM steps beats the untrained agent's by a margin."""
    values = {
        **SHORT_NAVIGATION_TRAINING,
        "algo": ALGO,
        "ppo_epochs": 3,
        "ppo_learning_rate": 0.01,
    }
    trained, untrained = trained_and_untrained_test_returns(LearnedOptimizerMAML, values, tmp_path / "trained")
    # seed 0: untrained -173.1 -> -178.9 -> -253.8 (the untrained LSTM's steps are noise); trained -44.9 -> -32.3 ->
    # -24.7 (seeds 1-3 after training: -41.5 -> -17.5, -277.6 -> -52.3, -42.3 -> -21.0); about half of seed 0's
    # margins as slack
    assert trained[-1] > untrained[-1] + 100.0, (untrained, trained)
    assert trained[-1] > trained[0] + 10.0, (untrained, trained)  # the LSTM's steps themselves were meta-learned
    assert trained[-1] > -35.0, (untrained, trained)  # beyond a goal-blind policy (standing still: about -37)
