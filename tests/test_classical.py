"""The classical baselines of the RL² paper: their maths against hand-computed and brute-force answers, their state
bookkeeping, determinism, their scores against the paper's Table 1 and Table 2, and their errors."""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np
import pytest
import torch
from metarl.agents.classical import (
    CLASSICAL_AGENTS,
    BanditState,
    GreedyBanditAgent,
    PSRLAgent,
    TabularMDPAgent,
    argmax_random_ties,
    classical_agent_names,
    finite_horizon_q_values,
    gittins_index_table,
    make_classical_agent,
)
from metarl.envs.bandit import Bandit
from metarl.envs.tabular_mdp import TabularMDP

import metarl
from metarl.trials import TrialBatch, collect_trials, make_trial_envs

BANDIT_NAMES = ["random", "greedy", "epsilon_greedy", "ucb1", "ucb1_prior", "thompson", "gittins"]
TABULAR_NAMES = ["random", "greedy", "psrl", "psrl_zero_prior"]


class RecordingAgent:
    """Wraps an agent and keeps the state it returns at every step."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.states: list[Any] = []

    def initial_state(self, num_trials: int) -> Any:
        return self.agent.initial_state(num_trials)

    def act(self, inputs: Any, state: Any) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
        actions, state, extras = self.agent.act(inputs, state)
        self.states.append(state)
        return actions, state, extras


def play(family: metarl.TaskFamily, agent: Any, tasks: list, num_episodes: int, seed: int = 0) -> TrialBatch:
    return collect_trials(make_trial_envs(family, len(tasks)), family, tasks, num_episodes, agent, seed=seed)


# -- Gittins index ---------------------------------------------------------------------------------------------------
def brute_force_gittins(successes: int, failures: int, pulls_left: int, discount: float = 1.0) -> float:
    """The calibration index of one state by bisection on λ over its own recursion tree."""

    def advantage(lam: float) -> float:
        @functools.cache
        def value(s: int, f: int, m: int) -> float:
            return 0.0 if m == 0 else max(lam * sum(discount**j for j in range(m)), pull(s, f, m))

        @functools.cache
        def pull(s: int, f: int, m: int) -> float:
            p = (s + 1) / (s + f + 2)
            return p * (1 + discount * value(s + 1, f, m - 1)) + (1 - p) * discount * value(s, f + 1, m - 1)

        return pull(successes, failures, pulls_left) - lam * sum(discount**j for j in range(pulls_left))

    low, high = 0.0, 1.0
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if advantage(middle) > 0 else (low, middle)
    return (low + high) / 2


def test_gittins_one_pull_left_is_the_posterior_mean() -> None:
    table = gittins_index_table(10)
    s, f = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    np.testing.assert_allclose(table[1, :10, :10], (s + 1) / (s + f + 2), atol=1e-12)


def test_gittins_two_pulls_left_hand_computed() -> None:
    # retire: 2λ; pull: 1/2 (1 + max(λ, 2/3)) + 1/2 max(λ, 1/3), which for 1/3 < λ < 2/3 is 5/6 + λ/2 -> λ = 5/9
    assert gittins_index_table(10)[2, 0, 0] == pytest.approx(5 / 9, abs=1e-12)


@pytest.mark.parametrize("discount", [1.0, 0.9])
@pytest.mark.parametrize(("s", "f", "m"), [(0, 0, 5), (0, 0, 12), (1, 0, 8), (0, 1, 8), (3, 2, 10), (2, 5, 7)])
def test_gittins_matches_brute_force_bisection(discount: float, s: int, f: int, m: int) -> None:
    table = gittins_index_table(15, discount)
    assert table[m, s, f] == pytest.approx(brute_force_gittins(s, f, m, discount), abs=1e-4)


def test_gittins_index_is_optimistic_and_monotone() -> None:
    n = 30
    table = gittins_index_table(n)
    # the untried arm is worth more than its mean 1/2 whenever a second pull can exploit what the first reveals
    assert (table[2:, 0, 0] > 0.5).all()
    # more pulls left, more option value; more successes raise the index, more failures lower it
    for m in range(1, n):
        side = n - m  # states valid with m + 1 pulls left
        assert (table[m + 1, :side, :side] >= table[m, :side, :side] - 1e-9).all()
        valid = table[m, : n - m + 1, : n - m + 1]
        assert (np.diff(valid, axis=0) > 0).all()
        assert (np.diff(valid, axis=1) < 0).all()


def test_gittins_table_is_cached_read_only_and_validated() -> None:
    assert gittins_index_table(12) is gittins_index_table(12)
    assert not gittins_index_table(12).flags.writeable
    with pytest.raises(ValueError, match="discount"):
        gittins_index_table(12, discount=0.0)
    with pytest.raises(ValueError, match="num_pulls"):
        gittins_index_table(0)


# -- bandit agents ---------------------------------------------------------------------------------------------------
def test_argmax_random_ties_picks_the_best_and_splits_ties_evenly() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.2, 0.5]]).repeat(2000, 1)
    choices = argmax_random_ties(scores, generator)
    assert (choices[0::2] == 1).all()
    tied = choices[1::2]
    assert set(tied.tolist()) == {0, 2}
    assert abs(float((tied == 0).float().mean()) - 0.5) < 0.05


def test_greedy_bandit_picks_the_arm_of_highest_posterior_mean() -> None:
    agent = GreedyBanditAgent(Bandit(num_arms=3), num_episodes=10)
    # posterior means 3/5, 2/3 (0 failures, 1 success), 1/4: arm 1 is best although arm 0 has more successes
    state = BanditState(
        successes=torch.tensor([[2.0, 1.0, 0.0]]),
        failures=torch.tensor([[1.0, 0.0, 2.0]]),
        pulls=torch.tensor([6]),
    )
    assert agent._choose(state).item() == 1


def test_bandit_state_counts_every_pull() -> None:
    family = Bandit(num_arms=5)
    tasks = family.sample_tasks(np.random.default_rng(0), 50)
    recorder = RecordingAgent(make_classical_agent("greedy", family, 8, seed=0))
    batch = play(family, recorder, tasks, 8)
    final = recorder.states[-1]  # state when choosing the 8th pull: 7 pulls observed
    assert (final.pulls == 7).all()
    assert torch.equal(final.successes.sum(dim=1), batch.rewards[:, :7].sum(dim=1))
    assert torch.equal((final.successes + final.failures).sum(dim=1), torch.full((50,), 7.0))


def test_classic_ucb1_pulls_every_arm_once_first() -> None:
    family = Bandit(num_arms=5)
    tasks = family.sample_tasks(np.random.default_rng(0), 100)
    batch = play(family, make_classical_agent("ucb1", family, 5, seed=0), tasks, 5)
    assert (batch.actions.sort(dim=1).values == torch.arange(5)).all()


# -- tabular MDP agents ----------------------------------------------------------------------------------------------
def test_finite_horizon_q_values_hand_computed_two_state_mdp() -> None:
    # s0: a0 stays (reward 1), a1 moves to s1 (reward 0); s1: a0 stays (reward 2), a1 moves to s0 or s1 w.p. 1/2 (0.5)
    transitions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.5, 0.5]]])
    rewards = torch.tensor([[1.0, 0.0], [2.0, 0.5]])
    expected = torch.tensor(
        [
            [[3.0, 4.0], [6.0, 3.5]],  # 3 steps to go
            [[2.0, 2.0], [4.0, 2.0]],  # 2 steps to go: V = [2, 4]
            [[1.0, 0.0], [2.0, 0.5]],  # last step: Q = R, V = [1, 2]
        ]
    )
    torch.testing.assert_close(finite_horizon_q_values(transitions, rewards, 3), expected)
    batched = finite_horizon_q_values(transitions.expand(4, 2, 2, 2, 2), rewards.expand(4, 2, 2, 2), 3)
    torch.testing.assert_close(batched, expected.expand(4, 2, 3, 2, 2))


def test_reward_posterior_is_the_conjugate_normal_update() -> None:
    agent = TabularMDPAgent(TabularMDP(num_states=2, num_actions=1, reward_std=1.0), num_episodes=1)
    state = agent.initial_state(1)
    state = state._replace(reward_counts=torch.tensor([[[3.0], [0.0]]]), reward_sums=torch.tensor([[[6.0], [0.0]]]))
    means, stds = agent.posterior_reward_params(state)
    # prior N(1, 1), three rewards summing to 6 with unit noise: precision 4, mean (1 + 6) / 4; unseen keeps the prior
    torch.testing.assert_close(means, torch.tensor([[[1.75], [1.0]]]))
    torch.testing.assert_close(stds, torch.tensor([[[0.5], [1.0]]]))
    noiseless = TabularMDPAgent(TabularMDP(num_states=2, num_actions=1, reward_std=0.0), num_episodes=1)
    means, stds = noiseless.posterior_reward_params(state)
    torch.testing.assert_close(means, torch.tensor([[[2.0], [1.0]]]))
    torch.testing.assert_close(stds, torch.tensor([[[0.0], [1.0]]]))
    # prior N(0, 4): precision 1/4 + 3 = 13/4, mean 6 / (13/4)
    zero_mean = TabularMDPAgent(TabularMDP(num_states=2, num_actions=1), 1, prior_reward_mean=0.0, prior_reward_var=4.0)
    means, stds = zero_mean.posterior_reward_params(state)
    torch.testing.assert_close(means, torch.tensor([[[24.0 / 13.0], [0.0]]]))
    torch.testing.assert_close(stds, torch.tensor([[[(4.0 / 13.0) ** 0.5], [2.0]]]))


def test_tabular_state_tracks_steps_rewards_and_transitions() -> None:
    family = TabularMDP()
    tasks = family.sample_tasks(np.random.default_rng(0), 20)
    recorder = RecordingAgent(make_classical_agent("psrl", family, 3, seed=0))
    batch = play(family, recorder, tasks, 3)
    steps = torch.stack([state.steps_in_episode for state in recorder.states], dim=1)
    assert torch.equal(steps, torch.arange(family.horizon).repeat(3).expand(20, -1))
    assert torch.equal(torch.stack([s.states for s in recorder.states], dim=1), batch.inputs.observations.argmax(-1))
    final = recorder.states[-1]  # 29 steps observed, 2 of them ended an episode (their next state is unseen)
    assert (final.reward_counts.sum(dim=(1, 2)) == 29).all()
    assert (final.transition_counts.sum(dim=(1, 2, 3)) == 27).all()
    torch.testing.assert_close(final.reward_sums.sum(dim=(1, 2)), batch.rewards[:, :29].sum(dim=1))
    # PSRL follows one sampled MDP per episode: the plan changes only at an episode's first step
    plans = torch.stack([state.q_values for state in recorder.states], dim=1)
    changed = (plans[:, 1:] != plans[:, :-1]).flatten(2).any(dim=2)
    assert not changed[:, steps[0, 1:] != 0].any()
    assert changed[:, steps[0, 1:] == 0].all()


def test_psrl_with_a_certain_posterior_acts_like_greedy() -> None:
    family = TabularMDP(num_states=3, num_actions=2, horizon=4)
    psrl, greedy = PSRLAgent(family, 1, seed=0), make_classical_agent("greedy", family, 1, seed=1)
    state = psrl.initial_state(64)
    # 10^6 visits of every (s, a) with its true next-state frequencies and mean rewards: the posterior is a point mass
    true_transitions = torch.softmax(torch.randn(64, 3, 2, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    true_rewards = torch.randn(64, 3, 2, generator=torch.Generator().manual_seed(1))
    state = state._replace(
        transition_counts=1e6 * true_transitions,
        reward_counts=torch.full((64, 3, 2), 1e6),
        reward_sums=1e6 * true_rewards,
    )
    torch.testing.assert_close(psrl._plan(state), greedy._plan(state), atol=0.02, rtol=0.0)
    expected = finite_horizon_q_values(true_transitions, true_rewards, 4)
    torch.testing.assert_close(greedy._plan(state), expected, atol=1e-4, rtol=0.0)


# -- determinism -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "name"),
    [(Bandit(), name) for name in BANDIT_NAMES] + [(TabularMDP(), name) for name in TABULAR_NAMES],
    ids=[f"bandit-{name}" for name in BANDIT_NAMES] + [f"tabular-{name}" for name in TABULAR_NAMES],
)
def test_same_seed_same_actions(family: metarl.TaskFamily, name: str) -> None:
    tasks = family.sample_tasks(np.random.default_rng(0), 64)
    first = play(family, make_classical_agent(name, family, 4, seed=3), tasks, 4)
    again = play(family, make_classical_agent(name, family, 4, seed=3), tasks, 4)
    assert torch.equal(first.actions, again.actions)
    other = play(family, make_classical_agent(name, family, 4, seed=4), tasks, 4)
    assert not torch.equal(first.actions, other.actions)  # every agent breaks ties (or explores) at random


# -- scores against the paper ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "paper"), [("random", 5.0), ("gittins", 6.6), ("ucb1_prior", 6.7), ("thompson", 5.7), ("greedy", 6.6)]
)
def test_bandit_scores_match_table_1_at_k5_n10(name: str, paper: float) -> None:
    # 2000 held-out tasks: the standard error of a mean is about 0.05, the band ±0.3 (the paper rounds to 0.1)
    family = Bandit(num_arms=5)
    tasks = list(family.split(seed=0, num_tasks=20000).test)
    returns = play(family, make_classical_agent(name, family, 10, seed=0), tasks, 10).trial_returns
    assert abs(float(returns.mean()) - paper) < 0.3


def test_tabular_scores_near_table_2_at_n10() -> None:
    # 1000 held-out MDPs: standard error about 0.7. With the family's prior N(1, 1) PSRL measures 133.5 ± 0.8 on 4000
    # MDPs, below the paper's 138.1; with the prior N(0, 1) it measures 138.2 ± 0.9 (see TabularMDPAgent).
    family = metarl.make_family("MetaRL/TabularMDP-v0")
    tasks = list(family.split(seed=0, num_tasks=10000).test)

    def mean_return(name: str, **settings: Any) -> float:
        agent = make_classical_agent(name, family, 10, seed=0, **settings)
        return float(play(family, agent, tasks, 10).trial_returns.mean())

    assert abs(mean_return("random") - 100.1) < 3.0
    assert abs(mean_return("psrl_zero_prior") - 138.1) < 3.0
    psrl = mean_return("psrl")
    assert 128.0 < psrl < 138.1
    assert mean_return("greedy") > psrl  # the posterior-mean greedy agent beats PSRL at this short horizon


# -- registry and errors ---------------------------------------------------------------------------------------------
def test_agent_names_per_family() -> None:
    assert classical_agent_names(Bandit()) == BANDIT_NAMES
    assert classical_agent_names(TabularMDP()) == TABULAR_NAMES
    assert classical_agent_names(metarl.make_family("MetaRL/Navigation2D-v0")) == []
    assert set(CLASSICAL_AGENTS) == set(BANDIT_NAMES) | set(TABULAR_NAMES)


def test_unknown_agent_name_raises_with_the_allowed_names() -> None:
    with pytest.raises(ValueError, match=r"'gitins'.*allowed.*'gittins'"):
        make_classical_agent("gitins", Bandit(), 10)


@pytest.mark.parametrize(("name", "family"), [("gittins", TabularMDP()), ("psrl", Bandit()), ("random", None)])
def test_agent_on_an_unsupported_family_raises(name: str, family: metarl.TaskFamily | None) -> None:
    family = family or metarl.make_family("MetaRL/Navigation2D-v0")
    with pytest.raises(ValueError, match=rf"'{name}'.*{type(family).__name__}"):
        make_classical_agent(name, family, 10)


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        make_classical_agent("epsilon_greedy", Bandit(), 10, epsilon=1.5)
    with pytest.raises(ValueError, match="seed"):
        make_classical_agent("thompson", Bandit(), 10, seed=-1)
    with pytest.raises(ValueError, match="prior_reward_var"):
        make_classical_agent("psrl", TabularMDP(), 10, prior_reward_var=0.0)
    with pytest.raises(TypeError, match="discount"):
        make_classical_agent("thompson", Bandit(), 10, discount=0.9)  # a Gittins setting


# -- as a meta-agent: trained and evaluated through the command line like every agent --------------------------------
def classical_config(tmp_path, **overrides: Any):
    from metarl.presets import config_from_dict

    values = {
        "algo": "classical",
        "classical_agent": "gittins",
        "family": "MetaRL/Bandit-v0",
        "family_kwargs": {"num_arms": 3},
        "trial_episodes": 10,
        "num_tasks": 2000,
        "meta_batch_size": 20,
        "iterations": 1,
        "eval_interval": 1,
        "eval_tasks": 20,
        "test_tasks": 20,
        "run_root": str(tmp_path),
        "progress": False,
    }
    return config_from_dict({**values, **overrides})


def test_a_classical_run_is_evaluated_like_rl2(tmp_path) -> None:
    from metarl.evaluate import evaluate_run
    from metarl.trainer import train

    gittins = train(classical_config(tmp_path / "gittins")).run_dir
    assert gittins.name.startswith("MetaRL_Bandit-v0__classical-gittins__0__")
    random = train(classical_config(tmp_path / "random", classical_agent="random")).run_dir
    curves = {}
    for run in (gittins, random):
        evaluation = evaluate_run(run, num_tasks=200, seeds=(0, 1))
        assert (evaluation.curve_kind, evaluation.points, evaluation.success) == ("episode", tuple(range(1, 11)), None)
        curves[run] = evaluation.per_task().mean(axis=1)
        again = evaluate_run(run, num_tasks=200, seeds=(0, 1))
        assert np.array_equal(again.returns, evaluation.returns)
    # Gittins learns the arms within the trial: its last pulls beat its first and random's (std. error ~0.025)
    assert curves[gittins][-3:].mean() > curves[gittins][0] + 0.08
    assert curves[gittins][-3:].mean() > curves[random].mean() + 0.08
    assert abs(curves[random][-3:].mean() - curves[random][:3].mean()) < 0.08


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"classical_agent": "nope"}, "unknown classical_agent 'nope'; allowed:"),
        ({"classical_agent": "psrl"}, "classical agent 'psrl' supports ['TabularMDP'] families"),
        ({"family": "MetaRL/Navigation2D-v0", "family_kwargs": {}}, "supports ['Bandit'] families"),
    ],
)
def test_a_bad_classical_run_is_rejected_before_any_work(tmp_path, overrides: dict, message: str) -> None:
    from metarl.trainer import train

    with pytest.raises(ValueError, match=re.escape(message)):
        train(classical_config(tmp_path, **overrides))
    assert not any(tmp_path.iterdir())
