"""metarl core: the task-family and meta-agent protocols and registries, batched envs, multi-task rollouts."""

from metarl.agent import AdaptationCurve, CurveKind, MetaAgent
from metarl.config import RunConfig
from metarl.env import MetaEnv
from metarl.registry import (
    AgentSpec,
    FamilySpec,
    agent_spec,
    family_spec,
    list_agents,
    list_families,
    make_agent,
    make_family,
    register_agent,
    register_family,
)
from metarl.tasks import TaskFamily, TaskSplit, set_vector_tasks
from metarl.vector import TorchVectorEnv
from metarl.wrappers import TrialWrapper, make_trial_env

__all__ = [
    "AdaptationCurve",
    "AgentSpec",
    "CurveKind",
    "FamilySpec",
    "MetaAgent",
    "MetaEnv",
    "RunConfig",
    "TaskFamily",
    "TaskSplit",
    "TorchVectorEnv",
    "TrialWrapper",
    "agent_spec",
    "family_spec",
    "list_agents",
    "list_families",
    "make_agent",
    "make_family",
    "make_trial_env",
    "register_agent",
    "register_family",
    "set_vector_tasks",
]
__version__ = "0.1.0"
