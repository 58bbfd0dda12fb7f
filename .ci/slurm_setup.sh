#!/usr/bin/env bash
# Start a throw-away, one-node Slurm cluster on this machine (for CI and for
# running tests/test_slurm.py locally). Needs root and Debian/Ubuntu (apt).
#
#   bash .ci/slurm_setup.sh                 # install (if needed) + start
#   TTSR_SLURM=1 .venv/bin/python -m pytest tests/test_slurm.py
#   bash .ci/slurm_teardown.sh              # stop exactly what setup started
#
# What it does:
#   * apt-get installs slurm-wlm and munge unless their binaries are present;
#   * creates /etc/munge/munge.key if missing and starts munged (unless a
#     working munged is already running);
#   * writes /etc/slurm/slurm.conf for a single node named `hostname -s`
#     (CPUs=nproc, RealMemory=MemTotal minus a margin, partition `debug`),
#     with no cgroups, no accounting database and root as SlurmUser;
#   * starts slurmctld and slurmd as daemons and waits until the node is idle.
# The PIDs of the daemons it started are written to $TTSR_SLURM_DIR/started
# (default /var/spool/ttsr-slurm/started); the teardown script stops those and
# nothing else. An existing /etc/slurm/slurm.conf not written by this script is
# never overwritten (a real cluster stays untouched): setup fails instead.
#
# Exit status 0 only if the node is idle and accepts jobs. Memory note: the
# node advertises RealMemory (printed below); jobs asking for more (e.g.
# run_tracegen.sh's default --mem=32G on a small machine) pend forever, so
# submit them with e.g. `sbatch --mem=1G`.
set -euo pipefail

STATE_DIR=${TTSR_SLURM_DIR:-/var/spool/ttsr-slurm}
STATE_FILE=$STATE_DIR/started
SLURM_CONF_FILE=/etc/slurm/slurm.conf
MARKER="# written by ttsr .ci/slurm_setup.sh"
WAIT_S=${TTSR_SLURM_WAIT_S:-60}
T0=$SECONDS

log() { echo "[slurm_setup $((SECONDS - T0))s] $*"; }
die() { echo "[slurm_setup] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, starts daemons)"

# ---------------------------------------------------------------- install
have_bins() {
    local b
    for b in slurmctld slurmd sbatch sinfo squeue scontrol munged munge unmunge; do
        command -v "$b" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null 2>&1 || return 1
    done
}
export PATH=$PATH:/usr/sbin:/sbin
if have_bins; then
    log "slurm and munge already installed"
else
    command -v apt-get >/dev/null 2>&1 || die "slurm/munge not installed and no apt-get"
    log "installing slurm-wlm and munge with apt-get"
    # Keep package scripts from starting services themselves: we start exactly
    # the daemons we record. (Only create policy-rc.d if none exists.)
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            slurm-wlm munge >/dev/null
    } || rc=$?
    if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ "$rc" -eq 0 ] || die "apt-get install slurm-wlm munge failed (exit $rc)"
    have_bins || die "slurm/munge binaries missing after install"
    log "installed"
fi

mkdir -p "$STATE_DIR"
# Already running from an earlier setup? Then just check it and return.
if [ -s "$STATE_FILE" ] && timeout 5 sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    log "cluster from an earlier setup is up (state: $STATE_FILE)"
    exit 0
fi

if [ -s "$STATE_FILE" ]; then
    log "stale state from an earlier setup: stopping what it recorded"
    bash "$(dirname "${BASH_SOURCE[0]}")/slurm_teardown.sh" || true
fi
rm -f "$STATE_FILE"
record() { echo "$1 $2" >> "$STATE_FILE"; }   # NAME PID

pid_from() {  # PIDFILE -> pid, waiting briefly for the daemon to write it
    local f=$1 i
    for i in $(seq 1 50); do
        if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then cat "$f"; return 0; fi
        sleep 0.1
    done
    return 1
}

# ------------------------------------------------------------------ munge
MUNGE_KEY=/etc/munge/munge.key
if [ ! -s "$MUNGE_KEY" ]; then
    log "creating $MUNGE_KEY"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$MUNGE_KEY"
    else
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
fi
MUNGE_USER=root
id munge >/dev/null 2>&1 && MUNGE_USER=munge
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown "$MUNGE_USER": "$MUNGE_KEY" /run/munge /var/lib/munge /var/log/munge
chmod 0400 "$MUNGE_KEY"
chmod 0755 /run/munge
chmod 0700 /var/lib/munge /var/log/munge

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if munge_ok; then
    log "munged already running (not started by us, will not be stopped)"
else
    log "starting munged as $MUNGE_USER"
    rm -f /run/munge/munged.pid
    if [ "$MUNGE_USER" = root ]; then
        munged --force
    else
        runuser -u munge -- munged
    fi
    pid=$(pid_from /run/munge/munged.pid) || die "munged did not start (see /var/log/munge/munged.log)"
    record munged "$pid"
    munge_ok || die "munge credential round trip fails"
fi

# ------------------------------------------------------------ slurm.conf
if [ -e "$SLURM_CONF_FILE" ] && ! grep -qF "$MARKER" "$SLURM_CONF_FILE"; then
    die "$SLURM_CONF_FILE exists and was not written by this script; refusing to overwrite"
fi
HOST=$(hostname -s)
NCPU=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
# Leave a margin for the OS: 10% but at least 256 MB (slurmd drains a node
# whose configured RealMemory exceeds what it detects).
MARGIN=$(( MEM_MB / 10 > 256 ? MEM_MB / 10 : 256 ))
REAL_MEM=$(( MEM_MB - MARGIN ))
[ "$REAL_MEM" -gt 256 ] || die "too little memory ($MEM_MB MB)"

mkdir -p /etc/slurm "$STATE_DIR/ctld" "$STATE_DIR/d" "$STATE_DIR/log"
cat > "$SLURM_CONF_FILE" <<EOF
$MARKER
# One-node test cluster; regenerate with .ci/slurm_setup.sh.
ClusterName=ttsrci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
DependencyParameters=kill_invalid_depend
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
log "wrote $SLURM_CONF_FILE (node $HOST, CPUs=$NCPU, RealMemory=${REAL_MEM}M)"

# ----------------------------------------------------------- daemons
diagnostics() {
    echo "----- diagnostics -----" >&2
    sinfo -N -l 2>&1 >&2 || true
    scontrol show node 2>&1 >&2 || true
    for f in "$STATE_DIR"/log/slurmctld.log "$STATE_DIR"/log/slurmd.log; do
        echo "----- tail $f -----" >&2
        tail -n 40 "$f" >&2 2>/dev/null || true
    done
}

for d in slurmctld slurmd; do
    if [ -s "$STATE_DIR/$d.pid" ] && kill -0 "$(cat "$STATE_DIR/$d.pid")" 2>/dev/null; then
        die "$d already running (pid $(cat "$STATE_DIR/$d.pid")) but not recorded; run .ci/slurm_teardown.sh"
    fi
    rm -f "$STATE_DIR/$d.pid"
done

log "starting slurmctld"
# -c: clean start (no jobs or node state from an earlier run).
slurmctld -c || { diagnostics; die "slurmctld failed to start"; }
pid=$(pid_from "$STATE_DIR/slurmctld.pid") || { diagnostics; die "slurmctld did not stay up"; }
record slurmctld "$pid"

log "starting slurmd"
slurmd || { diagnostics; die "slurmd failed to start"; }
pid=$(pid_from "$STATE_DIR/slurmd.pid") || { diagnostics; die "slurmd did not stay up"; }
record slurmd "$pid"

log "waiting (up to ${WAIT_S}s) for node $HOST to be idle"
deadline=$(( SECONDS + WAIT_S ))
state=""
while [ "$SECONDS" -lt "$deadline" ]; do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1 || true)
    [ "$state" = idle ] && break
    sleep 0.5
done
if [ "$state" != idle ]; then
    diagnostics
    die "node $HOST not idle after ${WAIT_S}s (state: '${state:-no answer}')"
fi
log "Slurm is up: node $HOST idle in partition debug (daemons recorded in $STATE_FILE)"
