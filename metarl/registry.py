"""The two registries: task families (backed by Gymnasium's) and meta-learning algorithms.

Families:
``register_family(MyFamily)`` registers ``MetaRL/<name>-v<version>`` with Gymnasium (``register_family(MyFamily,
namespace="MyLab")``: ``MyLab/<name>-v<version>``, a namespace of the user's own, as Gymnasium ids have), so that
``gymnasium.make(id, **kwargs)`` builds the family's single env and ``gymnasium.make_vec(id, num_envs,
vectorization_mode="vector_entry_point", **kwargs)`` its native batched env (when it has one; otherwise Gymnasium's
Sync/Async vector envs work as for any env). Keyword arguments are the family's constructor arguments; the vector
entry point also takes ``device`` and ``autoreset_mode``.

Algorithms: ``register_agent("my-algo", MyAgent, MyConfig)`` makes ``algo=my-algo`` a choice of ``metarl train``,
``metarl evaluate`` and ``metarl algos``: ``MyAgent`` has the members of :class:`metarl.agent.MetaAgent` and
``MyConfig`` is a dataclass subclass of :class:`metarl.config.RunConfig` with the algorithm's own fields.

The suite's own families and algorithms register themselves when the packages ``metarl.envs`` and ``metarl.agents``
(the folders ``envs/`` and ``agents/``) are imported; the first lookup or listing imports them (:func:`load_builtins`,
the one place they are named). A user's family or algorithm is registered the same way from the user's module
(``scripts/custom_family_example.py``, ``scripts/custom_agent_example.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import re
from typing import Any

import gymnasium as gym
import torch

from metarl.agent import OPTIONAL_METHODS, PROTOCOL_ATTRIBUTES, PROTOCOL_METHODS, MetaAgent
from metarl.config import RunConfig
from metarl.distributed import Workers
from metarl.env import TaskHolder
from metarl.tasks import TaskFamily

NAMESPACE = "MetaRL"
"""The suite's own namespace of family ids, and the default of :func:`register_family`."""
BUILTIN_PACKAGES = ("metarl.envs", "metarl.agents")
"""The packages whose import registers the suite's own families and algorithms."""
_ID_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")  # used with fullmatch: "$" would let a trailing newline in


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """What the registry knows about one registered family."""

    id: str
    """Gymnasium id, ``<namespace>/<name>-v<version>`` (``MetaRL/...`` for the suite's own)."""
    family_class: type[TaskFamily]
    """The family class."""
    kwargs: dict[str, Any]
    """Default constructor arguments, overridable in ``make_family`` / ``gymnasium.make``."""

    def make_family(self, **kwargs: Any) -> TaskFamily:
        """Build the family with the registered defaults updated by ``kwargs``."""
        return self.family_class(**{**self.kwargs, **kwargs})


_FAMILIES: dict[str, FamilySpec] = {}


def _make_single_env(family_class: type[TaskFamily], render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    family = family_class(**kwargs)
    # only families that render (the MuJoCo ones) take a render mode; the others keep Gymnasium's error
    return family.make_env() if render_mode is None else family.make_env(render_mode=render_mode)


def _make_native_vector_env(
    family_class: type[TaskFamily],
    num_envs: int = 1,
    device: str | torch.device = "cpu",
    autoreset_mode: gym.vector.AutoresetMode | str = gym.vector.AutoresetMode.NEXT_STEP,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    return family_class(**kwargs).make_vec_env(num_envs, device=device, autoreset_mode=autoreset_mode)


def register_family(
    family_class: type[TaskFamily], *, kwargs: dict[str, Any] | None = None, namespace: str = NAMESPACE
) -> str:
    """Register ``family_class`` as ``<namespace>/<name>-v<version>`` in the suite's and Gymnasium's registries.

    Args:
        family_class: a :class:`TaskFamily` subclass with ``name`` and ``version`` set.
        kwargs: default constructor arguments; they are checked by building the family once.
        namespace: the id's namespace: letters, digits, ``_`` or ``-``, starting with a letter (Gymnasium's
            ``Namespace/Name-vN``). ``MetaRL`` (the default) is the suite's; a family of your own may keep it, as
            the existing examples do, but a namespace of your own (``MyLab``) says whose it is and cannot collide
            with a family the suite adds later.

    Returns:
        The registered id.

    Raises:
        TypeError: ``family_class`` is not a TaskFamily subclass.
        ValueError: a bad namespace, name or version, or the id is already registered to another class.
    """
    if not (isinstance(family_class, type) and issubclass(family_class, TaskFamily)):
        raise TypeError(f"register_family expects a TaskFamily subclass, got {family_class!r}")
    if not isinstance(namespace, str) or not _ID_PATTERN.fullmatch(namespace):
        raise ValueError(
            f"namespace must be letters, digits, '_' or '-', starting with a letter (as in 'MyLab'), got {namespace!r}"
        )
    name = getattr(family_class, "name", None)
    if not isinstance(name, str) or not _ID_PATTERN.fullmatch(name):
        raise ValueError(f"{family_class.__name__}.name must be letters, digits, '_' or '-', got {name!r}")
    env_class = getattr(family_class, "env_class", None)
    if not (isinstance(env_class, type) and issubclass(env_class, gym.Env) and issubclass(env_class, TaskHolder)):
        raise TypeError(
            f"{family_class.__name__}.env_class must be a gymnasium.Env with the metarl.TaskHolder mixin "
            f"(a metarl.MetaEnv subclass, say), got {env_class!r}"
        )
    vector_env_class = family_class.vector_env_class
    if vector_env_class is not None and not (
        isinstance(vector_env_class, type)
        and issubclass(vector_env_class, gym.vector.VectorEnv)
        and callable(getattr(vector_env_class, "set_tasks", None))
    ):
        raise TypeError(
            f"{family_class.__name__}.vector_env_class must be None or a gymnasium VectorEnv with set_tasks "
            f"(a metarl.TorchVectorEnv subclass, say), got {vector_env_class!r}"
        )
    version = family_class.version
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"{family_class.__name__}.version must be an int >= 0, got {version!r}")
    env_id = f"{namespace}/{name}-v{version}"
    existing = _FAMILIES.get(env_id)
    # the same class, or the same class from a reloaded module, may register again; another class may not
    if existing is not None and _qualified_name(existing.family_class) != _qualified_name(family_class):
        raise ValueError(
            f"{env_id} is already registered to {_qualified_name(existing.family_class)}; "
            f"bump {family_class.__name__}.version or choose another name"
        )
    kwargs = dict(kwargs or {})
    if existing is not None and existing.family_class is family_class and existing.kwargs == kwargs:
        return env_id  # registering the very same thing twice is a no-op
    family_class(**kwargs)  # fail here, at registration, on bad default arguments

    gym.register(
        id=env_id,
        entry_point=functools.partial(_make_single_env, family_class),
        vector_entry_point=(
            functools.partial(_make_native_vector_env, family_class) if family_class.vector_env_class else None
        ),
        kwargs=kwargs,
    )
    _FAMILIES[env_id] = FamilySpec(id=env_id, family_class=family_class, kwargs=kwargs)
    return env_id


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def list_families() -> list[str]:
    """Ids of all registered families, sorted."""
    load_builtins()
    return sorted(_FAMILIES)


def family_spec(env_id: str) -> FamilySpec:
    """Look up a registered family by id; an unknown id raises ``ValueError`` listing the closest ids."""
    load_builtins()
    if env_id in _FAMILIES:
        return _FAMILIES[env_id]
    raise ValueError(
        f"unknown family id {env_id!r}; {_closest(env_id, list(_FAMILIES))} (a family of your own: "
        "`metarl --import your_module`)"
    )


def _closest(name: str, registered: list[str]) -> str:
    close = difflib.get_close_matches(name, registered, n=3, cutoff=0.4)
    return f"did you mean {', '.join(close)}?" if close else f"registered: {', '.join(sorted(registered)) or 'none'}"


def make_family(env_id: str, **kwargs: Any) -> TaskFamily:
    """Build the registered family ``env_id`` with its defaults updated by ``kwargs``."""
    return family_spec(env_id).make_family(**kwargs)


def load_builtins() -> None:
    """Import the suite's own packages (:data:`BUILTIN_PACKAGES`), which register its families and algorithms; a
    no-op after the first call."""
    for package in BUILTIN_PACKAGES:
        importlib.import_module(package)


# -- algorithms --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """What the registry knows about one registered algorithm."""

    name: str
    """The ``algo`` value that picks it."""
    agent_class: type[MetaAgent]
    """The class, constructed as ``agent_class(family, config, device, workers)``."""
    config_class: type[RunConfig]
    """Its config: the run's common fields and the algorithm's own."""

    def make_agent(self, family: TaskFamily, config: RunConfig, device: torch.device, workers: Workers) -> MetaAgent:
        """The agent for ``config`` (an instance of ``config_class``) on ``family``."""
        if not isinstance(config, self.config_class):
            raise TypeError(f"algo {self.name!r} needs a {self.config_class.__name__}, got {type(config).__name__}")
        return self.agent_class(family, config, device, workers)


_AGENTS: dict[str, AgentSpec] = {}


def register_agent(name: str, agent_class: type, config_class: type[RunConfig]) -> str:
    """Register an algorithm under ``name`` (the ``algo`` config value).

    Args:
        name: letters, digits, ``_`` or ``-``.
        agent_class: a class with the members of :class:`metarl.agent.MetaAgent` (and, optionally,
            ``memory_estimate``: :mod:`metarl.budget`).
        config_class: a dataclass subclass of :class:`metarl.config.RunConfig` holding the algorithm's fields.

    Returns:
        ``name``.

    Raises:
        TypeError: a class that lacks a member of the protocol, or a config class that is not a ``RunConfig``
            dataclass.
        ValueError: a bad name, or ``name`` already registered to other classes.
    """
    if not isinstance(name, str) or not _ID_PATTERN.fullmatch(name):
        raise ValueError(f"an algorithm name must be letters, digits, '_' or '-', got {name!r}")
    if not isinstance(agent_class, type):
        raise TypeError(f"register_agent expects a class, got {agent_class!r}")
    missing = [method for method in PROTOCOL_METHODS if not callable(getattr(agent_class, method, None))]
    for attribute, kind in PROTOCOL_ATTRIBUTES.items():
        if not isinstance(getattr(agent_class, attribute, None), kind):
            missing.append(f"{attribute} ({kind.__name__})")
    if missing:
        raise TypeError(f"{agent_class.__name__} is not a metarl.agent.MetaAgent: it lacks {', '.join(missing)}")
    for method in OPTIONAL_METHODS:
        member = getattr(agent_class, method, None)
        if member is not None and not callable(member):
            raise TypeError(f"{agent_class.__name__}.{method} must be a method or absent, got {member!r}")
    pair = [hasattr(agent_class, method) for method in ("buffers_state_dict", "load_buffers_state_dict")]
    if any(pair) and not all(pair):
        raise TypeError(
            f"{agent_class.__name__} must have both buffers_state_dict and load_buffers_state_dict, or neither: a "
            "resumed run restores what the first saved"
        )
    if not (
        isinstance(config_class, type)
        and issubclass(config_class, RunConfig)
        and dataclasses.is_dataclass(config_class)
    ):
        raise TypeError(f"config_class must be a dataclass subclass of metarl.config.RunConfig, got {config_class!r}")
    existing = _AGENTS.get(name)
    if existing is not None and (
        _qualified_name(existing.agent_class) != _qualified_name(agent_class)
        or _qualified_name(existing.config_class) != _qualified_name(config_class)
    ):
        raise ValueError(f"algo {name!r} is already registered to {_qualified_name(existing.agent_class)}")
    _AGENTS[name] = AgentSpec(name=name, agent_class=agent_class, config_class=config_class)
    return name


def list_agents() -> list[str]:
    """Names of all registered algorithms, sorted."""
    load_builtins()
    return sorted(_AGENTS)


def agent_spec(name: str) -> AgentSpec:
    """Look up a registered algorithm; an unknown name raises ``ValueError`` listing the closest names."""
    load_builtins()
    if name in _AGENTS:
        return _AGENTS[name]
    raise ValueError(
        f"unknown algo {name!r}; {_closest(name, list(_AGENTS))} (an algorithm of your own: "
        "`metarl --import your_module`)"
    )


def make_agent(
    config: RunConfig, family: TaskFamily, device: torch.device, workers: Workers | None = None
) -> MetaAgent:
    """The agent of ``config.algo`` for ``family`` on ``device`` (one process unless ``workers`` says otherwise)."""
    return agent_spec(config.algo).make_agent(family, config, device, workers or Workers())
