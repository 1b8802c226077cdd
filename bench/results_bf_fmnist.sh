#!/usr/bin/env bash
# Where does BatchFormer help MoCo? The BatchFormer table of docs/results.md: MoCo-v2
# (configs/demo.yaml) against + BatchFormer with plain keys (configs/demo_bf.yaml, sslkit's
# scheme) against + BatchFormer with the authors' key scheme (batchformer.keys=both), SEEDS
# seeds each, in three regimes on Fashion-MNIST:
#   full  the 60k training images for EPOCHS epochs;
#   lt    long-tailed, r = 100 (data.long_tail=100: 6000 ... 60 images per class, 14,886 in
#         all) for pretraining and for the probe's training, EPOCHS epochs, scored on the
#         balanced test set with many / medium / few-shot groups (eval.shot_groups=[1000,200]:
#         > 1000 / 200-1000 / < 200 training images; the 4 / 3 / 3 classes of the profile);
#   low   10 % of the data (data.subset=0.1, stratified) at 10x the epochs: the compute of
#         `full`.
# Raw pixels and a random-init backbone are evaluated in each regime for reference. Every
# model: cached features, kNN k=20 (T=0.07) and k=200 (T=0.1), the cached linear probe.
# Runs finish one by one and a finished run is never redone: the script can be stopped and
# started again. EPOCHS is 3, a third of the demo's 9 in every regime, so that the 3 seeds x
# 3 regimes x 3 models fit in about 70 minutes on 2 CPU cores; EPOCHS=9 runs them at the
# demo budget (about 4 hours; OUT/results.md, docs/results.md stays as it is).
#
#   bash bench/results_bf_fmnist.sh                        # all of it, then docs/results.md
#   SEEDS="0" EPOCHS=2 bash bench/results_bf_fmnist.sh     # quicker (table in OUT/results.md)
#   EXTRA="train.max_steps=2" OUT=/tmp/bf bash bench/results_bf_fmnist.sh   # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/results_lib.sh
OUT=${OUT:-runs/results_bf_fmnist}
SEEDS=${SEEDS:-"0 1 2"}
EPOCHS=${EPOCHS:-3}
REGIMES=${REGIMES:-"full lt low"}
mkdir -p "$OUT"

regime_sets() {  # the data and epochs of a regime
  case $1 in
    full) echo "train.epochs=$EPOCHS" ;;
    lt) echo "train.epochs=$EPOCHS data.long_tail=100 eval.shot_groups=[1000,200]" ;;
    low) echo "train.epochs=$((10 * EPOCHS)) data.subset=0.1" ;;
  esac
}

for regime in $REGIMES; do
  read -r -a sets <<< "$(regime_sets "$regime")"
  for seed in $SEEDS; do
    base="$OUT/$regime/baselines_s$seed"
    evaluate_in "$regime" "$base/baseline_raw_pixels" --baseline raw-pixels \
      --config configs/demo.yaml --output "$base" --set run.seed="$seed"
    evaluate_in "$regime" "$base/baseline_random_init" --baseline random-init \
      --config configs/demo.yaml --output "$base" --set run.seed="$seed"
    for model in plain bf_plain bf_both; do
      run="$OUT/$regime/${model}_s$seed"
      case $model in
        plain) cfg=configs/demo.yaml; keys=() ;;
        bf_plain) cfg=configs/demo_bf.yaml; keys=(batchformer.keys=plain) ;;
        bf_both) cfg=configs/demo_bf.yaml; keys=(batchformer.keys=both) ;;
      esac
      pretrain "$run" "$cfg" run.seed="$seed" "${sets[@]}" ${keys[@]+"${keys[@]}"}
      evaluate_in "$regime" "$run" --checkpoint "$run/checkpoints/last.pt"
    done
  done
done
doc=()
if [ ${#EXTRA[@]} -eq 0 ] && [ "$EPOCHS" = 3 ] && [ "$SEEDS" = "0 1 2" ] \
    && [ "$REGIMES" = "full lt low" ]; then doc=(--write-doc); fi
"$PY" bench/results_table.py "$OUT" --table bf --epochs "$EPOCHS" --seeds "$SEEDS" \
  ${doc[@]+"${doc[@]}"}
