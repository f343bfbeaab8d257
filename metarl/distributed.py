"""Meta-training over several processes with ``torch.distributed``, launched by ``torchrun``.

The meta-batch of tasks is defined globally: every process draws the same tasks from the same task sampler, keeps
its contiguous block of them (:meth:`Workers.shard`) and samples and adapts only those. Whatever an update needs
from the whole meta-batch is summed across processes: the meta-gradient, each curvature product of TRPO's conjugate
gradient, the line search's loss and KL, PPO's gradients, advantage and return moments, the logged metrics. So
every process takes the same step and holds the same parameters.

Randomness is arranged so that N processes reproduce one process: every sub-env's seed is its position in the whole
meta-batch (``seed + global index``), and action noise is drawn for the whole meta-batch by every process
(:func:`sample_actions`), which then uses its block. The RNG streams advance identically everywhere, and a process's
actions are exactly the ones a single process would have drawn for its tasks. What differs is only the order of
floating-point sums across processes.

Only rank 0 writes (logs, checkpoints, results); a process that dies ends the job through ``torchrun``, and one that
hangs makes the others' next collective fail after ``timeout_s`` (:func:`init_workers`).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch.distributions import Categorical, Distribution, Independent, Normal

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TaskShard:
    """This process's contiguous block ``[start, stop)`` of a meta-batch of ``total`` tasks."""

    start: int
    stop: int
    total: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def select(self, items: Sequence[T]) -> list[T]:
        """This block of a sequence as long as the meta-batch."""
        if len(items) != self.total:
            raise ValueError(f"expected {self.total} items (the whole meta-batch), got {len(items)}")
        return list(items[self.start : self.stop])


class Workers:
    """The processes of one meta-training job: this one's rank, how many there are, and the collectives the agents
    use. With one process every method is the identity and ``torch.distributed`` is never touched.

    Args:
        rank: this process's rank.
        world_size: number of processes.
        timeout_s: how long a collective may wait for the other processes (for the error message).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, timeout_s: float | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world_size {world_size}: need 0 <= rank < world_size")
        self.rank = rank
        self.world_size = world_size
        self.timeout_s = timeout_s

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs, checkpoints and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, total: int) -> TaskShard:
        """This process's block of a meta-batch of ``total`` tasks: blocks differ in size by at most one."""
        if total < self.world_size:
            raise ValueError(f"a meta-batch of {total} tasks cannot be split over {self.world_size} processes")
        return TaskShard(total * self.rank // self.world_size, total * (self.rank + 1) // self.world_size, total)

    # -- collectives ----------------------------------------------------------------------------------------------
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``tensor`` over all processes (a new tensor, detached)."""
        total = tensor.detach().clone()
        if self.distributed:
            self._collective(dist.all_reduce, total)
        return total

    def sum_floats(self, values: Sequence[float | torch.Tensor]) -> list[float]:
        """Several scalars summed over all processes in one collective."""
        stacked = torch.stack([torch.as_tensor(value, dtype=torch.float64).detach().cpu() for value in values])
        return self.sum(stacked.to(self._collective_device())).tolist()

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace every parameter's ``.grad`` by its sum over all processes (a missing gradient counts as zero),
        in one collective."""
        if not self.distributed:
            return
        parameters = list(parameters)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._collective(dist.all_reduce, flat)
        offset = 0
        for parameter in parameters:
            parameter.grad = flat[offset : offset + parameter.numel()].view_as(parameter).clone()
            offset += parameter.numel()

    def gather(self, local: torch.Tensor, shard: TaskShard) -> torch.Tensor:
        """The whole meta-batch's ``[total, ...]`` tensor from every process's block ``local`` ``[shard.size, ...]``,
        in task order."""
        if not self.distributed:
            return local
        largest = -(-shard.total // self.world_size)
        padded = torch.zeros((largest, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._collective(dist.all_gather, gathered, padded)
        sizes = [Workers(rank, self.world_size).shard(shard.total).size for rank in range(self.world_size)]
        return torch.cat([block[:size] for block, size in zip(gathered, sizes, strict=True)])

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object) on every process."""
        if not self.distributed:
            return value
        holder = [value if self.is_main else None]
        self._collective(dist.broadcast_object_list, holder, src=0)
        return holder[0]

    def _collective_device(self) -> torch.device:
        if self.distributed and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _collective(self, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            operation(*args, **kwargs)
        except RuntimeError as error:
            raise RuntimeError(
                f"rank {self.rank}: a collective over {self.world_size} processes failed or did not complete within "
                f"{self.timeout_s} s (dist_timeout_s): another process has died or hangs ({error})"
            ) from error


def init_workers(device: torch.device, timeout_s: float) -> Workers:
    """The job's :class:`Workers`, joining the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    The backend is NCCL for CUDA devices and gloo for CPU ones. ``timeout_s`` bounds every collective: a process
    whose peer hangs raises after it instead of waiting forever. Without ``torchrun`` (no ``WORLD_SIZE``) this is
    the single-process ``Workers()``.
    """
    world_size = launched_world_size()
    if world_size == 1:
        return Workers()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run with one process")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's collectives and object broadcasts run on this process's GPU
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Workers(dist.get_rank(), dist.get_world_size(), timeout_s)


def close_workers() -> None:
    """Leave the process group (if this process joined one), all processes together."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no process tears its connections down while another still uses them
        dist.destroy_process_group()


def end_worker_process(status: int) -> NoReturn:
    """End a ``torchrun`` worker whose job is done (results written, process group left) at once, skipping the
    interpreter's teardown: there, about one job in 50 on this machine had a worker abort in gloo's C++ threads
    ("terminate called without an active exception", exit code -6) after everything had succeeded, and torchrun
    reported the job as failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def local_device(device: torch.device) -> torch.device:
    """Under ``torchrun``, each process's own GPU (``LOCAL_RANK``) when ``device`` is CUDA without an index."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def launched_world_size() -> int:
    """How many processes ``torchrun`` started for this job (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True unless this process is a non-zero rank of a ``torchrun`` job."""
    return int(os.environ.get("RANK", "0")) == 0


def sample_actions(distribution: Distribution, shard: TaskShard | None = None) -> torch.Tensor:
    """A sample of ``distribution`` (batch shape ``[T, ...]``: T tasks or trials first) drawn from torch's global
    RNG as if the whole meta-batch of ``shard.total`` were being sampled, keeping this process's block.

    Every process thus consumes the same random numbers and draws exactly the noise a single process would draw
    for its tasks. Gaussians are ``mean + std * ε`` (bitwise what ``Normal.sample`` gives); categoricals invert the
    CDF at one uniform per sample.
    """

    def noise(draw: Callable[..., torch.Tensor], shape: torch.Size, device: torch.device) -> torch.Tensor:
        if shard is None:
            return draw(shape, device=device)
        if shape[0] != shard.size:
            raise ValueError(f"a block of {shard.size} tasks was expected, got a batch of {shape[0]}")
        return draw((shard.total, *shape[1:]), device=device)[shard.start : shard.stop]

    base = distribution.base_dist if isinstance(distribution, Independent) else distribution
    if isinstance(base, Normal):
        return base.loc + base.scale * noise(torch.randn, base.loc.shape, base.loc.device)
    if isinstance(base, Categorical):
        probs = base.probs
        uniform = noise(torch.rand, probs.shape[:-1], probs.device)
        cumulative = probs.cumsum(dim=-1)
        actions = torch.searchsorted(cumulative, uniform.unsqueeze(-1).to(cumulative.dtype)).squeeze(-1)
        return actions.clamp(max=probs.shape[-1] - 1)
    raise TypeError(f"sample_actions supports Normal and Categorical distributions, got {type(base).__name__}")
