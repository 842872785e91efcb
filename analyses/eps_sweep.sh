#!/usr/bin/env bash
# Adversarial SimCLR pre-training at the paper's eps sweep (2/255, 8/255, 16/255).
#   bash analyses/eps_sweep.sh OUT_DIR [extra clrobust train options]
set -euo pipefail
OUT=${1:?usage: eps_sweep.sh OUT_DIR [train options]}; shift
for k in 2 8 16; do
  clrobust train --scheme simclr --scenario at --eps "$k/255" --out "$OUT/simclr-at-eps$k" "$@"
done
