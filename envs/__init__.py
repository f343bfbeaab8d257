"""The suite's task families, registered with Gymnasium on import as ``MetaRL/<Name>-v<N>``.

This is the one place the suite's ids are registered: ``import envs`` and then ``gymnasium.make("MetaRL/...")``.
"""

from envs.bandit import Bandit, BanditTask
from envs.navigation import GoalTask, Navigation2D, SparsePointRobot
from envs.tabular_mdp import TabularMDP, TabularMDPTask
from metarl.registry import register_family

for _family in (Bandit, TabularMDP, Navigation2D, SparsePointRobot):
    register_family(_family)

__all__ = ["Bandit", "BanditTask", "GoalTask", "Navigation2D", "SparsePointRobot", "TabularMDP", "TabularMDPTask"]
