#!/usr/bin/env bash
# The GPU check (see gpu_check.py): on a machine without CUDA it prints what it would check.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
