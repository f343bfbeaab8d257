"""The task-family protocol: what every family of related tasks provides, and how its tasks are split.

A *task* is a small frozen dataclass (hashable, loggable) holding the parameters that vary across the family: a
goal, arm means, a transition table. A *family* samples tasks from an explicit ``numpy.random.Generator``, checks
that a task belongs to it, splits tasks into meta-train / validation / held-out test sets, and builds envs: a single
Gymnasium env (``make_env``) and a batched vector env over N sub-envs, each with its own task (``make_vec_env``).
Everything an agent needs to know about a family is its observation space, its action space and its horizon.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import gymnasium as gym
import numpy as np

if TYPE_CHECKING:
    import torch

    from metarl.env import TaskHolder

TaskT = TypeVar("TaskT")

DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclasses.dataclass(frozen=True)
class TaskSplit(Generic[TaskT]):
    """Meta-train, validation and held-out test tasks of one family, drawn deterministically from ``seed``."""

    train: tuple[TaskT, ...]
    """Tasks the agent meta-trains on."""
    validation: tuple[TaskT, ...]
    """Tasks for model selection during meta-training (best checkpoint, early stopping)."""
    test: tuple[TaskT, ...]
    """Held-out tasks, used only by the final evaluation; disjoint from ``train`` and ``validation``."""
    seed: int
    """The split seed the three sets were drawn from."""

    def __getitem__(self, name: str) -> tuple[TaskT, ...]:
        if name not in ("train", "validation", "test"):
            raise KeyError(f"unknown split {name!r}; allowed: 'train', 'validation', 'test'")
        return getattr(self, name)


class TaskFamily(ABC, Generic[TaskT]):
    """A distribution over related tasks and the envs that play them.

    Subclasses set the class attributes ``name``, ``version``, ``task_type`` and ``env_class`` (and
    ``vector_env_class`` when they have a native batched env), set ``observation_space``, ``action_space`` and
    ``horizon`` in ``__init__``, and implement ``sample_tasks`` and ``_check_task_values``. A family without a native
    batched env gets a Gymnasium ``SyncVectorEnv`` of its single env from ``make_vec_env``.

    Families are configured by keyword arguments only, the same ones ``gymnasium.make(id, **kwargs)`` accepts, and
    store each one under its own name (``config()`` reads them back).
    """

    name: ClassVar[str]
    """Registered as ``<namespace>/<name>-v<version>`` (``MetaRL`` unless ``register_family`` is given another)."""
    version: ClassVar[int] = 0
    """Bumped whenever reward, observation or task-distribution semantics change."""
    task_type: ClassVar[type]
    """The frozen dataclass of this family's tasks."""
    env_class: ClassVar[type[gym.Env]]
    """The single env, built as ``env_class(family, task)``: a :class:`metarl.MetaEnv`, or any Gymnasium env with
    the :class:`metarl.env.TaskHolder` mixin (the MuJoCo families')."""
    vector_env_class: ClassVar[type[gym.vector.VectorEnv] | None] = None
    """The native batched env, if any, built as ``vector_env_class(family, num_envs, tasks, device,
    autoreset_mode)``; it is registered as the Gymnasium ``vector_entry_point``."""

    num_distinct_tasks: ClassVar[int | None] = None
    """How many distinct tasks the family has, when it has only a few (the two directions of ``HalfCheetahDir``):
    such a family's split holds all of them in every set, and the trainer draws its meta-batches with replacement.
    ``None`` for a family with a continuum or a large number of tasks."""

    observation_space: gym.Space
    action_space: gym.Space
    horizon: int

    # -- tasks -------------------------------------------------------------------------------------------------
    @abstractmethod
    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[TaskT]:
        """Draw ``num_tasks`` tasks i.i.d. from the family's task distribution using only ``rng``."""

    @abstractmethod
    def _check_task_values(self, task: TaskT) -> None:
        """Raise ``ValueError`` naming the bad field if a task of the right type has invalid parameters."""

    def check_task(self, task: Any) -> TaskT:
        """Return ``task`` if it is a valid task of this family, else raise ``TypeError`` / ``ValueError``."""
        if not isinstance(task, self.task_type):
            raise TypeError(
                f"{type(self).__name__} expects a task of type {self.task_type.__name__}, "
                f"got {type(task).__name__}: {task!r}"
            )
        self._check_task_values(task)
        return task

    def task_arrays(self, tasks: Sequence[TaskT]) -> dict[str, np.ndarray]:
        """Stack the parameters of ``tasks`` into arrays with a leading task dimension, one per dataclass field.

        Single and batched envs read task parameters from these arrays (``task_params``), logs and rollouts attach
        them to data. A family whose envs need derived quantities (a CDF, say) extends the dict.
        """
        return {
            field.name: np.asarray([getattr(task, field.name) for task in tasks], dtype=np.float64)
            for field in dataclasses.fields(self.task_type)
        }

    def split(
        self,
        seed: int = 0,
        num_tasks: int = 1000,
        fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    ) -> TaskSplit[TaskT]:
        """Split ``num_tasks`` distinct tasks drawn from ``seed`` into train / validation / test.

        The tasks are drawn from their own generator, ``np.random.default_rng(seed)``, so which tasks are drawn
        depends on nothing but ``seed`` and ``num_tasks``. Held-out tasks never occur in training because the pool
        holds distinct tasks only (disjoint draws); a family with fewer distinct tasks than asked for raises.

        Args:
            seed: split seed, a non-negative int.
            num_tasks: size of the pool that is split, at least 2.
            fractions: shares of train, validation and test; non-negative, summing to 1, train and test > 0.

        Returns:
            The three disjoint sets, in draw order.
        """
        sizes = split_sizes(num_tasks, fractions)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"split seed must be a non-negative int, got {seed!r}")
        rng = np.random.default_rng(seed)
        pool: dict[TaskT, None] = {}  # insertion-ordered set
        attempts = 0
        while len(pool) < num_tasks:
            attempts += 1
            if attempts > 100:
                raise ValueError(
                    f"{type(self).__name__} yielded only {len(pool)} distinct tasks in 100 draws of {num_tasks}; "
                    f"ask for at most {len(pool)} tasks or override split() for a finite family"
                )
            for task in self.sample_tasks(rng, num_tasks - len(pool)):
                pool.setdefault(task, None)
        tasks = tuple(pool)
        num_train, num_validation, _ = sizes
        return TaskSplit(
            train=tasks[:num_train],
            validation=tasks[num_train : num_train + num_validation],
            test=tasks[num_train + num_validation :],
            seed=seed,
        )

    # -- envs --------------------------------------------------------------------------------------------------
    def make_env(self, task: TaskT | None = None) -> TaskHolder[TaskT]:
        """Build a single Gymnasium env of this family, playing ``task`` once it is reset."""
        return self.env_class(self, task)

    def make_vec_env(
        self,
        num_envs: int,
        tasks: Sequence[TaskT] | None = None,
        *,
        device: str | torch.device = "cpu",
        autoreset_mode: gym.vector.AutoresetMode | str = gym.vector.AutoresetMode.NEXT_STEP,
    ) -> gym.vector.VectorEnv:
        """Build a vector env over ``num_envs`` sub-envs, sub-env ``i`` playing ``tasks[i]`` once reset.

        The native batched env when the family has one (on ``device``); otherwise a Gymnasium ``SyncVectorEnv``
        over ``make_env``, whose arrays live in host memory whatever ``device`` says.
        """
        if self.vector_env_class is not None:
            return self.vector_env_class(self, num_envs, tasks, device, autoreset_mode)
        check_count("num_envs", num_envs)
        envs = gym.vector.SyncVectorEnv(
            [self.make_env for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode(autoreset_mode)
        )
        if tasks is not None:
            set_vector_tasks(envs, tasks)
        return envs

    def config(self) -> dict[str, Any]:
        """The keyword arguments this family was built with, for logs and checkpoints.

        Read back from the attributes of the same names, which is why a family stores each constructor argument
        (validated) under its own name.
        """
        parameters = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in parameters if name != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


# -- validation helpers shared by families ---------------------------------------------------------------------
def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_real(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """Return ``value`` as a float if it is a finite real in ``[low, high]``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value}")
    return value


def split_sizes(num_tasks: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Sizes of the train / validation / test sets; validation and test are rounded down, train takes the rest."""
    check_count("num_tasks", num_tasks, minimum=2)
    if len(fractions) != 3:
        raise ValueError(f"fractions must be three numbers (train, validation, test), got {fractions!r}")
    train, validation, test = (check_real(f"fractions[{i}]", f, 0.0, 1.0) for i, f in enumerate(fractions))
    if abs(train + validation + test - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {tuple(fractions)} (sum {train + validation + test})")
    if train == 0.0 or test == 0.0:
        raise ValueError(f"train and test fractions must be > 0, got {tuple(fractions)}")
    # the epsilon keeps float error from flooring 0.29 * 100 = 28.999999999999996 to 28
    num_validation = math.floor(validation * num_tasks + 1e-9)
    num_test = math.floor(test * num_tasks + 1e-9)
    num_train = num_tasks - num_validation - num_test
    if num_train < 1 or num_test < 1:
        raise ValueError(
            f"num_tasks={num_tasks} with fractions {tuple(fractions)} leaves an empty train or test set; "
            "use more tasks or larger fractions"
        )
    return num_train, num_validation, num_test


def set_vector_tasks(envs: gym.vector.VectorEnv, tasks: Sequence[Any]) -> None:
    """Give sub-env ``i`` of any vector env ``tasks[i]`` (effective at its next reset), in one call.

    Native batched envs (anything with ``set_tasks``: :class:`TorchVectorEnv`, the MuJoCo batched env) take them
    at once; Gymnasium's Sync/Async vector envs get them through ``set_attr`` on each sub-env's ``task`` property.
    """
    if len(tasks) != envs.num_envs:
        raise ValueError(f"need one task per sub-env ({envs.num_envs}), got {len(tasks)}")
    if callable(getattr(envs, "set_tasks", None)):
        envs.set_tasks(tasks)
    else:
        envs.set_attr("task", list(tasks))
