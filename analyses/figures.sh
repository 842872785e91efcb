#!/usr/bin/env bash
# Redraw the paper's four figure families (PNG, PDF and the numbers as JSON) from the embedded
# zoo into one folder, and print whether the paper's four findings hold (also in check.txt).
#   bash analyses/figures.sh OUT_DIR [extra `clrobust figures` options, e.g. --n-samples 846 --steps 20]
# One family:        clrobust figures eps-sweep --out OUT_DIR
# Your own models:   bash analyses/figures.sh OUT_DIR --models simclr-st=runs/a.safetensors
set -euo pipefail
OUT=${1:?usage: figures.sh OUT_DIR [figures options]}; shift
mkdir -p "$OUT"
clrobust figures all --check --out "$OUT" --overwrite "$@" | tee "$OUT/check.txt"
