#!/usr/bin/env bash
# Stop the daemons that .ci/slurm_setup.sh started (and only those): the PIDs
# recorded in $TTSR_SLURM_DIR/started (default /var/spool/ttsr-slurm/started).
# Jobs still in the queue of that private cluster are cancelled first so that no
# job step outlives slurmd. Safe to run twice or when setup never ran.
# Installed packages, the munge key and slurm.conf are left in place.
set -uo pipefail

STATE_DIR=${TTSR_SLURM_DIR:-/var/spool/ttsr-slurm}
STATE_FILE=$STATE_DIR/started
export PATH=$PATH:/usr/sbin:/sbin

log() { echo "[slurm_teardown] $*"; }

if [ ! -s "$STATE_FILE" ]; then
    log "nothing recorded in $STATE_FILE; nothing to stop"
    exit 0
fi

# Cancel leftover jobs if the controller we started is still up.
ctld_pid=$(awk '$1 == "slurmctld" {print $2}' "$STATE_FILE" | tail -n 1)
if [ -n "$ctld_pid" ] && kill -0 "$ctld_pid" 2>/dev/null && command -v squeue >/dev/null 2>&1; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        log "cancelling leftover jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 20); do
            [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

stop() {  # NAME PID: SIGTERM, wait up to 10 s, then SIGKILL
    local name=$1 pid=$2 comm
    if ! kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) already gone"
        return 0
    fi
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    if [ "$comm" != "$name" ]; then
        log "pid $pid is now '$comm', not $name: leaving it alone"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; return 0; }
        sleep 0.1
    done
    log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Stop in reverse start order: slurmd, slurmctld, then munged.
rc=0
for name in slurmd slurmctld munged; do
    while read -r n pid; do
        [ "$n" = "$name" ] && { stop "$n" "$pid" || rc=1; }
    done < "$STATE_FILE"
done
mv -f "$STATE_FILE" "$STATE_FILE.stopped"
exit $rc
