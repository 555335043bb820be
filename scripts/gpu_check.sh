#!/usr/bin/env bash
# The prepared CUDA check (run on a lent GPU machine, from the repo root): writes $OUT/gpu_report.md.
# The GPU image has torch, numpy and friends; the package is used from the source tree.
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-.}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.txt"
timeout 480 python3 scripts/gpu_check.py "$out/gpu_report.md" 2>&1 | tee "$out/gpu_check.log"
