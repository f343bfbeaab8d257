"""Building a run's config by algorithm name: YAML presets, ``key=value`` overrides, a run folder's ``config.json``.

``load_config(preset, overrides)`` starts from the algorithm's config defaults, applies a preset (a YAML file of
field values, read with ``yaml.safe_load``) and then ``key=value`` overrides, and validates the result before any
work starts. The ``algo`` key (default ``maml-trpo``) picks the config class through the registry; every other key
must be a field of that class.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from metarl.config import RunConfig, build_config, field_names
from metarl.registry import agent_spec

PRESET_DIR: Traversable = resources.files("metarl") / "configs"
"""The presets shipped inside the package (``metarl/configs/*.yaml``), found through its resources so that a wheel
or a non-editable install finds them as a source checkout does."""

FLAT_CONFIG_FIELDS = frozenset(
    "family family_kwargs algo seed split_seed num_tasks device threads iterations meta_batch_size episodes_per_task "
    "hidden_sizes activation min_log_std num_inner_steps inner_step_sizes first_order meta_sgd gamma gae_lambda "
    "weighting max_kl cg_iterations cg_damping curvature_fraction pre_adaptation_trust_region "
    "line_search_backtrack_ratio line_search_max_steps ppo_epochs ppo_clip ppo_learning_rate ppo_kl_coeff "
    "reptile_step_size trial_episodes rl2_hidden_size rl2_shared_critic rl2_bptt_steps ppo_minibatches "
    "ppo_entropy_coeff ppo_value_coeff max_grad_norm classical_agent eval_interval eval_tasks eval_steps "
    "eval_step_sizes test_tasks checkpoint_interval run_root progress dist_timeout_s".split()
)
"""The fields of the one flat config every algorithm shared before each had its own: a run folder written then
holds all of them in its ``config.json``, those its algorithm never read included."""


def available_presets() -> list[str]:
    """Names of the presets shipped with the package (``metarl/configs/<name>.yaml``)."""
    return sorted(entry.name.removesuffix(".yaml") for entry in PRESET_DIR.iterdir() if entry.name.endswith(".yaml"))


def load_config(preset: str | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults, then the preset (a shipped preset's name or a path to a YAML file), then ``key=value`` overrides.

    Raises:
        ValueError: an unknown preset, algorithm or field, a value of the wrong type, or an invalid value.
    """
    values: dict[str, Any] = {}
    if preset is not None:
        if preset.endswith((".yaml", ".yml")):
            path: Path | Traversable = Path(preset)
            if not path.is_file():
                raise ValueError(f"preset file {preset!r} does not exist (or is not a file)")
        elif preset in available_presets():
            path = PRESET_DIR / f"{preset}.yaml"
        else:
            raise ValueError(f"unknown preset {preset!r}; available: {', '.join(available_presets())} or a YAML path")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ValueError(f"preset {path} cannot be read as YAML ({_one_line(error)}); fix or replace it") from error
        if not isinstance(loaded, dict):
            raise ValueError(f"preset {path} must hold a mapping of config fields, got {type(loaded).__name__}")
        values.update(loaded)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise ValueError(f"override {override!r} must look like key=value")
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(
                f"override {override!r}: its value is not valid YAML ({_one_line(error)}); quote strings, write "
                "lists as [a, b]"
            ) from error
    return config_from_dict(values)


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """The config of ``values["algo"]`` (default ``maml-trpo``) built from field values and validated."""
    algo = values.get("algo", RunConfig.algo)
    if not isinstance(algo, str):
        raise ValueError(f"config algo must be a string, got {algo!r}")
    return build_config(agent_spec(algo).config_class, values)


def _one_line(error: BaseException) -> str:
    """An exception's text on one line (YAML's errors span several, pointing at the column)."""
    return " ".join(str(error).split())


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run folder was trained with (its ``config.json``), validated like any other.

    A folder written before each algorithm had its own config holds every field of the old flat config; the ones
    its algorithm does not have (it never read them) are dropped, so that such a run resumes and evaluates. A field
    added since the run was saved takes the value that run trained with where its config class names one
    (``SAVED_RUN_VALUES``), its default otherwise.

    Raises:
        ValueError: no run folder, no readable ``config.json`` (each message names the file), an algorithm that is
            not registered (``--import`` the module that registers it), or fields that are neither the algorithm's
            nor the old flat config's.
    """
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        what = "is a file" if Path(run_dir).exists() else "does not exist"
        raise ValueError(f"no run folder at {run_dir} (it {what}); pass a folder made by metarl train")
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run folder: it has no config.json (metarl train writes one first)")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error}); check its permissions") from error
    except ValueError as error:  # json.JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        raise ValueError(
            f"{path} is not valid JSON ({_one_line(error)}); it was not written by metarl train, or was damaged: "
            "restore it from a copy"
        ) from error
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config fields, got {type(values).__name__}")
    algo = values.get("algo", RunConfig.algo)
    if not isinstance(algo, str):
        raise ValueError(f"{path}: algo must be a string, got {algo!r}; restore the file from a copy")
    try:
        own_fields = set(field_names(agent_spec(algo).config_class))
    except ValueError as error:
        raise ValueError(f"cannot load the run {run_dir}: {error}") from error
    if set(values) <= FLAT_CONFIG_FIELDS | own_fields:
        values = {key: value for key, value in values.items() if key in own_fields}
    values = {**agent_spec(algo).config_class.SAVED_RUN_VALUES, **values}
    try:
        return config_from_dict(values)
    except (TypeError, ValueError) as error:  # a field edited by hand: say which file holds it
        raise ValueError(f"{path}: {error}; fix that value or restore the file from a copy") from error
