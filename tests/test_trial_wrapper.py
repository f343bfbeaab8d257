"""The one-trial-per-episode wrapper: Gymnasium's and SB3's env checkers, equality with the batched trial path
(``collect_trials``), the trial semantics a recurrent agent relies on, SB3's PPO on it, and its errors."""

from __future__ import annotations

import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import random_actions
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from metarl.envs import Bandit, BanditTask, GoalTask, Navigation2D, SparsePointRobot
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import metarl
from metarl.tasks import TaskFamily
from metarl.trials import TrialInputs, collect_trials, make_trial_envs, trial_input_size, trial_input_vector
from metarl.wrappers import TrialWrapper, make_trial_env

EXPECTED_CHECKER_WARNINGS = re.compile(
    r"Box observation space (minimum|maximum) value is"  # the previous reward (and positions) are unbounded
    r"|is different from the unwrapped version"  # we check the wrapper itself, on purpose
    r"|Not able to test alternative render modes"  # the families render nothing; a family's env has no spec
    r"|symmetric and normalized Box action space"  # SB3's advice: Navigation2D's actions are in [-0.1, 0.1]
)
NUM_EPISODES = 3


# -- env checkers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("checker", [gymnasium_check_env, sb3_check_env], ids=["gymnasium", "sb3"])
def test_env_checkers_pass(family_id, family, checker):
    env = make_trial_env(family_id, NUM_EPISODES)
    assert env.observation_space.shape == (trial_input_size(family),)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checker(env)
    unexpected = [str(w.message) for w in caught if not EXPECTED_CHECKER_WARNINGS.search(str(w.message))]
    assert unexpected == []


# -- the wrapper path equals the batched path ------------------------------------------------------------------
class ReplayPolicy:
    """A :class:`metarl.trials.TrialPolicy` that plays ``actions[i, t]`` at step ``t`` of trial ``i``, blind."""

    def __init__(self, actions: torch.Tensor) -> None:
        self.actions = actions

    def initial_state(self, num_trials: int) -> int:
        assert num_trials == self.actions.shape[0]
        return 0

    def act(self, inputs: TrialInputs, step: int) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        return self.actions[:, step], step + 1, {}


def homing_actions(family: TaskFamily, task: GoalTask, length: int) -> np.ndarray:
    """``length`` actions that steer a point robot straight at its goal, episode after episode.

    Built by playing them on the family's single env. Navigation2D's episodes then end early (goal reached) and
    SparsePointRobot earns its sparse reward; the actions overshoot the box, so their clipping is exercised too.
    """
    scale = family.max_step if isinstance(family, SparsePointRobot) else 1.0
    env = family.make_env(task)
    observation, _ = env.reset(seed=0)
    actions = []
    for _ in range(length):
        action = ((np.asarray(task.goal) - observation) / scale).astype(np.float32)
        actions.append(action)
        observation, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            observation, _ = env.reset()
    return np.stack(actions)


def trial_actions(family: TaskFamily, tasks: list, num_episodes: int, rng: np.random.Generator) -> np.ndarray:
    """``[N, num_episodes * horizon, *act_shape]`` actions; point robots steer to the goal except in the last."""
    length = num_episodes * family.horizon
    actions = random_actions(family.action_space, rng, (len(tasks), length))
    if isinstance(family, Navigation2D | SparsePointRobot):
        for i in range(len(tasks) - 1):
            actions[i] = homing_actions(family, tasks[i], length)
    return actions


def play_trial(env: TrialWrapper, seed: int, task, actions: np.ndarray) -> tuple[np.ndarray, ...]:
    """One trial of ``task`` on the wrapper: the input vectors acted on, the rewards and the episode of each step."""
    observation, info = env.reset(seed=seed, options={"task": task})
    assert info["episode_index"] == 0
    inputs, rewards, episodes = [], [], []
    for action in actions:
        inputs.append(observation)
        observation, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        episodes.append(info["episode_index"])
        assert not truncated
        if terminated:
            break
    else:
        pytest.fail(f"the trial did not end within {len(actions)} steps")
    return np.stack(inputs), np.asarray(rewards, dtype=np.float32), np.asarray(episodes)


def test_wrapper_equals_collect_trials(family_id, family):
    num_trials, seed = 3, 11
    tasks = family.sample_tasks(np.random.default_rng(0), num_trials)
    actions = trial_actions(family, tasks, NUM_EPISODES, np.random.default_rng(1))
    batch = collect_trials(
        make_trial_envs(family, num_trials), family, tasks, NUM_EPISODES, ReplayPolicy(torch.as_tensor(actions)), seed
    )
    expected_inputs = trial_input_vector(batch.inputs, family.action_space)

    env = make_trial_env(family_id, NUM_EPISODES)  # one wrapper for all trials: reset starts each afresh
    lengths = []
    for i in range(num_trials):
        length = int(batch.masks[i].sum())
        assert batch.masks[i, :length].eq(1).all()  # the real steps are a prefix
        inputs, rewards, episodes = play_trial(env, seed + i, tasks[i], actions[i])
        assert len(rewards) == length, f"trial {i}"
        # exact: both paths run the same float32 maths (the native env is bit-identical to the single one)
        np.testing.assert_array_equal(inputs, expected_inputs[i, :length].numpy(), err_msg=f"inputs, trial {i}")
        np.testing.assert_array_equal(rewards, batch.rewards[i, :length].numpy(), err_msg=f"rewards, trial {i}")
        np.testing.assert_array_equal(episodes, batch.episode_index[i, :length].numpy(), err_msg=f"trial {i}")
        assert env.task == tasks[i] == batch.tasks[i]
        lengths.append(length)

    # the comparison covers what it should
    if isinstance(family, Navigation2D):
        assert lengths[0] < family.horizon  # NUM_EPISODES episodes that all ended early (goal reached)
        assert lengths[-1] == NUM_EPISODES * family.horizon  # random actions: truncations
    elif not getattr(family, "terminates", False):  # (a robot that falls ends its episodes early)
        assert lengths == [NUM_EPISODES * family.horizon] * num_trials
    if isinstance(family, SparsePointRobot):
        assert batch.rewards[0].any()


# -- trial semantics -------------------------------------------------------------------------------------------
def test_flags_episodes_and_tasks_follow_the_trial(family_id, family):
    env = make_trial_env(family_id, NUM_EPISODES)
    rng = np.random.default_rng(2)
    trial_tasks = []
    for trial in range(2):
        observation, _ = env.reset(seed=5 if trial == 0 else None)
        task = env.task
        trial_tasks.append(task)
        flags, episodes, episode_ends = [observation[-1]], [], 0
        for _ in range(NUM_EPISODES * family.horizon):
            action = random_actions(family.action_space, rng, ())
            observation, reward, terminated, truncated, info = env.step(action)
            episodes.append(info["episode_index"])
            assert env.task == env.unwrapped.get_task() == task  # one task for the whole trial
            assert observation[-2] == np.float32(reward)  # the previous reward
            assert not truncated
            if terminated:
                assert observation[-1] == 1.0  # the final observation follows the end of the n-th episode
                break
            flags.append(observation[-1])
            episode_ends += int(observation[-1])
        else:
            pytest.fail("the trial did not end after num_episodes episodes")
        # the flag is 1 exactly at the first step of episodes 2..n
        starts = [t > 0 and episodes[t] != episodes[t - 1] for t in range(len(episodes))]
        assert [bool(f) for f in flags] == starts
        assert episodes[0] == 0 and episodes[-1] == NUM_EPISODES - 1 and episode_ends == NUM_EPISODES - 1
        assert env.episode_index == NUM_EPISODES
        with pytest.raises(RuntimeError, match="after the trial ended"):
            env.step(random_actions(family.action_space, rng, ()))
    if family.num_distinct_tasks is None:  # (two directions: the next trial may draw the same one)
        assert trial_tasks[0] != trial_tasks[1]  # a fresh task per trial


class _HomesFromTheSecondEpisode:
    """A trial policy that stands still in the first episode of a trial and walks to the goal from the second:
    it remembers how many episodes have ended, as a recurrent agent would."""

    def __init__(self, tasks: list) -> None:
        self.goals = torch.tensor(np.array([task.goal for task in tasks]), dtype=torch.float32)

    def initial_state(self, num_trials: int) -> torch.Tensor:
        return torch.zeros(num_trials)

    def act(self, inputs: TrialInputs, state: torch.Tensor):
        episodes_ended = state + inputs.episode_ended
        homing = (self.goals - inputs.observations).clamp(-1.0, 1.0)  # actions are scaled by max_step (0.1)
        return torch.where((episodes_ended > 0)[:, None], homing, 0.0), episodes_ended, {}


@pytest.mark.parametrize("kind", ["native", "sync"])
def test_trials_count_success_per_episode(kind):
    family = SparsePointRobot()
    tasks = family.sample_tasks(np.random.default_rng(3), 5)
    if kind == "native":
        envs = make_trial_envs(family, len(tasks))
    else:  # the Gymnasium path: the success of an episode's last step comes in final_info (same-step autoreset)
        envs = gym.vector.SyncVectorEnv(
            [family.make_env] * len(tasks), autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
        )
    batch = collect_trials(envs, family, tasks, 3, _HomesFromTheSecondEpisode(tasks), seed=0)
    assert batch.infos["success"].shape == batch.rewards.shape
    assert torch.equal(batch.episode_successes, torch.tensor([[0.0, 1.0, 1.0]] * len(tasks)))
    # each episode's last step is a success: on the Gymnasium path it comes in final_info, beside the reset
    last_steps = torch.stack([(batch.episode_index <= e).sum(dim=1) - 1 for e in range(3)], dim=1)
    assert torch.equal(batch.infos["success"].gather(1, last_steps), torch.tensor([[0.0, 1.0, 1.0]] * len(tasks)))


def test_trials_of_a_family_without_success_have_no_episode_successes():
    family = Navigation2D()
    tasks = family.sample_tasks(np.random.default_rng(3), 2)
    batch = collect_trials(make_trial_envs(family, 2), family, tasks, 2, _HomesFromTheSecondEpisode(tasks), seed=0)
    assert batch.episode_successes is None


def test_first_step_encodes_no_previous_action(family):
    env = TrialWrapper(family.make_env(), 2)
    observation, _ = env.reset(seed=0)
    obs_size = int(np.prod(family.observation_space.shape))
    np.testing.assert_array_equal(observation[obs_size:], 0.0)  # no action, reward or episode end yet
    assert observation.dtype == np.float32 and observation in env.observation_space


def test_trial_tasks_are_drawn_with_the_seeded_generator(family):
    if family.num_distinct_tasks is not None:
        pytest.skip("needs more than a few distinct tasks")
    given = family.sample_tasks(np.random.default_rng(1), 3)

    def task_sequence(seed: int, tasks) -> list:
        env = TrialWrapper(family.make_env(), 2, tasks)
        env.reset(seed=seed)
        drawn = [env.task]
        for _ in range(9):
            env.reset()
            drawn.append(env.task)
        return drawn

    from_list = task_sequence(7, given)
    assert set(from_list) <= set(given) and len(set(from_list)) > 1
    assert task_sequence(7, given) == from_list
    sampled = task_sequence(7, None)
    assert len(set(sampled)) == len(sampled)  # fresh tasks from the family's distribution
    assert task_sequence(7, None) == sampled and task_sequence(8, None) != sampled
    # an explicit task wins over the list
    env = TrialWrapper(family.make_env(), 2, given[:1])
    env.reset(seed=0, options={"task": given[2]})
    assert env.task == env.unwrapped.get_task() == given[2]


# -- SB3 -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env_id", "kwargs"), [("MetaRL/TabularMDP-v0", {"horizon": 5}), ("MetaRL/Navigation2D-v0", {"horizon": 5})]
)
def test_sb3_ppo_runs(env_id, kwargs):
    venv = DummyVecEnv([lambda: make_trial_env(env_id, NUM_EPISODES, **kwargs)] * 2)
    model = PPO(
        "MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [16]}, seed=0, device="cpu"
    )
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256


# -- errors ----------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_naming_the_value():
    family = Bandit(num_arms=3)
    with pytest.raises(ValueError, match=r"num_episodes.*got 0"):
        TrialWrapper(family.make_env(), 0)
    with pytest.raises(TypeError, match=r"num_episodes.*2\.5"):
        TrialWrapper(family.make_env(), 2.5)
    with pytest.raises(ValueError, match=r"at least one task.*\[\]"):
        TrialWrapper(family.make_env(), 2, [])
    with pytest.raises(TypeError, match=r"tasks\[1\].*GoalTask"):
        TrialWrapper(family.make_env(), 2, [BanditTask((0.1, 0.2, 0.3)), GoalTask((0.1, 0.2))])
    with pytest.raises(ValueError, match=r"tasks\[0\].*arm_means.*\(0\.5, 0\.5\)"):
        TrialWrapper(family.make_env(), 2, [BanditTask((0.5, 0.5))])
    with pytest.raises(TypeError, match=r"tasks must be a sequence.*got \{BanditTask"):
        TrialWrapper(family.make_env(), 2, {BanditTask((0.1, 0.2, 0.3))})
    with pytest.raises(TypeError, match="Bandit"):
        TrialWrapper(family, 2)  # the family, not its env
    with pytest.raises(ValueError, match="unknown family id 'MetaRL/Nope-v0'"):
        make_trial_env("MetaRL/Nope-v0", 2)
    with pytest.raises(ValueError, match=r"num_arms.*got 1"):
        make_trial_env("MetaRL/Bandit-v0", 2, num_arms=1)

    env = TrialWrapper(family.make_env(), 2)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    with pytest.raises(TypeError, match="GoalTask"):
        env.reset(options={"task": GoalTask((0.1, 0.2))})
    with pytest.raises(ValueError, match=r"unknown reset options.*'tsk'"):
        env.reset(options={"tsk": BanditTask((0.1, 0.2, 0.3))})
    with pytest.raises(ValueError, match=r"seed.*got -1"):
        env.reset(seed=-1)
    with pytest.raises(TypeError, match=r"seed.*got str '3'"):
        env.reset(seed="3")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="got 7"):
        env.step(7)


def test_exported_from_metarl():
    assert metarl.TrialWrapper is TrialWrapper and metarl.make_trial_env is make_trial_env
    assert isinstance(make_trial_env("MetaRL/Bandit-v0", 2), gym.Wrapper)
    # gymnasium.make's env (the MetaEnv under Gymnasium's checker wrappers) works too, as do NumPy integer seeds
    env = TrialWrapper(gym.make("MetaRL/Bandit-v0"), 2)
    observation, _ = env.reset(seed=np.int64(3))
    assert observation in env.observation_space and env.np_random_seed == 3
    assert env.step(0)[2] is False and env.step(1)[2] is True
