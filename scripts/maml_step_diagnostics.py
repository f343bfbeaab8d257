"""One MAML-TRPO meta-update, computed several ways on the same batch: where does exact TRPO's step go?

For each checkpoint (``last.pt`` files saved along a run), one meta-batch is sampled with its parameters and the
natural-gradient direction is computed five ways: exact curvature in float32 (what training does) and in float64,
the fast mode's curvature (``curvature_fraction`` 0.25) in float32 and float64, and the plain autograd
implementation (:mod:`metarl.agents.maml_autograd`) in float64. For each: the cosine with the exact float64 direction,
the length of the full TRPO step (scaled to the trust region), the KL of the *pre*-adaptation policy that step causes
(on the pre-adaptation episodes) beside the post-adaptation one the trust region bounds, and the surrogate's
improvement.

    python scripts/maml_step_diagnostics.py RUN_DIR CHECKPOINT [CHECKPOINT ...] [--out results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import metarl.envs  # noqa: F401 - registers the families
import numpy as np
import torch
from metarl.agents import maml_autograd
from metarl.agents.inner_loop import MetaBatch, detach_distribution, detach_params, mean_kl
from metarl.agents.maml_trpo import MAMLTRPO

from metarl.checkpoint import load_checkpoint, write_text_atomically
from metarl.optim import conjugate_gradient, flatten_tensors, trpo_step_size, unflatten_like
from metarl.presets import load_run_config
from metarl.registry import make_family


def in_float64(agent: MAMLTRPO, batch: MetaBatch) -> tuple[MAMLTRPO, MetaBatch]:
    """A float64 copy of the agent and of the batch (advantages recomputed from the float64 episodes)."""
    agent = copy.deepcopy(agent)
    agent.policy.double()
    episodes = [episode.with_float_dtype(torch.float64) for episode in batch.episodes]
    data = [agent.process(episode) for episode in episodes]
    return agent, batch._replace(inner=data[:-1], post=data[-1], episodes=episodes)


def natural_direction(
    agent: MAMLTRPO, batch: MetaBatch, fraction: float
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """TRPO's CG direction and its curvature product, with the curvature on ``fraction`` of the episodes."""
    agent.config = copy.copy(agent.config)
    agent.config.curvature_fraction = fraction
    theta = dict(agent.policy.named_parameters())
    meta = agent.meta_gradient(theta, batch, second_order=True)
    hessians, post = agent._curvature_data(meta.points, meta.inner_hessians, batch)
    product = agent._kl_hessian_vector_product(theta, meta.points[-1], hessians, post)
    direction = conjugate_gradient(product, meta.gradient, iterations=agent.config.cg_iterations)
    return direction, product


def plain_direction(agent: MAMLTRPO, batch: MetaBatch) -> torch.Tensor:
    """The plain autograd implementation's CG direction (float64 agent and batch)."""
    problem = maml_autograd.trpo_problem(agent, batch.episodes)
    return maml_autograd.conjugate_gradient(
        problem.hessian_vector_product, problem.gradient, agent.config.cg_iterations
    )


def step_effects(agent: MAMLTRPO, batch: MetaBatch, step: torch.Tensor) -> dict[str, float]:
    """KL of the pre-adaptation policy, post-adaptation KL and surrogate change for the parameters ``θ - step``."""
    theta = {name: value.detach() for name, value in agent.policy.named_parameters()}
    flat = flatten_tensors(list(theta.values()))
    candidate = unflatten_like(flat - step.to(flat), theta)
    pre = batch.inner[0]
    with torch.no_grad():
        old_pre = agent.policy.distribution(pre.observations, theta)
        new_pre = agent.policy.distribution(pre.observations, candidate)
        pre_kl = mean_kl(new_pre, old_pre, pre.weights)
    num_tasks = batch.shard.size
    old_adapted = agent.adaptation_points(theta, batch.inner, num_tasks)[-1]
    new_adapted = agent.adaptation_points(candidate, batch.inner, num_tasks)[-1]
    with torch.no_grad():
        old = detach_distribution(agent.policy.distribution(batch.post.observations, detach_params(old_adapted)))
        old_log_probs = old.log_prob(batch.post.actions)
        loss_before, _ = agent.surrogate(old_adapted, batch.post, old_log_probs, old)
        loss_after, post_kl = agent.surrogate(new_adapted, batch.post, old_log_probs, old)
    return {
        "step_norm": float(step.norm()),
        "pre_adaptation_kl": float(pre_kl),
        "post_adaptation_kl": float(post_kl),
        "surrogate_change": float(loss_after - loss_before),
    }


def diagnose(run_dir: Path, checkpoint: Path, seed: int) -> dict:
    config = load_run_config(run_dir)
    family = make_family(config.family, **config.family_kwargs)
    torch.manual_seed(seed)
    agent = MAMLTRPO(family, config, torch.device("cpu"))
    state = load_checkpoint(checkpoint)
    agent.load_state_dict(state["agent"])
    split = family.split(seed=config.split_seed, num_tasks=config.num_tasks)
    rng = np.random.default_rng(seed)
    tasks = [split.train[i] for i in rng.choice(len(split.train), config.meta_batch_size, replace=False)]
    batch = agent.sample(tasks, rng, config.num_inner_steps, evaluation=False)
    agent64, batch64 = in_float64(agent, batch)

    directions = {}
    directions["exact_float64"], product64 = natural_direction(agent64, batch64, 1.0)
    directions["exact_float32"], _ = natural_direction(copy.deepcopy(agent), batch, 1.0)
    directions["fast_float64"], _ = natural_direction(copy.deepcopy(agent64), batch64, 0.25)
    directions["fast_float32"], _ = natural_direction(copy.deepcopy(agent), batch, 0.25)
    directions["plain_autograd_float64"] = plain_direction(agent64, batch64)

    reference = directions["exact_float64"]
    result = {"checkpoint": str(checkpoint), "iteration": state["iteration"], "directions": {}}
    for name, direction in directions.items():
        direction = direction.double()
        # each direction scaled to the trust region under the exact curvature (float64), as TRPO scales its own
        scale = trpo_step_size(direction, product64(direction), config.max_kl)
        effects = step_effects(agent64, batch64, scale * direction)
        cosine = float(direction @ reference / (direction.norm() * reference.norm()))
        result["directions"][name] = {"cosine_with_exact_float64": cosine, **effects}
    log_std = [value.detach() for name, value in agent.policy.named_parameters() if "log_std" in name]
    result["mean_log_std"] = float(torch.cat([v.flatten() for v in log_std]).mean()) if log_std else math.nan
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the run folder (its config.json)")
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled meta-batch")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for checkpoint in args.checkpoints:
        result = diagnose(args.run, checkpoint, args.seed)
        results.append(result)
        print(f"iteration {result['iteration']} (mean log-std {result['mean_log_std']:.2f}):")
        for name, row in result["directions"].items():
            print(f"  {name:<24s} " + "  ".join(f"{key} {value:.4g}" for key, value in row.items()))
        sys.stdout.flush()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.out, json.dumps({"command": sys.argv, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
