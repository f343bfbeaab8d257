"""Point-robot navigation families: MAML's dense 2D navigation and PEARL/varibad's sparse point robot."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import torch

from metarl.env import MetaEnv
from metarl.tasks import TaskFamily, check_count, check_real
from metarl.vector import TorchVectorEnv

DENSE_REWARD_KEY = "dense_reward"
"""The sparse point robot's ``info`` key of the dense reward, minus the distance to the goal."""


@dataclasses.dataclass(frozen=True)
class GoalTask:
    """A point-robot task: the goal position the robot must reach."""

    goal: tuple[float, float]


def _check_goal(task: GoalTask) -> tuple[float, float]:
    if not isinstance(task.goal, tuple) or len(task.goal) != 2:
        raise ValueError(f"task.goal must be a tuple (x, y), got {task.goal!r}")
    return (check_real("task.goal[0]", task.goal[0]), check_real("task.goal[1]", task.goal[1]))


# torch's vectorised float32 sqrt is not correctly rounded (NumPy's is); the float64 root rounded to float32 is the
# same in both, which keeps the single and the batched envs bit-identical.
class _PointRobotEnv(MetaEnv[GoalTask]):
    """What both point robots share: the robot starts at the origin, observes its position and moves."""

    def _reset_state(self) -> None:
        self._position = np.zeros(2, dtype=np.float32)
        self._goal = self.task_params["goal"].astype(np.float32)

    def _observe(self) -> np.ndarray:
        return self._position.copy()

    def _move(self, displacement: np.ndarray) -> tuple[np.ndarray, np.float32]:
        """Move by ``displacement``; returns the offset to the goal and its Euclidean length."""
        self._position = self._position + displacement
        offset = self._position - self._goal
        squared = offset[0] * offset[0] + offset[1] * offset[1]
        return offset, np.float32(np.sqrt(np.float64(squared)))


class _PointRobotVectorEnv(TorchVectorEnv[GoalTask]):
    """The batched twin of :class:`_PointRobotEnv`: positions and goals are ``[num_envs, 2]`` tensors."""

    def _reset_state(self, mask: torch.Tensor) -> None:
        if not hasattr(self, "_position"):
            self._position = torch.zeros((self.num_envs, 2), dtype=torch.float32, device=self.device)
        self._position = torch.where(mask[:, None], 0.0, self._position)
        self._goal = self.task_params["goal"].to(torch.float32)

    def _observe(self) -> torch.Tensor:
        return self._position.clone()

    def _move(self, displacement: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._position = self._position + displacement
        offset = self._position - self._goal
        squared = offset[:, 0] * offset[:, 0] + offset[:, 1] * offset[:, 1]
        return offset, torch.sqrt(squared.double()).float()


# ----------------------------------------------------------------------------------------------------------------
class Navigation2DEnv(_PointRobotEnv):
    """Single env of :class:`Navigation2D`; see the family for the full description."""

    family: Navigation2D

    def _step_state(self, action: np.ndarray, uniforms: tuple[float, ...]) -> tuple[float, bool, dict]:
        bound = np.float32(self.family.action_bound)
        displacement = np.clip(action, -bound, bound)
        if self.family.normalized_actions:
            displacement = np.float32(self.family.max_step) * displacement
        offset, distance = self._move(displacement)
        tolerance = np.float32(self.family.goal_tolerance)
        terminated = bool(abs(offset[0]) < tolerance and abs(offset[1]) < tolerance)
        return float(-distance), terminated, {}


class Navigation2DVectorEnv(_PointRobotVectorEnv):
    """Native batched :class:`Navigation2D` in torch."""

    family: Navigation2D

    def _step_state(
        self, actions: torch.Tensor, randomness: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        bound = self.family.action_bound
        displacement = actions.clamp(-bound, bound)
        if self.family.normalized_actions:
            # a Python scalar meets a float32 tensor in float32: the single env's np.float32 product, bit for bit
            displacement = self.family.max_step * displacement
        offset, distance = self._move(displacement)
        terminated = (offset.abs() < self.family.goal_tolerance).all(dim=1)
        return -distance, terminated, {}


class Navigation2D(TaskFamily[GoalTask]):
    """The 2D navigation tasks of the MAML paper.

    ## Description
    A point robot starts at the origin and must move to a goal it cannot see; only the reward tells it how far the
    goal is. This is the reference code's ``point_env_randgoal`` (MAML) / ``Navigation2DEnv`` (pytorch-maml-rl).

    ## Action Space
    ``Box(-0.1, 0.1, (2,), float32)``: the displacement of the robot. Actions are clipped to the box. With
    ``normalized_actions``, ``Box(-1, 1, (2,), float32)`` scaled by ``max_step`` (0.1): the MAML paper's code wraps
    the env in rllab's ``normalize``, so its policy acts in [-1, 1] and its Gaussian's spread is relative to the
    step bound (pytorch-maml-rl's env, the default here, takes displacements directly).

    ## Observation Space
    ``Box(-inf, inf, (2,), float32)``: the robot's position.

    ## Rewards
    ``-||position - goal||_2`` after the move.

    ## Episode End
    Terminates when the robot is within ``goal_tolerance`` (0.01) of the goal in *both* coordinates (as the
    reference code); truncated after ``horizon`` (100) steps.

    ## Task distribution
    ``goal ~ U[goal_low, goal_high]^2`` with ``[-0.5, 0.5]^2`` by default. The split draws distinct goals, so
    held-out goals never occur in training.

    ## Arguments
    ``horizon`` (100), ``goal_low`` (-0.5), ``goal_high`` (0.5), ``goal_tolerance`` (0.01), ``normalized_actions``
    (False).

    ## Version History
    * v0: initial version.

    References:
        Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017, §5.3.
    """

    name = "Navigation2D"
    version = 0
    env_class = Navigation2DEnv
    vector_env_class = Navigation2DVectorEnv
    task_type = GoalTask

    def __init__(
        self,
        horizon: int = 100,
        goal_low: float = -0.5,
        goal_high: float = 0.5,
        goal_tolerance: float = 0.01,
        normalized_actions: bool = False,
    ) -> None:
        if not isinstance(normalized_actions, bool):
            raise ValueError(f"normalized_actions must be True or False, got {normalized_actions!r}")
        self.horizon = check_count("horizon", horizon)
        self.goal_low = check_real("goal_low", goal_low)
        self.goal_high = check_real("goal_high", goal_high)
        if not self.goal_low < self.goal_high:
            raise ValueError(f"goal_low must be < goal_high, got goal_low={goal_low}, goal_high={goal_high}")
        self.goal_tolerance = check_real("goal_tolerance", goal_tolerance, 0.0)
        self.normalized_actions = normalized_actions
        self.max_step = 0.1
        """The largest move per coordinate and step."""
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_bound = 1.0 if normalized_actions else self.max_step
        """Actions are clipped to ``[-action_bound, action_bound]``."""
        self.action_space = gym.spaces.Box(-self.action_bound, self.action_bound, (2,), np.float32)

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[GoalTask]:
        check_count("num_tasks", num_tasks)
        goals = rng.uniform(self.goal_low, self.goal_high, size=(num_tasks, 2))
        return [GoalTask(goal=(float(x), float(y))) for x, y in goals]

    def _check_task_values(self, task: GoalTask) -> None:
        for i, value in enumerate(_check_goal(task)):
            if not self.goal_low <= value <= self.goal_high:
                raise ValueError(
                    f"task.goal[{i}]={value} is outside this family's goal region [{self.goal_low}, {self.goal_high}]^2"
                )


# ----------------------------------------------------------------------------------------------------------------
class SparsePointRobotEnv(_PointRobotEnv):
    """Single env of :class:`SparsePointRobot`; see the family for the full description."""

    family: SparsePointRobot

    def _step_state(self, action: np.ndarray, uniforms: tuple[float, ...]) -> tuple[float, bool, dict]:
        _, distance = self._move(np.float32(self.family.max_step) * np.clip(action, -1.0, 1.0))
        success = bool(distance <= np.float32(self.family.goal_radius))
        reward = np.float32(1.0) - distance if success else np.float32(0.0)
        return float(reward), False, {"success": success, DENSE_REWARD_KEY: float(-distance)}


class SparsePointRobotVectorEnv(_PointRobotVectorEnv):
    """Native batched :class:`SparsePointRobot` in torch."""

    family: SparsePointRobot

    def _step_state(
        self, actions: torch.Tensor, randomness: torch.Tensor
    ) -> tuple[torch.Tensor, None, dict[str, torch.Tensor]]:
        _, distance = self._move(self.family.max_step * actions.clamp(-1.0, 1.0))
        success = distance <= self.family.goal_radius
        rewards = torch.where(success, 1.0 - distance, 0.0)
        return rewards, None, {"success": success, DENSE_REWARD_KEY: -distance}


class SparsePointRobot(TaskFamily[GoalTask]):
    """The sparse-reward point robot of PEARL and varibad.

    ## Description
    A point robot starts at the origin; its goal lies on the upper half of the unit circle. Reward is given only
    inside a small radius around the goal, so the agent must explore the semicircle to find it.

    ## Action Space
    ``Box(-1, 1, (2,), float32)``: actions are clipped to the box and scaled by ``max_step`` (0.1), so the robot
    moves at most 0.1 per coordinate per step (varibad scales in the env; PEARL's action normalisation wrapper
    has the same effect).

    ## Observation Space
    ``Box(-inf, inf, (2,), float32)``: the robot's position.

    ## Rewards
    ``1 - ||position - goal||_2`` when that distance is at most ``goal_radius`` (0.2), else 0: PEARL's
    ``sparsify_rewards`` followed by its "+1 inside the radius". ``info["success"]`` is True inside the radius.
    ``info["dense_reward"]`` is the dense reward ``-||position - goal||_2``, which PEARL's authors trained the
    critics on while its encoder saw the sparse reward (``pearl_critic_reward=dense_reward``); the reward itself
    stays sparse.

    ## Episode End
    Never terminates; truncated after ``horizon`` steps (20, PEARL's ``max_path_length`` for this env; varibad
    uses longer horizons, so it is an argument).

    ## Task distribution
    ``goal = (cos θ, sin θ)`` with ``θ ~ U[0, π]``. PEARL places a fixed set of goals evenly on the arc;
    we draw θ continuously (varibad) and the split draws distinct goals, so held-out goals never occur in training.

    ## Arguments
    ``horizon`` (20), ``goal_radius`` (0.2), ``max_step`` (0.1).

    ## Version History
    * v0: initial version.

    References:
        Rakelly et al. "Efficient Off-Policy Meta-Reinforcement Learning via Probabilistic Context Variables",
        ICML 2019 (PEARL). Zintgraf et al. "VariBAD: A Very Good Method for Bayes-Adaptive Deep RL via
        Meta-Learning", ICLR 2020.
    """

    name = "SparsePointRobot"
    version = 0
    env_class = SparsePointRobotEnv
    vector_env_class = SparsePointRobotVectorEnv
    task_type = GoalTask

    def __init__(self, horizon: int = 20, goal_radius: float = 0.2, max_step: float = 0.1) -> None:
        self.horizon = check_count("horizon", horizon)
        self.goal_radius = check_real("goal_radius", goal_radius, 0.0)
        self.max_step = check_real("max_step", max_step, 0.0)
        if self.goal_radius == 0.0 or self.max_step == 0.0:
            raise ValueError(f"goal_radius and max_step must be > 0, got {goal_radius}, {max_step}")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[GoalTask]:
        check_count("num_tasks", num_tasks)
        angles = rng.uniform(0.0, math.pi, size=num_tasks)
        return [GoalTask(goal=(float(math.cos(a)), float(math.sin(a)))) for a in angles]

    def _check_task_values(self, task: GoalTask) -> None:
        x, y = _check_goal(task)
        if abs(math.hypot(x, y) - 1.0) > 1e-6 or y < -1e-9:
            raise ValueError(f"task.goal={task.goal} is not on the upper half of the unit circle")
