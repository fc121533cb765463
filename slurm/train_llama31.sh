#!/usr/bin/env bash
#SBATCH --job-name=mtp-llama31-8b
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#
# Llama-3.1-8B-Magpie-Align-SFT-v0.1 -> MTP on MetaMathQA (recipes/llama31_8b_magpie_metamath.yaml): 1 node x 4 GPUs (>= 80 GB).
#
#   sbatch slurm/train_llama31.sh [key=value ...]                       # recipe overrides, e.g. train.steps=1000
#   OUTPUT_DIR=/scratch/$USER/run1 HF_CACHE=/scratch/hf sbatch slurm/train_llama31.sh
#   bash slurm/train_llama31.sh train.steps=10                          # without Slurm: this machine, all its GPUs
#
# Before the time limit (--signal, 300 s) or on preemption the ranks checkpoint and the job requeues itself;
# the requeued job resumes from the newest checkpoint (checkpoint.resume=auto). A finished run (OUTPUT_DIR/DONE)
# is not requeued. Variables: see slurm/common.sh (RECIPE, OUTPUT_DIR, GPUS_PER_NODE, HF_CACHE, MTP_DS_VENV).
set -euo pipefail
# shellcheck source=slurm/common.sh
source "${MTP_DS_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "${BASH_SOURCE[0]}")/..}}/slurm/common.sh"
mtp_train recipes/llama31_8b_magpie_metamath.yaml "$@"
