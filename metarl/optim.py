"""The maths of a TRPO update as small pure functions over flat parameter vectors.

A TRPO step for a surrogate *loss* ``L`` (to minimise) under a mean-KL trust region of radius ``max_kl`` reads::

    g = flatten_tensors(torch.autograd.grad(L, params))             # gradient of the surrogate loss
    hvp = make_hvp(lambda: mean_kl(params), params, damping=0.1)    # v -> (Fisher + damping) v, via the KL's Hessian
    s = conjugate_gradient(hvp, g, iterations=10)                   # s ~= H^-1 g, without ever forming H
    full_step = -trpo_step_size(s, hvp(s), max_kl) * s              # descent direction scaled to the KL boundary
    result = line_search(loss_and_kl, flatten_tensors(params), full_step, old_loss=float(L), max_kl=max_kl)
    new_params = unflatten_like(result.params, named_params)        # old parameters when result.accepted is False

Everything here takes and returns *flat* 1-D tensors; ``flatten_tensors`` and ``unflatten_like`` move between those
and a dict of named parameter tensors (the form ``torch.func.functional_call`` takes).

References:
    Schulman, Levine, Moritz, Jordan, Abbeel. "Trust Region Policy Optimization", ICML 2015, Appendix C
    (conjugate gradient on Fisher-vector products, the step scaled to the KL constraint, backtracking line search).
    Nocedal and Wright. "Numerical Optimization", 2nd ed., Algorithm 5.2 (conjugate gradient).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "LineSearchResult",
    "conjugate_gradient",
    "flatten_tensors",
    "hessian_vector_product",
    "line_search",
    "make_hvp",
    "trpo_step_size",
    "unflatten_like",
]


# ---------------------------------------------------------------------------------------------------------------------
# flat vectors <-> named tensors
# ---------------------------------------------------------------------------------------------------------------------


def flatten_tensors(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate tensors into one flat 1-D vector, in iteration order.

    The result is differentiable with respect to the inputs (it is a ``torch.cat`` of reshapes), so it can flatten a
    gradient computed with ``create_graph=True`` without cutting the graph.

    Args:
        tensors: the tensors to flatten, e.g. ``params.values()`` or the output of ``torch.autograd.grad``. They
            must share dtype and device.

    Returns:
        A 1-D tensor of ``sum(t.numel() for t in tensors)`` elements.

    Raises:
        ValueError: if ``tensors`` is empty (the dtype and device of the result would be unknown).
    """
    pieces = [tensor.reshape(-1) for tensor in tensors]
    if not pieces:
        raise ValueError("flatten_tensors needs at least one tensor, got none")
    return torch.cat(pieces)


def unflatten_like(flat: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Split a flat vector into named tensors shaped like ``like`` (the inverse of ``flatten_tensors``).

    The pieces are views of ``flat`` (no copy), so gradients flow back to it.

    Args:
        flat: a 1-D tensor with as many elements as all of ``like`` together.
        like: named tensors giving the keys (in their order) and the shapes; their values are not read.

    Returns:
        A dict with the keys of ``like``, in the same order, each a view of ``flat`` with the shape of ``like[key]``.

    Raises:
        ValueError: if ``flat`` is not 1-D or its size differs from the total size of ``like``.
    """
    if flat.dim() != 1:
        raise ValueError(f"flat must be a 1-D tensor, got shape {tuple(flat.shape)}")
    expected = sum(tensor.numel() for tensor in like.values())
    if flat.numel() != expected:
        shapes = {name: tuple(tensor.shape) for name, tensor in like.items()}
        raise ValueError(f"flat has {flat.numel()} elements but the tensors {shapes} hold {expected} in all")
    out: dict[str, Tensor] = {}
    offset = 0
    for name, tensor in like.items():
        numel = tensor.numel()
        out[name] = flat[offset : offset + numel].view(tensor.shape)
        offset += numel
    return out


# ---------------------------------------------------------------------------------------------------------------------
# conjugate gradient
# ---------------------------------------------------------------------------------------------------------------------


def conjugate_gradient(
    matrix_vector_product: Callable[[Tensor], Tensor],
    b: Tensor,
    iterations: int = 10,
    residual_tol: float = 1e-10,
    *,
    return_product: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Approximately solve ``A x = b`` for a symmetric positive-definite ``A`` known only through ``v -> A v``.

    TRPO uses this to get ``H^-1 g`` for the Fisher matrix ``H`` of a network with thousands of parameters: a few
    Hessian-vector products are cheap, while forming or inverting ``H`` is not (Schulman et al. 2015, Appendix C).
    In exact arithmetic CG finds the solution in at most ``n`` iterations; 10 is the usual budget for TRPO.

    Args:
        matrix_vector_product: the linear operator ``v -> A v``, for 1-D ``v`` shaped like ``b``.
        b: the right-hand side, a 1-D tensor; it is not modified.
        iterations: the maximum number of CG iterations (one ``matrix_vector_product`` call each), at least 1.
        residual_tol: stop as soon as the squared residual norm ``||b - A x||^2`` falls below this.
        return_product: also return ``A x``, as ``b - r`` from CG's residual ``r`` instead of one more product.
            Equal in exact arithmetic; TRPO's step size needs ``xᵀ A x``, and on MAML-TRPO's curvature (float32)
            this agreed with a separate product to 1e-7 relative.

    Returns:
        The approximate solution ``x``, a new 1-D tensor shaped like ``b``, starting from ``x = 0``; with
        ``return_product``, the pair ``(x, A x)``.

    Raises:
        ValueError: if ``iterations < 1``, ``residual_tol < 0``, ``b`` is not 1-D, or ``A`` is found not to be
            positive definite (``p^T A p <= 0`` or non-finite for a search direction ``p``).

    References:
        Nocedal and Wright, "Numerical Optimization", Algorithm 5.2; Schulman et al. 2015, Appendix C.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    if not residual_tol >= 0:
        raise ValueError(f"residual_tol must be >= 0, got {residual_tol!r}")
    if b.dim() != 1:
        raise ValueError(f"b must be a 1-D tensor, got shape {tuple(b.shape)}")

    # every update below is out of place, and the operator only ever sees a copy, so b (often a gradient the caller
    # still needs) is never touched
    x = torch.zeros_like(b, requires_grad=False)
    residual = b.detach().clone()  # r = b - A x with x = 0
    direction = residual  # first search direction: the steepest-descent one
    residual_sq = torch.dot(residual, residual)
    for _ in range(iterations):
        # an exact zero residual must stop too, or the next step divides 0 by 0 (matters when residual_tol is 0)
        squared_norm = residual_sq.item()
        if squared_norm < residual_tol or squared_norm == 0.0:
            break
        a_direction = matrix_vector_product(direction)
        curvature = torch.dot(direction, a_direction)
        curvature_value = curvature.item()
        if not math.isfinite(curvature_value) or curvature_value <= 0:
            raise ValueError(
                f"conjugate_gradient needs a positive-definite matrix, but p^T A p = {curvature_value!r} for a search "
                "direction p (add damping to the operator)"
            )
        alpha = residual_sq / curvature  # exact minimiser of the quadratic along the direction
        x = x + alpha * direction
        residual = residual - alpha * a_direction
        new_residual_sq = torch.dot(residual, residual)
        # Fletcher-Reeves beta keeps the directions A-conjugate for a symmetric A
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return (x, b.detach() - residual) if return_product else x


# ---------------------------------------------------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------------------------------------------------


def hessian_vector_product(
    gradient: Tensor,
    params: Sequence[Tensor],
    vector: Tensor,
    damping: float = 0.0,
    retain_graph: bool = True,
) -> Tensor:
    """Compute ``(H + damping I) v`` for the Hessian ``H`` of ``f`` at ``params``, with one extra backward pass.

    Uses ``H v = d(grad f . v) / d params`` (Pearlmutter's trick), with ``v`` held constant, so ``H`` is never
    formed. For TRPO, ``f`` is the mean KL between the old and the current policy, whose Hessian at the old
    parameters is the Fisher matrix; ``damping`` keeps the operator well conditioned for conjugate gradient.

    Args:
        gradient: the flat gradient ``grad f(params)``, computed with ``create_graph=True`` so that it can be
            differentiated again (e.g. ``flatten_tensors(torch.autograd.grad(f, params, create_graph=True))``).
        params: the parameter tensors the gradient was taken with respect to, in the order they were flattened.
        vector: the 1-D vector ``v``, shaped like ``gradient``; it is treated as a constant.
        damping: the coefficient of the ``damping * v`` term, at least 0.
        retain_graph: keep the graph of ``gradient`` so that the product can be taken again (conjugate gradient
            calls this once per iteration); pass False on the last call to free it.

    Returns:
        The flat product ``H v + damping * v``, detached from any graph.

    Raises:
        ValueError: if ``gradient`` carries no graph (it was computed without ``create_graph=True``, or ``f`` is
            linear in ``params``), the shapes of ``gradient`` and ``vector`` differ, or ``damping < 0``.
    """
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping!r}")
    if gradient.dim() != 1 or vector.shape != gradient.shape:
        raise ValueError(
            f"gradient and vector must be 1-D of the same shape, got {tuple(gradient.shape)} and {tuple(vector.shape)}"
        )
    if not gradient.requires_grad:
        raise ValueError(
            "gradient does not require grad: compute it with torch.autograd.grad(..., create_graph=True) so that it "
            "can be differentiated a second time"
        )
    params = list(params)
    vector = vector.detach()
    gradient_dot_vector = torch.dot(gradient, vector)
    # allow_unused: a parameter f is linear in has no path from the gradient to it; its block of H is zero
    grads = torch.autograd.grad(gradient_dot_vector, params, retain_graph=retain_graph, allow_unused=True)
    hvp = flatten_tensors(
        torch.zeros_like(param) if grad is None else grad for grad, param in zip(grads, params, strict=True)
    )
    return hvp.detach() + damping * vector


def make_hvp(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    damping: float = 0.0,
) -> Callable[[Tensor], Tensor]:
    """Build the operator ``v -> (H + damping I) v`` for the Hessian ``H`` of ``loss_fn()`` at ``params``.

    The gradient is computed once, here, with ``create_graph=True``; each call of the returned closure then costs
    one backward pass through that graph. This is the operator to hand to ``conjugate_gradient``.

    Args:
        loss_fn: computes the scalar ``f(params)`` (for TRPO, the mean KL between the old and the current policy);
            called exactly once.
        params: the parameter tensors (``requires_grad=True``) to differentiate with respect to.
        damping: the coefficient of the ``damping * v`` term, at least 0.

    Returns:
        A closure mapping a flat vector ``v`` (as many elements as all ``params``) to the flat ``H v + damping v``.

    Raises:
        ValueError: if ``damping < 0`` or ``loss_fn()`` does not return a scalar.
    """
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping!r}")
    params = list(params)
    loss = loss_fn()
    if loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar, got a tensor of shape {tuple(loss.shape)}")
    grads = torch.autograd.grad(loss.reshape(()), params, create_graph=True, allow_unused=True)
    gradient = flatten_tensors(
        torch.zeros_like(param) if grad is None else grad for grad, param in zip(grads, params, strict=True)
    )

    def hvp(vector: Tensor) -> Tensor:
        return hessian_vector_product(gradient, params, vector, damping=damping, retain_graph=True)

    return hvp


# ---------------------------------------------------------------------------------------------------------------------
# step size and line search
# ---------------------------------------------------------------------------------------------------------------------


def trpo_step_size(direction: Tensor, hvp_of_direction: Tensor, max_kl: float) -> float:
    """The scale ``beta = sqrt(2 max_kl / (d^T H d))`` that puts the step ``beta d`` on the KL trust-region boundary.

    Under the quadratic model ``KL(theta + s) ~= 1/2 s^T H s`` of the KL, the step ``beta d`` has
    ``KL = 1/2 beta^2 d^T H d = max_kl`` (Schulman et al. 2015, Appendix C).

    Args:
        direction: the 1-D search direction ``d`` (for TRPO, the conjugate-gradient solution ``H^-1 g``).
        hvp_of_direction: ``H d``, shaped like ``direction``.
        max_kl: the trust-region radius, > 0.

    Returns:
        ``beta`` as a Python float.

    Raises:
        ValueError: if ``max_kl <= 0``, the shapes differ, or ``d^T H d`` is not a finite positive number.
    """
    if not max_kl > 0:
        raise ValueError(f"max_kl must be > 0, got {max_kl!r}")
    if direction.shape != hvp_of_direction.shape:
        raise ValueError(
            f"direction and hvp_of_direction must have the same shape, got {tuple(direction.shape)} and "
            f"{tuple(hvp_of_direction.shape)}"
        )
    curvature = torch.dot(direction.reshape(-1), hvp_of_direction.reshape(-1)).item()
    if not math.isfinite(curvature) or curvature <= 0:
        raise ValueError(
            f"d^T H d must be finite and > 0 to scale a TRPO step, got {curvature!r} (is H positive definite, and "
            "the direction non-zero?)"
        )
    return math.sqrt(2.0 * max_kl / curvature)


class LineSearchResult(NamedTuple):
    """The outcome of ``line_search``."""

    params: Tensor
    """The accepted flat parameters, or ``old_params`` itself when no candidate was accepted."""
    accepted: bool
    """Whether a candidate satisfied the improvement and KL conditions."""
    step_fraction: float
    """The fraction of ``full_step`` taken: ``backtrack_ratio ** i`` for the accepted try ``i``, 0.0 if none."""
    loss: float
    """The loss at ``params`` (``old_loss`` when nothing was accepted)."""
    kl: float
    """The mean KL between the old policy and ``params`` (0.0 when nothing was accepted)."""
    num_evaluations: int
    """How many times ``loss_and_kl`` was called."""


def line_search(
    loss_and_kl: Callable[[Tensor], tuple[float, float]],
    old_params: Tensor,
    full_step: Tensor,
    old_loss: float,
    max_kl: float,
    backtrack_ratio: float = 0.5,
    max_backtracks: int = 15,
) -> LineSearchResult:
    """Backtracking line search along ``full_step`` for a loss to *minimise* under a KL constraint.

    Tries ``candidate = old_params + backtrack_ratio**i * full_step`` for ``i = 0, 1, ..., max_backtracks - 1`` and
    accepts the first one whose loss is finite and strictly below ``old_loss`` and whose KL is finite and at most
    ``max_kl``. The quadratic KL model behind the full step can be badly wrong far from the old parameters, so the
    constraint is checked on the real KL (Schulman et al. 2015, Appendix C).

    ``full_step`` is the step to ADD to the parameters: for a loss, the descent step, e.g.
    ``-trpo_step_size(s, hvp(s), max_kl) * s`` with ``s = conjugate_gradient(hvp, grad_of_loss)``.

    Args:
        loss_and_kl: evaluates a flat candidate, returning ``(loss, kl)``: the surrogate loss and the mean KL between
            the old policy and the candidate's (Python floats or 0-d tensors). It typically loads the candidate into
            the policy; the caller restores ``old_params`` when the search fails.
        old_params: the current flat parameters; not modified.
        full_step: the full step, shaped like ``old_params``.
        old_loss: the loss at ``old_params``, a finite float.
        max_kl: the largest mean KL accepted, > 0.
        backtrack_ratio: the factor the step shrinks by at each try, in (0, 1).
        max_backtracks: the number of candidates tried, at least 1 (the name follows rllab and garage).

    Returns:
        A ``LineSearchResult``; when no candidate is accepted, its ``params`` is ``old_params`` itself, with
        ``accepted=False``, ``step_fraction=0.0``, ``loss=old_loss`` and ``kl=0.0``.

    Raises:
        ValueError: on an argument out of range, a non-finite ``old_loss``, or mismatched shapes.
    """
    if not 0 < backtrack_ratio < 1:
        raise ValueError(f"backtrack_ratio must be in (0, 1), got {backtrack_ratio!r}")
    if isinstance(max_backtracks, bool) or not isinstance(max_backtracks, int) or max_backtracks < 1:
        raise ValueError(f"max_backtracks must be an int >= 1, got {max_backtracks!r}")
    if not max_kl > 0:
        raise ValueError(f"max_kl must be > 0, got {max_kl!r}")
    if not math.isfinite(old_loss):
        raise ValueError(f"old_loss must be finite, got {old_loss!r}")
    if old_params.shape != full_step.shape:
        raise ValueError(
            f"old_params and full_step must have the same shape, got {tuple(old_params.shape)} and "
            f"{tuple(full_step.shape)}"
        )

    base, step = old_params.detach(), full_step.detach()
    for i in range(max_backtracks):
        fraction = backtrack_ratio**i
        candidate = base + fraction * step
        loss, kl = loss_and_kl(candidate)
        loss, kl = float(loss), float(kl)
        # a loss of -inf passes `loss < old_loss`: check finiteness explicitly so a diverged policy is never accepted
        if math.isfinite(loss) and math.isfinite(kl) and loss < old_loss and kl <= max_kl:
            return LineSearchResult(candidate, True, fraction, loss, kl, i + 1)
    return LineSearchResult(old_params, False, 0.0, float(old_loss), 0.0, max_backtracks)


def trpo_step(
    params: Mapping[str, Tensor],
    gradient: Tensor,
    hessian_vector_product: Callable[[Tensor], Tensor],
    loss_and_kl: Callable[[Tensor], tuple[float, float]],
    old_loss: float,
    *,
    max_kl: float,
    cg_iterations: int = 10,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
    timings: dict[str, float] | None = None,
) -> LineSearchResult:
    """One TRPO update of ``params`` (a dict of parameters, written in place) for a loss to minimise.

    The natural-gradient direction solves H x = g by conjugate gradient, is scaled so that its quadratic KL estimate
    equals ``max_kl``, and a backtracking line search on the true loss and KL picks the step; when no candidate is
    accepted the parameters keep their old values. ``timings``, if given, receives the seconds spent in
    ``conjugate_gradient_s`` and ``line_search_s``.

    A gradient of exact zeros (every advantage zero: a sparse-reward batch in which no episode was rewarded) has no
    direction to step in: the parameters stay and the result says nothing was accepted, as a failed search does.
    """
    if not bool(gradient.any()):
        if timings is not None:
            timings.update(conjugate_gradient_s=0.0, line_search_s=0.0)
        old_params = flatten_tensors([value.detach() for value in params.values()])
        return LineSearchResult(old_params, False, 0.0, old_loss, 0.0, 0)
    start = time.perf_counter()
    # H d from CG's residual: the step size needs no extra product
    direction, direction_product = conjugate_gradient(
        hessian_vector_product, gradient, iterations=cg_iterations, return_product=True
    )
    scale = trpo_step_size(direction, direction_product, max_kl)
    conjugate_gradient_seconds = time.perf_counter() - start

    start = time.perf_counter()
    old_params = flatten_tensors([value.detach() for value in params.values()])
    result = line_search(loss_and_kl, old_params, -scale * direction, old_loss, max_kl, backtrack_ratio, max_backtracks)
    with torch.no_grad():
        for parameter, value in zip(params.values(), unflatten_like(result.params, params).values(), strict=True):
            parameter.copy_(value)
    if timings is not None:
        timings["conjugate_gradient_s"] = conjugate_gradient_seconds
        timings["line_search_s"] = time.perf_counter() - start
    return result
