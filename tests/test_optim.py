"""Unit tests of metarl.optim against closed forms, torch.linalg.solve and torch.autograd.functional.hvp."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch

from metarl.optim import (
    LineSearchResult,
    conjugate_gradient,
    flatten_tensors,
    hessian_vector_product,
    line_search,
    make_hvp,
    trpo_step_size,
    unflatten_like,
)


def random_spd(n: int, seed: int) -> torch.Tensor:
    """A random, reasonably conditioned symmetric positive-definite float64 matrix."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=generator, dtype=torch.float64)
    return q @ q.T + n * torch.eye(n, dtype=torch.float64)


def matvec(matrix: torch.Tensor):
    return lambda v: matrix @ v


# ---------------------------------------------------------------------------------------------------------------------
# flatten / unflatten
# ---------------------------------------------------------------------------------------------------------------------


def test_flatten_unflatten_round_trip() -> None:
    like = {
        "weight": torch.arange(6.0).reshape(2, 3),
        "bias": torch.tensor([10.0, 11.0]),
        "log_std": torch.tensor(-0.5),  # a 0-d parameter
    }
    flat = flatten_tensors(like.values())
    assert flat.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 11.0, -0.5]

    out = unflatten_like(flat, like)
    assert list(out) == ["weight", "bias", "log_std"]
    for name, tensor in like.items():
        assert out[name].shape == tensor.shape
        assert torch.equal(out[name], tensor)
    assert torch.equal(flatten_tensors(out.values()), flat)


def test_unflatten_keeps_the_order_of_like_and_gradients_flow() -> None:
    like = {"b": torch.zeros(2), "a": torch.zeros(1, 3)}
    flat = torch.arange(5.0, requires_grad=True)
    out = unflatten_like(flat, like)
    assert list(out) == ["b", "a"]
    assert out["b"].tolist() == [0.0, 1.0]
    assert out["a"].tolist() == [[2.0, 3.0, 4.0]]
    (out["a"].sum() * 2).backward()
    assert flat.grad.tolist() == [0.0, 0.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("size", [4, 6])
def test_unflatten_rejects_a_size_mismatch(size: int) -> None:
    like = {"w": torch.zeros(2, 2), "b": torch.zeros(1)}
    with pytest.raises(ValueError, match=rf"{size} elements .* hold 5"):
        unflatten_like(torch.zeros(size), like)


def test_unflatten_rejects_a_non_flat_vector() -> None:
    with pytest.raises(ValueError, match=r"1-D.*\(5, 1\)"):
        unflatten_like(torch.zeros(5, 1), {"w": torch.zeros(5)})


def test_flatten_rejects_nothing() -> None:
    with pytest.raises(ValueError, match="at least one tensor"):
        flatten_tensors([])


# ---------------------------------------------------------------------------------------------------------------------
# conjugate gradient
# ---------------------------------------------------------------------------------------------------------------------


def test_conjugate_gradient_matches_solve_on_a_random_spd_matrix() -> None:
    a = random_spd(20, seed=0)
    b = torch.randn(20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = conjugate_gradient(matvec(a), b, iterations=40, residual_tol=1e-20)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=0, atol=1e-8)


def recording(a: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor]]:
    """``v -> a @ v`` and the list of the vectors it was called with."""
    calls: list[torch.Tensor] = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        calls.append(v)
        return a @ v

    return matvec, calls


def test_conjugate_gradient_stops_early_with_the_exact_solution() -> None:
    # in exact arithmetic CG solves an n x n system in n steps: 10 allowed iterations must stop after 5, at x*
    a = random_spd(5, seed=2)
    b = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    counting_matvec, calls = recording(a)
    x = conjugate_gradient(counting_matvec, b, iterations=10)
    assert len(calls) == 5
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=0, atol=1e-10)
    assert torch.linalg.vector_norm(a @ x - b).item() ** 2 < 1e-10


def test_conjugate_gradient_returns_the_product_of_its_solution_without_another_call() -> None:
    # A x from the residual, b - r, after 4 of 8 possible iterations (x is not yet the solution)
    a = random_spd(8, seed=6)
    b = torch.randn(8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    counting_matvec, calls = recording(a)
    x, product = conjugate_gradient(counting_matvec, b, iterations=4, residual_tol=0.0, return_product=True)
    assert len(calls) == 4
    assert torch.linalg.vector_norm(a @ x - b) > 1e-3
    torch.testing.assert_close(product, a @ x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x, conjugate_gradient(lambda v: a @ v, b, iterations=4, residual_tol=0.0))


def test_conjugate_gradient_on_a_diagonal_matrix_is_exact_in_one_step() -> None:
    # with A = 3 I the first step alpha = r.r / r.A.r = 1/3 lands on b / 3 exactly
    b = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    x = conjugate_gradient(lambda v: 3.0 * v, b, iterations=1)
    torch.testing.assert_close(x, b / 3, rtol=0, atol=1e-15)


def test_conjugate_gradient_does_not_mutate_b() -> None:
    a = random_spd(8, seed=4)
    b = torch.randn(8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    b_before = b.clone()
    recording_matvec, operator_inputs = recording(a)
    x = conjugate_gradient(recording_matvec, b, iterations=8, residual_tol=0.0)
    assert torch.equal(b, b_before)
    assert x.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
    # the operator never gets b's own storage, so even a careless in-place operator cannot reach the caller's b
    assert len(operator_inputs) == 8
    assert all(v.untyped_storage().data_ptr() != b.untyped_storage().data_ptr() for v in operator_inputs)


def test_conjugate_gradient_of_zero_is_zero_without_operator_calls() -> None:
    def never(v: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the operator must not be called for b = 0")

    x = conjugate_gradient(never, torch.zeros(4), iterations=3, residual_tol=0.0)
    assert torch.equal(x, torch.zeros(4))


@pytest.mark.parametrize("iterations", [0, -3])
def test_conjugate_gradient_rejects_fewer_than_one_iteration(iterations: int) -> None:
    with pytest.raises(ValueError, match=rf"iterations must be an int >= 1, got {iterations}"):
        conjugate_gradient(lambda v: v, torch.ones(3), iterations=iterations)


def test_conjugate_gradient_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="residual_tol"):
        conjugate_gradient(lambda v: v, torch.ones(3), residual_tol=-1.0)
    with pytest.raises(ValueError, match=r"1-D.*\(3, 1\)"):
        conjugate_gradient(lambda v: v, torch.ones(3, 1))
    with pytest.raises(ValueError, match="positive-definite"):
        conjugate_gradient(lambda v: -v, torch.ones(3))


# ---------------------------------------------------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------------------------------------------------


def nonlinear_f(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A scalar function of two tensors with cross terms between them."""
    x = torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=torch.float64)
    return torch.sum(torch.tanh(w @ x) * u**2) + 0.25 * torch.sum(w**4) + torch.exp(u).prod()


def two_params() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(6)
    w = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, generator=generator, dtype=torch.float64, requires_grad=True)
    v = torch.randn(15, generator=generator, dtype=torch.float64)
    return w, u, v


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_hessian_vector_product_matches_autograd_functional_hvp(damping: float) -> None:
    w, u, v = two_params()
    gradient = flatten_tensors(torch.autograd.grad(nonlinear_f(w, u), (w, u), create_graph=True))
    result = hessian_vector_product(gradient, [w, u], v, damping=damping)

    _, (hv_w, hv_u) = torch.autograd.functional.hvp(nonlinear_f, (w.detach(), u.detach()), (v[:12].view(3, 4), v[12:]))
    expected = flatten_tensors([hv_w, hv_u]) + damping * v
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)
    assert not result.requires_grad

    # retain_graph=True (the default) lets the same gradient serve several products, as conjugate gradient needs
    again = hessian_vector_product(gradient, [w, u], 2 * v, damping=damping)
    torch.testing.assert_close(again, 2 * expected, rtol=1e-12, atol=1e-12)


def test_hessian_vector_product_gives_zero_for_a_parameter_the_gradient_does_not_depend_on() -> None:
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64, requires_grad=True)
    f = torch.sum(w**3) + torch.sum(c)  # Hessian: diag(6 w) for w, zero for c
    gradient = flatten_tensors(torch.autograd.grad(f, (w, c), create_graph=True))
    v = torch.tensor([1.0, -1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    result = hessian_vector_product(gradient, [w, c], v, damping=0.5)
    expected = torch.tensor([6.0, -12.0, 0.0, 0.0, 0.0], dtype=torch.float64) + 0.5 * v
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)


def test_hessian_vector_product_requires_a_differentiable_gradient() -> None:
    w, u, v = two_params()
    gradient = flatten_tensors(torch.autograd.grad(nonlinear_f(w, u), (w, u)))  # no create_graph
    with pytest.raises(ValueError, match="create_graph=True"):
        hessian_vector_product(gradient, [w, u], v)


def test_hessian_vector_product_rejects_bad_inputs() -> None:
    w, u, v = two_params()
    gradient = flatten_tensors(torch.autograd.grad(nonlinear_f(w, u), (w, u), create_graph=True))
    with pytest.raises(ValueError, match=r"same shape.*\(15,\) and \(14,\)"):
        hessian_vector_product(gradient, [w, u], v[:14])
    with pytest.raises(ValueError, match=re.escape("damping must be >= 0, got -0.1")):
        hessian_vector_product(gradient, [w, u], v, damping=-0.1)
    with pytest.raises(ValueError, match=re.escape("damping must be >= 0, got -0.1")):
        make_hvp(lambda: nonlinear_f(w, u), [w, u], damping=-0.1)
    with pytest.raises(ValueError, match="scalar"):
        make_hvp(lambda: w.sum(0), [w])


@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_make_hvp_inside_conjugate_gradient_solves_a_convex_quadratic(damping: float) -> None:
    # f(theta) = 1/2 theta^T A theta + c^T theta over two parameter tensors: H = A, grad f = A theta + c
    a = random_spd(10, seed=7)
    generator = torch.Generator().manual_seed(8)
    c = torch.randn(10, generator=generator, dtype=torch.float64)
    weight = torch.randn(2, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)
    calls = []

    def loss_fn() -> torch.Tensor:
        calls.append(1)
        theta = flatten_tensors([weight, bias])
        return 0.5 * theta @ a @ theta + c @ theta

    hvp = make_hvp(loss_fn, [weight, bias], damping=damping)
    theta = flatten_tensors([weight, bias]).detach()
    g = a @ theta + c
    x = conjugate_gradient(hvp, g, iterations=30, residual_tol=1e-24)

    assert len(calls) == 1  # the gradient graph is built once and reused by every product
    expected = torch.linalg.solve(a + damping * torch.eye(10, dtype=torch.float64), g)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# TRPO step size
# ---------------------------------------------------------------------------------------------------------------------


def test_trpo_step_size_closed_form_puts_the_step_on_the_kl_boundary() -> None:
    h = random_spd(6, seed=9)
    d = torch.randn(6, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    max_kl = 0.01
    beta = trpo_step_size(d, h @ d, max_kl)
    assert isinstance(beta, float)
    assert beta == pytest.approx(math.sqrt(2 * max_kl / (d @ h @ d).item()), rel=1e-12)
    step = beta * d
    assert (0.5 * step @ h @ step).item() == pytest.approx(max_kl, rel=1e-12)


def test_trpo_step_size_by_hand() -> None:
    # d = (1, 2), H = diag(2, 0.5): d^T H d = 2 + 2 = 4, beta = sqrt(2 * 0.02 / 4) = 0.1
    d = torch.tensor([1.0, 2.0])
    assert trpo_step_size(d, torch.tensor([2.0, 1.0]), 0.02) == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("hd", [[0.0, 0.0], [-1.0, 0.0], [float("nan"), 1.0], [float("inf"), 1.0]])
def test_trpo_step_size_rejects_a_non_positive_or_non_finite_curvature(hd: list[float]) -> None:
    with pytest.raises(ValueError, match=r"d\^T H d must be finite and > 0"):
        trpo_step_size(torch.tensor([1.0, 2.0]), torch.tensor(hd), 0.01)


def test_trpo_step_size_rejects_bad_inputs() -> None:
    d = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match=re.escape("max_kl must be > 0, got 0.0")):
        trpo_step_size(d, d, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        trpo_step_size(d, torch.ones(3), 0.01)


def test_trpo_pipeline_hits_the_kl_boundary_of_a_gaussian_policy() -> None:
    # Policy N(mu, sigma^2 I) with mean parameters mu: KL(old || new) = |mu - mu_old|^2 / (2 sigma^2) exactly, so the
    # Fisher matrix is I / sigma^2 and the full TRPO step must land exactly on KL = max_kl.
    sigma, max_kl = 0.5, 0.02
    mu_old = torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64)
    mu = mu_old.clone().requires_grad_(True)
    w = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)

    def mean_kl(mean: torch.Tensor) -> torch.Tensor:
        old = torch.distributions.Normal(mu_old, sigma)
        new = torch.distributions.Normal(mean, sigma)
        return torch.distributions.kl_divergence(old, new).sum()

    g = -w  # gradient of the surrogate loss L(mu) = -w . mu
    hvp = make_hvp(lambda: mean_kl(mu), [mu])
    s = conjugate_gradient(hvp, g, iterations=10)
    torch.testing.assert_close(s, sigma**2 * g, rtol=1e-12, atol=1e-12)  # H^-1 g with H = I / sigma^2

    full_step = -trpo_step_size(s, hvp(s), max_kl) * s
    kl_full = mean_kl(mu_old + full_step).item()
    assert kl_full == pytest.approx(max_kl, rel=1e-9)

    result = line_search(
        lambda p: (float(-w @ p), float(mean_kl(p))), mu_old, full_step, float(-w @ mu_old), max_kl * (1 + 1e-6)
    )
    assert result.accepted and result.step_fraction == 1.0
    assert result.loss < float(-w @ mu_old)


# ---------------------------------------------------------------------------------------------------------------------
# line search
# ---------------------------------------------------------------------------------------------------------------------


def test_line_search_accepts_the_full_step_on_a_convex_quadratic() -> None:
    a = random_spd(4, seed=11)
    target = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    old_params = torch.zeros(4, dtype=torch.float64)

    def loss_and_kl(params: torch.Tensor) -> tuple[float, float]:
        delta = params - target
        kl = 1e-3 * torch.sum((params - old_params) ** 2)
        return float(0.5 * delta @ a @ delta), float(kl)

    old_loss, _ = loss_and_kl(old_params)
    result = line_search(loss_and_kl, old_params, target - old_params, old_loss, max_kl=0.05)

    assert isinstance(result, LineSearchResult)
    assert result.accepted
    assert result.step_fraction == 1.0
    assert result.num_evaluations == 1
    torch.testing.assert_close(result.params, target, rtol=0, atol=1e-15)
    assert result.loss == pytest.approx(0.0, abs=1e-15)
    assert result.kl == pytest.approx(1e-3 * 6.25, rel=1e-12)
    assert torch.equal(old_params, torch.zeros(4, dtype=torch.float64))  # not modified


@pytest.mark.parametrize(
    ("c", "max_kl", "ratio", "expected_backtracks"),
    [
        (1.0, 0.01, 0.5, 4),  # need f <= 0.1: 1, .5, .25, .125 fail, 0.0625 passes
        (1.0, 2.0, 0.5, 0),  # the full step is inside the trust region
        (8.0, 1.0, 0.5, 2),  # need f^2 <= 1/8: 1, .5 fail (8 * .25 = 2), .25 passes (0.5)
        (100.0, 1.0, 0.8, 11),  # need 0.8^(2i) <= 0.01: i >= 10.3
    ],
)
def test_line_search_backtracks_exactly_while_the_kl_constraint_is_violated(
    c: float, max_kl: float, ratio: float, expected_backtracks: int
) -> None:
    # candidate = 0 + fraction * ones, so every entry of the candidate is the fraction tried
    fractions_tried = []

    def loss_and_kl(params: torch.Tensor) -> tuple[float, float]:
        fraction = params[0].item()
        fractions_tried.append(fraction)
        return -fraction, c * fraction**2  # the loss always improves; KL(fraction) = c fraction^2

    result = line_search(loss_and_kl, torch.zeros(3), torch.ones(3), old_loss=0.0, max_kl=max_kl, backtrack_ratio=ratio)
    k = expected_backtracks
    assert result.accepted
    assert result.num_evaluations == k + 1
    assert fractions_tried == pytest.approx([ratio**i for i in range(k + 1)], rel=1e-6)
    assert result.step_fraction == ratio**k
    assert result.kl == pytest.approx(c * ratio ** (2 * k), rel=1e-6)
    assert result.loss == pytest.approx(-(ratio**k), rel=1e-6)
    torch.testing.assert_close(result.params, torch.full((3,), ratio**k))


def test_line_search_skips_non_finite_candidates_and_accepts_a_later_one() -> None:
    def loss_and_kl(params: torch.Tensor) -> tuple[float, float]:
        fraction = params[0].item()
        if fraction > 0.3:
            return float("nan"), 0.0  # the policy diverged at large steps
        return -fraction, 0.0

    result = line_search(loss_and_kl, torch.zeros(2), torch.ones(2), old_loss=0.0, max_kl=0.01)
    assert result.accepted
    assert result.step_fraction == 0.25
    assert result.num_evaluations == 3


@pytest.mark.parametrize(
    "outcome",
    [
        (1.0, 0.0),  # the loss gets worse
        (0.0, 0.0),  # the loss does not strictly improve
        (float("nan"), 0.0),
        (float("-inf"), 0.0),  # a diverged policy must not count as an improvement
        (-1.0, float("nan")),
        (-1.0, float("inf")),
        (-1.0, 0.5),  # improves but always breaks the trust region
    ],
)
def test_line_search_rejects_and_returns_old_params_when_nothing_is_accepted(outcome: tuple[float, float]) -> None:
    old_params = torch.tensor([1.0, 2.0])
    calls = []

    def loss_and_kl(params: torch.Tensor) -> tuple[float, float]:
        calls.append(params)
        return outcome

    result = line_search(loss_and_kl, old_params, torch.ones(2), old_loss=0.0, max_kl=0.1, max_backtracks=6)
    assert not result.accepted
    assert result.params is old_params
    assert torch.equal(old_params, torch.tensor([1.0, 2.0]))
    assert result.step_fraction == 0.0
    assert result.loss == 0.0
    assert result.kl == 0.0
    assert result.num_evaluations == len(calls) == 6


def test_line_search_accepts_zero_dimensional_tensors_from_loss_and_kl() -> None:
    result = line_search(
        lambda p: (torch.tensor(-1.0), torch.tensor(0.001)), torch.zeros(2), torch.ones(2), old_loss=0.0, max_kl=0.01
    )
    assert result.accepted
    assert isinstance(result.loss, float) and isinstance(result.kl, float)
    assert (result.loss, result.kl) == (-1.0, pytest.approx(0.001))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backtrack_ratio": 0.0}, "backtrack_ratio must be in (0, 1), got 0.0"),
        ({"backtrack_ratio": 1.0}, "backtrack_ratio must be in (0, 1), got 1.0"),
        ({"backtrack_ratio": -0.5}, "backtrack_ratio must be in (0, 1), got -0.5"),
        ({"max_backtracks": 0}, "max_backtracks must be an int >= 1, got 0"),
        ({"max_kl": 0.0}, "max_kl must be > 0, got 0.0"),
        ({"max_kl": -0.01}, "max_kl must be > 0, got -0.01"),
        ({"old_loss": float("nan")}, "old_loss must be finite, got nan"),
        ({"full_step": torch.ones(3)}, "same shape"),
    ],
)
def test_line_search_validates_its_arguments_before_evaluating(kwargs: dict, message: str) -> None:
    def never(params: torch.Tensor) -> tuple[float, float]:
        raise AssertionError("loss_and_kl must not be called on invalid arguments")

    arguments = {"old_params": torch.zeros(2), "full_step": torch.ones(2), "old_loss": 0.0, "max_kl": 0.01}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        line_search(never, **arguments)


def test_trpo_step_moves_parameters_to_the_trust_region_boundary_and_restores_on_failure():
    from metarl.optim import trpo_step

    # loss(x) = ½|x - target|², KL(x) = ½|x - x0|² (identity curvature): the accepted step is the full natural step
    x0 = torch.tensor([0.0, 0.0], dtype=torch.float64)
    target = torch.tensor([3.0, 4.0], dtype=torch.float64)
    params = {"x": torch.nn.Parameter(x0.clone())}
    gradient = x0 - target
    max_kl = 0.02

    def loss_and_kl(candidate: torch.Tensor) -> tuple[float, float]:
        return 0.5 * float((candidate - target).pow(2).sum()), 0.5 * float((candidate - x0).pow(2).sum())

    timings: dict[str, float] = {}
    result = trpo_step(params, gradient, lambda v: v, loss_and_kl, 12.5, max_kl=max_kl * 1.000001, timings=timings)
    assert result.accepted and result.step_fraction == 1.0
    # the step has length sqrt(2 max_kl) in the direction of the target
    expected = target / target.norm() * (2 * max_kl) ** 0.5
    torch.testing.assert_close(params["x"].detach(), expected, rtol=1e-5, atol=1e-9)
    assert set(timings) == {"conjugate_gradient_s", "line_search_s"}

    stuck = {"x": torch.nn.Parameter(x0.clone())}
    rejected = trpo_step(stuck, gradient, lambda v: v, lambda c: (100.0, 0.0), 12.5, max_kl=max_kl)
    assert not rejected.accepted
    assert torch.equal(stuck["x"].detach(), x0)


def test_a_zero_gradient_is_no_step_not_an_error():
    # a sparse-reward meta-batch with no rewarded episode has all advantages zero, hence this gradient
    from metarl.optim import trpo_step

    x0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    params = {"x": torch.nn.Parameter(x0.clone())}

    def never_called(candidate: torch.Tensor) -> tuple[float, float]:
        raise AssertionError("no candidate to evaluate without a direction")

    timings: dict[str, float] = {}
    result = trpo_step(params, torch.zeros(2, dtype=torch.float64), lambda v: v, never_called, 3.0, max_kl=0.01,
                       timings=timings)  # fmt: skip
    assert (result.accepted, result.step_fraction, result.loss, result.kl) == (False, 0.0, 3.0, 0.0)
    assert torch.equal(params["x"].detach(), x0) and torch.equal(result.params, x0)
    assert timings == {"conjugate_gradient_s": 0.0, "line_search_s": 0.0}
