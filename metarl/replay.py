"""Replay buffers for off-policy meta-RL: one ring buffer of transitions per training task, preallocated.

Off-policy meta-learners (PEARL: Rakelly et al., ICML 2019) keep the transitions of every training task apart,
because a batch for task t must hold task t's transitions only: the context a task's latent is inferred from, and the
critic's batch conditioned on that latent. :class:`TaskReplayBuffers` holds them as one tensor per field of shape
``[num_tasks, capacity, ...]`` on the agent's device, allocated once: adding writes rows in place (the oldest are
overwritten once a task's ring is full), and sampling draws a batch for several tasks in one indexing operation,
stacked ``[tasks, batch, ...]``, with no Python loop over tasks. Its state (the tensors, each task's fill and write
position) round-trips through :meth:`~TaskReplayBuffers.state_dict` exactly, so a resumed run samples what an
uninterrupted one would; :func:`replay_bytes` is its size for a run's memory budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

FieldSpec = Mapping[str, tuple[tuple[int, ...], torch.dtype]]
"""Each stored field's per-transition shape and dtype, by name (``{"observations": ((3,), torch.float32), ...}``)."""


def replay_bytes(num_tasks: int, capacity: int, fields: FieldSpec) -> int:
    """The bytes :class:`TaskReplayBuffers` allocates for ``num_tasks`` rings of ``capacity`` transitions."""
    per_transition = 0
    for shape, dtype in fields.values():
        elements = 1
        for size in shape:
            elements *= size
        per_transition += elements * torch.empty((), dtype=dtype).element_size()
    return num_tasks * capacity * per_transition


class TaskReplayBuffers:
    """A ring buffer of ``capacity`` transitions for each of ``num_tasks`` tasks (indexed 0 .. num_tasks - 1).

    Args:
        num_tasks: how many tasks have a buffer.
        capacity: transitions kept per task; once full, each new transition replaces the task's oldest.
        fields: what a transition holds (:data:`FieldSpec`).
        device: where the tensors live (the agent's device).
    """

    def __init__(self, num_tasks: int, capacity: int, fields: FieldSpec, device: torch.device | str = "cpu") -> None:
        if num_tasks < 1 or capacity < 1:
            raise ValueError(f"num_tasks and capacity must be >= 1, got {num_tasks} and {capacity}")
        if not fields:
            raise ValueError("fields must name at least one field of a transition")
        self.num_tasks = num_tasks
        self.capacity = capacity
        self.fields = {name: (tuple(shape), dtype) for name, (shape, dtype) in fields.items()}
        self.device = torch.device(device)
        self.data = {
            name: torch.zeros((num_tasks, capacity, *shape), dtype=dtype, device=self.device)
            for name, (shape, dtype) in self.fields.items()
        }
        self.sizes = torch.zeros(num_tasks, dtype=torch.long)
        """Each task's filled rows (at most ``capacity``)."""
        self.positions = torch.zeros(num_tasks, dtype=torch.long)
        """Each task's next row to write."""

    def add(self, task: int, transitions: Mapping[str, torch.Tensor]) -> None:
        """Append ``n`` transitions (every field, each ``[n, *shape]``) to ``task``'s ring, wrapping around."""
        self._check_task(task)
        if set(transitions) != set(self.fields):
            raise ValueError(f"transitions must have the fields {sorted(self.fields)}, got {sorted(transitions)}")
        counts = {name: value.shape[0] for name, value in transitions.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"every field must hold the same number of transitions, got {counts}")
        count = next(iter(counts.values()))
        for name, value in transitions.items():
            shape = self.fields[name][0]
            if tuple(value.shape[1:]) != shape:
                raise ValueError(f"field {name!r} must be [n, {', '.join(map(str, shape))}], got {list(value.shape)}")
        if count == 0:
            return
        # more than a ring's worth: only the last `capacity` can stay
        start = max(0, count - self.capacity)
        kept = count - start
        rows = (int(self.positions[task]) + start + torch.arange(kept)) % self.capacity
        rows = rows.to(self.device)
        for name, value in transitions.items():
            self.data[name][task, rows] = value[start:].to(device=self.device, dtype=self.fields[name][1])
        self.positions[task] = (int(self.positions[task]) + count) % self.capacity
        self.sizes[task] = min(self.capacity, int(self.sizes[task]) + count)

    def clear(self, task: int) -> None:
        """Empty ``task``'s ring (PEARL refills its encoder buffer with fresh context each iteration)."""
        self._check_task(task)
        self.sizes[task] = 0
        self.positions[task] = 0

    def sample(self, tasks: Sequence[int], batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``batch_size`` transitions of each of ``tasks``, drawn uniformly with replacement from the task's filled
        rows: every field stacked ``[len(tasks), batch_size, *shape]``. ``generator`` (on the CPU) makes the draw
        reproducible."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for task in tasks:
            self._check_task(task)
        task_index = torch.as_tensor(list(tasks), dtype=torch.long)
        sizes = self.sizes[task_index]
        if bool((sizes == 0).any()):
            empty = [int(task) for task, size in zip(task_index, sizes, strict=True) if size == 0]
            raise ValueError(f"cannot sample tasks {empty}: their buffers are empty")
        uniform = torch.rand(len(task_index), batch_size, generator=generator)
        rows = (uniform * sizes.unsqueeze(1)).long().clamp_max(sizes.unsqueeze(1) - 1)
        task_index, rows = task_index.to(self.device), rows.to(self.device)
        return {name: value[task_index.unsqueeze(1), rows] for name, value in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        """The filled rows, each task's fill and write position, and the capacity (``torch.load(weights_only=True)``
        reads it). Only the rows below the largest fill are saved: a file the size of the data, not of the rings."""
        filled = int(self.sizes.max()) if self.num_tasks else 0
        return {
            "data": {name: value[:, :filled].clone() for name, value in self.data.items()},
            "sizes": self.sizes.clone(),
            "positions": self.positions.clone(),
            "capacity": self.capacity,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of buffers with the same tasks, capacity and fields."""
        data = state["data"]
        if set(data) != set(self.data):
            raise ValueError(f"the saved buffers hold fields {sorted(data)}, these {sorted(self.data)}")
        if state.get("capacity") != self.capacity:
            raise ValueError(f"the saved buffers have capacity {state.get('capacity')}, these {self.capacity}")
        filled = None
        for name, value in data.items():
            expected = self.data[name]
            rows = value.shape[1] if value.dim() > 1 else -1
            if (
                value.dim() != expected.dim()
                or value.shape[0] != expected.shape[0]
                or value.shape[2:] != expected.shape[2:]
                or not 0 <= rows <= self.capacity
                or rows != (filled if filled is not None else rows)
                or value.dtype != expected.dtype
            ):
                raise ValueError(
                    f"saved field {name!r} is {list(value.shape)} {value.dtype}, these buffers hold "
                    f"{list(expected.shape)} {expected.dtype}"
                )
            filled = rows
        # rows written before this load and above the saved fill are zeroed: the state equals the saved one exactly
        previously = int(self.sizes.max()) if self.num_tasks else 0
        for name, value in data.items():
            if previously > (filled or 0):
                self.data[name][:, filled:previously].zero_()
            self.data[name][:, :filled].copy_(value)
        self.sizes.copy_(state["sizes"])
        self.positions.copy_(state["positions"])

    def _check_task(self, task: int) -> None:
        if not 0 <= int(task) < self.num_tasks:
            raise ValueError(f"task {task} is not one of the buffers' tasks 0 .. {self.num_tasks - 1}")
