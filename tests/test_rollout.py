"""Multi-task rollouts into one ``[T, E, H]`` EpisodeBatch, on native and on Gymnasium vector envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import LIGHT_FAMILY_IDS
from gymnasium.vector import AutoresetMode
from metarl.envs import Navigation2D, SparsePointRobot

from metarl.rollout import EpisodeBatch, RandomPolicy, collect_episodes
from metarl.vector import TorchVectorEnv

NUM_TASKS, EPISODES = 3, 2
NUM_ENVS = NUM_TASKS * EPISODES
MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP]
TESTED_FAMILY_IDS = LIGHT_FAMILY_IDS  # against the torch-native envs; the MuJoCo ones: test_mujoco_families.py


def make_envs(family, kind: str, mode: AutoresetMode = AutoresetMode.NEXT_STEP) -> gym.vector.VectorEnv:
    if kind == "native":
        envs = family.make_vec_env(NUM_ENVS, autoreset_mode=mode)
        assert isinstance(envs, TorchVectorEnv)
        return envs
    return gym.vector.SyncVectorEnv([family.make_env] * NUM_ENVS, autoreset_mode=mode)


def sample_tasks(family, seed: int = 0) -> list:
    return family.sample_tasks(np.random.default_rng(seed), NUM_TASKS)


def goal_seeking_policy(tasks, max_action: float):
    """Moves every episode of task t straight to task t's goal (clipped to the action box)."""
    goals = torch.tensor([task.goal for task in tasks], dtype=torch.float32)

    def policy(observations: torch.Tensor, params) -> torch.Tensor:
        return (goals[:, None, :] - observations).clamp(-max_action, max_action)

    return policy


def replay_single_env(family, task, seed: int, actions: torch.Tensor) -> dict[str, np.ndarray]:
    """Play one episode's recorded ``actions`` on a fresh single env seeded like its sub-env."""
    env = family.make_env()
    obs, _ = env.reset(seed=seed, options={"task": task})
    record = {"observations": [obs], "rewards": [], "terminated": []}
    for action in actions.numpy():
        obs, reward, terminated, truncated, _ = env.step(action)
        record["observations"].append(obs)
        record["rewards"].append(reward)
        record["terminated"].append(terminated)
        if terminated or truncated:
            break
    return {key: np.asarray(value) for key, value in record.items()}


def assert_batches_equal(a: EpisodeBatch, b: EpisodeBatch) -> None:
    for name in ("observations", "actions", "rewards", "masks", "terminated", "last_observations"):
        got, want = getattr(a, name), getattr(b, name)
        assert got.dtype == want.dtype, name
        assert torch.equal(got, want), name
    assert a.infos.keys() == b.infos.keys()
    for key in a.infos:
        assert torch.equal(a.infos[key], b.infos[key]), key
    assert a.tasks == b.tasks
    assert a.task_params.keys() == b.task_params.keys()
    for key in a.task_params:
        assert torch.equal(a.task_params[key], b.task_params[key]), key


def test_batch_shapes_and_dtypes(family):
    tasks = sample_tasks(family)
    batch = collect_episodes(make_envs(family, "native"), family, tasks, EPISODES, RandomPolicy(family.action_space))
    assert isinstance(batch, EpisodeBatch)
    prefix = (NUM_TASKS, EPISODES, family.horizon)
    obs_shape, act_shape = family.observation_space.shape, family.action_space.shape
    assert batch.observations.shape == (*prefix, *obs_shape)
    assert batch.actions.shape == (*prefix, *act_shape)
    assert batch.rewards.shape == batch.masks.shape == batch.terminated.shape == prefix
    assert batch.last_observations.shape == (NUM_TASKS, EPISODES, *obs_shape)
    assert batch.lengths.shape == batch.returns.shape == (NUM_TASKS, EPISODES)
    assert batch.observations.dtype == batch.rewards.dtype == batch.masks.dtype == torch.float32
    assert batch.terminated.dtype == torch.bool
    discrete = isinstance(family.action_space, gym.spaces.Discrete)
    assert batch.actions.dtype == (torch.int64 if discrete else torch.float32)
    for name, array in family.task_arrays(tasks).items():
        assert batch.task_params[name].shape == array.shape
        assert batch.task_params[name].shape[0] == NUM_TASKS


def test_masks_are_one_then_zero_and_padding_is_zero(family):
    tasks = sample_tasks(family)
    batch = collect_episodes(make_envs(family, "native"), family, tasks, EPISODES, RandomPolicy(family.action_space))
    masks = batch.masks
    assert ((masks == 0) | (masks == 1)).all()
    assert (masks[..., 0] == 1).all()
    assert (masks[..., 1:] <= masks[..., :-1]).all()  # monotone: once an episode ends it stays ended
    padded = masks == 0
    assert (batch.rewards[padded] == 0).all()
    assert (batch.actions[padded] == 0).all()
    assert not batch.terminated[padded].any()
    # a terminated episode terminates on its last real step, and only there
    lengths = batch.lengths.long()
    last_step = torch.nn.functional.one_hot(lengths - 1, family.horizon).bool()
    assert not (batch.terminated & ~last_step).any()
    assert torch.equal(batch.lengths, masks.sum(dim=-1))
    assert torch.equal(batch.returns, batch.rewards.sum(dim=-1))
    if family.horizon == 1:  # the bandit: every episode is one pull that terminates
        assert batch.terminated.all()
    else:  # random actions end no episode early in the other families
        assert (lengths == family.horizon).all()


def test_batch_carries_tasks_and_their_parameters(family):
    tasks = sample_tasks(family)
    envs = make_envs(family, "native")
    batch = collect_episodes(envs, family, tasks, EPISODES, RandomPolicy(family.action_space), seed=0)
    assert batch.tasks == tuple(tasks)
    expected = family.task_arrays(tasks)
    assert batch.task_params.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(batch.task_params[name].numpy(), array, err_msg=name)
    # sub-env t * E + e played episode e of task t
    assert envs.get_tasks() == tuple(task for task in tasks for _ in range(EPISODES))


def test_episodes_match_single_env_replays(family):
    """Every episode of the batch is what a single env seeded like its sub-env gives for the same actions."""
    tasks = sample_tasks(family)
    batch = collect_episodes(
        make_envs(family, "native"), family, tasks, EPISODES, RandomPolicy(family.action_space, seed=1), seed=100
    )
    for t in range(NUM_TASKS):
        for e in range(EPISODES):
            length = int(batch.lengths[t, e])
            replay = replay_single_env(family, tasks[t], 100 + t * EPISODES + e, batch.actions[t, e, :length])
            assert len(replay["rewards"]) == length
            np.testing.assert_array_equal(batch.observations[t, e, :length].numpy(), replay["observations"][:-1])
            np.testing.assert_array_equal(batch.rewards[t, e, :length].numpy(), replay["rewards"].astype(np.float32))
            np.testing.assert_array_equal(batch.terminated[t, e, :length].numpy(), replay["terminated"])
            np.testing.assert_array_equal(batch.last_observations[t, e].numpy(), replay["observations"][-1])


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.value)
def test_native_and_sync_vector_env_give_identical_batches(family, mode):
    tasks = sample_tasks(family)
    batches = [
        collect_episodes(
            make_envs(family, kind, mode), family, tasks, EPISODES, RandomPolicy(family.action_space, seed=7), seed=3
        )
        for kind in ("native", "sync")
    ]
    assert_batches_equal(*batches)


def test_same_seed_gives_identical_batches(family):
    tasks = sample_tasks(family)

    def collect(seed: int, policy_seed: int) -> EpisodeBatch:
        policy = RandomPolicy(family.action_space, seed=policy_seed)
        return collect_episodes(make_envs(family, "native"), family, tasks, EPISODES, policy, seed=seed)

    first = collect(5, 0)
    assert_batches_equal(first, collect(5, 0))
    other_policy = collect(5, 1)
    assert not torch.equal(first.actions, other_policy.actions)
    if not isinstance(family, Navigation2D | SparsePointRobot):  # only the other families draw random numbers
        other_seed = collect(1000, 0)
        assert torch.equal(first.actions, other_seed.actions)
        assert not torch.equal(first.rewards, other_seed.rewards)


def test_seed_none_continues_the_streams(family):
    tasks = sample_tasks(family)
    envs = make_envs(family, "native")
    policy = RandomPolicy(family.action_space, seed=0)
    first = collect_episodes(envs, family, tasks, EPISODES, policy, seed=9)
    second = collect_episodes(envs, family, tasks, EPISODES, policy)
    assert first.tasks == second.tasks
    fresh = collect_episodes(make_envs(family, "native"), family, tasks, EPISODES, policy, seed=9)
    assert not torch.equal(first.actions, fresh.actions)  # the policy's generator moved on too


@pytest.mark.parametrize("kind", ["native", "sync"])
@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.value)
def test_last_observations_of_terminated_episodes(kind, mode):
    family = Navigation2D(horizon=12)
    tasks = family.sample_tasks(np.random.default_rng(4), NUM_TASKS)
    policy = goal_seeking_policy(tasks, family.max_step)
    batch = collect_episodes(make_envs(family, kind, mode), family, tasks, EPISODES, policy, seed=0)
    lengths = batch.lengths.long()
    assert len(set(lengths[:, 0].tolist())) > 1  # the tasks' episodes end at different times
    assert (lengths < family.horizon).all()
    assert batch.terminated.any(dim=-1).all()
    goals = batch.task_params["goal"].float()
    for t in range(NUM_TASKS):
        for e in range(EPISODES):
            length = int(lengths[t, e])
            assert batch.terminated[t, e, length - 1]
            # the last observation is the position after the last real step: at the goal, not the reset origin
            step = batch.actions[t, e, length - 1].clamp(-family.max_step, family.max_step)
            expected = batch.observations[t, e, length - 1] + step
            assert torch.equal(batch.last_observations[t, e], expected)
            assert (batch.last_observations[t, e] - goals[t]).abs().max() < family.goal_tolerance
            replay = replay_single_env(family, tasks[t], t * EPISODES + e, batch.actions[t, e, :length])
            np.testing.assert_array_equal(batch.last_observations[t, e].numpy(), replay["observations"][-1])


@pytest.mark.parametrize("kind", ["native", "sync"])
@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.value)
def test_last_observations_of_truncated_episodes(kind, mode):
    family = SparsePointRobot(horizon=6)
    tasks = family.sample_tasks(np.random.default_rng(5), NUM_TASKS)
    batch = collect_episodes(
        make_envs(family, kind, mode), family, tasks, EPISODES, RandomPolicy(family.action_space, seed=2), seed=0
    )
    assert (batch.lengths == family.horizon).all()
    assert not batch.terminated.any()
    step = family.max_step * batch.actions[:, :, -1].clamp(-1.0, 1.0)
    expected = batch.observations[:, :, -1] + step
    assert torch.equal(batch.last_observations, expected)
    assert not torch.equal(batch.last_observations, torch.zeros_like(batch.last_observations))  # not the reset obs


def test_sparse_point_robot_reports_success():
    family = SparsePointRobot()
    tasks = family.sample_tasks(np.random.default_rng(6), NUM_TASKS)
    policy = goal_seeking_policy(tasks, 1.0)
    batch = collect_episodes(make_envs(family, "native"), family, tasks, EPISODES, policy, seed=0)
    success = batch.infos["success"]
    assert success.shape == (NUM_TASKS, EPISODES, family.horizon)
    assert success.dtype == torch.float32
    # inside the goal radius exactly when rewarded (the reward is 1 - distance >= 0.8 there)
    assert torch.equal(success, (batch.rewards > 0).float())
    assert success[..., -1].all()  # the goal is reached after 10 steps and the robot stays there
    assert not success[..., 0].any()  # the goal is 1 away from the start
    assert torch.equal(batch.successes, torch.ones(NUM_TASKS, EPISODES))  # an episode succeeds at any step
    standing_still = collect_episodes(
        make_envs(family, "native"), family, tasks, EPISODES, goal_seeking_policy(tasks, 0.0), seed=0
    )
    assert torch.equal(standing_still.successes, torch.zeros(NUM_TASKS, EPISODES))


def test_a_family_without_success_has_no_episode_successes():
    family = Navigation2D()
    tasks = family.sample_tasks(np.random.default_rng(6), NUM_TASKS)
    batch = collect_episodes(make_envs(family, "native"), family, tasks, EPISODES, goal_seeking_policy(tasks, 0.1))
    assert batch.successes is None


@pytest.mark.parametrize("kind", ["native", "sync"])
def test_info_keys(family, kind):
    tasks = sample_tasks(family)
    batch = collect_episodes(make_envs(family, kind), family, tasks, EPISODES, RandomPolicy(family.action_space))
    assert set(batch.infos) == ({"success", "dense_reward"} if isinstance(family, SparsePointRobot) else set())


@pytest.mark.parametrize("kind", ["native", "sync"])
def test_sparse_point_robot_reports_the_dense_reward_beside_the_sparse_one(kind):
    """``info["dense_reward"]`` is minus the distance to the goal after the step (PEARL's critics learn from it);
    the reward stays sparse."""
    family = SparsePointRobot()
    tasks = family.sample_tasks(np.random.default_rng(6), NUM_TASKS)
    policy = goal_seeking_policy(tasks, 1.0)
    batch = collect_episodes(make_envs(family, kind), family, tasks, EPISODES, policy, seed=0)
    goals = torch.tensor([task.goal for task in tasks], dtype=torch.float32)[:, None, None]
    positions = torch.cat([batch.observations[..., 1:, :], batch.last_observations[..., None, :]], dim=-2)
    distance = (positions - goals).norm(dim=-1)  # the position after each step
    torch.testing.assert_close(batch.infos["dense_reward"], -distance, rtol=0, atol=1e-6)
    assert (batch.rewards[batch.infos["dense_reward"] < -family.goal_radius] == 0).all()


@pytest.mark.parametrize(
    "mode",
    [
        AutoresetMode.NEXT_STEP,
        AutoresetMode.SAME_STEP,
    ],
    ids=lambda mode: mode.value,
)
def test_success_on_the_last_step_survives_a_sync_vector_env(mode):
    family = SparsePointRobot()
    tasks = family.sample_tasks(np.random.default_rng(6), NUM_TASKS)
    policy = goal_seeking_policy(tasks, 1.0)
    native = collect_episodes(make_envs(family, "native", mode), family, tasks, EPISODES, policy, seed=0)
    sync = collect_episodes(make_envs(family, "sync", mode), family, tasks, EPISODES, policy, seed=0)
    assert native.infos["success"][..., -1].all()
    assert_batches_equal(native, sync)


def test_params_are_passed_to_the_policy():
    family = Navigation2D(horizon=4)
    tasks = family.sample_tasks(np.random.default_rng(0), NUM_TASKS)
    params = {"bias": torch.arange(NUM_TASKS, dtype=torch.float32)}
    calls = []

    def policy(observations: torch.Tensor, received) -> torch.Tensor:
        calls.append((tuple(observations.shape), received))
        return torch.zeros((*observations.shape[:2], 2))

    collect_episodes(make_envs(family, "native"), family, tasks, EPISODES, policy, params=params, seed=0)
    assert len(calls) == family.horizon
    for shape, received in calls:
        assert shape == (NUM_TASKS, EPISODES, 2)
        assert received is params


def test_rollout_stops_once_every_episode_ended():
    family = Navigation2D(horizon=50)
    tasks = family.sample_tasks(np.random.default_rng(1), NUM_TASKS)
    calls = []
    seek = goal_seeking_policy(tasks, family.max_step)

    def policy(observations, params):
        calls.append(1)
        return seek(observations, params)

    batch = collect_episodes(make_envs(family, "native"), family, tasks, EPISODES, policy, seed=0)
    assert len(calls) == int(batch.lengths.max()) < family.horizon
    assert (batch.masks[..., len(calls) :] == 0).all()


def test_num_envs_mismatch_raises(family):
    tasks = sample_tasks(family)
    policy = RandomPolicy(family.action_space)
    for kind in ("native", "sync"):
        envs = make_envs(family, kind)
        with pytest.raises(ValueError, match=r"envs has 6 sub-envs but 3 tasks x 3 episodes need 9"):
            collect_episodes(envs, family, tasks, 3, policy)


@pytest.mark.parametrize("kind", ["native", "sync"])
def test_disabled_autoreset_mode_raises(family, kind):
    envs = make_envs(family, kind, AutoresetMode.DISABLED)
    with pytest.raises(ValueError, match=r"autoreset mode \['NextStep', 'SameStep'\], got .*Disabled"):
        collect_episodes(envs, family, sample_tasks(family), EPISODES, RandomPolicy(family.action_space))
