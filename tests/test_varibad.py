"""VariBAD: the ELBO's terms by hand, the posterior's KL against torch.distributions, the batched encoder against a
per-trial loop and against the posteriors the agent acted on, the policy's gradient kept out of the encoder, the
VAE's trial buffer across a kill and a resume, refused inputs, and learning on held-out tasks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import (
    assert_refused_before_a_run_folder,
    assert_resumed_equals_reference,
    interrupted_and_resumed,
    tiny_agent_and_tasks,
    tiny_values,
    trained_and_untrained_test_returns,
)
from metarl.agents.varibad import (
    Posterior,
    VAETrials,
    VariBAD,
    action_features,
    negative_elbo,
    posterior_kl,
    sample_elbo_indices,
)
from torch.distributions import Normal, kl_divergence

from metarl.checkpoint import buffers_checkpoint, load_checkpoint
from metarl.evaluate import evaluate_run
from metarl.presets import config_from_dict
from metarl.trainer import train


def tiny_varibad(**overrides):
    return tiny_agent_and_tasks(VariBAD, tiny_values("varibad", **overrides))


def random_posteriors(num_trials: int, steps: int, latent: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(num_trials, steps + 1, latent, generator=generator, dtype=torch.float64)
    logvar = torch.randn(num_trials, steps + 1, latent, generator=generator, dtype=torch.float64) * 0.5
    return mean, logvar


def test_posterior_kl_equals_torch_distributions():
    """KL(q_t ‖ q_{t-1}) of each step, the first against N(0, I), equals torch.distributions' Gaussian KL."""
    mean, logvar = random_posteriors(3, 4, 5)
    kl = posterior_kl(Posterior(mean, logvar))
    previous_mean = torch.cat([torch.zeros_like(mean[:, :1]), mean[:, :-1]], dim=1)
    previous_std = torch.cat([torch.ones_like(logvar[:, :1]), (0.5 * logvar[:, :-1]).exp()], dim=1)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(previous_mean, previous_std)).sum(-1)
    torch.testing.assert_close(kl, expected, rtol=1e-12, atol=1e-12)


class _LinearRewardDecoder(torch.nn.Module):
    """r̂ = m · w + s'_0 (hand-checkable)."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, latents, observations, actions, next_observations):
        return (latents * self.weights).sum(-1) + next_observations[..., 0]


def test_negative_elbo_equals_its_hand_computed_terms():
    """On two trials (one padded after 2 of its 3 steps), every ELBO term t decodes every real step of its trial with
    m_t = mean_t + std_t · ε_t: the squared errors are summed over steps and terms, the KLs over terms, and the
    total is averaged over trials; the padded step and the term after it count nothing."""
    latent = 2
    mean, logvar = random_posteriors(2, 3, latent, seed=1)
    posteriors = Posterior(mean, logvar)
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(2, 4, latent, generator=generator, dtype=torch.float64)
    trials = VAETrials(
        observations=torch.randn(2, 3, 1, generator=generator, dtype=torch.float64),
        actions=torch.randn(2, 3, 1, generator=generator, dtype=torch.float64),
        rewards=torch.tensor([[1.0, -0.5, 2.0], [0.25, 3.0, 0.0]], dtype=torch.float64),
        next_observations=torch.randn(2, 3, 1, generator=generator, dtype=torch.float64),
        masks=torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64),
    )
    weights = torch.tensor([0.7, -1.3], dtype=torch.float64)
    decoder = _LinearRewardDecoder(weights)
    kl_weight = 0.3
    terms = negative_elbo(posteriors, trials, decoder, None, kl_weight, 1.0, noise=noise)

    expected_reward, expected_kl = [], []
    for b in range(2):
        length = int(trials.masks[b].sum())
        reward_error, kl = 0.0, 0.0
        for t in range(length + 1):
            m = mean[b, t] + (0.5 * logvar[b, t]).exp() * noise[b, t]
            for j in range(length):
                predicted = float((m * weights).sum()) + float(trials.next_observations[b, j, 0])
                reward_error += (predicted - float(trials.rewards[b, j])) ** 2
            previous_mean = mean[b, t - 1] if t else torch.zeros(latent, dtype=torch.float64)
            previous_var = logvar[b, t - 1].exp() if t else torch.ones(latent, dtype=torch.float64)
            var = logvar[b, t].exp()
            kl += float(
                0.5
                * (
                    previous_var.log()
                    - var.log()
                    - 1
                    + var / previous_var
                    + (mean[b, t] - previous_mean) ** 2 / previous_var
                ).sum()
            )
        expected_reward.append(reward_error)
        expected_kl.append(kl)
    assert float(terms.reward_error) == pytest.approx(np.mean(expected_reward), rel=1e-10)
    assert float(terms.kl) == pytest.approx(np.mean(expected_kl), rel=1e-10)
    assert float(terms.loss) == pytest.approx(np.mean(expected_reward) + kl_weight * np.mean(expected_kl), rel=1e-10)
    assert float(terms.state_error) == 0.0


def test_subsampled_terms_stay_inside_each_trial():
    """Drawn ELBO terms lie in 0..T and decoded steps in 0..T-1 of each trial (T its real steps); 0 keeps all."""
    masks = torch.zeros(3, 10)
    for row, length in enumerate((10, 4, 1)):
        masks[row, :length] = 1
    elbo_index, decode_index = sample_elbo_indices(masks, 200, 30, torch.Generator().manual_seed(0))
    assert elbo_index.shape == (3, 200) and decode_index.shape == (3, 200, 30)
    for row, length in enumerate((10, 4, 1)):
        assert set(elbo_index[row].tolist()) == set(range(length + 1))
        assert set(decode_index[row].flatten().tolist()) == set(range(length))
    assert sample_elbo_indices(masks, 0, 0, torch.Generator()) == (None, None)
    elbo_index, decode_index = sample_elbo_indices(masks, 0, 5, torch.Generator().manual_seed(0))
    assert elbo_index is None and decode_index.shape == (3, 11, 5)


def test_batched_encoder_equals_a_loop_over_trials_and_the_posteriors_acted_on():
    """The encoder's one pass over a batch of trials gives, for each trial, the posteriors of that trial run alone
    step by step; and those are the beliefs the agent acted on while the trials were played (s' the episode's final
    observation where an episode ended, not the next one's first)."""
    agent, tasks = tiny_varibad(family="MetaRL/Navigation2D-v0", family_kwargs={"horizon": 5})
    batch = agent.collect(tasks, np.random.default_rng(0))
    assert bool(batch.episode_index.max() >= 1)  # the trials cross an episode boundary
    actions = action_features(batch.actions, agent.family.action_space)
    with torch.no_grad():
        posteriors = agent.encoder(actions, batch.rewards, batch.next_observations)
        for trial in range(len(tasks)):
            hidden = agent.encoder.initial_hidden(1)
            alone = [agent.encoder.posterior(hidden[0])]
            for step in range(batch.masks.shape[1]):
                hidden = agent.encoder.step(
                    actions[trial, step][None],
                    batch.rewards[trial, step][None],
                    batch.next_observations[trial, step][None],
                    hidden,
                )
                alone.append(agent.encoder.posterior(hidden[0]))
            torch.testing.assert_close(posteriors.mean[trial], torch.cat([p.mean for p in alone]))
            torch.testing.assert_close(posteriors.logvar[trial], torch.cat([p.logvar for p in alone]))
    acted_on = batch.extras["belief"]  # the belief at each step: after the transitions before it
    torch.testing.assert_close(acted_on, posteriors.belief()[:, :-1])


def test_policy_gradient_does_not_reach_the_encoder():
    """PPO's update moves the policy and leaves the encoder and decoders as they were; the VAE's update moves them."""
    agent, tasks = tiny_varibad()
    batch = agent.collect(tasks, np.random.default_rng(0))
    agent._store_trials(batch)
    before = {name: p.detach().clone() for name, p in agent.encoder.named_parameters()}
    policy_before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.update_policy(batch)
    assert all(torch.equal(p, before[name]) for name, p in agent.encoder.named_parameters())
    assert all(p.grad is None for p in agent.encoder.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(agent.policy.parameters(), policy_before, strict=True))
    agent.update_vae(torch.Generator().manual_seed(0))
    assert all(not torch.equal(p, before[name]) for name, p in agent.encoder.named_parameters())


def test_metarl_evaluate_gives_per_episode_curves_with_success_where_defined(tmp_path):
    """``metarl evaluate`` plays VariBAD's trials like any agent's curve: episodes 1..n, success rates on the sparse
    point robot and none on Navigation2D, the same numbers for the same seed; an evaluation allocates no buffer."""
    for name, family in (("navigation", "MetaRL/Navigation2D-v0"), ("sparse", "MetaRL/SparsePointRobot-v0")):
        values = tiny_values("varibad", iterations=2, family=family)
        run_dir = train(config_from_dict(values), run_dir=tmp_path / name).run_dir
        evaluation = evaluate_run(run_dir, num_tasks=3, num_points=4, seeds=(0, 1))
        assert (evaluation.curve_kind, evaluation.points) == ("episode", (1, 2, 3, 4))
        assert evaluation.returns.shape == (2, 4, 3) and np.isfinite(evaluation.returns).all()
        assert (evaluation.success is None) == (name == "navigation")
        again = evaluate_run(run_dir, num_tasks=3, num_points=4, seeds=(0, 1))
        np.testing.assert_array_equal(evaluation.returns, again.returns)
    agent, tasks = tiny_varibad()
    agent.adaptation_curve(tasks, np.random.default_rng(0), 2)
    assert agent._trials is None


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """Killed after its checkpoint at iteration 2, resumed from ``last.pt`` and ``buffers-2.pt``: the same state,
    metrics and test returns as a run never stopped, and the same VAE buffer of trials."""
    values = tiny_values("varibad")
    reference, resumed = interrupted_and_resumed(VariBAD, values, tmp_path, monkeypatch)
    assert_resumed_equals_reference(reference, resumed)
    saved = load_checkpoint(resumed.run_dir / buffers_checkpoint(4))["buffers"]["trials"]
    expected = load_checkpoint(reference.run_dir / buffers_checkpoint(4))["buffers"]["trials"]
    for field, tensor in expected["data"].items():
        assert torch.equal(saved["data"][field], tensor), field
    assert int(expected["sizes"][0]) == 4 * values.get("meta_batch_size", 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["varibad_latent_size=0"], "varibad_latent_size must be >= 1, got 0"),
        (["varibad_kl_weight=-1"], "varibad_kl_weight must be a finite number >= 0, got -1"),
        (["varibad_vae_learning_rate=0"], "varibad_vae_learning_rate must be a finite number > 0, got 0"),
        (["varibad_reward_decoder_sizes=[]"], "varibad_reward_decoder_sizes must be a non-empty list"),
        (["varibad_elbo_samples=-2"], "varibad_elbo_samples must be >= 0, got -2"),
        (["gae_lambda=1.5"], "gae_lambda must be in [0, 1], got 1.5"),
    ],
)
def test_bad_values_are_refused_before_a_run_folder(overrides, message, tmp_path, capsys):
    assert_refused_before_a_run_folder("varibad", overrides, message, r"must", tmp_path, capsys)


def test_unsupported_action_spaces_are_refused_before_a_run_folder(tmp_path):
    from metarl.registry import make_family

    family = make_family("MetaRL/Navigation2D-v0")
    family.action_space = __import__("gymnasium").spaces.Box(-1, 1, (2, 2))
    values = tiny_values("varibad")
    with pytest.raises(ValueError, match=re.escape("VariBAD supports Discrete and 1-d Box action spaces")):
        VariBAD(family, config_from_dict(values), torch.device("cpu"))


def test_memory_budget_counts_the_trial_buffer(tmp_path):
    values = tiny_values("varibad", varibad_vae_buffer_trials=10**10, run_root=str(tmp_path))
    with pytest.raises(ValueError, match=r"the VAE's buffer of varibad_vae_buffer_trials 10000000000 trials"):
        train(config_from_dict(values))
    assert not any(tmp_path.iterdir())


def test_discrete_actions_are_read_one_hot():
    agent, tasks = tiny_varibad(family="MetaRL/Bandit-v0", family_kwargs={"num_arms": 3})
    features = action_features(torch.tensor([0, 2, 1]), agent.family.action_space)
    torch.testing.assert_close(features, torch.eye(3)[[0, 2, 1]])
    curve = agent.adaptation_curve(tasks, np.random.default_rng(0), 2)
    assert curve.returns.shape == (2, len(tasks)) and np.isfinite(curve.returns).all()


LEARNING_VALUES = {
    "family": "MetaRL/Navigation2D-v0",
    "family_kwargs": {"horizon": 20},
    "num_tasks": 200,
    "iterations": 150,
    "meta_batch_size": 16,
    "trial_episodes": 2,
    "eval_interval": 150,
    "eval_tasks": 10,
    "test_tasks": 20,
    "checkpoint_interval": 150,
    "varibad_vae_updates": 3,
    "varibad_elbo_samples": 0,
    "varibad_decode_samples": 0,
    "varibad_vae_buffer_trials": 1000,
}
"""A short meta-training on Navigation2D with episodes of 20 steps (about 14 s): 150 iterations of 16 trials of 2
episodes, the tiny networks (measured: untrained -11.17 / -10.83 per episode on 20 held-out goals, trained -8.62 /
-7.86)."""
LEARNING_MARGIN = 1.25
"""Half the improvement measured."""


@pytest.mark.slow
def test_varibad_learns_on_held_out_tasks(tmp_path):
    """A short meta-training beats the untrained agent on held-out goals in every episode of the trial."""
    values = {**tiny_values("varibad"), **LEARNING_VALUES}
    trained, untrained = trained_and_untrained_test_returns(VariBAD, values, tmp_path / "run")
    for episode, (after, before) in enumerate(zip(trained, untrained, strict=True), start=1):
        assert after > before + LEARNING_MARGIN, (episode, trained, untrained)
