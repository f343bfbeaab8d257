"""The suite's task families, registered with Gymnasium on import as ``MetaRL/<Name>-v<N>``.

This is the one place the suite's ids are registered: ``import metarl.envs`` and then ``gymnasium.make("MetaRL/...")``.
"""

import importlib.util

from metarl.envs.bandit import Bandit, BanditTask
from metarl.envs.locomotion import (
    AntDir,
    AntDir2D,
    AntGoal,
    AntVel,
    Direction2DTask,
    DirectionTask,
    DynamicsTask,
    HalfCheetahDir,
    HalfCheetahRandParams,
    HalfCheetahVel,
    HopperRandParams,
    VelocityTask,
    Walker2dRandParams,
)
from metarl.envs.navigation import GoalTask, Navigation2D, SparsePointRobot
from metarl.envs.tabular_mdp import TabularMDP, TabularMDPTask

from metarl.registry import register_family

MUJOCO_FAMILIES = (
    HalfCheetahVel,
    HalfCheetahDir,
    AntVel,
    AntDir,
    AntDir2D,
    AntGoal,
    HalfCheetahRandParams,
    HopperRandParams,
    Walker2dRandParams,
)
"""The families simulated by MuJoCo (heavier: built on Gymnasium's v5 robots)."""

for _family in (Bandit, TabularMDP, Navigation2D, SparsePointRobot, *MUJOCO_FAMILIES):
    register_family(_family)

META_WORLD_AVAILABLE = importlib.util.find_spec("metaworld") is not None
"""Whether the optional extra ``metarl[metaworld]`` is installed; its families are registered only then."""
if META_WORLD_AVAILABLE:
    from metarl.envs.meta_world import register_meta_world_families

    register_meta_world_families()

__all__ = [
    "META_WORLD_AVAILABLE",
    "MUJOCO_FAMILIES",
    "AntDir",
    "AntDir2D",
    "AntGoal",
    "AntVel",
    "Bandit",
    "BanditTask",
    "Direction2DTask",
    "DirectionTask",
    "DynamicsTask",
    "GoalTask",
    "HalfCheetahDir",
    "HalfCheetahRandParams",
    "HalfCheetahVel",
    "HopperRandParams",
    "Navigation2D",
    "SparsePointRobot",
    "TabularMDP",
    "TabularMDPTask",
    "VelocityTask",
    "Walker2dRandParams",
]
