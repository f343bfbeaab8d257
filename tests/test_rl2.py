"""RL²: trials carry memory across episodes and reset it between trials; PPO's maths; a small learning check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_RL2_CONFIG, TWO_ARMED_BANDIT_TRAINING
from metarl.agents.rl2 import RL2, clipped_surrogate_loss, trial_advantages

import metarl
from metarl.presets import config_from_dict, load_config
from metarl.trainer import train
from metarl.trials import TrialInputs, collect_trials, make_trial_envs, trial_input_vector


class _StepCounter:
    """A trial policy whose state counts the steps since its trial started; it records the state it was given."""

    def __init__(self, action_shape: tuple[int, ...]) -> None:
        self.action_shape = action_shape
        self.seen: list[torch.Tensor] = []

    def initial_state(self, num_trials: int) -> torch.Tensor:
        return torch.zeros(num_trials, dtype=torch.int64)

    def act(self, inputs: TrialInputs, state: torch.Tensor):
        self.seen.append(state.clone())
        return torch.zeros((len(state), *self.action_shape)), state + 1, {}


@pytest.mark.parametrize("trial_family_id", ["MetaRL/TabularMDP-v0", "MetaRL/Navigation2D-v0"])
def test_state_is_carried_across_episodes_and_reset_between_trials(trial_family_id):
    family = metarl.make_family(trial_family_id, horizon=5)
    tasks = family.sample_tasks(np.random.default_rng(0), 3)
    envs = make_trial_envs(family, len(tasks))
    policy = _StepCounter(family.action_space.shape)
    for trial in range(2):  # the second trial must start from a fresh state
        policy.seen.clear()
        batch = collect_trials(envs, family, tasks, 3, policy, seed=trial)
        seen = torch.stack(policy.seen, dim=1)  # [N, L]: the state handed to the policy at each step
        steps = torch.arange(batch.masks.shape[1]).expand_as(seen)
        real = batch.masks.bool()
        # the state at step l of a trial is l: never reset at an episode boundary, always reset at a trial start
        assert torch.equal(seen[real], steps[real])
        assert batch.episode_index[:, -1].tolist() == [2, 2, 2] and int(batch.inputs.episode_ended.sum()) == 6


def test_rl2_rollout_equals_the_policy_run_over_whole_trials():
    """Acting step by step carries the GRU state through episode ends: the sequence forward reproduces it."""
    config = config_from_dict({**TINY_RL2_CONFIG, "family": "MetaRL/TabularMDP-v0", "family_kwargs": {"horizon": 4}})
    family = metarl.make_family(config.family, **config.family_kwargs)
    torch.manual_seed(0)
    agent = RL2(family, config, torch.device("cpu"))
    tasks = family.sample_tasks(np.random.default_rng(1), 5)
    batch = agent.collect(tasks, np.random.default_rng(2))
    inputs = trial_input_vector(batch.inputs, family.action_space)
    with torch.no_grad():
        action_outputs, values, _ = agent.policy(inputs, agent.policy.initial_state(len(tasks)))
        log_probs = agent.policy.distribution(action_outputs).log_prob(batch.actions)
    torch.testing.assert_close(log_probs, batch.extras["log_prob"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, batch.extras["value"], rtol=1e-5, atol=1e-5)
    # and a policy that forgot at episode ends would differ: restart the GRU at episode 2's first step
    boundary = int(torch.nonzero(batch.inputs.episode_ended[0])[0])
    with torch.no_grad():
        _, restarted, _ = agent.policy(inputs[:, boundary:], agent.policy.initial_state(len(tasks)))
    assert not torch.allclose(restarted[:, 0], batch.extras["value"][:, boundary], atol=1e-4)


def test_trial_advantages_run_through_episode_ends_and_stop_at_the_trial_end():
    # one trial of two 2-step episodes, then one padded step
    rewards = torch.tensor([[1.0, 0.0, 2.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 0.5, 9.0]])
    masks = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.5
    deltas = [1 + 0.9 * 1.0 - 0.5, 0 + 0.9 * 1.5 - 1.0, 2 + 0.9 * 0.5 - 1.5, 1 + 0.0 - 0.5]  # no bootstrap at the end
    expected = [0.0] * 4
    running = 0.0
    for step in reversed(range(4)):
        running = deltas[step] + gamma * lam * running
        expected[step] = running
    advantages, targets = trial_advantages(rewards, values, masks, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([[*expected, 0.0]]))
    torch.testing.assert_close(targets, advantages + values)


def test_clipped_surrogate_against_hand_computed_values():
    ratio = torch.tensor([0.5, 1.5, 0.5, 1.5, 1.1])
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    masks = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    # min(r A, clip(r) A) with clip 0.2: 0.5, 1.2, -0.8, -1.5; the masked step is left out
    expected = -(0.5 + 1.2 - 0.8 - 1.5) / 4
    assert float(clipped_surrogate_loss(ratio, advantages, masks, 0.2)) == pytest.approx(expected)


def test_truncated_bptt_trains(tmp_path):
    result = train(config_from_dict({**TINY_RL2_CONFIG, "rl2_bptt_steps": 3, "run_root": str(tmp_path)}))
    assert len(result.test_returns) == 4 and all(np.isfinite(result.test_returns))


def test_rl2_runs_are_deterministic_and_report_episode_curves(tmp_path):
    first = train(config_from_dict({**TINY_RL2_CONFIG, "run_root": str(tmp_path / "a")}))
    second = train(config_from_dict({**TINY_RL2_CONFIG, "run_root": str(tmp_path / "b")}))
    records = [
        [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
        for run in (first, second)
    ]
    drop_times = [[{k: v for k, v in r.items() if not k.startswith("time/")} for r in run] for run in records]
    assert drop_times[0] == drop_times[1]
    assert first.test_returns == second.test_returns and first.curve_kind == "episode"
    assert "validation/return_episode_4" in records[0][1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo=rl2", "trial_episodes=0"], "trial_episodes must be >= 1, got 0"),
        (["algo=rl2", "rl2_bptt_steps=-1"], "rl2_bptt_steps must be >= 0, got -1"),
        (["algo=rl2", "ppo_entropy_coeff=-0.1"], "ppo_entropy_coeff must be a finite number >= 0"),
        (["algo=rl2", "family=MetaRL/Bandt-v0"], "did you mean MetaRL/Bandit-v0"),
    ],
)
def test_bad_rl2_config_is_rejected_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ValueError) as error:
        train(load_config(None, [*overrides, f"run_root={tmp_path}"]))
    assert message in str(error.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_rl2_beats_random_on_held_out_two_armed_bandits(tmp_path):
    """A small RL² on 2-armed bandits with trials of 10 pulls: well above random's 5.0 on held-out tasks."""
    config = config_from_dict(
        {
            **TWO_ARMED_BANDIT_TRAINING,
            "algo": "rl2",
            "rl2_hidden_size": 32,
            "eval_interval": 20,
            "progress": False,
            "run_root": str(tmp_path),
        }
    )
    result = train(config)
    # random scores 5.0 in expectation (std of the 400-task mean ~0.1); Gittins reaches ~6.3 on two arms
    assert sum(result.test_returns) > 5.6, result.test_returns
