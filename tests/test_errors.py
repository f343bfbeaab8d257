"""Every bad input raises at once, with an error that names the bad value and what is allowed."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from metarl.envs import Bandit, BanditTask, GoalTask, Navigation2D, SparsePointRobot, TabularMDP, TabularMDPTask

import metarl
from metarl.registry import family_spec, make_family, register_family
from metarl.rollout import RandomPolicy, collect_episodes
from metarl.tasks import TaskFamily, set_vector_tasks

NUM_ENVS = 3


# -- registry --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lookup", [family_spec, make_family])
def test_unknown_family_id_suggests_close_ids(lookup):
    with pytest.raises(ValueError, match=r"unknown family id 'MetaRL/Navigaton2D-v0'; did you mean .*Navigation2D-v0"):
        lookup("MetaRL/Navigaton2D-v0")
    with pytest.raises(ValueError, match=r"did you mean MetaRL/TabularMDP-v0"):
        lookup("MetaRL/TabularMDP-v1")


def test_unknown_family_id_without_close_match_lists_registered_ids():
    with pytest.raises(ValueError, match=r"unknown family id 'zzz'; registered: .*MetaRL/Bandit-v0"):
        family_spec("zzz")


@pytest.fixture
def throwaway_family():
    """A family class with a name no other test uses; unregistered again after the test."""

    class ThrowawayNavigation(Navigation2D):
        name = "ThrowawayForTestErrors"
        version = 3

    env_id = "MetaRL/ThrowawayForTestErrors-v3"
    yield ThrowawayNavigation, env_id
    # the registries have no public unregister; drop the test's entry so later tests see the suite's families only
    metarl.registry._FAMILIES.pop(env_id, None)
    gym.registry.pop(env_id, None)


@pytest.mark.filterwarnings("ignore:.*Overriding environment:UserWarning")
def test_register_family_accepts_same_class_and_rejects_another_under_the_same_id(throwaway_family):
    family_class, env_id = throwaway_family
    assert register_family(family_class, kwargs={"horizon": 7}) == env_id
    assert env_id in metarl.list_families()
    assert gym.make(env_id).unwrapped.family.horizon == 7
    assert isinstance(make_family(env_id), family_class)
    # registering the same class again is allowed (re-importing a module must not fail)
    assert register_family(family_class, kwargs={"horizon": 7}) == env_id

    class Impostor(Navigation2D):
        name = family_class.name
        version = family_class.version

    message = rf"{re.escape(env_id)} is already registered to .*ThrowawayNavigation; bump Impostor.version"
    with pytest.raises(ValueError, match=message):
        register_family(Impostor)
    assert family_spec(env_id).family_class is family_class


@pytest.mark.parametrize("not_a_family", [dict, int, Navigation2D(), "MetaRL/Bandit-v0", None])
def test_register_family_rejects_non_families(not_a_family):
    with pytest.raises(TypeError, match=r"register_family expects a TaskFamily subclass, got"):
        register_family(not_a_family)


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("bad name!", 0, r"\.name must be letters, digits, '_' or '-', got 'bad name!'"),
        ("Good", -1, r"\.version must be an int >= 0, got -1"),
        ("Good", True, r"\.version must be an int >= 0, got True"),
        ("Good", "1", r"\.version must be an int >= 0, got '1'"),
    ],
)
def test_register_family_rejects_bad_names_and_versions(name, version, message):
    family_class = type("BadlyNamed", (Navigation2D,), {"name": name, "version": version})
    with pytest.raises(ValueError, match=message):
        register_family(family_class)
    assert not any("Good" in env_id or "bad name" in env_id for env_id in metarl.list_families())


def test_register_family_rejects_bad_default_kwargs():
    family_class = type("BadDefaults", (Navigation2D,), {"name": "BadDefaultsForTestErrors", "version": 0})
    with pytest.raises(ValueError, match=r"horizon must be an int >= 1, got 0"):
        register_family(family_class, kwargs={"horizon": 0})
    assert "MetaRL/BadDefaultsForTestErrors-v0" not in metarl.list_families()
    assert "MetaRL/BadDefaultsForTestErrors-v0" not in gym.registry


# -- tasks -----------------------------------------------------------------------------------------------------
def test_task_of_another_family_is_a_type_error():
    env = Bandit().make_env()
    with pytest.raises(TypeError, match=r"Bandit expects a task of type BanditTask, got GoalTask: GoalTask\("):
        env.set_task(GoalTask(goal=(0.1, 0.2)))
    with pytest.raises(TypeError, match=r"Navigation2D expects a task of type GoalTask, got BanditTask"):
        Navigation2D().make_env(BanditTask(arm_means=(0.5,) * 5))
    with pytest.raises(TypeError, match=r"expects a task of type GoalTask, got tuple"):
        Navigation2D().make_env().reset(options={"task": (0.1, 0.2)})


def test_set_task_validates_at_once_and_keeps_the_old_task():
    env = Navigation2D().make_env()
    good = GoalTask(goal=(0.1, 0.2))
    env.reset(seed=0, options={"task": good})
    with pytest.raises(ValueError, match="goal"):
        env.set_task(GoalTask(goal=(2.0, 0.0)))
    env.reset()
    assert env.get_task() == good


@pytest.mark.parametrize(
    ("task_family", "task", "message"),
    [
        (Navigation2D(), GoalTask(goal=(float("nan"), 0.0)), r"task\.goal\[0\] must be a finite number .*got nan"),
        (Navigation2D(), GoalTask(goal=(0.0, float("inf"))), r"task\.goal\[1\] must be a finite number .*got inf"),
        (Navigation2D(), GoalTask(goal=(0.6, 0.0)), r"task\.goal\[0\]=0\.6 is outside .*\[-0\.5, 0\.5\]\^2"),
        (
            Navigation2D(),
            GoalTask(goal=(0.1, 0.2, 0.3)),
            r"task\.goal must be a tuple \(x, y\), got \(0\.1, 0\.2, 0\.3\)",
        ),
        (Navigation2D(), GoalTask(goal=[0.1, 0.2]), r"task\.goal must be a tuple \(x, y\), got \[0\.1, 0\.2\]"),
        (SparsePointRobot(), GoalTask(goal=(0.5, 0.5)), r"task\.goal=\(0\.5, 0\.5\) is not on the upper half"),
        (SparsePointRobot(), GoalTask(goal=(0.0, -1.0)), r"task\.goal=\(0\.0, -1\.0\) is not on the upper half"),
        (SparsePointRobot(), GoalTask(goal=(float("nan"), 1.0)), r"task\.goal\[0\] must be a finite number"),
        (Bandit(), BanditTask(arm_means=(0.1, 0.2, 1.5, 0.3, 0.4)), r"task\.arm_means\[2\] .*\[0\.0, 1\.0\], got 1\.5"),
        (Bandit(), BanditTask(arm_means=(0.1, -0.2, 0.5, 0.3, 0.4)), r"task\.arm_means\[1\] .*got -0\.2"),
        (Bandit(), BanditTask(arm_means=(0.1, 0.2, 0.3)), r"tuple of 5 probabilities, got \(0\.1, 0\.2, 0\.3\)"),
        (Bandit(), BanditTask(arm_means=(0.5, float("nan"), 0.5, 0.5, 0.5)), r"task\.arm_means\[1\] .*got nan"),
    ],
    ids=[
        "nav-nan-goal",
        "nav-inf-goal",
        "nav-goal-out-of-range",
        "nav-goal-3d",
        "nav-goal-list",
        "point-robot-off-circle",
        "point-robot-lower-half",
        "point-robot-nan-goal",
        "bandit-mean-1.5",
        "bandit-negative-mean",
        "bandit-wrong-length",
        "bandit-nan-mean",
    ],
)
def test_bad_task_values_raise_value_error(task_family, task, message):
    with pytest.raises(ValueError, match=message):
        task_family.check_task(task)
    with pytest.raises(ValueError, match=message):
        task_family.make_env().set_task(task)
    with pytest.raises(ValueError, match=message):
        task_family.make_vec_env(2, [task, task])


def tabular_task(family: TabularMDP, **changes) -> TabularMDPTask:
    task = family.sample_tasks(np.random.default_rng(0), 1)[0]
    transitions = np.array(task.transitions)
    reward_means = np.array(task.reward_means)
    if "transitions" in changes:
        transitions = changes["transitions"](transitions)
    if "reward_means" in changes:
        reward_means = changes["reward_means"](reward_means)
    return TabularMDPTask(transitions=_tuples(transitions), reward_means=_tuples(reward_means))


def _tuples(array: np.ndarray) -> tuple:
    return tuple(_tuples(row) for row in array) if array.ndim > 1 else tuple(float(x) for x in array)


def _scale_first_row(transitions: np.ndarray) -> np.ndarray:
    transitions[0, 0] *= 1.1
    return transitions


def _negative_entry(transitions: np.ndarray) -> np.ndarray:
    transitions[1, 2, :2] = [-0.5, transitions[1, 2, 0] + transitions[1, 2, 1] + 0.5]  # still sums to 1
    return transitions


def _nan_reward(reward_means: np.ndarray) -> np.ndarray:
    reward_means[2, 1] = np.nan
    return reward_means


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transitions": _scale_first_row}, r"task\.transitions\[s\]\[a\] must sum to 1 .*off by 0\.1"),
        ({"transitions": _negative_entry}, r"task\.transitions must be finite probabilities >= 0"),
        ({"transitions": lambda p: p[:, :, :-1]}, r"task\.transitions must have shape \(10, 5, 10\), got \(10, 5, 9\)"),
        ({"transitions": lambda p: p[:-1]}, r"task\.transitions must have shape \(10, 5, 10\), got \(9, 5, 10\)"),
        ({"reward_means": lambda r: r[:, :-1]}, r"task\.reward_means must have shape \(10, 5\), got \(10, 4\)"),
        ({"reward_means": _nan_reward}, r"task\.reward_means must be finite"),
        ({"transitions": lambda p: np.where(p == p.max(), np.nan, p)}, r"task\.transitions must be finite"),
    ],
)
def test_bad_tabular_mdp_tasks_raise_value_error(changes, message):
    family = TabularMDP()
    task = tabular_task(family, **changes)
    with pytest.raises(ValueError, match=message):
        family.check_task(task)
    with pytest.raises(ValueError, match=message):
        family.make_env().set_task(task)


def test_ragged_tabular_mdp_task_is_a_value_error():
    family = TabularMDP(num_states=2, num_actions=1)
    task = TabularMDPTask(transitions=(((1.0, 0.0),), ((1.0,),)), reward_means=((0.0,), (0.0,)))
    with pytest.raises(ValueError, match=r"task\.transitions must be a nested tuple of numbers"):
        family.check_task(task)


# -- actions ---------------------------------------------------------------------------------------------------
BOX_BAD_ACTIONS = [
    (np.zeros(3, dtype=np.float32), ValueError, r"shape \(2,\), got shape \(3,\)"),
    (np.zeros((1, 2), dtype=np.float32), ValueError, r"shape \(2,\), got shape \(1, 2\)"),
    (np.float32(0.0), ValueError, r"shape \(2,\), got shape \(\)"),
    (np.array(["a", "b"]), TypeError, r"real array of shape \(2,\), got dtype <U1"),
    (np.array([True, False]), TypeError, r"real array of shape \(2,\), got dtype bool"),
    (np.array([np.nan, 0.0], dtype=np.float32), ValueError, r"action contains NaN"),
]
DISCRETE_BAD_ACTIONS = [
    (1.0, TypeError, r"integer in \[0, 5\), got float 1\.0"),
    (np.float32(1.0), TypeError, r"integer in \[0, 5\), got float32"),
    (True, TypeError, r"integer in \[0, 5\), got bool True"),
    (np.bool_(False), TypeError, r"integer in \[0, 5\), got bool"),
    ("1", TypeError, r"integer in \[0, 5\), got str '1'"),
    (np.array("1"), TypeError, r"integer scalar in \[0, 5\), got shape \(\) dtype <U1"),
    (np.array([1]), TypeError, r"integer scalar in \[0, 5\), got shape \(1,\) dtype int64"),
    (np.array(1.0), TypeError, r"integer scalar in \[0, 5\), got shape \(\) dtype float64"),
    (5, ValueError, r"action must be in \[0, 5\), got 5"),
    (-1, ValueError, r"action must be in \[0, 5\), got -1"),
    (np.int64(7), ValueError, r"action must be in \[0, 5\), got 7"),
]


def bad_single_actions(family):
    if isinstance(family.action_space, gym.spaces.Discrete):
        assert family.action_space.n == 5  # the messages above assume it
        return DISCRETE_BAD_ACTIONS
    return BOX_BAD_ACTIONS


def good_action(family):
    if isinstance(family.action_space, gym.spaces.Discrete):
        return 1
    return np.full(family.action_space.shape, 0.05, dtype=np.float32)


def test_bad_actions_on_the_single_env(light_family):
    family = light_family  # the messages are the light families' (MuJoCo: test_mujoco_families.py)
    env = family.make_env()
    reference = family.make_env()
    env.reset(seed=0)
    reference.reset(seed=0)
    for action, error, message in bad_single_actions(family):
        with pytest.raises(error, match=message):
            env.step(action)
    # a rejected action changed nothing: the env goes on exactly like one that never saw it
    for _ in range(family.horizon):
        got, want = env.step(good_action(family)), reference.step(good_action(family))
        for a, b in zip(got[:4], want[:4], strict=True):
            np.testing.assert_array_equal(a, b)


def bad_vector_actions(family) -> list[tuple[np.ndarray, type[Exception], str]]:
    """Bad action batches for NUM_ENVS sub-envs, for the NumPy API."""
    n = NUM_ENVS
    if isinstance(family.action_space, gym.spaces.Discrete):
        return [
            (np.ones(n, dtype=np.float32), TypeError, r"discrete actions must be integers, got dtype torch\.float32"),
            (np.ones(n, dtype=bool), TypeError, r"discrete actions must be integers, got dtype torch\.bool"),
            (np.array(["1"] * n), TypeError, r"actions must be a numeric array shaped \(3,\)"),
            (np.ones((n, 1), dtype=np.int64), ValueError, r"actions must have shape \(3,\), got \(3, 1\)"),
            (np.ones(n + 1, dtype=np.int64), ValueError, r"actions must have shape \(3,\), got \(4,\)"),
            (np.array([0, 5, 1]), ValueError, r"actions must be in \[0, 5\), got values \[0, 1, 5\]"),
            (np.array([0, -1, 1]), ValueError, r"actions must be in \[0, 5\), got values \[-1, 0, 1\]"),
        ]
    return [
        (np.zeros((n, 3), dtype=np.float32), ValueError, r"actions must have shape \(3, 2\), got \(3, 3\)"),
        (np.zeros(2, dtype=np.float32), ValueError, r"actions must have shape \(3, 2\), got \(2,\)"),
        (np.zeros((n + 1, 2), dtype=np.float32), ValueError, r"actions must have shape \(3, 2\), got \(4, 2\)"),
        (np.array([["a", "b"]] * n), TypeError, r"actions must be a numeric array shaped \(3, 2\)"),
        (np.zeros((n, 2), dtype=bool), TypeError, r"box actions must be real numbers, got dtype torch\.bool"),
        (np.zeros((n, 2), dtype=np.complex64), TypeError, r"box actions must be real numbers, got dtype"),
        (np.array([[0.0, 0.0], [np.nan, 0.0], [0.0, 0.0]]), ValueError, r"actions contain NaN"),
    ]


def good_vector_actions(family) -> np.ndarray:
    if isinstance(family.action_space, gym.spaces.Discrete):
        return np.array([0, 1, 2], dtype=np.int64)
    return np.full((NUM_ENVS, *family.action_space.shape), 0.05, dtype=np.float32)


@pytest.mark.parametrize("api", ["numpy", "tensor"])
def test_bad_actions_on_the_native_vector_env(light_family, api):
    family = light_family  # the messages are the light families' (MuJoCo: test_mujoco_families.py)
    envs = family.make_vec_env(NUM_ENVS)
    reference = family.make_vec_env(NUM_ENVS)
    envs.reset(seed=0)
    reference.reset(seed=0)
    for actions, error, message in bad_vector_actions(family):
        if api == "numpy":
            with pytest.raises(error, match=message):
                envs.step(actions)
        elif actions.dtype.kind != "U":  # torch has no string tensors
            with pytest.raises(error, match=message):
                envs.step_tensor(torch.as_tensor(actions))
    # a rejected batch changed nothing
    for _ in range(family.horizon + 1):
        got, want = envs.step(good_vector_actions(family)), reference.step(good_vector_actions(family))
        for a, b in zip(got[:4], want[:4], strict=True):
            np.testing.assert_array_equal(a, b)


def test_step_tensor_rejects_non_tensors(light_family):
    family = light_family  # the messages are the light families' (MuJoCo: test_mujoco_families.py)
    envs = family.make_vec_env(NUM_ENVS)
    envs.reset(seed=0)
    with pytest.raises(TypeError, match=r"step_tensor expects a torch\.Tensor, got ndarray"):
        envs.step_tensor(good_vector_actions(family))


# -- counts and sizes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("num_envs", "error"), [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_bad_num_envs(family_id, family, num_envs, error):
    message = rf"num_envs must be an int >= 1, got .*{re.escape(repr(num_envs))}"
    with pytest.raises(error, match=message):
        family.make_vec_env(num_envs)
    with pytest.raises(error, match=message):
        TaskFamily.make_vec_env(family, num_envs)  # the generic SyncVectorEnv path
    with pytest.raises(error, match=message):
        gym.make_vec(family_id, num_envs=num_envs, vectorization_mode="vector_entry_point")


def test_unknown_autoreset_mode(family):
    with pytest.raises(ValueError, match=r"unknown autoreset_mode 'Sometimes'; allowed: \['NextStep', 'SameStep'"):
        family.make_vec_env(2, autoreset_mode="Sometimes")


def test_bad_episodes_per_task(family):
    tasks = family.sample_tasks(np.random.default_rng(0), 2)
    envs = family.make_vec_env(2)
    policy = RandomPolicy(family.action_space)
    for episodes_per_task in (0, -1, 1.0, True):
        with pytest.raises(ValueError, match=rf"episodes_per_task must be an int >= 1, got {episodes_per_task!r}"):
            collect_episodes(envs, family, tasks, episodes_per_task, policy)
    with pytest.raises(ValueError, match=r"at least one task, got an empty sequence"):
        collect_episodes(envs, family, [], 1, policy)


@pytest.mark.parametrize("num_tasks", [0, -3])
def test_bad_num_tasks_in_sample_tasks(family, num_tasks):
    with pytest.raises(ValueError, match=rf"num_tasks must be an int >= 1, got {num_tasks}"):
        family.sample_tasks(np.random.default_rng(0), num_tasks)


@pytest.mark.parametrize("family_class", [TabularMDP, Navigation2D, SparsePointRobot])
@pytest.mark.parametrize(("horizon", "error"), [(0, ValueError), (-1, ValueError), (2.5, TypeError), (None, TypeError)])
def test_bad_horizon(family_class, horizon, error):
    message = rf"horizon must be an int >= 1, got .*{re.escape(repr(horizon))}"
    with pytest.raises(error, match=message):
        family_class(horizon=horizon)
    with pytest.raises(error, match=message):
        gym.make(f"MetaRL/{family_class.name}-v{family_class.version}", horizon=horizon)


@pytest.mark.parametrize(("num_arms", "error"), [(1, ValueError), (0, ValueError), (3.0, TypeError)])
def test_bad_num_arms(num_arms, error):
    with pytest.raises(error, match=rf"num_arms must be an int >= 2, got .*{re.escape(repr(num_arms))}"):
        Bandit(num_arms=num_arms)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_states": 1}, ValueError, r"num_states must be an int >= 2, got 1"),
        ({"num_actions": 0}, ValueError, r"num_actions must be an int >= 1, got 0"),
        ({"reward_std": -1.0}, ValueError, r"reward_std must be a finite number in \[0\.0, inf\], got -1\.0"),
        ({"reward_std": float("nan")}, ValueError, r"reward_std must be a finite number .*got nan"),
    ],
)
def test_bad_tabular_mdp_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        TabularMDP(**kwargs)


@pytest.mark.parametrize(
    ("family_class", "kwargs", "message"),
    [
        (Navigation2D, {"goal_low": 0.5, "goal_high": 0.5}, r"goal_low must be < goal_high, got goal_low=0\.5"),
        (Navigation2D, {"goal_tolerance": -0.1}, r"goal_tolerance must be a finite number in \[0\.0, inf\], got -0\.1"),
        (Navigation2D, {"goal_low": float("nan")}, r"goal_low must be a finite number .*got nan"),
        (SparsePointRobot, {"goal_radius": 0.0}, r"goal_radius and max_step must be > 0, got 0\.0, 0\.1"),
        (SparsePointRobot, {"max_step": -1.0}, r"max_step must be a finite number in \[0\.0, inf\], got -1\.0"),
    ],
)
def test_bad_navigation_arguments(family_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        family_class(**kwargs)


# -- vector env tasks and resets -------------------------------------------------------------------------------
def test_set_tasks_with_wrong_length(family):
    envs = family.make_vec_env(NUM_ENVS)
    tasks = family.sample_tasks(np.random.default_rng(0), NUM_ENVS + 1)
    with pytest.raises(ValueError, match=r"set_tasks needs one task per sub-env \(3\), got 4"):
        envs.set_tasks(tasks)
    with pytest.raises(ValueError, match=r"set_tasks needs one task per sub-env \(3\), got 2"):
        family.make_vec_env(NUM_ENVS, tasks[:2])
    with pytest.raises(ValueError, match=r"set_tasks needs one task per sub-env \(3\), got 4"):
        envs.reset(options={"tasks": tasks})
    for vector_env in (envs, gym.vector.SyncVectorEnv([family.make_env] * NUM_ENVS)):
        with pytest.raises(ValueError, match=r"need one task per sub-env \(3\), got 2"):
            set_vector_tasks(vector_env, tasks[:2])


def test_set_tasks_with_a_task_of_another_family(family):
    other = GoalTask(goal=(0.1, 0.1)) if family.task_type is not GoalTask else BanditTask(arm_means=(0.5,) * 5)
    tasks = [*family.sample_tasks(np.random.default_rng(0), NUM_ENVS - 1), other]
    envs = family.make_vec_env(NUM_ENVS)
    expected = (
        rf"{type(family).__name__} expects a task of type {family.task_type.__name__}, got {type(other).__name__}"
    )
    with pytest.raises(TypeError, match=expected):
        envs.set_tasks(tasks)
    with pytest.raises(TypeError, match=expected):
        set_vector_tasks(gym.vector.SyncVectorEnv([family.make_env] * NUM_ENVS), tasks)


@pytest.mark.parametrize(
    ("reset_mask", "message"),
    [
        (np.array([1, 0, 1]), r"bool array of shape \(3,\), got shape \(3,\) dtype int64"),
        (np.array([True, False]), r"bool array of shape \(3,\), got shape \(2,\) dtype bool"),
        (np.ones((3, 1), dtype=bool), r"bool array of shape \(3,\), got shape \(3, 1\) dtype bool"),
        (np.zeros(3, dtype=bool), r"must select at least one sub-env"),
        (torch.zeros(3, dtype=torch.bool), r"must select at least one sub-env"),
        ([True, False, True, True], r"bool array of shape \(3,\), got shape \(4,\)"),
    ],
)
def test_reset_with_a_bad_reset_mask(family, reset_mask, message):
    envs = family.make_vec_env(NUM_ENVS)
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        envs.reset(options={"reset_mask": reset_mask})


def test_reset_with_bad_options_or_seeds(family):
    envs = family.make_vec_env(NUM_ENVS)
    with pytest.raises(ValueError, match=r"unknown reset options \['task'\]; allowed: 'tasks', 'reset_mask'"):
        envs.reset(options={"task": family.sample_tasks(np.random.default_rng(0), 1)[0]})
    with pytest.raises(ValueError, match=r"seed list must have one seed per sub-env \(3\), got 2"):
        envs.reset(seed=[1, 2])


def test_disabled_autoreset_refuses_to_step_ended_subenvs():
    envs = Bandit().make_vec_env(4, autoreset_mode=AutoresetMode.DISABLED)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    envs.reset(seed=0)
    actions = np.zeros(4, dtype=np.int64)
    _, _, terminated, _, _ = envs.step(actions)  # a bandit episode is one pull
    assert terminated.all()
    with pytest.raises(RuntimeError, match=r"step\(\) on sub-envs \[0, 1, 2, 3\] that need a reset.*reset_mask"):
        envs.step(actions)
    envs.reset(options={"reset_mask": np.array([True, False, True, False])})
    with pytest.raises(RuntimeError, match=r"step\(\) on sub-envs \[1, 3\] that need a reset"):
        envs.step_tensor(torch.zeros(4, dtype=torch.int64))
    envs.reset(options={"reset_mask": np.array([False, True, False, True])})
    envs.step(actions)


def test_step_before_reset_on_the_single_env(family):
    env = family.make_env()
    with pytest.raises(RuntimeError, match=r"step\(\) called before reset\(\)"):
        env.step(good_action(family))


def test_step_before_reset_on_the_disabled_native_env(family):
    envs = family.make_vec_env(NUM_ENVS, autoreset_mode=AutoresetMode.DISABLED)
    with pytest.raises(RuntimeError, match=r"step\(\).*sub-envs \[0, 1, 2\]"):
        envs.step(good_vector_actions(family))


def test_step_before_reset_on_the_next_step_native_env(family):
    envs = family.make_vec_env(NUM_ENVS, autoreset_mode=AutoresetMode.NEXT_STEP)
    with pytest.raises(RuntimeError, match=r"reset"):
        envs.step(good_vector_actions(family))


def test_step_after_a_partial_first_reset_on_the_next_step_native_env():
    # Gymnasium's SyncVectorEnv raises here: its sub-envs 1 and 2 were never reset
    envs = Navigation2D().make_vec_env(NUM_ENVS, autoreset_mode=AutoresetMode.NEXT_STEP)
    envs.reset(seed=0, options={"reset_mask": np.array([True, False, False])})
    with pytest.raises(RuntimeError, match=r"\[1, 2\]"):
        envs.step(np.zeros((NUM_ENVS, 2), dtype=np.float32))
