#!/usr/bin/env bash
# The next zoo (work in progress): every model trained on all 50,000 CIFAR-10 training images with the
# paper's recipes, evaluated on the exact embedded test images, several seeds.
#
#   bash analyses/train_zoo_full.sh DATA_ROOT            # DATA_ROOT holds train/<class>/*.jpg
#   ZOO=runs/zoo-full EPOCHS=100 bash analyses/train_zoo_full.sh DATA_ROOT   # longer (a GPU's budget)
#   ZOO=checkpoints/next-e100 EPOCHS=100 ONLY=simclr-at-s0 TIME_LIMIT=540 bash analyses/train_zoo_full.sh DATA_ROOT
#                                                         # continue the 100-epoch SimCLR AT (in training, on GPUs)
#   ONLY="supervised-at simclr-at" bash analyses/train_zoo_full.sh DATA_ROOT   # some models
#   TIME_LIMIT=540 bash analyses/train_zoo_full.sh DATA_ROOT   # stop cleanly after 540 s (a lent GPU's slot)
#   ONLY="simclr-at-s0" ... & ONLY="supervised-at-s1" ... &    # two at once on one GPU
#   EVAL_EVERY=1 bash analyses/train_zoo_full.sh DATA_ROOT      # clean / PGD-20 accuracy every epoch [every 2]
#   AMP=0 bash analyses/train_zoo_full.sh DATA_ROOT             # fp32: a CPU without bf16 instructions (see below)
#
# DATA_ROOT: an image folder of CIFAR-10's training images, e.g. the JPEG (quality 75) copy with the official
# labels (class folders in CIFAR-10's class order). Nothing is downloaded and the package does not embed it.
# Recipes (README, "Training"): contrastive AT perturbs the un-augmented image and forwards the adversarial
# pair apart from the clean views, through its own batch norm (--dual-bn, as ACL); supervised AT, PAT and FAT
# train on clean + adversarial cross-entropy; every pre-training gets the same number of optimiser steps
# (same epochs and batch size); PGD-5 at 8/255 with step 2.5 eps / 5. The device is auto and recorded in each
# model's metadata; every model trains under bf16 autocast (--amp) on any device, so a model trained on a GPU and
# one trained on a CPU share their precision (a CPU with bf16 instructions trains 2.1x faster with it). A CPU
# without them (AVX512-BF16 or AMX; `clrobust train` warns) runs bf16 autocast about 30x slower than fp32: there
# AMP=0 trains in fp32. Each epoch's history row records its precision, so a run resumed in the other one says so.
# In fp32 a CPU trains the nets in channels-last memory (models.fast_layout): SimCLR ST at width 16 went from 426 to
# 502 s an epoch to 349 s on 2 idle cores (simclr-st-s1, epochs 5-6 and 9).
# On one H100 a width-16 net leaves the GPU launch-bound: one process trains supervised AT at about 3,500 images/s
# (7 min for 30 epochs) and SimCLR AT with dual BN at 2,250 (11 min); two processes sharing it ran 1.5x one's
# throughput in all, six ran less than one (time-slicing), so run one or two at once. On one H200 side by side,
# SimCLR AT (dual BN) ran 1,000 to 1,140 images/s and supervised AT 2,500 to 2,900; SimCLR AT alone about 1,870.
# Runs resume (--resume) after an interruption; finished models are skipped; each run appends to its log in
# $ZOO/logs/ (one line an epoch: loss, seconds, images/s, and every EVAL_EVERY epochs clean and PGD-20 8/255
# accuracy on the evaluation images, to watch robust overfitting; it does not change the training).
set -euo pipefail
DATA=${1:?usage: bash analyses/train_zoo_full.sh DATA_ROOT}
ZOO=${ZOO:-runs/zoo-full}
# 30 epochs of 195 batches of 256 = 5,850 optimiser steps for every pre-training (the zoo's supervised-at-s0 got
# exactly these): what 2 CPU cores can give every scheme alike (about 25 min for supervised ST, 2 h for supervised
# AT, 2.2 h for SimCLR AT with dual BN, in bf16). EPOCHS=100 on a GPU gives every scheme 19,500.
EPOCHS=${EPOCHS:-30}
FT_EPOCHS=${FT_EPOCHS:-10}
WIDTH=${WIDTH:-16}
mkdir -p "$ZOO/logs"
COMMON=(--arch resnet18 --width "$WIDTH" --data imagefolder --data-root "$DATA" --eval-data cifar10-mini
        --batch-size 256 --no-progress --eval-every "${EVAL_EVERY:-2}")
if [[ "${AMP:-1}" != 0 ]]; then COMMON+=(--amp); fi
AT=(--scenario at --eps 8/255 --attack-steps 5)

run() {  # run NAME ARGS...
  local name=$1; shift
  if [[ -n "${ONLY:-}" && " $ONLY " != *" ${name%-s[0-9]} "* && " $ONLY " != *" $name "* ]]; then return; fi
  if [[ -f "$ZOO/$name.safetensors" ]]; then echo "skip $name (exists)"; return; fi
  local t0=$SECONDS
  echo "train $name: clrobust train $* ${COMMON[*]}"
  local limit=()
  if [[ -n "${TIME_LIMIT:-}" ]]; then  # stop cleanly at the deadline: the last finished epoch stays resumable
    local left=$((TIME_LIMIT - SECONDS))
    if ((left < 60)); then echo "time limit reached before $name"; exit 0; fi
    limit=(timeout --signal=TERM --kill-after=120 "$left")
  fi
  echo "--- $(date -u +%FT%TZ): clrobust train $* ${COMMON[*]}" >> "$ZOO/logs/$name.log"
  local status=0
  "${limit[@]}" clrobust train "$@" "${COMMON[@]}" --out "$ZOO/$name" --resume >> "$ZOO/logs/$name.log" 2>&1 || status=$?
  if ((status == 124)); then echo "time limit: stopped $name after $((SECONDS - t0)) s (resume: run again)"; exit 0; fi
  if ((status != 0)); then echo "failed $name (exit $status): $(tail -1 "$ZOO/logs/$name.log")"; exit "$status"; fi
  echo "done  $name in $((SECONDS - t0)) s: $(tail -1 "$ZOO/logs/$name.log")"
}

for seed in 0 1 2; do  # the default pair and the supervised pair, three seeds each
  run "simclr-st-s$seed"     --scheme simclr --scenario st --epochs "$EPOCHS" --seed "$seed"
  run "simclr-at-s$seed"     --scheme simclr "${AT[@]}" --dual-bn --epochs "$EPOCHS" --seed "$seed"
  run "supervised-st-s$seed" --scheme supervised --scenario st --epochs "$EPOCHS" --seed "$seed"
  run "supervised-at-s$seed" --scheme supervised "${AT[@]}" --epochs "$EPOCHS" --seed "$seed"
done
run supcon-st-s0   --scheme supcon --scenario st --epochs "$EPOCHS" --seed 0
run supcon-at-s0   --scheme supcon "${AT[@]}" --dual-bn --epochs "$EPOCHS" --seed 0
run simclr-pat-s0  --scheme simclr --scenario pat --init "$ZOO/simclr-at-s0.safetensors" --init-bn adversarial --dual-bn \
                   --eps 8/255 --attack-steps 5 --classifier-epochs "$FT_EPOCHS" --seed 0
run simclr-fat-s0  --scheme simclr --scenario fat --init "$ZOO/simclr-at-s0.safetensors" --init-bn adversarial --dual-bn \
                   --eps 8/255 --attack-steps 5 --classifier-epochs "$FT_EPOCHS" --seed 0
run simclr-clae-s0 --scheme simclr --scenario at --adv-method clae --eps 8/255 --epochs "$EPOCHS" --seed 0
for seed in 0 1; do  # the eps sweep, two seeds each (8/255 is simclr-at)
  for eps in 2 4 16; do
    run "simclr-at-eps$eps-s$seed" --scheme simclr --scenario at --eps "$eps/255" --attack-steps 5 --dual-bn \
        --epochs "$EPOCHS" --seed "$seed"
  done
done
echo "zoo in $ZOO complete in $SECONDS s"
