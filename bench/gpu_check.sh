#!/usr/bin/env bash
# The GPU check, one prepared call of about 8 minutes on one GPU (an H200 or similar):
#   1. the CUDA-marked tests (pytest -m gpu);
#   2. bench/gpu_r50.py (MoCo-v2 ResNet-50 step against a supervised step);
#   3. the GPU rows of bench/pretrain.py, bench/knn.py and bench/data.py (nvjpeg);
#   4. bench/memory.py: ViT-S/16 at batch 1024 on one GPU, whole batch, micro-batches of 128
#      (peak memory, img/s) and compiled;
#   5. 200-step smoke runs of MoCo-v3 + BatchFormer on ViT-S/16 and on ResNet-50, 224 px
#      synthetic data, with the ImageNet recipes' settings.
# Everything lands in one folder: OUT (default runs/gpu_check): summary.txt (one line per
# step with its exit code and seconds), gpu_check.log (every step's output) and the updated
# benchmarks.md (the rows the benchmarks added). Copy its new rows into docs/benchmarks.md.
#
# Python packages the GPU machine lacks (kornia, faiss-cpu, ...) are installed from .whl/ when
# that folder holds wheels: `bash bench/gpu_wheels.sh` downloads them where pip has internet.
#
#   bash bench/gpu_check.sh                    # on the GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash bench/gpu_check.sh # the same steps at toy size on a CPU (a dry run)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
: > "$OUT/gpu_check.log"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/sslkit-site .whl/*.whl \
    && export PYTHONPATH=/tmp/sslkit-site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
cp docs/benchmarks.md "$OUT/benchmarks.before.md"

step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "===== $name: $*" >> "$OUT/gpu_check.log"
  timeout "$limit" "$@" >> "$OUT/gpu_check.log" 2>&1
  local rc=$?
  printf '%-12s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
}

if [ "$QUICK" = 1 ]; then  # toy sizes: checks the script, not the GPU
  R50="--batch 8 --steps 1 --blocks 1 --no-write"; PRE="--set train.batch_size=32 --steps 1 --blocks 1 --no-write"
  KNN="--train 2000 --queries 200 --repeats 1 --no-write"
  DATA="--images 64 --batch 16 --repeats 1 --decode-images 8 --size 64 --no-write"
  SMOKE="train.max_steps=2 train.batch_size=8 data.synthetic_train=16 data.image_size=64 model.patch_size=16"
  MEM="--variants whole,eighth --batch 16 --steps 1 --warmup 1 --no-write --set data.synthetic_train=32 data.image_size=64"
else
  R50=""; PRE="--set data.name=synthetic data.channels=3 data.image_size=32 data.synthetic_train=8192 model.width=64 train.batch_size=512"
  KNN="--train 100000 --queries 10000 --repeats 2"; DATA="--workers 8 --images 2000 --repeats 3"
  SMOKE="train.max_steps=200 train.batch_size=256 data.synthetic_train=4096"
  MEM="--variants whole,eighth,compile --batch 1024 --steps 3 --warmup 2 --set data.synthetic_train=2048"
fi
GPU_TESTS="-m gpu"

step env 60 $PY -c "import torch, torchvision, kornia, faiss; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'kornia', kornia.__version__, 'faiss', faiss.__version__, 'gpus', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
step tests 150 $PY -m pytest -q -p no:cacheprovider $GPU_TESTS tests
step gpu_r50 90 $PY bench/gpu_r50.py --device "$DEVICE" $R50
step pretrain 90 $PY bench/pretrain.py --device "$DEVICE" $PRE
step knn 60 $PY bench/knn.py --device "$DEVICE" $KNN
step data 150 $PY bench/data.py --device "$DEVICE" $DATA --folder "$OUT/jpegs"
step memory 240 $PY bench/memory.py --device "$DEVICE" --config configs/imagenet_mocov3_vits_300ep.yaml \
  $MEM data.name=synthetic data.num_workers=4 method.sync_bn=false
for arch in vits r50; do
  if [ $arch = vits ]; then CFG=configs/imagenet_mocov3_vits_300ep.yaml; else CFG=configs/imagenet_mocov3_r50_100ep_bf.yaml; fi
  step smoke_$arch 100 $PY run_pretrain.py --config $CFG --overwrite --set \
    run.output_dir="$OUT/smoke_$arch" run.device="$DEVICE" run.progress=false \
    run.log_every_steps=20 data.name=synthetic data.num_workers=4 batchformer.enabled=true \
    method.sync_bn=false eval.knn_every=0 optim.warmup_epochs=0 $SMOKE
  tail -n 3 "$OUT/smoke_$arch/metrics.jsonl" >> "$OUT/summary.txt" 2>/dev/null
  rm -rf "$OUT/smoke_$arch/checkpoints" "$OUT/smoke_$arch/backbone.pt"
done
rm -rf "$OUT/jpegs"
cp docs/benchmarks.md "$OUT/benchmarks.md"
echo "done: $OUT/summary.txt"
