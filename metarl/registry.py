"""The family registry: one public way to register, list and look up task families, backed by Gymnasium's.

``register_family(MyFamily)`` registers ``MetaRL/<name>-v<version>`` with Gymnasium, so that
``gymnasium.make(id, **kwargs)`` builds the family's single env and ``gymnasium.make_vec(id, num_envs,
vectorization_mode="vector_entry_point", **kwargs)`` its native batched env (when it has one; otherwise Gymnasium's
Sync/Async vector envs work as for any env). Keyword arguments are the family's constructor arguments; the vector
entry point also takes ``device`` and ``autoreset_mode``.

The suite's own families are registered by ``import envs``; a user's family is registered the same way from the
user's module (see ``scripts/custom_family_example.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from typing import Any

import gymnasium as gym
import torch

from metarl.env import TaskHolder
from metarl.tasks import TaskFamily

NAMESPACE = "MetaRL"
_ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """What the registry knows about one registered family."""

    id: str
    """Gymnasium id, ``MetaRL/<name>-v<version>``."""
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


def register_family(family_class: type[TaskFamily], *, kwargs: dict[str, Any] | None = None) -> str:
    """Register ``family_class`` as ``MetaRL/<name>-v<version>`` in the suite's and Gymnasium's registries.

    Args:
        family_class: a :class:`TaskFamily` subclass with ``name`` and ``version`` set.
        kwargs: default constructor arguments; they are checked by building the family once.

    Returns:
        The registered id.

    Raises:
        TypeError: ``family_class`` is not a TaskFamily subclass.
        ValueError: a bad name or version, or the id is already registered to another class.
    """
    if not (isinstance(family_class, type) and issubclass(family_class, TaskFamily)):
        raise TypeError(f"register_family expects a TaskFamily subclass, got {family_class!r}")
    name = getattr(family_class, "name", None)
    if not isinstance(name, str) or not _ID_PATTERN.match(name):
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
    env_id = f"{NAMESPACE}/{name}-v{version}"
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
    return sorted(_FAMILIES)


def family_spec(env_id: str) -> FamilySpec:
    """Look up a registered family by id; an unknown id raises ``ValueError`` listing the closest ids."""
    if env_id in _FAMILIES:
        return _FAMILIES[env_id]
    close = difflib.get_close_matches(env_id, list(_FAMILIES), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else f"registered: {', '.join(list_families()) or 'none'}"
    raise ValueError(f"unknown family id {env_id!r}; {hint} (the suite's families are registered by `import envs`)")


def make_family(env_id: str, **kwargs: Any) -> TaskFamily:
    """Build the registered family ``env_id`` with its defaults updated by ``kwargs``."""
    return family_spec(env_id).make_family(**kwargs)
