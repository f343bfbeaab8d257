"""A learned inner-loop optimiser: MAML-PPO whose inner step is a coordinate-wise LSTM (Andrychowicz et al., 2016).

One meta-iteration is MAML-PPO's (:class:`metarl.agents.maml_ppo.MAMLPPO`): sample every task of the meta-batch and
adapt it with K inner steps, collecting episodes after each step, then ``ppo_epochs`` Adam steps on PPO's clipped
post-adaptation surrogate through the adaptation. The inner step is no longer θ - α ∇ but the paper's learned update

    θ_{k+1} = θ_k + s · W h_{k+1},    (h_{k+1}, c_{k+1}) = LSTM(ρ(∇_k), (h_k, c_k)),

applied to every coordinate (every entry of every policy parameter tensor, the log std included) on its own: one
small LSTM (``lstm_layers`` stacked cells of ``lstm_hidden_size`` units, the paper's 2 and 20) with a linear read-out
W, shared by all coordinates, each coordinate with its own hidden and cell state. ∇_k is the coordinate's inner
policy gradient (the REINFORCE loss of :meth:`metarl.agents.inner_loop.InnerLoopAgent.inner_losses`), ρ the
paper's preprocessing (its appendix A, :func:`preprocess_gradients`): (log|g| / p, sign g) for |g| ≥ e^{-p}, else
(-1, e^p g), p = ``gradient_preprocessing_p`` = 10; s = ``lstm_output_scale`` = 0.1 (the paper's output scaling).
The state starts at zero at the beginning of every adaptation (:meth:`LearnedOptimizerMAML.begin_adaptation`, the
inner loop's hook) and is carried across the inner steps, so an evaluation with more steps than were trained
(``eval_steps`` > ``num_inner_steps``) simply keeps stepping the LSTM. The configured step sizes
(``inner_step_sizes``, ``eval_step_sizes``) are unused: the LSTM is the step.

Batched as the rest of the inner loop: every task's gradient is flattened task-major into one ``[T · C, 2]`` input
(C coordinates per task), the LSTM cells run once per inner step over all of it, and the updates are reshaped back
to the parameters' shapes; :meth:`~metarl.agents.inner_loop.InnerLoopAgent.adapt_per_task` (one task at a time, a
``[C, 2]`` input) is the reference it equals.

Meta-training: the initialisation θ₀ (the policy) and the LSTM's weights are trained together by MAML-PPO's Adam
steps through the K inner steps (the LSTM's state is back-propagated through, as in the paper). By default to second
order: the inner gradients keep their graph, so the outer gradient also flows through the LSTM's inputs
(∂∇_k/∂θ₀, ∂∇_k/∂φ). The paper drops those terms (its "∂∇_t/∂φ = 0", which avoids second derivatives of the
optimisee); ``first_order=true`` is exactly that choice here: the inner gradients are constants, and the outer
gradient still reaches the LSTM through its outputs and its state, and θ₀ through the identity path.

Not carried over: the paper's global averaging cells and its LSTM on non-coordinate-wise inputs; its truncated BPTT
over long unrolls (the suite's K is a few steps, the whole unroll is differentiated). Only the PPO outer loop is
implemented; ProMP's penalty (``ppo_kl_coeff``) still applies; Meta-SGD's step sizes (``meta_sgd``) are refused.

References:
    Andrychowicz, Denil, Gómez, Hoffman, Pfau, Schaul, Shillingford, de Freitas. "Learning to learn by gradient
    descent by gradient descent", NeurIPS 2016.
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Schulman et al. "Proximal Policy Optimization Algorithms", arXiv:1707.06347, 2017.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from metarl.agents.inner_loop import Params
from metarl.agents.maml_ppo import MAMLPPO, MAMLPPOConfig
from metarl.agents.policies import make_policy

from metarl.budget import FLOAT_BYTES, MemoryEstimate, format_bytes
from metarl.config import check_at_least, check_positive_numbers
from metarl.distributed import Workers
from metarl.registry import register_agent
from metarl.tasks import TaskFamily

LSTM_FLOATS_PER_UNIT = 10
"""Memory estimate: floats an LSTM unit holds per coordinate and inner step in a training epoch's graph (gates,
states and their second-order buffers; 10 measured on the Navigation2D preset: 280 MiB more than MAML-PPO's peak)."""

LSTMState = tuple[tuple[torch.Tensor, torch.Tensor], ...]
"""Each layer's (hidden, cell) state, ``[N, hidden_size]`` each: one row per coordinate (of every task)."""


@dataclasses.dataclass
class LearnedOptimizerConfig(MAMLPPOConfig):
    """The learned optimiser's fields: MAML-PPO's and the coordinate-wise LSTM's sizes and scalings."""

    algo: str = "maml-lstm-optimizer"
    num_inner_steps: int = 2
    """Inner steps (of the LSTM) during meta-training (2 by default: with one step the LSTM's state carries
    nothing)."""
    lstm_hidden_size: int = 20
    """Units of each LSTM cell (the paper: 20)."""
    lstm_layers: int = 2
    """Stacked LSTM cells (the paper: 2)."""
    lstm_output_scale: float = 0.1
    """s: the LSTM's read-out is multiplied by it to give a coordinate's update (the paper: 0.1)."""
    gradient_preprocessing_p: float = 10.0
    """p of the gradient preprocessing: (log|g| / p, sign g) for |g| >= e^-p, else (-1, e^p g) (the paper: 10)."""

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "lstm_hidden_size lstm_layers")
        check_positive_numbers(self, "lstm_output_scale gradient_preprocessing_p")
        if self.meta_sgd:
            raise ValueError("meta_sgd learns step sizes, but the learned optimiser has none: set meta_sgd=false")


def preprocess_gradients(gradients: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """The paper's preprocessing of each gradient coordinate (appendix A): ``[N] -> [N, 2]``.

    (log|g| / p, sign g) where |g| >= e^{-p}, else (-1, e^p g): the magnitude's log and its sign for the gradients that
    are not tiny, a linear map of the tiny ones, so that inputs of very different scales reach the LSTM in a similar
    range. Differentiable (the log's input is clamped at e^{-p}, so the branch not taken has a finite gradient).
    """
    threshold = math.exp(-p)
    magnitude = gradients.abs()
    large = magnitude >= threshold
    log_magnitude = torch.where(large, torch.log(magnitude.clamp_min(threshold)) / p, -1.0)
    direction = torch.where(large, torch.sign(gradients), math.exp(p) * gradients)
    return torch.stack([log_magnitude, direction], dim=-1)


class CoordinatewiseLSTM(torch.nn.Module):
    """The paper's optimiser m: stacked LSTM cells and a linear read-out, applied to every coordinate on its own
    (coordinates are rows of one batch).

    Args:
        hidden_size: units of each cell.
        num_layers: stacked cells.
        output_scale: s, the read-out's scale.
        preprocessing_p: p of :func:`preprocess_gradients`.

    References:
        Andrychowicz et al. "Learning to learn by gradient descent by gradient descent", NeurIPS 2016.
    """

    def __init__(self, hidden_size: int, num_layers: int, output_scale: float, preprocessing_p: float) -> None:
        super().__init__()
        self.cells = torch.nn.ModuleList(
            torch.nn.LSTMCell(2 if layer == 0 else hidden_size, hidden_size) for layer in range(num_layers)
        )
        self.readout = torch.nn.Linear(hidden_size, 1)
        self.hidden_size = hidden_size
        self.output_scale = output_scale
        self.preprocessing_p = preprocessing_p

    def initial_state(self, num_coordinates: int, like: torch.Tensor) -> LSTMState:
        """Zero hidden and cell states of ``num_coordinates`` rows (``like``'s dtype and device)."""
        zeros = like.new_zeros(num_coordinates, self.hidden_size)
        return tuple((zeros, zeros) for _ in self.cells)

    def forward(self, gradients: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        """Every coordinate's update ``[N]`` from its gradient ``[N]`` and its state; and the new state."""
        x = preprocess_gradients(gradients, self.preprocessing_p)
        new_state = []
        for cell, (hidden, memory) in zip(self.cells, state, strict=True):
            hidden, memory = cell(x, (hidden, memory))
            new_state.append((hidden, memory))
            x = hidden
        return self.output_scale * self.readout(x).squeeze(-1), tuple(new_state)


class LearnedOptimizerMAML(MAMLPPO):
    """MAML-PPO with the coordinate-wise LSTM optimiser of Andrychowicz et al. as the inner step, meta-learned with
    the initialisation.

    ``algo=maml-lstm-optimizer``.

    References:
        Andrychowicz et al. "Learning to learn by gradient descent by gradient descent", NeurIPS 2016.
    """

    def __init__(
        self, family: TaskFamily, config: LearnedOptimizerConfig, device: torch.device, workers: Workers | None = None
    ) -> None:
        super().__init__(family, config, device, workers)  # the policy is drawn first, as MAML-PPO's
        self.lstm = CoordinatewiseLSTM(
            config.lstm_hidden_size, config.lstm_layers, config.lstm_output_scale, config.gradient_preprocessing_p
        ).to(device)
        # MAMLPPO's optimiser was made before the LSTM existed
        self.optimizer = torch.optim.Adam(self.optimizer_parameters(), lr=config.ppo_learning_rate)
        # the current adaptation's LSTM state (begin_adaptation resets it; each inner_update advances it)
        self._num_tasks: int | None = None
        self._lstm_state: LSTMState | None = None
        self._steps_taken = 0

    def optimizer_parameters(self) -> list[torch.nn.Parameter]:
        """The policy's parameters (θ₀) and the LSTM's."""
        parameters = super().optimizer_parameters()
        if getattr(self, "lstm", None) is not None:
            parameters += list(self.lstm.parameters())
        return parameters

    @classmethod
    def memory_estimate(cls, config: LearnedOptimizerConfig, family: TaskFamily) -> MemoryEstimate:
        """MAML-PPO's estimate plus the LSTM's graph through a training epoch's inner steps: a state of every unit
        for every coordinate of every task at every step (:data:`LSTM_FLOATS_PER_UNIT`), added to the largest phase
        whichever it is (an overestimate when an evaluation is the largest)."""
        estimate = super().memory_estimate(config, family)
        policy = make_policy(
            family.observation_space, family.action_space, config.hidden_sizes, config.activation, config.min_log_std
        )
        coordinates = sum(value.numel() for value in policy.parameters())
        units = config.meta_batch_size * coordinates * config.num_inner_steps * config.lstm_layers
        lstm_bytes = units * config.lstm_hidden_size * LSTM_FLOATS_PER_UNIT * FLOAT_BYTES
        fields = dict.fromkeys((*estimate.fields, "lstm_hidden_size", "lstm_layers"))
        return dataclasses.replace(
            estimate,
            bytes=estimate.bytes + lstm_bytes,
            fields=tuple(fields),
            description=f"{estimate.description}; and the LSTM optimiser's graph over meta_batch_size "
            f"{config.meta_batch_size} × {coordinates:,} coordinates × num_inner_steps {config.num_inner_steps} × "
            f"lstm_layers {config.lstm_layers} × lstm_hidden_size {config.lstm_hidden_size} units "
            f"({format_bytes(LSTM_FLOATS_PER_UNIT * FLOAT_BYTES)} each)",
        )

    # -- the inner loop --------------------------------------------------------------------------------------------
    def begin_adaptation(self, num_tasks: int) -> None:
        """A new adaptation of ``num_tasks`` tasks: every coordinate's LSTM state starts at zero."""
        self._num_tasks = num_tasks
        self._lstm_state = None
        self._steps_taken = 0

    def inner_update(self, params: Params, grads: Sequence[torch.Tensor], step_size: float, step: int = 0) -> Params:
        """θ + s · m(ρ(g), state) for every coordinate of every task, advancing its LSTM state (``step_size``
        unused). ``params`` and ``grads`` have the leading task dim of :meth:`begin_adaptation`'s ``num_tasks``, or
        none for one task (:meth:`adapt_per_task`)."""
        if self._num_tasks is None or step != self._steps_taken:
            raise RuntimeError(
                f"inner step {step}, but the LSTM optimiser has taken {self._steps_taken} steps since "
                "begin_adaptation (call begin_adaptation(num_tasks) before an adaptation's first inner_update)"
            )
        num_tasks = self._num_tasks
        # every task's coordinates in a row, task-major: [T, C] -> [T * C]
        flat = torch.cat([g.reshape(num_tasks, -1) for g in grads], dim=1).reshape(-1)
        state = self._lstm_state
        if state is None:
            state = self.lstm.initial_state(flat.shape[0], flat)
        elif state[0][0].shape[0] != flat.shape[0]:
            raise RuntimeError(f"the LSTM state has {state[0][0].shape[0]} rows, the gradients {flat.shape[0]}")
        updates, self._lstm_state = self.lstm(flat, state)
        self._steps_taken += 1
        pieces = updates.reshape(num_tasks, -1).split([g.numel() // num_tasks for g in grads], dim=1)
        return {
            name: value + update.reshape(value.shape)
            for (name, value), update in zip(params.items(), pieces, strict=True)
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lstm": self.lstm.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lstm.load_state_dict(state["lstm"])
        super().load_state_dict(state)


register_agent("maml-lstm-optimizer", LearnedOptimizerMAML, LearnedOptimizerConfig)
