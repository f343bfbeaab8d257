"""Record, then compare, the metrics of short runs of every algorithm: a refactor must not change the numbers.

    python scripts/behaviour_fingerprint.py record OUT_DIR [--only NAME ...]   # run every case, keep its metrics
    python scripts/behaviour_fingerprint.py compare BEFORE_DIR AFTER_DIR       # bitwise, time fields aside

Each case is one ``metarl train`` command line (a few iterations, fixed seed, validation included). ``record`` keeps
each run's ``metrics.jsonl`` and ``results.json`` without the wall-clock fields; ``compare`` reports every case whose
numbers differ, with the largest absolute difference and the first key that shows it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SMALL = "num_tasks=200 iterations=3 eval_interval=2 eval_tasks=4 test_tasks=4 progress=false"
MAML_SMALL = f"{SMALL} meta_batch_size=4 episodes_per_task=5 eval_steps=2"
BANDIT = 'family=MetaRL/Bandit-v0 family_kwargs={"num_arms":5}'
TABULAR = "family=MetaRL/TabularMDP-v0"
RL2_SMALL = f"{SMALL} meta_batch_size=8 trial_episodes=3 rl2_hidden_size=16 ppo_epochs=2 ppo_minibatches=2"
TRANSFORMER_SMALL = (
    f"{BANDIT} {SMALL} meta_batch_size=8 trial_episodes=3 transformer_width=16 transformer_heads=2 ppo_epochs=2 "
    "ppo_minibatches=2"
)

CASES: dict[str, str] = {
    "maml-trpo": f"--algo maml-trpo {MAML_SMALL}",
    "maml-trpo-fast": f"--algo maml-trpo {MAML_SMALL} curvature_fraction=0.25",
    "maml-trpo-step-pretr-2steps": (
        f"--algo maml-trpo {MAML_SMALL} weighting=step pre_adaptation_trust_region=true num_inner_steps=2 "
        "inner_step_sizes=[0.1,0.05]"
    ),
    "maml-trpo-first-order": f"--algo maml-trpo {MAML_SMALL} first_order=true",
    "maml-trpo-halfcheetah-vel": (
        f"--algo maml-trpo family=MetaRL/HalfCheetahVel-v0 {SMALL} meta_batch_size=2 episodes_per_task=2 "
        'eval_steps=1 family_kwargs={"horizon":50}'
    ),
    "maml-ppo": f"--algo maml-ppo {MAML_SMALL} ppo_epochs=2",
    "promp": f"--algo maml-ppo {MAML_SMALL} ppo_epochs=2 ppo_kl_coeff=0.1",
    "meta-sgd": f"--algo maml-ppo {MAML_SMALL} ppo_epochs=2 meta_sgd=true",
    "maml-plus-plus": f"--algo maml-plus-plus {MAML_SMALL} ppo_epochs=2 first_order_iterations=1 "
    "msl_annealing_iterations=2",
    "maml-plus-plus-trpo": f"--algo maml-plus-plus-trpo {MAML_SMALL} first_order_iterations=1 "
    "msl_annealing_iterations=2",
    "maml-lstm-optimizer": f"--algo maml-lstm-optimizer {MAML_SMALL} ppo_epochs=2 num_inner_steps=2 eval_steps=3",
    "reptile": f"--algo reptile {MAML_SMALL}",
    "pretrain-trpo": f"--algo pretrain-trpo {MAML_SMALL}",
    "rl2-bandit": f"--algo rl2 {BANDIT} {RL2_SMALL}",
    "rl2-bandit-bptt-shared": f"--algo rl2 {BANDIT} {RL2_SMALL} rl2_bptt_steps=2 rl2_shared_critic=true",
    "rl2-navigation": f"--algo rl2 {RL2_SMALL} trial_episodes=2",
    "rl2-transformer-bandit": f"--algo rl2-transformer {TRANSFORMER_SMALL}",
    "rl2-transformer-bandit-shared": f"--algo rl2-transformer {TRANSFORMER_SMALL} transformer_shared_critic=true",
    "rl2-transformer-bandit-pairs": f"--algo rl2-transformer {TRANSFORMER_SMALL} transformer_token_pairs=true",
    "classical-bandit-thompson": f"--algo classical {BANDIT} {SMALL} meta_batch_size=8 trial_episodes=5 "
    "classical_agent=thompson",
    "classical-tabular-psrl": f"--algo classical {TABULAR} {SMALL} meta_batch_size=4 trial_episodes=2 "
    "classical_agent=psrl",
    "random": f"--algo random {MAML_SMALL}",
    "oracle-ppo": f"--algo oracle-ppo {MAML_SMALL} iterations=2",
    "pearl": f"--algo pearl {SMALL} meta_batch_size=3 pearl_hidden_sizes=[16] pearl_encoder_hidden_sizes=[16] "
    "pearl_batch_size=8 pearl_context_batch_size=6 pearl_task_batch_size=3 pearl_gradient_steps=3 "
    "pearl_initial_steps=100 pearl_prior_steps=100 pearl_extra_posterior_steps=200 pearl_buffer_capacity=500 "
    "pearl_eval_episodes=2 num_tasks=40",
    "varibad": f"--algo varibad {SMALL} meta_batch_size=4 trial_episodes=2 varibad_encoder_hidden_size=16 "
    "varibad_policy_hidden_sizes=[16] varibad_vae_buffer_trials=20 varibad_vae_batch_trials=4 varibad_elbo_samples=5 "
    "varibad_decode_samples=5",
}
"""Name → the arguments of ``metarl train`` (all with seed 0)."""

TORCHRUN_CASES = {"maml-trpo-torchrun2": CASES["maml-trpo"], "rl2-bandit-torchrun2": CASES["rl2-bandit"]}
"""The same runs over two processes (``torchrun --standalone --nproc_per_node=2``)."""

DROPPED_RESULT_FIELDS = ("run_dir", "minutes", "total_minutes")
RENAMED_RESULT_FIELDS = {"curve_label": "curve_kind"}
"""``results.json`` keys renamed since a recording was made (old → new), compared under the new name."""


def _without_time(record: dict) -> dict:
    return {key: value for key, value in record.items() if not key.startswith("time/")}


def record(out_dir: Path, only: list[str] | None) -> int:
    cases = {**CASES, **TORCHRUN_CASES}
    names = only or list(cases)
    unknown = sorted(set(names) - set(cases))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {', '.join(cases)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for name in names:
        with tempfile.TemporaryDirectory() as run_root:
            launcher = (
                ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "metarl"]
                if name in TORCHRUN_CASES
                else [sys.executable, "-m", "metarl"]
            )
            command = [*launcher, "train", *cases[name].split(), f"run_root={run_root}"]
            completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
            if completed.returncode != 0:
                print(f"{name}: FAILED\n{completed.stderr[-2000:]}", file=sys.stderr)
                failures += 1
                continue
            (run_dir,) = Path(run_root).iterdir()
            metrics = [_without_time(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            results = json.loads((run_dir / "results.json").read_text())
            for field in DROPPED_RESULT_FIELDS:
                results.pop(field, None)
            results = {RENAMED_RESULT_FIELDS.get(key, key): value for key, value in results.items()}
            case_dir = out_dir / name
            shutil.rmtree(case_dir, ignore_errors=True)
            case_dir.mkdir()
            (case_dir / "command.txt").write_text(" ".join(command[:-1]) + "\n")
            (case_dir / "metrics.jsonl").write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics))
            (case_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
            print(f"{name}: {len(metrics)} iterations recorded", file=sys.stderr)
    return 1 if failures else 0


def _largest_difference(before: object, after: object, key: str = "") -> tuple[float, str]:
    """The largest absolute difference between two JSON values of the same shape, and where it is."""
    if isinstance(before, dict) and isinstance(after, dict):
        if set(before) != set(after):
            return math.inf, f"{key}: keys differ ({sorted(set(before) ^ set(after))})"
        worst = (0.0, "")
        for k in before:
            worst = max(worst, _largest_difference(before[k], after[k], f"{key}/{k}"), key=lambda item: item[0])
        return worst
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return math.inf, f"{key}: lengths differ"
        worst = (0.0, "")
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            worst = max(worst, _largest_difference(b, a, f"{key}[{i}]"), key=lambda item: item[0])
        return worst
    if isinstance(before, int | float) and isinstance(after, int | float):
        return (abs(before - after), key) if before != after else (0.0, "")
    return (0.0, "") if before == after else (math.inf, f"{key}: {before!r} != {after!r}")


def compare(before_dir: Path, after_dir: Path) -> int:
    differing = 0
    for case_dir in sorted(path for path in before_dir.iterdir() if path.is_dir()):
        after_case = after_dir / case_dir.name
        if not after_case.is_dir():
            print(f"{case_dir.name}: missing in {after_dir}")
            differing += 1
            continue
        case_differs = False
        for file in ("metrics.jsonl", "results.json"):
            before_text, after_text = (case_dir / file).read_text(), (after_case / file).read_text()
            if file == "results.json":
                renamed = {RENAMED_RESULT_FIELDS.get(k, k): v for k, v in json.loads(before_text).items()}
                before_text = json.dumps(renamed, indent=2, sort_keys=True) + "\n"
                # fields the results gained since the recording have nothing to be compared with: named, left out
                after_results = json.loads(after_text)
                added = sorted(set(after_results) - set(renamed))
                if added:
                    print(f"{case_dir.name}/{file}: new fields, not in the recording: {', '.join(added)}")
                    kept = {k: v for k, v in after_results.items() if k not in added}
                    after_text = json.dumps(kept, indent=2, sort_keys=True) + "\n"
            if before_text == after_text:
                continue
            differing += 1
            case_differs = True
            load = (lambda text: [json.loads(line) for line in text.splitlines()]) if file.endswith("l") else json.loads
            size, where = _largest_difference(load(before_text), load(after_text))
            print(f"{case_dir.name}/{file}: differs, largest |difference| {size:.3g} at {where}")
        if not case_differs:
            print(f"{case_dir.name}: identical")
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    record_parser = commands.add_parser("record", help="run every case and keep its metrics")
    record_parser.add_argument("out_dir", type=Path)
    record_parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="these cases only")
    compare_parser = commands.add_parser("compare", help="compare two recordings")
    compare_parser.add_argument("before_dir", type=Path)
    compare_parser.add_argument("after_dir", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        return record(args.out_dir, args.only)
    return compare(args.before_dir, args.after_dir)


if __name__ == "__main__":
    sys.exit(main())
