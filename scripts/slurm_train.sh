#!/usr/bin/env bash
# Train carotid on one or many Slurm nodes: one `accelerate launch` per node, all GPUs of each node.
#
#   sbatch --nodes 2 --gres gpu:8 scripts/slurm_train.sh --root-dir DATA --label-excel label.xlsx --epochs 50
#
# Requeued or resubmitted with RESUME_RUN=output/train_YYYYMMDD_HHMMSS it continues that run:
#   sbatch --nodes 2 --gres gpu:8 --export ALL,RESUME_RUN=output/train_20260101_120000 scripts/slurm_train.sh
# Slurm sends SIGTERM before the time limit (--signal below): every rank stops at the next step,
# a checkpoint is written and the job ends; resubmit with RESUME_RUN to go on. The output dir must be on a
# file system all nodes share.
#SBATCH --job-name=carotid
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --signal=TERM@120
#SBATCH --output=slurm-%j.out
set -euo pipefail

GPUS_PER_NODE="${GPUS_PER_NODE:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l)}"
GPUS_PER_NODE="${GPUS_PER_NODE:-1}"
NNODES="${SLURM_NNODES:-1}"
MASTER_ADDR="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1 || echo 127.0.0.1)"
MASTER_PORT="${MASTER_PORT:-$((29500 + ${SLURM_JOB_ID:-0} % 1000))}"
CONFIG="${ACCELERATE_CONFIG:-configs/accelerate/multi_gpu_ddp.yaml}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-16} / (GPUS_PER_NODE > 0 ? GPUS_PER_NODE : 1) ))}"

ARGS=("$@")
if [ -n "${RESUME_RUN:-}" ]; then
    ARGS=(--resume "$RESUME_RUN")
fi

echo "nodes: $NNODES x $GPUS_PER_NODE GPUs, main: $MASTER_ADDR:$MASTER_PORT, config: $CONFIG"
# One task per node; each task launches that node's GPU processes. SLURM_NODEID is the machine rank.
# --kill-on-bad-exit stops the other nodes when one fails; the signal reaches every process.
srun --kill-on-bad-exit=1 bash -c "accelerate launch --config_file '$CONFIG' \
    --num_machines $NNODES --num_processes $((NNODES * GPUS_PER_NODE)) \
    --machine_rank \$SLURM_NODEID --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \
    -m carotid.train $(printf '%q ' "${ARGS[@]}")"
