"""metarl core: the task-family protocol and registry, batched envs, multi-task rollouts."""

from metarl.env import MetaEnv
from metarl.registry import FamilySpec, family_spec, list_families, make_family, register_family
from metarl.tasks import TaskFamily, TaskSplit
from metarl.vector import TorchVectorEnv, set_vector_tasks
from metarl.wrappers import TrialWrapper, make_trial_env

__all__ = [
    "FamilySpec",
    "MetaEnv",
    "TaskFamily",
    "TaskSplit",
    "TorchVectorEnv",
    "TrialWrapper",
    "family_spec",
    "list_families",
    "make_family",
    "make_trial_env",
    "register_family",
    "set_vector_tasks",
]
__version__ = "0.1.0"
