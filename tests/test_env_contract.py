"""The Gymnasium and task contract of every registered family's single env, and the vector envs Gymnasium builds."""

from __future__ import annotations

import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import FAMILY_IDS, SUITE_FAMILY_IDS, random_actions
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from metarl.envs import GoalTask, SparsePointRobot

import metarl
from metarl.env import TaskHolder
from metarl.mujoco_envs import MuJoCoFamily, MuJoCoVectorEnv
from metarl.tasks import set_vector_tasks
from metarl.vector import TorchVectorEnv

# positions are unbounded by design (also ignored in pyproject's filterwarnings)
EXPECTED_CHECKER_WARNING = re.compile(r"Box observation space (minimum|maximum) value is")


def rollout(env: gym.Env, seed: int, num_steps: int, actions: np.ndarray, options: dict | None = None) -> dict:
    """Reset with ``seed`` once, then step through ``actions``, resetting (unseeded) whenever an episode ends."""
    obs, _ = env.reset(seed=seed, options=options)
    record = {"obs": [obs], "rewards": [], "terminated": [], "truncated": [], "resets": 0}
    for step in range(num_steps):
        obs, reward, terminated, truncated, _ = env.step(actions[step])
        record["obs"].append(obs)
        record["rewards"].append(reward)
        record["terminated"].append(terminated)
        record["truncated"].append(truncated)
        if terminated or truncated:
            obs, _ = env.reset()
            record["obs"].append(obs)
            record["resets"] += 1
    return {key: np.asarray(value) for key, value in record.items()}


def num_steps_for(family) -> int:
    return max(3 * family.horizon + 2, 40)


def test_import_envs_registers_the_suite_families():
    assert sorted(FAMILY_IDS) == sorted(SUITE_FAMILY_IDS)
    for env_id in SUITE_FAMILY_IDS:
        assert env_id in gym.registry


def test_check_env_passes(family_id):
    env = gym.make(family_id).unwrapped
    assert isinstance(env, TaskHolder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # MuJoCo's render modes need a display or an OpenGL context, which a headless test machine lacks
        check_env(env, skip_render_check=isinstance(env.family, MuJoCoFamily))
    unexpected = [str(w.message) for w in caught if not EXPECTED_CHECKER_WARNING.search(str(w.message))]
    assert unexpected == []


def test_same_seed_rollouts_are_identical(family_id, family):
    num_steps = num_steps_for(family)
    actions = random_actions(family.action_space, np.random.default_rng(3), (num_steps,))
    envs = [gym.make(family_id) for _ in range(3)]
    first = rollout(envs[0], 17, num_steps, actions)
    second = rollout(envs[1], 17, num_steps, actions)
    assert first["resets"] >= 2  # the episodes cross resets
    for key in ("obs", "rewards", "terminated", "truncated"):
        assert first[key].dtype == second[key].dtype
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert envs[0].unwrapped.get_task() == envs[1].unwrapped.get_task()
    # another seed draws another default task (and another stream)
    other = rollout(envs[2], 18, num_steps, actions)
    if family.num_distinct_tasks is None:  # with two tasks, another seed may well draw the same one
        assert envs[2].unwrapped.get_task() != envs[0].unwrapped.get_task()
    if not isinstance(family, SparsePointRobot):  # random actions never earn a sparse reward
        assert not np.array_equal(first["rewards"], other["rewards"])


def test_reseeding_the_same_env_reproduces_the_rollout(family):
    num_steps = num_steps_for(family)
    actions = random_actions(family.action_space, np.random.default_rng(4), (num_steps,))
    env = family.make_env()
    first = rollout(env, 5, num_steps, actions)
    second = rollout(env, 5, num_steps, actions)
    for key in ("obs", "rewards", "terminated", "truncated"):
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def two_distinct_tasks(family, seed: int = 0):
    """Two tasks of ``family``; for goal tasks, the pair of goals farthest apart among a few draws."""
    tasks = family.sample_tasks(np.random.default_rng(seed), 8)
    if isinstance(tasks[0], GoalTask):
        goals = np.array([task.goal for task in tasks])
        distances = np.linalg.norm(goals[:, None] - goals[None], axis=-1)
        i, j = np.unravel_index(distances.argmax(), distances.shape)
        return tasks[i], tasks[j]
    return tasks[0], next(task for task in tasks[1:] if task != tasks[0])


def distinguishing_actions(family, task, num_steps: int) -> np.ndarray:
    """A fixed action sequence; for the sparse point robot, one heading to ``task``'s goal (random actions never
    enter a goal's radius, so every task would give all-zero rewards)."""
    if isinstance(family, SparsePointRobot):
        direction = np.asarray(task.goal, dtype=np.float32)  # on the unit circle: reached after 1 / max_step steps
        return np.tile(direction, (num_steps, 1))
    return random_actions(family.action_space, np.random.default_rng(6), (num_steps,))


def test_set_task_changes_rewards(family):
    task_a, task_b = two_distinct_tasks(family)
    assert task_a != task_b
    num_steps = max(3 * family.horizon, 200)  # the bandit: 200 one-pull episodes
    actions = distinguishing_actions(family, task_a, num_steps)
    rewards = {}
    for name, task in (("a", task_a), ("b", task_b)):
        env = family.make_env()
        env.set_task(task)
        rewards[name] = rollout(env, 0, num_steps, actions)["rewards"]
        assert env.get_task() == task
    assert not np.array_equal(rewards["a"], rewards["b"])
    if isinstance(family, SparsePointRobot):
        assert (rewards["a"] > 0).any()


def test_reset_options_task_applies_the_task(family):
    task_a, task_b = two_distinct_tasks(family)
    env = family.make_env(task_a)
    assert env.get_task() is None  # a task given to the constructor is played from the first reset
    env.reset(seed=0)
    assert env.get_task() == task_a
    env.reset(options={"task": task_b})
    assert env.get_task() == task_b
    expected = family.task_arrays([task_b])
    assert sorted(env.task_params) == sorted(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(env.task_params[name], array[0], err_msg=name)


def test_set_task_is_effective_at_the_next_reset_only(family):
    task_a, task_b = two_distinct_tasks(family)
    num_steps = max(family.horizon, 20)
    actions = distinguishing_actions(family, task_a, num_steps)
    env = family.make_env()
    reference = family.make_env()
    env.reset(seed=1, options={"task": task_a})
    reference.reset(seed=1, options={"task": task_a})
    env.set_task(task_b)
    assert env.get_task() == task_a
    assert env.task == task_a
    # until the next reset the env keeps playing task a, step for step like an env that never heard of task b
    for step in range(family.horizon):
        result = env.step(actions[step])
        expected = reference.step(actions[step])
        for got, want in zip(result[:4], expected[:4], strict=True):
            np.testing.assert_array_equal(got, want)
        assert env.get_task() == task_a
        if result[2] or result[3]:  # a robot that fell ends its episode early
            break
    env.reset()
    assert env.get_task() == task_b


def test_task_attribute_assignment_is_set_task(family):
    task_a, task_b = two_distinct_tasks(family)
    env = family.make_env()
    env.reset(seed=0, options={"task": task_a})
    env.task = task_b
    assert env.task == task_a
    env.reset()
    assert env.task == task_b


def test_make_vec_vector_entry_point_is_native(family_id):
    envs = gym.make_vec(family_id, num_envs=4, vectorization_mode="vector_entry_point")
    assert isinstance(envs, TorchVectorEnv | MuJoCoVectorEnv)
    assert envs.num_envs == 4
    assert isinstance(envs.metadata["autoreset_mode"], AutoresetMode)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    same_step = gym.make_vec(
        family_id, num_envs=2, vectorization_mode="vector_entry_point", autoreset_mode=AutoresetMode.SAME_STEP
    )
    assert same_step.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (4, *envs.single_observation_space.shape)
    assert envs.observation_space.contains(obs)


def test_make_vec_passes_family_kwargs_to_the_native_env(family_id, family):
    if "horizon" not in family.config():
        pytest.skip("this family has no horizon argument")
    envs = gym.make_vec(family_id, num_envs=2, vectorization_mode="vector_entry_point", horizon=3)
    assert envs.family.horizon == 3
    assert gym.make(family_id, horizon=3).unwrapped.family.horizon == 3


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_gymnasium_vector_envs_take_per_subenv_tasks(family_id, family, mode):
    num_envs = 3 if mode == "sync" else 2
    envs = gym.make_vec(family_id, num_envs, vectorization_mode=mode)
    try:
        tasks = family.sample_tasks(np.random.default_rng(9), num_envs)
        set_vector_tasks(envs, tasks)
        assert tuple(envs.get_attr("task")) == (None,) * num_envs  # effective at the next reset
        obs, _ = envs.reset(seed=0)
        assert tuple(envs.get_attr("task")) == tuple(tasks)
        assert obs.shape == (num_envs, *family.observation_space.shape)
        actions = random_actions(family.action_space, np.random.default_rng(0), (num_envs,))
        _, rewards, _, _, _ = envs.step(actions)
        assert rewards.shape == (num_envs,)
        # new tasks replace the old ones at the next reset
        new_tasks = family.sample_tasks(np.random.default_rng(10), num_envs)
        set_vector_tasks(envs, new_tasks)
        assert tuple(envs.get_attr("task")) == tuple(tasks)
        envs.reset()
        assert tuple(envs.get_attr("task")) == tuple(new_tasks)
    finally:
        envs.close()


def test_episode_is_truncated_exactly_at_the_horizon(family_id, family):
    if getattr(family, "terminates", False):  # a robot that can fall: a horizon it stands through doing nothing
        family = metarl.make_family(family_id, horizon=5)
    env = family.make_env()
    task = family.sample_tasks(np.random.default_rng(2), 1)[0]
    env.reset(seed=0, options={"task": task})
    if isinstance(family.action_space, gym.spaces.Discrete):
        action = 0
    elif isinstance(task, GoalTask) and family.action_space.shape == (2,):
        # head away from the goal, so the robot never reaches it
        action = -np.sign(np.asarray(task.goal, dtype=np.float32)) * family.action_space.high
    else:
        action = np.zeros(family.action_space.shape, dtype=family.action_space.dtype)
    for step in range(1, family.horizon + 1):
        _, _, terminated, truncated, _ = env.step(action)
        if family_id == "MetaRL/Bandit-v0":
            # one pull per episode: it terminates (not truncates) at its horizon of 1
            assert (terminated, truncated) == (True, False)
        else:
            assert not terminated
            assert truncated == (step == family.horizon), step
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(action)


@pytest.mark.parametrize("horizon", [1, 3])
def test_horizon_argument_sets_the_truncation_step(family_id, family, horizon):
    if "horizon" not in family.config():
        pytest.skip("this family has no horizon argument")
    env = gym.make(family_id, horizon=horizon)
    env.reset(seed=0)
    actions = random_actions(family.action_space, np.random.default_rng(0), (horizon,))
    truncations = [env.step(action)[3] for action in actions]
    assert truncations == [False] * (horizon - 1) + [True]


def test_family_ids_are_namespaced_and_versioned():
    for env_id in FAMILY_IDS:
        family_class = metarl.registry.family_spec(env_id).family_class
        assert env_id == f"MetaRL/{family_class.name}-v{family_class.version}"
        spec = gym.spec(env_id)
        assert (spec.namespace, spec.name, spec.version) == ("MetaRL", family_class.name, family_class.version)
        assert (spec.vector_entry_point is not None) == (family_class.vector_env_class is not None)


def test_stable_baselines3_vec_env_sets_tasks_with_env_method(family_id, family):
    from stable_baselines3.common.env_util import make_vec_env

    envs = make_vec_env(family_id, n_envs=2, seed=0)
    try:
        tasks = family.sample_tasks(np.random.default_rng(3), 2)
        for i, task in enumerate(tasks):
            envs.env_method("set_task", task, indices=i)
        envs.reset()
        assert envs.env_method("get_task") == list(tasks)
        actions = random_actions(family.action_space, np.random.default_rng(0), (2,))
        _, rewards, _, _ = envs.step(actions)
        assert rewards.shape == (2,)
    finally:
        envs.close()
