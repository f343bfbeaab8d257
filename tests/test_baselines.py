"""The baselines the evaluator compares meta-learners with: multi-task pretraining (fine-tuned like MAML) and
the random policy."""

from __future__ import annotations

import metarl.envs  # noqa: F401 - registers the families
import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_CONFIG, tiny_values
from metarl.agents.inner_loop import detach_params
from metarl.agents.pretrain import MultiTaskPretrain
from metarl.agents.random_policy import RandomAgent

from metarl.evaluate import evaluate_run
from metarl.optim import flatten_tensors
from metarl.presets import config_from_dict
from metarl.registry import make_family
from metarl.trainer import train


def pretrain_agent():
    config = config_from_dict({**TINY_TRAIN_CONFIG, "algo": "pretrain-trpo"})
    family = make_family(config.family, **config.family_kwargs)
    torch.manual_seed(0)
    return MultiTaskPretrain(family, config, torch.device("cpu")), family


def test_pretraining_objective_has_no_inner_loop():
    agent, family = pretrain_agent()
    tasks = family.sample_tasks(np.random.default_rng(0), 3)
    batch = agent.sample(tasks, np.random.default_rng(1), num_steps=0, evaluation=False)
    assert batch.inner == [] and len(batch.returns) == 1
    theta = dict(agent.policy.named_parameters())
    adapted = agent.adapt(theta, batch.inner, create_graph=False, num_tasks=3)
    for name, value in adapted.items():
        assert torch.equal(value, theta[name].expand(3, *theta[name].shape))
    # the surrogate's gradient at the old policy is the plain policy gradient of the pooled tasks
    old = agent.policy.distribution(batch.post.observations, detach_params(adapted))
    loss, _ = agent.surrogate(adapted, batch.post, old.log_prob(batch.post.actions).detach(), old)
    gradient = torch.autograd.grad(loss, list(theta.values()))
    log_probs = agent.policy.log_prob(batch.post.observations, batch.post.actions)
    per_task = (log_probs * batch.post.advantages * batch.post.weights).flatten(1).sum(1)
    expected = torch.autograd.grad(-per_task.mean(), list(theta.values()))
    torch.testing.assert_close(flatten_tensors(gradient), flatten_tensors(expected))


def test_pretraining_takes_trust_region_steps():
    agent, family = pretrain_agent()
    before = flatten_tensors([value.detach().clone() for value in agent.policy.parameters()])
    metrics = agent.train_step(family.sample_tasks(np.random.default_rng(0), 3), np.random.default_rng(1))
    after = flatten_tensors([value.detach() for value in agent.policy.parameters()])
    assert metrics["losses/line_search_accepted"] == 1.0
    assert 0.0 < metrics["losses/kl"] <= agent.config.max_kl * 1.5
    assert not torch.equal(before, after)


def test_pretrain_and_random_runs_are_evaluated_like_any_agent(tmp_path):
    for algo in ("pretrain-trpo", "random"):
        run = train(config_from_dict(tiny_values(algo)), run_dir=tmp_path / algo).run_dir
        evaluation = evaluate_run(run, num_tasks=3, num_points=3)
        assert (evaluation.algo, evaluation.curve_kind, evaluation.points) == (algo, "step", (0, 1, 2))
        assert np.isfinite(evaluation.returns).all()


def test_random_agent_does_not_adapt():
    config = config_from_dict(tiny_values("random", episodes_per_task=20))
    family = make_family(config.family, **config.family_kwargs)
    agent = RandomAgent(family, config, torch.device("cpu"))
    tasks = family.sample_tasks(np.random.default_rng(0), 30)
    curve = agent.adaptation_curve(tasks, np.random.default_rng(0), 3).returns
    assert curve.shape == (3, 30)
    assert not np.array_equal(curve[0], curve[1])  # fresh episodes at every point
    # the same policy at every point: the mean moves by noise only (a few standard errors)
    standard_error = curve.std() / np.sqrt(curve[0].size)
    assert np.abs(curve.mean(axis=1) - curve.mean()).max() < 4 * standard_error
    assert agent.state_dict() == {}


@pytest.mark.parametrize("algo", ["pretrain-trpo", "random"])
def test_baselines_are_algorithms_of_the_command_line(algo):
    assert config_from_dict({"algo": algo}).algo == algo


# -- the oracle ------------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")  # checking the wrapper is the point
def test_task_observation_wrapper_appends_the_task():
    from gymnasium.utils.env_checker import check_env
    from metarl.envs import Navigation2D

    from metarl.wrappers import TaskObservationWrapper, task_vectors

    family = Navigation2D()
    tasks = family.sample_tasks(np.random.default_rng(0), 3)
    env = TaskObservationWrapper(family.make_env(), tasks)
    check_env(env, skip_render_check=True)
    seen = set()
    for seed in range(12):
        observation, _ = env.reset(seed=seed)
        assert env.task in tasks and env.unwrapped.get_task() == env.task
        np.testing.assert_array_equal(observation[2:], task_vectors(family, [env.task])[0])
        np.testing.assert_array_equal(observation[:2], env.unwrapped._observe())
        seen.add(env.task)
        observation, *_ = env.step(np.zeros(2, dtype=np.float32))
        np.testing.assert_array_equal(observation[2:], np.asarray(env.task.goal, dtype=np.float32))
    assert len(seen) > 1
    env.reset(seed=0)
    first = env.task
    env.reset(seed=0)
    assert env.task == first  # the seed decides the task
    assert env.observation_space.shape == (4,)


def test_oracle_runs_are_deterministic(tmp_path):
    config = tiny_values("oracle-ppo", iterations=2)
    first = train(config_from_dict(config), run_dir=tmp_path / "a")
    second = train(config_from_dict(config), run_dir=tmp_path / "b")
    assert first.test_returns == second.test_returns


@pytest.mark.slow
def test_oracle_knows_the_best_arm(tmp_path):
    """Told the arms' means, PPO learns to pull the best arm: far above random on held-out bandits."""
    base = {
        **TINY_TRAIN_CONFIG,
        "family": "MetaRL/Bandit-v0",
        "family_kwargs": {"num_arms": 2},
        "meta_batch_size": 8,
        "episodes_per_task": 32,
        "iterations": 30,
        "hidden_sizes": [32],
        "ppo_learning_rate": 3e-3,
        "ppo_entropy_coeff": 0.0,
        "eval_interval": 30,
        "test_tasks": 200,
    }
    oracle = train(config_from_dict({**base, "algo": "oracle-ppo"}), run_dir=tmp_path / "oracle")
    policy_free = {key: value for key, value in base.items() if not key.startswith(("hidden", "ppo"))}
    random = train(config_from_dict({**policy_free, "algo": "random", "iterations": 1}), run_dir=tmp_path / "random")
    oracle_return = np.mean(oracle.test_returns)
    random_return = np.mean(random.test_returns)
    assert random_return == pytest.approx(0.5, abs=0.05)
    assert oracle_return > random_return + 0.1  # E[max of two U(0,1) means] = 2/3


# -- PPO from scratch ------------------------------------------------------------------------------------------------
def test_ppo_from_scratch_stops_at_the_target_or_the_budget():
    from metarl.envs import Navigation2D

    from metarl.from_scratch import adaptation_env_steps, ppo_steps_to_reach, summarize

    family = Navigation2D(horizon=10)
    task = family.sample_tasks(np.random.default_rng(0), 1)[0]
    kwargs = {"max_steps": 800, "check_every": 200, "episodes": 4, "seed": 0, "hidden_sizes": (16,)}
    easy = ppo_steps_to_reach(family, task, -np.inf, **kwargs)
    assert easy.steps_to_target == 200 and len(easy.curve) == 1
    impossible = ppo_steps_to_reach(family, task, np.inf, **kwargs)
    assert impossible.steps_to_target is None and [steps for steps, _ in impossible.curve] == [200, 400, 600, 800]
    assert ppo_steps_to_reach(family, task, np.inf, **kwargs).curve == impossible.curve  # seeded
    summary = summarize([easy, impossible], adaptation_env_steps(episodes_per_task=4, horizon=10), max_steps=800)
    assert summary["adaptation_env_steps"] == 40
    # the task that never reached the target counts as the budget: a lower bound
    assert (summary["reached"], summary["median_steps_to_target"], summary["ratio"]) == (1, 500.0, 12.5)
    assert summary["ratio_is_lower_bound"]
    assert not summarize([easy], 40, max_steps=800)["ratio_is_lower_bound"]


def test_from_scratch_needs_a_gradient_based_run(tmp_path):
    from conftest import TINY_RL2_CONFIG

    from metarl.cli import main

    run = train(config_from_dict(TINY_RL2_CONFIG), run_dir=tmp_path / "rl2").run_dir
    with pytest.raises(SystemExit):
        main(["from-scratch", str(run)])
