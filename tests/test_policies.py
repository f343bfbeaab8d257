"""MLP policies with explicit parameters: unbatched vs task-batched params, functional_call / vmap, gradients, KL."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from metarl.agents.policies import MIN_LOG_STD, CategoricalMLPPolicy, GaussianMLPPolicy, batch_params, kl, make_policy
from torch.distributions import Categorical, Independent, Normal, kl_divergence
from torch.func import functional_call, vmap

import metarl
from metarl.rollout import collect_episodes

OBS_DIM, ACT_DIM, NUM_ACTIONS = 3, 2, 4
T, E, H = 3, 5, 4  # tasks, episodes per task, steps


def gaussian() -> GaussianMLPPolicy:
    torch.manual_seed(0)
    return GaussianMLPPolicy(OBS_DIM, ACT_DIM, hidden_sizes=(8, 6), init_log_std=-0.5)


def categorical() -> CategoricalMLPPolicy:
    torch.manual_seed(0)
    return CategoricalMLPPolicy(OBS_DIM, NUM_ACTIONS, hidden_sizes=(8, 6), activation="relu")


POLICIES = {"gaussian": gaussian, "categorical": categorical}


@pytest.fixture(params=sorted(POLICIES))
def policy(request: pytest.FixtureRequest) -> GaussianMLPPolicy | CategoricalMLPPolicy:
    return POLICIES[request.param]()


def action_shape(policy) -> tuple[int, ...]:
    return (ACT_DIM,) if isinstance(policy, GaussianMLPPolicy) else ()


def sample_actions(policy, batch_shape: tuple[int, ...]) -> torch.Tensor:
    if isinstance(policy, GaussianMLPPolicy):
        return torch.randn(*batch_shape, ACT_DIM)
    return torch.randint(0, NUM_ACTIONS, batch_shape)


def task_params(policy, seed: int = 1) -> dict[str, torch.Tensor]:
    """T different parameter sets: the policy's params plus per-task noise, batched over a leading dim T."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: value.detach() + 0.3 * torch.randn((T, *value.shape), generator=generator)
        for name, value in policy.named_parameters()
    }


def select(params: dict[str, torch.Tensor], t: int) -> dict[str, torch.Tensor]:
    return {name: value[t] for name, value in params.items()}


def dist_stats(distribution) -> torch.Tensor:
    """The numbers that pin a distribution down: mean and std (Gaussian) or logits (categorical)."""
    if isinstance(distribution, Independent):
        return torch.stack([distribution.mean, distribution.stddev])
    return distribution.logits


# ---------------------------------------------------------------------------------------------------------------------
# parameters and shapes


def test_parameter_names_and_init() -> None:
    policy = gaussian()
    params = dict(policy.named_parameters())
    names = [f"layers.{i}.{kind}" for i in range(3) for kind in ("weight", "bias")]
    assert sorted(params) == sorted([*names, "log_std"])
    assert params["layers.0.weight"].shape == (8, OBS_DIM)
    assert params["layers.2.weight"].shape == (ACT_DIM, 6)
    assert torch.equal(params["log_std"], torch.full((ACT_DIM,), -0.5))
    for i in range(3):
        assert torch.equal(params[f"layers.{i}.bias"], torch.zeros_like(params[f"layers.{i}.bias"]))
        weight = params[f"layers.{i}.weight"]
        bound = math.sqrt(6.0 / sum(weight.shape))  # xavier_uniform
        assert weight.abs().max() <= bound
    assert all(isinstance(value, torch.nn.Parameter) for value in params.values())
    assert "log_std" not in dict(categorical().named_parameters())


def test_linear_policy_without_hidden_layers() -> None:
    policy = GaussianMLPPolicy(OBS_DIM, ACT_DIM, hidden_sizes=())
    assert sorted(dict(policy.named_parameters())) == ["layers.0.bias", "layers.0.weight", "log_std"]
    assert policy.distribution(torch.randn(5, OBS_DIM)).mean.shape == (5, ACT_DIM)


@pytest.mark.parametrize("batch_shape", [(), (5,), (4, 5)])
def test_unbatched_shapes(policy, batch_shape: tuple[int, ...]) -> None:
    observations = torch.randn(*batch_shape, OBS_DIM)
    actions = sample_actions(policy, batch_shape)
    distribution = policy.distribution(observations)
    assert distribution.batch_shape == batch_shape
    assert distribution.event_shape == action_shape(policy)
    assert policy.log_prob(observations, actions).shape == batch_shape
    assert policy.entropy(observations).shape == batch_shape
    assert policy.act(observations).shape == (*batch_shape, *action_shape(policy))
    # own params passed explicitly == params=None
    explicit = policy.distribution(observations, dict(policy.named_parameters()))
    assert torch.equal(dist_stats(explicit), dist_stats(distribution))


@pytest.mark.parametrize("middle", [(), (E,), (E, H)])
def test_batched_params_equal_per_task_loop(policy, middle: tuple[int, ...]) -> None:
    params = task_params(policy)
    observations = torch.randn(T, *middle, OBS_DIM)
    actions = sample_actions(policy, (T, *middle))
    batched = policy.distribution(observations, params)
    assert batched.batch_shape == (T, *middle)
    log_probs = policy.log_prob(observations, actions, params)
    entropies = policy.entropy(observations, params)
    assert log_probs.shape == entropies.shape == (T, *middle)
    for t in range(T):
        single = policy.distribution(observations[t], select(params, t))
        torch.testing.assert_close(_task(batched, t), dist_stats(single))
        torch.testing.assert_close(log_probs[t], single.log_prob(actions[t]))
        torch.testing.assert_close(entropies[t], single.entropy())
    # the T parameter sets really differ
    assert not torch.allclose(_task(batched, 0), _task(batched, 1))


def _task(distribution, t: int) -> torch.Tensor:
    stats = dist_stats(distribution)
    return stats[:, t] if isinstance(distribution, Independent) else stats[t]


def test_functional_call_and_vmap_match_batched_path(policy) -> None:
    params = task_params(policy)
    observations = torch.randn(T, E, OBS_DIM)
    actions = sample_actions(policy, (T, E))
    batched = policy.log_prob(observations, actions, params)

    for t in range(T):
        via_call = functional_call(policy, select(params, t), (observations[t],))
        torch.testing.assert_close(via_call.log_prob(actions[t]), batched[t])

    def per_task(p, obs, act):
        return functional_call(policy, p, (obs,)).log_prob(act)

    torch.testing.assert_close(vmap(per_task)(params, observations, actions), batched)

    def per_task_stats(p, obs):
        return dist_stats(functional_call(policy, p, (obs,)))

    stats = vmap(per_task_stats)(params, observations)
    want = dist_stats(policy.distribution(observations, params))
    torch.testing.assert_close(stats.movedim(0, 1) if isinstance(policy, GaussianMLPPolicy) else stats, want)


def test_batched_gradients_are_per_task(policy) -> None:
    observations = torch.randn(T, E, OBS_DIM)
    actions = sample_actions(policy, (T, E))
    shared = dict(policy.named_parameters())
    batched = batch_params(shared, T)
    assert all(batched[name].shape == (T, *value.shape) for name, value in shared.items())
    assert all(batched[name].data_ptr() == value.data_ptr() for name, value in shared.items())  # views

    # one task's loss: its mean negative log-likelihood (different data per task -> different grads)
    losses = -policy.log_prob(observations, actions, batched).mean(dim=-1)
    grads = torch.autograd.grad(losses.sum(), list(batched.values()), retain_graph=True)
    for t in range(T):
        loss_t = -policy.log_prob(observations[t], actions[t]).mean()
        want = torch.autograd.grad(loss_t, list(shared.values()))
        for name, got, expected in zip(shared, grads, want, strict=True):
            torch.testing.assert_close(got[t], expected, msg=name)
    assert not torch.allclose(grads[0][0], grads[0][1])

    # gradients also flow back through the expand into the shared parameters (sum over tasks)
    losses.sum().backward()
    for (name, value), grad in zip(shared.items(), grads, strict=True):
        torch.testing.assert_close(value.grad, grad.sum(dim=0), msg=name)

    # a MAML-style inner step gives batched adapted params the policy accepts
    adapted = {name: value - 0.1 * grad for (name, value), grad in zip(batched.items(), grads, strict=True)}
    assert policy.act(observations, adapted).shape == (T, E, *action_shape(policy))


# ---------------------------------------------------------------------------------------------------------------------
# distributions


def test_gaussian_log_prob_sums_over_action_dims() -> None:
    policy = gaussian()
    observations, actions = torch.randn(E, OBS_DIM), torch.randn(E, ACT_DIM)
    mean = policy.distribution(observations).mean
    std = policy.log_std.exp()
    manual = (-((actions - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(dim=-1)
    torch.testing.assert_close(policy.log_prob(observations, actions), manual)
    assert torch.equal(policy.distribution(observations).stddev, std.expand(E, ACT_DIM))
    entropy = (0.5 + 0.5 * math.log(2 * math.pi) + torch.log(std)).sum()
    torch.testing.assert_close(policy.entropy(observations), entropy.expand(E))


def test_categorical_log_prob_is_log_softmax() -> None:
    policy = categorical()
    observations, actions = torch.randn(E, OBS_DIM), torch.randint(0, NUM_ACTIONS, (E,))
    logits = policy.layers[2](torch.relu(policy.layers[1](torch.relu(policy.layers[0](observations)))))
    want = torch.log_softmax(logits, dim=-1).gather(-1, actions[:, None]).squeeze(-1)
    torch.testing.assert_close(policy.log_prob(observations, actions), want)


def test_kl_is_zero_for_identical_and_matches_torch(policy) -> None:
    observations = torch.randn(T, E, OBS_DIM)
    params = task_params(policy)
    old = policy.distribution(observations, params)
    same = kl(old, policy.distribution(observations, params))
    assert same.shape == (T, E)
    torch.testing.assert_close(same, torch.zeros(T, E))

    shifted = {name: value + 0.2 for name, value in params.items()}
    new = policy.distribution(observations, shifted)
    got = policy.kl_divergence(old, observations, shifted)
    assert got.shape == (T, E) and bool((got > 0).all())
    torch.testing.assert_close(got, kl_divergence(old, new))
    torch.testing.assert_close(kl(old, new), got)


def test_categorical_kl_with_zero_probabilities() -> None:
    old = Categorical(logits=torch.tensor([[0.0, 0.0, -math.inf]]))  # probabilities 1/2, 1/2, 0
    new = Categorical(probs=torch.tensor([[0.25, 0.5, 0.25]]))
    torch.testing.assert_close(kl(old, new), torch.tensor([0.5 * math.log(2.0)]))
    torch.testing.assert_close(kl(old, new), kl_divergence(old, new))
    assert bool(torch.isinf(kl(new, old)).all())


def test_kl_rejects_other_distributions() -> None:
    normal = Normal(torch.zeros(2), torch.ones(2))
    with pytest.raises(TypeError, match="Normal"):
        kl(normal, normal)
    with pytest.raises(TypeError):
        kl(Independent(normal, 1), Categorical(logits=torch.zeros(2)))


# ---------------------------------------------------------------------------------------------------------------------
# acting


def test_act_shapes_dtypes_and_determinism(policy) -> None:
    params = task_params(policy)
    observations = torch.randn(T, E, OBS_DIM)
    torch.manual_seed(3)
    actions = policy.act(observations, params)
    assert actions.shape == (T, E, *action_shape(policy))
    assert not actions.requires_grad
    torch.manual_seed(3)
    assert torch.equal(policy.act(observations, params), actions)  # global RNG drives sampling

    greedy = policy.act(observations, params, deterministic=True)
    assert torch.equal(greedy, policy.act(observations, params, deterministic=True))
    distribution = policy.distribution(observations, params)
    if isinstance(policy, GaussianMLPPolicy):
        assert actions.dtype == greedy.dtype == torch.float32
        assert torch.equal(greedy, distribution.mean)
    else:
        assert actions.dtype == greedy.dtype == torch.int64
        assert torch.equal(greedy, distribution.logits.argmax(dim=-1))
        assert bool(((actions >= 0) & (actions < NUM_ACTIONS)).all())


def test_gaussian_actions_are_not_clipped() -> None:
    policy = GaussianMLPPolicy(OBS_DIM, ACT_DIM, init_log_std=math.log(10.0))
    torch.manual_seed(0)
    actions = policy.act(torch.zeros(1000, OBS_DIM))
    assert actions.abs().max() > 5.0


def test_float64_observations_are_cast(policy) -> None:
    observations = torch.randn(E, OBS_DIM, dtype=torch.float64)
    torch.testing.assert_close(
        dist_stats(policy.distribution(observations)), dist_stats(policy.distribution(observations.float()))
    )


# ---------------------------------------------------------------------------------------------------------------------
# make_policy and errors

EXPECTED_POLICY = {
    "MetaRL/Bandit-v0": CategoricalMLPPolicy,
    "MetaRL/TabularMDP-v0": CategoricalMLPPolicy,
    "MetaRL/Navigation2D-v0": GaussianMLPPolicy,
    "MetaRL/SparsePointRobot-v0": GaussianMLPPolicy,
}


@pytest.mark.parametrize("env_id", sorted(EXPECTED_POLICY))
def test_make_policy_for_suite_families(env_id: str) -> None:
    assert env_id in metarl.registry.list_families()
    family = metarl.registry.make_family(env_id)
    policy = make_policy(family.observation_space, family.action_space, hidden_sizes=(16,))
    assert type(policy) is EXPECTED_POLICY[env_id]
    assert policy.obs_dim == family.observation_space.shape[0]


def test_make_policy_rolls_out_every_family(family) -> None:
    """Registry-wide: the policy for each family plays a batch of its tasks with task-batched params."""
    num_tasks, episodes = 2, 2
    policy = make_policy(family.observation_space, family.action_space, hidden_sizes=(16,))
    tasks = family.sample_tasks(np.random.default_rng(0), num_tasks)
    envs = family.make_vec_env(num_tasks * episodes)
    params = batch_params(dict(policy.named_parameters()), num_tasks)
    torch.manual_seed(0)
    batch = collect_episodes(envs, family, tasks, episodes, policy.act, params=params, seed=0)
    assert batch.actions.shape == (num_tasks, episodes, family.horizon, *family.action_space.shape)
    assert bool((batch.masks[..., 0] == 1).all())
    if isinstance(family.action_space, gym.spaces.Discrete):
        assert batch.actions.dtype == torch.int64
        assert bool((batch.actions < family.action_space.n).all())
    envs.close()


def test_collect_episodes_on_navigation_with_adapted_params() -> None:
    family = metarl.registry.make_family("MetaRL/Navigation2D-v0")
    policy = make_policy(family.observation_space, family.action_space)
    tasks = family.sample_tasks(np.random.default_rng(0), T)
    envs = family.make_vec_env(T * E)
    params = task_params(policy)  # T different parameter sets, as after MAML's adaptation
    torch.manual_seed(0)
    batch = collect_episodes(envs, family, tasks, E, policy.act, params=params, seed=0)
    assert batch.actions.shape == (T, E, family.horizon, 2)
    assert batch.actions.dtype == torch.float32
    assert batch.observations.shape == (T, E, family.horizon, 2)
    # the recorded actions are possible under each task's own parameters (finite log-probs)
    log_probs = policy.log_prob(batch.observations, batch.actions, params)
    assert log_probs.shape == (T, E, family.horizon)
    assert bool(torch.isfinite(log_probs).all())


@pytest.mark.parametrize(
    ("observation_space", "action_space", "match"),
    [
        (gym.spaces.Box(0, 1, (2,)), gym.spaces.MultiDiscrete([2, 3]), "MultiDiscrete"),
        (gym.spaces.Box(0, 1, (2,)), gym.spaces.Dict({"a": gym.spaces.Discrete(2)}), "Dict"),
        (gym.spaces.Box(0, 1, (2,)), gym.spaces.Box(0, 1, (2, 2)), "1-D"),
        (gym.spaces.Box(0, 1, (2,)), gym.spaces.Discrete(3, start=1), "starting at 0"),
        (gym.spaces.Box(0, 255, (8, 8)), gym.spaces.Discrete(3), "observation space"),
        (gym.spaces.Discrete(4), gym.spaces.Discrete(3), "observation space"),
    ],
)
def test_make_policy_rejects_unsupported_spaces(observation_space, action_space, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_policy(observation_space, action_space)


@pytest.mark.parametrize("policy_class", [GaussianMLPPolicy, CategoricalMLPPolicy])
def test_bad_constructor_arguments(policy_class) -> None:
    with pytest.raises(ValueError, match=r"\['relu', 'tanh'\].*'sigmoid'"):
        policy_class(OBS_DIM, 2, activation="sigmoid")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
            policy_class(OBS_DIM, 2, hidden_sizes=(8, bad))
    with pytest.raises(ValueError, match="hidden_sizes"):
        policy_class(OBS_DIM, 2, hidden_sizes=64)
    with pytest.raises(ValueError, match="obs_dim"):
        policy_class(0, 2)
    with pytest.raises(ValueError, match=r"action_dim|num_actions"):
        policy_class(OBS_DIM, 0)
    with pytest.raises(ValueError, match="activation"):
        make_policy(gym.spaces.Box(0, 1, (2,)), gym.spaces.Discrete(2), activation="gelu")


def test_bad_params_and_observations(policy) -> None:
    params = task_params(policy)
    with pytest.raises(ValueError, match="lacks"):
        policy.distribution(torch.randn(T, OBS_DIM), {"layers.0.weight": params["layers.0.weight"]})
    mixed = {**params, "layers.1.bias": params["layers.1.bias"][0]}
    with pytest.raises(ValueError, match=r"layers\.1\.bias"):
        policy.distribution(torch.randn(T, OBS_DIM), mixed)
    with pytest.raises(ValueError, match="do not fit"):
        policy.distribution(torch.randn(T + 1, E, OBS_DIM), params)
    with pytest.raises(ValueError, match="obs_dim"):
        policy.distribution(torch.randn(E, OBS_DIM + 1))
    with pytest.raises(ValueError, match="num_tasks"):
        batch_params(dict(policy.named_parameters()), 0)
    with pytest.raises(ValueError, match="init_log_std"):
        GaussianMLPPolicy(OBS_DIM, ACT_DIM, init_log_std=float("nan"))


def assert_products_are_the_gradients_derivative(product, gradient, leaves) -> None:
    """``product(v)`` equals the derivative of ``gradient`` (autograd's, of ``leaves``, with its graph) along random
    ``v``: a Hessian-vector product by double backward."""
    for _ in range(2):
        vector = {name: torch.randn_like(value) for name, value in leaves.items()}
        directional = sum((g * vector[name]).sum() for g, name in zip(gradient, leaves, strict=True))
        expected = torch.autograd.grad(directional, list(leaves.values()), retain_graph=True)
        got = product(vector)
        assert list(got) == list(leaves)
        for name, want in zip(leaves, expected, strict=True):
            torch.testing.assert_close(got[name], want, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
@pytest.mark.parametrize("lead", [(), (3,)])
def test_fisher_product_equals_the_kl_hessian(kind, lead):
    """The closed-form Fisher-vector product is the Hessian of the weighted KL(old ‖ new) at new = old."""
    torch.manual_seed(0)
    policy = (GaussianMLPPolicy(3, 2) if kind == "gaussian" else CategoricalMLPPolicy(3, 4)).double()
    params = {
        name: (value.detach().expand(*lead, *value.shape) + 0.1 * torch.randn(*lead, *value.shape, dtype=torch.float64))
        for name, value in policy.named_parameters()
    }
    if kind == "gaussian":  # one entry held by the clamp: its block of the Fisher is zero
        params["log_std"] = params["log_std"].clone()
        params["log_std"][..., 0] = MIN_LOG_STD - 1.0
    observations = torch.randn(*lead, 5, 7, 3, dtype=torch.float64)
    weights = torch.rand(*lead, 5, 7, dtype=torch.float64)
    weights[..., 0, 4:] = 0.0  # padded steps, skipped by the product
    if lead:
        weights[1, 3] = 0.0
    old = policy.distribution(observations, params)
    old = (
        torch.distributions.Independent(torch.distributions.Normal(old.mean.detach(), old.stddev.detach()), 1)
        if kind == "gaussian"
        else torch.distributions.Categorical(logits=old.logits.detach())
    )
    leaves = {name: value.clone().requires_grad_() for name, value in params.items()}
    weighted_kl = (kl(old, policy.distribution(observations, leaves)) * weights).sum()
    gradient = torch.autograd.grad(weighted_kl, list(leaves.values()), create_graph=True)
    assert_products_are_the_gradients_derivative(policy.fisher_product(observations, params, weights), gradient, leaves)


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
@pytest.mark.parametrize("lead", [(), (3,)])
@pytest.mark.parametrize(
    ("activation", "hidden_sizes"), [("tanh", (5, 4)), ("relu", (5, 4)), ("tanh", (6,)), ("tanh", ())]
)
def test_log_likelihood_derivatives_equal_autograd(kind, lead, activation, hidden_sizes):
    """The written-out passes give autograd's gradient of Σ_i c_i log π(a_i | s_i) and its Hessian times a vector
    (double backward), also with zero coefficients (the samples they skip) and a log_std entry held by the clamp."""
    torch.manual_seed(1)
    policy = (
        GaussianMLPPolicy(3, 2, (5, 4), activation)
        if kind == "gaussian"
        else CategoricalMLPPolicy(3, 4, (5, 4), activation)
    ).double()
    params = {
        name: (value.detach().expand(*lead, *value.shape) + 0.3 * torch.randn(*lead, *value.shape, dtype=torch.float64))
        for name, value in policy.named_parameters()
    }
    if kind == "gaussian":
        params["log_std"] = params["log_std"].clone()
        params["log_std"][..., 0] = MIN_LOG_STD - 1.0
    observations = torch.randn(*lead, 5, 7, 3, dtype=torch.float64)
    actions = policy.act(observations, params)
    coefficients = torch.randn(*lead, 5, 7, dtype=torch.float64)
    coefficients[..., 1, 3:] = 0.0  # a terminated episode's padded steps
    if lead:
        coefficients[0, 2] = 0.0  # more of them in one task: the others' rows pad it
    leaves = {name: value.clone().requires_grad_() for name, value in params.items()}
    objective = (policy.log_prob(observations, actions, leaves) * coefficients).sum()
    gradient = torch.autograd.grad(objective, list(leaves.values()), create_graph=True)
    gradient_got, product = policy.log_likelihood_derivatives(observations, actions, params, coefficients)
    assert list(gradient_got) == list(params)
    for name, want in zip(leaves, gradient, strict=True):
        # with the clamped σ = 1e-6, a - μ ~ 1e-6 of a ~ 1 keeps ~1e-10 of float64's precision: the mean's
        # gradients (~1e6) agree to ~1e-10 of their largest entry, not entry by entry
        scale = want.abs().max().item()
        torch.testing.assert_close(gradient_got[name], want, rtol=1e-10, atol=1e-8 * max(1.0, scale), msg=name)
    assert_products_are_the_gradients_derivative(product, gradient, leaves)


def test_a_raised_log_std_floor_holds_and_the_written_out_products_follow_it():
    torch.manual_seed(2)
    policy = GaussianMLPPolicy(3, 2, (5,), min_log_std=-1.0).double()
    params = {name: value.detach().clone() for name, value in policy.named_parameters()}
    params["log_std"][0] = -1.5  # below the floor: held at -1.0, no gradient
    observations = torch.randn(4, 6, 3, dtype=torch.float64)
    assert torch.allclose(
        policy.distribution(observations, params).stddev[..., 0], torch.tensor(math.exp(-1.0)).double()
    )
    actions = policy.act(observations, params)
    coefficients = torch.randn(4, 6, dtype=torch.float64)
    leaves = {name: value.clone().requires_grad_() for name, value in params.items()}
    objective = (policy.log_prob(observations, actions, leaves) * coefficients).sum()
    gradient = torch.autograd.grad(objective, list(leaves.values()), create_graph=True)
    gradient_got, product = policy.log_likelihood_derivatives(observations, actions, params, coefficients)
    assert gradient_got["log_std"][0] == 0.0
    for name, want in zip(leaves, gradient, strict=True):
        torch.testing.assert_close(gradient_got[name], want, rtol=1e-10, atol=1e-10, msg=name)
    assert_products_are_the_gradients_derivative(product, gradient, leaves)
    with pytest.raises(ValueError, match=r"init_log_std 0\.0 is below min_log_std 0\.5"):
        GaussianMLPPolicy(3, 2, min_log_std=0.5)
