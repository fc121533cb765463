#!/usr/bin/env bash
# A real one-node Slurm cluster (Debian's slurmctld + slurmd + munge, Slurm 22.05) for CI, without systemd.
#   bash .ci/slurm_cluster.sh start     # install if needed, write slurm.conf, start munged, slurmctld, slurmd
#   bash .ci/slurm_cluster.sh stop      # stop them by PID (never by name)
# Runs as root (CI machines). The node is this host (`hostname -s`), with the CPUs `slurmd -C` reports.
set -euo pipefail
STATE=/tmp/mtp-ds-slurm
CONF=/etc/slurm/slurm.conf

start() {
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
    fi
    mkdir -p "$STATE" /var/spool/slurmd /var/spool/slurmctld /var/log/slurm /etc/slurm
    # munge: no systemd, so /run/munge must be made by hand; munged refuses to run as root with the key
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
    [ -f /etc/munge/munge.key ] || { /usr/sbin/mungekey --create 2>/dev/null || create-munge-key -f; }
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then  # reuse a munged that already answers
        runuser -u munge -- /usr/sbin/munged  # pid file: /run/munge/munged.pid (munged writes as the munge user)
    fi
    munge -n | unmunge >/dev/null
    if [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
        echo "slurm: already running (stop it first: $0 stop)" >&2
        return 1
    fi

    local host cpus memory
    host=$(hostname -s)
    cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -n1)
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
    memory=$((memory * 9 / 10))  # below what slurmd reports, or the node drains
    cat > "$CONF" <<CONF
ClusterName=mtpci
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
ReturnToService=2
MinJobAge=5
JobRequeue=1
# a requeued job waits cred_expire seconds (default 120) before it may start again; CI need not wait that long
AuthInfo=cred_expire=10
KillWait=30
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    /usr/sbin/slurmctld -i
    /usr/sbin/slurmd
    for _ in $(seq 1 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "slurm: node $host up ($(sinfo -h -o '%c CPUs, %m MB'))"
            return 0
        fi
        sleep 1
    done
    echo "slurm: node did not come up" >&2
    sinfo -N -l >&2 || true
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    return 1
}

stop() {
    for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" /run/munge/munged.pid; do
        if [ -f "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
