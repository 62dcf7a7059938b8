#!/usr/bin/env bash
# Start (or stop) a Dask scheduler and workers on this machine for dmask to use.
#
#   cluster/start-local.sh [--workers N] [--threads-per-worker T] [--memory-limit 4GB]
#                          [--scheduler-port 8786] [--dashboard-port 8787] [--host 127.0.0.1]
#                          [--scheduler-file FILE] [--dir DIR] [--timeout SECONDS]
#   cluster/start-local.sh status [--dir DIR]
#   cluster/start-local.sh stop [--dir DIR]
#
# Every process runs in the background in its own process group; its PID and log go
# to DIR (default: /tmp/dmask-cluster-<uid>), with the scheduler file. Python is the
# repository's .venv if there is one, else python3 on PATH (DMASK_PYTHON overrides).
# Everything binds to 127.0.0.1 unless --host says otherwise. (--threads and --port,
# the earlier names of --threads-per-worker and --scheduler-port, still work, with a
# warning.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="cluster/start-local.sh"

usage() {
    sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
    echo "$PROG: error: $*" >&2
    exit 2
}

python_bin() {
    if [ -n "${DMASK_PYTHON:-}" ]; then
        echo "$DMASK_PYTHON"
    elif [ -x "$ROOT/.venv/bin/python" ]; then
        echo "$ROOT/.venv/bin/python"
    elif command -v python3 >/dev/null 2>&1; then
        command -v python3
    else
        die "no Python found: create $ROOT/.venv or set DMASK_PYTHON"
    fi
}

positive_int() {  # NAME VALUE
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"
}

port_number() {  # NAME VALUE
    [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -le 65535 ] \
        || die "$1 must be a port number (0-65535), got '$2'"
}

alive() {  # PID
    kill -0 "$1" 2>/dev/null
}

group_alive() {  # PGID: does any process of the group still run?
    pgrep -g "$1" >/dev/null 2>&1
}

pid_files() {
    find "$DIR" -maxdepth 1 -name '*.pid' 2>/dev/null | sort
}

# ---------------------------------------------------------------- arguments
ACTION=start
if [ $# -gt 0 ]; then
    case "$1" in
        start | stop | status) ACTION="$1"; shift ;;
    esac
fi
WORKERS=""
THREADS=""
MEMORY_LIMIT=auto
HOST=127.0.0.1
PORT=8786
DASHBOARD_PORT=8787
SCHEDULER_FILE=""
DIR="${DMASK_CLUSTER_DIR:-${TMPDIR:-/tmp}/dmask-cluster-$(id -u)}"
TIMEOUT=60
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --workers | --threads-per-worker | --threads | --memory-limit | --host \
            | --scheduler-port | --port | --dashboard-port | --scheduler-file | --dir \
            | --timeout)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --threads | --port)
                    new="--threads-per-worker"
                    [ "$1" = --port ] && new="--scheduler-port"
                    echo "$PROG: warning: $1 is deprecated and will be removed: use $new" >&2
                    ;;
            esac
            case "$1" in
                --workers) WORKERS="$2" ;;
                --threads-per-worker | --threads) THREADS="$2" ;;
                --memory-limit) MEMORY_LIMIT="$2" ;;
                --host) HOST="$2" ;;
                --scheduler-port | --port) PORT="$2" ;;
                --dashboard-port) DASHBOARD_PORT="$2" ;;
                --scheduler-file) SCHEDULER_FILE="$2" ;;
                --dir) DIR="$2" ;;
                --timeout) TIMEOUT="$2" ;;
            esac
            shift 2
            ;;
        *) die "unknown argument '$1' (see $PROG --help)" ;;
    esac
done
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

# ---------------------------------------------------------------- stop / status
stop_one() {  # PID-FILE: stop one recorded process group; 0 if it was running
    local file="$1" pid name was_running=1
    pid="$(cat "$file")"
    name="$(basename "$file" .pid)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && group_alive "$pid"; then
        # Each process was started as the leader of its own group: TERM reaches
        # the nanny and the worker process it spawned.
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            group_alive "$pid" || break
            sleep 0.1
        done
        if group_alive "$pid"; then
            kill -KILL -- "-$pid" 2>/dev/null || true
            echo "$name (pid $pid) did not stop in 10 s: killed"
        fi
        was_running=0
    fi
    rm -f "$file"
    return "$was_running"
}

stop_all() {
    local file stopped=0
    # Workers first, so that they do not wait for a scheduler that has gone away.
    for file in $(pid_files); do
        [ "$(basename "$file")" = scheduler.pid ] && continue
        if stop_one "$file"; then stopped=$((stopped + 1)); fi
    done
    if [ -f "$DIR/scheduler.pid" ]; then
        if stop_one "$DIR/scheduler.pid"; then stopped=$((stopped + 1)); fi
    fi
    if [ -f "$DIR/scheduler-file.path" ]; then
        rm -f "$(cat "$DIR/scheduler-file.path")" "$DIR/scheduler-file.path"
    fi
    echo "stopped $stopped processes (logs kept in $DIR)"
}

if [ "$ACTION" = stop ]; then
    stop_all
    exit 0
fi

if [ "$ACTION" = status ]; then
    running=0
    for file in $(pid_files); do
        pid="$(cat "$file")"
        if group_alive "$pid"; then
            echo "$(basename "$file" .pid): running (pid $pid)"
            running=$((running + 1))
        else
            echo "$(basename "$file" .pid): not running (pid $pid)"
        fi
    done
    [ "$running" -gt 0 ] || { echo "no cluster running from $DIR"; exit 1; }
    exit 0
fi

# ---------------------------------------------------------------- start
PYTHON="$(python_bin)"
CORES="$(nproc 2>/dev/null || echo 1)"
if [ -z "$WORKERS" ]; then
    WORKERS="$CORES"
fi
positive_int --workers "$WORKERS"
if [ -z "$THREADS" ]; then
    THREADS=$((CORES / WORKERS))
    [ "$THREADS" -ge 1 ] || THREADS=1
fi
positive_int --threads-per-worker "$THREADS"
positive_int --timeout "$TIMEOUT"
port_number --scheduler-port "$PORT"
port_number --dashboard-port "$DASHBOARD_PORT"
[ -n "$HOST" ] || die "--host must not be empty"
if [ -z "$SCHEDULER_FILE" ]; then
    SCHEDULER_FILE="$DIR/scheduler.json"
fi
case "$SCHEDULER_FILE" in
    /*) ;;
    *) SCHEDULER_FILE="$PWD/$SCHEDULER_FILE" ;;
esac

for file in $(pid_files); do
    if group_alive "$(cat "$file")"; then
        die "a cluster started from $DIR is still running: $PROG stop --dir $DIR"
    fi
    rm -f "$file"
done

# dmask must import in the workers: from the interpreter's packages, else the checkout.
if ! "$PYTHON" -c 'import dmask, distributed' >/dev/null 2>&1; then
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    "$PYTHON" -c 'import dmask, distributed' >/dev/null 2>&1 \
        || die "$PYTHON cannot import dmask and distributed: pip install -e $ROOT"
fi

# "auto" as Dask means it for several workers in one process: the machine's memory
# (or cgroup limit) shared out between the workers.
if [ "$MEMORY_LIMIT" = auto ]; then
    MEMORY_LIMIT="$("$PYTHON" -c \
        "from distributed.system import MEMORY_LIMIT; print(MEMORY_LIMIT // $WORKERS)")"
fi
"$PYTHON" -c "from dask.utils import parse_bytes; import sys; \
sys.exit(0 if parse_bytes(sys.argv[1]) > 0 else 1)" "$MEMORY_LIMIT" 2>/dev/null \
    || die "--memory-limit must be a size such as 4GB or 'auto', got '$MEMORY_LIMIT'"

rm -f "$SCHEDULER_FILE"
echo "$SCHEDULER_FILE" > "$DIR/scheduler-file.path"

launch() {  # NAME COMMAND...: start in the background as a new process group
    local name="$1"
    shift
    setsid "$@" > "$DIR/$name.log" 2>&1 < /dev/null &
    echo $! > "$DIR/$name.pid"
}

fail_start() {
    echo "$PROG: error: $1" >&2
    if [ -f "$2" ]; then
        # The exception lines say why (a traceback's last line often does not).
        if grep -qE '^[A-Za-z_.]*(Error|Exception)[:(]' "$2"; then
            grep -E '^[A-Za-z_.]*(Error|Exception)[:(]' "$2" | head -n 3 | sed 's/^/  /' >&2
        fi
        echo "  (full log: $2)" >&2
    fi
    stop_all >/dev/null
    exit 1
}

launch scheduler "$PYTHON" -m dask scheduler \
    --host "$HOST" \
    --port "$PORT" \
    --dashboard-address "$HOST:$DASHBOARD_PORT" \
    --scheduler-file "$SCHEDULER_FILE"

deadline=$((SECONDS + TIMEOUT))
until [ -s "$SCHEDULER_FILE" ]; do
    alive "$(cat "$DIR/scheduler.pid")" \
        || fail_start "the scheduler exited" "$DIR/scheduler.log"
    [ "$SECONDS" -lt "$deadline" ] \
        || fail_start "the scheduler did not start in $TIMEOUT s" "$DIR/scheduler.log"
    sleep 0.2
done
ADDRESS="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' \
    "$SCHEDULER_FILE")"

for i in $(seq 0 $((WORKERS - 1))); do
    launch "worker-$i" "$PYTHON" -m dask worker "$ADDRESS" \
        --name "local-worker-$i" \
        --host "$HOST" \
        --nthreads "$THREADS" \
        --memory-limit "$MEMORY_LIMIT" \
        --no-dashboard \
        --dashboard-address "$HOST:0" \
        --local-directory "$DIR/worker-$i" \
        --death-timeout 60
done

# Wait until every worker has registered with the scheduler.
remaining=$((deadline - SECONDS))
[ "$remaining" -ge 5 ] || remaining=5
if ! "$PYTHON" - "$SCHEDULER_FILE" "$WORKERS" "$remaining" <<'PY'
import logging
import sys

from distributed import Client

logging.getLogger("distributed").setLevel(logging.CRITICAL)
path, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with Client(scheduler_file=path, timeout=f"{timeout}s") as client:
    try:
        client.wait_for_workers(count, timeout=timeout)
    except TimeoutError:
        sys.exit(1)
PY
then
    fail_start "not all $WORKERS workers joined in $TIMEOUT s" "$DIR/worker-0.log"
fi

cat <<EOF
scheduler: $ADDRESS
dashboard: http://$HOST:$DASHBOARD_PORT/status
scheduler file: $SCHEDULER_FILE
workers: $WORKERS x $THREADS threads, memory limit $MEMORY_LIMIT each
PIDs and logs: $DIR
use it:
  dmask train data/faces.zarr --out data/model.zarr --scheduler $ADDRESS
  dmask train data/faces.zarr --out data/model.zarr --scheduler-file $SCHEDULER_FILE
stop it:
  $PROG stop --dir $DIR
EOF
