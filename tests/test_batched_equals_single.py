"""Every native batched env is step-for-step identical to Gymnasium's SyncVectorEnv over the family's single env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import LIGHT_FAMILY_IDS, random_actions
from gymnasium.vector import AutoresetMode
from metarl.envs import GoalTask, Navigation2D, SparsePointRobot

from metarl.vector import TorchVectorEnv

NUM_ENVS = 16
MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP]
TESTED_FAMILY_IDS = LIGHT_FAMILY_IDS  # the torch-native envs; the MuJoCo ones: test_mujoco_families.py


def make_pair(family, mode: AutoresetMode, tasks=None) -> tuple[TorchVectorEnv, gym.vector.SyncVectorEnv]:
    native = family.make_vec_env(NUM_ENVS, autoreset_mode=mode)
    reference = gym.vector.SyncVectorEnv([family.make_env] * NUM_ENVS, autoreset_mode=mode)
    assert isinstance(native, TorchVectorEnv)
    assert native.metadata["autoreset_mode"] == reference.metadata["autoreset_mode"] == mode
    if tasks is not None:
        native.set_tasks(tasks)
        reference.set_attr("task", list(tasks))
    return native, reference


def assert_same(native_out: tuple, reference_out: tuple, step) -> None:
    """Equal results of ``reset`` (observations) or ``step`` (observations, rewards, terminated, truncated)."""
    assert len(native_out) == len(reference_out)
    names = ("observations", "rewards", "terminated", "truncated")[: len(native_out) - 1]  # all but the info
    for name, got, want in zip(names, native_out, reference_out, strict=False):
        got, want = np.asarray(got), np.asarray(want)
        assert got.shape == want.shape, (name, step)
        assert np.array_equal(got.astype(np.float64), want.astype(np.float64)), f"{name} differ at step {step}"


def assert_same_final_observations(native_info: dict, reference_info: dict, step) -> None:
    """SAME_STEP: both report the observation that ended an episode, for the same sub-envs."""
    native_mask = native_info.get("_final_obs", np.zeros(NUM_ENVS, dtype=bool))
    reference_mask = reference_info.get("_final_obs", np.zeros(NUM_ENVS, dtype=bool))
    np.testing.assert_array_equal(native_mask, reference_mask, err_msg=f"final_obs mask, step {step}")
    for i in np.flatnonzero(reference_mask):
        got = native_info["final_obs"][i].astype(np.float64)
        want = np.asarray(reference_info["final_obs"][i]).astype(np.float64)
        assert np.array_equal(got, want), f"final_obs of sub-env {i} differ at step {step}"


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.value)
def test_native_equals_sync_vector_env(family, mode):
    tasks = family.sample_tasks(np.random.default_rng(0), NUM_ENVS)
    native, reference = make_pair(family, mode, tasks)
    assert_same(native.reset(seed=42), reference.reset(seed=42), "reset")
    assert native.get_tasks() == tuple(tasks) == tuple(reference.get_attr("task"))

    rng = np.random.default_rng(1)
    num_steps = max(3 * family.horizon + 3, 20)
    num_done = 0
    for step in range(num_steps):
        actions = random_actions(family.action_space, rng, (NUM_ENVS,))
        native_out = native.step(actions)
        reference_out = reference.step(actions)
        assert_same(native_out, reference_out, step)
        if mode == AutoresetMode.SAME_STEP:
            assert_same_final_observations(native_out[4], reference_out[4], step)
        num_done += int((reference_out[2] | reference_out[3]).sum())
    assert num_done >= 3 * NUM_ENVS  # episodes ended (and were autoreset) at least three times per sub-env


def test_default_tasks_are_drawn_from_the_seeds(family):
    native, reference = make_pair(family, AutoresetMode.NEXT_STEP)
    assert native.get_tasks() == (None,) * NUM_ENVS
    native.reset(seed=123)
    reference.reset(seed=123)
    default_tasks = native.get_tasks()
    assert default_tasks == tuple(reference.get_attr("task"))
    assert len(set(default_tasks)) == NUM_ENVS  # sub-env i is seeded with 123 + i
    for task in default_tasks:
        family.check_task(task)
    # re-seeding keeps the tasks (a default task is drawn only for a sub-env that has none)
    native.reset(seed=7)
    reference.reset(seed=7)
    assert native.get_tasks() == default_tasks == tuple(reference.get_attr("task"))
    # and so does the single env seeded like sub-env 3
    single = family.make_env()
    single.reset(seed=123 + 3)
    assert single.get_task() == default_tasks[3]


def test_per_subenv_seed_list(family):
    seeds = [int(s) for s in np.random.default_rng(0).integers(0, 2**31, NUM_ENVS)]
    native, reference = make_pair(family, AutoresetMode.NEXT_STEP)
    assert_same(native.reset(seed=seeds), reference.reset(seed=seeds), "reset")
    assert native.get_tasks() == tuple(reference.get_attr("task"))
    rng = np.random.default_rng(2)
    for step in range(5):
        actions = random_actions(family.action_space, rng, (NUM_ENVS,))
        assert_same(native.step(actions), reference.step(actions), step)


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.value)
def test_tensor_api_equals_numpy_api(family, mode):
    tasks = family.sample_tasks(np.random.default_rng(3), NUM_ENVS)
    numpy_env = family.make_vec_env(NUM_ENVS, tasks, autoreset_mode=mode)
    tensor_env = family.make_vec_env(NUM_ENVS, tasks, autoreset_mode=mode)
    obs, _ = numpy_env.reset(seed=5)
    obs_tensor, _ = tensor_env.reset_tensor(seed=5)
    assert isinstance(obs_tensor, torch.Tensor)
    np.testing.assert_array_equal(obs_tensor.numpy(), obs)
    rng = np.random.default_rng(4)
    for step in range(max(2 * family.horizon + 2, 10)):
        actions = random_actions(family.action_space, rng, (NUM_ENVS,))
        numpy_out = numpy_env.step(actions)
        tensor_out = tensor_env.step_tensor(torch.as_tensor(actions))
        assert tensor_out[1].dtype == torch.float32
        assert tensor_out[2].dtype == tensor_out[3].dtype == torch.bool
        names = ("obs", "rewards", "terminated", "truncated")
        for name, got, want in zip(names, tensor_out[:4], numpy_out[:4], strict=True):
            assert isinstance(got, torch.Tensor)
            np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{name}, step {step}")
        assert sorted(k for k in numpy_out[4] if not k.startswith("_")) == sorted(
            k for k in tensor_out[4] if k != "final_obs_mask"
        )


@pytest.mark.parametrize("normalized_actions", [False, True])
@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.value)
def test_navigation_terminations_match(mode, normalized_actions):
    family = Navigation2D(normalized_actions=normalized_actions)
    # normalized: the policy's [-1, 1] is the robot's [-0.1, 0.1], so the same moves take 10x the action
    action_scale = 10.0 if normalized_actions else 1.0
    tasks = family.sample_tasks(np.random.default_rng(5), NUM_ENVS)
    goals = np.array([task.goal for task in tasks], dtype=np.float32)
    native, reference = make_pair(family, mode, tasks)
    native_reset = native.reset(seed=0)
    assert_same(native_reset, reference.reset(seed=0), "reset")
    obs = native_reset[0]
    terminations = np.zeros(NUM_ENVS, dtype=int)
    first_termination = np.full(NUM_ENVS, -1)
    for step in range(20):
        actions = action_scale * np.clip(goals - obs, -0.1, 0.1)
        native_out = native.step(actions)
        reference_out = reference.step(actions)
        assert_same(native_out, reference_out, step)
        if mode == AutoresetMode.SAME_STEP:
            assert_same_final_observations(native_out[4], reference_out[4], step)
        terminated = reference_out[2]
        assert not reference_out[3].any()  # well inside the horizon
        first_termination[(first_termination < 0) & terminated] = step
        terminations += terminated
        obs = native_out[0]
    # every sub-env reached its goal, at a time set by its goal's distance, and again after its autoreset
    assert (terminations >= 2).all()
    # 0.1 per step towards the goal, done once within the tolerance (0.01) of it
    expected_steps = np.floor((np.abs(goals).max(axis=1) - 0.01) / 0.1).astype(int) + 1
    np.testing.assert_array_equal(first_termination + 1, expected_steps)
    assert len(set(first_termination)) > 1


def test_reset_mask_resets_only_selected_subenvs(family):
    tasks = family.sample_tasks(np.random.default_rng(6), NUM_ENVS)
    envs = family.make_vec_env(NUM_ENVS, tasks, autoreset_mode=AutoresetMode.DISABLED)
    initial, _ = envs.reset(seed=0)
    rng = np.random.default_rng(7)
    num_steps = min(family.horizon - 1, 3)
    for _ in range(num_steps):
        before_obs, *_ = envs.step(random_actions(family.action_space, rng, (NUM_ENVS,)))
    if num_steps == 0:  # the bandit: every episode ends on its first step
        before_obs, *_ = envs.step(random_actions(family.action_space, rng, (NUM_ENVS,)))
        num_steps = 1
    mask = np.zeros(NUM_ENVS, dtype=bool)
    mask[[0, 3, 4, 9, 15]] = True
    new_tasks = family.sample_tasks(np.random.default_rng(8), NUM_ENVS)
    envs.set_tasks(new_tasks)
    obs, _ = envs.reset(options={"reset_mask": mask})
    np.testing.assert_array_equal(obs[mask], initial[mask])
    np.testing.assert_array_equal(obs[~mask], before_obs[~mask])
    # only the reset sub-envs took their new tasks
    played = envs.get_tasks()
    assert [played[i] == new_tasks[i] for i in range(NUM_ENVS)] == mask.tolist()
    assert [played[i] == tasks[i] for i in range(NUM_ENVS)] == (~mask).tolist()
    if family.horizon > 1:
        # the sub-envs that were not reset keep their step count: their episodes end num_steps earlier
        for step in range(1, family.horizon - num_steps + 1):
            _, _, terminated, truncated, _ = envs.step(random_actions(family.action_space, rng, (NUM_ENVS,)))
            done = terminated | truncated
            if step < family.horizon - num_steps:
                assert not done.any(), step
        np.testing.assert_array_equal(done, ~mask)


def test_disabled_mode_with_reset_mask_equals_sync_vector_env(family):
    """The DISABLED mode: the caller resets the ended sub-envs, here with ``reset_mask``, on both envs alike."""
    tasks = family.sample_tasks(np.random.default_rng(9), NUM_ENVS)
    native, reference = make_pair(family, AutoresetMode.DISABLED, tasks)
    assert_same(native.reset(seed=3), reference.reset(seed=3), "reset")
    rng = np.random.default_rng(10)
    num_partial_resets = 0
    for step in range(max(3 * family.horizon + 3, 20)):
        actions = random_actions(family.action_space, rng, (NUM_ENVS,))
        native_out = native.step(actions)
        reference_out = reference.step(actions)
        assert_same(native_out, reference_out, step)
        done = reference_out[2] | reference_out[3]
        if done.any():
            # Gymnasium's reset pops "reset_mask" from the options dict: give each env its own
            native_reset = native.reset(options={"reset_mask": done.copy()})
            reference_reset = reference.reset(options={"reset_mask": done.copy()})
            np.testing.assert_array_equal(native_reset[0], reference_reset[0])
            num_partial_resets += 1
    assert num_partial_resets >= 3


def test_step_infos_cover_the_sub_envs_that_stepped():
    """On a next-step autoreset the reset sub-envs report no step info, as in Gymnasium's SyncVectorEnv."""
    family = SparsePointRobot(horizon=10)  # the goal radius is reached after 8 steps up
    tasks = [GoalTask(goal=(0.0, 1.0))] * NUM_ENVS
    native, reference = make_pair(family, AutoresetMode.NEXT_STEP, tasks)
    native.reset(seed=0)
    reference.reset(seed=0)
    up = np.tile(np.array([[0.0, 1.0]], dtype=np.float32), (NUM_ENVS, 1))  # reaches the goal, so success becomes True
    seen_success = False
    for step in range(33):  # three episodes and their autoreset steps
        native_info, reference_info = native.step(up)[4], reference.step(up)[4]
        stepped = reference_info.get("_success", np.zeros(NUM_ENVS, dtype=bool))
        np.testing.assert_array_equal(native_info["_success"], stepped, err_msg=f"step {step}")
        if stepped.any():
            np.testing.assert_array_equal(native_info["success"][stepped], reference_info["success"][stepped])
        assert not native_info["success"][~stepped].any()
        seen_success |= bool(native_info["success"].any())
    assert seen_success


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_native_env_on_cuda_equals_cpu(family):
    """The same native env on CUDA gives the CPU's numbers; rewards may differ in the last float32 bit where a
    transcendental function (Box-Muller's log and cos) rounds differently on the GPU."""
    tasks = family.sample_tasks(np.random.default_rng(0), NUM_ENVS)
    on_cpu = family.make_vec_env(NUM_ENVS, tasks, device="cpu")
    on_cuda = family.make_vec_env(NUM_ENVS, tasks, device="cuda")
    observations_cpu, _ = on_cpu.reset_tensor(seed=7)
    observations_cuda, _ = on_cuda.reset_tensor(seed=7)
    assert observations_cuda.device.type == "cuda"
    torch.testing.assert_close(observations_cuda.cpu(), observations_cpu, rtol=0, atol=0)
    rng = np.random.default_rng(1)
    for _ in range(3 * family.horizon + 3):
        actions = torch.as_tensor(random_actions(family.action_space, rng, (NUM_ENVS,)))
        cpu_out = on_cpu.step_tensor(actions)
        cuda_out = on_cuda.step_tensor(actions.cuda())
        assert all(value.device.type == "cuda" for value in cuda_out[:4])
        torch.testing.assert_close(cuda_out[0].cpu(), cpu_out[0], rtol=0, atol=0)
        torch.testing.assert_close(cuda_out[1].cpu(), cpu_out[1], rtol=0, atol=1e-6)
        assert torch.equal(cuda_out[2].cpu(), cpu_out[2]) and torch.equal(cuda_out[3].cpu(), cpu_out[3])
