# Shared by the sbatch scripts in slurm/: sourced, never run. Checks required variables up front with one clear
# message each, activates the project's environment (the job must do it itself: no `pip install` in a job),
# and falls back to the local machine when the script runs without Slurm (`bash slurm/X.sh`).

mtp_require() {  # mtp_require VAR "what it is"
    if [ -z "${!1:-}" ]; then
        echo "error: set $1 ($2)" >&2
        exit 2
    fi
}

mtp_activate() {
    # MTP_DS_VENV: a virtualenv to activate (default: the repo's .venv when present); MTP_DS_ACTIVATE: any other
    # shell line that sets up the environment (e.g. "module load cuda; conda activate mtp").
    if [ -n "${MTP_DS_ACTIVATE:-}" ]; then
        eval "$MTP_DS_ACTIVATE"
    elif [ -n "${MTP_DS_VENV:-}" ]; then
        # shellcheck disable=SC1091
        source "$MTP_DS_VENV/bin/activate"
    elif [ -f "$MTP_DS_REPO/.venv/bin/activate" ]; then
        # shellcheck disable=SC1091
        source "$MTP_DS_REPO/.venv/bin/activate"
    fi
    command -v python >/dev/null || { echo "error: no python after activating the environment" >&2; exit 2; }
    python -c "import mtp_ds" 2>/dev/null || {
        echo "error: mtp_ds is not importable; install it (bash scripts/install.sh) or set MTP_DS_VENV / MTP_DS_ACTIVATE" >&2
        exit 2
    }
    if [ -n "${HF_CACHE:-}" ]; then export HF_HOME="$HF_CACHE"; fi
    if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        export DS_ACCELERATOR=cpu
    fi
}

# The repository root: SLURM_SUBMIT_DIR under sbatch (the script itself is copied to a spool dir), else ours.
if [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_SUBMIT_DIR:-}" ] && [ -f "$SLURM_SUBMIT_DIR/pyproject.toml" ]; then
    MTP_DS_REPO=${MTP_DS_REPO:-$SLURM_SUBMIT_DIR}
else
    MTP_DS_REPO=${MTP_DS_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
fi
cd "$MTP_DS_REPO"
mkdir -p logs
