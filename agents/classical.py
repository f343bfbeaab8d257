"""Classical baselines of the RL² paper (Tables 1 and 2), as trial agents that play N trials in parallel.

Every agent here is a :class:`metarl.trials.TrialPolicy`: it starts a trial knowing nothing of the task, keeps
sufficient statistics (arm counts, transition counts, reward sums) in its state across the episodes of the trial,
and reads only what a learner sees, :class:`metarl.trials.TrialInputs`, plus the family's public constants and
documented priors. It is evaluated by :func:`metarl.trials.collect_trials` exactly like the learned RL² agent::

    agent = make_classical_agent("gittins", family, num_episodes=10, seed=0)
    batch = collect_trials(make_trial_envs(family, len(tasks)), family, tasks, 10, agent, seed=0)

Bandits (:class:`metarl.envs.bandit.Bandit`, one pull per episode, arm means ~ U[0, 1] = Beta(1, 1)): random, greedy,
ε-greedy, UCB1 (classic, and with the Beta prior and a tuned constant), Thompson sampling and the Gittins index.
Tabular MDPs (:class:`metarl.envs.tabular_mdp.TabularMDP`): random, greedy on the posterior mean, and PSRL.

All randomness comes from one ``torch.Generator`` per agent, seeded from its ``seed``: the same seed and the same
inputs give the same actions. Ties between best actions are broken uniformly at random.

References:
    Duan et al. "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", arXiv:1611.02779, 2016.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from metarl.envs.bandit import Bandit
from metarl.envs.tabular_mdp import TabularMDP

from metarl.agent import AdaptationCurve, CurveKind
from metarl.budget import MemoryEstimate, buffer_estimate, largest_task_set, trial_step_bytes, with_sub_envs
from metarl.config import RunConfig, check_at_least
from metarl.distributed import Workers
from metarl.registry import register_agent
from metarl.tasks import TaskFamily, check_count, check_real
from metarl.trials import TrialBatch, TrialInputs, TrialPolicy, collect_trials, make_trial_envs

TUNED_UCB1_C = 0.2
"""Exploration constant of ``"ucb1_prior"``; see :class:`UCB1Agent` for how it was chosen."""

GITTINS_GRID_SIZE = 128
"""Calibration values λ per Gittins index table; see :func:`gittins_index_table` for the accuracy this gives."""


# -- shared helpers ------------------------------------------------------------------------------------------------
def argmax_random_ties(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[N]`` index of the largest of ``scores[N, K]`` in each row, uniformly at random among exact ties."""
    best = scores == scores.max(dim=-1, keepdim=True).values
    keys = torch.rand(scores.shape, generator=generator, device=generator.device).to(scores.device)
    return torch.where(best, keys, -1.0).argmax(dim=-1)


def sample_gamma(concentration: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma(concentration, 1) samples drawn from ``generator``.

    ``torch.distributions`` cannot take a generator, but the op it calls, ``torch._standard_gamma``, does (checked on
    torch 2.13: same generator seed, same draws, whatever the global seed), so the draws depend on the agent's seed
    alone. The op is private, hence this one wrapper.
    """
    return torch._standard_gamma(concentration, generator=generator)


class RandomAgent:
    """Uniformly random actions: the floor of Tables 1 and 2.

    Settings: none. Supports the Bandit and TabularMDP families.

    References:
        Duan et al. "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", arXiv:1611.02779, 2016.
    """

    def __init__(
        self, family: TaskFamily, num_episodes: int, seed: int = 0, device: torch.device | str = "cpu"
    ) -> None:
        if not isinstance(family, Bandit | TabularMDP):
            raise ValueError(f"RandomAgent supports Bandit and TabularMDP families, got {family!r}")
        self.num_actions = int(family.action_space.n)
        self.num_episodes = check_count("num_episodes", num_episodes)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(check_count("seed", seed, minimum=0))

    def initial_state(self, num_trials: int) -> None:
        return None  # a random agent remembers nothing

    def act(self, inputs: TrialInputs, state: None) -> tuple[torch.Tensor, None, dict[str, torch.Tensor]]:
        num_trials = inputs.prev_rewards.shape[0]
        actions = torch.randint(0, self.num_actions, (num_trials,), generator=self.generator, device=self.device)
        return actions.to(inputs.prev_rewards.device), state, {}


# -- bandits -------------------------------------------------------------------------------------------------------
class BanditState(NamedTuple):
    """What a bandit agent remembers of N trials: the posterior Beta(1 + successes, 1 + failures) of every arm."""

    successes: torch.Tensor
    """``[N, k]`` float32 pulls of each arm that paid 1."""
    failures: torch.Tensor
    """``[N, k]`` float32 pulls of each arm that paid 0."""
    pulls: torch.Tensor
    """``[N]`` int64 pulls made so far in the trial: the trial step the agent is at."""


class BanditAgent:
    """Base of the bandit agents: keeps :class:`BanditState` up to date; subclasses choose the arm (``_choose``).

    Args:
        family: a :class:`metarl.envs.bandit.Bandit`.
        num_episodes: episodes (pulls) per trial, the bandit's horizon n.
        seed: seed of the agent's generator.
        device: where the state and the generator live.
    """

    def __init__(
        self, family: TaskFamily, num_episodes: int, seed: int = 0, device: torch.device | str = "cpu"
    ) -> None:
        if not isinstance(family, Bandit):
            raise ValueError(f"{type(self).__name__} supports Bandit families only, got {family!r}")
        self.num_arms = family.num_arms
        self.num_episodes = check_count("num_episodes", num_episodes)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(check_count("seed", seed, minimum=0))

    def initial_state(self, num_trials: int) -> BanditState:
        counts = torch.zeros((num_trials, self.num_arms), dtype=torch.float32, device=self.device)
        pulls = torch.zeros(num_trials, dtype=torch.int64, device=self.device)
        return BanditState(successes=counts, failures=counts.clone(), pulls=pulls)

    def act(self, inputs: TrialInputs, state: BanditState) -> tuple[torch.Tensor, BanditState, dict[str, torch.Tensor]]:
        state = self.observe(inputs, state)
        actions = self._choose(state)
        return actions.to(inputs.prev_rewards.device), state, {}

    def observe(self, inputs: TrialInputs, state: BanditState) -> BanditState:
        """The state after the previous pull's outcome (nothing to add at a trial's first step, action -1)."""
        prev_actions = inputs.prev_actions.to(self.device)
        pulled = (prev_actions >= 0).to(torch.float32)
        one_hot = torch.nn.functional.one_hot(prev_actions.clamp(min=0), self.num_arms) * pulled[:, None]
        rewards = inputs.prev_rewards.to(self.device)[:, None]
        return BanditState(
            successes=state.successes + one_hot * rewards,
            failures=state.failures + one_hot * (1.0 - rewards),
            pulls=state.pulls + pulled.to(torch.int64),
        )

    def _choose(self, state: BanditState) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def posterior_means(state: BanditState) -> torch.Tensor:
        """``[N, k]`` posterior mean of every arm under the Beta(1, 1) prior."""
        return (state.successes + 1.0) / (state.successes + state.failures + 2.0)


class GreedyBanditAgent(BanditAgent):
    """Pulls the arm of highest posterior mean under the Beta(1, 1) prior, ties broken at random.

    Settings: none.

    References:
        Duan et al. "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", arXiv:1611.02779, 2016.
    """

    def _choose(self, state: BanditState) -> torch.Tensor:
        return argmax_random_ties(self.posterior_means(state), self.generator)


class EpsilonGreedyBanditAgent(BanditAgent):
    """With probability ε a uniformly random arm, else the greedy arm (highest Beta(1, 1) posterior mean).

    On k=5 bandits any exploration beyond the prior's costs reward: a sweep of ε on 20000 tasks gave 6.64 / 75.92
    (n=10 / n=100) at ε = 0 (the greedy agent), 6.55 / 75.44 at ε = 0.05 and 6.47 / 74.65 at ε = 0.1. The default
    0.05 keeps a genuinely exploring ε-greedy, close to the paper's tuned ε-greedy column (6.6 / 75.4).

    Settings:
        epsilon: exploration probability in [0, 1] (default 0.05).

    References:
        Sutton, Barto. "Reinforcement Learning: An Introduction", 2nd ed., 2018, section 2.2.
    """

    def __init__(
        self,
        family: TaskFamily,
        num_episodes: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
        epsilon: float = 0.05,
    ) -> None:
        super().__init__(family, num_episodes, seed, device)
        self.epsilon = check_real("epsilon", epsilon, 0.0, 1.0)

    def _choose(self, state: BanditState) -> torch.Tensor:
        greedy = argmax_random_ties(self.posterior_means(state), self.generator)
        num_trials = greedy.shape[0]
        explore = torch.rand(num_trials, generator=self.generator, device=self.device) < self.epsilon
        random_arms = torch.randint(0, self.num_arms, (num_trials,), generator=self.generator, device=self.device)
        return torch.where(explore, random_arms, greedy)


class UCB1Agent(BanditAgent):
    """UCB1: the arm maximising ``mean_a + c * sqrt(2 ln t / n_a)``.

    Classic (``prior=False``): every arm is pulled once first (in random order), then ``mean_a`` is the empirical
    mean, ``n_a`` the arm's pulls and ``t`` the pulls so far. At k=5, n=10 the forced pulls spend half the trial: it
    scores 5.68 with c = 1 and at most 5.96 (c = 0, greedy after the forced pulls), far below the paper's 6.7.

    With the prior (``prior=True``, registered as ``"ucb1_prior"``): no forced pulls; the Beta(1, 1) prior counts as
    two pseudo-pulls of every arm, so ``mean_a = (s_a + 1) / (n_a + 2)``, ``n_a`` becomes ``n_a + 2`` and ``t``
    becomes ``t + 2k``. This is the variant whose scores match the paper's UCB1 column (6.7 at n=10, 78.0 at n=100,
    k=5), which the paper tuned. ``c`` = :data:`TUNED_UCB1_C` = 0.2 comes from a sweep of
    c ∈ {0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0} on 20000 k=5 tasks drawn with
    ``np.random.default_rng(12345)`` (not the held-out split): c = 0.2 is the best at n=100 (78.57 ± 0.22, the next
    best 78.28 at c = 0.25) and at n=10 gives 6.62 ± 0.03, 0.03 below the best (6.65 at c = 0.05). Putting the
    prior's pseudo-counts as ``n_a + 1`` and ``t + 1`` instead did no better (best 78.52 at n=100, c = 0.15).

    Settings:
        c: exploration constant, >= 0 (default 1.0, the classic value; ``"ucb1_prior"`` uses 0.2).
        prior: use the Beta(1, 1) prior instead of forced pulls (default False).

    References:
        Auer, Cesa-Bianchi, Fischer. "Finite-time Analysis of the Multiarmed Bandit Problem", Machine Learning 2002.
    """

    def __init__(
        self,
        family: TaskFamily,
        num_episodes: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
        c: float = 1.0,
        prior: bool = False,
    ) -> None:
        super().__init__(family, num_episodes, seed, device)
        self.c = check_real("c", c, 0.0)
        if not isinstance(prior, bool):
            raise TypeError(f"prior must be a bool, got {type(prior).__name__} {prior!r}")
        self.prior = prior

    def _choose(self, state: BanditState) -> torch.Tensor:
        arm_pulls = state.successes + state.failures
        total_pulls = state.pulls[:, None].to(torch.float32)
        if self.prior:
            # the prior as two pseudo-pulls per arm: never a division by zero, and t >= 2k keeps ln t > 0
            means = self.posterior_means(state)
            bonus = self.c * torch.sqrt(2.0 * torch.log(total_pulls + 2.0 * self.num_arms) / (arm_pulls + 2.0))
            return argmax_random_ties(means + bonus, self.generator)
        means = state.successes / arm_pulls.clamp(min=1.0)
        bonus = self.c * torch.sqrt(2.0 * torch.log(total_pulls.clamp(min=1.0)) / arm_pulls.clamp(min=1.0))
        # an arm never pulled has an infinite index: the forced first pulls
        scores = torch.where(arm_pulls > 0, means + bonus, math.inf)
        return argmax_random_ties(scores, self.generator)


class ThompsonSamplingAgent(BanditAgent):
    """Thompson sampling: pulls the arm whose mean, drawn from its Beta(1 + s, 1 + f) posterior, is largest.

    Beta draws are ``X / (X + Y)`` with ``X ~ Gamma(1 + s)`` and ``Y ~ Gamma(1 + f)`` from the agent's generator.

    Settings: none.

    References:
        Thompson. "On the likelihood that one unknown probability exceeds another in view of the evidence of two
        samples", Biometrika 1933; Chapelle, Li. "An Empirical Evaluation of Thompson Sampling", NeurIPS 2011.
    """

    def _choose(self, state: BanditState) -> torch.Tensor:
        gamma_successes = sample_gamma(state.successes + 1.0, self.generator)
        gamma_failures = sample_gamma(state.failures + 1.0, self.generator)
        sampled_means = gamma_successes / (gamma_successes + gamma_failures)
        return argmax_random_ties(sampled_means, self.generator)


def gittins_index_table(num_pulls: int, discount: float = 1.0, grid_size: int = GITTINS_GRID_SIZE) -> np.ndarray:
    """Gittins indices of a Bernoulli arm with a Beta(1, 1) prior, for every state reachable in ``num_pulls`` pulls.

    ``table[m, s, f]`` is the index of an arm with posterior Beta(1 + s, 1 + f) when ``m`` pulls are left (this one
    included), for ``1 <= m <= num_pulls`` and ``0 <= s, f <= num_pulls - m`` (other entries are 0). Computed by the
    calibration (retirement) method: the index is the per-pull reward λ of a safe arm that makes the player
    indifferent between retiring to it for the ``m`` remaining pulls and pulling this arm and then acting optimally
    (retire or go on after every pull) with rewards discounted by ``discount`` per pull. With ``discount=1`` it is the
    finite-horizon index; with ``discount < 1`` and ``m`` large it tends to the classic discounted index.

    One backward dynamic programme, over the pulls left, gives the optimal-stopping values of every state at once
    for a fixed λ, so it runs for a grid of ``grid_size`` values of λ in [0, 1] side by side (a per-state bisection
    would need one programme per state and step). The index is the root in λ of (pull value - retire value), which is
    convex, piecewise linear and strictly decreasing in λ; the programme also carries its slope, and the root is the
    larger of the roots of the tangents at the two grid values that bracket it: exact when at most one kink lies
    between them. With the default 128 values the table matches a per-state bisection to 3e-5 at n=20, a 4096-value
    grid to 3e-4 at n=30 and a 1024-value grid to 2e-3 at n=100 (where 0.16% of a Gittins agent's pulls change and
    its mean return moves by -0.004 ± 0.006). n=100 builds in 1-2 s. The result is cached per argument triple and is
    read-only.

    Args:
        num_pulls: the horizon n, >= 1.
        discount: per-pull discount in (0, 1].
        grid_size: number of calibration values λ, >= 3.

    Returns:
        ``[num_pulls + 1, num_pulls + 1, num_pulls + 1]`` float64 array.

    References:
        Gittins, Glazebrook, Weber. "Multi-armed Bandit Allocation Indices", 2nd ed., Wiley 2011, chapters 2 and 8.
    """
    num_pulls = check_count("num_pulls", num_pulls)
    discount = check_real("discount", discount, 0.0, 1.0)
    if discount == 0.0:
        raise ValueError("discount must be in (0, 1], got 0.0")
    grid_size = check_count("grid_size", grid_size, minimum=3)
    return _gittins_index_table(num_pulls, discount, grid_size)


@functools.lru_cache(maxsize=16)
def _gittins_index_table(num_pulls: int, discount: float, grid_size: int) -> np.ndarray:
    size = num_pulls + 1
    safe_rewards = np.linspace(0.0, 1.0, grid_size)  # the calibration values λ
    lam = safe_rewards[:, None, None]
    successes = np.arange(size)[:, None]
    failures = np.arange(size)[None, :]
    success_probs = (successes + 1.0) / (successes + failures + 2.0)  # posterior mean of Beta(1 + s, 1 + f)
    table = np.zeros((size, size, size))
    # values[g, s, f]: optimal value with one pull fewer left against safe reward λ_g (0 with none left), slopes its
    # derivative in λ; the extra row and column are never read as real states, they give the slices one shape
    values = np.zeros((grid_size, size + 1, size + 1))
    slopes = np.zeros_like(values)
    retire_value = 0.0  # per unit λ: sum of discount**j over the pulls left
    for pulls_left in range(1, num_pulls + 1):
        retire_value = 1.0 + discount * retire_value
        side = num_pulls - pulls_left + 1  # states reachable with pulls_left pulls still to come: s, f < side
        p = success_probs[:side, :side]

        # pull once, then go on optimally: success leads to (s + 1, f), failure to (s, f + 1)
        pull_value = p + discount * _after_pull(values, p)
        pull_slope = discount * _after_pull(slopes, p)
        # advantage of pulling over retiring: convex, piecewise linear and decreasing in λ (slope <= -1), > 0 at
        # λ=0 (p > 0) and < 0 at λ=1 (p < 1), so it has one root, the index
        advantage = pull_value - lam * retire_value
        advantage_slope = pull_slope - retire_value
        high = np.argmax(advantage <= 0.0, axis=0).clip(min=1)[None]  # first grid value at or past the root
        # a tangent of a convex function lies below it, so the tangents' roots at both bracketing grid values are
        # lower bounds of the index, and with at most one kink between them one of them is exact
        table[pulls_left, :side, :side] = np.maximum(
            _tangent_root(safe_rewards, advantage, advantage_slope, high - 1),
            _tangent_root(safe_rewards, advantage, advantage_slope, high),
        )
        retiring = advantage < 0.0
        values[:, :side, :side] = np.where(retiring, lam * retire_value, pull_value)
        slopes[:, :side, :side] = np.where(retiring, retire_value, pull_slope)
    table.flags.writeable = False
    return table


def _after_pull(next_values: np.ndarray, success_probs: np.ndarray) -> np.ndarray:
    """``[G, side, side]`` expectation of ``next_values`` after one pull of the states ``s, f < side``."""
    side = success_probs.shape[0]
    after_success = next_values[:, 1 : side + 1, :side]  # state (s + 1, f)
    after_failure = next_values[:, :side, 1 : side + 1]  # state (s, f + 1)
    return success_probs * after_success + (1.0 - success_probs) * after_failure


def _tangent_root(grid: np.ndarray, values: np.ndarray, slopes: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Root of the tangent to ``values[:, ...]`` (a function sampled on ``grid``) at grid index ``at[0, ...]``."""
    value = np.take_along_axis(values, at, axis=0)[0]
    slope = np.take_along_axis(slopes, at, axis=0)[0]
    return grid[at[0]] - value / slope


class GittinsAgent(BanditAgent):
    """Pulls the arm of highest Gittins index (Beta(1, 1) prior, Bernoulli rewards), ties broken at random.

    The index is the finite-horizon one: it calibrates each arm against a safe arm for the pulls left in the trial
    (``m = n - t``), undiscounted by default (:func:`gittins_index_table`). This is the natural index for the
    paper's objective, the undiscounted total reward over n pulls, and it needs no tuning (a discount < 1 would
    down-weight later pulls that the objective counts in full). On 10000 held-out tasks it scores 6.66 ± 0.04 and
    78.7 ± 0.3 at k=5 (n=10, n=100; paper 6.6, 78.3) and 6.71 ± 0.04 and 83.7 ± 0.2 at k=10 (paper 6.6, 82.8).
    The table is built once per ``(n, discount)`` in the constructor (1-2 s at n=100 on one CPU thread) and cached.

    Settings:
        discount: per-pull discount in (0, 1] of the calibration (default 1.0, undiscounted).

    References:
        Gittins. "Bandit processes and dynamic allocation indices", JRSS B 1979; Gittins, Glazebrook, Weber.
        "Multi-armed Bandit Allocation Indices", 2nd ed., Wiley 2011.
    """

    def __init__(
        self,
        family: TaskFamily,
        num_episodes: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
        discount: float = 1.0,
    ) -> None:
        super().__init__(family, num_episodes, seed, device)
        table = gittins_index_table(self.num_episodes, discount)
        self.discount = float(discount)
        self.index_table = torch.as_tensor(np.array(table), device=self.device).flatten()

    def _choose(self, state: BanditState) -> torch.Tensor:
        size = self.num_episodes + 1
        # past the trial's last pull (an overlong trial) keep using the last pull's, myopic, index
        pulls_left = (self.num_episodes - state.pulls).clamp(min=1)[:, None]
        successes = state.successes.to(torch.int64).clamp(max=size - 1)
        failures = state.failures.to(torch.int64).clamp(max=size - 1)
        flat_index = (pulls_left * size + successes) * size + failures
        return argmax_random_ties(self.index_table[flat_index], self.generator)


# -- tabular MDPs --------------------------------------------------------------------------------------------------
def finite_horizon_q_values(transitions: torch.Tensor, rewards: torch.Tensor, horizon: int) -> torch.Tensor:
    """Optimal Q-values of finite-horizon MDPs by backward value iteration (undiscounted).

    Args:
        transitions: ``[..., S, A, S]`` P(s' | s, a).
        rewards: ``[..., S, A]`` expected reward of taking a in s.
        horizon: steps per episode H, >= 1.

    Returns:
        ``[..., H, S, A]``: entry ``h`` is the value of taking a in s at step h of the episode (H - h steps to go,
        this one included) and acting optimally afterwards.
    """
    horizon = check_count("horizon", horizon)
    q_values = [rewards]  # one step to go
    for _ in range(horizon - 1):
        next_values = q_values[-1].max(dim=-1).values  # [..., S]
        q_values.append(rewards + (transitions @ next_values[..., None, :, None]).squeeze(-1))
    return torch.stack(q_values[::-1], dim=-3)


class TabularMDPState(NamedTuple):
    """What a tabular-MDP agent remembers of N trials: posterior statistics and where it is in the episode."""

    transition_counts: torch.Tensor
    """``[N, S, A, S]`` float32 observed transitions (s, a, s'); a step that ended an episode is not one (its
    next state is never observed: the next observation is the new episode's start)."""
    reward_counts: torch.Tensor
    """``[N, S, A]`` float32 rewards observed after taking a in s."""
    reward_sums: torch.Tensor
    """``[N, S, A]`` float32 their sum."""
    states: torch.Tensor
    """``[N]`` int64 the current state (read from the one-hot observation)."""
    steps_in_episode: torch.Tensor
    """``[N]`` int64 step of the current episode, 0 at its first step."""
    q_values: torch.Tensor
    """``[N, H, S, A]`` float32 Q-values of the plan being followed (see the agent)."""


class TabularMDPAgent:
    """Base of the tabular-MDP agents: keeps :class:`TabularMDPState` and the posterior of the MDP.

    Posterior under the family's prior: every ``P(· | s, a)`` is Dirichlet(1 + counts of (s, a, ·)); every mean
    reward is Normal, from the prior N(``prior_reward_mean``, ``prior_reward_var``), by default the family's N(1, 1),
    and the known noise variance ``reward_std²``. Subclasses plan (``_plan``); the agent then takes the plan's best
    action at the current step and state, ties broken at random.

    The paper's PSRL column of Table 2 is reproduced with the prior N(0, 1) instead
    (``prior_reward_mean=0``): PSRL then scores 138.2 ± 0.9 at n=10 and 408.8 ± 1.9 at n=25 on 4000 held-out MDPs
    (paper: 138.1, 408.8), against 133.5 ± 0.8 and 404.0 ± 1.8 with the family's true prior; so the paper's
    baselines seem to have assumed zero-mean rewards. The default stays the true prior, which is the Bayesian
    baseline the family defines; the registry offers both (``"psrl"`` and ``"psrl_zero_prior"``).

    Args:
        family: a :class:`metarl.envs.tabular_mdp.TabularMDP`.
        num_episodes: episodes per trial.
        seed: seed of the agent's generator.
        device: where the state and the generator live.
        prior_reward_mean: mean of the Normal prior of every mean reward (default 1.0, the family's).
        prior_reward_var: its variance, > 0 (default 1.0, the family's).
    """

    def __init__(
        self,
        family: TaskFamily,
        num_episodes: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
        prior_reward_mean: float = 1.0,
        prior_reward_var: float = 1.0,
    ) -> None:
        if not isinstance(family, TabularMDP):
            raise ValueError(f"{type(self).__name__} supports TabularMDP families only, got {family!r}")
        self.num_states, self.num_actions = family.num_states, family.num_actions
        self.horizon, self.reward_std = family.horizon, family.reward_std
        self.num_episodes = check_count("num_episodes", num_episodes)
        self.prior_reward_mean = check_real("prior_reward_mean", prior_reward_mean)
        self.prior_reward_var = check_real("prior_reward_var", prior_reward_var, 0.0)
        if self.prior_reward_var == 0.0:
            raise ValueError("prior_reward_var must be > 0, got 0.0")
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(check_count("seed", seed, minimum=0))

    def initial_state(self, num_trials: int) -> TabularMDPState:
        num_states, num_actions = self.num_states, self.num_actions

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros((num_trials, *shape), dtype=dtype, device=self.device)

        return TabularMDPState(
            transition_counts=zeros(num_states, num_actions, num_states),
            reward_counts=zeros(num_states, num_actions),
            reward_sums=zeros(num_states, num_actions),
            states=zeros(dtype=torch.int64),
            steps_in_episode=zeros(dtype=torch.int64),
            q_values=zeros(self.horizon, num_states, num_actions),
        )

    def act(
        self, inputs: TrialInputs, state: TabularMDPState
    ) -> tuple[torch.Tensor, TabularMDPState, dict[str, torch.Tensor]]:
        state = self.observe(inputs, state)
        state = state._replace(q_values=self._plan(state))
        trials = torch.arange(state.states.shape[0], device=self.device)
        step = state.steps_in_episode.clamp(max=self.horizon - 1)
        current_q = state.q_values[trials, step, state.states]  # [N, A]
        actions = argmax_random_ties(current_q, self.generator)
        return actions.to(inputs.prev_rewards.device), state, {}

    def observe(self, inputs: TrialInputs, state: TabularMDPState) -> TabularMDPState:
        """The state after the previous step: its reward, its transition and the step counter updated."""
        num_trials = state.states.shape[0]
        num_states, num_actions = self.num_states, self.num_actions
        prev_actions = inputs.prev_actions.to(self.device)
        acted = prev_actions >= 0  # False at a trial's first step
        ended = inputs.episode_ended.to(self.device) > 0
        current_states = inputs.observations.to(self.device).argmax(dim=-1)

        state_action = (state.states * num_actions + prev_actions.clamp(min=0))[:, None]  # flat (s, a)
        acted_weight = acted.to(torch.float32)[:, None]
        rewards = inputs.prev_rewards.to(self.device)[:, None]
        reward_counts = state.reward_counts.view(num_trials, -1).scatter_add(1, state_action, acted_weight)
        reward_sums = state.reward_sums.view(num_trials, -1).scatter_add(1, state_action, acted_weight * rewards)
        # after an episode's last step the observation is the next episode's start, not the step's next state
        transition = state_action * num_states + current_states[:, None]  # flat (s, a, s')
        observed = (acted & ~ended).to(torch.float32)[:, None]
        transition_counts = state.transition_counts.view(num_trials, -1).scatter_add(1, transition, observed)
        steps_in_episode = torch.where(acted & ~ended, state.steps_in_episode + 1, 0)
        return state._replace(
            transition_counts=transition_counts.view_as(state.transition_counts),
            reward_counts=reward_counts.view_as(state.reward_counts),
            reward_sums=reward_sums.view_as(state.reward_sums),
            states=current_states,
            steps_in_episode=steps_in_episode,
        )

    def posterior_transition_means(self, state: TabularMDPState) -> torch.Tensor:
        """``[N, S, A, S]`` posterior mean of P(s' | s, a): (1 + counts) / (S + total)."""
        concentration = state.transition_counts + 1.0
        return concentration / concentration.sum(dim=-1, keepdim=True)

    def posterior_reward_params(self, state: TabularMDPState) -> tuple[torch.Tensor, torch.Tensor]:
        """``([N, S, A], [N, S, A])`` posterior mean and standard deviation of every mean reward.

        Conjugate Normal update with known noise variance σ²: precision 1/τ0² + n/σ², mean (μ0/τ0² + Σr/σ²) /
        precision. With σ = 0 one observation reveals the mean exactly.
        """
        counts, sums = state.reward_counts, state.reward_sums
        if self.reward_std == 0.0:
            seen = counts > 0
            means = torch.where(seen, sums / counts.clamp(min=1.0), self.prior_reward_mean)
            stds = torch.where(seen, 0.0, math.sqrt(self.prior_reward_var))
            return means, stds
        noise_var = self.reward_std**2
        precision = 1.0 / self.prior_reward_var + counts / noise_var
        means = (self.prior_reward_mean / self.prior_reward_var + sums / noise_var) / precision
        return means, precision.rsqrt()

    def _plan(self, state: TabularMDPState) -> torch.Tensor:
        raise NotImplementedError


class GreedyMDPAgent(TabularMDPAgent):
    """Greedy on the posterior mean MDP (certainty equivalence), re-planned at every step.

    At every step it solves the MDP whose transitions and mean rewards are the posterior means by finite-horizon
    value iteration and takes the best action for the steps left in the episode. Re-planning every step (not once
    per episode) lets it use the rewards and transitions seen earlier in the same episode.

    Settings:
        prior_reward_mean, prior_reward_var: the Normal prior of the mean rewards (see :class:`TabularMDPAgent`).

    References:
        Duan et al. "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", arXiv:1611.02779, 2016.
    """

    def _plan(self, state: TabularMDPState) -> torch.Tensor:
        reward_means, _ = self.posterior_reward_params(state)
        return finite_horizon_q_values(self.posterior_transition_means(state), reward_means, self.horizon)


class PSRLAgent(TabularMDPAgent):
    """Posterior sampling for RL: one MDP sampled from the posterior per episode, followed greedily.

    At the first step of every episode it draws transitions ``P(· | s, a) ~ Dirichlet(1 + counts)`` (normalised
    Gamma draws) and mean rewards from their Normal posterior (prior N(1, 1), known noise ``reward_std``), solves
    that MDP by finite-horizon value iteration and follows its optimal policy for the whole episode. With the
    family's prior it scores about 4.5 below the paper's PSRL; with ``prior_reward_mean=0`` it matches it (see
    :class:`TabularMDPAgent`).

    Settings:
        prior_reward_mean, prior_reward_var: the Normal prior of the mean rewards (see :class:`TabularMDPAgent`).

    References:
        Osband, Russo, Van Roy. "(More) Efficient Reinforcement Learning via Posterior Sampling", NeurIPS 2013.
    """

    def _plan(self, state: TabularMDPState) -> torch.Tensor:
        starting = state.steps_in_episode == 0
        if not bool(starting.any()):
            return state.q_values
        gammas = sample_gamma(state.transition_counts + 1.0, self.generator)
        transitions = gammas / gammas.sum(dim=-1, keepdim=True)
        reward_means, reward_stds = self.posterior_reward_params(state)
        noise = torch.randn(reward_means.shape, generator=self.generator, device=self.device)
        q_values = finite_horizon_q_values(transitions, reward_means + reward_stds * noise, self.horizon)
        return torch.where(starting[:, None, None, None], q_values, state.q_values)


# -- registry ------------------------------------------------------------------------------------------------------
class ClassicalAgentSpec(NamedTuple):
    """How a registered name builds an agent."""

    agent_classes: dict[type[TaskFamily], type]
    """The agent class for each supported family class (matched with ``isinstance``)."""
    defaults: dict[str, Any]
    """Settings passed to the class unless the caller overrides them."""


CLASSICAL_AGENTS: dict[str, ClassicalAgentSpec] = {
    "random": ClassicalAgentSpec({Bandit: RandomAgent, TabularMDP: RandomAgent}, {}),
    "greedy": ClassicalAgentSpec({Bandit: GreedyBanditAgent, TabularMDP: GreedyMDPAgent}, {}),
    "epsilon_greedy": ClassicalAgentSpec({Bandit: EpsilonGreedyBanditAgent}, {}),
    "ucb1": ClassicalAgentSpec({Bandit: UCB1Agent}, {}),
    "ucb1_prior": ClassicalAgentSpec({Bandit: UCB1Agent}, {"prior": True, "c": TUNED_UCB1_C}),
    "thompson": ClassicalAgentSpec({Bandit: ThompsonSamplingAgent}, {}),
    "gittins": ClassicalAgentSpec({Bandit: GittinsAgent}, {}),
    "psrl": ClassicalAgentSpec({TabularMDP: PSRLAgent}, {}),
    "psrl_zero_prior": ClassicalAgentSpec({TabularMDP: PSRLAgent}, {"prior_reward_mean": 0.0}),
}
"""The classical baselines by name: Table 1 (bandits) and Table 2 (tabular MDPs) of the RL² paper."""


def _agent_class(spec: ClassicalAgentSpec, family: TaskFamily) -> type | None:
    for family_class, agent_class in spec.agent_classes.items():
        if isinstance(family, family_class):
            return agent_class
    return None


def classical_agent_names(family: TaskFamily) -> list[str]:
    """The names in :data:`CLASSICAL_AGENTS` that support ``family`` (empty for a family none supports)."""
    return [name for name, spec in CLASSICAL_AGENTS.items() if _agent_class(spec, family) is not None]


def make_classical_agent(
    name: str,
    family: TaskFamily,
    num_episodes: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    **settings: Any,
) -> TrialPolicy:
    """Build the classical baseline ``name`` for trials of ``num_episodes`` episodes of ``family``.

    Args:
        name: a key of :data:`CLASSICAL_AGENTS`.
        family: the task family the trials are drawn from.
        num_episodes: episodes per trial.
        seed: seed of the agent's generator.
        device: where the agent's state lives.
        **settings: the agent's settings (see its class), overriding the registered defaults.

    Returns:
        The agent, a :class:`metarl.trials.TrialPolicy`.
    """
    spec = CLASSICAL_AGENTS.get(name)
    if spec is None:
        raise ValueError(f"unknown classical agent {name!r}; allowed: {sorted(CLASSICAL_AGENTS)}")
    agent_class = _agent_class(spec, family)
    if agent_class is None:
        supported = [family_class.__name__ for family_class in spec.agent_classes]
        raise ValueError(
            f"classical agent {name!r} supports {supported} families, not {family!r}; "
            f"agents for this family: {classical_agent_names(family)}"
        )
    return agent_class(family, num_episodes, seed=seed, device=device, **{**spec.defaults, **settings})


# -- as a meta-agent -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ClassicalConfig(RunConfig):
    """A classical baseline's fields: which algorithm plays the trials, and how long they are."""

    algo: str = "classical"
    classical_agent: str = "gittins"
    """Which algorithm plays the trials (:data:`CLASSICAL_AGENTS`: gittins, thompson, ucb1, ucb1_prior, greedy,
    epsilon_greedy and random for bandits; psrl, psrl_zero_prior, greedy and random for tabular MDPs), with its
    documented default settings."""
    trial_episodes: int = 2
    """Episodes per trial (n), the agent's posterior carried across them."""

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "trial_episodes")
        if self.classical_agent not in CLASSICAL_AGENTS:
            raise ValueError(
                f"unknown classical_agent {self.classical_agent!r}; allowed: {', '.join(CLASSICAL_AGENTS)}"
            )

    def run_label(self) -> str:
        return f"classical-{self.classical_agent}"


class ClassicalMetaAgent:
    """Baseline: a bandit or tabular-MDP algorithm of the RL² paper (Gittins, Thompson, UCB1, PSRL, ...) plays trials.

    ``algo=classical``, ``classical_agent=<name>``. There is nothing to meta-train: ``metarl train --algo classical
    iterations=1 ...`` makes a run folder, and ``metarl evaluate`` plays one trial per test task with a fresh agent
    (its own seed drawn from the evaluation's generator), each episode of the trial a point of the curve, as RL²'s.
    """

    curve_kind: ClassVar[CurveKind] = CurveKind.EPISODE
    """Points are the episodes of a trial, as RL²'s."""
    trains_across_processes: ClassVar[bool] = False
    progress_metrics: ClassVar[tuple[str, ...]] = (
        "meta/trial_return",
        "meta/return_first_episode",
        "meta/return_last_episode",
    )

    def __init__(
        self, family: TaskFamily, config: ClassicalConfig, device: torch.device, workers: Workers | None = None
    ) -> None:
        # built once now so that an unknown name or an unsupported family fails before any work starts
        make_classical_agent(config.classical_agent, family, config.trial_episodes, device=device)
        self.family = family
        self.config = config
        self.device = device
        self._envs: dict[int, Any] = {}

    @classmethod
    def memory_estimate(cls, config: ClassicalConfig, family: TaskFamily) -> MemoryEstimate:
        """The trials of the largest set of tasks played at once (the meta-batch, validation or the test) and the
        trial envs kept for each size; the agents' own state is a few numbers per arm or state-action pair."""
        field, count = largest_task_set(config, ("meta_batch_size", "eval_tasks", "test_tasks"))
        estimate = buffer_estimate(
            "trial buffers",
            [
                (f"{field} {{}}", count),
                ("trial_episodes {}", config.trial_episodes),
                ("horizon {}", family.horizon),
            ],
            2 * trial_step_bytes(family),  # time-major while collecting, then trial-major
            (field, "trial_episodes"),
        )
        return with_sub_envs(estimate, [config.meta_batch_size, config.eval_tasks, config.test_tasks], family)

    def play_trials(self, tasks: Sequence[Any], rng: np.random.Generator, num_episodes: int) -> TrialBatch:
        """One trial of ``num_episodes`` episodes per task, agent and env seeds drawn from ``rng``."""
        agent_seed, env_seed = (int(seed) for seed in rng.integers(2**31, size=2))
        agent = make_classical_agent(
            self.config.classical_agent, self.family, num_episodes, seed=agent_seed, device=self.device
        )
        if len(tasks) not in self._envs:
            self._envs[len(tasks)] = make_trial_envs(self.family, len(tasks), self.device)
        envs = self._envs[len(tasks)]
        return collect_trials(envs, self.family, tasks, num_episodes, agent, seed=env_seed, device=self.device)

    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        """Nothing to learn; the returns of its trials on the meta-batch, for the logs."""
        episode_returns = self.play_trials(tasks, rng, self.config.trial_episodes).episode_returns
        return {
            "meta/trial_return": float(episode_returns.sum(dim=1).mean()),
            "meta/return_first_episode": float(episode_returns[:, 0].mean()),
            "meta/return_last_episode": float(episode_returns[:, -1].mean()),
        }

    def default_num_points(self) -> int:
        return self.config.trial_episodes

    def adaptation_curve(self, tasks: Sequence[Any], rng: np.random.Generator, num_points: int) -> AdaptationCurve:
        """Each task's return (and success) in each episode of one trial of ``num_points`` episodes."""
        return AdaptationCurve.from_trials(self.play_trials(tasks, rng, num_points))

    def selection_score(self, curve: Sequence[float]) -> float:
        return float(sum(curve))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """No parameters."""


register_agent("classical", ClassicalMetaAgent, ClassicalConfig)
