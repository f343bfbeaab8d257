"""The MuJoCo locomotion families of meta-RL, on Gymnasium's v5 robots and the official ``mujoco`` bindings.

Goal families (the task changes the reward): ``HalfCheetahVel``, ``HalfCheetahDir``, ``AntVel``, ``AntDir``,
``AntDir2D``, ``AntGoal``. Dynamics families (the task changes the model): ``HalfCheetahRandParams``,
``HopperRandParams``, ``Walker2dRandParams``. Each has a single Gymnasium env (the robot's v5 class with
:class:`metarl.mujoco_envs.MuJoCoTaskEnv` mixed in) and the batched :class:`metarl.mujoco_envs.MuJoCoVectorEnv`.

Choices shared by all (each an argument where the peers disagree):

* Horizon 100 (ProMP, pytorch-maml-rl); the MAML paper used 200.
* Observations are Gymnasium v5's without contact forces: root ``x`` (and ``y`` for Ant) excluded, then the rest of
  ``qpos`` and ``qvel`` (Hopper and Walker2d clip ``qvel`` to ±10, as v5). Ant's contact forces are neither
  observed nor penalised (Gymnasium Ant-v4's default): they are not part of MuJoCo's state, so the batched env
  would need a forward pass per sub-env to compute them.
* Velocities are the root's displacement over the env step divided by its duration, from ``qpos`` (Gymnasium's
  formula for HalfCheetah, Hopper and Walker2d; its Ant reads the torso's ``xpos``, which lags one substep).
* Actions are clipped to the action space before the simulation and the control cost.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import mujoco
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv
from metarl.envs.navigation import GoalTask, _check_goal

from metarl.mujoco_envs import MuJoCoFamily, MuJoCoTaskEnv
from metarl.tasks import DEFAULT_SPLIT_FRACTIONS, TaskSplit, check_count, check_real, split_sizes


# -- single envs: a Gymnasium v5 robot with the task mixin --------------------------------------------------------
class HalfCheetahTaskEnv(MuJoCoTaskEnv, HalfCheetahEnv):
    """Gymnasium's HalfCheetah-v5 playing a task of its family (see :class:`metarl.mujoco_envs.MuJoCoTaskEnv`)."""


class AntTaskEnv(MuJoCoTaskEnv, AntEnv):
    """Gymnasium's Ant-v5 playing a task of its family (see :class:`metarl.mujoco_envs.MuJoCoTaskEnv`)."""


class HopperTaskEnv(MuJoCoTaskEnv, HopperEnv):
    """Gymnasium's Hopper-v5 playing a task of its family (see :class:`metarl.mujoco_envs.MuJoCoTaskEnv`)."""


class Walker2dTaskEnv(MuJoCoTaskEnv, Walker2dEnv):
    """Gymnasium's Walker2d-v5 playing a task of its family (see :class:`metarl.mujoco_envs.MuJoCoTaskEnv`)."""


# -- tasks --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VelocityTask:
    """A target forward velocity (m/s)."""

    velocity: float


@dataclasses.dataclass(frozen=True)
class DirectionTask:
    """A direction along the x axis: +1 forward, -1 backward."""

    direction: float


@dataclasses.dataclass(frozen=True)
class Direction2DTask:
    """A unit direction ``(x, y)`` in the plane."""

    direction: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class DynamicsTask:
    """Scale factors of the model's parameters, one per entry, flattened in MuJoCo's row-major order."""

    body_mass: tuple[float, ...]
    """``[nbody]``"""
    body_inertia: tuple[float, ...]
    """``[nbody * 3]``"""
    dof_damping: tuple[float, ...]
    """``[nv]``"""
    geom_friction: tuple[float, ...]
    """``[ngeom * 3]`` (sliding, torsional, rolling)"""


def _check_velocity_range(low: float, high: float) -> tuple[float, float]:
    low, high = check_real("velocity_low", low), check_real("velocity_high", high)
    if not low < high:
        raise ValueError(f"velocity_low must be < velocity_high, got {low} and {high}")
    return low, high


def _control_cost(weight: float, actions: np.ndarray) -> np.ndarray:
    return weight * np.sum(np.square(actions), axis=1)


# -- robots -------------------------------------------------------------------------------------------------------
class _HalfCheetah(MuJoCoFamily):
    """HalfCheetah-v5: 17-D observations, 6 actions in [-1, 1], no termination."""

    env_class = HalfCheetahTaskEnv
    xml_file = "half_cheetah.xml"
    frame_skip = 5

    def observe(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        return np.concatenate([qpos[:, 1:], qvel], axis=1)

    def reset_state(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scale = self.reset_noise_scale
        qpos = self.init_qpos + rng.uniform(low=-scale, high=scale, size=self.model.nq)
        qvel = self.init_qvel + scale * rng.standard_normal(self.model.nv)
        return qpos, qvel


class _Ant(MuJoCoFamily):
    """Ant-v5 without contact forces: 27-D observations, 8 actions in [-1, 1]; ends when the torso's height leaves
    ``[0.2, 1.0]`` (or the state is not finite)."""

    env_class = AntTaskEnv
    xml_file = "ant.xml"
    frame_skip = 5
    terminates = True

    def observe(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        return np.concatenate([qpos[:, 2:], qvel], axis=1)

    def healthy(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        finite = np.isfinite(qpos).all(axis=1) & np.isfinite(qvel).all(axis=1)
        return finite & (qpos[:, 2] >= 0.2) & (qpos[:, 2] <= 1.0)

    def reset_state(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scale = self.reset_noise_scale
        qpos = self.init_qpos + rng.uniform(low=-scale, high=scale, size=self.model.nq)
        qvel = self.init_qvel + scale * rng.standard_normal(self.model.nv)
        return qpos, qvel

    def _ant_rewards(self, task_term: np.ndarray, actions: np.ndarray, healthy: np.ndarray) -> np.ndarray:
        return task_term + self.healthy_reward * healthy - _control_cost(self.ctrl_cost_weight, actions)


class _PlanarWalker(MuJoCoFamily):
    """What Hopper-v5 and Walker2d-v5 share: observations ``qpos[1:]`` and ``qvel`` clipped to ±10, uniform reset
    noise on both, Gymnasium's reward ``forward velocity + healthy reward - control cost``, termination when
    unhealthy."""

    frame_skip = 4
    terminates = True

    def observe(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        return np.concatenate([qpos[:, 1:], np.clip(qvel, -10, 10)], axis=1)

    def reset_state(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scale = self.reset_noise_scale
        qpos = self.init_qpos + rng.uniform(low=-scale, high=scale, size=self.model.nq)
        qvel = self.init_qvel + rng.uniform(low=-scale, high=scale, size=self.model.nv)
        return qpos, qvel

    def rewards(self, task_params, qpos_before, qpos, qvel, actions, healthy) -> np.ndarray:
        forward = self.x_velocity(qpos_before, qpos)
        return forward + 1.0 * healthy - _control_cost(1e-3, actions)


class _Hopper(_PlanarWalker):
    env_class = HopperTaskEnv
    xml_file = "hopper.xml"

    def healthy(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        state = np.concatenate([qpos, qvel], axis=1)[:, 2:]
        healthy_state = np.all((-100.0 < state) & (state < 100.0), axis=1)
        return healthy_state & (0.7 < qpos[:, 1]) & (-0.2 < qpos[:, 2]) & (qpos[:, 2] < 0.2)


class _Walker2d(_PlanarWalker):
    env_class = Walker2dTaskEnv
    xml_file = "walker2d_v5.xml"

    def healthy(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        return (0.8 < qpos[:, 1]) & (qpos[:, 1] < 2.0) & (-1.0 < qpos[:, 2]) & (qpos[:, 2] < 1.0)


def _two_task_split(tasks: tuple[Any, ...], seed: int, num_tasks: int, fractions: Sequence[float]) -> TaskSplit:
    """A family with only two tasks (the two directions): every set holds both, as in the MAML paper's
    direction tasks; held out then means fresh episodes, never unseen tasks. The arguments are checked as for any
    family's split."""
    split_sizes(num_tasks, fractions)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"split seed must be a non-negative int, got {seed!r}")
    return TaskSplit(train=tasks, validation=tasks, test=tasks, seed=seed)


# -- goal families ------------------------------------------------------------------------------------------------
class HalfCheetahVel(_HalfCheetah):
    """HalfCheetah running at a target forward velocity.

    ## Description
    The MAML paper's goal-velocity cheetah on Gymnasium's HalfCheetah-v5 model. The velocity is not observed.

    ## Action Space
    ``Box(-1, 1, (6,), float32)``, clipped.

    ## Observation Space
    ``Box(-inf, inf, (17,), float64)``: ``qpos[1:]`` and ``qvel`` (HalfCheetah-v5's).

    ## Rewards
    ``-|v - velocity| - ctrl_cost_weight * |a|²`` with ``v`` the forward velocity; ``ctrl_cost_weight`` 0.05
    (the MAML paper and pytorch-maml-rl's 0.5 * 0.1; Gymnasium's cheetah uses 0.1).

    ## Episode End
    Truncated after ``horizon`` (100) steps; never terminates.

    ## Task distribution
    ``velocity ~ U[velocity_low, velocity_high]``, ``U[0, 2]`` by default (MAML, pytorch-maml-rl; ProMP and
    some later papers use ``U[0, 3]``).

    ## Arguments
    ``horizon`` (100), ``velocity_low`` (0), ``velocity_high`` (2), ``ctrl_cost_weight`` (0.05),
    ``reset_noise_scale`` (0.1, v5's).

    ## Version History
    * v0: initial version.

    References:
        Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017, §5.3.
    """

    name = "HalfCheetahVel"
    version = 0
    task_type = VelocityTask

    def __init__(
        self,
        horizon: int = 100,
        velocity_low: float = 0.0,
        velocity_high: float = 2.0,
        ctrl_cost_weight: float = 0.05,
        reset_noise_scale: float = 0.1,
    ) -> None:
        self.horizon = check_count("horizon", horizon)
        self.velocity_low, self.velocity_high = _check_velocity_range(velocity_low, velocity_high)
        self.ctrl_cost_weight = check_real("ctrl_cost_weight", ctrl_cost_weight, 0.0)
        self.reset_noise_scale = check_real("reset_noise_scale", reset_noise_scale, 0.0)
        self._load_model()

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[VelocityTask]:
        check_count("num_tasks", num_tasks)
        velocities = rng.uniform(self.velocity_low, self.velocity_high, size=num_tasks)
        return [VelocityTask(velocity=float(v)) for v in velocities]

    def _check_task_values(self, task: VelocityTask) -> None:
        velocity = check_real("task.velocity", task.velocity)
        if not self.velocity_low <= velocity <= self.velocity_high:
            raise ValueError(
                f"task.velocity={velocity} is outside this family's range [{self.velocity_low}, {self.velocity_high}]"
            )

    def rewards(self, task_params, qpos_before, qpos, qvel, actions, healthy) -> np.ndarray:
        speed_error = np.abs(self.x_velocity(qpos_before, qpos) - task_params["velocity"])
        return -speed_error - _control_cost(self.ctrl_cost_weight, actions)


class HalfCheetahDir(_HalfCheetah):
    """HalfCheetah running forward or backward.

    ## Description
    The MAML paper's goal-direction cheetah on HalfCheetah-v5. The family has two tasks, so its split puts both in
    train, validation and test (held out means fresh episodes), and the trainer draws meta-batches with
    replacement.

    ## Action Space
    ``Box(-1, 1, (6,), float32)``, clipped.

    ## Observation Space
    ``Box(-inf, inf, (17,), float64)``: ``qpos[1:]`` and ``qvel``.

    ## Rewards
    ``direction * v - ctrl_cost_weight * |a|²``, ``ctrl_cost_weight`` 0.05 (MAML, pytorch-maml-rl).

    ## Episode End
    Truncated after ``horizon`` (100) steps; never terminates.

    ## Task distribution
    ``direction`` is -1 or +1 with probability 1/2.

    ## Arguments
    ``horizon`` (100), ``ctrl_cost_weight`` (0.05), ``reset_noise_scale`` (0.1).

    ## Version History
    * v0: initial version.

    References:
        Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017, §5.3.
    """

    name = "HalfCheetahDir"
    version = 0
    task_type = DirectionTask
    num_distinct_tasks = 2

    def __init__(self, horizon: int = 100, ctrl_cost_weight: float = 0.05, reset_noise_scale: float = 0.1) -> None:
        self.horizon = check_count("horizon", horizon)
        self.ctrl_cost_weight = check_real("ctrl_cost_weight", ctrl_cost_weight, 0.0)
        self.reset_noise_scale = check_real("reset_noise_scale", reset_noise_scale, 0.0)
        self._load_model()

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[DirectionTask]:
        check_count("num_tasks", num_tasks)
        return [DirectionTask(direction=float(d)) for d in 2 * rng.integers(0, 2, size=num_tasks) - 1]

    def split(
        self, seed: int = 0, num_tasks: int = 1000, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS
    ) -> TaskSplit[DirectionTask]:
        return _two_task_split((DirectionTask(-1.0), DirectionTask(1.0)), seed, num_tasks, fractions)

    def _check_task_values(self, task: DirectionTask) -> None:
        if task.direction not in (-1.0, 1.0):
            raise ValueError(f"task.direction must be -1.0 or 1.0, got {task.direction!r}")

    def rewards(self, task_params, qpos_before, qpos, qvel, actions, healthy) -> np.ndarray:
        forward = task_params["direction"] * self.x_velocity(qpos_before, qpos)
        return forward - _control_cost(self.ctrl_cost_weight, actions)


class _AntGoalFamily(_Ant):
    """Constructor arguments every Ant goal family shares (the whole constructor of ``AntDir`` and ``AntDir2D``)."""

    def __init__(
        self,
        horizon: int = 100,
        healthy_reward: float = 1.0,
        ctrl_cost_weight: float = 0.005,
        reset_noise_scale: float = 0.1,
    ) -> None:
        self._init_ant(horizon, healthy_reward, ctrl_cost_weight, reset_noise_scale)

    def _init_ant(self, horizon: int, healthy_reward: float, ctrl_cost_weight: float, reset_noise_scale: float) -> None:
        self.horizon = check_count("horizon", horizon)
        self.healthy_reward = check_real("healthy_reward", healthy_reward)
        self.ctrl_cost_weight = check_real("ctrl_cost_weight", ctrl_cost_weight, 0.0)
        self.reset_noise_scale = check_real("reset_noise_scale", reset_noise_scale, 0.0)
        self._load_model()

    def xy_velocity(self, qpos_before: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        """``[N, 2]`` velocity of the torso in the plane over the env step."""
        return (qpos[:, :2] - qpos_before[:, :2]) / self.dt


_ANT_DOC_COMMON = """
    ## Action Space
    ``Box(-1, 1, (8,), float32)``, clipped.

    ## Observation Space
    ``Box(-inf, inf, (27,), float64)``: ``qpos[2:]`` and ``qvel`` (Ant-v5 without contact forces).

    ## Episode End
    Terminates when the torso's height leaves ``[0.2, 1.0]``; truncated after ``horizon`` (100) steps.
"""


class AntVel(_AntGoalFamily):
    """Ant running forward at a target velocity.

    ## Description
    pytorch-maml-rl's ``AntVel`` on Gymnasium's Ant-v5 model.
    {common}
    ## Rewards
    ``-|v_x - velocity| + healthy_reward - ctrl_cost_weight * |a|²`` while healthy; ``healthy_reward`` 1.0
    (ProMP and Gymnasium; pytorch-maml-rl adds 1.05), ``ctrl_cost_weight`` 0.005 (pytorch-maml-rl, ProMP).

    ## Task distribution
    ``velocity ~ U[velocity_low, velocity_high]``, ``U[0, 3]`` by default (pytorch-maml-rl).

    ## Arguments
    ``horizon`` (100), ``velocity_low`` (0), ``velocity_high`` (3), ``healthy_reward`` (1.0),
    ``ctrl_cost_weight`` (0.005), ``reset_noise_scale`` (0.1).

    ## Version History
    * v0: initial version.

    References:
        Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    """

    name = "AntVel"
    version = 0
    task_type = VelocityTask

    def __init__(
        self,
        horizon: int = 100,
        velocity_low: float = 0.0,
        velocity_high: float = 3.0,
        healthy_reward: float = 1.0,
        ctrl_cost_weight: float = 0.005,
        reset_noise_scale: float = 0.1,
    ) -> None:
        self.velocity_low, self.velocity_high = _check_velocity_range(velocity_low, velocity_high)
        self._init_ant(horizon, healthy_reward, ctrl_cost_weight, reset_noise_scale)

    sample_tasks = HalfCheetahVel.sample_tasks
    _check_task_values = HalfCheetahVel._check_task_values

    def rewards(self, task_params, qpos_before, qpos, qvel, actions, healthy) -> np.ndarray:
        speed_error = np.abs(self.x_velocity(qpos_before, qpos) - task_params["velocity"])
        return self._ant_rewards(-speed_error, actions, healthy)


class AntDir(_AntGoalFamily):
    """Ant running forward or backward along x.

    ## Description
    The MAML paper's / ProMP's ``AntRandDirec`` on Ant-v5. Two tasks: the split puts both in every set and the
    trainer draws meta-batches with replacement (see :class:`HalfCheetahDir`).
    {common}
    ## Rewards
    ``direction * v_x + healthy_reward - ctrl_cost_weight * |a|²``; ``healthy_reward`` 1.0 (ProMP),
    ``ctrl_cost_weight`` 0.005 (ProMP).

    ## Task distribution
    ``direction`` is -1 or +1 with probability 1/2.

    ## Arguments
    ``horizon`` (100), ``healthy_reward`` (1.0), ``ctrl_cost_weight`` (0.005), ``reset_noise_scale`` (0.1).

    ## Version History
    * v0: initial version.

    References:
        Rothfuss et al. "ProMP: Proximal Meta-Policy Search", ICLR 2019.
    """

    name = "AntDir"
    version = 0
    task_type = DirectionTask
    num_distinct_tasks = 2

    sample_tasks = HalfCheetahDir.sample_tasks
    split = HalfCheetahDir.split
    _check_task_values = HalfCheetahDir._check_task_values

    def rewards(self, task_params, qpos_before, qpos, qvel, actions, healthy) -> np.ndarray:
        forward = task_params["direction"] * self.x_velocity(qpos_before, qpos)
        return self._ant_rewards(forward, actions, healthy)


class AntDir2D(_AntGoalFamily):
    """Ant running in a direction of the plane.

    ## Description
    The 2D-direction variant of ``AntDir`` (as in ProMP's ``AntRandDirec2D`` and varibad): the direction is a
    unit vector at an angle drawn uniformly.
    {common}
    ## Rewards
    ``(v_x, v_y) · direction + healthy_reward - ctrl_cost_weight * |a|²``; ``healthy_reward`` 1.0,
    ``ctrl_cost_weight`` 0.005.

    ## Task distribution
    ``direction = (cos θ, sin θ)``, ``θ ~ U[0, 2π)``.

    ## Arguments
    ``horizon`` (100), ``healthy_reward`` (1.0), ``ctrl_cost_weight`` (0.005), ``reset_noise_scale`` (0.1).

    ## Version History
    * v0: initial version.

    References:
        Rothfuss et al. "ProMP: Proximal Meta-Policy Search", ICLR 2019.
    """

    name = "AntDir2D"
    version = 0
    task_type = Direction2DTask

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[Direction2DTask]:
        check_count("num_tasks", num_tasks)
        angles = rng.uniform(0.0, 2.0 * math.pi, size=num_tasks)
        return [Direction2DTask(direction=(float(math.cos(a)), float(math.sin(a)))) for a in angles]

    def _check_task_values(self, task: Direction2DTask) -> None:
        if not isinstance(task.direction, tuple) or len(task.direction) != 2:
            raise ValueError(f"task.direction must be a tuple (x, y), got {task.direction!r}")
        x = check_real("task.direction[0]", task.direction[0])
        y = check_real("task.direction[1]", task.direction[1])
        if abs(math.hypot(x, y) - 1.0) > 1e-6:
            raise ValueError(f"task.direction={task.direction} is not a unit vector (norm {math.hypot(x, y)})")

    def rewards(self, task_params, qpos_before, qpos, qvel, actions, healthy) -> np.ndarray:
        velocity = self.xy_velocity(qpos_before, qpos)
        forward = velocity[:, 0] * task_params["direction"][:, 0] + velocity[:, 1] * task_params["direction"][:, 1]
        return self._ant_rewards(forward, actions, healthy)


class AntGoal(_AntGoalFamily):
    """Ant walking to a goal position.

    ## Description
    pytorch-maml-rl's ``AntPos`` / PEARL's ``AntGoal`` on Ant-v5: the goal is not observed.
    {common}
    ## Rewards
    ``-|xy - goal|₁ + healthy_reward - ctrl_cost_weight * |a|²`` with ``xy`` the torso's position after the step
    (the L1 distance of pytorch-maml-rl); ``healthy_reward`` 1.0, ``ctrl_cost_weight`` 0.005.

    ## Task distribution
    Uniform in the disk of radius ``goal_radius`` (3, pytorch-maml-rl): ``goal = r (cos θ, sin θ)`` with
    ``θ ~ U[0, 2π)``, ``r = goal_radius * sqrt(U[0, 1])``.

    ## Arguments
    ``horizon`` (100), ``goal_radius`` (3), ``healthy_reward`` (1.0), ``ctrl_cost_weight`` (0.005),
    ``reset_noise_scale`` (0.1).

    ## Version History
    * v0: initial version.

    References:
        Rakelly et al. "Efficient Off-Policy Meta-Reinforcement Learning via Probabilistic Context Variables",
        ICML 2019 (PEARL).
    """

    name = "AntGoal"
    version = 0
    task_type = GoalTask

    def __init__(
        self,
        horizon: int = 100,
        goal_radius: float = 3.0,
        healthy_reward: float = 1.0,
        ctrl_cost_weight: float = 0.005,
        reset_noise_scale: float = 0.1,
    ) -> None:
        self.goal_radius = check_real("goal_radius", goal_radius, 0.0)
        if self.goal_radius == 0.0:
            raise ValueError("goal_radius must be > 0, got 0")
        self._init_ant(horizon, healthy_reward, ctrl_cost_weight, reset_noise_scale)

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[GoalTask]:
        check_count("num_tasks", num_tasks)
        angles = rng.uniform(0.0, 2.0 * math.pi, size=num_tasks)
        radii = self.goal_radius * np.sqrt(rng.uniform(0.0, 1.0, size=num_tasks))
        return [
            GoalTask(goal=(float(r * math.cos(a)), float(r * math.sin(a)))) for r, a in zip(radii, angles, strict=True)
        ]

    def _check_task_values(self, task: GoalTask) -> None:
        x, y = _check_goal(task)
        if math.hypot(x, y) > self.goal_radius + 1e-9:
            raise ValueError(f"task.goal={task.goal} is outside the disk of radius {self.goal_radius}")

    def rewards(self, task_params, qpos_before, qpos, qvel, actions, healthy) -> np.ndarray:
        distance = np.abs(qpos[:, :2] - task_params["goal"]).sum(axis=1)
        return self._ant_rewards(-distance, actions, healthy)


for _family in (AntVel, AntDir, AntDir2D, AntGoal):
    _family.__doc__ = _family.__doc__.format(common=_ANT_DOC_COMMON)


# -- dynamics families --------------------------------------------------------------------------------------------
_DYNAMICS_FIELDS = ("body_mass", "body_inertia", "dof_damping", "geom_friction")


class _RandParams(MuJoCoFamily):
    """Body masses, body inertias, joint damping and geom friction each scaled, entry by entry, by
    ``scale_base ** U[-log_scale_limit, log_scale_limit]`` (the rand-params setting of ProMP, PEARL and varibad:
    1.5^U[-3, 3]; their code draws damping with base 1.3, which ``damping_scale_base`` reproduces).

    Setting a task sets each parameter to (the loaded model's value) × (the task's factor), so switching tasks
    never accumulates and the all-ones task restores the loaded model exactly. Tasks whose factors lie outside
    ``[base^-limit, base^limit]`` are rejected: that range is what the simulation was checked to stay stable in,
    and the envs raise ``FloatingPointError`` should a step still blow up.
    """

    varies_dynamics = True
    task_type = DynamicsTask

    def __init__(
        self,
        horizon: int = 100,
        log_scale_limit: float = 3.0,
        scale_base: float = 1.5,
        damping_scale_base: float = 1.5,
        reset_noise_scale: float | None = None,
    ) -> None:
        self.horizon = check_count("horizon", horizon)
        self.log_scale_limit = check_real("log_scale_limit", log_scale_limit, 0.0, 5.0)
        self.scale_base = check_real("scale_base", scale_base, 1.0, 10.0)
        self.damping_scale_base = check_real("damping_scale_base", damping_scale_base, 1.0, 10.0)
        default_noise = 0.1 if isinstance(self, _HalfCheetah) else 5e-3  # Gymnasium v5's
        self.reset_noise_scale = check_real(
            "reset_noise_scale", default_noise if reset_noise_scale is None else reset_noise_scale, 0.0
        )
        self._load_model()
        self.base_parameters = {name: getattr(self.model, name).copy() for name in _DYNAMICS_FIELDS}
        """The loaded model's parameters, which tasks scale."""

    def _base(self, name: str) -> float:
        return self.damping_scale_base if name == "dof_damping" else self.scale_base

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> list[DynamicsTask]:
        check_count("num_tasks", num_tasks)
        tasks = []
        for _ in range(num_tasks):
            factors = {}
            for name in _DYNAMICS_FIELDS:
                size = self.base_parameters[name].size
                exponents = rng.uniform(-self.log_scale_limit, self.log_scale_limit, size=size)
                factors[name] = tuple(float(f) for f in self._base(name) ** exponents)
            tasks.append(DynamicsTask(**factors))
        return tasks

    def _check_task_values(self, task: DynamicsTask) -> None:
        for name in _DYNAMICS_FIELDS:
            factors = getattr(task, name)
            size = self.base_parameters[name].size
            if not isinstance(factors, tuple) or len(factors) != size:
                raise ValueError(f"task.{name} must be a tuple of {size} scale factors, got {factors!r}")
            low, high = self._base(name) ** -self.log_scale_limit, self._base(name) ** self.log_scale_limit
            for i, factor in enumerate(factors):
                value = check_real(f"task.{name}[{i}]", factor)
                if not low * (1 - 1e-9) <= value <= high * (1 + 1e-9):
                    raise ValueError(
                        f"task.{name}[{i}]={value} is outside the allowed scale range [{low:.4g}, {high:.4g}] "
                        f"({self._base(name)}^±{self.log_scale_limit}); scales must be positive and bounded"
                    )

    def apply_task(self, model: mujoco.MjModel, task_params: dict[str, np.ndarray]) -> None:
        for name in _DYNAMICS_FIELDS:
            base = self.base_parameters[name]
            getattr(model, name)[:] = base * task_params[name].reshape(base.shape)


_RAND_PARAMS_DOC = """{robot} with randomised dynamics.

    ## Description
    Gymnasium's {robot}-v5 with its body masses, body inertias, joint damping and geom friction scaled per task
    (see :class:`_RandParams` for the distribution and the stability bounds). The reward is v5's.

    ## Rewards
    {reward}

    ## Episode End
    {episode_end}; truncated after ``horizon`` (100; ProMP used 200) steps.

    ## Arguments
    ``horizon`` (100), ``log_scale_limit`` (3), ``scale_base`` (1.5), ``damping_scale_base`` (1.5; 1.3 in ProMP's
    code), ``reset_noise_scale`` (v5's).

    ## Version History
    * v0: initial version.

    References:
        Rothfuss et al. "ProMP: Proximal Meta-Policy Search", ICLR 2019; Rakelly et al. (PEARL), ICML 2019.
    """


class HalfCheetahRandParams(_RandParams, _HalfCheetah):
    name = "HalfCheetahRandParams"
    version = 0
    __doc__ = _RAND_PARAMS_DOC.format(
        robot="HalfCheetah", reward="``v - 0.1 |a|²`` (v5's).", episode_end="Never terminates"
    )

    def rewards(self, task_params, qpos_before, qpos, qvel, actions, healthy) -> np.ndarray:
        return 1.0 * self.x_velocity(qpos_before, qpos) - _control_cost(0.1, actions)


class HopperRandParams(_RandParams, _Hopper):
    name = "HopperRandParams"
    version = 0
    __doc__ = _RAND_PARAMS_DOC.format(
        robot="Hopper",
        reward="``v + 1 (while healthy) - 0.001 |a|²`` (v5's).",
        episode_end="Terminates when unhealthy (v5's height, angle and state ranges)",
    )


class Walker2dRandParams(_RandParams, _Walker2d):
    name = "Walker2dRandParams"
    version = 0
    __doc__ = _RAND_PARAMS_DOC.format(
        robot="Walker2d",
        reward="``v + 1 (while healthy) - 0.001 |a|²`` (v5's).",
        episode_end="Terminates when unhealthy (v5's height and angle ranges)",
    )


GOAL_FAMILIES = (HalfCheetahVel, HalfCheetahDir, AntVel, AntDir, AntDir2D, AntGoal)
DYNAMICS_FAMILIES = (HalfCheetahRandParams, HopperRandParams, Walker2dRandParams)
