"""The MuJoCo families: batched env equals single env bit for bit, v5 fidelity, dynamics tasks, bad input, stability.

The registry-wide contract (``check_env``, determinism rollouts, task semantics, horizons) runs on these families in
test_env_contract.py like on every other.
"""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
from conftest import TINY_RL2_CONFIG, TINY_TRAIN_CONFIG, random_actions
from gymnasium.vector import AutoresetMode
from metarl.envs import (
    MUJOCO_FAMILIES,
    AntDir,
    AntDir2D,
    AntGoal,
    AntVel,
    Direction2DTask,
    DirectionTask,
    DynamicsTask,
    GoalTask,
    HalfCheetahDir,
    HalfCheetahRandParams,
    HalfCheetahVel,
    HopperRandParams,
    VelocityTask,
    Walker2dRandParams,
)

import metarl
from metarl.mujoco_envs import MuJoCoVectorEnv
from metarl.presets import config_from_dict, load_config
from metarl.trainer import train

MUJOCO_IDS = [f"MetaRL/{family.name}-v0" for family in MUJOCO_FAMILIES]
DYNAMICS = (HalfCheetahRandParams, HopperRandParams, Walker2dRandParams)


def identity_task(family) -> DynamicsTask:
    return DynamicsTask(**{name: (1.0,) * values.size for name, values in family.base_parameters.items()})


def play_single(family, task, seed: int, actions: np.ndarray) -> list[tuple]:
    """Reset once with ``seed`` and step through ``actions``, resetting (unseeded) where an episode ended, as a
    vector env in NEXT_STEP mode does: the step after an episode's end is its reset."""
    env = family.make_env()
    obs, _ = env.reset(seed=seed, options={"task": task})
    records, done = [("reset", obs)], False
    for action in actions:
        if done:
            obs, _ = env.reset()
            records.append(("reset", obs))
            done = False
            continue
        obs, reward, terminated, truncated, _ = env.step(action)
        records.append(("step", obs, reward, terminated, truncated))
        done = terminated or truncated
    return records


@pytest.mark.parametrize("mujoco_id", MUJOCO_IDS)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_batched_env_equals_single_env_bit_for_bit(mujoco_id, num_threads):
    family = metarl.make_family(mujoco_id, horizon=30)
    tasks = family.sample_tasks(np.random.default_rng(1), 3)
    num_steps = 100  # several episodes each, and for the robots that fall, episodes that end early
    actions = random_actions(family.action_space, np.random.default_rng(2), (num_steps, 3))
    envs = family.make_vec_env(3, tasks, num_threads=num_threads)
    obs, _ = envs.reset(seed=7)
    batched = [[("reset", obs[i])] for i in range(3)]
    ended = np.zeros(3, dtype=bool)
    for step in range(num_steps):
        obs, rewards, terminated, truncated, _ = envs.step(actions[step])
        for i in range(3):
            if ended[i]:
                batched[i].append(("reset", obs[i]))
            else:
                batched[i].append(("step", obs[i], rewards[i], terminated[i], truncated[i]))
        ended = terminated | truncated
    envs.close()
    for i in range(3):
        single = play_single(family, tasks[i], 7 + i, actions[:, i])
        assert len(single) == len(batched[i])
        for got, want in zip(batched[i], single, strict=True):
            assert got[0] == want[0]
            for a, b in zip(got[1:], want[1:], strict=True):
                np.testing.assert_array_equal(a, b)  # exact: max abs difference 0


@pytest.mark.parametrize("family_class", [HalfCheetahVel, AntGoal, HopperRandParams])
def test_same_step_autoreset_equals_the_single_env(family_class):
    """In SAME_STEP mode an ended episode's sub-env resets in the same step: its final observation is in
    ``info["final_obs"]``, the observation returned is the new episode's first."""
    family = family_class(horizon=20)
    task = family.sample_tasks(np.random.default_rng(0), 1)[0]
    actions = random_actions(family.action_space, np.random.default_rng(1), (70, 1))
    envs = family.make_vec_env(1, [task], autoreset_mode=AutoresetMode.SAME_STEP)
    single = family.make_env()
    np.testing.assert_array_equal(envs.reset(seed=3)[0][0], single.reset(seed=3, options={"task": task})[0])
    ends = 0
    for action in actions:
        obs, rewards, terminated, truncated, info = envs.step(action)
        want_obs, want_reward, want_terminated, want_truncated, _ = single.step(action[0])
        assert (rewards[0], terminated[0], truncated[0]) == (want_reward, want_terminated, want_truncated)
        if want_terminated or want_truncated:
            ends += 1
            assert info["_final_obs"][0]
            np.testing.assert_array_equal(info["final_obs"][0], want_obs)
            want_obs, _ = single.reset()
        np.testing.assert_array_equal(obs[0], want_obs)
    assert ends >= 3


@pytest.mark.parametrize(
    ("family_class", "gymnasium_id"),
    [(HalfCheetahRandParams, "HalfCheetah-v5"), (HopperRandParams, "Hopper-v5"), (Walker2dRandParams, "Walker2d-v5")],
)
def test_identity_dynamics_task_is_gymnasium_v5(family_class, gymnasium_id):
    """With every scale at 1, a dynamics family is Gymnasium's v5 env: same observations, rewards and terminations
    (Gymnasium's env stepped with the warm start zeroed, as ours; see metarl.mujoco_envs)."""
    family = family_class(horizon=1000)
    ours = family.make_env()
    ours.reset(seed=0, options={"task": identity_task(family)})
    reference = gym.make(gymnasium_id).unwrapped
    reference.reset(seed=0)
    reference.set_state(ours.data.qpos.copy(), ours.data.qvel.copy())
    actions = random_actions(family.action_space, np.random.default_rng(0), (200,))
    for action in actions:
        reference.data.qacc_warmstart[:] = 0.0
        want = reference.step(np.clip(action, -1, 1))
        got = ours.step(action)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == pytest.approx(want[1], rel=1e-12, abs=1e-12)
        assert got[2] == want[2]
        if want[2]:
            break


def test_ant_observations_are_ant_v5_without_contact_forces():
    family = AntVel()
    ours = family.make_env()
    ours.reset(seed=0)
    reference = gym.make("Ant-v5", include_cfrc_ext_in_observation=False).unwrapped
    reference.reset(seed=0)
    reference.set_state(ours.data.qpos.copy(), ours.data.qvel.copy())
    for action in random_actions(family.action_space, np.random.default_rng(0), (50,)):
        reference.data.qacc_warmstart[:] = 0.0
        want = reference.step(np.clip(action, -1, 1))
        got = ours.step(action)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[2] == want[2]
        if want[2]:
            break


@pytest.mark.parametrize("family_class", DYNAMICS)
def test_dynamics_task_scales_the_model_and_setting_back_restores_it(family_class):
    family = family_class()
    task = family.sample_tasks(np.random.default_rng(0), 1)[0]
    env = family.make_env()
    env.reset(seed=0, options={"task": task})
    for name, base in family.base_parameters.items():
        expected = base * np.asarray(getattr(task, name)).reshape(base.shape)
        np.testing.assert_array_equal(getattr(env.model, name), expected, err_msg=name)
        assert not np.array_equal(getattr(env.model, name), base)
    env.reset(options={"task": family.sample_tasks(np.random.default_rng(1), 1)[0]})
    env.reset(options={"task": identity_task(family)})
    for name, base in family.base_parameters.items():
        np.testing.assert_array_equal(getattr(env.model, name), base, err_msg=name)
    # the family's own model is never touched
    for name, base in family.base_parameters.items():
        np.testing.assert_array_equal(getattr(family.model, name), base, err_msg=name)


@pytest.mark.parametrize("family_class", DYNAMICS)
def test_dynamics_tasks_change_the_physics(family_class):
    family = family_class()
    tasks = family.sample_tasks(np.random.default_rng(0), 2)
    actions = random_actions(family.action_space, np.random.default_rng(1), (20, 2))
    envs = family.make_vec_env(2, tasks)
    envs.reset(seed=[5, 5])  # the same start: only the dynamics differ
    observations = [envs.step(action)[0] for action in np.repeat(actions[:, :1], 2, axis=1)]
    assert not np.array_equal(observations[-1][0], observations[-1][1])


@pytest.mark.parametrize("family_class", DYNAMICS)
def test_sampled_dynamics_stay_stable(family_class):
    """Over tasks drawn across the whole range, random actions never blow the simulation up."""
    family = family_class(horizon=50)
    tasks = family.sample_tasks(np.random.default_rng(0), 16)
    envs = family.make_vec_env(16, tasks)
    envs.reset(seed=0)
    for action in random_actions(family.action_space, np.random.default_rng(0), (100, 16)):
        obs, rewards, *_ = envs.step(action)
        assert np.isfinite(obs).all() and np.isfinite(rewards).all()


def test_an_unstable_simulation_raises_instead_of_returning_nan():
    family = HalfCheetahRandParams()
    env = family.make_env()
    env.reset(seed=0)
    env.data.qvel[:] = 1e300  # what an unstable model does: accelerations blow up
    with pytest.raises(FloatingPointError, match="unstable"):
        env.step(np.zeros(6, dtype=np.float32))
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros(6, dtype=np.float32))
    env.reset(seed=0)  # and a reset recovers
    assert np.isfinite(env.step(np.zeros(6, dtype=np.float32))[0]).all()
    envs = family.make_vec_env(2)
    envs.reset(seed=0)
    envs._states[1, envs._qvel_slice] = 1e300
    states = envs._states.copy()
    with pytest.raises(FloatingPointError, match="unstable in sub-env 1"):
        envs.step(np.zeros((2, 6), dtype=np.float32))
    np.testing.assert_array_equal(envs._states, states)  # the failed step changed nothing


def base_task(family):
    return family.sample_tasks(np.random.default_rng(0), 1)[0]


@pytest.mark.parametrize(
    ("family", "task", "message"),
    [
        (HalfCheetahVel(), VelocityTask(velocity=math.nan), "task.velocity"),
        (HalfCheetahVel(), VelocityTask(velocity=2.5), r"outside this family's range \[0.0, 2.0\]"),
        (AntVel(), VelocityTask(velocity=-0.1), "outside this family's range"),
        (HalfCheetahDir(), DirectionTask(direction=0.5), "must be -1.0 or 1.0"),
        (AntDir(), DirectionTask(direction=math.nan), "must be -1.0 or 1.0"),
        (AntDir2D(), Direction2DTask(direction=(1.0, 1.0)), "not a unit vector"),
        (AntDir2D(), Direction2DTask(direction=(1.0,)), r"tuple \(x, y\)"),
        (AntGoal(), GoalTask(goal=(3.0, 3.0)), "outside the disk of radius 3.0"),
        (AntGoal(), GoalTask(goal=(math.inf, 0.0)), r"task.goal\[0\]"),
    ],
)
def test_bad_goal_task_values_raise(family, task, message):
    with pytest.raises(ValueError, match=message):
        family.check_task(task)
    with pytest.raises(ValueError, match=message):
        family.make_env().set_task(task)
    with pytest.raises(ValueError, match=message):
        family.make_vec_env(1).set_tasks([task])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("body_mass", -1.0, r"task.body_mass\[0\]=-1.0 is outside the allowed scale range"),
        ("dof_damping", 0.0, "outside the allowed scale range"),
        ("geom_friction", 100.0, "outside the allowed scale range"),
        ("body_inertia", math.nan, r"task.body_inertia\[0\]"),
    ],
)
def test_bad_dynamics_scales_raise(field, value, message):
    family = HopperRandParams()
    good = base_task(family)
    bad = dataclasses.replace(good, **{field: (value, *getattr(good, field)[1:])})
    with pytest.raises(ValueError, match=message):
        family.make_env().set_task(bad)
    short = dataclasses.replace(good, body_mass=good.body_mass[:-1])
    with pytest.raises(ValueError, match="must be a tuple of"):
        family.check_task(short)


def test_wrong_task_type_is_a_type_error():
    with pytest.raises(TypeError, match="expects a task of type VelocityTask, got DirectionTask"):
        HalfCheetahVel().make_env().set_task(DirectionTask(direction=1.0))
    with pytest.raises(TypeError, match="expects a task of type DynamicsTask"):
        HopperRandParams().make_vec_env(1).set_tasks([VelocityTask(velocity=1.0)])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: HalfCheetahVel(velocity_low=2.0, velocity_high=1.0), "velocity_low must be < velocity_high"),
        (lambda: AntGoal(goal_radius=0.0), "goal_radius must be > 0"),
        (lambda: HopperRandParams(log_scale_limit=-1.0), "log_scale_limit"),
        (lambda: HalfCheetahRandParams(scale_base=0.5), "scale_base"),
        (lambda: HalfCheetahVel(ctrl_cost_weight=-0.1), "ctrl_cost_weight"),
    ],
)
def test_bad_family_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_actions_on_the_batched_env():
    envs = HalfCheetahVel().make_vec_env(2)
    with pytest.raises(RuntimeError, match="before reset"):
        envs.step(np.zeros((2, 6)))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 6\)"):
        envs.step(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        envs.step(np.full((2, 6), np.nan))
    with pytest.raises(ValueError, match="num_threads"):
        MuJoCoVectorEnv(HalfCheetahVel(), 2, num_threads=0)


def test_actions_are_clipped_to_the_action_space():
    family = HalfCheetahVel()
    envs = family.make_vec_env(2)
    envs.reset(seed=[0, 0])
    _, rewards, *_ = envs.step(np.stack([np.full(6, 5.0), np.ones(6)]))
    assert rewards[0] == rewards[1]


def test_two_task_families_split_and_train_with_replacement(tmp_path):
    family = HalfCheetahDir()
    split = family.split(seed=0)
    assert split.train == split.validation == split.test == (DirectionTask(-1.0), DirectionTask(1.0))
    config = config_from_dict(
        {**TINY_TRAIN_CONFIG, "family": "MetaRL/HalfCheetahDir-v0", "iterations": 2, "meta_batch_size": 4}
    )
    result = train(config, run_dir=tmp_path / "run")
    assert np.isfinite(result.test_returns).all()


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["maml-trpo", "rl2"])
def test_agents_train_on_halfcheetah_vel(tmp_path, algo):
    base = TINY_TRAIN_CONFIG if algo == "maml-trpo" else TINY_RL2_CONFIG
    config = config_from_dict(
        {**base, "family": "MetaRL/HalfCheetahVel-v0", "family_kwargs": {"horizon": 10}, "algo": algo}
    )
    result = train(config, run_dir=tmp_path / "run")
    assert np.isfinite(result.test_returns).all()


def test_presets_follow_the_reference_settings():
    for preset in ("halfcheetah-vel-maml-trpo", "halfcheetah-dir-maml-trpo"):
        config = load_config(preset, [])
        assert (config.meta_batch_size, config.episodes_per_task, config.inner_step_sizes) == (40, 20, (0.1,))
        assert (config.hidden_sizes, config.activation) == ((64, 64), "tanh")
        assert metarl.make_family(config.family).horizon == 100
