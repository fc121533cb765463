#!/usr/bin/env bash
# One copy runs per node (srun --ntasks-per-node=1, or directly without Slurm) and execs torchrun there.
# Why a script and not an inline `srun ... bash -c '...'`: every variable below is read by the task on its own
# node (SLURM_NODEID, SLURM_PROCID, ...), so nothing has to be escaped and no node can inherit another's rank.
# Ranks come from torchrun's c10d rendezvous on MASTER_ADDR:MASTER_PORT (unique per job), never from a guess.
#
# Set by slurm/common.sh: RECIPE OUTPUT_DIR MTP_DS_NNODES MTP_DS_GPUS_PER_NODE MASTER_ADDR MASTER_PORT
#                         MTP_DS_RDZV_ID MTP_DS_SHUTDOWN_TIMEOUT; MTP_DS_DRY_RUN=1 prints instead of running.
set -euo pipefail

# shellcheck disable=SC2054  # the commas below are torchrun's list syntax, not array separators
launch=(torchrun
    --nnodes="$MTP_DS_NNODES"
    --nproc_per_node="$MTP_DS_GPUS_PER_NODE"
    # SIGUSR1 (Slurm's warning signal), SIGTERM and SIGINT (Ctrl-C, passed on by slurm/common.sh) reach the
    # ranks, which checkpoint at the next step boundary and exit; torchrun waits MTP_DS_SHUTDOWN_TIMEOUT seconds
    # for that before SIGKILL. SIGHUP / SIGQUIT: torchrun's defaults, passed on as well.
    --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
    --shutdown-timeout="$MTP_DS_SHUTDOWN_TIMEOUT")
if [ "$MTP_DS_NNODES" -gt 1 ] || [ -n "${SLURM_JOB_ID:-}" ]; then
    launch+=(--rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$MTP_DS_RDZV_ID")
else
    launch+=(--standalone)
fi
launch+=(-m mtp_ds.train "$RECIPE" "checkpoint.dir=$OUTPUT_DIR" "$@")

if [ "${MTP_DS_DRY_RUN:-0}" = 1 ]; then
    echo "node ${SLURM_NODEID:-0} ($(hostname -s)):$(printf ' %q' "${launch[@]}")"
    exit 0
fi
exec "${launch[@]}"
