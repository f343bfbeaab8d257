"""RL² with a causal transformer: the agent's memory of a trial is attention over every step of it so far.

RL² (``agents/rl2.py``) keeps what it learned of a task in a GRU's hidden state. Here the same trial inputs
(observation, previous action, previous reward, episode-ended flag: :func:`metarl.trials.trial_input_vector`) go
through a small causal transformer whose context is the whole trial so far, and actor and critic heads read its last
layer. Everything else is RL²'s: the trials, GAE over whole trials, the clipped-PPO update over minibatches of whole
trials, the return normaliser (:class:`metarl.agents.rl2.RL2`, which this class extends).

What changes is how the sequence model runs:

- **acting** steps all trials of a batch at once, one position per env step, with a key/value cache: each step
  computes the new position's queries, keys and values only and attends over the cached keys and values of the
  trial's earlier steps (no recomputation of the context);
- **training** runs each minibatch's whole trials through the transformer in one pass, causally masked
  (``torch.nn.functional.scaled_dot_product_attention``), in parallel over time where a GRU must go step by step.

The block is pre-norm (LayerNorm before attention and before the MLP, a final LayerNorm), with rotary position
embeddings on queries and keys (Su et al. 2021), so that positions are relative and a trial longer than those trained
on can be played (how far that generalises is measured, not assumed). Choices taken from AMAGO (Grigsby et al. 2024):
a causal transformer over the whole multi-episode context, the episode boundary as an input flag, and a shared
trunk for the actor and the critic; AMAGO's off-policy, multi-γ critics are not.

References:
    Duan et al. "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", arXiv:1611.02779, 2016.
    Vaswani et al. "Attention Is All You Need", NeurIPS 2017.
    Su et al. "RoFormer: Enhanced Transformer with Rotary Position Embedding", arXiv:2104.09864, 2021.
    Grigsby, Fan, Zhu. "AMAGO: Scalable In-Context Reinforcement Learning for Adaptive Agents", ICLR 2024.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import torch
from metarl.agents.ppo import PPOConfig
from metarl.agents.rl2 import RL2, UPDATE_FLOATS_PER_STEP, action_distribution, action_outputs_and_log_std
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional

from metarl.budget import (
    FLOAT_BYTES,
    MemoryEstimate,
    evaluation_trials_estimate,
    largest,
    trial_step_bytes,
    trials_estimate,
    with_sub_envs,
)
from metarl.config import check_at_least
from metarl.registry import register_agent
from metarl.tasks import TaskFamily
from metarl.trials import trial_input_size

# Memory estimate (metarl.budget): per step of the meta-batch, the trial buffers and PPO's per-step tensors (as RL²'s),
# and the graph of one minibatch: per layer, the activations of a pre-norm block (about 14 widths of d_model with the
# MLP's 4x) and the attention weights over the earlier steps of the trial (one row per head).
BLOCK_FLOATS_PER_WIDTH = 14
"""Floats one block holds per step and per unit of ``transformer_width`` in a minibatch's graph (with gradients)."""


@dataclasses.dataclass
class TrialTransformerConfig(PPOConfig):
    """The transformer agent's fields: RL²'s trials and PPO, and the transformer's sizes (small defaults that train
    on this 2-core CPU)."""

    algo: str = "rl2-transformer"
    trial_episodes: int = 2
    """Episodes per trial; the context spans all of them and is reset between trials."""
    transformer_width: int = 64
    """The model's width (d_model)."""
    transformer_layers: int = 2
    """Pre-norm blocks."""
    transformer_heads: int = 4
    """Attention heads (``transformer_width`` must divide by it, into an even head width for the rotary
    embedding)."""
    transformer_mlp_ratio: int = 4
    """The MLP's hidden width, in multiples of ``transformer_width``."""
    rotary_base: float = 10_000.0
    """The rotary embedding's base period (Su et al.: 10,000)."""
    transformer_token_pairs: bool = False
    """Each token holds the trial inputs of its step and of the step before (zeros before the first), so that a
    whole transition, the state an action was taken in with the action, its reward and the state reached, lies in
    one token, as in the Decision-Pretrained Transformer's context of transitions; otherwise a token is one step's
    inputs and attention must join consecutive steps itself."""
    transformer_shared_critic: bool = False
    """One trunk feeds both heads (AMAGO's choice; cheaper). The default is a separate critic trunk, as RL²'s
    separate critic GRU."""

    SAVED_RUN_VALUES: ClassVar[dict[str, Any]] = {"transformer_shared_critic": True}
    """Runs saved before ``transformer_shared_critic`` existed had one shared trunk."""

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "trial_episodes transformer_width transformer_layers transformer_heads")
        check_at_least(self, 1, "transformer_mlp_ratio")
        if self.transformer_width % self.transformer_heads or (self.transformer_width // self.transformer_heads) % 2:
            raise ValueError(
                f"transformer_width {self.transformer_width} must divide by transformer_heads "
                f"{self.transformer_heads} into an even head width (the rotary embedding rotates pairs)"
            )
        if not math.isfinite(self.rotary_base) or self.rotary_base <= 1:
            raise ValueError(f"rotary_base must be a finite number > 1, got {self.rotary_base}")


class KVCache(NamedTuple):
    """The keys and values of every layer for the first ``length`` steps of N trials: per layer ``[N, heads,
    capacity, head]`` buffers, of which positions ``< length`` are filled. While acting (no gradient) a step writes
    its keys and values in place and the buffers grow by doubling, so that a step copies nothing of the past.
    ``last_inputs [N, D]`` are the trial inputs of step ``length - 1`` (zeros before the first step), which the
    next step's token pairs with its own."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    length: int
    last_inputs: torch.Tensor


def rotary_cos_sin(positions: torch.Tensor, head_width: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosines and sines ``[L, head / 2]`` (float32 or wider) of the rotary angles of integer ``positions [L]``:
    pair ``(2i, 2i + 1)`` of a head turns by ``position / base^(2i / head)``."""
    half = head_width // 2
    dtype = torch.float64 if positions.dtype == torch.float64 else torch.float32
    frequencies = base ** (-torch.arange(half, device=positions.device, dtype=dtype) / half)
    angles = positions.to(dtype)[:, None] * frequencies[None, :]
    return angles.cos(), angles.sin()


def rotate_by(values: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``values [..., L, head]`` with each pair of dimensions rotated by the angles whose ``cos, sin [L, head / 2]``
    are given."""
    cos, sin = cos.to(values.dtype), sin.to(values.dtype)
    even, odd = values[..., 0::2], values[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


class RotaryTable:
    """The rotary cosines and sines of positions ``0 .. capacity - 1``, computed once and grown by doubling, so that
    a step of the cached rollout slices them instead of computing them per block and per step. Not a module: it is
    derived from the config, and never saved."""

    def __init__(self, head_width: int, base: float) -> None:
        self.head_width, self.base = head_width, base
        self.cos = self.sin = torch.zeros(0, head_width // 2)

    def __call__(self, start: int, length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin [length, head / 2]`` of positions ``start .. start + length - 1``, in ``like``'s dtype and on
        its device."""
        end = start + length
        if self.cos.shape[0] < end or self.cos.dtype != like.dtype or self.cos.device != like.device:
            capacity = max(end, 2 * self.cos.shape[0], 128)
            dtype = torch.promote_types(like.dtype, torch.float32)
            positions = torch.arange(capacity, device=like.device, dtype=dtype)
            cos, sin = rotary_cos_sin(positions, self.head_width, self.base)
            self.cos, self.sin = cos.to(like.dtype), sin.to(like.dtype)
        return self.cos[start:end], self.sin[start:end]


class CausalBlock(nn.Module):
    """A pre-norm transformer block: ``x + attention(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, rotary_base: float) -> None:
        super().__init__()
        self.heads, self.head_width = heads, width // heads
        self.rotary = RotaryTable(self.head_width, rotary_base)
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attention_out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(
        self, x: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor, cached: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [N, L, width]``, the L steps after the ``cached`` ones in ``past_* [N, heads, capacity, head]``.

        Returns the block's output and buffers holding the keys and values of all ``cached + L`` steps.
        """
        num_trials, length, width = x.shape
        projected = (
            self.qkv(self.attention_norm(x))
            .view(num_trials, length, 3, self.heads, self.head_width)
            .permute(2, 0, 3, 1, 4)  # [3, N, heads, L, head]
        )
        cos, sin = self.rotary(cached, length, projected)
        queries, keys = rotate_by(projected[:2], cos, sin)  # queries and keys in one rotation
        values = projected[2]
        key_buffer, value_buffer = _appended(past_keys, keys, cached), _appended(past_values, values, cached)
        keys, values = key_buffer[:, :, : cached + length], value_buffer[:, :, : cached + length]
        if length == 1:  # one new step attends to every step so far: nothing to mask
            attended = functional.scaled_dot_product_attention(queries, keys, values)
        elif cached == 0:
            attended = functional.scaled_dot_product_attention(queries, keys, values, is_causal=True)
        else:  # new steps after cached ones: step i sees the cache and the new steps up to itself
            allowed = torch.ones(length, cached + length, dtype=torch.bool, device=x.device).tril(cached)
            attended = functional.scaled_dot_product_attention(queries, keys, values, attn_mask=allowed)
        x = x + self.attention_out(attended.transpose(1, 2).reshape(num_trials, length, width))
        return x + self.mlp(self.mlp_norm(x)), key_buffer, value_buffer


def _appended(buffer: torch.Tensor, new: torch.Tensor, cached: int) -> torch.Tensor:
    """``buffer``'s first ``cached`` positions followed by ``new [N, heads, L, head]``.

    With gradients on (training: the whole trial from an empty cache) a plain concatenation. Without (acting), the
    new positions are written in place when the buffer has room, and otherwise into a buffer of twice the size.
    """
    total = cached + new.shape[2]
    if torch.is_grad_enabled():
        return torch.cat([buffer[:, :, :cached], new], dim=2)
    if buffer.shape[2] < total:
        grown = buffer.new_zeros((*buffer.shape[:2], max(total, 2 * buffer.shape[2], 16), buffer.shape[3]))
        grown[:, :, :cached] = buffer[:, :, :cached]
        buffer = grown
    buffer[:, :, cached:total] = new
    return buffer


class CausalTrunk(nn.Module):
    """A linear input embedding, pre-norm :class:`CausalBlock` s and a final LayerNorm: trial inputs to features."""

    def __init__(self, input_size: int, config: TrialTransformerConfig) -> None:
        super().__init__()
        width = config.transformer_width
        self.embedding = nn.Linear(input_size, width)
        self.blocks = nn.ModuleList(
            CausalBlock(width, config.transformer_heads, config.transformer_mlp_ratio, config.rotary_base)
            for _ in range(config.transformer_layers)
        )
        self.final_norm = nn.LayerNorm(width)

    def forward(
        self, inputs: torch.Tensor, keys: tuple[torch.Tensor, ...], values: tuple[torch.Tensor, ...], cached: int
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Features ``[N, L, width]`` of the L steps after ``cached`` ones, and every block's key and value buffers."""
        x = self.embedding(inputs)
        new_keys, new_values = [], []
        for block, past_keys, past_values in zip(self.blocks, keys, values, strict=True):
            x, block_keys, block_values = block(x, past_keys, past_values, cached)
            new_keys.append(block_keys)
            new_values.append(block_values)
        return self.final_norm(x), new_keys, new_values


class TrialTransformer(nn.Module):
    """A causal transformer over trial inputs with actor and critic heads: RL²'s sequence-model interface
    (``initial_state``, ``forward(inputs, state)``, ``distribution``), its state a :class:`KVCache`.

    As RL²'s GRU agent, the critic has a trunk of its own by default, so that the value loss does not shape the
    policy's memory; ``transformer_shared_critic`` puts both heads on one trunk (AMAGO's choice). The cache holds the
    actor trunk's blocks, then the critic trunk's.
    """

    def __init__(self, input_size: int, action_space: gym.Space, config: TrialTransformerConfig) -> None:
        super().__init__()
        action_outputs, self.log_std = action_outputs_and_log_std(action_space, "the trial transformer")
        width, heads = config.transformer_width, config.transformer_heads
        self.heads, self.head_width = heads, width // heads
        self.input_size, self.token_pairs = input_size, config.transformer_token_pairs
        token_size = 2 * input_size if self.token_pairs else input_size
        self.actor_trunk = CausalTrunk(token_size, config)
        self.critic_trunk = None if config.transformer_shared_critic else CausalTrunk(token_size, config)
        self.action_head = nn.Linear(width, action_outputs)
        self.value_head = nn.Linear(width, 1)
        self.apply(self._initialise)
        # small initial action outputs, as RL²'s heads: an even policy explores evenly at the start
        nn.init.orthogonal_(self.action_head.weight, gain=0.01)
        nn.init.zeros_(self.action_head.bias)
        self.register_load_state_dict_pre_hook(_trunk_named_parameters)

    @staticmethod
    def _initialise(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):  # GPT-2's: small weights, zero biases
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    @property
    def cached_blocks(self) -> int:
        """Blocks whose keys and values the cache holds: the actor trunk's, and the critic trunk's if separate."""
        trunks = 1 if self.critic_trunk is None else 2
        return trunks * len(self.actor_trunk.blocks)

    def initial_state(self, num_trials: int) -> KVCache:
        """The empty cache of ``num_trials`` new trials."""
        weight = self.value_head.weight
        empty = torch.zeros((num_trials, self.heads, 0, self.head_width), dtype=weight.dtype, device=weight.device)
        no_inputs = torch.zeros((num_trials, self.input_size), dtype=weight.dtype, device=weight.device)
        return KVCache((empty,) * self.cached_blocks, (empty,) * self.cached_blocks, 0, no_inputs)

    def forward(self, inputs: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, torch.Tensor, KVCache]:
        """Run ``inputs [N, L, D]``, the L steps after those in ``state``.

        Returns ``(action_outputs [N, L, A], values [N, L], state)``, values in the return normaliser's scale; the
        returned cache holds every step so far.
        """
        tokens = inputs
        if self.token_pairs:
            previous = torch.cat([state.last_inputs[:, None].to(inputs.dtype), inputs[:, :-1]], dim=1)
            tokens = torch.cat([inputs, previous], dim=-1)
        actor_blocks = len(self.actor_trunk.blocks)
        actor_features, keys, values = self.actor_trunk(
            tokens, state.keys[:actor_blocks], state.values[:actor_blocks], state.length
        )
        critic_features = actor_features
        if self.critic_trunk is not None:
            critic_features, critic_keys, critic_values = self.critic_trunk(
                tokens, state.keys[actor_blocks:], state.values[actor_blocks:], state.length
            )
            keys, values = keys + critic_keys, values + critic_values
        next_state = KVCache(tuple(keys), tuple(values), state.length + inputs.shape[1], inputs[:, -1])
        return self.action_head(actor_features), self.value_head(critic_features)[..., 0], next_state

    def distribution(self, action_outputs: torch.Tensor) -> Distribution:
        return action_distribution(action_outputs, self.log_std)


def _trunk_named_parameters(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """A checkpoint saved before the trunks had names (its one shared trunk's parameters at the top level:
    ``embedding.``, ``blocks.``, ``final_norm.``) loads into ``actor_trunk``."""
    for old_name in ("embedding.", "blocks.", "final_norm."):
        for key in [key for key in state_dict if key.startswith(prefix + old_name)]:
            state_dict[prefix + "actor_trunk." + key.removeprefix(prefix)] = state_dict.pop(key)


class TrialTransformerAgent(RL2):
    """RL² with :class:`TrialTransformer` as its memory. Its fields are :class:`TrialTransformerConfig`'s; acting,
    collecting, GAE, PPO, evaluation and checkpoints are :class:`metarl.agents.rl2.RL2`'s."""

    @staticmethod
    def make_policy(family: TaskFamily, config: Any) -> nn.Module:
        return TrialTransformer(trial_input_size(family), family.action_space, config)

    @property
    def bptt_steps(self) -> int:
        """Whole trials: a transformer trains on every step of a trial in one pass."""
        return 0

    @classmethod
    def memory_estimate(cls, config: TrialTransformerConfig, family: TaskFamily) -> MemoryEstimate:
        """The larger of a training iteration (its trials and PPO's update, a minibatch's graph of every block and
        its attention weights) and an evaluation's trials (:mod:`metarl.budget`)."""
        length = config.trial_episodes * family.horizon
        stored = 2 * trial_step_bytes(family)
        blocks = config.transformer_layers * (1 if config.transformer_shared_critic else 2)
        minibatch_floats = blocks * (
            BLOCK_FLOATS_PER_WIDTH * config.transformer_width * (1 + config.transformer_mlp_ratio) / 2
            + 2 * config.transformer_heads * length  # attention weights and their gradient, one row per step
        )
        update_floats = UPDATE_FLOATS_PER_STEP + 4 * trial_input_size(family)
        update_floats += minibatch_floats / min(config.ppo_minibatches, config.meta_batch_size)
        training = trials_estimate(
            "training's trials and PPO update",
            config,
            config.trial_episodes,
            family.horizon,
            stored + FLOAT_BYTES * update_floats,
            ("meta_batch_size", "trial_episodes", "transformer_width"),
            note=f"{blocks} blocks of width {config.transformer_width}",
        )
        # acting keeps every block's keys and values of every step of the trials, in buffers that grow by doubling:
        # up to twice the steps, and the old buffer beside the new while one grows. A bound of 4x the keys and
        # values: on the MDP preset's 1000 test trials of 100 steps the peak grew about 1.9x (182 MiB above RL²'s
        # evaluation with one trunk of width 64, 280 MiB with two trunks of width 48)
        cache_floats = 2 * 2 * 2 * blocks * config.transformer_width
        evaluation = evaluation_trials_estimate(
            config,
            config.trial_episodes,
            family.horizon,
            stored + FLOAT_BYTES * cache_floats,
            "an evaluation's trials and key/value cache",
        )
        sizes = [config.meta_batch_size, config.eval_tasks, config.test_tasks]
        return with_sub_envs(largest(training, evaluation), sizes, family)


register_agent("rl2-transformer", TrialTransformerAgent, TrialTransformerConfig)
