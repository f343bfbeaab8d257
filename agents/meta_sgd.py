"""Learned inner step sizes: Meta-SGD's, one per entry of every policy parameter, and MAML++'s LSLR, one per
parameter tensor and inner step; both meta-learned with the policy.

The inner update becomes θ'_t = θ - α ⊙ ∇ L_inner(θ; D_t), α a tensor of the parameters' shapes that starts at the
configured step size everywhere. Since the adapted parameters depend on α, the outer loss's gradient reaches α
through the adaptation, and the outer optimiser updates it beside θ (``maml-ppo meta_sgd=true``:
:class:`metarl.agents.maml_ppo.MAMLPPO`).

LSLR (:class:`PerStepLayerStepSizes`, ``maml-plus-plus``: :mod:`metarl.agents.maml_plus_plus`) learns one scalar
per parameter tensor (a layer's weight or bias, the log std) and per inner step instead.

References:
    Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", arXiv:1707.09835, 2017.
    Antoniou, Edwards, Storkey. "How to train your MAML", ICLR 2019.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LearnedStepSizes(torch.nn.ParameterDict):
    """α: a parameter of each policy parameter's shape, keyed by the parameter's name (dots as ``__``).

    Args:
        policy: the policy whose parameters adapt.
        initial_step_size: every entry's starting value.
    """

    def __init__(self, policy: torch.nn.Module, initial_step_size: float) -> None:
        super().__init__(
            {
                step_size_key(name): torch.nn.Parameter(torch.full_like(value, initial_step_size))
                for name, value in policy.named_parameters()
            }
        )

    def step(self, params: dict[str, torch.Tensor], grads: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """θ - α ⊙ g for every parameter (a leading task dim in ``params`` and ``grads`` broadcasts over α)."""
        return {
            name: value - self[step_size_key(name)] * g for (name, value), g in zip(params.items(), grads, strict=True)
        }


def step_size_key(parameter_name: str) -> str:
    """The key of a policy parameter's learned step sizes (a ParameterDict key may not contain dots)."""
    return parameter_name.replace(".", "__")


class PerStepLayerStepSizes(torch.nn.ParameterDict):
    """LSLR's rates: for each policy parameter (keyed by its name, dots as ``__``) a vector of one step size per
    inner step.

    Args:
        policy: the policy whose parameters adapt.
        initial_step_sizes: each step's starting value (the same for every parameter tensor).
    """

    def __init__(self, policy: torch.nn.Module, initial_step_sizes: Sequence[float]) -> None:
        super().__init__(
            {
                step_size_key(name): torch.nn.Parameter(torch.tensor(list(initial_step_sizes), dtype=value.dtype))
                for name, value in policy.named_parameters()
            }
        )
        self.num_steps = len(initial_step_sizes)

    def step(
        self, params: dict[str, torch.Tensor], grads: Sequence[torch.Tensor], step: int
    ) -> dict[str, torch.Tensor]:
        """θ_l - α_{k,l} g_l for every parameter tensor l; a step k past the trained ones uses the last one's rates."""
        k = min(step, self.num_steps - 1)
        return {
            name: value - self[step_size_key(name)][k] * g
            for (name, value), g in zip(params.items(), grads, strict=True)
        }
