#!/usr/bin/env bash
# The runs behind docs/monitoring.md: the three demos (MoCo-v2, MoCo-v3, ViT) over their full
# length (the healthy ranges of the signals), the same recipes on images of one flat grey
# (nothing to learn: the collapse the alarm is for) and the ViT demo at 10x its LR without
# warmup under train.spike_policy: rollback (an unstable run), these two as runs of
# SHORT_STEPS steps (train.max_steps: the schedule fits into them); then the plots
# (docs/img/health_*.png) and the table of ranges (written into docs/monitoring.md between
# its health-ranges markers). Each run's console output is kept beside it (run.log); a
# finished run is never redone and a stopped one resumes (--auto-resume), so the script can
# be stopped and started again. Time it on a quiet machine.
#
#   bash bench/health_runs.sh                          # about 45 minutes on 2 quiet cores
#   STEPS=12 OUT=/tmp/h IMG=/tmp/h/img DOC=none bash bench/health_runs.sh    # smoke
#
# STEPS makes every run a run of that many steps: train.max_steps ends the schedule (warmup,
# cosine) there, so a capped run is a shorter run, not the start of a longer one, and it is
# not continued later (delete OUT's run directories to make them again).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/health}
SHORT_STEPS=${STEPS:-${SHORT_STEPS:-400}}  # the flat and the 10x-LR runs: enough steps to
                                           # see the collapse settle
DOC=${DOC:-docs/monitoring.md}    # "none": print the table only
IMG=${IMG:-docs/img}
CAP=()
if [ -n "${STEPS:-}" ]; then CAP=("train.max_steps=$STEPS"); fi
mkdir -p "$OUT"

run() {  # run NAME CONFIG [key=value...]: pretrain OUT/NAME (resumed if stopped, kept if done)
  local name=$1 cfg=$2 dir=$OUT/$1; shift 2
  echo "== $name"
  mkdir -p "$dir"
  "$PY" run_pretrain.py --config "$cfg" --auto-resume --set run.output_dir="$dir" \
    run.progress=false eval.knn_every=0 ${CAP[@]+"${CAP[@]}"} "$@" 2>&1 | tee -a "$dir/run.log"
}

if [ ! -d "$OUT/flat_data/train" ]; then  # 4096 identical 28 x 28 grey images, one class
  "$PY" - "$OUT/flat_data/train/a" <<'EOF'
import sys
from pathlib import Path

from PIL import Image

root = Path(sys.argv[1])
root.mkdir(parents=True, exist_ok=True)
for i in range(4096):
    Image.new("L", (28, 28), 128).save(root / f"{i}.png")
EOF
fi
FLAT=(data.name=imagefolder "data.root=$OUT/flat_data" data.channels=1 data.image_size=28
      data.load_size=28 train.epochs=1000 "train.max_steps=$SHORT_STEPS")

run mocov2 configs/demo.yaml
run mocov3 configs/demo_mocov3.yaml
run vit configs/demo_vit.yaml
run mocov2_flat configs/demo.yaml "${FLAT[@]}"
run mocov3_flat configs/demo_mocov3.yaml "${FLAT[@]}"
run vit_flat configs/demo_vit.yaml "${FLAT[@]}"
run vit_spike configs/demo_vit.yaml optim.lr=5e-3 optim.warmup_epochs=0 \
  train.spike_policy=rollback "train.max_steps=$SHORT_STEPS"

PLOTS="$PY scripts/health_plots.py"
$PLOTS "$OUT/mocov2" "$OUT/mocov3" "$OUT/vit" --labels MoCo-v2 MoCo-v3 ViT \
  --out "$IMG/health_healthy.png"
$PLOTS "$OUT/mocov2_flat" "$OUT/mocov3_flat" "$OUT/vit_flat" \
  --labels "MoCo-v2 flat" "MoCo-v3 flat" "ViT flat" --out "$IMG/health_collapse.png"
$PLOTS "$OUT/vit" "$OUT/vit_spike" --labels "ViT" "ViT, 10x LR, no warmup, rollback" \
  --out "$IMG/health_spike.png"
RANGES=(--ranges)
if [ "$DOC" != none ]; then RANGES+=(--doc "$DOC"); fi
$PLOTS "$OUT/mocov2" "$OUT/mocov3" "$OUT/vit" "$OUT/mocov2_flat" "$OUT/mocov3_flat" \
  "$OUT/vit_flat" "$OUT/vit_spike" --labels "MoCo-v2 (demo.yaml)" \
  "MoCo-v3 (demo_mocov3.yaml)" "ViT (demo_vit.yaml)" "MoCo-v2, flat images" \
  "MoCo-v3, flat images" "ViT, flat images" "ViT, 10x LR, rollback" "${RANGES[@]}"
