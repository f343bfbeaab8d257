"""The benchmarks of ``scripts/benchmark.py``, one module each; the script parses the command line and dispatches.

* :mod:`benchmarks.env_steps`: env steps/s of the light families, native batched envs vs ``SyncVectorEnv``
  (the default);
* :mod:`benchmarks.maml`: MAML-TRPO meta-iterations by phase, batched vs the per-task reference (``--maml``);
* :mod:`benchmarks.learners`: seconds per meta-iteration of the two-step learners (MAML-PPO, MAML++, the learned
  optimizer; MAML-TRPO, MAML++ on TRPO) against their outer loop's plain MAML (``--learners``);
* :mod:`benchmarks.rl2`: RL² rollout and PPO update throughput (``--rl2``);
* :mod:`benchmarks.distributed`: seconds per meta-iteration of ``metarl train`` on 1 and 2 processes
  (``--distributed``);
* :mod:`benchmarks.mujoco`: the MuJoCo batched env vs Gymnasium's vector envs and bare ``mj_step`` (``--mujoco``);
* :mod:`benchmarks.metaworld`: the Meta-World adapter vs Meta-World's own vector env (``--metaworld``);
* :mod:`benchmarks.common`: what they share (budget, timing, machine info, JSON results).

``scripts/`` is not a package: the script puts its own folder on ``sys.path`` and imports ``benchmarks`` from there
(a test does the same).
"""
