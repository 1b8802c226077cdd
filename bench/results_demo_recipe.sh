#!/usr/bin/env bash
# The demo's recipe on both kinds of CPU (docs/results.md, "The demo on both kinds of CPU"):
# configs/demo.yaml with each VARIANT's overrides, pretrained and evaluated by the demo's own
# protocol (run_lincls.py: kNN and the cached linear probe), once on this CPU as it is
# (run.precision: auto) and once under the AVX2-only stand-in (ONEDNN_MAX_CPU_ISA=AVX2
# ATEN_CPU_CAPABILITY=avx2: oneDNN and ATen limited to AVX2, so auto picks fp32, as on a CPU
# without native bf16). Each run's pretraining and evaluation seconds are kept beside it
# (pretrain_seconds.txt, eval_seconds.txt); time them on a quiet machine. Finished runs are
# never redone, so the script can be stopped and started again.
#
#   bash bench/results_demo_recipe.sh                       # every variant on both kinds
#   KINDS=native VARIANTS="demo nomaxpool" SEEDS="0 1 2" bash bench/results_demo_recipe.sh
#   EXTRA="data.subset=512 train.max_steps=2" OUT=/tmp/r bash bench/results_demo_recipe.sh  # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/results_lib.sh
OUT=${OUT:-runs/results_demo_recipe}
KINDS=${KINDS:-"native fp32 avx2"}
SEEDS=${SEEDS:-"0"}
VARIANTS=${VARIANTS:-"demo epochs6"}
mkdir -p "$OUT"

variant_sets() {  # a variant's overrides of configs/demo.yaml (the demo as it is: none)
  case $1 in
    demo) echo "" ;;
    nomaxpool) echo "model.maxpool=false" ;;   # the demo before the stem's max-pool
    epochs6) echo "train.epochs=6" ;;
    epochs12) echo "train.epochs=12" ;;
    mlp) echo "method.proj_layers=2" ;;
    w20) echo "model.width=20" ;;
    w24e6) echo "train.epochs=6 model.width=24" ;;
    b128e6) echo "train.epochs=6 train.batch_size=128" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

for kind in $KINDS; do
  precision=()
  if [ "$kind" = avx2 ]; then
    export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
  else
    unset ONEDNN_MAX_CPU_ISA ATEN_CPU_CAPABILITY
  fi
  if [ "$kind" = fp32 ]; then  # this CPU in fp32: the AVX2 kind's numbers without its time
    precision=(run.precision=fp32)
  fi
  for seed in $SEEDS; do
    for variant in $VARIANTS; do
      run="$OUT/${kind}/${variant}_s$seed"
      read -r -a sets <<< "$(variant_sets "$variant")"
      pretrain "$run" configs/demo.yaml run.seed="$seed" ${sets[@]+"${sets[@]}"} \
        ${precision[@]+"${precision[@]}"}
      if [ ! -f "$run/eval.json" ]; then
        start=$SECONDS
        evaluate "$run" --checkpoint "$run/checkpoints/last.pt"
        echo $((SECONDS - start)) > "$run/eval_seconds.txt"
      fi
    done
  done
done
doc=()
if [ ${#EXTRA[@]} -eq 0 ] && [ "$OUT" = runs/results_demo_recipe ]; then doc=(--write-doc); fi
"$PY" bench/results_table.py "$OUT" --table demo-recipe --seeds "0 1 2" ${doc[@]+"${doc[@]}"}
