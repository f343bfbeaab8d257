"""The per-task MAML-TRPO meta-iteration that ``scripts/benchmark.py --maml`` times (scripts/benchmarks/maml.py)
against the suite's batched ``agent.meta_update``: on the same episodes, from the same parameters, the two TRPO steps
agree."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))  # scripts/ is no package; its benchmarks/ is

from benchmarks.maml import MAML_PHASES, per_task_meta_iteration, per_task_meta_update  # noqa: E402
from metarl.agents.inner_loop import MetaBatch, PolicyGradientData  # noqa: E402

from metarl.optim import flatten_tensors  # noqa: E402
from metarl.presets import config_from_dict  # noqa: E402
from metarl.registry import make_agent, make_family  # noqa: E402

TOLERANCE = 1e-5
"""Largest difference allowed between the two updated parameter vectors (float32). The two sides compute the same
maths in other orders (written-out curvature products vs autograd's double backward), and the conjugate gradient
amplifies those rounding differences by about 1 / cg_damping: with the tests' damping of 0.1 they measured below
1e-6 on a step of about 0.07 (with the default 1e-5 they reach 1e-2, which no tolerance could tell from a bug)."""


def tiny_agent(**overrides: object):
    """A MAML-TRPO agent on Navigation2D with 2 tasks of 2 episodes of 5 steps and an MLP of 8 units, from seed 0."""
    values = {
        "algo": "maml-trpo",
        "family": "MetaRL/Navigation2D-v0",
        "meta_batch_size": 2,
        "episodes_per_task": 2,
        "hidden_sizes": [8],
        "family_kwargs": {"horizon": 5},
        "cg_damping": 0.1,  # conditions the conjugate gradient (see TOLERANCE)
        **overrides,
    }
    config = config_from_dict(values)
    family = make_family(config.family, **config.family_kwargs)
    torch.manual_seed(0)
    return make_agent(config, family, torch.device("cpu")), family


def one_task_batches(batch: MetaBatch) -> list[MetaBatch]:
    """The meta-batch cut into one meta-batch per task, the form ``per_task_meta_update`` takes."""

    def task(data: PolicyGradientData, t: int) -> PolicyGradientData:
        return PolicyGradientData(*(tensor[t : t + 1] for tensor in data))

    num_tasks = batch.post.observations.shape[0]
    return [
        batch._replace(inner=[task(data, t) for data in batch.inner], post=task(batch.post, t))
        for t in range(num_tasks)
    ]


def parameters(agent) -> torch.Tensor:
    return flatten_tensors([value.detach().clone() for value in agent.policy.parameters()])


def test_per_task_reference_takes_the_batched_trpo_step_on_the_same_episodes() -> None:
    batched, family = tiny_agent()
    reference = copy.deepcopy(batched)
    tasks = family.sample_tasks(np.random.default_rng(0), 2)
    batch = batched.sample(tasks, np.random.default_rng(1), batched.config.num_inner_steps, evaluation=False)
    start = parameters(batched)
    assert torch.equal(start, parameters(reference))

    metrics = batched.meta_update(batch)
    timings = per_task_meta_update(reference, one_task_batches(batch))

    assert metrics["losses/line_search_accepted"] == 1.0
    assert set(timings) == set(MAML_PHASES[1:])
    assert (parameters(batched) - start).abs().max() > 1e-2  # a real step, on which the two agree
    torch.testing.assert_close(parameters(reference), parameters(batched), rtol=0.0, atol=TOLERANCE)


def test_the_comparison_tells_first_order_maml_from_the_reference() -> None:
    """A control: the batched update in first order (the same episodes, no differentiation through the inner step)
    lands farther than the tolerance from the second-order reference, so the test above would see such a bug."""
    batched, family = tiny_agent(first_order=True)
    reference = copy.deepcopy(batched)
    tasks = family.sample_tasks(np.random.default_rng(0), 2)
    batch = batched.sample(tasks, np.random.default_rng(1), batched.config.num_inner_steps, evaluation=False)
    batched.meta_update(batch)
    per_task_meta_update(reference, one_task_batches(batch))
    assert (parameters(reference) - parameters(batched)).abs().max() > 100 * TOLERANCE


def test_per_task_meta_iteration_samples_each_task_alone_and_updates_the_policy() -> None:
    agent, family = tiny_agent()
    tasks = family.sample_tasks(np.random.default_rng(0), 2)
    sampled = []
    sample = agent.sample

    def spy(tasks, *args, **kwargs):
        sampled.append(list(tasks))
        return sample(tasks, *args, **kwargs)

    agent.sample = spy
    start = parameters(agent)
    timings = per_task_meta_iteration(agent, tasks, np.random.default_rng(1))
    assert sampled == [[task] for task in tasks]
    assert list(timings) == list(MAML_PHASES)
    assert all(seconds > 0 for seconds in timings.values())
    assert (parameters(agent) - start).abs().max() > 1e-3
