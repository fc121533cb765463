#!/usr/bin/env bash
#SBATCH --job-name=mtp-tiny
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --exclusive
#SBATCH --time=00:30:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#
# The tiny CPU recipe (random 2-layer Qwen3, recipes/tiny_cpu.yaml) on 2 CPU ranks of one node: a smoke test of the cluster setup.
#
#   sbatch slurm/train_tiny.sh [key=value ...]                       # recipe overrides, e.g. train.steps=1000
#   OUTPUT_DIR=/scratch/$USER/run1 HF_CACHE=/scratch/hf sbatch slurm/train_tiny.sh
#   bash slurm/train_tiny.sh train.steps=10                          # without Slurm: this machine, 2 CPU ranks
#
# Before the time limit (--signal, 300 s) or on preemption the ranks checkpoint and the job requeues itself;
# the requeued job resumes from the newest checkpoint (checkpoint.resume=auto). A finished run (OUTPUT_DIR/DONE)
# is not requeued. Variables: see slurm/common.sh (RECIPE, OUTPUT_DIR, GPUS_PER_NODE, HF_CACHE, MTP_DS_VENV).
set -euo pipefail
# shellcheck source=slurm/common.sh
source "${MTP_DS_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "${BASH_SOURCE[0]}")/..}}/slurm/common.sh"
GPUS_PER_NODE=${GPUS_PER_NODE:-2}  # CPU ranks
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
mtp_train recipes/tiny_cpu.yaml "$@"
