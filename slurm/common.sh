# Shared by the sbatch scripts in slurm/: sourced, never run. Checks required variables up front with one clear
# message each, activates the project's environment (the job must do it itself: no `pip install` in a job),
# launches one torchrun per node, handles preemption (checkpoint, exit, requeue), and falls back to the local
# machine when the script runs without Slurm (`bash slurm/X.sh`).
#
# Variables a user sets (all optional unless a script says otherwise):
#   RECIPE           recipe YAML (each train_*.sh has its default)
#   OUTPUT_DIR       checkpoints, metrics, DONE marker (default outputs/<recipe name>)
#   GPUS_PER_NODE    ranks per node: one per GPU (default: the GPUs Slurm gave the job, else nvidia-smi's count);
#                    on CPU-only nodes, the number of CPU ranks
#   HF_CACHE         Hugging Face cache directory (sets HF_HOME)
#   MTP_DS_VENV      virtualenv to activate (default: the repo's .venv); MTP_DS_ACTIVATE: any setup line instead
#   MTP_DS_SHUTDOWN_TIMEOUT  seconds ranks get to checkpoint after a signal (default 240)
#   MTP_DS_DRY_RUN=1 print the srun / torchrun command lines for every node instead of running
# Trailing arguments of the sbatch script are recipe overrides: sbatch slurm/train_qwen3.sh train.steps=1000

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

mtp_gpus_per_node() {
    if [ -n "${GPUS_PER_NODE:-}" ]; then echo "$GPUS_PER_NODE"
    elif [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then echo "$SLURM_GPUS_ON_NODE"
    elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then nvidia-smi -L | wc -l
    else echo 1
    fi
}

mtp_master_addr() {  # the first host of the job (or this machine without Slurm)
    if [ -n "${SLURM_JOB_NODELIST:-}" ]; then scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1
    else echo 127.0.0.1
    fi
}

mtp_train() {  # mtp_train DEFAULT_RECIPE [key=value ...]
    RECIPE=${RECIPE:-$1}
    shift
    [ -f "$RECIPE" ] || { echo "error: RECIPE=$RECIPE does not exist (a recipes/*.yaml file)" >&2; exit 2; }
    OUTPUT_DIR=${OUTPUT_DIR:-outputs/$(basename "$RECIPE" .yaml)}
    local nnodes=${SLURM_NNODES:-1}
    export RECIPE OUTPUT_DIR
    export MTP_DS_NNODES=$nnodes MTP_DS_GPUS_PER_NODE
    MTP_DS_GPUS_PER_NODE=$(mtp_gpus_per_node)
    export MASTER_ADDR MASTER_PORT MTP_DS_RDZV_ID=${SLURM_JOB_ID:-local}
    MASTER_ADDR=$(mtp_master_addr)
    MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}  # per job: two jobs on a node never clash
    export MTP_DS_SHUTDOWN_TIMEOUT=${MTP_DS_SHUTDOWN_TIMEOUT:-240}
    [[ "$MTP_DS_GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || { echo "error: GPUS_PER_NODE=$MTP_DS_GPUS_PER_NODE is not a positive integer" >&2; exit 2; }

    local launcher=(bash "$MTP_DS_REPO/slurm/node_launch.sh")
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        launcher=(srun --nodes="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=1 "${launcher[@]}")
    fi
    if [ "${MTP_DS_DRY_RUN:-0}" = 1 ]; then
        echo "launch:$(printf ' %q' "${launcher[@]}" "$@")"
        local node
        for node in $(seq 0 $((nnodes - 1))); do
            SLURM_NODEID=$node bash "$MTP_DS_REPO/slurm/node_launch.sh" "$@"
        done
        return 0
    fi
    mtp_activate
    echo "mtp-ds: $nnodes node(s) x $MTP_DS_GPUS_PER_NODE rank(s), recipe $RECIPE, output $OUTPUT_DIR, rendezvous $MASTER_ADDR:$MASTER_PORT"

    # Bash runs a trap only between commands, so the launch runs in the background and we `wait` for it.
    MTP_DS_SIGNALLED=""
    trap 'MTP_DS_SIGNALLED=USR1; kill -USR1 "$launch_pid" 2>/dev/null || true' USR1
    trap 'MTP_DS_SIGNALLED=TERM; kill -TERM "$launch_pid" 2>/dev/null || true' TERM
    "${launcher[@]}" "$@" &
    local launch_pid=$!
    local status=0
    while true; do
        wait "$launch_pid" && status=0 || status=$?
        kill -0 "$launch_pid" 2>/dev/null || break  # wait returned because of a trap: keep waiting
    done
    trap - USR1 TERM

    if [ -f "$OUTPUT_DIR/DONE" ]; then
        echo "mtp-ds: training finished ($(cat "$OUTPUT_DIR/DONE") steps); not requeued"
        return 0
    fi
    if [ -n "$MTP_DS_SIGNALLED" ]; then
        if [ -n "${SLURM_JOB_ID:-}" ]; then
            echo "mtp-ds: preempted (SIG$MTP_DS_SIGNALLED): checkpoint saved, requeueing job $SLURM_JOB_ID"
            scontrol requeue "$SLURM_JOB_ID"
        else
            echo "mtp-ds: stopped (SIG$MTP_DS_SIGNALLED): checkpoint saved; run the same command again to resume"
        fi
        return 0
    fi
    return "$status"
}
