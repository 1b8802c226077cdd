#!/usr/bin/env bash
# What pretraining does when labels are few: the results-finetune table of docs/results.md.
# The demo's backbone (CKPT, runs/demo/checkpoints/last.pt from `make demo`) against the same
# network at random init (--baseline random-init: its seeded initialisation), each
#   fine-tuned  run_finetune.py --config configs/demo_finetune.yaml: SimCLR's semi-supervised
#               recipe at the demo's scale (SGD-Nesterov, LR 0.05 per 256, no weight decay,
#               cosine, the 4 px padded crop, batch 256), EPOCHS_1 / EPOCHS_10 / EPOCHS_100
#               epochs at 1 / 10 / 100 % of the labels (SimCLR: 60 on 1 %, 30 on 10 %);
#   probed      run_lincls.py, the cached linear probe of every results table
#               (bench/results_lib.sh) on the same labelled images (finetune.label_fraction);
# at FRACTIONS of the 60k Fashion-MNIST training labels (class-balanced, seeded by run.seed:
# each seed its own 600 / 6,000 images), SEEDS seeds, scored on the 10k test images.
#
# Time, measured on 2 free cores with native bf16 (the demo's ResNet-18 with its stem
# max-pool): a fine-tuning run takes about 0.4-1.4 min at 1 %, 1.3-1.4 min at 10 % and 2.3 min
# at 100 %, each probe about half a minute: about 33 minutes for 3 seeds x 2 backbones (a CPU
# without native bf16 computes fp32, about 1.6x slower). Runs finish one by one and a
# finished one is never redone; an interrupted fine-tuning resumes where it stopped: stop and
# start at will.
#
#   bash bench/results_finetune.sh                        # all of it, then docs/results.md
#   SEEDS=0 bash bench/results_finetune.sh                # one seed (table in OUT/results.md)
#   EXTRA="finetune.epochs=1 eval.epochs=2" OUT=/tmp/ft bash bench/results_finetune.sh  # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/results_lib.sh
OUT=${OUT:-runs/results_finetune}
CKPT=${CKPT:-runs/demo/checkpoints/last.pt}
SEEDS=${SEEDS:-"0 1 2"}
FRACTIONS=${FRACTIONS:-"0.01 0.1 1.0"}
EPOCHS_1=${EPOCHS_1:-60}
EPOCHS_10=${EPOCHS_10:-30}
EPOCHS_100=${EPOCHS_100:-5}
if [ ! -f "$CKPT" ]; then
  echo "no pretrained backbone at $CKPT: run make demo first (or set CKPT=...)" >&2
  exit 2
fi
mkdir -p "$OUT"

epochs_for() {  # the fine-tuning epochs at a label fraction
  case $1 in
    0.01) echo "$EPOCHS_1" ;;
    0.1) echo "$EPOCHS_10" ;;
    *) echo "$EPOCHS_100" ;;
  esac
}

finetune() {  # finetune DIR [run_finetune args...]: skip when DIR/finetune.json exists
  local dir=$1; shift
  if [ -f "$dir/finetune.json" ]; then echo "== $dir: done"; return; fi
  echo "== finetune $dir"
  "$PY" run_finetune.py "$@" ${EXTRA[@]+"${EXTRA[@]}"}
}

for frac in $FRACTIONS; do
  labels=(finetune.label_fraction="$frac")
  for seed in $SEEDS; do
    for init in pretrained random; do
      out="$OUT/f$frac/${init}_s$seed"
      dir=$out
      base=()
      if [ "$init" = random ]; then base=(--baseline random-init); dir="$out/baseline_random_init"; fi
      finetune "$dir" --checkpoint "$CKPT" ${base[@]+"${base[@]}"} --output "$out" \
        --config configs/demo_finetune.yaml --set run.seed="$seed" run.progress=false \
        "${labels[@]}" finetune.epochs="$(epochs_for "$frac")" finetune.eval_every=0
      evaluate "$dir" --checkpoint "$CKPT" ${base[@]+"${base[@]}"} --output "$out" \
        --set run.seed="$seed" run.progress=false "${labels[@]}"
    done
  done
done
doc=()
if [ ${#EXTRA[@]} -eq 0 ] && [ "$SEEDS" = "0 1 2" ] && [ "$FRACTIONS" = "0.01 0.1 1.0" ] \
    && [ "$EPOCHS_1 $EPOCHS_10 $EPOCHS_100" = "60 30 5" ]; then doc=(--write-doc); fi
"$PY" bench/results_finetune_table.py "$OUT" --seeds "$SEEDS" --fractions "$FRACTIONS" \
  ${doc[@]+"${doc[@]}"}
