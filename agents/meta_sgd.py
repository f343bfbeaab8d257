"""Meta-SGD's learned inner step sizes: one per entry of every policy parameter, meta-learned with the policy.

The inner update becomes θ'_t = θ - α ⊙ ∇ L_inner(θ; D_t), α a tensor of the parameters' shapes that starts at the
configured step size everywhere. Since the adapted parameters depend on α, the outer loss's gradient reaches α
through the adaptation, and the outer optimiser updates it beside θ (``maml-ppo meta_sgd=true``:
:class:`metarl.agents.maml_ppo.MAMLPPO`).

References:
    Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", arXiv:1707.09835, 2017.
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
                _key(name): torch.nn.Parameter(torch.full_like(value, initial_step_size))
                for name, value in policy.named_parameters()
            }
        )

    def step(self, params: dict[str, torch.Tensor], grads: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """θ - α ⊙ g for every parameter (a leading task dim in ``params`` and ``grads`` broadcasts over α)."""
        return {name: value - self[_key(name)] * g for (name, value), g in zip(params.items(), grads, strict=True)}


def _key(parameter_name: str) -> str:
    # a ParameterDict key may not contain dots
    return parameter_name.replace(".", "__")
