#!/usr/bin/env bash
# Bring models of the next zoo whose training finished into the package's zoo, with their report card.
#
#   bash analyses/add_to_zoo.sh simclr-at-s0 [NAME ...]
#
# For each NAME trained by analyses/train_zoo_full.sh (checkpoints/next/NAME.safetensors + NAME.json):
#   1. its float16 copy in checkpoints/ (`clrobust convert --half` keeps the training record and metrics;
#      loading upcasts), checked to predict as the float32 file does on the evaluation images (else it is
#      stored in float32), its history beside it, and the manifest rebuilt;
#   2. its audit on all 846 exact test images of cifar10-mini: at 8/255 FGSM, PGD-20, APGD-CE and threat
#      model I (and AutoAttack for a standard model, which falls at once), at 4/255 PGD-20 and threat model I;
#      for an adversarially trained model AutoAttack and PGD-50 with 5 restarts on the first 200 images
#      (about 10 minutes on 2 cores), beside PGD-20 on the same 200;
#   3. the manifest checked against every audit folder on those 846 images (docs/audit-zoo/manifest-check.txt).
# Steps already done are kept (an interrupted audit resumes); nothing is overwritten.
# ZOO_NEXT (checkpoints/next), CLROBUST_ZOO (checkpoints) and AUDITS (docs/audit-zoo) choose other folders.
set -euo pipefail
cd "$(dirname "$0")/.."
NEXT=${ZOO_NEXT:-checkpoints/next}
export CLROBUST_ZOO=${CLROBUST_ZOO:-checkpoints}
AUDITS=${AUDITS:-docs/audit-zoo}
if [ $# -eq 0 ]; then
  echo "usage: bash analyses/add_to_zoo.sh NAME [NAME ...]  (finished models of $NEXT)" >&2
  exit 2
fi
for name in "$@"; do
  if [ ! -f "$NEXT/$name.safetensors" ] || [ ! -f "$NEXT/$name.json" ]; then
    echo "$name: no finished training in $NEXT ($name.safetensors and $name.json); finish it first:" \
         "ZOO=$NEXT ONLY=$name bash analyses/train_zoo_full.sh DATA_ROOT" >&2
    exit 2
  fi
done

audit() {  # audit NAME N EPS ATTACKS OUT; a finished one is kept, an interrupted one resumes
  if [ -f "$5/report.json" ]; then
    echo "   $5 holds a finished audit: kept"
    return
  fi
  clrobust audit "$1" --n-samples "$2" --sampling first --eps "$3" --attack-batch-size 1000 --batch-size 200 \
      --attacks "$4" --no-progress --out "$5"
}

for name in "$@"; do
  if [ ! -f "$CLROBUST_ZOO/$name.safetensors" ]; then
    echo "== $name: float16 copy into $CLROBUST_ZOO/"
    clrobust convert "$NEXT/$name.safetensors" "$CLROBUST_ZOO/$name" --half
    # float16 storage must not change a prediction on the evaluation images; where it does, the model is
    # stored in float32 (twice the size) and says so here
    if ! python - "$NEXT/$name.safetensors" "$CLROBUST_ZOO/$name.safetensors" <<'PY'
import sys

import torch

from clrobust.checkpoints import load
from clrobust.data import load_dataset, to_float

models = [load(p) for p in sys.argv[1:]]  # float32, float16; each through the batch norm its numbers use
meta = models[0].metadata.get("metrics", {})
data = load_dataset(meta.get("eval_data", "cifar10-mini"), meta.get("eval_split", "test"))
n = int(meta.get("eval_samples", len(data.labels)))
x, y = to_float(data.images[:n]), data.labels[:n]
with torch.no_grad():
    a, b = (torch.cat([m.network.eval()(x[i:i + 200]).argmax(1) for i in range(0, n, 200)]) for m in models)
changed = int((a != b).sum())
print(f"   float16 against float32: {int((b == y).sum())} and {int((a == y).sum())} of {n} right, "
      f"{changed} prediction(s) changed")
sys.exit(1 if changed else 0)
PY
    then
      echo "   the float16 copy changes a prediction: $name is stored in float32"
      clrobust convert "$NEXT/$name.safetensors" "$CLROBUST_ZOO/$name" --overwrite
    fi
    cp "$NEXT/$name.history.csv" "$CLROBUST_ZOO/$name.history.csv"
  fi
done
clrobust zoo --rebuild-manifest > /dev/null  # once, before the audits name the models

for name in "$@"; do
  scenario=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['training']['scenario'])" \
             "$NEXT/$name.json")
  echo "== $name ($scenario): audit at 8/255 and 4/255 on 846 images"
  if [ "$scenario" = st ]; then
    audit "$name" 846 8/255 fgsm,pgd20,apgd-ce,autoattack,tm1-pgd20 "$AUDITS/$name"
  else
    audit "$name" 846 8/255 fgsm,pgd20,apgd-ce,tm1-pgd20 "$AUDITS/$name"
  fi
  audit "$name" 846 4/255 pgd20,tm1-pgd20 "$AUDITS/$name/eps-4-255"
  if [ "$scenario" != st ]; then
    echo "== $name: AutoAttack and PGD-50x5 on the first 200 images"
    audit "$name" 200 8/255 pgd20,autoattack,pgd50x5 "$AUDITS/$name/autoattack-200"
  fi
done

echo "== the manifest against every audit folder on its 846 images"
against=()  # the first matching row counts: the 200-image folders (autoattack-200, eps-2-255) are left out
while IFS= read -r report; do
  against+=(--against "$(dirname "$report")")
done < <(find "$AUDITS" -name report.json -not -path "*/autoattack-*" -not -path "*/eps-2-255/*" | sort)
clrobust zoo "${against[@]}" > "$AUDITS/manifest-check.txt"
tail -n 3 "$AUDITS/manifest-check.txt"
