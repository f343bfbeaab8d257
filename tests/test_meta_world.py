"""Meta-World's ML1 / ML10 / ML45 as task families (the optional extra ``metarl[metaworld]``): ids, Meta-World's own
split, its env stepped unchanged behind the adapter, success in the rollouts, errors. Skipped, with the reason, when
the extra is not installed; CI runs them after installing it (README's test command)."""

from __future__ import annotations

import re
import sys

import gymnasium as gym
import numpy as np
import pytest
from metarl.envs import META_WORLD_AVAILABLE

from metarl.registry import list_families, make_family

needs_metaworld = pytest.mark.skipif(
    not META_WORLD_AVAILABLE, reason='Meta-World is not installed (pip install "metarl[metaworld]")'
)
HORIZON = 40  # a short horizon keeps the tests fast; the families' default is Meta-World's 500
ML1_IDS = {
    "MetaRL/MetaWorld-ML1-reach-v0": "reach-v3",
    "MetaRL/MetaWorld-ML1-push-v0": "push-v3",
    "MetaRL/MetaWorld-ML1-pick-place-v0": "pick-place-v3",
}


def test_without_the_extra_the_families_say_how_to_install_it(monkeypatch):
    from metarl.envs.meta_world import MetaWorldFamily

    monkeypatch.setitem(sys.modules, "metaworld", None)  # makes `import metaworld` fail
    with pytest.raises(ImportError, match=r'pip install "metarl\[metaworld\]"'):
        MetaWorldFamily()


@needs_metaworld
def test_ids_are_listed():
    expected = {*ML1_IDS, "MetaRL/MetaWorld-ML1-v0", "MetaRL/MetaWorld-ML10-v0", "MetaRL/MetaWorld-ML45-v0"}
    assert expected <= set(list_families())
    assert make_family("MetaRL/MetaWorld-ML1-v0", env_name="door-open-v3").env_name == "door-open-v3"


@needs_metaworld
@pytest.mark.parametrize("meta_world_id", [*ML1_IDS, "MetaRL/MetaWorld-ML10-v0", "MetaRL/MetaWorld-ML45-v0"])
def test_split_is_meta_worlds_own(meta_world_id):
    import metaworld

    family = make_family(meta_world_id)
    benchmark = (
        metaworld.ML1(ML1_IDS[meta_world_id], seed=0)
        if meta_world_id in ML1_IDS
        else getattr(metaworld, meta_world_id.split("-")[1])(seed=0)
    )
    split = family.split(seed=0)
    # test: exactly Meta-World's test tasks, in order, same environments and same task data
    assert [(task.env_name, task.split, task.index) for task in split.test] == [
        (task.env_name, "test", index) for index, task in enumerate(benchmark.test_tasks)
    ]
    assert [family.metaworld_task(task).data for task in split.test] == [task.data for task in benchmark.test_tasks]
    assert {task.env_name for task in split.test} == set(benchmark.test_classes)
    # train + validation: exactly Meta-World's training tasks, disjoint, validation drawn from every training class
    carved = sorted(task.index for task in (*split.train, *split.validation))
    assert carved == list(range(len(benchmark.train_tasks)))
    assert not set(split.train) & set(split.validation)
    assert {task.env_name for task in split.validation} == set(benchmark.train_classes)
    assert all(task.split == "train" for task in (*split.train, *split.validation))
    assert len(split.validation) == len(benchmark.train_classes) * 5  # 10 % of each class's 50 tasks
    assert family.split(seed=0) == split and family.split(seed=1).validation != split.validation


@needs_metaworld
@pytest.mark.parametrize("meta_world_id", [*ML1_IDS, "MetaRL/MetaWorld-ML10-v0", "MetaRL/MetaWorld-ML45-v0"])
def test_env_checker_passes(meta_world_id):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(meta_world_id, horizon=HORIZON).unwrapped
    check_env(env, skip_render_check=True)


@needs_metaworld
def test_the_adapter_steps_meta_worlds_env_unchanged():
    import metaworld

    family = make_family("MetaRL/MetaWorld-ML10-v0", horizon=HORIZON)
    test_task = family.split(0).test[60]  # a held-out environment's task
    env = family.make_env()
    observation, _ = env.reset(seed=0, options={"task": test_task})
    reference = metaworld.ML10(seed=0).test_classes[test_task.env_name]()
    reference.set_task(family.metaworld_task(test_task))
    reference_observation, _ = reference.reset(seed=int(np.random.default_rng(0).integers(2**31)))
    np.testing.assert_array_equal(observation, reference_observation)
    actions = np.random.default_rng(1).uniform(-1, 1, size=(HORIZON, 4)).astype(np.float32)
    for step, action in enumerate(actions):
        observation, reward, terminated, truncated, info = env.step(action)
        expected = reference.step(action)
        np.testing.assert_array_equal(observation, expected[0])
        assert reward == expected[1] and info["success"] == expected[4]["success"]
        assert truncated == (step == HORIZON - 1) and not terminated


@needs_metaworld
def test_rollouts_record_success():
    import torch

    from metarl.rollout import collect_episodes

    family = make_family("MetaRL/MetaWorld-ML1-reach-v0", horizon=HORIZON)
    tasks = family.split(0).test[:2]
    envs = family.make_vec_env(4)

    def random_policy(observations, params):
        return torch.rand(*observations.shape[:2], 4) * 2 - 1

    batch = collect_episodes(envs, family, tasks, 2, random_policy, seed=0)
    assert batch.successes is not None and batch.successes.shape == (2, 2)
    assert batch.infos["success"].shape == (2, 2, HORIZON)
    assert batch.task_params["goal"].shape == (2, 3)


@needs_metaworld
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"benchmark": "ML2"}, "benchmark must be one of ['ML1', 'ML10', 'ML45'], got 'ML2'"),
        ({"env_name": "fly-v3"}, "env_name 'fly-v3' is not a Meta-World environment; allowed:"),
        ({"benchmark": "ML10", "env_name": "reach-v3"}, "env_name is ML1's argument"),
        ({"horizon": 501}, "horizon must be at most Meta-World's 500 steps, got 501"),
        ({"reward_function_version": "v3"}, "reward_function_version must be one of ['v1', 'v2'], got 'v3'"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, message):
    from metarl.envs.meta_world import MetaWorldFamily

    with pytest.raises(ValueError, match=re.escape(message)):
        MetaWorldFamily(**kwargs)


@needs_metaworld
def test_bad_tasks_raise_naming_the_field():
    from metarl.envs.meta_world import MetaWorldTask

    family = make_family("MetaRL/MetaWorld-ML1-reach-v0")
    with pytest.raises(ValueError, match=re.escape("task.index must be an int in [0, 50) for the train tasks, got 50")):
        family.check_task(MetaWorldTask("reach-v3", "train", 50))
    with pytest.raises(ValueError, match=re.escape("task.split must be 'train' or 'test', got 'validation'")):
        family.check_task(MetaWorldTask("reach-v3", "validation", 0))
    with pytest.raises(ValueError, match="is a reach-v3 task, not 'push-v3'"):
        family.check_task(MetaWorldTask("push-v3", "test", 0))
    with pytest.raises(TypeError, match="expects a task of type MetaWorldTask"):
        family.make_env().set_task(("reach-v3", "test", 0))


@needs_metaworld
def test_quick_benchmark_compares_the_adapter_with_meta_worlds_vector_env(tmp_path):
    from conftest import load_script

    out = tmp_path / "metaworld.json"
    data = load_script("benchmark").main(["--metaworld", "--quick", "--out", str(out)])
    assert {(record["num_envs"], record["implementation"]) for record in data["results"]} == {
        (1, "adapter"),
        (1, "metaworld"),
    }
    assert all(record["median_steps_per_second"] > 0 for record in data["results"])
    assert data["ratios"][0]["adapter_over_metaworld"] > 0
