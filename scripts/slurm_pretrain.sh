#!/bin/bash
# Multi-node pretraining under SLURM with torchrun (one torchrun per node, one process per GPU).
#
#   sbatch scripts/slurm_pretrain.sh                                  # the default config
#   CONFIG=configs/imagenet_mocov3_r50_100ep.yaml sbatch --nodes=4 scripts/slurm_pretrain.sh
#   RESUME=1 sbatch scripts/slurm_pretrain.sh                         # continue from last.pt
#
# train.batch_size is the GLOBAL batch (split over all processes of all nodes), so the same
# config gives the same recipe (and the same scaled LR) on any number of nodes or GPUs.
#SBATCH --job-name=sslkit-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${CONFIG:-configs/imagenet_mocov2_200ep.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PORT=${PORT:-29500}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
EXTRA=()
[ -n "${RESUME:-}" ] && EXTRA+=(--resume)

# c10d rendezvous on the first node; every node runs the same command.
srun --kill-on-bad-exit=1 torchrun \
  --nnodes="$SLURM_NNODES" \
  --nproc_per_node="$GPUS_PER_NODE" \
  --rdzv_id="$SLURM_JOB_ID" \
  --rdzv_backend=c10d \
  --rdzv_endpoint="$HEAD_NODE:$PORT" \
  run_pretrain.py --config "$CONFIG" "${EXTRA[@]}" "$@"
