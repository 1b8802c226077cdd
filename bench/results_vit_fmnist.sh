#!/usr/bin/env bash
# The ViT table of docs/results.md: MoCo-v3 on Fashion-MNIST with the demo ViT
# (configs/demo_vit.yaml: ViT-Tiny width, 4 blocks, 7x7 patches), plain against + BatchFormer
# (v1, on the pooled features) against + BatchFormerV2 (on the tokens after block 2), at the
# demo budget (4 epochs), SEEDS seeds each, plus the random-init ViT; every model evaluated
# by the same protocol as bench/results_fmnist.sh (cached features: kNN k=20 and k=200, and
# the linear probe). Runs finish one by one and a finished run is never redone, so the
# script can be stopped and started again. CPU, 2 free cores: about 9 min per plain or v1
# run and 14 per v2 run, ~65 min in all (docs/results.md).
#
#   bash bench/results_vit_fmnist.sh                     # all of it, then docs/results.md
#   SEEDS="0" EPOCHS=2 bash bench/results_vit_fmnist.sh  # a quicker look (table in OUT/results.md)
#   PY=python OUT=/scratch/vit bash bench/results_vit_fmnist.sh
#   EXTRA="data.subset=512 train.max_steps=2" OUT=/tmp/v bash bench/results_vit_fmnist.sh  # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/results_lib.sh
OUT=${OUT:-runs/results_vit_fmnist}
SEEDS=${SEEDS:-"0 1"}
EPOCHS=${EPOCHS:-4}
mkdir -p "$OUT"

for seed in $SEEDS; do
  evaluate "$OUT/baselines_s$seed/baseline_random_init" --baseline random-init \
    --config configs/demo_vit.yaml --output "$OUT/baselines_s$seed" --set run.seed="$seed"
  for name in demo_vit demo_vit_bf demo_vit_bfv2; do
    run="$OUT/${name}_s$seed"
    pretrain "$run" "configs/$name.yaml" run.seed="$seed" train.epochs="$EPOCHS"
    evaluate "$run" --checkpoint "$run/checkpoints/last.pt"
  done
done
doc=()
if [ ${#EXTRA[@]} -eq 0 ] && [ "$EPOCHS" = 4 ] && [ "$SEEDS" = "0 1" ]; then doc=(--write-doc); fi
"$PY" bench/results_table.py "$OUT" --table vit --epochs "$EPOCHS" --seeds "$SEEDS" \
  ${doc[@]+"${doc[@]}"}
