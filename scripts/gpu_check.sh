#!/usr/bin/env bash
# The GPU check of docs/distributed.md: seconds per meta-iteration of the Navigation2D MAML-TRPO and the bandit RL²
# presets on the CPU and on the GPU (one process each; also two processes with NCCL when there are two GPUs), RL²'s
# env steps per second, and the GPU/CPU ratios. Takes a few minutes; needs a CUDA device.
#
#   bash scripts/gpu_check.sh [OUT.json]       (default: benchmarks/gpu_check.json; $PYTHON: the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/gpu_check.json}"
python="${PYTHON:-python}"
gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -eq 0 ]; then
    echo "gpu_check: torch sees no CUDA device on this machine; nothing to compare" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
processes="1"
if [ "$gpus" -ge 2 ]; then
    processes="1 2"
fi
# shellcheck disable=SC2086 # the process counts are separate arguments
"$python" scripts/benchmark.py --distributed --devices cpu cuda --processes $processes --repeats 1 \
    --distributed-iterations 5 --out "$out"
