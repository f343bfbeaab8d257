"""Curvature products of MLP policies written out by hand, for MAML-TRPO's conjugate gradient.

MAML-TRPO's Hessian-vector product (see :mod:`metarl.agents.maml_trpo`) needs two kinds of product per task, about 22
times per meta-iteration on tens of thousands of samples:

- the Hessian of a weighted log-likelihood ``L(θ) = Σ_i c_i log π(a_i | s_i; θ)`` times a vector (the inner loss's
  Hessian: the Jacobian of an adaptation step is ``I - α H``);
- the Fisher matrix of the policy times a vector (the KL's Hessian at the adapted parameters).

Autograd's double backward computes the first by differentiating the whole backward graph again: every op of the
backward pass, with its generic formula, on freshly allocated full-batch tensors. Here both products are
Pearlmutter's R-operator written out for the MLP: one forward pass and one first-order backward pass are computed
once and kept (each layer's input, the activation's derivative, the backpropagated errors), and a product is one
tangent forward pass and one tangent backward pass, a few batched matrix products per layer, for every task at
once. The samples whose weight is zero (padded steps of terminated episodes) are left out.

For a layer ``z = h Wᵀ + b`` followed by ``h' = φ(z)``, with backpropagated error ``δ = ∂L/∂z`` and a tangent
``(V, u)`` of ``(W, b)``, the R-operator (the directional derivative ``R{x} = d/dε x(θ + ε v)``) gives::

    forward:   R{z} = R{h} Wᵀ + h Vᵀ + u             R{h'} = φ'(z) ⊙ R{z}
    backward:  R{∂L/∂W} = R{δ}ᵀ h + δᵀ R{h}          R{∂L/∂b} = Σ_i R{δ_i}
               R{∂L/∂h} = R{δ} W + δ V
               R{δ_prev} = R{∂L/∂h} ⊙ φ'(z_prev) + ∂L/∂h ⊙ φ''(z_prev) ⊙ R{z_prev}

The Fisher is the Gauss-Newton part only (the KL's gradient vanishes where it is taken), so its backward pass is a
plain backward of ``R{output}`` scaled by the distribution's curvature.

References:
    Pearlmutter. "Fast Exact Multiplication by the Hessian", Neural Computation 6(1), 1994.
    Schraudolph. "Fast Curvature Matrix-Vector Products for Second-Order Gradient Descent", Neural Computation 2002.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)`` computed as ``2 σ(2x) - 1`` (within 2e-7 of torch's ``tanh``).

    torch's CPU tanh is not vectorised as well as its sigmoid: on the hidden layers of MAML's policies (25,600 to
    2.6M elements, one thread) this form measured 20-45 % faster, and tanh is a fifth of a rollout step's time.
    """
    return torch.sigmoid(2.0 * x) * 2.0 - 1.0


class LayerParams(NamedTuple):
    """One linear layer of a batch of tasks: ``weight`` ``[T, out, in]``, ``bias`` ``[T, out]``."""

    weight: torch.Tensor
    bias: torch.Tensor


class MLPPass:
    """A batch of tasks' forward pass through an MLP, kept for tangent passes.

    Args:
        inputs: ``[T, N, in]`` samples of T tasks.
        layers: the T tasks' layers, input to output.
        activation: ``"tanh"`` or ``"relu"`` (hidden layers; the output layer is linear).
    """

    def __init__(self, inputs: torch.Tensor, layers: Sequence[LayerParams], activation: str) -> None:
        if activation not in ("tanh", "relu"):
            raise ValueError(f"MLPPass supports the activations 'tanh' and 'relu', got {activation!r}")
        self.layers = list(layers)
        self.activation = activation
        self.layer_inputs = [inputs]
        """Each layer's input: the samples, then each hidden layer's output ``h``."""
        self.derivatives: list[torch.Tensor] = []
        """``φ'(z)`` of each hidden layer, from its output: ``1 - h²`` (tanh) or ``h > 0`` (relu)."""
        x = inputs
        for i, layer in enumerate(self.layers):
            x = torch.baddbmm(layer.bias.unsqueeze(1), x, layer.weight.mT)
            if i < len(self.layers) - 1:
                if activation == "tanh":
                    x = tanh(x)
                    self.derivatives.append(1.0 - x.square())
                else:
                    x = torch.relu(x)
                    self.derivatives.append((x > 0).to(x.dtype))
                self.layer_inputs.append(x)
        self.output = x
        """``[T, N, out]``: the MLP's output."""
        self.errors: list[torch.Tensor] = []
        self.activation_curvatures: list[torch.Tensor | None] = []

    def tangent_forward(self, tangents: Sequence[LayerParams]) -> TangentPass:
        """``R{z}`` and ``R{h}`` of every hidden layer and ``R{output}`` along the layers' ``tangents``."""
        hidden: list[torch.Tensor] = []
        hidden_outputs: list[torch.Tensor] = []
        for i, (layer, tangent) in enumerate(zip(self.layers, tangents, strict=True)):
            z_tangent = torch.baddbmm(tangent.bias.unsqueeze(1), self.layer_inputs[i], tangent.weight.mT)
            if i > 0:  # the samples have no tangent
                z_tangent = z_tangent.baddbmm_(hidden_outputs[-1], layer.weight.mT)
            if i == len(self.layers) - 1:
                return TangentPass(hidden, hidden_outputs, z_tangent)
            hidden.append(z_tangent)
            hidden_outputs.append(self.derivatives[i] * z_tangent)
        raise AssertionError("unreachable: an MLP has an output layer")

    def backward(self, output_cotangent: torch.Tensor) -> tuple[list[LayerParams], list[torch.Tensor]]:
        """The layers' gradients for ``output_cotangent`` (``[T, N, out]``) and each layer's error ``∂/∂z``."""
        gradients: list[LayerParams] = []
        errors = [output_cotangent]
        error = output_cotangent
        for i in reversed(range(len(self.layers))):
            gradients.append(LayerParams(error.mT @ self.layer_inputs[i], error.sum(dim=1)))
            if i > 0:
                error = (error @ self.layers[i].weight) * self.derivatives[i - 1]
                errors.append(error)
        return gradients[::-1], errors[::-1]

    def prepare_second_order(self, output_gradient: torch.Tensor) -> list[LayerParams]:
        """Backpropagate ``∂L/∂output`` once and keep each layer's error ``δ = ∂L/∂z`` for
        :meth:`second_order_backward`.

        Returns:
            The layers' gradients ``∂L/∂(W, b)``, which the same pass gives.
        """
        gradients, self.errors = self.backward(output_gradient)
        self.activation_curvatures = []
        return gradients

    def _activation_curvatures(self) -> list[torch.Tensor | None]:
        """``∂L/∂h ⊙ φ''(z)`` of each hidden layer (``-2 h ⊙ δ`` for tanh, zero for relu), computed at the first
        product: a caller that only wanted the gradient never pays for it."""
        if not self.activation_curvatures:
            self.activation_curvatures = [
                -2.0 * self.layer_inputs[i + 1] * self.errors[i] if self.activation == "tanh" else None
                for i in range(len(self.layers) - 1)
            ]
        return self.activation_curvatures

    def second_order_backward(
        self, tangents: Sequence[LayerParams], tangent_pass: TangentPass, output_error_tangent: torch.Tensor
    ) -> list[LayerParams]:
        """``R{∂L/∂(W, b)}`` of every layer, the Hessian of ``L`` times the tangents, after
        :meth:`prepare_second_order`.

        Args:
            tangents: the layers' tangents, as given to :meth:`tangent_forward`.
            tangent_pass: :meth:`tangent_forward`'s result for them.
            output_error_tangent: ``R{∂L/∂output}``: the loss's second derivatives in the output (and in any other
                parameter it has) applied to the tangents.
        """
        products: list[LayerParams] = []
        error_tangent = output_error_tangent
        for i in reversed(range(len(self.layers))):
            weight_product = error_tangent.mT @ self.layer_inputs[i]
            if i > 0:
                weight_product = weight_product.baddbmm_(self.errors[i].mT, tangent_pass.hidden_outputs[i - 1])
            products.append(LayerParams(weight_product, error_tangent.sum(dim=1)))
            if i == 0:
                break
            # R{∂L/∂h} = R{δ} W + δ V, then through the activation, whose second derivative meets R{z}
            input_error_tangent = torch.baddbmm(
                self.errors[i] @ tangents[i].weight, error_tangent, self.layers[i].weight
            )
            error_tangent = input_error_tangent.mul_(self.derivatives[i - 1])
            activation_curvature = self._activation_curvatures()[i - 1]
            if activation_curvature is not None:
                error_tangent = error_tangent.addcmul_(activation_curvature, tangent_pass.hidden[i - 1])
        return products[::-1]


class TangentPass(NamedTuple):
    """:meth:`MLPPass.tangent_forward`'s result: ``R{z}`` and ``R{h}`` of each hidden layer, ``R{output}``."""

    hidden: list[torch.Tensor]
    hidden_outputs: list[torch.Tensor]
    output: torch.Tensor


def nonzero_rows(weights: torch.Tensor) -> torch.Tensor:
    """Each task's samples of nonzero weight, ``weights`` ``[T, N]``: ``[T, n]`` indices, n the largest count, each
    task's weighted samples first (in order), then zero-weight ones as padding. Products on the rows skip the padded
    steps of terminated episodes, which contribute nothing."""
    nonzero = weights != 0
    # stable: each task's weighted samples keep their order, ahead of its zero-weight ones
    order = torch.argsort((~nonzero).to(torch.uint8), dim=1, stable=True)
    return order[:, : max(1, int(nonzero.sum(dim=1).max()))]


def gather_rows(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``values`` ``[T, N, ...]`` at ``rows`` ``[T, n]`` of each task: ``[T, n, ...]``."""
    index = rows.reshape(*rows.shape, *[1] * (values.dim() - 2)).expand(*rows.shape, *values.shape[2:])
    return torch.gather(values, 1, index)
