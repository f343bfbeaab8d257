"""The training configuration: one dataclass, YAML presets under ``configs/``, command-line overrides.

``load_config(preset, overrides)`` starts from the dataclass defaults, applies a preset (a YAML file of field
values, read with ``yaml.safe_load``) and then ``key=value`` overrides, and validates the result before any work
starts. The resolved config is written beside every run as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from metarl.advantages import WEIGHTINGS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ALGORITHMS = ("maml-trpo", "maml-ppo", "reptile", "rl2", "pretrain-trpo", "oracle-ppo", "random", "classical")


@dataclasses.dataclass
class TrainConfig:
    """Everything one meta-training run depends on."""

    # -- what to train on --------------------------------------------------------------------------------------------
    family: str = "MetaRL/Navigation2D-v0"
    """Registered task family id (``metarl families`` lists them)."""
    family_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of the family (e.g. ``{"horizon": 200}``)."""
    algo: str = "maml-trpo"
    """The meta-learning algorithm: ``maml-trpo``, ``maml-ppo`` (ProMP with ``ppo_kl_coeff`` > 0), ``reptile`` or
    ``rl2``; or a baseline: ``pretrain-trpo`` (multi-task pretraining, fine-tuned like MAML), ``oracle-ppo`` (SB3's
    PPO told the task: an upper bound), ``random`` (uniform actions; nothing to train) or ``classical`` (a
    bandit / tabular-MDP algorithm of the RL² paper, ``classical_agent``, played in trials like RL²)."""
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

    # -- the meta-batch ---------------------------------------------------------------------------------------------
    iterations: int = 80
    """Meta-iterations (outer updates). The default run takes about 3 minutes on a 2-core CPU."""
    meta_batch_size: int = 20
    """Tasks per meta-iteration (rl2: trials per meta-iteration, one per task)."""
    episodes_per_task: int = 20
    """Episodes collected per task before and after each adaptation step (MAML, Reptile)."""

    # -- policy -----------------------------------------------------------------------------------------------------
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the MLP policy."""
    activation: str = "tanh"
    """Hidden activation: ``tanh`` or ``relu``."""
    min_log_std: float = -13.815510557964274
    """MAML and its baselines, Gaussian policies: the floor of the log standard deviation (log 1e-6 by default, only
    an overflow guard, as pytorch-maml-rl's ``min_log_std``; rllab's ``min_std`` is the same knob)."""

    # -- inner loop -------------------------------------------------------------------------------------------------
    num_inner_steps: int = 1
    """Policy-gradient adaptation steps during meta-training."""
    inner_step_sizes: tuple[float, ...] = (0.1,)
    """Inner step size α per step (the last one repeats)."""
    first_order: bool = False
    """Ignore the second-order terms of the meta-gradient (FO-MAML)."""
    meta_sgd: bool = False
    """Meta-SGD: learn one inner step size per parameter entry (starting at ``inner_step_sizes[0]``); maml-ppo only."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE λ for the advantages (1.0: discounted return minus the linear baseline)."""
    weighting: str = "episode"
    """maml-trpo, maml-ppo, pretrain-trpo: how a task's average over episodes of unequal length (an early termination)
    weighs them, in the advantage normalisation, the inner loss, the surrogate, the KL and TRPO's curvature alike:
    ``episode`` (each episode's time-average, then the mean over episodes: pytorch-maml-rl) or ``step`` (every real
    step the same: rllab, the MAML paper's code). Equal-length episodes make them the same."""

    # -- outer loop (TRPO) ------------------------------------------------------------------------------------------
    max_kl: float = 0.01
    """TRPO's trust region: the largest mean KL between old and new adapted policies."""
    cg_iterations: int = 10
    """Conjugate-gradient iterations for the natural-gradient direction."""
    cg_damping: float = 1e-5
    """Damping added to the KL's Hessian-vector products."""
    curvature_fraction: float = 1.0
    """Share of each task's episodes the KL's curvature is computed on (1.0: exact; the fast mode uses 0.25, about
    2.3x faster per meta-iteration on the Navigation2D preset, with the same held-out returns measured on three seeds;
    0.1 measured worse after two adaptation steps). The gradient, the adaptation and the line search always use every
    episode."""
    pre_adaptation_trust_region: bool = False
    """maml-trpo: bound the pre-adaptation policy's change too. TRPO's curvature adds that policy's Fisher matrix (on
    the pre-adaptation episodes) and the line search checks the sum of the two mean KLs against ``max_kl``. Off: the
    MAML paper's trust region, on the adapted policies only (``losses/pre_adaptation_kl`` logs the other)."""
    line_search_backtrack_ratio: float = 0.8
    """Step shrink factor of the backtracking line search."""
    line_search_max_steps: int = 15
    """Most candidates the line search tries before giving up (and keeping the parameters)."""

    # -- outer loop (PPO, Reptile) ---------------------------------------------------------------------------------
    ppo_epochs: int = 5
    """maml-ppo, rl2: Adam epochs per meta-iteration (maml-ppo re-adapts through the inner loop in each)."""
    ppo_clip: float = 0.2
    """maml-ppo, rl2: the clip range of the probability ratio."""
    ppo_learning_rate: float = 1e-3
    """maml-ppo, rl2: Adam's learning rate (maml-ppo: for the meta-parameters and Meta-SGD's step sizes)."""
    ppo_kl_coeff: float = 0.0
    """maml-ppo: weight of ProMP's penalty on KL(old ‖ new) of the pre-adaptation policy (0: plain MAML-PPO)."""
    reptile_step_size: float = 0.5
    """reptile: the fraction of the way the meta-parameters move toward the mean adapted parameters."""

    # -- RL² ----------------------------------------------------------------------------------------------------------
    trial_episodes: int = 2
    """rl2: episodes per trial (n); the hidden state persists across them and is reset between trials."""
    rl2_hidden_size: int = 256
    """rl2: GRU units of the actor (and of the critic)."""
    rl2_shared_critic: bool = False
    """rl2: one GRU feeds both heads (default: a separate critic GRU)."""
    rl2_bptt_steps: int = 0
    """rl2: truncated backpropagation through time over chunks of this many steps (0: whole trials)."""
    ppo_minibatches: int = 4
    """rl2: minibatches per PPO epoch (of whole trials, or of BPTT chunks)."""
    ppo_entropy_coeff: float = 0.0
    """rl2: weight of the policy's entropy bonus."""
    ppo_value_coeff: float = 0.5
    """rl2: weight of the value loss (in the return normaliser's scale)."""
    max_grad_norm: float = 0.5
    """rl2: gradients are clipped to this global norm."""
    classical_agent: str = "gittins"
    """classical: which algorithm plays the trials (``agents.classical.CLASSICAL_AGENTS``: gittins, thompson, ucb1,
    ucb1_prior, greedy, epsilon_greedy and random for bandits; psrl, psrl_zero_prior, greedy and random for tabular
    MDPs), with its documented default settings; its trials have ``trial_episodes`` episodes."""

    # -- evaluation, logging, checkpoints ---------------------------------------------------------------------------
    eval_interval: int = 20
    """Evaluate on validation tasks every this many iterations (and keep the best checkpoint)."""
    eval_tasks: int = 40
    """Validation tasks per evaluation (at most the validation split's size)."""
    eval_steps: int = 3
    """Adaptation steps at evaluation (returns are reported after 0..eval_steps steps)."""
    eval_step_sizes: tuple[float, ...] = (0.1, 0.05)
    """Step sizes at evaluation (the MAML paper halves α after the first step; the last one repeats)."""
    test_tasks: int = 100
    """Held-out test tasks of the final evaluation."""
    checkpoint_interval: int = 10
    """Write the resumable checkpoint every this many iterations."""
    run_root: str = "runs"
    """Folder under which run folders ``<family>__<algo>__<seed>__<time>`` are made."""
    progress: bool = True
    """Show a progress line on the terminal."""
    dist_timeout_s: float = 300.0
    """Under ``torchrun``: the longest a process waits for the others at a collective (a gradient sum, say) before
    it ends the job with an error; bounds how long a hung process can stall the rest (docs/distributed.md)."""


_FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}


def available_presets() -> list[str]:
    """Names of the YAML presets under ``configs/``."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def load_config(preset: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the preset (a name under ``configs/`` or a YAML path), then ``key=value`` overrides.

    Raises:
        ValueError: an unknown preset or field, a value of the wrong type, or an invalid value.
    """
    values: dict[str, Any] = {}
    if preset is not None:
        path = Path(preset) if preset.endswith((".yaml", ".yml")) else CONFIG_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown preset {preset!r}; available: {', '.join(available_presets())} or a YAML path")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"preset {path} must hold a mapping of config fields, got {type(loaded).__name__}")
        values.update(loaded)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise ValueError(f"override {override!r} must look like key=value")
        values[key.strip()] = yaml.safe_load(text)
    return config_from_dict(values)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build and validate a config from field values (as found in a preset or a run's ``config.json``)."""
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown config fields {unknown}; allowed: {', '.join(_FIELDS)}")
    hints = typing.get_type_hints(TrainConfig)
    converted = {key: _convert(key, value, hints[key]) for key, value in values.items()}
    config = TrainConfig(**converted)
    validate(config)
    return config


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


def validate(config: TrainConfig) -> None:
    """Raise ``ValueError`` naming the first invalid field and what is allowed."""
    if config.algo not in ALGORITHMS:
        raise ValueError(f"unknown algo {config.algo!r}; allowed: {', '.join(ALGORITHMS)}")
    if config.device not in ("auto", "cpu", "cuda") and not config.device.startswith("cuda:"):
        raise ValueError(f"unknown device {config.device!r}; allowed: auto, cpu, cuda, cuda:N")
    if config.activation not in ("tanh", "relu"):
        raise ValueError(f"unknown activation {config.activation!r}; allowed: tanh, relu")
    positive_ints = (
        "iterations meta_batch_size episodes_per_task num_inner_steps cg_iterations line_search_max_steps "
        "eval_interval eval_tasks test_tasks checkpoint_interval threads num_tasks trial_episodes rl2_hidden_size "
        "ppo_minibatches"
    )
    for name in positive_ints.split():
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in ("seed", "split_seed", "eval_steps", "rl2_bptt_steps"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
    if not config.hidden_sizes or any(size < 1 for size in config.hidden_sizes):
        raise ValueError(f"hidden_sizes must be positive ints, got {config.hidden_sizes}")
    for name in ("inner_step_sizes", "eval_step_sizes"):
        sizes = getattr(config, name)
        if not sizes or any(not math.isfinite(s) or s <= 0 for s in sizes):
            raise ValueError(f"{name} must be finite numbers > 0, got {sizes}")
    for name in ("max_kl", "cg_damping"):
        value = getattr(config, name)
        if not math.isfinite(value) or value < 0 or (name == "max_kl" and value == 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    for name in ("gamma", "gae_lambda"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(config, name)}")
    if config.meta_sgd and config.algo != "maml-ppo":
        raise ValueError(f"meta_sgd needs algo maml-ppo (its step sizes are learned by Adam), got algo {config.algo}")
    if config.ppo_epochs < 1:
        raise ValueError(f"ppo_epochs must be >= 1, got {config.ppo_epochs}")
    for name in ("ppo_clip", "ppo_learning_rate", "reptile_step_size", "max_grad_norm", "dist_timeout_s"):
        value = getattr(config, name)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    for name in ("ppo_kl_coeff", "ppo_entropy_coeff", "ppo_value_coeff"):
        value = getattr(config, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if not (math.isfinite(config.min_log_std) and config.min_log_std <= 0.0):
        raise ValueError(
            f"min_log_std must be a finite number <= 0 (the initial log std is 0), got {config.min_log_std}"
        )
    if config.weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {config.weighting!r}")
    if not 0.0 < config.curvature_fraction <= 1.0:
        raise ValueError(f"curvature_fraction must be in (0, 1], got {config.curvature_fraction}")
    if not 0.0 < config.line_search_backtrack_ratio < 1.0:
        raise ValueError(f"line_search_backtrack_ratio must be in (0, 1), got {config.line_search_backtrack_ratio}")


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config a run folder was trained with (its ``config.json``), validated like any other."""
    return config_from_dict(json.loads((Path(run_dir) / "config.json").read_text()))


def config_to_json(config: TrainConfig) -> str:
    """The resolved config as JSON (written beside each run)."""
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)
