#!/usr/bin/env bash
# Retrain the embedded zoo from scratch on cifar10-mini, exactly as shipped.
#
#   bash analyses/train_zoo.sh            # all models missing from checkpoints/
#   ZOO=$HOME/my-zoo bash analyses/train_zoo.sh   # somewhere else
#
# Each model is a ResNet-18 of base width 8 (0.18 M parameters, ~0.7 MB).
# On 2 CPU cores the whole zoo takes about 75 minutes (the adversarial SimCLR
# models dominate: ~35 s per epoch). Interrupted runs resume; finished models are
# skipped. Logs go to $ZOO/logs/. Afterwards the manifest is rebuilt.
set -euo pipefail
ZOO=${ZOO:-checkpoints}
mkdir -p "$ZOO/logs"
# the shipped zoo's recipes (clrobust before 0.3): contrastive AT perturbs an augmented view forwarded with the
# clean views, supervised AT trains on adversarial examples only
COMMON=(--arch resnet18 --width 8 --seed 0 --no-progress --adv-view view --adv-objective adv)

run() {  # run NAME ARGS...
  local name=$1; shift
  if [[ -f "$ZOO/$name.safetensors" ]]; then echo "skip $name (exists)"; return; fi
  local t0=$SECONDS
  echo "train $name: clrobust train $* ${COMMON[*]}"
  clrobust train "$@" "${COMMON[@]}" --out "$ZOO/$name" --resume > "$ZOO/logs/$name.log" 2>&1
  echo "done  $name in $((SECONDS - t0)) s: $(tail -1 "$ZOO/logs/$name.log")"
}

# the main job's pair
run simclr-st        --scheme simclr --scenario st --epochs 30
run simclr-at        --scheme simclr --scenario at --eps 8/255 --attack-steps 5 --epochs 10
# the other schemes, standard and adversarial
run supervised-st    --scheme supervised --scenario st --epochs 25 --batch-size 128
run supervised-at    --scheme supervised --scenario at --eps 8/255 --attack-steps 5 --epochs 10 --batch-size 128
# SupCon takes its positives from the labels, so it pre-trains on crop-and-flip views: on
# 4,660 images with SimCLR's colour views its loss barely leaves chance and AT gains no robustness
run supcon-st        --scheme supcon --scenario st --epochs 20 --batch-size 128 --lr 3e-3 --augment crop-flip
run supcon-at        --scheme supcon --scenario at --eps 8/255 --attack-steps 5 --epochs 15 --batch-size 128 --lr 3e-3 --augment crop-flip
# partial and full adversarial fine-tuning of the adversarially pre-trained SimCLR encoder
run simclr-pat       --scheme simclr --scenario pat --init "$ZOO/simclr-at.safetensors" --eps 8/255 --attack-steps 5 --classifier-epochs 3
run simclr-fat       --scheme simclr --scenario fat --init "$ZOO/simclr-at.safetensors" --eps 8/255 --attack-steps 5 --classifier-epochs 3
# CLAE adversarial examples (FGSM step of eps on the whole-batch loss, dual BN)
run simclr-clae      --scheme simclr --scenario at --adv-method clae --eps 8/255 --epochs 10
# the eps sweep
run simclr-at-eps2   --scheme simclr --scenario at --eps 2/255 --attack-steps 5 --epochs 10
run simclr-at-eps16  --scheme simclr --scenario at --eps 16/255 --attack-steps 5 --epochs 10

clrobust zoo --rebuild-manifest --dir "$ZOO"
echo "zoo complete in $SECONDS s"
