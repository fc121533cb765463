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
#   MODEL_DIR=outputs/qwen3-mtp sbatch slurm/eval_gsm8k.sh
#   MODEL_DIR=outputs/qwen3-mtp OUT_DIR=outputs/qwen3-sweep GSM8K_PATH=/data/gsm8k_test.jsonl \
#       SWEEP_ARGS="--limit 200 --thresholds 0.9,0.8" sbatch slurm/eval_gsm8k.sh
#   MODEL_DIR=/tmp/tiny-mtp bash slurm/eval_gsm8k.sh           # without Slurm: on this machine
#
# Variables: MODEL_DIR (required), OUT_DIR (default $MODEL_DIR-sweep), GSM8K_PATH (local JSONL in the GSM8K
# schema; default: the Hub's openai/gsm8k test split), SWEEP_ARGS (extra eval/sweep.py options),
# MTP_DS_VENV / MTP_DS_ACTIVATE (environment), HF_CACHE.
set -euo pipefail
# shellcheck source=slurm/common.sh
source "${MTP_DS_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "${BASH_SOURCE[0]}")/..}}/slurm/common.sh"

mtp_require MODEL_DIR "the exported MTP checkpoint to evaluate (mtp-ds export ...)"
[ -d "$MODEL_DIR" ] || { echo "error: MODEL_DIR=$MODEL_DIR is not a directory" >&2; exit 2; }
OUT_DIR=${OUT_DIR:-${MODEL_DIR%/}-sweep}
mtp_activate

metadata=()
if [ -n "${GSM8K_PATH:-}" ]; then metadata=(--metadata "{\"gsm8k_path\": \"$GSM8K_PATH\"}"); fi
# shellcheck disable=SC2086
python eval/sweep.py --pretrained "$MODEL_DIR" --out_dir "$OUT_DIR" "${metadata[@]}" ${SWEEP_ARGS:-}
