"""Meta-World's ML1, ML10 and ML45 benchmarks as task families: the optional extra, ``pip install "metarl[metaworld]"``.

A task is one of Meta-World's own tasks: an environment (``reach-v3``, ...) and the goal and object positions its
benchmark drew for it, named here by ``MetaWorldTask(env_name, split, index)``, its place in the benchmark's
``train_tasks`` or ``test_tasks``. The split is Meta-World's: its test tasks (ML1: 50 new goals of the same
environment; ML10 / ML45: 50 goals of each held-out environment) are the held-out *test* set, and the *validation*
set is carved from its training tasks (the same share of every training environment's tasks, drawn with the split
seed), so that model selection never sees a test task.

Ids (registered by ``import metarl.envs`` when Meta-World is installed)::

    MetaRL/MetaWorld-ML1-v0          ML1 of any environment: gymnasium.make(id, env_name="push-v3")
    MetaRL/MetaWorld-ML1-reach-v0    ML1 of reach-v3 (likewise -push-v0 and -pick-place-v0)
    MetaRL/MetaWorld-ML10-v0
    MetaRL/MetaWorld-ML45-v0

Each step is Meta-World's own ``step``: its V2 reward by default (``reward_function_version="v2"``, the reward
the Meta-World paper's updated results use), its 39-dimensional observation with the goal hidden (zeros), and
``info["success"]``, which the evaluator turns into a success rate (an episode succeeds if any step does, as
Meta-World's own evaluation counts it). Episodes are truncated after ``horizon`` steps (500, Meta-World's
``max_path_length``; a shorter horizon is allowed). The single env keeps one Meta-World env per environment
name, so that an ML10 / ML45 sub-env switches environments with its task; the vector env is Gymnasium's
``SyncVectorEnv`` of these single envs.

References:
    Yu et al. "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta Reinforcement Learning", CoRL 2019
    (updated version arXiv:1910.10897v2, Appendix D for the algorithms' settings).
    McLean et al. "Meta-World+: An Improved, Standardized, RL Benchmark", 2025 (the v3 environments of
    metaworld 3.x).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from metarl.env import TaskHolder, check_action
from metarl.tasks import DEFAULT_SPLIT_FRACTIONS, TaskFamily, TaskSplit, check_count, check_real

BENCHMARKS = ("ML1", "ML10", "ML45")
REWARD_FUNCTION_VERSIONS = ("v1", "v2")
MAX_PATH_LENGTH = 500
"""Meta-World's episode length: its envs refuse to step further without a reset."""


@dataclasses.dataclass(frozen=True)
class MetaWorldTask:
    """One Meta-World task: its environment and its place in the benchmark's task list."""

    env_name: str
    """Meta-World's environment name, e.g. ``"reach-v3"``."""
    split: str
    """``"train"`` (the benchmark's ``train_tasks``) or ``"test"`` (its ``test_tasks``)."""
    index: int
    """Position in that list."""


def require_metaworld() -> Any:
    """The ``metaworld`` module, or an ImportError that says how to install it."""
    try:
        import metaworld
    except ImportError as error:
        raise ImportError(
            'the Meta-World task families need the optional extra: pip install "metarl[metaworld]"'
        ) from error
    return metaworld


@functools.cache
def _benchmark(benchmark: str, env_name: str | None, seed: int) -> Any:
    """Meta-World's benchmark object (its task lists and environment classes), built once per process: building
    ML45 instantiates every environment and takes tens of seconds."""
    metaworld = require_metaworld()
    if benchmark == "ML1":
        return metaworld.ML1(env_name, seed=seed)
    return getattr(metaworld, benchmark)(seed=seed)


class MetaWorldEnv(TaskHolder[MetaWorldTask], gym.Env):
    """One Meta-World task at a time behind the suite's task semantics (``set_task``, ``reset(options=...)``)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - Gymnasium's own convention

    def __init__(self, family: MetaWorldFamily, task: MetaWorldTask | None = None) -> None:
        self._init_task(family, task)
        self.observation_space = family.observation_space
        self.action_space = family.action_space
        # the Meta-World env of the current task's environment, rebuilt when a task of another environment comes
        # (one per environment would hold up to 45 models per sub-env on ML45)
        self._current: Any = None
        self._current_name: str | None = None
        self._elapsed_steps = 0
        self._needs_reset = True

    def _on_task_activated(self) -> None:
        family: MetaWorldFamily = self.family  # type: ignore[assignment]
        task = self._task
        if self._current is None or self._current_name != task.env_name:
            if self._current is not None:
                self._current.close()
            classes = {**family.benchmark_object.train_classes, **family.benchmark_object.test_classes}
            self._current = classes[task.env_name](reward_function_version=family.reward_function_version)
            self._current_name = task.env_name
        self._current.set_task(family.metaworld_task(task))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if options is not None and "task" in options:
            self.set_task(options["task"])
        self._activate_task(self.np_random)
        # Meta-World's reset draws nothing for a task whose positions are fixed; the seed goes to it all the same
        observation, info = self._current.reset(seed=None if seed is None else int(self.np_random.integers(2**31)))
        self._elapsed_steps = 0
        self._needs_reset = False
        return observation, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._needs_reset:
            raise RuntimeError("MetaWorldEnv.step() called before reset() or after the episode ended")
        action = check_action(self.action_space, action)
        observation, reward, terminated, truncated, info = self._current.step(action)
        self._elapsed_steps += 1
        truncated = bool(truncated) or (not terminated and self._elapsed_steps >= self.family.horizon)
        self._needs_reset = bool(terminated) or truncated
        return observation, float(reward), bool(terminated), truncated, info

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None


class MetaWorldFamily(TaskFamily[MetaWorldTask]):
    """Meta-World's ML1 / ML10 / ML45 (see the module docstring).

    ## Arguments
    ``benchmark`` ("ML1", "ML10" or "ML45"), ``env_name`` (ML1's environment, e.g. "reach-v3"; must be ``None`` for
    ML10 / ML45), ``seed`` (Meta-World's own seed of its task lists, 0), ``horizon`` (at most 500),
    ``reward_function_version`` ("v2").
    """

    name: ClassVar[str] = "MetaWorld-ML1"
    version = 0
    task_type = MetaWorldTask
    env_class = MetaWorldEnv

    def __init__(
        self,
        benchmark: str = "ML1",
        env_name: str | None = "reach-v3",
        seed: int = 0,
        horizon: int = MAX_PATH_LENGTH,
        reward_function_version: str = "v2",
    ) -> None:
        metaworld = require_metaworld()
        if benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark must be one of {list(BENCHMARKS)}, got {benchmark!r}")
        if benchmark == "ML1":
            known = sorted(metaworld.ALL_V3_ENVIRONMENTS)
            if env_name not in known:
                raise ValueError(f"env_name {env_name!r} is not a Meta-World environment; allowed: {known}")
        elif env_name is not None:
            raise ValueError(f"env_name is ML1's argument; {benchmark} has its own environments, got {env_name!r}")
        if reward_function_version not in REWARD_FUNCTION_VERSIONS:
            raise ValueError(
                f"reward_function_version must be one of {list(REWARD_FUNCTION_VERSIONS)}, got "
                f"{reward_function_version!r}"
            )
        self.benchmark = benchmark
        self.env_name = env_name
        self.seed = check_count("seed", seed, minimum=0)
        self.horizon = check_count("horizon", horizon)
        if self.horizon > MAX_PATH_LENGTH:
            raise ValueError(f"horizon must be at most Meta-World's {MAX_PATH_LENGTH} steps, got {horizon}")
        self.reward_function_version = reward_function_version
        # every Meta-World v3 environment has these spaces (goal hidden: the last three observations are zeros)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (39,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

    # -- Meta-World's objects ------------------------------------------------------------------------------------
    @property
    def benchmark_object(self) -> Any:
        """Meta-World's benchmark (built on first use and cached per process)."""
        return _benchmark(self.benchmark, self.env_name, self.seed)

    def benchmark_tasks(self, split: str) -> list[Any]:
        """Meta-World's ``train_tasks`` or ``test_tasks``."""
        return self.benchmark_object.train_tasks if split == "train" else self.benchmark_object.test_tasks

    def metaworld_task(self, task: MetaWorldTask) -> Any:
        """The ``metaworld.Task`` that ``task`` names."""
        return self.benchmark_tasks(task.split)[task.index]

    def tasks_of(self, split: str) -> list[MetaWorldTask]:
        """Every task of Meta-World's ``train`` or ``test`` list, in its order."""
        return [
            MetaWorldTask(env_name=task.env_name, split=split, index=index)
            for index, task in enumerate(self.benchmark_tasks(split))
        ]

    # -- the task-family protocol --------------------------------------------------------------------------------
    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[MetaWorldTask]:
        """Draw ``num_tasks`` of Meta-World's training tasks uniformly (with replacement) using ``rng``."""
        check_count("num_tasks", num_tasks)
        train = self.tasks_of("train")
        return [train[i] for i in rng.integers(len(train), size=num_tasks)]

    def _check_task_values(self, task: MetaWorldTask) -> None:
        if task.split not in ("train", "test"):
            raise ValueError(f"task.split must be 'train' or 'test', got {task.split!r}")
        tasks = self.benchmark_tasks(task.split)
        if isinstance(task.index, bool) or not isinstance(task.index, int) or not 0 <= task.index < len(tasks):
            raise ValueError(
                f"task.index must be an int in [0, {len(tasks)}) for the {task.split} tasks, got {task.index!r}"
            )
        if tasks[task.index].env_name != task.env_name:
            raise ValueError(
                f"task {task.split}[{task.index}] of {self.benchmark} is a {tasks[task.index].env_name} task, "
                f"not {task.env_name!r}"
            )

    def task_arrays(self, tasks: Sequence[MetaWorldTask]) -> dict[str, np.ndarray]:
        """Numbers that identify each task: its environment's position in the benchmark's (train, then test)
        environment list, whether it is a test task, its index, and Meta-World's hidden goal (``rand_vec``)."""
        names = [*self.benchmark_object.train_classes, *self.benchmark_object.test_classes]
        environments = {name: position for position, name in enumerate(dict.fromkeys(names))}
        return {
            "environment": np.asarray([environments[task.env_name] for task in tasks], dtype=np.float64),
            "test": np.asarray([task.split == "test" for task in tasks], dtype=np.float64),
            "index": np.asarray([task.index for task in tasks], dtype=np.float64),
            "goal": np.asarray([self._goal(task) for task in tasks], dtype=np.float64),
        }

    def _goal(self, task: MetaWorldTask) -> np.ndarray:
        import pickle

        # Meta-World's own task data, from its own benchmark object: not a file from outside
        data = pickle.loads(self.metaworld_task(task).data)
        return np.asarray(data["rand_vec"], dtype=np.float64)[:3]

    def split(
        self,
        seed: int = 0,
        num_tasks: int = 1000,
        fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    ) -> TaskSplit[MetaWorldTask]:
        """Meta-World's own split: its test tasks are the test set; the validation set takes the share
        ``fractions[1] / (fractions[0] + fractions[1])`` of every training environment's tasks (at least one),
        drawn with ``seed``; the rest are the training set. ``num_tasks`` is not used: the benchmark fixes the
        number of tasks (ML1: 50 train and 50 test; ML10: 500 and 250; ML45: 2250 and 250)."""
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"split seed must be a non-negative int, got {seed!r}")
        train_share, validation_share, _ = (check_real(f"fractions[{i}]", f, 0.0, 1.0) for i, f in enumerate(fractions))
        share = validation_share / (train_share + validation_share)
        rng = np.random.default_rng(seed)
        train, validation = [], []
        for env_name in dict.fromkeys(task.env_name for task in self.tasks_of("train")):
            tasks = [task for task in self.tasks_of("train") if task.env_name == env_name]
            num_validation = max(1, math.floor(share * len(tasks) + 1e-9)) if share > 0 else 0
            chosen = set(rng.choice(len(tasks), size=num_validation, replace=False).tolist())
            validation += [task for i, task in enumerate(tasks) if i in chosen]
            train += [task for i, task in enumerate(tasks) if i not in chosen]
        return TaskSplit(train=tuple(train), validation=tuple(validation), test=tuple(self.tasks_of("test")), seed=seed)


class MetaWorldML1Reach(MetaWorldFamily):
    name: ClassVar[str] = "MetaWorld-ML1-reach"


class MetaWorldML1Push(MetaWorldFamily):
    name: ClassVar[str] = "MetaWorld-ML1-push"


class MetaWorldML1PickPlace(MetaWorldFamily):
    name: ClassVar[str] = "MetaWorld-ML1-pick-place"


class MetaWorldML10(MetaWorldFamily):
    name: ClassVar[str] = "MetaWorld-ML10"


class MetaWorldML45(MetaWorldFamily):
    name: ClassVar[str] = "MetaWorld-ML45"


ML1_FAMILIES = {"reach-v3": MetaWorldML1Reach, "push-v3": MetaWorldML1Push, "pick-place-v3": MetaWorldML1PickPlace}
"""The ML1 benchmarks registered under their own ids (any other environment: ``MetaWorld-ML1`` with ``env_name``)."""


def register_meta_world_families() -> list[str]:
    """Register the Meta-World ids (see the module docstring); returns them."""
    from metarl.registry import register_family

    ids = [register_family(MetaWorldFamily)]
    ids += [register_family(family, kwargs={"env_name": name}) for name, family in ML1_FAMILIES.items()]
    ids.append(register_family(MetaWorldML10, kwargs={"benchmark": "ML10", "env_name": None}))
    ids.append(register_family(MetaWorldML45, kwargs={"benchmark": "ML45", "env_name": None}))
    return ids
