"""A run's configuration: the fields every run has (:class:`RunConfig`), extended by each algorithm's own.

An algorithm's config is a dataclass subclass of :class:`RunConfig` that adds its fields, each with a one-line
docstring, and checks them in ``validate`` (calling ``super().validate()`` first). Keys are flat: a preset, a
``key=value`` override and a run's ``config.json`` name the common fields and the algorithm's fields side by side
(``algo: rl2`` then ``rl2_hidden_size: 64``). :mod:`metarl.presets` resolves ``algo`` through the registry, builds the
algorithm's config class from field values, and refuses a key that class does not have, listing the ones it has.

This module holds the common fields and the machinery every config class shares: converting YAML / JSON values to
the declared field types, the validation helpers, the fields' docstrings (read from the source, for ``metarl algos``)
and the JSON written beside each run.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import re
import textwrap
import typing
from collections.abc import Iterable
from typing import Any


@dataclasses.dataclass
class RunConfig:
    """The fields of every meta-training run, whatever the algorithm."""

    SAVED_RUN_VALUES: typing.ClassVar[dict[str, Any]] = {}
    """Fields added after runs were saved whose default is not what those runs did: the value a run folder's
    ``config.json`` without the field stands for (:func:`metarl.presets.load_run_config` fills it in)."""

    # -- what to train on --------------------------------------------------------------------------------------------
    family: str = "MetaRL/Navigation2D-v0"
    """Registered task family id (``metarl families`` lists them)."""
    family_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of the family (e.g. ``{"horizon": 200}``)."""
    algo: str = "maml-trpo"
    """The registered algorithm (``metarl algos`` lists them and their fields)."""
    seed: int = 0
    """Seeds torch, NumPy and Python, the task sampler and the env seeds."""
    split_seed: int = 0
    """Seed of the train / validation / test task split (independent of ``seed``)."""
    num_tasks: int = 2000
    """Size of the task pool that is split 80 / 10 / 10 into train / validation / test."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``: policy, inner loops, updates and native envs."""
    threads: int = 1
    """torch intra-op threads; 1 is fastest for small networks on a shared CPU."""

    # -- the meta-training loop ---------------------------------------------------------------------------------------
    iterations: int = 80
    """Meta-iterations (outer updates). The default run takes about 3 minutes on a 2-core CPU."""
    meta_batch_size: int = 20
    """Tasks per meta-iteration (RL²: trials per meta-iteration, one per task)."""

    # -- evaluation, logging, checkpoints ---------------------------------------------------------------------------
    eval_interval: int = 20
    """Evaluate on validation tasks every this many iterations (and keep the best checkpoint)."""
    eval_tasks: int = 40
    """Validation tasks per evaluation (at most the validation split's size)."""
    test_tasks: int = 100
    """Held-out test tasks of the final evaluation."""
    checkpoint_interval: int = 10
    """Write the resumable checkpoint every this many iterations."""
    run_root: str = "runs"
    """Folder under which run folders ``<family>__<algo>__<seed>__<time>`` are made."""
    progress: bool = True
    """Print progress on stderr: the start block, the per-iteration line and the validation lines
    (:mod:`metarl.console`). The held-out table at the end is printed either way; ``metarl train --quiet`` silences
    everything but errors and the run folder's path for one invocation, whatever this says."""
    dist_timeout_s: float = 300.0
    """Under ``torchrun``: the longest a process waits for the others at a collective (a gradient sum, say) before
    it ends the job with an error; bounds how long a hung process can stall the rest (docs/distributed.md)."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field and what is allowed. Subclasses check their own
        fields after calling this."""
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"unknown device {self.device!r}; allowed: auto, cpu, cuda, cuda:N")
        check_at_least(
            self,
            1,
            "iterations meta_batch_size eval_interval eval_tasks test_tasks checkpoint_interval threads num_tasks",
        )
        check_at_least(self, 0, "seed split_seed")
        check_positive_numbers(self, "dist_timeout_s")

    def run_label(self) -> str:
        """The algorithm's part of the run folder's name (a variant may add to it)."""
        return self.algo


# -- validation helpers ------------------------------------------------------------------------------------------
def check_at_least(config: Any, minimum: int, names: str) -> None:
    """Each of the space-separated integer fields ``names`` is at least ``minimum``."""
    for name in names.split():
        if getattr(config, name) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {getattr(config, name)}")


def check_positive_numbers(config: Any, names: str, *, zero_allowed: bool = False) -> None:
    """Each of the space-separated float fields ``names`` is finite and > 0 (>= 0 with ``zero_allowed``)."""
    for name in names.split():
        value = getattr(config, name)
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
            raise ValueError(f"{name} must be a finite number {'>=' if zero_allowed else '>'} 0, got {value}")


def check_unit_interval(config: Any, names: str) -> None:
    """Each of the space-separated float fields ``names`` is in [0, 1]."""
    for name in names.split():
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(config, name)}")


def check_hidden_sizes(config: Any) -> None:
    """``hidden_sizes`` is a non-empty tuple of positive layer sizes."""
    if not config.hidden_sizes or any(size < 1 for size in config.hidden_sizes):
        raise ValueError(f"hidden_sizes must be positive ints, got {config.hidden_sizes}")


def check_layer_sizes(config: Any, names: str) -> None:
    """Each of the space-separated fields ``names`` is a non-empty sequence of positive layer sizes."""
    for name in names.split():
        sizes = getattr(config, name)
        if not sizes or any(size < 1 for size in sizes):
            raise ValueError(f"{name} must be a non-empty list of positive ints, got {list(sizes)}")


def check_choice(config: Any, name: str, allowed: Iterable[str]) -> None:
    """The string field ``name`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if getattr(config, name) not in allowed:
        raise ValueError(f"unknown {name} {getattr(config, name)!r}; allowed: {', '.join(allowed)}")


# -- building a config from field values -------------------------------------------------------------------------
def field_names(config_class: type[RunConfig]) -> list[str]:
    """The fields of a config class, common ones first."""
    return [field.name for field in dataclasses.fields(config_class)]


def build_config(config_class: type[RunConfig], values: dict[str, Any]) -> RunConfig:
    """``config_class`` from field values (YAML / JSON types, converted to the declared ones), validated.

    Raises:
        ValueError: a key the class does not have (the message lists the ones it has), a value of the wrong type,
            or an invalid value.
    """
    names = field_names(config_class)
    unknown = sorted(set(values) - set(names))
    if unknown:
        algo = values.get("algo", RunConfig.algo)
        own = [name for name in names if name not in _COMMON_FIELDS]
        raise ValueError(
            f"unknown config fields {unknown} for algo {algo!r}; its own fields: {', '.join(own) or 'none'}; "
            f"common fields: {', '.join(_COMMON_FIELDS)} (`metarl algos {algo}` documents them)"
        )
    hints = typing.get_type_hints(config_class)
    config = config_class(**{key: _convert(key, value, hints[key]) for key, value in values.items()})
    config.validate()
    return config


_COMMON_FIELDS = [field.name for field in dataclasses.fields(RunConfig)]
_YAML11_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _convert(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(_convert(key, item, item_type) for item in items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config {key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and _YAML11_EXPONENT_FLOAT.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads 3e-4 as a string: it wants a dot in the mantissa, as in 3.0e-4.
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"config {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"config {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"no conversion for config field {key} of type {hint}")


# -- documentation and JSON --------------------------------------------------------------------------------------
def field_docs(config_class: type[RunConfig]) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), from every class of the MRO whose
    source is available; a field without one maps to ``""``."""
    docs: dict[str, str] = {}
    for cls in reversed(config_class.__mro__):
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):  # a builtin base, or a class defined where no source is kept
            continue
        (class_node,) = [node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)][:1] or [None]
        if class_node is None:
            continue
        body = class_node.body
        for statement, following in zip(body, [*body[1:], None], strict=True):
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                is_doc = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                text = following.value.value if is_doc and isinstance(following.value.value, str) else ""
                if text or statement.target.id not in docs:  # a subclass that only changes a default keeps the doc
                    docs[statement.target.id] = " ".join(text.split())
    return {name: docs.get(name, "") for name in field_names(config_class)}


def config_to_json(config: RunConfig) -> str:
    """The resolved config as JSON (written beside each run): every field of the algorithm's config class."""
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)
