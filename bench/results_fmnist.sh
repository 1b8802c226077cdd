#!/usr/bin/env bash
# The Fashion-MNIST results table of docs/results.md, at the demo budget (6 epochs each):
# raw pixels, random init, MoCo-v2, MoCo-v2+BF, MoCo-v3, MoCo-v3+BF, each with SEEDS seeds,
# every model evaluated by the same protocol (cached features: kNN k=20 and k=200, and the
# linear probe). Runs finish one by one and a finished run is never redone, so the script can
# be stopped and started again. CPU, 2 cores: about 8-9 min per MoCo-v2 run and 16 per MoCo-v3
# run.
#
#   bash bench/results_fmnist.sh                     # all of it, then docs/results.md
#   SEEDS="0" EPOCHS=2 bash bench/results_fmnist.sh  # a quicker look (table in OUT/results.md)
#   PY=python OUT=/scratch/results bash bench/results_fmnist.sh
#   EXTRA="data.subset=512 train.max_steps=2" OUT=/tmp/r bash bench/results_fmnist.sh  # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/results_lib.sh
OUT=${OUT:-runs/results_fmnist}
SEEDS=${SEEDS:-"0 1"}
EPOCHS=${EPOCHS:-6}
mkdir -p "$OUT"

for seed in $SEEDS; do
  evaluate "$OUT/baselines_s$seed/baseline_raw_pixels" --baseline raw-pixels \
    --config configs/demo.yaml --output "$OUT/baselines_s$seed" --set run.seed="$seed"
  evaluate "$OUT/baselines_s$seed/baseline_random_init" --baseline random-init \
    --config configs/demo.yaml --output "$OUT/baselines_s$seed" --set run.seed="$seed"
  for name in demo demo_bf demo_mocov3 demo_mocov3_bf; do
    run="$OUT/${name}_s$seed"
    pretrain "$run" "configs/$name.yaml" run.seed="$seed" train.epochs="$EPOCHS"
    evaluate "$run" --checkpoint "$run/checkpoints/last.pt"
  done
done
doc=()
if [ ${#EXTRA[@]} -eq 0 ] && [ "$EPOCHS" = 6 ] && [ "$SEEDS" = "0 1" ]; then doc=(--write-doc); fi
"$PY" bench/results_table.py "$OUT" --epochs "$EPOCHS" --seeds "$SEEDS" ${doc[@]+"${doc[@]}"}
