#!/usr/bin/env bash
# A private single-node Slurm on 127.0.0.1, for tests and trials of the Slurm launchers.
#
#   bash cluster/slurm/single-node.sh up       # install (apt-get), configure, start
#   eval "$(bash cluster/slurm/single-node.sh env)"   # SLURM_CONF for sbatch, sinfo, ...
#   bash cluster/slurm/single-node.sh status
#   bash cluster/slurm/single-node.sh down     # stop what `up` started, remove its folder
#
# Everything lives in one folder, $DMASK_SLURM_DIR (default /tmp/dmask-slurm): slurm.conf
# (used through SLURM_CONF, never /etc/slurm), a private munge key and socket, state,
# spool, pid and log files. /etc is never written; a Slurm configured in
# /etc/slurm/slurm.conf by someone else makes `up` refuse. Must run as root (the
# daemons, and jobs, run as root). Settings, from the environment:
#
#   DMASK_SLURM_DIR           the folder (default /tmp/dmask-slurm)
#   DMASK_SLURMCTLD_PORT      slurmctld's port (default 6817)
#   DMASK_SLURMD_PORT         slurmd's port (default 6818)
#   DMASK_SLURM_PARTITION     partition name (default debug)
#   DMASK_SLURM_TIMEOUT       seconds to wait for the node to be idle (default 90)
#   DMASK_SLURM_INSTALL       1: apt-get install slurm-wlm and munge if missing (default)
set -euo pipefail

DIR="${DMASK_SLURM_DIR:-/tmp/dmask-slurm}"
CTLD_PORT="${DMASK_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${DMASK_SLURMD_PORT:-6818}"
PARTITION="${DMASK_SLURM_PARTITION:-debug}"
TIMEOUT="${DMASK_SLURM_TIMEOUT:-90}"
INSTALL="${DMASK_SLURM_INSTALL:-1}"

MARKER="# Written by dmask cluster/slurm/single-node.sh"
CONF="$DIR/etc/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket.2"

say() { echo "single-node.sh: $*"; }
die() {
    echo "single-node.sh: error: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 up|down|status|env" >&2
    exit 2
}

# The pid in a pid file if that process is alive and runs the named program.
running_pid() {
    local pidfile=$1 name=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm ]] || return 1
    local comm
    comm=$(<"/proc/$pid/comm")
    [[ $comm == "$name" || $comm == "$name-wlm" ]] || return 1
    echo "$pid"
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

ours() {
    [[ -f $DIR/.dmask-single-node ]]
}

slurm_env() {
    export SLURM_CONF="$CONF"
}

check_foreign_slurm() {
    local etc=/etc/slurm/slurm.conf
    if [[ -e $etc ]] && ! grep -qF "$MARKER" "$etc"; then
        die "$etc exists and was not written by this script: a Slurm is configured" \
            "on this machine; refusing to start a second one beside it"
    fi
    if [[ -e $DIR ]] && ! ours; then
        if [[ -n $(ls -A "$DIR" 2>/dev/null) ]]; then
            die "$DIR exists, is not empty and was not made by this script;" \
                "set DMASK_SLURM_DIR to another folder"
        fi
    fi
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    for tool in slurmctld slurmd sbatch sinfo; do
        if ! command -v "$tool" >/dev/null; then
            missing+=(slurm-wlm)
            break
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $INSTALL == 1 ]] || die "missing ${missing[*]} and DMASK_SLURM_INSTALL=$INSTALL"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install"
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    local log="${TMPDIR:-/tmp}/dmask-slurm-apt.log"
    local apt=(apt-get install -y -q --no-install-recommends "${missing[@]}")
    if ! "${apt[@]}" >"$log" 2>&1; then
        say "apt-get install failed; running apt-get update and trying again"
        apt-get update -q >>"$log" 2>&1 || die "apt-get update failed (see $log)"
        "${apt[@]}" >>"$log" 2>&1 || die "apt-get install ${missing[*]} failed (see $log)"
    fi
    for tool in munged slurmctld slurmd sbatch sinfo; do
        command -v "$tool" >/dev/null || die "$tool still missing after apt-get (see $log)"
    done
}

# NodeName line fields from the hardware: slurmd -C, else nproc and /proc/meminfo.
node_hardware() {
    local line
    line=$(slurmd -C 2>/dev/null | head -n 1 || true)
    if [[ $line == NodeName=* ]]; then
        echo "${line#NodeName=* }"
    else
        local mem
        mem=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
        echo "CPUs=$(nproc) RealMemory=$mem"
    fi
}

write_config() {
    local hardware cpus mem
    hardware=$(node_hardware)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hardware")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")
    cat >"$CONF.new" <<EOF
$MARKER; \`down\` removes it.
ClusterName=dmask-single-node
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
# sbatch --wait polls at most every MinJobAge/2 s (else every 32 s): keep it short.
MinJobAge=16
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost $hardware State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.new" "$CONF"
}

start_munged() {
    if running_pid "$DIR/run/munged.pid" munged >/dev/null; then
        return 0
    fi
    munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" ||
        die "munged did not start (see $DIR/log/munged.log)"
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -S $MUNGE_SOCKET ]] && return 0
        sleep 0.1
    done
    die "munged's socket $MUNGE_SOCKET did not appear (see $DIR/log/munged.log)"
}

node_state() {
    sinfo --noheader --nodes=localhost --format=%t 2>/dev/null | head -n 1 || true
}

fail_with_logs() {
    {
        echo "single-node.sh: error: $*"
        sinfo --list-reasons 2>/dev/null || true
        for log in slurmctld.log slurmd.log munged.log; do
            if [[ -f $DIR/log/$log ]]; then
                echo "--- last lines of $DIR/log/$log"
                tail -n 15 "$DIR/log/$log"
            fi
        done
    } >&2
    exit 1
}

up() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (the daemons run as root)"
    check_foreign_slurm
    install_packages
    slurm_env
    if ours && running_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null &&
        running_pid "$DIR/run/slurmd.pid" slurmd >/dev/null &&
        [[ $(node_state) == idle* || $(node_state) == mix* || $(node_state) == alloc* ]]; then
        say "already up (SLURM_CONF=$CONF)"
        return 0
    fi
    for port in "$CTLD_PORT" "$SLURMD_PORT"; do
        if port_in_use "$port" && ! running_pid "$DIR/run/slurmctld.pid" slurmctld \
            >/dev/null && ! running_pid "$DIR/run/slurmd.pid" slurmd >/dev/null; then
            die "port $port on 127.0.0.1 is in use by another program; set" \
                "DMASK_SLURMCTLD_PORT and DMASK_SLURMD_PORT to free ports"
        fi
    done
    mkdir -p "$DIR"
    touch "$DIR/.dmask-single-node"
    chmod 700 "$DIR"
    mkdir -p "$DIR"/{etc,munge,state,spool,run,log}
    chmod 700 "$DIR/munge"
    if [[ ! -s $DIR/munge/munge.key ]]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$DIR/munge/munge.key"
        else
            dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        fi
        chmod 400 "$DIR/munge/munge.key"
    fi
    write_config
    start_munged
    if ! running_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
        slurmctld -f "$CONF" || fail_with_logs "slurmctld did not start"
    fi
    if ! running_pid "$DIR/run/slurmd.pid" slurmd >/dev/null; then
        slurmd -f "$CONF" -N localhost || fail_with_logs "slurmd did not start"
    fi
    local start=$SECONDS state=""
    while ((SECONDS - start < TIMEOUT)); do
        state=$(node_state)
        case $state in
            idle*) break ;;
            drain* | down* | fail*)
                # ReturnToService=2 brings a node back once it registers; nudge it.
                scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
                ;;
        esac
        sleep 1
    done
    [[ $state == idle* ]] ||
        fail_with_logs "node localhost not idle after ${TIMEOUT}s (state: ${state:-none})"
    running_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null ||
        fail_with_logs "slurmctld exited"
    running_pid "$DIR/run/slurmd.pid" slurmd >/dev/null || fail_with_logs "slurmd exited"
    say "up in $((SECONDS - start))s: node localhost idle, partition $PARTITION"
    say "use it with: export SLURM_CONF=$CONF"
}

stop_pid() {
    local pidfile=$1 name=$2 pid i
    pid=$(running_pid "$pidfile" "$name") || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        [[ -d /proc/$pid ]] || return 0
        sleep 0.1
    done
    say "$name ($pid) did not stop in 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

down() {
    if [[ ! -e $DIR ]]; then
        say "nothing to stop ($DIR does not exist)"
        return 0
    fi
    ours || die "$DIR was not made by this script; leaving it alone"
    slurm_env
    if running_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
        # Cancel jobs first so slurmd ends their processes.
        scancel --quiet --partition="$PARTITION" 2>/dev/null || true
        local i
        for ((i = 0; i < 30; i++)); do
            [[ -z $(squeue --noheader 2>/dev/null) ]] && break
            sleep 1
        done
    fi
    stop_pid "$DIR/run/slurmd.pid" slurmd
    stop_pid "$DIR/run/slurmctld.pid" slurmctld
    stop_pid "$DIR/run/munged.pid" munged
    rm -rf -- "$DIR"
    say "down: daemons stopped, $DIR removed"
}

status() {
    if [[ ! -e $DIR ]]; then
        say "not up ($DIR does not exist)"
        return 1
    fi
    if ! ours; then
        say "not up ($DIR not made by this script)"
        return 1
    fi
    slurm_env
    local name pidfile pid
    for name in munged slurmctld slurmd; do
        case $name in
            slurmd) pidfile=$DIR/run/slurmd.pid ;;
            *) pidfile=$DIR/run/$name.pid ;;
        esac
        if pid=$(running_pid "$pidfile" "$name"); then
            say "$name running (pid $pid)"
        else
            say "$name not running"
        fi
    done
    sinfo
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) usage ;;
esac
