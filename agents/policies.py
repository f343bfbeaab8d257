"""MLP policies whose forward pass takes its parameters explicitly, for MAML's functional inner loop.

A policy's parameters are plain ``nn.Parameter``s with stable names (``layers.0.weight``, ``layers.0.bias``, ...,
``layers.<L>.weight``, ``layers.<L>.bias`` and, for the Gaussian policy, ``log_std``), and
``dict(policy.named_parameters())`` is the params dict every other module passes around. Every method takes
``params``:

- ``None``: the module's own parameters;
- *unbatched*: a dict with the module's shapes, with observations ``[..., obs_dim]``;
- *batched over tasks*: every tensor with a leading task dim T (weights ``[T, out, in]``, biases ``[T, out]``,
  ``log_std`` ``[T, action_dim]``), with observations ``[T, ..., obs_dim]``. MAML's adapted parameters have this
  form; ``batch_params`` builds it from a shared dict.

Both forms run through one code path (observations reshaped to ``[*lead, N, obs_dim]``, then ``x @ W.mT + b``), which
also works under ``torch.func.functional_call`` and ``torch.func.vmap``. Distributions are built with
``validate_args=False`` because argument validation is data-dependent control flow, which ``vmap`` forbids.

A policy's ``act`` is a :class:`metarl.rollout.RolloutPolicy`::

    collect_episodes(envs, family, tasks, episodes, policy.act, params=adapted_params)

References:
    Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    The layout follows pytorch-maml-rl's policies (https://github.com/tristandeleu/pytorch-maml-rl).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import gymnasium as gym
import torch
from metarl.agents.curvature import LayerParams, MLPPass, gather_rows, nonzero_rows, tanh
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from metarl.distributed import TaskShard, sample_actions

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"tanh": tanh, "relu": torch.relu}
"""Hidden-layer activations by name."""

MIN_LOG_STD = math.log(1e-6)
"""The Gaussian policy's log standard deviation is clamped from below here (as in pytorch-maml-rl), so that a
collapsing ``log_std`` cannot make log-probabilities overflow."""


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


OutputCurvature = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``(R{output}, tangents of the parameters outside the MLP) -> (R{∂L/∂output}, their Hessian products)``."""
LogLikelihoodTerms = tuple[torch.Tensor, dict[str, torch.Tensor], OutputCurvature]
"""A policy's ``_log_likelihood_terms``: ``∂L/∂output``, the other parameters' gradient, its ``OutputCurvature``."""


class _CurvaturePass(NamedTuple):
    """The forward pass a curvature product (:meth:`_MLPPolicy.fisher_product`) reuses: the params' leading (task)
    shape, the sample rows kept per task (:func:`metarl.agents.curvature.nonzero_rows`), the params ``[T, ...]``, the
    kept samples' weights ``[T, n]`` and the MLP's pass on them."""

    lead: tuple[int, ...]
    rows: torch.Tensor
    params: dict[str, torch.Tensor]
    weights: torch.Tensor
    mlp: MLPPass


def _task_major(value: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
    """A tensor with leading (task) dims ``lead`` as ``[T, ...]``: the leading dims flattened, or a new dim of 1."""
    return value.reshape(-1, *value.shape[len(lead) :]) if lead else value.unsqueeze(0)


def _from_task_major(value: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`_task_major`."""
    return value.reshape(*lead, *value.shape[1:]) if lead else value[0]


def _task_major_dict(values: Mapping[str, torch.Tensor], lead: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A dict shaped like the params as ``[T, ...]`` tensors (:func:`_task_major`)."""
    return {name: _task_major(value, lead) for name, value in values.items()}


def _flatten_samples(values: torch.Tensor, observations: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
    """``values`` shaped like ``observations`` without the last dim (plus trailing dims of their own, such as an
    action's) as ``[T, N, ...]``: T tasks (1 unbatched), N samples each."""
    sample_shape = observations.shape[len(lead) : -1]
    return _task_major(values.reshape(*lead, math.prod(sample_shape), *values.shape[observations.dim() - 1 :]), lead)


class _MLPPolicy(nn.Module):
    """An MLP from observations to ``out_dim`` outputs whose forward pass takes its parameters explicitly.

    Subclasses turn the MLP's output into a distribution in ``distribution`` and define ``_mode``.
    """

    def __init__(self, obs_dim: int, out_dim: int, hidden_sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        # validate everything before any layer is built
        self.obs_dim = _check_positive_int("obs_dim", obs_dim)
        if isinstance(hidden_sizes, str) or not isinstance(hidden_sizes, Sequence):
            raise ValueError(f"hidden_sizes must be a sequence of ints >= 1, got {hidden_sizes!r}")
        for size in hidden_sizes:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"hidden_sizes must be ints >= 1, got {size!r} in {tuple(hidden_sizes)!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.hidden_sizes = tuple(hidden_sizes)
        self.activation = activation
        self._activation = ACTIVATIONS[activation]

        sizes = (self.obs_dim, *self.hidden_sizes, out_dim)
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in itertools.pairwise(sizes))
        # initialisation of pytorch-maml-rl: Xavier-uniform weights, zero biases
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    @functools.cached_property
    def _parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape (fixed once built), read on every forward pass to check ``params``."""
        return {name: tuple(value.shape) for name, value in self.named_parameters()}

    def _resolve(self, params: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor]:
        if params is None:
            # read through named_parameters so that torch.func.functional_call's substitutes are used
            return dict(self.named_parameters())
        missing = [name for name in self._parameter_shapes if name not in params]
        if missing:
            raise ValueError(f"params lacks {missing}; expected the names of {type(self).__name__}.named_parameters()")
        return params

    def _check_shapes(self, observations: torch.Tensor, params: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
        """The params' leading (task) shape, after checking that every tensor has it and the observations fit."""
        lead = tuple(params["layers.0.weight"].shape[:-2])  # () unbatched, (T,) batched
        # shape checks are on Python ints, so they are fine under vmap
        for name, own_shape in self._parameter_shapes.items():
            shape = tuple(params[name].shape)
            if shape != (*lead, *own_shape):
                raise ValueError(
                    f"params[{name!r}] has shape {shape}, expected {(*lead, *own_shape)} "
                    f"(every tensor needs the same leading task shape {lead})"
                )
        if observations.dim() < len(lead) + 1 or tuple(observations.shape[: len(lead)]) != lead:
            raise ValueError(
                f"observations of shape {tuple(observations.shape)} do not fit params batched over {lead}: "
                f"expected [{', '.join(map(str, lead))}{', ' if lead else ''}..., {self.obs_dim}]"
            )
        if observations.shape[-1] != self.obs_dim:
            raise ValueError(f"observations must end in obs_dim={self.obs_dim}, got shape {tuple(observations.shape)}")

        return lead

    def _mlp(
        self, observations: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The MLP's output ``[*observations.shape[:-1], out_dim]`` and the params' leading (task) shape."""
        lead = self._check_shapes(observations, params)
        # [*lead, ..., obs_dim] -> [*lead, N, obs_dim]: one batched matmul per layer whether or not lead is empty
        x = observations.to(params["layers.0.weight"].dtype).reshape(*lead, -1, self.obs_dim)
        last = len(self.layers) - 1
        for i in range(len(self.layers)):
            weight, bias = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            x = x @ weight.mT + bias.unsqueeze(-2)
            if i < last:
                x = self._activation(x)
        return x.reshape(*observations.shape[:-1], x.shape[-1]), lead

    def distribution(
        self, observations: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None
    ) -> Distribution:
        """The action distribution at ``observations``; batch shape ``observations.shape[:-1]``."""
        raise NotImplementedError

    def forward(self, observations: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> Distribution:
        """Same as ``distribution`` (so ``torch.func.functional_call(policy, params, (obs,))`` returns it)."""
        return self.distribution(observations, params)

    def _mode(self, distribution: Distribution) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(
        self, observations: torch.Tensor, actions: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Log-probability of ``actions`` at ``observations``, shaped ``observations.shape[:-1]``."""
        return self.distribution(observations, params).log_prob(actions)

    def entropy(self, observations: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Entropy of the action distribution at ``observations``, shaped ``observations.shape[:-1]``."""
        return self.distribution(observations, params).entropy()

    def kl_divergence(
        self,
        old_distribution: Distribution,
        observations: torch.Tensor,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``KL(old_distribution || policy(observations, params))`` per batch element (see :func:`kl`)."""
        return kl(old_distribution, self.distribution(observations, params))

    def fisher_product(
        self, observations: torch.Tensor, params: Mapping[str, torch.Tensor], weights: torch.Tensor
    ) -> Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """The operator ``v ↦ F v`` of the weighted Fisher matrix at ``params``: ``F = Σ_i w_i J_iᵀ H_i J_i``, with
        ``J_i`` the Jacobian of the distribution's parameters at ``observations[i]`` and ``H_i`` the Hessian of
        ``KL(π_i ‖ ·)`` in them.

        ``F`` is the Hessian of ``Σ_i w_i KL(old_i ‖ new_i)`` at new = old (TRPO's curvature) without the network's
        second derivatives, which the KL's vanishing gradient there multiplies by zero: one tangent forward pass and
        one backward pass through the MLP per product, written out (:mod:`metarl.agents.curvature`), the forward pass
        computed once. ``weights`` has the shape of ``observations`` without the last dim; ``v`` and the result are
        dicts shaped like ``params``.
        """
        forward = self._curvature_pass(observations, params, weights)

        def product(vector: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            tangents = self._layer_params(_task_major_dict(vector, forward.lead))
            output_tangent = forward.mlp.tangent_forward(tangents).output
            cotangent = self._output_fisher(forward.mlp.output, forward.params, output_tangent)
            layer_products = forward.mlp.backward(cotangent * forward.weights.unsqueeze(-1))[0]
            result = self._from_layer_params(layer_products, forward.lead)
            result.update(self._extra_fisher(params, weights, vector))
            return {name: result[name] for name in params}

        return product

    def log_likelihood_derivatives(
        self,
        observations: torch.Tensor,
        actions: torch.Tensor,
        params: Mapping[str, torch.Tensor],
        coefficients: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]]:
        """The gradient at ``params`` of ``L = Σ_i c_i log π(actions_i | observations_i)`` and the operator ``v ↦ H v``
        of its Hessian there.

        A policy-gradient loss is such an ``L`` (``c_i`` the negated, normalised advantages), so these are the
        gradient and Hessian of MAML's inner loss. Pearlmutter's R-operator written out for the MLP
        (:mod:`metarl.agents.curvature`): one forward and one backward pass give the gradient and everything the
        products
        reuse; a product is one tangent forward and one tangent backward pass. ``coefficients`` has the shape of
        ``observations`` without the last dim; the gradient, ``v`` and ``H v`` are dicts shaped like ``params``.
        """
        forward = self._curvature_pass(observations, params, coefficients)
        actions = gather_rows(_flatten_samples(actions, observations, forward.lead), forward.rows)
        output_gradient, other_gradients, output_curvature = self._log_likelihood_terms(
            forward.mlp.output, actions, forward.weights, forward.params
        )
        layer_gradients = forward.mlp.prepare_second_order(output_gradient)
        names = list(forward.params)

        def assemble(layer_results: Sequence[LayerParams], other_results: Mapping[str, torch.Tensor]) -> dict:
            result = self._from_layer_params(layer_results, forward.lead)
            result.update({name: _from_task_major(value, forward.lead) for name, value in other_results.items()})
            return {name: result[name] for name in names}

        def product(vector: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            task_vector = _task_major_dict(vector, forward.lead)
            tangents = self._layer_params(task_vector)
            tangent_pass = forward.mlp.tangent_forward(tangents)
            output_error_tangent, other_products = output_curvature(tangent_pass.output, task_vector)
            layer_products = forward.mlp.second_order_backward(tangents, tangent_pass, output_error_tangent)
            return assemble(layer_products, other_products)

        return assemble(layer_gradients, other_gradients), product

    def _log_likelihood_terms(
        self,
        output: torch.Tensor,
        actions: torch.Tensor,
        coefficients: torch.Tensor,
        params: Mapping[str, torch.Tensor],
    ) -> LogLikelihoodTerms:
        """For ``L = Σ_i c_i log π(actions_i)`` on ``[T, n]`` samples: ``∂L/∂output``, the gradient of the parameters
        outside the MLP, and the function of ``(R{output}, tangents of those parameters)`` giving ``R{∂L/∂output}``
        and their Hessian products."""
        raise NotImplementedError

    def _curvature_pass(
        self, observations: torch.Tensor, params: Mapping[str, torch.Tensor], weights: torch.Tensor
    ) -> _CurvaturePass:
        """The forward pass of a curvature product on every task's samples of nonzero weight."""
        params = {name: value.detach() for name, value in self._resolve(params).items()}
        lead = self._check_shapes(observations, params)
        dtype = params["layers.0.weight"].dtype
        flat_weights = _flatten_samples(weights, observations, lead).to(dtype)
        rows = nonzero_rows(flat_weights)
        flat_observations = _flatten_samples(observations, observations, lead).to(dtype)
        task_params = _task_major_dict(params, lead)
        mlp = MLPPass(gather_rows(flat_observations, rows), self._layer_params(task_params), self.activation)
        return _CurvaturePass(lead, rows, task_params, gather_rows(flat_weights, rows), mlp)

    def _layer_params(self, params: Mapping[str, torch.Tensor]) -> list[LayerParams]:
        """The layers' weights and biases of ``params`` (or of a tangent shaped like them)."""
        return [LayerParams(params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]) for i in range(len(self.layers))]

    def _from_layer_params(self, layers: Sequence[LayerParams], lead: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Layer tensors ``[T, ...]`` as a dict with the params' names and leading shape."""
        result = {}
        for i, layer in enumerate(layers):
            result[f"layers.{i}.weight"] = _from_task_major(layer.weight, lead)
            result[f"layers.{i}.bias"] = _from_task_major(layer.bias, lead)
        return result

    def _output_fisher(
        self, output: torch.Tensor, params: Mapping[str, torch.Tensor], output_tangent: torch.Tensor
    ) -> torch.Tensor:
        """``H_i`` times the MLP output's tangent, per sample."""
        raise NotImplementedError

    def _extra_fisher(
        self, params: Mapping[str, torch.Tensor], weights: torch.Tensor, vector: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The Fisher's blocks of the parameters outside the MLP (none by default)."""
        return {}

    @torch.no_grad()
    def act(
        self,
        observations: torch.Tensor,
        params: Mapping[str, torch.Tensor] | None = None,
        deterministic: bool = False,
        shard: TaskShard | None = None,
    ) -> torch.Tensor:
        """Actions for ``observations``, sampled with torch's global RNG (the mode if ``deterministic``).

        This is a :class:`metarl.rollout.RolloutPolicy`: pass ``policy.act`` to ``collect_episodes`` with the
        per-task params (or ``functools.partial(policy.act, deterministic=True)`` for greedy rollouts). With a
        ``shard``, the observations are that block of a larger meta-batch, and the noise is drawn for the whole
        meta-batch (:func:`metarl.distributed.sample_actions`).

        Returns:
            ``[*observations.shape[:-1], *action_shape]``: float Gaussian actions (not clipped, the envs clip) or
            int64 discrete ones.
        """
        distribution = self.distribution(observations, params)
        return self._mode(distribution) if deterministic else sample_actions(distribution, shard)


class GaussianMLPPolicy(_MLPPolicy):
    """A diagonal Gaussian policy for Box actions: an MLP mean and a learned, state-independent ``log_std``.

    Args:
        obs_dim: size of the (flat) observation.
        action_dim: size of the (flat) action.
        hidden_sizes: widths of the hidden layers (may be empty: a linear policy).
        activation: hidden activation, one of ``ACTIVATIONS``.
        init_log_std: initial value of every entry of ``log_std``.
        min_log_std: the log standard deviation is clamped from below here (``log_std`` below it gets no gradient);
            the default, ``MIN_LOG_STD``, only guards against overflow, as pytorch-maml-rl's.

    References:
        Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        init_log_std: float = 0.0,
        min_log_std: float = MIN_LOG_STD,
    ) -> None:
        action_dim = _check_positive_int("action_dim", action_dim)
        for name, value in (("init_log_std", init_log_std), ("min_log_std", min_log_std)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite real number, got {value!r}")
        if init_log_std < min_log_std:
            raise ValueError(f"init_log_std {init_log_std} is below min_log_std {min_log_std}")
        super().__init__(obs_dim, action_dim, hidden_sizes, activation)
        self.min_log_std = float(min_log_std)
        self.action_dim = action_dim
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def distribution(
        self, observations: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None
    ) -> Distribution:
        """``Independent(Normal(mean, std), 1)`` at ``observations``: ``log_prob`` sums over action dims."""
        params = self._resolve(params)
        mean, _ = self._mlp(observations, params)
        return Independent(Normal(mean, self._std(mean, params), validate_args=False), 1, validate_args=False)

    def _mode(self, distribution: Distribution) -> torch.Tensor:
        return distribution.mean

    def _output_fisher(
        self, output: torch.Tensor, params: Mapping[str, torch.Tensor], output_tangent: torch.Tensor
    ) -> torch.Tensor:
        # KL(N(μ_old, σ) ‖ N(μ, σ)) = |μ - μ_old|² / 2σ² + ...: its Hessian in the mean is 1/σ²
        return output_tangent / self._std(output, params).square()

    def _extra_fisher(
        self, params: Mapping[str, torch.Tensor], weights: torch.Tensor, vector: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        # in log σ the KL's Hessian is 2 per dim (0 where the clamp holds log σ), and it has no mean-log σ cross term
        log_std = params["log_std"]
        lead = log_std.dim() - 1
        total_weight = weights.flatten(lead).sum(-1).unsqueeze(-1) if lead else weights.sum()
        return {"log_std": 2.0 * total_weight * (log_std >= self.min_log_std) * vector["log_std"]}

    def _log_likelihood_terms(
        self,
        output: torch.Tensor,
        actions: torch.Tensor,
        coefficients: torch.Tensor,
        params: Mapping[str, torch.Tensor],
    ) -> LogLikelihoodTerms:
        # log N(a; μ, σ) = -Σ_d (a - μ)_d² / 2σ_d² - log σ_d + const, with log σ = max(log_std, min_log_std):
        # in the mean μ the gradient is c (a - μ) / σ², in log σ it is c ((a - μ)² / σ² - 1); their second
        # derivatives follow, the clamp zeroing everything that goes through a clamped entry
        log_std = params["log_std"]  # [T, D]
        active = (log_std >= self.min_log_std).to(output.dtype)
        precision = torch.exp(-2.0 * torch.clamp(log_std, min=self.min_log_std)).unsqueeze(1)  # 1/σ², [T, 1, D]
        weights = coefficients.unsqueeze(-1)
        residual = actions.to(output.dtype) - output
        output_gradient = weights * residual * precision
        squared_error_sum = (output_gradient * residual).sum(dim=1)  # Σ_i c_i (a - μ)² / σ², [T, D]

        def curvature(
            output_tangent: torch.Tensor, vector: Mapping[str, torch.Tensor]
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            log_std_tangent = vector["log_std"] * active
            output_error_tangent = (
                -weights * precision * output_tangent - 2.0 * output_gradient * log_std_tangent.unsqueeze(1)
            )
            log_std_product = (
                -2.0 * active * ((output_gradient * output_tangent).sum(dim=1) + squared_error_sum * log_std_tangent)
            )
            return output_error_tangent, {"log_std": log_std_product}

        log_std_gradient = active * (squared_error_sum - coefficients.sum(dim=1, keepdim=True))
        return output_gradient, {"log_std": log_std_gradient}, curvature

    def _std(self, mean: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The standard deviation broadcast like ``mean`` (its leading dims are the params' task dims)."""
        lead = params["log_std"].dim() - 1
        middle = mean.dim() - lead - 1
        log_std = params["log_std"].reshape(*params["log_std"].shape[:-1], *([1] * middle), self.action_dim)
        return torch.exp(torch.clamp(log_std, min=self.min_log_std)).expand_as(mean)


class CategoricalMLPPolicy(_MLPPolicy):
    """A categorical policy for Discrete actions ``0 .. num_actions - 1``: an MLP of logits.

    Args:
        obs_dim: size of the (flat) observation.
        num_actions: number of discrete actions.
        hidden_sizes: widths of the hidden layers (may be empty: a linear policy).
        activation: hidden activation, one of ``ACTIVATIONS``.

    References:
        Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    """

    def __init__(
        self, obs_dim: int, num_actions: int, hidden_sizes: Sequence[int] = (64, 64), activation: str = "tanh"
    ) -> None:
        num_actions = _check_positive_int("num_actions", num_actions)
        super().__init__(obs_dim, num_actions, hidden_sizes, activation)
        self.num_actions = num_actions

    def distribution(
        self, observations: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None
    ) -> Distribution:
        """``Categorical(logits=...)`` at ``observations``."""
        logits, _ = self._mlp(observations, self._resolve(params))
        return Categorical(logits=logits, validate_args=False)

    def _mode(self, distribution: Distribution) -> torch.Tensor:
        return distribution.logits.argmax(dim=-1)

    def _output_fisher(
        self, output: torch.Tensor, params: Mapping[str, torch.Tensor], output_tangent: torch.Tensor
    ) -> torch.Tensor:
        # the Hessian of KL(p ‖ softmax(z)) in the logits z at p is diag(p) - p pᵀ
        probs = torch.softmax(output, dim=-1)
        return probs * output_tangent - probs * (probs * output_tangent).sum(dim=-1, keepdim=True)

    def _log_likelihood_terms(
        self,
        output: torch.Tensor,
        actions: torch.Tensor,
        coefficients: torch.Tensor,
        params: Mapping[str, torch.Tensor],
    ) -> LogLikelihoodTerms:
        # log softmax(z)_a = z_a - logsumexp(z): gradient c (onehot(a) - p), Hessian -c (diag(p) - p pᵀ), minus
        # the KL's
        weights = coefficients.unsqueeze(-1)
        onehot = torch.nn.functional.one_hot(actions.long(), self.num_actions).to(output.dtype)
        output_gradient = weights * (onehot - torch.softmax(output, dim=-1))

        def curvature(
            output_tangent: torch.Tensor, vector: Mapping[str, torch.Tensor]
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return -weights * self._output_fisher(output, params, output_tangent), {}

        return output_gradient, {}, curvature


def kl(old: Distribution, new: Distribution) -> torch.Tensor:
    """Analytic ``KL(old || new)`` per batch element, for the distributions these policies return.

    Supports two diagonal Gaussians (``Independent(Normal, k)``, summed over the ``k`` event dims) and two
    ``Categorical``s. Written out rather than through ``torch.distributions.kl_divergence`` so that it has no
    in-place masking and runs under ``vmap``.

    Raises:
        TypeError: any other pair of distributions.
    """
    if isinstance(old, Independent) and isinstance(new, Independent):
        if not (isinstance(old.base_dist, Normal) and isinstance(new.base_dist, Normal)):
            raise TypeError(f"kl supports Independent(Normal) pairs, got {old!r} and {new!r}")
        if old.reinterpreted_batch_ndims != new.reinterpreted_batch_ndims:
            raise TypeError(
                f"kl needs the same event dims, got {old.reinterpreted_batch_ndims} and {new.reinterpreted_batch_ndims}"
            )
        mu_p, std_p = old.base_dist.loc, old.base_dist.scale
        mu_q, std_q = new.base_dist.loc, new.base_dist.scale
        # KL(N(mu_p, s_p) || N(mu_q, s_q)) = log(s_q / s_p) + (s_p^2 + (mu_p - mu_q)^2) / (2 s_q^2) - 1/2
        per_dim = torch.log(std_q / std_p) + (std_p.square() + (mu_p - mu_q).square()) / (2 * std_q.square()) - 0.5
        return per_dim.flatten(start_dim=per_dim.dim() - old.reinterpreted_batch_ndims).sum(dim=-1)
    if isinstance(old, Categorical) and isinstance(new, Categorical):
        # sum_a p(a) (log p(a) - log q(a)), with 0 log 0 = 0; Categorical's logits are normalised log-probs
        p = old.probs
        terms = p * (old.logits - new.logits)
        return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(dim=-1)
    raise TypeError(
        f"kl supports pairs of Independent(Normal) or of Categorical distributions, got "
        f"{type(old).__name__} and {type(new).__name__}"
    )


def make_policy(
    observation_space: gym.Space,
    action_space: gym.Space,
    hidden_sizes: Sequence[int] = (64, 64),
    activation: str = "tanh",
    min_log_std: float = MIN_LOG_STD,
) -> GaussianMLPPolicy | CategoricalMLPPolicy:
    """The MLP policy for a family's spaces: Gaussian for a 1-D Box action space, categorical for a Discrete one.

    Args:
        observation_space: a Box with a 1-D shape.
        action_space: a Box with a 1-D shape, or a Discrete starting at 0.
        hidden_sizes: widths of the hidden layers.
        activation: hidden activation, one of ``ACTIVATIONS``.
        min_log_std: the Gaussian policy's floor on its log standard deviation.

    Raises:
        ValueError: any other space (checked before anything is built), or bad ``hidden_sizes`` / ``activation``.
    """
    if not (isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) == 1):
        raise ValueError(f"make_policy needs a Box observation space of 1-D shape, got {observation_space!r}")
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return GaussianMLPPolicy(
            observation_space.shape[0], action_space.shape[0], hidden_sizes, activation, min_log_std=min_log_std
        )
    if isinstance(action_space, gym.spaces.Discrete) and int(action_space.start) == 0:
        return CategoricalMLPPolicy(observation_space.shape[0], int(action_space.n), hidden_sizes, activation)
    raise ValueError(
        f"make_policy needs a Box action space of 1-D shape or a Discrete action space starting at 0, "
        f"got {action_space!r}"
    )


def batch_params(params: Mapping[str, torch.Tensor], num_tasks: int) -> dict[str, torch.Tensor]:
    """``params`` repeated over a leading task dim of size ``num_tasks``, as views (``expand``).

    Gradients with respect to the result are per task; gradients flowing through it add up in ``params``.
    """
    num_tasks = _check_positive_int("num_tasks", num_tasks)
    return {name: value.unsqueeze(0).expand(num_tasks, *value.shape) for name, value in params.items()}
