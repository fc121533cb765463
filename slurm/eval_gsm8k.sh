#!/usr/bin/env bash
#SBATCH --job-name=mtp-eval-gsm8k
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%j.out
#
# The paper's GSM8K sweep (Static k=1..5, ConfAdapt at 14 thresholds, k_max 16), plus our lossless selfspec at
# k_max, of one exported MTP checkpoint, with the repo's lm-eval task; writes sweep.csv / sweep.json / pareto.png
# to OUT_DIR.
#
#   MODEL_DIR=outputs/qwen3-mtp RECIPE=qwen3_4b_metamath sbatch slurm/eval_gsm8k.sh
#   MODEL_DIR=outputs/llama31-mtp RECIPE=llama31_8b_magpie_metamath sbatch slurm/eval_gsm8k.sh  # chat, fp32
#   MODEL_DIR=outputs/qwen3-mtp OUT_DIR=outputs/qwen3-sweep GSM8K_PATH=/data/gsm8k_test.jsonl \
#       SWEEP_ARGS="--limit 200 --thresholds 0.9,0.8" sbatch slurm/eval_gsm8k.sh
#   MODEL_DIR=/tmp/tiny-mtp bash slurm/eval_gsm8k.sh           # without Slurm: on this machine
#
# Variables: MODEL_DIR (required), OUT_DIR (default $MODEL_DIR-sweep), RECIPE (the training recipe: the paper's
# evaluation settings for it, e.g. chat template + multi-turn few-shot + float32 for Llama; see eval/README.md),
# GSM8K_PATH (local JSONL in the GSM8K schema; default: the Hub's openai/gsm8k test split), SWEEP_ARGS (extra
# eval/sweep.py options, e.g. --batch_size 1 or --restart), MTP_DS_VENV / MTP_DS_ACTIVATE (environment), HF_CACHE.
# Resubmitting with the same OUT_DIR resumes: finished settings are read back, not run again.
set -euo pipefail
# shellcheck source=slurm/common.sh
source "${MTP_DS_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "${BASH_SOURCE[0]}")/..}}/slurm/common.sh"

mtp_require MODEL_DIR "the exported MTP checkpoint to evaluate (mtp-ds export ...)"
[ -d "$MODEL_DIR" ] || { echo "error: MODEL_DIR=$MODEL_DIR is not a directory" >&2; exit 2; }
OUT_DIR=${OUT_DIR:-${MODEL_DIR%/}-sweep}
mtp_activate

metadata=()
if [ -n "${GSM8K_PATH:-}" ]; then metadata=(--metadata "{\"gsm8k_path\": \"$GSM8K_PATH\"}"); fi
recipe=()
if [ -n "${RECIPE:-}" ]; then recipe=(--recipe "$RECIPE"); fi
# shellcheck disable=SC2086
python eval/sweep.py --pretrained "$MODEL_DIR" --out_dir "$OUT_DIR" "${metadata[@]}" "${recipe[@]}" ${SWEEP_ARGS:-}
