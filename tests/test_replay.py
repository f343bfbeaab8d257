"""Per-task replay buffers (metarl/replay.py): wrap-around, sampling only filled rows, the batched draw against a
per-task loop, exact state round trip, sizes, and refused inputs."""

from __future__ import annotations

import pytest
import torch

from metarl.replay import TaskReplayBuffers, replay_bytes

FIELDS = {"observations": ((2,), torch.float32), "rewards": ((), torch.float32), "steps": ((), torch.long)}


def transitions(first: int, count: int) -> dict[str, torch.Tensor]:
    """``count`` transitions numbered ``first``, ``first + 1``, ...: every field carries the number."""
    numbers = torch.arange(first, first + count)
    return {
        "observations": numbers.float().unsqueeze(1).repeat(1, 2),
        "rewards": numbers.float(),
        "steps": numbers,
    }


def test_a_full_ring_overwrites_its_oldest_transitions():
    buffers = TaskReplayBuffers(num_tasks=2, capacity=4, fields=FIELDS)
    buffers.add(0, transitions(0, 3))
    buffers.add(0, transitions(3, 3))  # 6 into 4 rows: 0 and 1 are overwritten by 4 and 5
    assert buffers.sizes.tolist() == [4, 0] and buffers.positions.tolist() == [2, 0]
    assert buffers.data["steps"][0].tolist() == [4, 5, 2, 3]
    buffers.add(0, transitions(10, 9))  # more than a ring at once: only the last 4 stay, in ring order
    assert sorted(buffers.data["steps"][0].tolist()) == [15, 16, 17, 18]
    assert buffers.positions.tolist()[0] == (2 + 9) % 4
    assert buffers.data["steps"][1].tolist() == [0, 0, 0, 0]  # the other task untouched


def test_sampling_draws_only_filled_rows_of_each_task():
    buffers = TaskReplayBuffers(num_tasks=3, capacity=10, fields=FIELDS)
    buffers.add(0, transitions(100, 3))
    buffers.add(2, transitions(200, 7))
    batch = buffers.sample([2, 0, 2], batch_size=500, generator=torch.Generator().manual_seed(0))
    assert batch["observations"].shape == (3, 500, 2) and batch["steps"].shape == (3, 500)
    assert set(batch["steps"][1].tolist()) == {100, 101, 102}
    assert set(batch["steps"][0].tolist()) == set(range(200, 207))
    assert torch.equal(batch["rewards"], batch["steps"].float())


def test_the_batched_draw_equals_a_loop_over_tasks_with_the_same_uniforms():
    buffers = TaskReplayBuffers(num_tasks=3, capacity=5, fields=FIELDS)
    for task, count in enumerate([2, 5, 4]):
        buffers.add(task, transitions(10 * task, count))
    tasks, batch_size = [1, 2, 0], 6
    batch = buffers.sample(tasks, batch_size, torch.Generator().manual_seed(3))
    uniform = torch.rand(len(tasks), batch_size, generator=torch.Generator().manual_seed(3))
    for i, task in enumerate(tasks):
        rows = (uniform[i] * int(buffers.sizes[task])).long()
        for name in FIELDS:
            assert torch.equal(batch[name][i], buffers.data[name][task, rows])


def test_a_restored_state_samples_as_the_original_would(tmp_path):
    original = TaskReplayBuffers(num_tasks=2, capacity=6, fields=FIELDS)
    original.add(0, transitions(0, 8))
    original.add(1, transitions(50, 3))
    path = tmp_path / "replay.pt"
    torch.save(original.state_dict(), path)
    restored = TaskReplayBuffers(num_tasks=2, capacity=6, fields=FIELDS)
    restored.load_state_dict(torch.load(path, weights_only=True))
    for buffers in (original, restored):
        buffers.add(1, transitions(60, 5))
    first = original.sample([0, 1], 8, torch.Generator().manual_seed(1))
    second = restored.sample([0, 1], 8, torch.Generator().manual_seed(1))
    assert all(torch.equal(first[name], second[name]) for name in FIELDS)
    assert original.positions.tolist() == restored.positions.tolist() == [2, 2]
    other = TaskReplayBuffers(num_tasks=2, capacity=7, fields=FIELDS)
    with pytest.raises(ValueError, match="the saved buffers have capacity 6, these 7"):
        other.load_state_dict(original.state_dict())
    other = TaskReplayBuffers(num_tasks=3, capacity=6, fields=FIELDS)
    with pytest.raises(ValueError, match="saved field 'observations' is \\[2, 6, 2\\]"):
        other.load_state_dict(original.state_dict())


def test_only_the_filled_rows_are_saved_and_a_used_buffer_is_restored_exactly():
    original = TaskReplayBuffers(num_tasks=2, capacity=1000, fields=FIELDS)
    original.add(0, transitions(0, 3))
    original.add(1, transitions(10, 7))
    state = original.state_dict()
    assert {name: tuple(value.shape[:2]) for name, value in state["data"].items()} == dict.fromkeys(FIELDS, (2, 7))
    used = TaskReplayBuffers(num_tasks=2, capacity=1000, fields=FIELDS)
    used.add(0, transitions(100, 20))  # rows the restored state does not have
    used.load_state_dict(state)
    for name in FIELDS:
        assert torch.equal(used.data[name], original.data[name]), name
    assert used.sizes.tolist() == [3, 7] and used.positions.tolist() == [3, 7]


def test_clear_empties_one_task_and_an_empty_task_is_refused_by_name():
    buffers = TaskReplayBuffers(num_tasks=2, capacity=3, fields=FIELDS)
    buffers.add(0, transitions(0, 2))
    buffers.add(1, transitions(5, 2))
    buffers.clear(1)
    assert buffers.sizes.tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"cannot sample tasks \[1\]: their buffers are empty"):
        buffers.sample([0, 1], 4, torch.Generator().manual_seed(0))


def test_the_size_is_what_is_allocated():
    buffers = TaskReplayBuffers(num_tasks=3, capacity=7, fields=FIELDS)
    allocated = sum(value.numel() * value.element_size() for value in buffers.data.values())
    assert replay_bytes(3, 7, FIELDS) == allocated == 3 * 7 * (2 * 4 + 4 + 8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b: b.add(2, transitions(0, 1)), "task 2 is not one of the buffers' tasks 0 .. 1"),
        (lambda b: b.add(0, {"rewards": torch.zeros(1)}), "transitions must have the fields"),
        (lambda b: b.add(0, {**transitions(0, 2), "rewards": torch.zeros(3)}), "the same number of transitions"),
        (lambda b: b.add(0, {**transitions(0, 2), "observations": torch.zeros(2, 3)}), r"must be \[n, 2\]"),
        (lambda b: b.sample([0], 0, torch.Generator()), "batch_size must be >= 1, got 0"),
    ],
)
def test_bad_inputs_are_refused_with_what_is_allowed(call, message):
    buffers = TaskReplayBuffers(num_tasks=2, capacity=3, fields=FIELDS)
    with pytest.raises(ValueError, match=message):
        call(buffers)
    with pytest.raises(ValueError, match="num_tasks and capacity must be >= 1, got 2 and 0"):
        TaskReplayBuffers(num_tasks=2, capacity=0, fields=FIELDS)
