"""Tasks (small frozen dataclasses drawn from an explicit generator) and their train / validation / test splits."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from metarl.tasks import DEFAULT_SPLIT_FRACTIONS, TaskSplit, split_sizes

SPLIT_TASKS = 200  # enough to split into non-empty sets, small enough for the tabular MDPs to draw quickly


def test_split_is_deterministic_for_a_seed(family):
    first = family.split(seed=3, num_tasks=SPLIT_TASKS)
    second = family.split(seed=3, num_tasks=SPLIT_TASKS)
    assert isinstance(first, TaskSplit)
    assert first == second
    assert first.seed == 3
    # the split does not depend on the global generators
    np.random.seed(0)
    third = family.split(seed=3, num_tasks=SPLIT_TASKS)
    assert third == first


def skip_if_few_tasks(family) -> None:
    if family.num_distinct_tasks is not None:
        pytest.skip("a family of a few tasks holds all of them in every set (test_mujoco_families.py)")


def test_split_differs_between_seeds(family):
    skip_if_few_tasks(family)
    first = family.split(seed=0, num_tasks=SPLIT_TASKS)
    second = family.split(seed=1, num_tasks=SPLIT_TASKS)
    assert first != second
    assert set(first.train).isdisjoint(second.train)  # continuous task distributions: no task drawn twice


@pytest.mark.parametrize(
    ("num_tasks", "fractions"), [(SPLIT_TASKS, DEFAULT_SPLIT_FRACTIONS), (50, (0.6, 0.2, 0.2)), (7, (0.5, 0.0, 0.5))]
)
def test_split_sets_are_disjoint_and_sized_by_the_fractions(family, num_tasks, fractions):
    skip_if_few_tasks(family)
    split = family.split(seed=11, num_tasks=num_tasks, fractions=fractions)
    train, validation, test = set(split.train), set(split.validation), set(split.test)
    assert (len(train), len(validation), len(test)) == split_sizes(num_tasks, fractions)
    # no duplicates within a set either
    assert (len(train), len(validation), len(test)) == (len(split.train), len(split.validation), len(split.test))
    assert train.isdisjoint(validation)
    assert train.isdisjoint(test)
    assert validation.isdisjoint(test)
    assert len(train | validation | test) == num_tasks
    for name in ("train", "validation", "test"):
        assert split[name] is getattr(split, name)
        for task in split[name]:
            assert family.check_task(task) is task


def test_split_rejects_unknown_set_name(family):
    split = family.split(seed=0, num_tasks=10)
    with pytest.raises(KeyError, match=r"'valid'.*allowed: 'train', 'validation', 'test'"):
        split["valid"]


def test_split_sizes_follow_the_fractions(family):
    skip_if_few_tasks(family)
    split = family.split(seed=0, num_tasks=SPLIT_TASKS)
    assert (len(split.train), len(split.validation), len(split.test)) == (160, 20, 20)


@pytest.mark.parametrize(
    ("num_tasks", "fractions", "expected"),
    [
        (1000, (0.8, 0.1, 0.1), (800, 100, 100)),
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (2, (0.5, 0.0, 0.5), (1, 0, 1)),
        (7, (0.5, 0.25, 0.25), (5, 1, 1)),  # validation and test round down, train takes the rest
        (9, (0.6, 0.2, 0.2), (7, 1, 1)),
        (11, (0.7, 0.2, 0.1), (8, 2, 1)),
        (100, (0.5, 0.3, 0.2), (50, 30, 20)),
        (3, (1 / 3, 1 / 3, 1 / 3), (1, 1, 1)),
        (1000, (0.98, 0.01, 0.01), (980, 10, 10)),
        (100, (0.42, 0.29, 0.29), (42, 29, 29)),
    ],
)
def test_split_sizes_closed_form(num_tasks, fractions, expected):
    assert split_sizes(num_tasks, fractions) == expected


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.5, 0.3, 0.1), r"must sum to 1, got \(0\.5, 0\.3, 0\.1\)"),
        ((0.6, 0.3, 0.3), r"must sum to 1, got \(0\.6, 0\.3, 0\.3\)"),
        ((0.6, -0.1, 0.5), r"fractions\[1\] must be a finite number in \[0\.0, 1\.0\], got -0\.1"),
        ((1.2, -0.1, -0.1), r"fractions\[0\] must be a finite number in \[0\.0, 1\.0\], got 1\.2"),
        ((0.5, 0.5), r"three numbers \(train, validation, test\), got \(0\.5, 0\.5\)"),
        ((0.5, 0.2, 0.2, 0.1), r"three numbers \(train, validation, test\), got \(0\.5, 0\.2, 0\.2, 0\.1\)"),
        ((0.0, 0.5, 0.5), r"train and test fractions must be > 0, got \(0\.0, 0\.5, 0\.5\)"),
        ((0.5, 0.5, 0.0), r"train and test fractions must be > 0, got \(0\.5, 0\.5, 0\.0\)"),
        ((math.nan, 0.5, 0.5), r"fractions\[0\] must be a finite number .*got nan"),
        ((0.5, math.inf, 0.5), r"fractions\[1\] must be a finite number .*got inf"),
    ],
)
def test_invalid_fractions_raise_naming_the_bad_value(family, fractions, message):
    with pytest.raises(ValueError, match=message):
        split_sizes(100, fractions)
    with pytest.raises(ValueError, match=message):
        family.split(seed=0, num_tasks=100, fractions=fractions)


def test_fractions_leaving_an_empty_set_raise():
    with pytest.raises(ValueError, match=r"num_tasks=3 with fractions \(0\.34, 0\.33, 0\.33\) leaves an empty"):
        split_sizes(3, (0.34, 0.33, 0.33))


@pytest.mark.parametrize(
    ("num_tasks", "error"), [(0, ValueError), (1, ValueError), (-5, ValueError), (True, TypeError)]
)
def test_split_rejects_bad_num_tasks(family, num_tasks, error):
    with pytest.raises(error, match=rf"num_tasks must be an int >= 2, got .*{re.escape(repr(num_tasks))}"):
        family.split(seed=0, num_tasks=num_tasks)


@pytest.mark.parametrize("seed", [-1, 1.5, None, True])
def test_split_rejects_bad_seeds(family, seed):
    with pytest.raises(ValueError, match=rf"split seed must be a non-negative int, got {re.escape(repr(seed))}"):
        family.split(seed=seed, num_tasks=10)


@pytest.mark.parametrize(
    ("num_tasks", "error"), [(0, ValueError), (-1, ValueError), (True, TypeError), (False, TypeError), (2.0, TypeError)]
)
def test_sample_tasks_rejects_bad_num_tasks(family, num_tasks, error):
    with pytest.raises(error, match=rf"num_tasks must be an int >= 1, got .*{re.escape(repr(num_tasks))}"):
        family.sample_tasks(np.random.default_rng(0), num_tasks)


def test_sampled_tasks_are_valid_hashable_frozen_dataclasses(family):
    tasks = family.sample_tasks(np.random.default_rng(0), 20)
    assert len(tasks) == 20
    assert len(set(tasks)) == (family.num_distinct_tasks or 20)
    for task in tasks:
        assert type(task) is family.task_type
        assert dataclasses.is_dataclass(task)
        assert family.check_task(task) is task
        hash(task)
        field = dataclasses.fields(task)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(task, field, getattr(task, field))


def test_sample_tasks_uses_only_the_given_generator(family):
    np.random.seed(1)
    first = family.sample_tasks(np.random.default_rng(5), 10)
    np.random.seed(2)
    second = family.sample_tasks(np.random.default_rng(5), 10)
    assert first == second
    assert hash(first[0]) == hash(second[0])
    assert first != family.sample_tasks(np.random.default_rng(6), 10)


def test_sampled_tasks_follow_the_documented_distributions():
    from metarl.envs import Bandit, Navigation2D, SparsePointRobot, TabularMDP

    rng = np.random.default_rng(0)
    arm_means = np.array([task.arm_means for task in Bandit(num_arms=3).sample_tasks(rng, 2000)])
    assert arm_means.shape == (2000, 3)
    assert ((arm_means >= 0) & (arm_means <= 1)).all()
    assert abs(arm_means.mean() - 0.5) < 0.02

    goals = np.array([task.goal for task in Navigation2D(goal_low=-0.2, goal_high=0.6).sample_tasks(rng, 2000)])
    assert ((goals >= -0.2) & (goals <= 0.6)).all()
    np.testing.assert_allclose(goals.mean(axis=0), [0.2, 0.2], atol=0.02)

    goals = np.array([task.goal for task in SparsePointRobot().sample_tasks(rng, 2000)])
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 1.0, atol=1e-12)
    assert (goals[:, 1] >= 0).all()
    angles = np.arctan2(goals[:, 1], goals[:, 0])
    assert abs(angles.mean() - math.pi / 2) < 0.05

    tasks = TabularMDP(num_states=3, num_actions=2).sample_tasks(rng, 500)
    transitions = np.array([task.transitions for task in tasks])
    reward_means = np.array([task.reward_means for task in tasks])
    assert transitions.shape == (500, 3, 2, 3)
    np.testing.assert_allclose(transitions.sum(axis=-1), 1.0, atol=1e-12)
    assert (transitions >= 0).all()
    np.testing.assert_allclose(transitions.mean(axis=(0, 1, 2)), [1 / 3] * 3, atol=0.02)  # flat Dirichlet
    assert abs(reward_means.mean() - 1.0) < 0.05  # N(1, 1)
    assert abs(reward_means.std() - 1.0) < 0.05


def test_task_arrays_stack_the_task_fields(family):
    tasks = family.sample_tasks(np.random.default_rng(0), 4)
    arrays = family.task_arrays(tasks)
    for field in dataclasses.fields(family.task_type):
        expected = np.asarray([getattr(task, field.name) for task in tasks], dtype=np.float64)
        assert arrays[field.name].dtype == np.float64
        np.testing.assert_array_equal(arrays[field.name], expected)
        assert arrays[field.name].shape[0] == 4
