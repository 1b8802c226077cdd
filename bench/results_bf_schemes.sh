#!/usr/bin/env bash
# BatchFormer schemes on MoCo-v3: the results-bf-schemes table of docs/results.md. MoCo-v3 on
# the demo backbone (configs/demo_mocov3.yaml: ResNet-18 at width 16, BN in the projector and
# predictor) against three BatchFormer twins (configs/demo_mocov3_bf.yaml), SEEDS seeds each:
#   mocov3         no BatchFormer;
#   bf_sslkit      sslkit's scheme: plain keys, trained, mean loss, joint head BN (the defaults);
#   bf_per_stream  the same with batchformer.head_bn=per_stream (the plain stream is exactly
#                  MoCo-v3; the BatchFormer stream gets its own BN statistics);
#   bf_authors     the authors' MoCo-v3 scheme (zhihou7/BatchFormer moco-v3/moco/builder.py):
#                  keys of both streams, a frozen random BatchFormer, the summed 8-term loss.
# Regimes (REGIMES):
#   lt    long-tailed, r = 100 (data.long_tail=100: 6000 ... 60 images per class, 14,886 in
#         all) for pretraining and for the probe's training, EPOCHS epochs (58 steps each),
#         scored on the balanced test set with many / medium / few-shot groups
#         (eval.shot_groups=[1000,200], as bench/results_bf_fmnist.sh);
#   full  the 60k training images, FULL_EPOCHS epochs (234 steps each); not in the default run.
# The random-init backbone is scored in each regime for reference. Every model: cached
# features, kNN k=20 (T=0.07) and k=200 (T=0.1), the cached linear probe; the table adds the
# positive and negative cosines of the plain query stream at the end of training (the mean of
# the logged steps of the last epoch, metrics.jsonl pos_sim / neg_sim).
#
# The cut, measured on this 2-core machine (bench/results_bf_schemes.sh with EPOCHS=1
# SEEDS=0, load ~2 from other jobs outside the timed runs): a step of 256 images runs at
# 449 img/s for MoCo-v3 and 300-350 img/s for the BatchFormer twins (sslkit's scheme 301,
# per_stream 316, the authors' 352: the heads see 2B rows), so a long-tailed epoch (58 steps)
# takes 33 s (MoCo-v3) to 49 s, and a full-data epoch (234 steps) 4x that; a run adds about
# 6 s of start-up and 15-20 s of evaluation. Under contention the same steps ran 1.3-2x slower
# (332 img/s for MoCo-v3). The default is the long-tailed regime at the demo's 6 epochs (no
# cut in epochs): 4 models x 3 seeds = 12 runs, about 60 minutes on 2 free cores and up to
# about 90 under that contention. The cut is the full-data regime: one full-data epoch of the
# 12 runs alone costs about 35 minutes on free cores, so even 1 epoch does not fit beside the
# long-tailed runs, and 1-2 epochs would say little. REGIMES="lt full" FULL_EPOCHS=2 adds it
# (about 75 more minutes on free cores).
#
# Runs finish one by one and a finished run is never redone (bench/results_lib.sh): the script
# can be stopped and started again.
#
#   bash bench/results_bf_schemes.sh                       # all of it, then docs/results.md
#   SEEDS="0" EPOCHS=2 bash bench/results_bf_schemes.sh    # quicker (table in OUT/results.md)
#   EXTRA="train.max_steps=2" OUT=/tmp/bfs bash bench/results_bf_schemes.sh   # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/results_lib.sh
OUT=${OUT:-runs/results_bf_schemes}
SEEDS=${SEEDS:-"0 1 2"}
EPOCHS=${EPOCHS:-6}
FULL_EPOCHS=${FULL_EPOCHS:-2}
REGIMES=${REGIMES:-"lt"}
MODELS=(mocov3 bf_sslkit bf_per_stream bf_authors)
for regime in $REGIMES; do
  case $regime in lt|full) ;; *) echo "unknown regime '$regime' (lt, full)" >&2; exit 2 ;; esac
done
mkdir -p "$OUT"

regime_sets() {  # the data and epochs of a regime
  case $1 in
    lt) echo "train.epochs=$EPOCHS data.long_tail=100 eval.shot_groups=[1000,200]" ;;
    full) echo "train.epochs=$FULL_EPOCHS" ;;
  esac
}

model_sets() {  # the config and keys of a model
  case $1 in
    mocov3) echo "configs/demo_mocov3.yaml" ;;
    bf_sslkit) echo "configs/demo_mocov3_bf.yaml" ;;
    bf_per_stream) echo "configs/demo_mocov3_bf.yaml batchformer.head_bn=per_stream" ;;
    bf_authors) echo "configs/demo_mocov3_bf.yaml batchformer.keys=both batchformer.frozen=true \
batchformer.loss_reduction=sum" ;;
  esac
}

for regime in $REGIMES; do
  read -r -a sets <<< "$(regime_sets "$regime")"
  for seed in $SEEDS; do
    base="$OUT/$regime/baselines_s$seed"
    evaluate_in "$regime" "$base/baseline_random_init" --baseline random-init \
      --config configs/demo_mocov3.yaml --output "$base" --set run.seed="$seed"
    for model in "${MODELS[@]}"; do
      run="$OUT/$regime/${model}_s$seed"
      read -r -a spec <<< "$(model_sets "$model")"
      keys=("${spec[@]:1}")
      pretrain "$run" "${spec[0]}" run.seed="$seed" "${sets[@]}" ${keys[@]+"${keys[@]}"}
      evaluate_in "$regime" "$run" --checkpoint "$run/checkpoints/last.pt"
    done
  done
done
doc=()
if [ ${#EXTRA[@]} -eq 0 ] && [ "$EPOCHS" = 6 ] && [ "$SEEDS" = "0 1 2" ] \
    && [ "$REGIMES" = "lt" ]; then doc=(--write-doc); fi
"$PY" bench/results_table.py "$OUT" --table bf-schemes --epochs "$EPOCHS" --seeds "$SEEDS" \
  --regimes "$REGIMES" ${doc[@]+"${doc[@]}"}
