"""Returns, GAE, the linear baseline and advantage normalisation against hand-computed and closed-form answers."""

from __future__ import annotations

import itertools

import pytest
import torch

from metarl.advantages import (
    MAX_REG_INCREASES,
    WEIGHTINGS,
    average_weights,
    discounted_returns,
    fit_and_predict_linear_baseline,
    fit_linear_baseline,
    gae,
    linear_baseline_features,
    linear_baseline_values,
    normalize_advantages,
)


def random_masks(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Float masks ``[..., H]``: each row a run of 1s (length 1..H) followed by 0s."""
    horizon = shape[-1]
    lengths = torch.randint(1, horizon + 1, shape[:-1], generator=generator)
    return (torch.arange(horizon) < lengths.unsqueeze(-1)).float()


def random_terminated(generator: torch.Generator, masks: torch.Tensor) -> torch.Tensor:
    """Bool ``[..., H]``: about half of the episodes terminate on their last real step, the others are truncated."""
    last_real = masks.sum(-1, keepdim=True).long() - 1
    on_last_step = torch.arange(masks.shape[-1]) == last_real
    return on_last_step & (torch.rand(masks.shape[:-1], generator=generator) < 0.5).unsqueeze(-1)


def with_padding(tensor: torch.Tensor, masks: torch.Tensor, fill: float) -> torch.Tensor:
    """``tensor`` with every padded entry (mask 0, broadcast over trailing feature dims) replaced by ``fill``."""
    valid = masks.reshape(*masks.shape, *([1] * (tensor.dim() - masks.dim()))) != 0
    return torch.where(valid, tensor, torch.full_like(tensor, fill))


# -- discounted returns ----------------------------------------------------------------------------------------------


def test_discounted_returns_hand_example_with_an_episode_ending_early():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 7.0, 7.0]])  # the 7s are padding
    masks = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    # gamma 0.5: row 0 G3 = 4, G2 = 3 + 2 = 5, G1 = 2 + 2.5 = 4.5, G0 = 1 + 2.25 = 3.25; row 1 G1 = 1, G0 = 1.5
    expected = torch.tensor([[3.25, 4.5, 5.0, 4.0], [1.5, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(discounted_returns(rewards, masks, gamma=0.5), expected)


def test_discounted_returns_over_arbitrary_leading_dims_matches_row_by_row():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(2, 3, 4, 6, generator=generator)
    masks = random_masks(generator, (2, 3, 4, 6))
    batched = discounted_returns(rewards, masks, gamma=0.9)
    assert batched.shape == rewards.shape
    rows = [
        discounted_returns(r, m, gamma=0.9) for r, m in zip(rewards.reshape(-1, 6), masks.reshape(-1, 6), strict=True)
    ]
    torch.testing.assert_close(batched, torch.stack(rows).reshape(2, 3, 4, 6))


# -- GAE -------------------------------------------------------------------------------------------------------------

# one 3-step episode, gamma 0.9, lam 0.8 (gamma * lam = 0.72)
REWARDS = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
VALUES = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
MASKS = torch.ones(3, dtype=torch.float64)
# delta0 = 1 + 0.9 * 1.0 - 0.5 = 1.4 and delta1 = 2 + 0.9 * 1.5 - 1.0 = 2.35 in every case below
# no bootstrap at the end: delta2 = 3 - 1.5 = 1.5; A2 = 1.5, A1 = 2.35 + 0.72 * 1.5 = 3.43, A0 = 1.4 + 0.72 * 3.43
NO_BOOTSTRAP = torch.tensor([1.4 + 0.72 * 3.43, 3.43, 1.5], dtype=torch.float64)
# bootstrapped from V(last obs) = 2: delta2 = 3 + 0.9 * 2 - 1.5 = 3.3; A1 = 2.35 + 0.72 * 3.3 = 4.726, A0 = 1.4 + ...
BOOTSTRAPPED = torch.tensor([1.4 + 0.72 * 4.726, 4.726, 3.3], dtype=torch.float64)


def test_gae_hand_example_terminated():
    terminated = torch.tensor([False, False, True])
    next_values = torch.tensor(2.0, dtype=torch.float64)  # ignored: nothing follows a terminal state
    advantages = gae(REWARDS, VALUES, MASKS, 0.9, 0.8, next_values=next_values, terminated=terminated)
    torch.testing.assert_close(advantages, NO_BOOTSTRAP)


def test_gae_hand_example_truncated_is_bootstrapped_from_next_values():
    terminated = torch.zeros(3, dtype=torch.bool)
    next_values = torch.tensor(2.0, dtype=torch.float64)
    advantages = gae(REWARDS, VALUES, MASKS, 0.9, 0.8, next_values=next_values, terminated=terminated)
    torch.testing.assert_close(advantages, BOOTSTRAPPED)


def test_gae_hand_example_without_next_values_bootstraps_from_zero():
    torch.testing.assert_close(gae(REWARDS, VALUES, MASKS, 0.9, 0.8), NO_BOOTSTRAP)


def test_gae_hand_example_truncated_by_padding():
    # the same episode ended after 2 steps (not by termination), then 2 padded steps holding garbage
    rewards = torch.tensor([1.0, 2.0, 9.0, 9.0], dtype=torch.float64)
    values = torch.tensor([0.5, 1.0, 9.0, 9.0], dtype=torch.float64)
    masks = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    next_values = torch.tensor(2.0, dtype=torch.float64)
    # delta1 = 2 + 0.9 * 2 - 1.0 = 2.8 = A1; A0 = 1.4 + 0.72 * 2.8 = 3.416
    expected = torch.tensor([3.416, 2.8, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(gae(rewards, values, masks, 0.9, 0.8, next_values=next_values), expected)
    # terminated on its last real step: no bootstrap, delta1 = 2 - 1 = 1 = A1, A0 = 1.4 + 0.72
    terminated = torch.tensor([False, True, False, False])
    expected = torch.tensor([1.4 + 0.72, 1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(
        gae(rewards, values, masks, 0.9, 0.8, next_values=next_values, terminated=terminated), expected
    )


def test_gae_with_lambda_one_and_zero_values_is_the_discounted_return():
    generator = torch.Generator().manual_seed(1)
    rewards = torch.randn(3, 4, 7, generator=generator)
    masks = random_masks(generator, (3, 4, 7))
    terminated = random_terminated(generator, masks)
    assert terminated.any() and not terminated.all()
    advantages = gae(rewards, torch.zeros_like(rewards), masks, 0.95, 1.0, terminated=terminated)
    torch.testing.assert_close(advantages, discounted_returns(rewards, masks, 0.95))


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    generator = torch.Generator().manual_seed(2)
    shape = (3, 4, 7)
    rewards, values = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    masks = random_masks(generator, shape)
    next_values = torch.randn(shape[:-1], generator=generator)
    lengths = masks.sum(-1).long()
    # some episodes terminate on their last real step, the others are truncated there
    terminated_rows = torch.rand(shape[:-1], generator=generator) < 0.5
    terminated = torch.zeros(shape, dtype=torch.bool)
    expected = torch.zeros(shape)
    for t, e in itertools.product(range(shape[0]), range(shape[1])):
        last = lengths[t, e].item() - 1
        terminated[t, e, last] = terminated_rows[t, e]
        for h in range(last + 1):
            if h < last:
                following = values[t, e, h + 1]
            else:
                following = 0.0 if terminated_rows[t, e] else next_values[t, e]
            expected[t, e, h] = rewards[t, e, h] + 0.9 * following - values[t, e, h]
    advantages = gae(rewards, values, masks, 0.9, 0.0, next_values=next_values, terminated=terminated)
    torch.testing.assert_close(advantages, expected)


def test_gae_is_differentiable_in_values_and_next_values():
    generator = torch.Generator().manual_seed(3)
    rewards = torch.randn(2, 4, dtype=torch.float64, generator=generator)
    masks = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    terminated = torch.tensor([[False, False, False, True], [False, False, False, False]])
    values = torch.randn(2, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    next_values = torch.randn(2, dtype=torch.float64, generator=generator, requires_grad=True)

    def advantages(values: torch.Tensor, next_values: torch.Tensor) -> torch.Tensor:
        return gae(rewards, values, masks, 0.9, 0.8, next_values=next_values, terminated=terminated)

    assert torch.autograd.gradcheck(advantages, (values, next_values))
    # the value of the padded step gets no gradient, nor does the bootstrap value of the terminated row
    values.grad = next_values.grad = None
    advantages(values, next_values).sum().backward()
    assert values.grad[1, 2:].eq(0).all() and values.grad[0].ne(0).all()
    assert next_values.grad[0] == 0 and next_values.grad[1] != 0


def test_gae_does_not_modify_its_inputs():
    generator = torch.Generator().manual_seed(4)
    inputs = {
        "rewards": torch.randn(2, 5, generator=generator),
        "values": torch.randn(2, 5, generator=generator),
        "masks": random_masks(generator, (2, 5)),
        "next_values": torch.randn(2, generator=generator),
    }
    inputs["terminated"] = random_terminated(generator, inputs["masks"])
    copies = {name: tensor.clone() for name, tensor in inputs.items()}
    gae(gamma=0.9, lam=0.9, **inputs)
    for name, tensor in inputs.items():
        assert torch.equal(tensor, copies[name]), name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": torch.zeros(2, 4)}, "values must have the shape"),
        ({"next_values": torch.zeros(2, 5)}, "next_values must have the shape"),
        ({"gamma": 1.5}, r"gamma must be in \[0, 1\]"),
        ({"lam": -0.1}, r"lam must be in \[0, 1\]"),
    ],
)
def test_gae_rejects_bad_arguments(kwargs, message):
    arguments = {
        "rewards": torch.zeros(2, 5),
        "values": torch.zeros(2, 5),
        "masks": torch.ones(2, 5),
        "gamma": 0.9,
        "lam": 0.9,
    }
    with pytest.raises(ValueError, match=message):
        gae(**{**arguments, **kwargs})


# -- linear feature baseline -----------------------------------------------------------------------------------------


def test_linear_baseline_features_hand_example():
    observations = torch.tensor([[[[2.0], [3.0], [5.0]]]])  # T = E = 1, H = 3, obs_dim = 1
    masks = torch.tensor([[[1.0, 1.0, 0.0]]])
    expected = torch.tensor(
        [
            [2.0, 4.0, 0.0, 0.0, 0.0, 1.0],
            [3.0, 9.0, 0.01, 0.0001, 0.000001, 1.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # padding
        ]
    )
    torch.testing.assert_close(linear_baseline_features(observations, masks), expected.reshape(1, 1, 3, 6))


def well_conditioned_problem(seed: int, num_tasks: int = 3, episodes: int = 4, horizon: int = 6, num_features: int = 4):
    """Gaussian features (0 on padding), returns, masks: every task's design matrix has full column rank."""
    generator = torch.Generator().manual_seed(seed)
    masks = random_masks(generator, (num_tasks, episodes, horizon))
    masks[:, :, : horizon // 2] = 1.0  # at least E * H / 2 real rows per task
    features = with_padding(torch.randn(num_tasks, episodes, horizon, num_features, generator=generator), masks, 0.0)
    returns = torch.randn(num_tasks, episodes, horizon, generator=generator) * masks
    return features, returns, masks


def test_fit_linear_baseline_equals_lstsq_per_task():
    features, returns, masks = well_conditioned_problem(seed=5)
    weights = fit_linear_baseline(features, returns, masks, reg_coeff=0.0)
    assert weights.shape == (3, 4) and weights.dtype == features.dtype
    for t in range(3):
        real = masks[t] != 0
        design, targets = features[t][real].double(), returns[t][real].double()
        expected = torch.linalg.lstsq(design, targets.unsqueeze(-1)).solution.squeeze(-1)
        torch.testing.assert_close(weights[t], expected.float())


def test_fit_linear_baseline_batched_equals_the_per_task_loop_and_the_ridge_closed_form():
    features, returns, masks = well_conditioned_problem(seed=6)
    reg = 0.5  # large enough to matter
    weights = fit_linear_baseline(features, returns, masks, reg_coeff=reg)
    for t in range(3):
        alone = fit_linear_baseline(features[t : t + 1], returns[t : t + 1], masks[t : t + 1], reg_coeff=reg)
        torch.testing.assert_close(weights[t], alone[0])
        design, targets = features[t].reshape(-1, 4).double(), returns[t].reshape(-1).double()
        ridge = torch.linalg.solve(design.T @ design + reg * torch.eye(4, dtype=torch.float64), design.T @ targets)
        torch.testing.assert_close(weights[t], ridge.float())


def test_linear_baseline_reproduces_returns_that_are_linear_in_the_features():
    generator = torch.Generator().manual_seed(7)
    num_tasks, episodes, horizon, obs_dim = 2, 8, 10, 2
    masks = random_masks(generator, (num_tasks, episodes, horizon))
    masks[:, 0] = 1.0  # one full-length episode per task: every time feature is excited
    observations = torch.randn(num_tasks, episodes, horizon, obs_dim, generator=generator, dtype=torch.float64)
    features = linear_baseline_features(observations, masks)
    true_weights = torch.randn(num_tasks, 2 * obs_dim + 4, generator=generator, dtype=torch.float64)
    returns = linear_baseline_values(features, true_weights)
    values = fit_and_predict_linear_baseline(observations, returns, masks, reg_coeff=0.0)
    torch.testing.assert_close(values, returns)
    assert values[masks == 0].eq(0).all()


def test_fit_linear_baseline_retries_ill_conditioned_tasks_with_more_regularisation():
    # task 0: two identical columns of 2**10 on one real step, so X^T X = 2**20 * ones(2, 2) is exactly singular and
    # with reg 1e-12 (below float64 resolution at 2**20) its Cholesky factorisation fails; task 1 is well-conditioned
    features = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    features[0, 0, 0] = 2.0**10
    features[1, 0] = 1e-4 * torch.eye(2, dtype=torch.float64)  # X^T X = 1e-8 I: a larger reg would show
    masks = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]], dtype=torch.float64)
    returns = torch.tensor([[[3.0, 0.0]], [[2.0, -1.0]]], dtype=torch.float64)
    reg = 1e-12
    gram = features[0, 0].T @ features[0, 0]
    assert torch.linalg.cholesky_ex(gram + reg * torch.eye(2, dtype=torch.float64)).info != 0  # the retry is needed

    weights = fit_linear_baseline(features, returns, masks, reg_coeff=reg)
    assert torch.isfinite(weights).all()
    # task 0 is still fitted (its prediction is its return, up to the extra regularisation)
    torch.testing.assert_close(linear_baseline_values(features, weights)[0, 0, 0], returns[0, 0, 0])
    # task 1 keeps its own regularisation: (1e-8 + reg) w = 1e-4 y
    torch.testing.assert_close(weights[1], 1e-4 * torch.tensor([2.0, -1.0], dtype=torch.float64) / (1e-8 + reg))


def test_linear_baseline_with_all_zero_observations_and_tiny_reg_is_finite():
    generator = torch.Generator().manual_seed(8)
    masks = random_masks(generator, (2, 3, 5))
    observations = torch.zeros(2, 3, 5, 3)  # the obs and obs**2 columns are all zero: X^T X is rank deficient
    returns = discounted_returns(torch.ones(2, 3, 5), masks, 0.9)
    values = fit_and_predict_linear_baseline(observations, returns, masks, reg_coeff=1e-12)
    assert torch.isfinite(values).all()


def test_linear_baseline_raises_when_no_regularisation_can_help():
    masks = torch.ones(2, 3, 5)
    features = linear_baseline_features(torch.zeros(2, 3, 5, 3), masks)
    returns = torch.ones(2, 3, 5)
    # reg 0 stays 0 through the retries, and the zero columns keep X^T X singular
    with pytest.raises(RuntimeError, match=rf"task\(s\) \[0, 1\].*10\*\*{MAX_REG_INCREASES}"):
        fit_linear_baseline(features, returns, masks, reg_coeff=0.0)
    # a non-finite return on a real step of task 1 makes its solution non-finite whatever the regularisation
    returns[1, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match=r"task\(s\) \[1\]"):
        fit_linear_baseline(features, returns, masks, reg_coeff=1e-5)
    with pytest.raises(ValueError, match="reg_coeff must be"):
        fit_linear_baseline(features, returns, masks, reg_coeff=-1.0)


# -- normalisation ---------------------------------------------------------------------------------------------------


def test_normalize_advantages_hand_example():
    advantages = torch.tensor([[[1.0, 2.0, 3.0, 99.0]], [[5.0, 5.0, 0.0, 0.0]]])
    masks = torch.tensor([[[1.0, 1.0, 1.0, 0.0]], [[1.0, 1.0, 0.0, 0.0]]])
    # task 0: mean 2, population std sqrt(2 / 3); task 1: std 0, so everything maps to 0
    scale = (2.0 / 3.0) ** -0.5
    expected = torch.tensor([[[-scale, 0.0, scale, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])
    for weighting in WEIGHTINGS:  # one episode per task: the two weightings agree
        torch.testing.assert_close(normalize_advantages(advantages, masks, weighting=weighting), expected)


def test_step_weighting_normalises_over_a_tasks_real_steps():
    generator = torch.Generator().manual_seed(9)
    masks = random_masks(generator, (4, 5, 6))
    # each task on its own scale and offset
    advantages = torch.randn(4, 5, 6, generator=generator, dtype=torch.float64) * torch.tensor(
        [0.1, 1.0, 10.0, 100.0], dtype=torch.float64
    ).reshape(4, 1, 1) + torch.arange(4, dtype=torch.float64).reshape(4, 1, 1)
    normalized = normalize_advantages(advantages, masks, weighting="step")
    assert normalized[masks == 0].eq(0).all()
    for t in range(4):
        real = normalized[t][masks[t] != 0]
        torch.testing.assert_close(real.mean(), torch.tensor(0.0, dtype=torch.float64))
        torch.testing.assert_close(real.std(correction=0), torch.tensor(1.0, dtype=torch.float64))


def episode_weighted_normalize(advantages: torch.Tensor, lengths: list[int], eps: float = 1e-8) -> torch.Tensor:
    """pytorch-maml-rl's ``weighted_normalize`` for one task, written out: ``advantages`` ``[H, E]`` (time first,
    as it lays episodes out) with episode ``e`` real on its first ``lengths[e]`` steps."""
    num_episodes = advantages.shape[1]
    real = [advantages[: lengths[e], e] for e in range(num_episodes)]
    mean = sum(episode.mean() for episode in real) / num_episodes  # the mean of the episodes' time-averages
    mean_square = sum((episode - mean).square().mean() for episode in real) / num_episodes
    out = torch.zeros_like(advantages)
    for e in range(num_episodes):
        out[: lengths[e], e] = (real[e] - mean) / (mean_square.sqrt() + eps)
    return out


def test_episode_weighting_is_pytorch_maml_rls_weighted_normalize():
    generator = torch.Generator().manual_seed(11)
    masks = random_masks(generator, (3, 5, 7))
    advantages = torch.randn(3, 5, 7, generator=generator, dtype=torch.float64) * 3.0 + 1.0
    normalized = normalize_advantages(advantages, masks, weighting="episode")
    for t in range(3):
        lengths = [int(length) for length in masks[t].sum(dim=-1)]
        expected = episode_weighted_normalize(advantages[t].T, lengths).T
        torch.testing.assert_close(normalized[t], expected)
    # unequal lengths make it another normalisation than the step weighting's
    assert not torch.allclose(normalized, normalize_advantages(advantages, masks, weighting="step"))


def test_average_weights_sum_to_one_per_task_and_give_each_episode_its_share():
    generator = torch.Generator().manual_seed(12)
    masks = random_masks(generator, (3, 4, 6))
    lengths = masks.sum(dim=-1)
    episode = average_weights(masks, "episode")
    step = average_weights(masks, "step")
    for weights in (episode, step):
        torch.testing.assert_close(weights.sum(dim=(1, 2)), torch.ones(3))
        assert weights[masks == 0].eq(0).all()
    torch.testing.assert_close(episode.sum(dim=-1), torch.full((3, 4), 0.25))  # E = 4 episodes, equal shares
    torch.testing.assert_close(step.sum(dim=-1), lengths / lengths.sum(dim=-1, keepdim=True))
    full = torch.ones(2, 3, 5)
    torch.testing.assert_close(average_weights(full, "episode"), average_weights(full, "step"))
    with pytest.raises(ValueError, match="unknown weighting 'trial'; allowed: episode, step"):
        average_weights(masks, "trial")


# -- padding is ignored ----------------------------------------------------------------------------------------------


def test_padded_entries_do_not_change_any_result():
    generator = torch.Generator().manual_seed(10)
    shape = (3, 4, 6)
    masks = random_masks(generator, shape)
    rewards = torch.randn(shape, generator=generator)
    values = torch.randn(shape, generator=generator)
    observations = torch.randn(*shape, 2, generator=generator)
    terminated = random_terminated(generator, masks)
    next_values = torch.randn(shape[:-1], generator=generator)

    def results(rewards, values, observations, terminated):
        returns = discounted_returns(rewards, masks, 0.9)
        features = linear_baseline_features(observations, masks)
        advantages = gae(rewards, values, masks, 0.9, 0.95, next_values=next_values, terminated=terminated)
        return (
            returns,
            advantages,
            features,
            fit_linear_baseline(features, returns, masks),
            fit_and_predict_linear_baseline(observations, returns, masks),
            normalize_advantages(advantages, masks, weighting="episode"),
            normalize_advantages(advantages, masks, weighting="step"),
        )

    clean = results(with_padding(rewards, masks, 0.0), values, observations, terminated)
    # NaN in every padded reward, value and observation, and terminated flags on padded steps
    dirty = results(
        with_padding(rewards, masks, float("nan")),
        with_padding(values, masks, float("nan")),
        with_padding(observations, masks, float("nan")),
        terminated | (masks == 0),
    )
    for got, want in zip(dirty, clean, strict=True):
        torch.testing.assert_close(got, want)
