"""PEARL: SAC's targets and losses by hand, the batched step against a per-task loop, the posterior sampling of an
evaluation, the replay buffers across a kill and a resume, refused inputs, and learning on held-out tasks."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from conftest import (
    assert_refused_before_a_run_folder,
    assert_resumed_equals_reference,
    assert_same_state,
    interrupted_and_resumed,
    tiny_agent_and_tasks,
    tiny_values,
    trained_and_untrained_test_returns,
)
from metarl.agents.context_encoder import product_of_gaussians
from metarl.agents.pearl import PEARL, POLICY_REGULARIZATION, TANH_EPSILON, SACNoise, _PosteriorSamplingActor

import metarl
from metarl.checkpoint import LAST_CHECKPOINT, buffers_checkpoint, load_checkpoint
from metarl.evaluate import evaluate_run
from metarl.presets import config_from_dict
from metarl.trainer import train
from metarl.trials import collect_trials, make_trial_envs


def tiny_pearl(**overrides):
    return tiny_agent_and_tasks(PEARL, tiny_values("pearl", **overrides))


def constant_networks(agent: PEARL, outputs: dict[str, list[float]]) -> None:
    """Every weight zero and each network's output bias set: each network outputs a constant."""
    with torch.no_grad():
        for name, bias in outputs.items():
            network = agent.networks.encoder.network if name == "encoder" else getattr(agent.networks, name)
            network = network.network if name == "policy" else network
            for parameter in network.parameters():
                parameter.zero_()
            network[-1].bias.copy_(torch.tensor(bias))


def filled_batches(agent: PEARL, num_tasks: int, batch_size: int, context_size: int):
    """A random RL batch and context of ``num_tasks`` tasks (float32, terminals mixed), and a step's noise."""
    generator = torch.Generator().manual_seed(3)
    obs, act = agent.observation_size, agent.action_size

    def draw(*shape):
        return torch.randn(shape, generator=generator)

    def transitions(count: int) -> dict[str, torch.Tensor]:
        return {
            "observations": draw(num_tasks, count, obs),
            "actions": draw(num_tasks, count, act).clamp(-1, 1),
            "rewards": draw(num_tasks, count),
            "critic_rewards": draw(num_tasks, count),
            "next_observations": draw(num_tasks, count, obs),
            "terminals": (draw(num_tasks, count) > 0.5).float(),
        }

    batch, context = transitions(batch_size), transitions(context_size)
    noise = SACNoise(draw(num_tasks, agent.config.pearl_latent_size), draw(num_tasks, batch_size, act))
    return batch, context, noise


def test_sac_losses_equal_their_hand_computed_values():
    """Networks that output constants make every loss a closed form: the Bellman targets with the reward scale,
    the discount and the terminals; the squashed Gaussian's log-density; V's soft target; the policy's loss and
    regularisation; the KL of the product of identical factors."""
    agent, _ = tiny_pearl(pearl_reward_scale=3.0, pearl_discount=0.9)
    q1, q2, target_v, v = 0.5, -0.25, 2.0, 0.75
    mean, log_std = [0.3, -0.2], [-0.5, 0.1]
    factor_mean, factor_raw_variance = [0.4] * 5, [0.2] * 5
    constant_networks(
        agent,
        {
            "q1": [q1],
            "q2": [q2],
            "target_value": [target_v],
            "value": [v],
            "policy": mean + log_std,
            "encoder": factor_mean + factor_raw_variance,
        },
    )
    batch, context, noise = filled_batches(agent, num_tasks=2, batch_size=4, context_size=3)
    critic, kl, _ = agent.critic_losses(batch, context, noise, total_tasks=2)
    value_loss, policy_loss = agent.actor_losses(batch, noise.latent, noise, total_tasks=2)

    targets = 3.0 * batch["critic_rewards"] + (1 - batch["terminals"]) * 0.9 * target_v
    expected_critic = ((q1 - targets) ** 2).mean() + ((q2 - targets) ** 2).mean()
    assert critic.item() == pytest.approx(expected_critic.item(), rel=1e-5)

    # each task's posterior: 3 identical factors, variance softplus(0.2) / 3, mean 0.4, over 5 dimensions
    variance = math.log1p(math.exp(0.2)) / 3
    kl_per_task = 0.5 * 5 * (variance + 0.4**2 - 1 - math.log(variance))
    assert kl.item() == pytest.approx(2 * kl_per_task, rel=1e-5)

    mean_t, log_std_t = torch.tensor(mean), torch.tensor(log_std)
    pre_squash = mean_t + log_std_t.exp() * noise.action
    gaussian = torch.distributions.Normal(mean_t, log_std_t.exp()).log_prob(pre_squash).sum(-1)
    log_pi = gaussian - torch.log(1 - torch.tanh(pre_squash) ** 2 + TANH_EPSILON).sum(-1)
    min_q = min(q1, q2)
    assert value_loss.item() == pytest.approx(((v - (min_q - log_pi)) ** 2).mean().item(), rel=1e-5)
    regularization = POLICY_REGULARIZATION * (sum(m * m for m in mean) / 2 + sum(s * s for s in log_std) / 2)
    assert policy_loss.item() == pytest.approx((log_pi - min_q).mean().item() + regularization, rel=1e-5)


def test_batched_step_equals_a_loop_over_tasks():
    """One SAC step on the stacked meta-batch leaves every network and optimiser where a loop over the tasks, its
    gradients summed, leaves them (float64: equal to rounding)."""
    batched, _ = tiny_pearl(pearl_task_batch_size=4)
    batched.networks.double()
    looped = copy.deepcopy(batched)
    batch, context, noise = filled_batches(batched, num_tasks=4, batch_size=8, context_size=6)
    batch, context = ({k: v.double() for k, v in d.items()} for d in (batch, context))
    noise = SACNoise(noise.latent.double(), noise.action.double())
    losses = batched.sac_update(batch, context, noise)
    loop_losses = looped.sac_update(batch, context, noise, loop_over_tasks=True)
    for a, b in zip(losses, loop_losses, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-10)
    moved = 0
    for (name, a), b in zip(batched.networks.state_dict().items(), looped.networks.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    initial = tiny_pearl(pearl_task_batch_size=4)[0].networks.double().state_dict()
    moved = sum(not torch.equal(initial[name], value) for name, value in batched.networks.state_dict().items())
    assert moved == len(initial)  # every network moved, the target V toward V


def test_evaluation_draws_z_from_the_prior_then_the_posterior_over_the_trial_so_far():
    """The posterior-sampling actor holds one z per episode: the prior's in episode 1, then a draw from the product
    of the factors of every transition seen so far in the trial, which it keeps as running sums."""
    agent, tasks = tiny_pearl(pearl_eval_episodes=3)
    family = agent.family
    seen = []

    class Recording(_PosteriorSamplingActor):
        def act(self, inputs, state):
            actions, next_state, extras = super().act(inputs, state)
            seen.append(next_state)
            return actions, next_state, extras

    actor = Recording(agent, torch.Generator().manual_seed(0))
    envs = make_trial_envs(family, len(tasks))
    batch = collect_trials(envs, family, tasks, 3, actor, seed=0, keep_transitions=True)
    latents = torch.stack([state.latents for state in seen], dim=1)  # [N, L, Z]
    episode = batch.episode_index
    for task in range(len(tasks)):
        for k in range(3):
            in_episode = latents[task][episode[task] == k]
            assert torch.equal(in_episode, in_episode[:1].expand_as(in_episode))  # one z per episode
        first = latents[task][episode[task] == 0][0]
        second = latents[task][episode[task] == 1][0]
        assert not torch.equal(first, second)
    # the running sums at the end of episode 2 are the product over the trial's transitions before that point
    horizon = family.horizon
    transitions = {
        "observations": batch.inputs.observations[:, : 2 * horizon],
        "actions": _squashed(agent, batch.actions[:, : 2 * horizon]),
        "rewards": batch.rewards[:, : 2 * horizon],
        "next_observations": batch.next_observations[:, : 2 * horizon],
    }
    with torch.no_grad():
        expected = product_of_gaussians(*agent.networks.encoder.factors(agent.context_vectors(transitions)))
        state = seen[2 * horizon]  # the step that starts episode 3 has folded in the last transition of episode 2
        torch.testing.assert_close(1 / state.precision, expected.variance, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(state.weighted_means / state.precision, expected.mean, rtol=1e-4, atol=1e-5)


def _squashed(agent: PEARL, env_actions: torch.Tensor) -> torch.Tensor:
    span = agent.action_high - agent.action_low
    return (2 * (env_actions - agent.action_low) / span - 1).clamp(-1, 1)


def test_validation_keeps_the_parameters_that_adapt_best():
    """The selection score is the mean of the posterior episodes: the prior's episodes do not count."""
    agent, _ = tiny_pearl(pearl_exploration_episodes=1)
    assert agent.selection_score([-80.0, -20.0, -22.0]) == -21.0
    assert agent.selection_score([-40.0, -30.0, -30.0]) < agent.selection_score([-80.0, -20.0, -22.0])
    assert agent.selection_score([-5.0]) == -5.0  # no posterior episode: the prior's is all there is


def test_collected_transitions_hold_the_episodes_final_observation():
    """``keep_transitions``: s' is the next step's observation inside an episode and the final observation at its
    end (not the next episode's first); nothing terminates on Navigation2D's never-ending episodes."""
    family = metarl.make_family("MetaRL/Navigation2D-v0", horizon=4)
    tasks = family.sample_tasks(np.random.default_rng(0), 3)
    agent, _ = tiny_pearl()
    actor = _PosteriorSamplingActor(agent, torch.Generator().manual_seed(0))
    batch = collect_trials(make_trial_envs(family, 3), family, tasks, 2, actor, seed=0, keep_transitions=True)
    observations, next_observations = batch.inputs.observations, batch.next_observations
    assert torch.equal(next_observations[:, :3], observations[:, 1:4])
    assert torch.equal(next_observations[:, 4:7], observations[:, 5:8])
    assert torch.equal(observations[:, 4], torch.zeros_like(observations[:, 4]))  # the second episode starts over
    assert not torch.equal(next_observations[:, 3], observations[:, 4])
    assert float(batch.terminated.sum()) == 0.0


def test_metarl_evaluate_gives_per_episode_curves_with_success_where_defined(tmp_path):
    """``metarl evaluate`` runs PEARL's posterior sampling like any agent's curve: episodes 1..n, success rates on
    the sparse point robot and none on Navigation2D, the same numbers for the same seed."""
    sparse = {"family": "MetaRL/SparsePointRobot-v0", "family_kwargs": {}, "pearl_critic_reward": "dense_reward"}
    for name, family_values in (("navigation", {}), ("sparse", sparse)):
        values = tiny_values("pearl", iterations=2, **family_values)
        run_dir = train(config_from_dict(values), run_dir=tmp_path / name).run_dir
        evaluation = evaluate_run(run_dir, num_tasks=3, num_points=4, seeds=(0, 1))
        assert (evaluation.curve_kind, evaluation.points) == ("episode", (1, 2, 3, 4))
        assert evaluation.returns.shape == (2, 4, 3) and np.isfinite(evaluation.returns).all()
        assert (evaluation.success is None) == (name == "navigation")
        again = evaluate_run(run_dir, num_tasks=3, num_points=4, seeds=(0, 1))
        np.testing.assert_array_equal(evaluation.returns, again.returns)
    agent, tasks = tiny_pearl()
    agent.adaptation_curve(tasks, np.random.default_rng(0), 2)
    assert agent._buffers is None  # an evaluation allocates no replay buffers


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """Killed after its checkpoint at iteration 2, resumed from ``last.pt`` and ``buffers-2.pt``: the same state,
    metrics and test returns as a run never stopped; only the buffers of the last checkpoint are kept."""
    reference, resumed = interrupted_and_resumed(PEARL, tiny_values("pearl"), tmp_path, monkeypatch)
    assert_resumed_equals_reference(reference, resumed)
    for run in (reference, resumed):
        assert sorted(path.name for path in run.run_dir.glob("buffers-*.pt")) == [buffers_checkpoint(4)]
    saved = load_checkpoint(resumed.run_dir / buffers_checkpoint(4))["buffers"]
    expected = load_checkpoint(reference.run_dir / buffers_checkpoint(4))["buffers"]
    for name in ("replay", "encoder_replay"):
        for field, tensor in expected[name]["data"].items():
            assert torch.equal(saved[name]["data"][field], tensor), (name, field)
        assert torch.equal(saved[name]["sizes"], expected[name]["sizes"])


def test_resume_without_the_buffers_file_is_refused_before_a_write(tmp_path):
    values = tiny_values("pearl", iterations=2)
    result = train(config_from_dict(values), run_dir=tmp_path / "run")
    (result.run_dir / buffers_checkpoint(2)).unlink()
    before = {path.name: path.stat().st_mtime_ns for path in result.run_dir.iterdir()}
    with pytest.raises(ValueError, match=r"buffers-2\.pt is missing: last\.pt is of iteration 2"):
        train(None, resume=result.run_dir, iterations=4)
    assert {path.name: path.stat().st_mtime_ns for path in result.run_dir.iterdir()} == before
    assert load_checkpoint(result.run_dir / LAST_CHECKPOINT)["iteration"] == 2


def test_buffers_written_by_a_run_killed_before_its_last_pt_are_not_used(tmp_path):
    """A kill between ``buffers-4.pt`` and ``last.pt`` of iteration 4 leaves ``last.pt`` of iteration 2 and both
    buffers files: the resume reads ``buffers-2.pt``, and ends as a run never stopped, with only ``buffers-4.pt``."""
    values = tiny_values("pearl")
    reference = train(config_from_dict(values), run_dir=tmp_path / "reference")
    killed = train(config_from_dict({**values, "iterations": 2}), run_dir=tmp_path / "killed")
    stray = load_checkpoint(reference.run_dir / buffers_checkpoint(4))
    stray["identity"] = load_checkpoint(killed.run_dir / buffers_checkpoint(2))["identity"]
    torch.save(stray, killed.run_dir / buffers_checkpoint(4))
    resumed = train(None, resume=killed.run_dir, iterations=4)
    assert_same_state(
        load_checkpoint(resumed.run_dir / LAST_CHECKPOINT)["agent"],
        load_checkpoint(reference.run_dir / LAST_CHECKPOINT)["agent"],
    )
    assert [path.name for path in resumed.run_dir.glob("buffers-*.pt")] == [buffers_checkpoint(4)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pearl_prior_steps=0", "pearl_posterior_steps=0"], "pearl_prior_steps + pearl_posterior_steps must be >= 1"),
        (["pearl_discount=1.5"], "pearl_discount must be in [0, 1], got 1.5"),
        (["pearl_hidden_sizes=[]"], "pearl_hidden_sizes must be a non-empty list of positive ints, got []"),
        (["pearl_task_batch_size=0"], "pearl_task_batch_size must be >= 1, got 0"),
        (["pearl_reward_scale=0"], "pearl_reward_scale must be a finite number > 0, got 0"),
    ],
)
def test_bad_values_are_refused_before_a_run_folder(overrides, message, tmp_path, capsys):
    assert_refused_before_a_run_folder("pearl", overrides, message, r"must", tmp_path, capsys)


@pytest.mark.parametrize(
    ("family_values", "message"),
    [
        ({"family": "MetaRL/Bandit-v0", "family_kwargs": {"num_arms": 3}}, "PEARL needs a 1-d Box action space"),
        ({"pearl_critic_reward": "dense"}, "pearl_critic_reward='dense' is not a step info value of Navigation2D"),
    ],
)
def test_unsupported_families_are_refused_before_a_run_folder(family_values, message, tmp_path):
    values = tiny_values("pearl", run_root=str(tmp_path), **family_values)
    with pytest.raises(ValueError, match=re.escape(message)):
        train(config_from_dict(values))
    assert not any(tmp_path.iterdir())


def test_memory_budget_counts_the_replay_buffers(tmp_path):
    values = tiny_values("pearl", pearl_buffer_capacity=10**10, run_root=str(tmp_path))
    with pytest.raises(ValueError, match=r"the replay buffers of 24 training tasks .* lower pearl_buffer_capacity"):
        train(config_from_dict(values))
    assert not any(tmp_path.iterdir())


LEARNING_VALUES = {
    "family": "MetaRL/Navigation2D-v0",
    "family_kwargs": {"horizon": 20, "goal_low": 0.2, "goal_high": 0.5},
    "num_tasks": 100,
    "iterations": 10,
    "meta_batch_size": 5,
    "eval_interval": 10,
    "eval_tasks": 5,
    "test_tasks": 10,
    "checkpoint_interval": 10,
    "pearl_hidden_sizes": [64, 64],
    "pearl_encoder_hidden_sizes": [32, 32],
    "pearl_batch_size": 64,
    "pearl_context_batch_size": 32,
    "pearl_task_batch_size": 8,
    "pearl_gradient_steps": 100,
    "pearl_learning_rate": 1e-3,
    "pearl_initial_steps": 40,
    "pearl_prior_steps": 20,
    "pearl_extra_posterior_steps": 40,
    "pearl_buffer_capacity": 2000,
    "pearl_eval_episodes": 3,
}
"""A short meta-training (about 16 s): 10 iterations of 100 SAC steps on Navigation2D with goals in [0.2, 0.5]²
(measured: untrained -7.5 / -7.3 / -7.4 per episode on 10 held-out goals, trained -4.2 / -4.1 / -4.1)."""
LEARNING_MARGIN = 1.5
"""Half the improvement measured."""


@pytest.mark.slow
def test_pearl_learns_on_held_out_tasks(tmp_path):
    """A short meta-training beats the untrained agent on held-out goals in every episode of the evaluation."""
    values = {**tiny_values("pearl"), **LEARNING_VALUES}
    trained, untrained = trained_and_untrained_test_returns(PEARL, values, tmp_path / "run")
    for episode, (after, before) in enumerate(zip(trained, untrained, strict=True), start=1):
        assert after > before + LEARNING_MARGIN, (episode, trained, untrained)
