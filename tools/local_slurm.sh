#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests and CI (README: "On a SLURM cluster").
#
#   tools/local_slurm.sh start    install Debian's slurm + munge if missing, write the config under
#                                 $BMTARD_SLURM_DIR, start munged, slurmctld and slurmd, wait until
#                                 the node is idle; prints the line to source for the client env
#   tools/local_slurm.sh stop     cancel the jobs, stop the three daemons (by their pid files)
#
# Settings: BMTARD_SLURM_DIR (default /tmp/bmtard-slurm), BMTARD_SLURM_GPUS (fake GPUs, default
# 2). Needs root (apt, mknod, daemons as root). Nothing is written outside $BMTARD_SLURM_DIR
# except the Debian packages. What this machine needed:
#   - the hostname is not "localhost": slurmd runs with -N localhost;
#   - SLURM only accepts character devices as GPU files: fake GPUs are /dev/null-like nodes;
#   - snakemake-executor-plugin-slurm-jobstep drops SLURM_CONF before its nested srun: the
#     client commands are wrappers that set it (put $BMTARD_SLURM_DIR/bin first on PATH);
#   - there is no accounting database: sacct fails, so Snakemake must poll with squeue, which
#     only sees jobs that ended less than MinJobAge seconds ago (hence 300).
set -euo pipefail

DIR=${BMTARD_SLURM_DIR:-/tmp/bmtard-slurm}
GPUS=${BMTARD_SLURM_GPUS:-2}
NODE=localhost
CONF=$DIR/etc/slurm.conf

say() { echo "local_slurm: $*" >&2; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing=0
    for c in slurmctld slurmd srun munged; do command -v "$c" >/dev/null || missing=1; done
    [ "$missing" = 0 ] && return
    say "installing slurmctld slurmd slurm-client munge (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
    mkdir -p "$DIR"/{etc,state,spool,log,run,bin,key,dev}
    chmod 755 "$DIR" "$DIR/run" # munged wants its socket's folder open to all
    chmod 700 "$DIR/key"
    if [ ! -s "$DIR/key/munge.key" ]; then
        head -c 1024 /dev/urandom >"$DIR/key/munge.key"
        chmod 400 "$DIR/key/munge.key"
    fi
    local cpus mem gres=""
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    [ "$GPUS" -gt 0 ] && gres="Gres=gpu:$GPUS"
    cat >"$CONF" <<EOF
ClusterName=bmtard-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/run/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
MinJobAge=300
KillWait=10
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    {
        echo "AutoDetect=off"
        if [ "$GPUS" -gt 0 ]; then
            for i in $(seq 0 $((GPUS - 1))); do
                [ -c "$DIR/dev/gpu$i" ] || mknod -m 666 "$DIR/dev/gpu$i" c 1 3
            done
            echo "NodeName=$NODE Name=gpu File=$DIR/dev/gpu[0-$((GPUS - 1))]"
        fi
    } >"$DIR/etc/gres.conf"
    for c in sbatch srun squeue sinfo scontrol scancel salloc sacct; do
        printf '#!/bin/sh\nexport SLURM_CONF="${SLURM_CONF:-%s}"\nexec /usr/bin/%s "$@"\n' \
            "$CONF" "$c" >"$DIR/bin/$c"
        chmod 755 "$DIR/bin/$c"
    done
    printf 'export SLURM_CONF=%s\nexport PATH=%s/bin:$PATH\n' "$CONF" "$DIR" >"$DIR/env.sh"
}

start() {
    [ "$(id -u)" = 0 ] || { say "start needs root"; exit 1; }
    install_packages
    write_config
    export SLURM_CONF=$CONF
    running "$DIR/run/munged.pid" || munged --key-file="$DIR/key/munge.key" \
        --socket="$DIR/run/munge.socket" --pid-file="$DIR/run/munged.pid" \
        --seed-file="$DIR/key/munge.seed" --log-file="$DIR/log/munged.log"
    if ! running "$DIR/run/slurmctld.pid"; then
        rm -rf "${DIR:?}/state/"* # no node state (a drained node) left from an earlier start
        slurmctld -f "$CONF"
    fi
    running "$DIR/run/slurmd.pid" || slurmd -f "$CONF" -N "$NODE"
    local state=""
    for _ in $(seq 1 120); do
        state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null || true)
        case $state in
        idle | mix | alloc) break ;;
        drain* | down* | inval*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    case $state in
    idle | mix | alloc) say "ready: node $NODE ($state), $GPUS fake GPUs; now: source $DIR/env.sh" ;;
    *)
        say "the node did not come up (state '$state'); logs in $DIR/log"
        exit 1
        ;;
    esac
}

stop() {
    export SLURM_CONF=$CONF
    if running "$DIR/run/slurmctld.pid"; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        [ -z "$jobs" ] || { scancel $jobs 2>/dev/null || true; sleep 1; }
    fi
    for daemon in slurmd slurmctld munged; do
        local pidfile=$DIR/run/$daemon.pid
        running "$pidfile" || continue
        kill "$(cat "$pidfile")"
        for _ in $(seq 1 40); do running "$pidfile" || break; sleep 0.25; done
        running "$pidfile" && kill -9 "$(cat "$pidfile")"
        rm -f "$pidfile"
    done
    say "stopped"
}

case ${1:-} in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
