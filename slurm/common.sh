# shellcheck shell=bash
# Shared by the sbatch scripts in slurm/: sourced, never run. Checks required variables up front with one clear
# message each, activates the project's environment (the job must do it itself: no `pip install` in a job),
# launches one torchrun per node, handles preemption (checkpoint, exit, requeue), and falls back to the local
# machine when the script runs without Slurm (`bash slurm/X.sh`). Before anything starts, the recipe and its
# overrides are loaded and validated by the trainer's own parser, so a misspelt key costs one line, not a job.
#
# Variables a user sets (all optional unless a script says otherwise):
#   RECIPE           recipe YAML (each train_*.sh has its default)
#   OUTPUT_DIR       checkpoints, metrics, DONE marker (default outputs/<recipe name>)
#   GPUS_PER_NODE    ranks per node: one per GPU (default: the GPUs Slurm gave the job, else nvidia-smi's count);
#                    on CPU-only nodes, the number of CPU ranks
#   HF_CACHE         Hugging Face cache directory (sets HF_HOME)
#   MTP_DS_VENV      virtualenv to activate (default: the repo's .venv); MTP_DS_ACTIVATE: any setup line instead
#   MTP_DS_SHUTDOWN_TIMEOUT  seconds ranks get to checkpoint after a signal (default 240; torchrun's --shutdown-timeout,
#                    which older torch lacks: then 30 s, said on stderr)
#   MTP_DS_TORCHRUN_FLAGS  torchrun's signal flags (default: those of mtp_ds/config/launch.py this torch's torchrun
#                    defines); set it, "" included, where the torchrun on PATH is not the environment's torch
#   MTP_DS_DRY_RUN=1 validate the recipe + overrides, then print the srun / torchrun command lines for every node
#                    (each named by its host in SLURM_JOB_NODELIST) instead of running, and on stderr where the
#                    ranks per node came from; needs the environment (mtp_ds importable) but no GPU, torch or
#                    Slurm (without scontrol it expands SLURM_JOB_NODELIST itself and says so)
# Trailing arguments of the sbatch script are recipe overrides: sbatch slurm/train_qwen3.sh train.steps=1000

mtp_require() {  # mtp_require VAR "what it is"
    if [ -z "${!1:-}" ]; then
        echo "error: set $1 ($2)" >&2
        exit 2
    fi
}

mtp_python_env() {  # the environment's python with mtp_ds importable: all a dry run needs (no torch import)
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
}

mtp_accelerator() {  # DS_ACCELERATOR=cpu where torch sees no CUDA device (imports torch: seconds, not for dry runs)
    if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        export DS_ACCELERATOR=cpu
    fi
}

mtp_activate() {  # the environment and the accelerator
    mtp_python_env
    mtp_accelerator
}

# The repository root: SLURM_SUBMIT_DIR under sbatch (the script itself is copied to a spool dir), else ours.
if [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_SUBMIT_DIR:-}" ] && [ -f "$SLURM_SUBMIT_DIR/pyproject.toml" ]; then
    MTP_DS_REPO=${MTP_DS_REPO:-$SLURM_SUBMIT_DIR}
else
    MTP_DS_REPO=${MTP_DS_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
fi
cd "$MTP_DS_REPO" || { echo "error: MTP_DS_REPO=$MTP_DS_REPO is not a directory" >&2; exit 2; }
mkdir -p logs

mtp_gpus_per_node() {  # sets MTP_DS_GPUS_PER_NODE (ranks per node) and MTP_DS_GPUS_FROM (where it came from)
    if [ -n "${GPUS_PER_NODE:-}" ]; then
        MTP_DS_GPUS_PER_NODE=$GPUS_PER_NODE MTP_DS_GPUS_FROM="GPUS_PER_NODE=$GPUS_PER_NODE"
    elif [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
        MTP_DS_GPUS_PER_NODE=$SLURM_GPUS_ON_NODE MTP_DS_GPUS_FROM="SLURM_GPUS_ON_NODE=$SLURM_GPUS_ON_NODE"
    elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        MTP_DS_GPUS_PER_NODE=$(nvidia-smi -L | wc -l)
        MTP_DS_GPUS_FROM="nvidia-smi -L on $(hostname -s), the GPUs of this machine"
    else
        MTP_DS_GPUS_PER_NODE=1
        MTP_DS_GPUS_FROM="the default: no GPUS_PER_NODE, no SLURM_GPUS_ON_NODE, no GPU seen by nvidia-smi on $(hostname -s)"
    fi
}

mtp_expand_hosts() {  # mtp_expand_hosts LIST MAX: the first MAX hosts of a Slurm node list, one a line
    # Only for dry runs where scontrol is absent ("gpu[01-02,07],cpu3" -> gpu01 gpu02 gpu07 cpu3; every [..] group
    # of an entry multiplies, numbers keep the width written); mtp_first_host has refused a malformed list before.
    local list=$1 entry="" char depth=0 i
    local -a entries=()
    for ((i = 0; i < ${#list}; i++)); do  # entries: split at the commas outside [..]
        char=${list:i:1}
        if [ "$char" = "[" ]; then depth=$((depth + 1)); elif [ "$char" = "]" ]; then depth=$((depth - 1)); fi
        if [ "$char" = "," ] && [ "$depth" -eq 0 ]; then entries+=("$entry"); entry=""; else entry+=$char; fi
    done
    entries+=("$entry")
    MTP_DS_HOSTS=()
    for entry in "${entries[@]}"; do
        [ "${#MTP_DS_HOSTS[@]}" -lt "$2" ] && mtp_expand_entry "" "$entry" "$2"
    done
    printf '%s\n' "${MTP_DS_HOSTS[@]}"
}

mtp_expand_entry() {  # mtp_expand_entry DONE REST MAX: DONE + each expansion of REST, appended to MTP_DS_HOSTS
    local group='^([^][]*)\[([^][]*)\](.*)$' range first last n number
    if ! [[ "$2" =~ $group ]]; then MTP_DS_HOSTS+=("$1$2"); return; fi
    local prefix=${BASH_REMATCH[1]} tail=${BASH_REMATCH[3]}
    local -a ranges
    IFS=, read -r -a ranges <<<"${BASH_REMATCH[2]}"
    for range in "${ranges[@]}"; do
        first=${range%%-*} last=${range##*-}
        for ((n = 10#$first; n <= 10#$last; n++)); do
            printf -v number '%0*d' "${#first}" "$n"
            mtp_expand_entry "$1$prefix$number" "$tail" "$3"
            [ "${#MTP_DS_HOSTS[@]}" -lt "$3" ] || return 0
        done
    done
}

mtp_node_hosts() {  # mtp_node_hosts N: the job's first N hosts, one a line (a dry run names each node's line)
    if [ -z "${SLURM_JOB_NODELIST:-}" ]; then hostname -s; return; fi
    if command -v scontrol >/dev/null; then
        local hosts
        local -a all
        hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST") || {
            echo "error: SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST: scontrol show hostnames failed" >&2; exit 2; }
        mapfile -t all <<<"$hosts"
        printf '%s\n' "${all[@]:0:$1}"
    else
        mtp_expand_hosts "$SLURM_JOB_NODELIST" "$1"
    fi
}

mtp_first_host() {  # mtp_first_host LIST: the first host of a Slurm node list ("gpu[01-04,07],cpu3" -> gpu01)
    # Only for dry runs where scontrol is absent: each [..] group of the first entry gives its first number, as
    # written (zero padding kept), as scontrol does; what scontrol would refuse (text after the last group, a
    # bracket left open) is refused here too rather than guessed at.
    local rest=$1 host="" groups=0 group='^([^],[]*)\[([0-9]+)([-,][0-9]+)*\](.*)$'
    while [[ "$rest" =~ $group ]]; do
        host+=${BASH_REMATCH[1]}${BASH_REMATCH[2]}
        rest=${BASH_REMATCH[4]}
        groups=$((groups + 1))
    done
    rest=${rest%%,*}
    host+=$rest
    if [ -z "$host" ] || [[ "$host" == *[][]* ]] || { [ "$groups" -gt 0 ] && [ -n "$rest" ]; }; then
        echo "error: SLURM_JOB_NODELIST=$1 is not a Slurm node list (e.g. gpu[01-04],cpu7)" >&2
        exit 2
    fi
    echo "$host"
}

mtp_master_addr() {  # the first host of the job (or this machine without Slurm)
    if [ -z "${SLURM_JOB_NODELIST:-}" ]; then echo 127.0.0.1; return; fi
    local hosts
    if command -v scontrol >/dev/null; then
        # All of it, then the first line here: with `| head -n1` head exits early and, on a long node list,
        # scontrol dies of SIGPIPE, which pipefail turns into the script's silent exit 141.
        hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST") || {
            echo "error: SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST: scontrol show hostnames failed" >&2; exit 2; }
        echo "${hosts%%$'\n'*}"
    elif [ "${MTP_DS_DRY_RUN:-0}" = 1 ]; then
        hosts=$(mtp_first_host "$SLURM_JOB_NODELIST") || exit $?  # errexit does not reach into $(...)
        echo "mtp-ds: dry run without scontrol: MASTER_ADDR=$hosts, SLURM_JOB_NODELIST's first host as read here" >&2
        echo "$hosts"
    else
        echo "error: SLURM_JOB_NODELIST is set but scontrol (slurm-client), to name its first node, is not on PATH" >&2
        exit 2
    fi
}

mtp_check_recipe() {  # mtp_check_recipe [key=value ...]: the trainer's arguments, parsed by the trainer's code
    # `python -m mtp_ds.train RECIPE checkpoint.dir=OUTPUT_DIR [key=value ...]` reads its arguments with
    # mtp_ds.config.parse_cli (stdlib + yaml: one quick python start); a bad key or value stops here with the
    # trainer's one-line message instead of on every rank after the launch.
    python -c '
import sys
from mtp_ds.config import ConfigError, parse_cli
try:
    parse_cli(sys.argv[1:])
except ConfigError as error:
    print("error: " + " ".join(str(error).split()), file=sys.stderr)
    sys.exit(2)
' "$RECIPE" "checkpoint.dir=$OUTPUT_DIR" "$@" || exit $?
}

mtp_train() {  # mtp_train DEFAULT_RECIPE [key=value ...]
    RECIPE=${RECIPE:-$1}
    shift
    [ -f "$RECIPE" ] || { echo "error: RECIPE=$RECIPE does not exist (a recipes/*.yaml file)" >&2; exit 2; }
    OUTPUT_DIR=${OUTPUT_DIR:-outputs/$(basename "$RECIPE" .yaml)}
    # What Slurm sets, checked before the port and srun use it (one line naming the variable, not a usage error
    # from the port helper; --nodes=0 would pass a dry run).
    if [ -n "${SLURM_JOB_ID:-}" ] && ! [[ "$SLURM_JOB_ID" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: SLURM_JOB_ID=$SLURM_JOB_ID is not a positive integer" >&2; exit 2
    fi
    if [ -n "${SLURM_NNODES:-}" ] && ! [[ "$SLURM_NNODES" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: SLURM_NNODES=$SLURM_NNODES is not a positive integer" >&2; exit 2
    fi
    local nnodes=${SLURM_NNODES:-1}
    export RECIPE OUTPUT_DIR
    export MTP_DS_NNODES=$nnodes MTP_DS_GPUS_PER_NODE
    mtp_gpus_per_node
    export MASTER_ADDR MASTER_PORT MTP_DS_RDZV_ID=${SLURM_JOB_ID:-local} MTP_DS_TORCHRUN_FLAGS
    MASTER_ADDR=$(mtp_master_addr)
    local shutdown_timeout=${MTP_DS_SHUTDOWN_TIMEOUT:-240}
    [[ "$MTP_DS_GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || { echo "error: GPUS_PER_NODE=$MTP_DS_GPUS_PER_NODE is not a positive integer" >&2; exit 2; }
    [[ "$shutdown_timeout" =~ ^[0-9]+$ ]] || { echo "error: MTP_DS_SHUTDOWN_TIMEOUT=$shutdown_timeout is not a number of seconds" >&2; exit 2; }

    local launcher=(bash "$MTP_DS_REPO/slurm/node_launch.sh")
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        # --cpus-per-task: srun of Slurm 22.05-23.02 does not inherit the job's, and would bind each node's
        # torchrun and all its ranks to one CPU
        launcher=(srun --nodes="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=1
            ${SLURM_CPUS_PER_TASK:+"--cpus-per-task=$SLURM_CPUS_PER_TASK"} "${launcher[@]}")
    fi
    mtp_python_env
    mtp_check_recipe "$@"
    # mtp_ds/config/launch.py: the job's port below the ephemeral range (every node computes the same), and the
    # signal flags this torch's torchrun defines (one line on stderr for each it lacks)
    if [ -z "${MASTER_PORT:-}" ]; then MASTER_PORT=$(python -m mtp_ds.config.launch port "${SLURM_JOB_ID:-0}") || exit $?; fi
    if [ -z "${MTP_DS_TORCHRUN_FLAGS+set}" ]; then
        MTP_DS_TORCHRUN_FLAGS=$(python -m mtp_ds.config.launch torchrun-flags "$shutdown_timeout") || exit $?
    fi
    if [ "${MTP_DS_DRY_RUN:-0}" = 1 ]; then
        echo "mtp-ds: dry run: $nnodes node(s) x $MTP_DS_GPUS_PER_NODE rank(s) (--nproc_per_node), from $MTP_DS_GPUS_FROM; set GPUS_PER_NODE to the GPUs of a compute node" >&2
        echo "launch:$(printf ' %q' "${launcher[@]}" "$@")"
        local node hosts_text
        local -a hosts
        hosts_text=$(mtp_node_hosts "$nnodes") || exit $?
        mapfile -t hosts <<<"$hosts_text"
        for node in $(seq 0 $((nnodes - 1))); do
            SLURM_NODEID=$node MTP_DS_DRY_RUN_HOST=${hosts[node]:-"no host $node in SLURM_JOB_NODELIST"} \
                bash "$MTP_DS_REPO/slurm/node_launch.sh" "$@"
        done
        return 0
    fi
    mtp_accelerator
    echo "mtp-ds: $nnodes node(s) x $MTP_DS_GPUS_PER_NODE rank(s) ($MTP_DS_GPUS_FROM), recipe $RECIPE, output $OUTPUT_DIR, rendezvous $MASTER_ADDR:$MASTER_PORT"
    # Tokenise once, here, into the datasets cache (mtp-ds prepare-data): the ranks then only load it, and no rank
    # waits out the process group's timeout while rank 0 tokenises
    python -m mtp_ds.cli prepare-data "$RECIPE" "checkpoint.dir=$OUTPUT_DIR" "$@" || exit $?

    # Bash runs a trap only between commands, so the launch runs in the background and we `wait` for it.
    # USR1 (Slurm's warning before the time limit), TERM (preemption, kill) and INT (Ctrl-C) make the ranks
    # checkpoint at the next step boundary and exit; this script passes each on to the launch exactly once.
    # Once, because torchrun signalled twice cuts its graceful shutdown short and signals the ranks again: so
    # the launch runs in its own process group (set -m), where a Ctrl-C to this script's group does not reach
    # it directly. Through srun, INT and TERM travel as USR1: srun answers one SIGINT with a task-status print
    # and SIGTERM with SIGKILL to its tasks, and passes USR1 on. HUP and QUIT (terminal closed, Ctrl-\) used
    # to reach the launch through the group: they are passed on as they are, and ask for no checkpoint.
    MTP_DS_SIGNALLED=""
    # A torchrun without --signals-to-handle ignores USR1 (slurm/node_launch.sh): here it gets TERM instead.
    local launch_pid="" term_as=TERM int_as=INT usr1_as=USR1
    if [[ " $MTP_DS_TORCHRUN_FLAGS" != *" --signals-to-handle="* ]]; then usr1_as=TERM; fi
    if [ "${launcher[0]}" = srun ]; then term_as=USR1 int_as=USR1 usr1_as=USR1; fi
    trap 'MTP_DS_SIGNALLED=USR1; kill -"$usr1_as" "$launch_pid" 2>/dev/null || true' USR1
    trap 'MTP_DS_SIGNALLED=TERM; kill -"$term_as" "$launch_pid" 2>/dev/null || true' TERM
    trap 'MTP_DS_SIGNALLED=INT; kill -"$int_as" "$launch_pid" 2>/dev/null || true' INT
    trap 'kill -HUP "$launch_pid" 2>/dev/null || true' HUP
    trap 'kill -QUIT "$launch_pid" 2>/dev/null || true' QUIT
    rm -f "$OUTPUT_DIR/STOPPED"
    set -m
    "${launcher[@]}" "$@" </dev/null &
    launch_pid=$!
    set +m
    local status=0
    while true; do
        wait "$launch_pid" && status=0 || status=$?
        kill -0 "$launch_pid" 2>/dev/null || break  # wait returned because of a trap: keep waiting
    done
    trap - USR1 TERM INT HUP QUIT

    if [ -f "$OUTPUT_DIR/DONE" ]; then
        echo "mtp-ds: training finished ($(cat "$OUTPUT_DIR/DONE") steps); not requeued"
        return 0
    fi
    if [ -n "$MTP_DS_SIGNALLED" ]; then
        # OUTPUT_DIR/STOPPED: written by rank 0 after its save-and-stop (removed before every launch)
        local saved="no new checkpoint (stopped before the first step or during the save): the newest earlier one is resumed"
        if [ -f "$OUTPUT_DIR/STOPPED" ]; then saved="checkpoint saved at step $(cat "$OUTPUT_DIR/STOPPED")"; fi
        if [ -n "${SLURM_JOB_ID:-}" ]; then
            echo "mtp-ds: preempted (SIG$MTP_DS_SIGNALLED): $saved; requeueing job $SLURM_JOB_ID"
            scontrol requeue "$SLURM_JOB_ID"
        else
            echo "mtp-ds: stopped (SIG$MTP_DS_SIGNALLED): $saved; run the same command again to resume"
        fi
        return 0
    fi
    return "$status"
}
