#!/bin/bash
# Multi-node pretraining under SLURM with torchrun (one torchrun per node, one process per GPU).
#
#   sbatch scripts/slurm_pretrain.sh                                  # the default config
#   CONFIG=configs/imagenet_mocov3_r50_100ep.yaml sbatch --nodes=4 scripts/slurm_pretrain.sh
#   scancel --signal=USR1 --batch <jobid>          # checkpoint now, then requeue (preemption)
#
# Every start runs the same command with --auto-resume: the first start begins the run, a
# requeued job (time limit, preemption, a node failure) and every torchrun restart continue it
# from checkpoints/last.pt, and a finished run says "already finished" and exits 0.
#
# Lifecycle: SLURM sends SIGUSR1 to this batch shell 300 s before the time limit
# (--signal=B:USR1@300). The trap sends SIGTERM to the processes of the training step: each
# torchrun agent passes it to its workers and waits for them; the workers finish the current
# step, agree on it, rank 0 writes a checkpoint of it (atomic) and they exit. The trap then
# requeues the job (--requeue), which starts again with the same command. SIGTERM, not
# SIGUSR1, goes to the step because torchrun forwards SIGTERM to its workers in every PyTorch
# version (newer ones also forward the signals named in --signals-to-handle), and the trap
# signals the step with scancel, not srun itself (srun answers a SIGTERM by sending SIGKILL to
# the tasks). With --max-restarts, torchrun restarts the workers of a node after a failure
# (one killed, a lost rank ended by run.dist_timeout_s) and they resume.
#
# train.batch_size is the GLOBAL batch (split over all processes of all nodes), so the same
# config gives the same recipe (and the same scaled LR) on any number of nodes or GPUs.
#SBATCH --job-name=sslkit-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -uo pipefail

CONFIG=${CONFIG:-configs/imagenet_mocov2_200ep.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PORT=${PORT:-29500}
MAX_RESTARTS=${MAX_RESTARTS:-3}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# torchrun's agents share one store over restarts unless told otherwise; across nodes each
# restart needs a fresh one (sslkit handles the single-node case itself)
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

requeue() {
  echo "$(date '+%F %T') SIGUSR1: the workers checkpoint and stop; then requeue"
  scancel --signal=TERM "$SLURM_JOB_ID"   # every process of the job's steps, not this shell
  wait "$TRAIN_PID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}
trap requeue USR1

echo "$(date '+%F %T') start ${SLURM_RESTART_COUNT:-0} of job $SLURM_JOB_ID on $SLURM_NNODES node(s)"
# c10d rendezvous on the first node; every node runs the same command. In the background, so
# that this shell can run the trap while the step runs.
srun --kill-on-bad-exit=1 torchrun \
  --nnodes="$SLURM_NNODES" \
  --nproc_per_node="$GPUS_PER_NODE" \
  --max-restarts="$MAX_RESTARTS" \
  --rdzv_id="$SLURM_JOB_ID" \
  --rdzv_backend=c10d \
  --rdzv_endpoint="$HEAD_NODE:$PORT" \
  run_pretrain.py --config "$CONFIG" --auto-resume "$@" &
TRAIN_PID=$!
wait "$TRAIN_PID"
status=$?
echo "$(date '+%F %T') training step ended with status $status"
exit "$status"
