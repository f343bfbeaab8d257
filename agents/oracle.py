"""The oracle baseline: Stable-Baselines3's PPO told the task, so that it needs no adaptation (an upper bound).

The policy sees every observation with the parameters of the task appended
(:class:`metarl.wrappers.TaskObservationWrapper`) and is trained with SB3's PPO on the pooled training tasks: each
meta-iteration gives every one of ``meta_batch_size`` sub-envs a task of the meta-batch and runs one PPO rollout of
``episodes_per_task`` episodes per sub-env and its update. PPO's settings are the config's (:class:`OracleConfig`):
``ppo_*``, ``gamma``, ``gae_lambda``, ``max_grad_norm``, and its network ``hidden_sizes`` / ``activation`` (policy
and value).

At evaluation it plays fresh episodes of each task at every point of the curve; knowing the task, it has nothing
to adapt, so its curve is flat up to noise.

Resuming an oracle run restores its policy, optimiser and step count but not SB3's rollout state (the envs start
new episodes), so a resumed run is not bit-identical to an uninterrupted one, unlike the suite's own agents.

References:
    Raffin et al. "Stable-Baselines3: Reliable Reinforcement Learning Implementations", JMLR 2021.
    Schulman et al. "Proximal Policy Optimization Algorithms", arXiv:1707.06347, 2017.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from metarl.agents.non_adaptive import NonAdaptiveAgent, NonAdaptiveConfig
from metarl.agents.ppo import PPOConfig

from metarl.budget import (
    FLOAT_BYTES,
    MemoryEstimate,
    action_floats,
    buffer_estimate,
    largest,
    observation_floats,
)
from metarl.config import check_choice, check_hidden_sizes
from metarl.distributed import Workers
from metarl.registry import register_agent
from metarl.sb3 import minibatch_size
from metarl.tasks import TaskFamily
from metarl.wrappers import TaskObservationWrapper, task_vectors

ACTIVATION_MODULES = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
# Memory estimate (metarl.budget), calibrated on the peak resident memory of the oracle on Navigation2D as
# episodes_per_task grows (2 -> 20): SB3's rollout buffer, kept and flattened (two copies), and one minibatch's graph.
SB3_BUFFER_FLOATS = 6
"""Per step of SB3's rollout buffer beside the observation and action: reward, return, episode start, value,
log-prob, advantage."""
SB3_GRAPH_FLOATS_PER_UNIT = 3.4
"""A minibatch's graph per step, per unit of the networks' width (hidden units + inputs + actions); a minibatch is
``1 / ppo_minibatches`` of the rollout."""


@dataclasses.dataclass
class OracleConfig(NonAdaptiveConfig, PPOConfig):
    """The oracle's fields: SB3 PPO's settings and network (``meta_batch_size`` sub-envs, each running
    ``episodes_per_task`` episodes per meta-iteration and PPO update)."""

    algo: str = "oracle-ppo"
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the policy and of the value network."""
    activation: str = "tanh"
    """Hidden activation: ``tanh`` or ``relu``."""

    def validate(self) -> None:
        super().validate()
        check_choice(self, "activation", ACTIVATION_MODULES)
        check_hidden_sizes(self)


class OraclePPO(NonAdaptiveAgent):
    """Upper bound: SB3's PPO told the task (its parameters appended to every observation); nothing to adapt.

    ``algo=oracle-ppo``."""

    def __init__(
        self, family: TaskFamily, config: OracleConfig, device: torch.device, workers: Workers | None = None
    ) -> None:
        from stable_baselines3 import PPO
        from stable_baselines3.common.monitor import Monitor
        from stable_baselines3.common.vec_env import DummyVecEnv

        super().__init__(family, config, device, workers)
        num_envs = config.meta_batch_size
        steps_per_env = config.episodes_per_task * family.horizon
        self.vec_env = DummyVecEnv([lambda: Monitor(TaskObservationWrapper(family.make_env()))] * num_envs)
        self.model = PPO(
            "MlpPolicy",
            self.vec_env,
            n_steps=steps_per_env,
            batch_size=minibatch_size(num_envs * steps_per_env, config.ppo_minibatches),
            n_epochs=config.ppo_epochs,
            learning_rate=config.ppo_learning_rate,
            gamma=config.gamma,
            gae_lambda=config.gae_lambda,
            clip_range=config.ppo_clip,
            ent_coef=config.ppo_entropy_coeff,
            vf_coef=config.ppo_value_coeff,
            max_grad_norm=config.max_grad_norm,
            policy_kwargs={
                "net_arch": list(config.hidden_sizes),
                "activation_fn": ACTIVATION_MODULES[config.activation],
            },
            seed=config.seed,
            device=device,
            verbose=0,
        )

    @classmethod
    def memory_estimate(cls, config: OracleConfig, family: TaskFamily) -> MemoryEstimate:
        """The larger of the evaluation's episode buffers and SB3's rollout buffer and update."""
        example = family.sample_tasks(np.random.default_rng(0), 1)
        inputs = observation_floats(family) + task_vectors(family, example).shape[1]
        actions = action_floats(family.action_space)
        width = sum(config.hidden_sizes) + inputs + actions
        training = buffer_estimate(
            "SB3's rollout buffer",
            [
                ("meta_batch_size {}", config.meta_batch_size),
                ("episodes_per_task {}", config.episodes_per_task),
                ("horizon {}", family.horizon),
            ],
            FLOAT_BYTES
            * (2 * (inputs + actions + SB3_BUFFER_FLOATS) + SB3_GRAPH_FLOATS_PER_UNIT * width / config.ppo_minibatches),
            ("episodes_per_task", "meta_batch_size"),
        )
        return largest(super().memory_estimate(config, family), training)

    def train_step(self, tasks: Sequence[Any], rng: np.random.Generator) -> dict[str, float]:
        """One PPO rollout and update, sub-env ``i`` playing ``tasks[i]`` from its next episode."""
        for wrapper, task in zip(self.vec_env.envs, tasks, strict=True):
            wrapper.env.tasks = (task,)  # the Monitor's inner TaskObservationWrapper draws from this one task
        self.model.learn(total_timesteps=self.model.n_steps * self.vec_env.num_envs, reset_num_timesteps=False)
        logged = self.model.logger.name_to_value
        metrics = {
            f"losses/{key.removeprefix('train/')}": float(value)
            for key, value in logged.items()
            if key.startswith("train/") and np.isfinite(value)
        }
        if self.model.ep_info_buffer:
            metrics["meta/return_pre_adapt"] = float(np.mean([info["r"] for info in self.model.ep_info_buffer]))
        return metrics

    def rollout_policy(self, tasks: Sequence[Any], rng: np.random.Generator) -> Any:
        """SB3's policy (actions sampled) on the observations with each task's parameters appended."""
        task_vector = torch.as_tensor(task_vectors(self.family, tasks), device=self.device)

        @torch.no_grad()
        def act(observations: torch.Tensor, params: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
            num_tasks, num_episodes = observations.shape[:2]
            known = task_vector[:, None].expand(num_tasks, num_episodes, task_vector.shape[1])
            inputs = torch.cat([observations.flatten(2).float(), known], dim=-1).flatten(0, 1)
            actions = self.model.policy.get_distribution(inputs).get_actions(deterministic=False)
            return actions.reshape(num_tasks, num_episodes, *self.family.action_space.shape)

        return act

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.model.policy.state_dict(),
            "optimizer": self.model.policy.optimizer.state_dict(),
            "num_timesteps": int(self.model.num_timesteps),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.policy.load_state_dict(state["policy"])
        if "optimizer" in state:
            self.model.policy.optimizer.load_state_dict(state["optimizer"])
        self.model.num_timesteps = int(state.get("num_timesteps", 0))


register_agent("oracle-ppo", OraclePPO, OracleConfig)
