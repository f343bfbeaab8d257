"""Returns, advantages and baselines for padded episode batches, as small pure functions.

Everything here works on tensors whose **last** dim is time (``[..., H]``; an :class:`metarl.rollout.EpisodeBatch`
gives ``[T, E, H]``), with ``masks`` 1 on the steps an episode really took and 0 on the padding after it ended
(a mask is read as "nonzero means real"; each row is assumed to be a run of 1s followed by 0s). Padded entries never
leak into a result: they are selected away with ``torch.where`` rather than multiplied by 0, so even NaN padding is
harmless. No function writes into its inputs, so all of them are safe under autograd, and they run on whatever
device their inputs live on.

References:
    Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage Estimation", 2016
    (https://arxiv.org/abs/1506.02438); Duan et al., "Benchmarking Deep Reinforcement Learning for Continuous
    Control", 2016, supplementary material 2 (https://arxiv.org/abs/1604.06778), the linear feature baseline that
    Finn et al., "Model-Agnostic Meta-Learning", 2017 (https://arxiv.org/abs/1703.03400) uses for MAML-RL.
"""

from __future__ import annotations

import torch

__all__ = [
    "WEIGHTINGS",
    "average_weights",
    "discounted_returns",
    "fit_and_predict_linear_baseline",
    "fit_linear_baseline",
    "gae",
    "linear_baseline_features",
    "linear_baseline_values",
    "normalize_advantages",
]

WEIGHTINGS = ("episode", "step")
"""How an average over a task's episodes of unequal length weighs them (:func:`average_weights`)."""

MAX_REG_INCREASES = 5
"""How many times ``fit_linear_baseline`` multiplies the ridge coefficient of a failing task by 10 before raising."""
_TIME_SCALE = 100.0
"""Time features are ``t / 100`` (as in rllab / pytorch-maml-rl), so their powers stay O(1) for horizons ~100."""


# -- returns and advantages ------------------------------------------------------------------------------------------


def discounted_returns(rewards: torch.Tensor, masks: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go within each episode: ``G_h = r_h + gamma * mask_{h+1} * G_{h+1}``, and 0 where ``mask_h == 0``.

    Args:
        rewards: ``[..., H]`` rewards.
        masks: ``[..., H]``, 1 on real steps and 0 on padding.
        gamma: discount factor in ``[0, 1]``.

    Returns:
        ``[..., H]`` discounted returns, in the dtype of ``rewards``.
    """
    _check_time_major(rewards=rewards, masks=masks)
    _check_unit_interval(gamma=gamma)
    valid = masks != 0
    # the return stops at the end of the episode: nothing after it (padding) is discounted into it
    continues = _shift_left(valid, fill=False)
    return _reverse_discounted_sum(torch.where(valid, rewards, 0.0), gamma * continues.to(rewards.dtype))


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    masks: torch.Tensor,
    gamma: float,
    lam: float,
    next_values: torch.Tensor | None = None,
    terminated: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalized advantage estimation, with time-limit truncation bootstrapped from ``next_values``.

    ``A_h = delta_h + gamma * lam * A_{h+1}`` while the episode goes on, with the TD error
    ``delta_h = r_h + gamma * V_next_h - V(s_h)``. ``V_next_h`` is ``V(s_{h+1})`` inside an episode; after its last
    real step it is 0 if the episode terminated there, and otherwise (truncated at the horizon, or by a time limit
    shorter than it) ``next_values`` if given, else 0. With ``lam=1`` and ``values=0`` (and no ``next_values``) this
    is :func:`discounted_returns`; with ``lam=0`` it is the one-step TD error.

    Args:
        rewards: ``[..., H]`` rewards.
        values: ``[..., H]`` value estimates ``V(s_h)`` of the observation before each step.
        masks: ``[..., H]``, 1 on real steps and 0 on padding.
        gamma: discount factor in ``[0, 1]``.
        lam: GAE lambda in ``[0, 1]`` (0: one-step TD error, 1: Monte-Carlo return minus value).
        next_values: ``[...]`` value of the observation after each episode's last step (``V`` of
            ``EpisodeBatch.last_observations``), used to bootstrap episodes that did not terminate; ``None``: 0.
        terminated: ``[..., H]`` bool, True on the step that ended an episode by termination; ``None``: no step
            terminated.

    Returns:
        ``[..., H]`` advantages, 0 where ``masks`` is 0.
    """
    _check_time_major(rewards=rewards, values=values, masks=masks, terminated=terminated)
    _check_unit_interval(gamma=gamma, lam=lam)
    if next_values is not None and next_values.shape != rewards.shape[:-1]:
        raise ValueError(
            f"next_values must have the shape of rewards without its time dim, {tuple(rewards.shape[:-1])}, "
            f"got {tuple(next_values.shape)}"
        )
    valid = masks != 0
    ended_by_termination = torch.zeros_like(valid) if terminated is None else (terminated != 0) & valid
    # step h hands over to step h + 1 only if h + 1 is real and the episode did not terminate at h
    continues = _shift_left(valid, fill=False) & ~ended_by_termination & valid

    # bootstrap value if not done: V(s_{h+1}) inside the episode, V(last obs) after a truncation, 0 after termination
    following_values = torch.where(continues, _shift_left(values, fill=0.0), 0.0)
    if next_values is not None:
        truncated_here = valid & ~continues & ~ended_by_termination
        following_values = torch.where(truncated_here, next_values.unsqueeze(-1), following_values)
    deltas = torch.where(valid, rewards + gamma * following_values - values, 0.0)
    return _reverse_discounted_sum(deltas, (gamma * lam) * continues.to(deltas.dtype))


def average_weights(masks: torch.Tensor, weighting: str) -> torch.Tensor:
    """The weights of each task's average over its real steps: ``Σ w · x`` is the average of ``x``.

    When episodes end early (a termination), their lengths differ and two averages are in use:

    * ``"episode"``: every episode of a task weighs the same and its real steps share that weight,
      ``w = 1 / (E_t L_e)`` (``E_t`` the task's episodes, ``L_e`` the episode's length): each episode's time-average,
      then the mean over episodes. pytorch-maml-rl's ``weighted_mean`` / ``weighted_normalize``.
    * ``"step"``: every real step of a task weighs the same, ``w = 1 / n_t`` (``n_t`` the task's real steps), so a
      long episode counts more than a short one. rllab's flattened samples (the MAML paper's code), and
      Stable-Baselines3's rollout buffer.

    With episodes of equal length the two are the same average.

    Args:
        masks: ``[T, ..., H]``, 1 on real steps and 0 on padding; every dim between the first (tasks) and the last
            (time) indexes episodes.
        weighting: ``"episode"`` or ``"step"``.

    Returns:
        ``[T, ..., H]`` weights in the dtype of ``masks`` (float32 if it is not floating point), 0 on padding, summing
        to 1 over each task that has a real step (a task without one gets all zeros).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
    if masks.dim() < 2:
        raise ValueError(f"masks must be [T, ..., H] with at least 2 dims, got shape {tuple(masks.shape)}")
    dtype = masks.dtype if masks.is_floating_point() else torch.float32
    valid = (masks != 0).to(dtype)
    task_dims = tuple(range(1, masks.dim()))
    if weighting == "step":
        return valid / valid.sum(dim=task_dims, keepdim=True).clamp(min=1)
    lengths = valid.sum(dim=-1, keepdim=True)
    # episodes without a real step (none in a collected batch) take no share of the task's weight
    episodes = (lengths > 0).to(dtype).sum(dim=task_dims, keepdim=True).clamp(min=1)
    return valid / (lengths.clamp(min=1) * episodes)


def normalize_advantages(
    advantages: torch.Tensor, masks: torch.Tensor, *, weighting: str, eps: float = 1e-8
) -> torch.Tensor:
    """Standardise advantages per task: subtract the weighted mean, divide by the weighted (population) std + ``eps``.

    The mean and the variance are the task's averages under ``weighting`` (:func:`average_weights`): with
    ``"episode"`` this is pytorch-maml-rl's ``weighted_normalize`` (the mean of per-episode means, the mean of
    per-episode mean squares), with ``"step"`` rllab's ``center_adv`` over a task's flattened steps. Every task is
    normalised on its own, so that every task weighs the same in a meta-batch loss.

    Args:
        advantages: ``[T, ..., H]`` advantages, task dim first, time last (e.g. ``[T, E, H]``).
        masks: ``[T, ..., H]``, 1 on real steps and 0 on padding.
        weighting: ``"episode"`` or ``"step"``.
        eps: added to the std, so that a task whose advantages are all equal maps to 0 instead of NaN.

    Returns:
        ``[T, ..., H]`` normalised advantages, 0 where ``masks`` is 0.
    """
    if advantages.dim() < 2:
        raise ValueError(f"advantages must be [T, ...] with at least 2 dims, got shape {tuple(advantages.shape)}")
    if masks.shape != advantages.shape:
        raise ValueError(f"masks must have the shape of advantages {tuple(advantages.shape)}, got {tuple(masks.shape)}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    valid = masks != 0
    weights = average_weights(masks, weighting).to(advantages.dtype)
    dims = tuple(range(1, advantages.dim()))
    mean = (weights * torch.where(valid, advantages, 0.0)).sum(dim=dims, keepdim=True)
    centered = torch.where(valid, advantages - mean, 0.0)
    std = (weights * centered.square()).sum(dim=dims, keepdim=True).sqrt()
    return centered / (std + eps)


# -- linear feature baseline -----------------------------------------------------------------------------------------


def linear_baseline_features(observations: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Hand-crafted features of the linear baseline: ``[obs, obs**2, t/100, (t/100)**2, (t/100)**3, 1]``.

    ``t`` is the step index within the episode. Every feature (the constant included) is 0 on padded steps, so
    padding adds nothing to the least-squares fit and its predicted value is 0.

    Args:
        observations: ``[T, E, H, obs_dim]`` observations (trailing observation dims are flattened).
        masks: ``[T, E, H]``, 1 on real steps and 0 on padding.

    Returns:
        ``[T, E, H, F]`` features, ``F = 2 * obs_dim + 4``, in the dtype of ``observations`` (float32 if integral).
    """
    if masks.dim() != 3 or observations.shape[:3] != masks.shape:
        raise ValueError(
            f"observations must be [T, E, H, ...] and masks [T, E, H] with the same leading dims, got "
            f"{tuple(observations.shape)} and {tuple(masks.shape)}"
        )
    dtype = observations.dtype if observations.is_floating_point() else torch.float32
    obs = observations.reshape(*masks.shape, -1).to(dtype)
    valid = (masks != 0).unsqueeze(-1)
    time = torch.arange(masks.shape[-1], dtype=dtype, device=masks.device) / _TIME_SCALE
    time = time.reshape(1, 1, -1, 1).expand(*masks.shape, 1)
    features = torch.cat([obs, obs.square(), time, time**2, time**3, torch.ones_like(time)], dim=-1)
    return torch.where(valid, features, 0.0)


def fit_linear_baseline(
    features: torch.Tensor, returns: torch.Tensor, masks: torch.Tensor, reg_coeff: float = 1e-5
) -> torch.Tensor:
    """Ridge regression of returns on features, one weight vector per task, all tasks solved in one batched call.

    Solves ``(X^T X + reg * I) w = X^T y`` per task (X: the task's real steps' features, y: their returns) by a
    Cholesky factorisation in float64. Like rllab / pytorch-maml-rl, a task whose system is not numerically positive
    definite (or whose solution is not finite) is solved again with ``reg`` multiplied by 10, at most
    ``MAX_REG_INCREASES`` times; tasks that succeed keep the ``reg`` they succeeded with.

    Args:
        features: ``[T, E, H, F]`` features (e.g. :func:`linear_baseline_features`).
        returns: ``[T, E, H]`` regression targets (e.g. :func:`discounted_returns`).
        masks: ``[T, E, H]``, 1 on real steps and 0 on padding; padded steps are left out of the fit.
        reg_coeff: ridge coefficient, >= 0 (with 0 the retries cannot help).

    Returns:
        ``[T, F]`` weights, in the dtype of ``features``.

    Raises:
        RuntimeError: if some task's system still fails at the largest ``reg``.
    """
    if features.dim() != 4 or features.shape[:3] != masks.shape or returns.shape != masks.shape:
        raise ValueError(
            f"features must be [T, E, H, F], returns and masks [T, E, H], got {tuple(features.shape)}, "
            f"{tuple(returns.shape)} and {tuple(masks.shape)}"
        )
    if not 0 <= reg_coeff < float("inf"):
        raise ValueError(f"reg_coeff must be a finite number >= 0, got {reg_coeff!r}")
    num_tasks, num_features = features.shape[0], features.shape[-1]
    valid = (masks != 0).reshape(num_tasks, -1)
    # float64: X^T X squares the condition number of X, and the time features are nearly collinear
    design = torch.where(valid.unsqueeze(-1), features.reshape(num_tasks, -1, num_features).double(), 0.0)
    targets = torch.where(valid, returns.reshape(num_tasks, -1).double(), 0.0)
    gram = design.mT @ design  # [T, F, F]
    moments = (design.mT @ targets.unsqueeze(-1)).squeeze(-1)  # [T, F]
    eye = torch.eye(num_features, dtype=gram.dtype, device=gram.device)

    reg = torch.full((num_tasks,), float(reg_coeff), dtype=gram.dtype, device=gram.device)
    weights = torch.zeros_like(moments)
    pending = torch.ones(num_tasks, dtype=torch.bool, device=gram.device)
    for attempt in range(MAX_REG_INCREASES + 1):
        # all tasks in one batched factorisation; only the pending ones take the result
        cholesky, info = torch.linalg.cholesky_ex(gram + reg[:, None, None] * eye)
        solution = torch.cholesky_solve(moments.unsqueeze(-1), cholesky).squeeze(-1)
        solved = (info == 0) & torch.isfinite(solution).all(dim=-1)
        weights = torch.where((pending & solved).unsqueeze(-1), solution, weights)
        pending = pending & ~solved
        if not bool(pending.any()):
            return weights.to(features.dtype)
        if attempt < MAX_REG_INCREASES:
            # ill-conditioned: regularise the failing tasks harder, as rllab's LinearFeatureBaseline does
            reg = torch.where(pending, reg * 10.0, reg)
    failed = pending.nonzero().flatten().tolist()
    raise RuntimeError(
        f"fit_linear_baseline: the regularised normal equations of task(s) {failed} could not be solved even with "
        f"reg_coeff={reg_coeff!r} * 10**{MAX_REG_INCREASES}: X^T X + reg * I is not positive definite or the solution "
        f"is not finite (check the features and returns of the real steps for NaN / inf, and use reg_coeff > 0)"
    )


def linear_baseline_values(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Values predicted by the linear baseline, ``features @ weights`` per task.

    Args:
        features: ``[T, E, H, F]`` features; 0 on padded steps (as :func:`linear_baseline_features` makes them), so
            that the values there are 0.
        weights: ``[T, F]`` weights from :func:`fit_linear_baseline`.

    Returns:
        ``[T, E, H]`` values.
    """
    if features.dim() != 4 or weights.shape != (features.shape[0], features.shape[-1]):
        raise ValueError(
            f"features must be [T, E, H, F] and weights [T, F], got {tuple(features.shape)} and {tuple(weights.shape)}"
        )
    return torch.einsum("tehf,tf->teh", features, weights)


def fit_and_predict_linear_baseline(
    observations: torch.Tensor, returns: torch.Tensor, masks: torch.Tensor, reg_coeff: float = 1e-5
) -> torch.Tensor:
    """Fit the linear feature baseline of each task to its returns and predict its values on the same steps.

    Args:
        observations: ``[T, E, H, obs_dim]`` observations.
        returns: ``[T, E, H]`` regression targets (e.g. :func:`discounted_returns`).
        masks: ``[T, E, H]``, 1 on real steps and 0 on padding.
        reg_coeff: ridge coefficient (see :func:`fit_linear_baseline`).

    Returns:
        ``[T, E, H]`` baseline values, 0 where ``masks`` is 0.
    """
    features = linear_baseline_features(observations, masks)
    weights = fit_linear_baseline(features, returns, masks, reg_coeff=reg_coeff)
    return linear_baseline_values(features, weights)


# -- helpers ---------------------------------------------------------------------------------------------------------


def _reverse_discounted_sum(inputs: torch.Tensor, discounts: torch.Tensor) -> torch.Tensor:
    """``out_h = inputs_h + discounts_h * out_{h+1}`` over the last dim, backwards from ``out_H = 0``.

    Built as a list and stacked (never written into a preallocated tensor) so that autograd sees no in-place op.
    """
    running = torch.zeros_like(inputs[..., -1])
    outputs = []
    for h in reversed(range(inputs.shape[-1])):
        running = inputs[..., h] + discounts[..., h] * running
        outputs.append(running)
    return torch.stack(outputs[::-1], dim=-1)


def _shift_left(tensor: torch.Tensor, fill: float | bool) -> torch.Tensor:
    """``tensor[..., h + 1]`` at position ``h``, and ``fill`` at the last position."""
    return torch.cat([tensor[..., 1:], torch.full_like(tensor[..., :1], fill)], dim=-1)


def _check_time_major(**tensors: torch.Tensor | None) -> None:
    """All given tensors have one shape ``[..., H]`` with ``H >= 1``."""
    given = {name: tensor for name, tensor in tensors.items() if tensor is not None}
    name, first = next(iter(given.items()))
    if first.dim() < 1 or first.shape[-1] < 1:
        raise ValueError(f"{name} must be [..., H] with a time dim H >= 1 last, got shape {tuple(first.shape)}")
    for other, tensor in given.items():
        if tensor.shape != first.shape:
            raise ValueError(f"{other} must have the shape of {name} {tuple(first.shape)}, got {tuple(tensor.shape)}")


def _check_unit_interval(**numbers: float) -> None:
    for name, number in numbers.items():
        if not 0.0 <= number <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {number!r}")
