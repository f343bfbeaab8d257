"""MAML-PPO (and ProMP's KL penalty), Meta-SGD and Reptile: their outer updates do what their papers say."""

from __future__ import annotations

import metarl.envs  # noqa: F401 - registers the families
import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_CONFIG
from metarl.agents.maml_ppo import MAMLPPO
from metarl.agents.reptile import Reptile

from metarl.presets import config_from_dict, load_config
from metarl.registry import make_family
from metarl.trainer import train


def build(agent_class, **overrides):
    config = config_from_dict(
        {
            "meta_batch_size": 3,
            "episodes_per_task": 3,
            "hidden_sizes": [16],
            "family_kwargs": {"horizon": 10},
            **overrides,
        }
    )
    family = make_family(config.family, **config.family_kwargs)
    torch.manual_seed(0)
    agent = agent_class(family, config, torch.device("cpu"))
    tasks = family.sample_tasks(np.random.default_rng(0), config.meta_batch_size)
    batch = agent.sample(tasks, np.random.default_rng(1), config.num_inner_steps, evaluation=False)
    return agent, batch


def parameters(agent) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in agent.policy.named_parameters()}


def test_reptile_moves_toward_the_mean_adapted_parameters():
    agent, batch = build(Reptile, algo="reptile", reptile_step_size=0.25, num_inner_steps=2)
    before = parameters(agent)
    agent.meta_update(batch)
    for name, value in agent.policy.named_parameters():
        expected = before[name] + 0.25 * (batch.adapted[name].mean(dim=0) - before[name])
        torch.testing.assert_close(value.detach(), expected)
    assert any(not torch.equal(before[name], value) for name, value in parameters(agent).items())


def test_maml_ppo_update_improves_the_clipped_surrogate_and_keeps_optimiser_state():
    agent, batch = build(MAMLPPO, algo="maml-ppo", ppo_epochs=3, ppo_learning_rate=3e-3)
    before = parameters(agent)
    metrics = agent.meta_update(batch)
    assert metrics["losses/kl"] > 0 and 0.0 <= metrics["losses/clip_fraction"] <= 1.0
    assert all(not torch.equal(before[name], value) for name, value in parameters(agent).items())
    state = agent.state_dict()
    assert state["optimizer"]["state"], "Adam's moments are part of the checkpoint"
    clone, _ = build(MAMLPPO, algo="maml-ppo", ppo_epochs=3, ppo_learning_rate=3e-3)
    clone.load_state_dict(state)
    for name, value in clone.policy.named_parameters():
        assert torch.equal(value, dict(agent.policy.named_parameters())[name])
    assert clone.optimizer.state_dict()["state"].keys() == agent.optimizer.state_dict()["state"].keys()


def test_promp_kl_penalty_holds_the_pre_adaptation_policy_closer():
    def moved(kl_coeff: float) -> float:
        agent, batch = build(MAMLPPO, algo="maml-ppo", ppo_epochs=5, ppo_learning_rate=1e-2, ppo_kl_coeff=kl_coeff)
        before = parameters(agent)
        agent.meta_update(batch)
        return sum((value - before[name]).pow(2).sum().item() for name, value in parameters(agent).items())

    assert moved(100.0) < moved(0.0)


def test_meta_sgd_learns_its_step_sizes():
    agent, batch = build(MAMLPPO, algo="maml-ppo", meta_sgd=True, inner_step_sizes=[0.2])
    step_sizes = {name: value.detach().clone() for name, value in agent.learned_step_sizes.items()}
    assert all(torch.all(value == 0.2) for value in step_sizes.values())
    assert set(step_sizes) == {name.replace(".", "__") for name, _ in agent.policy.named_parameters()}
    agent.meta_update(batch)
    changed = [not torch.equal(step_sizes[name], value) for name, value in agent.learned_step_sizes.items()]
    assert all(changed)
    assert "learned_step_sizes" in agent.state_dict()


def test_meta_sgd_needs_the_ppo_outer_loop():
    with pytest.raises(ValueError, match=r"unknown config fields \['meta_sgd'\] for algo 'maml-trpo'"):
        load_config(None, ["meta_sgd=true"])


@pytest.mark.parametrize("algo", ["maml-ppo", "reptile", "pretrain-trpo"])
def test_every_algorithm_trains_deterministically_and_resumes(tmp_path, algo):
    overrides = {**TINY_TRAIN_CONFIG, "algo": algo}
    first = train(config_from_dict({**overrides, "run_root": str(tmp_path / "a")}))
    second = train(config_from_dict({**overrides, "run_root": str(tmp_path / "b")}))
    assert first.test_returns == second.test_returns
    # a run stopped after 2 iterations and resumed for 4 ends where the 4-iteration run ends (Adam state included)
    from metarl.checkpoint import load_checkpoint

    middle = train(config_from_dict({**overrides, "iterations": 2, "run_root": str(tmp_path / "c")}))
    config_path = middle.run_dir / "config.json"
    config_path.write_text(config_path.read_text().replace('"iterations": 2', '"iterations": 4'))
    resumed = train(None, resume=middle.run_dir)
    final = load_checkpoint(resumed.run_dir / "last.pt")["agent"]["policy"]
    reference = load_checkpoint(first.run_dir / "last.pt")["agent"]["policy"]
    for name, value in reference.items():
        assert torch.equal(value, final[name]), name
