"""The batched, written-out MAML-TRPO against the plain autograd one (agents/maml_autograd.py) on episodes that end
early: advantages, inner loss and adaptation, meta-gradient, curvature product and the whole meta-update, under
both weightings."""

from __future__ import annotations

import copy

import metarl.envs  # noqa: F401  (registers the families)
import numpy as np
import pytest
import torch
from metarl.agents import maml_autograd
from metarl.agents.inner_loop import MetaBatch
from metarl.agents.maml_trpo import MAMLTRPO

from metarl.optim import flatten_tensors
from metarl.presets import config_from_dict
from metarl.registry import make_family


def sampled_batch(weighting: str, num_inner_steps: int = 1) -> tuple[MAMLTRPO, MetaBatch]:
    """A float64 agent and a meta-batch of Navigation2D episodes of which many end early (a goal tolerance of 0.25
    in a horizon of 8 steps), collected as training collects them."""
    config = config_from_dict(
        {
            "meta_batch_size": 3,
            "episodes_per_task": 5,
            "num_inner_steps": num_inner_steps,
            "inner_step_sizes": [0.3, 0.2],
            "hidden_sizes": [8],
            "weighting": weighting,
            # a damping that conditions the conjugate gradient: with 1e-5 its 10 iterations amplify the two sides'
            # 1e-10 rounding differences to ~4e-4 in the direction (both being right; 1e-2 still leaves ~1e-4); the
            # products themselves are compared undamped, to 1e-7, in the test above
            "cg_damping": 0.1,
            "family_kwargs": {"normalized_actions": True},
        }
    )
    family = make_family("MetaRL/Navigation2D-v0", horizon=8, goal_tolerance=0.25, normalized_actions=True)
    torch.manual_seed(0)
    agent = MAMLTRPO(family, config, torch.device("cpu"))
    tasks = family.sample_tasks(np.random.default_rng(0), 3)
    batch = agent.sample(tasks, np.random.default_rng(1), num_inner_steps, evaluation=False)
    agent.policy.double()
    episodes = [episode.with_float_dtype(torch.float64) for episode in batch.episodes]
    # our processing of the float64 episodes, so that both sides start from the same numbers
    data = [agent.process(episode) for episode in episodes]
    batch = batch._replace(inner=data[:-1], post=data[-1], episodes=episodes, adapted=None)
    lengths = batch.episodes[-1].masks.sum(dim=-1)
    assert (lengths < 8).any() and (lengths == 8).any(), "the batch must hold episodes of unequal length"
    return agent, batch


@pytest.mark.parametrize("weighting", ["episode", "step"])
def test_advantages_equal_the_plain_per_episode_ones(weighting):
    agent, batch = sampled_batch(weighting)
    for episodes, data in zip(batch.episodes, [*batch.inner, batch.post], strict=True):
        for t in range(episodes.observations.shape[0]):
            plain = maml_autograd.task_advantages(episodes, t, agent.config.gamma, agent.config.gae_lambda, weighting)
            torch.testing.assert_close(data.advantages[t], plain.advantages, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("weighting", ["episode", "step"])
@pytest.mark.parametrize("num_inner_steps", [1, 2])
def test_adaptation_meta_gradient_and_curvature_equal_plain_autograd(weighting, num_inner_steps):
    agent, batch = sampled_batch(weighting, num_inner_steps)
    config = agent.config
    theta = dict(agent.policy.named_parameters())
    per_task = [
        [
            maml_autograd.task_advantages(episodes, t, config.gamma, config.gae_lambda, weighting)
            for episodes in batch.episodes
        ]
        for t in range(3)
    ]
    # adaptation, task by task
    ours = agent.adaptation_points(theta, batch.inner, 3)[-1]
    for t, task_episodes in enumerate(per_task):
        plain = maml_autograd.adapt(agent, theta, task_episodes[:-1], create_graph=False)
        for name, value in plain.items():
            torch.testing.assert_close(ours[name][t], value.detach(), rtol=1e-9, atol=1e-11)

    # the meta-gradient and the curvature product Jᵀ F J v
    meta = agent.meta_gradient(theta, batch, second_order=True)
    product = agent._kl_hessian_vector_product(theta, meta.points[-1], meta.inner_hessians, batch.post)
    problem = maml_autograd.trpo_problem(agent, batch.episodes)
    torch.testing.assert_close(meta.gradient, problem.gradient, rtol=1e-8, atol=1e-11)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        vector = torch.randn(meta.gradient.shape, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(product(vector), problem.hessian_vector_product(vector), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("weighting", ["episode", "step"])
def test_whole_trpo_meta_update_equals_plain_autograd(weighting):
    agent, batch = sampled_batch(weighting)
    plain_agent = copy.deepcopy(agent)
    start = flatten_tensors([value.detach().clone() for value in agent.policy.parameters()])
    metrics = agent.meta_update(batch)
    plain_metrics = maml_autograd.meta_update(plain_agent, batch.episodes)
    assert metrics["losses/line_search_accepted"] == plain_metrics["losses/line_search_accepted"] == 1.0
    assert metrics["losses/step_fraction"] == plain_metrics["losses/step_fraction"]
    for key in ("losses/surrogate_before", "losses/surrogate_after", "losses/kl", "losses/pre_adaptation_kl"):
        assert metrics[key] == pytest.approx(plain_metrics[key], rel=1e-7, abs=1e-12)
    ours = flatten_tensors([value.detach() for value in agent.policy.parameters()])
    plain = flatten_tensors([value.detach() for value in plain_agent.policy.parameters()])
    assert (ours - start).abs().max() > 1e-3  # a real step, on which the two agree
    # ours takes A x from CG's residual, the plain side computes it: they differ at CG's rounding
    torch.testing.assert_close(ours, plain, rtol=1e-6, atol=1e-8)


def test_the_weightings_give_other_updates_when_episodes_end_early():
    updates = {}
    for weighting in ("episode", "step"):
        agent, batch = sampled_batch(weighting)
        before = flatten_tensors([value.detach().clone() for value in agent.policy.parameters()])
        agent.meta_update(batch)
        updates[weighting] = flatten_tensors([value.detach() for value in agent.policy.parameters()]) - before
    cosine = torch.nn.functional.cosine_similarity(updates["episode"], updates["step"], dim=0)
    assert cosine < 0.999
