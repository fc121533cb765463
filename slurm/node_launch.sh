#!/usr/bin/env bash
# One copy runs per node (srun --ntasks-per-node=1, or directly without Slurm) and execs torchrun there.
# Why a script and not an inline `srun ... bash -c '...'`: every variable below is read by the task on its own
# node (SLURM_NODEID, SLURM_PROCID, ...), so nothing has to be escaped and no node can inherit another's rank.
# Ranks come from torchrun's c10d rendezvous on MASTER_ADDR:MASTER_PORT (unique per job), never from a guess.
#
# Set by slurm/common.sh: RECIPE OUTPUT_DIR MTP_DS_NNODES MTP_DS_GPUS_PER_NODE MASTER_ADDR MASTER_PORT
#                         MTP_DS_RDZV_ID MTP_DS_TORCHRUN_FLAGS; MTP_DS_DRY_RUN=1 prints instead of running (the
#                         node named MTP_DS_DRY_RUN_HOST: its host in the job's node list, not this machine's).
set -euo pipefail

# MTP_DS_TORCHRUN_FLAGS (mtp_ds/config/launch.py, as far as this torch's torchrun defines them):
# --signals-to-handle=...,SIGUSR1 makes torchrun forward SIGUSR1 (Slurm's warning signal), SIGTERM and SIGINT
# (Ctrl-C, passed on by slurm/common.sh) to the ranks, which checkpoint at the next step boundary and exit;
# --shutdown-timeout=MTP_DS_SHUTDOWN_TIMEOUT is how long torchrun waits for that before SIGKILL.
read -r -a signal_flags <<<"$MTP_DS_TORCHRUN_FLAGS"
# (the +-form: an empty array is "unbound" to set -u in bash < 4.4)
launch=(torchrun --nnodes="$MTP_DS_NNODES" --nproc_per_node="$MTP_DS_GPUS_PER_NODE" ${signal_flags[@]+"${signal_flags[@]}"})
if [ "$MTP_DS_NNODES" -gt 1 ] || [ -n "${SLURM_JOB_ID:-}" ]; then
    launch+=(--rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$MTP_DS_RDZV_ID")
else
    launch+=(--standalone)
fi
launch+=(-m mtp_ds.train "$RECIPE" "checkpoint.dir=$OUTPUT_DIR" "$@")

if [ "${MTP_DS_DRY_RUN:-0}" = 1 ]; then
    echo "node ${SLURM_NODEID:-0} (${MTP_DS_DRY_RUN_HOST:-$(hostname -s)}):$(printf ' %q' "${launch[@]}")"
    exit 0
fi
# A torchrun that cannot forward SIGUSR1 would die of it and leave its ranks mid-step: it ignores SIGUSR1 instead
# (the ranks set their own handler); under srun Slurm signals every process of the step, the ranks included.
if [[ " $MTP_DS_TORCHRUN_FLAGS" != *" --signals-to-handle="* ]]; then trap '' USR1; fi
exec "${launch[@]}"
