#!/usr/bin/env bash
# Replace a running keepring N times under wrk load and print wrk's error counts.
# Operators' check that a restart drops nothing; also the comparison run for the
# hand-over (pass --no-handover to restart with plain SO_REUSEPORT binds instead).
#
#   scripts/rolling-restart.sh [--mode keepalive|churn] [--restarts 5] [--duration 12]
#                              [--connections 32] [--port 25190] [--no-handover]
#
# keepalive: wrk's connections stay open (each gets `Connection: close` while the old
# process drains and reconnects). churn: wrk sends `Connection: close`, so every request
# is a new connection: the case where a closing listener's accept queue would be lost.
# 127.0.0.1 only; bounded by --duration; everything is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=keepalive restarts=5 duration=12 connections=32 port=25190 handover_flag=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --mode) mode=$2; shift 2 ;;
        --restarts) restarts=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --no-handover) handover_flag="--no-handover"; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

if ! command -v wrk >/dev/null; then
    echo "+ apt-get install -y wrk"
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
echo "+ cargo build --release"
cargo build --release --quiet
binary=target/release/keepring

work=$(mktemp -d /tmp/keepring-restart.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

handover_note=${handover_flag:-"hand-over on"}
echo "mode=$mode restarts=$restarts duration=${duration}s connections=$connections ($handover_note)"
echo "net.ipv4.tcp_migrate_req=$(sysctl -n net.ipv4.tcp_migrate_req 2>/dev/null || echo n/a)"
head -c 4096 /dev/urandom >"$work/block"
hash=$(md5sum "$work/block" | cut -c1-32)

# Start a server in this shell (so `wait` can read its exit code); sets $pid once it listens.
start_server() { # $1 = log file, $2... extra flags
    local log=$1; shift
    "$binary" --listen "127.0.0.1:$port" --volume "$work/v0" --control-socket "$work/ctl.sock" \
        --log-level warn $handover_flag "$@" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 200); do
        if grep -q "listening on" "$log" 2>/dev/null; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then cat "$log" >&2; return 1; fi
        sleep 0.025
    done
    echo "server did not start" >&2; return 1
}

start_server "$work/server-0.log"
curl -sf -X PUT --data-binary @"$work/block" "http://127.0.0.1:$port/$hash" >/dev/null

wrk_args=(-t1 -c"$connections" -d"${duration}s" --latency)
[[ $mode == churn ]] && wrk_args+=(-H "Connection: close")
echo "+ wrk ${wrk_args[*]} http://127.0.0.1:$port/$hash+4096"
wrk "${wrk_args[@]}" "http://127.0.0.1:$port/$hash+4096" >"$work/wrk.out" 2>&1 &
wrk_pid=$!

interval=$(awk -v d="$duration" -v r="$restarts" 'BEGIN { printf "%.2f", d / (r + 2) }')
exit_codes=()
for i in $(seq "$restarts"); do
    sleep "$interval"
    old=$pid
    start_server "$work/server-$i.log" --term-pid "$old"
    code=0
    wait "$old" || code=$?
    exit_codes+=("$code")
    echo "restart $i: new pid $pid, old pid $old exited $code"
done
wait "$wrk_pid" || true
cat "$work/wrk.out"
errors=$(grep -E "Socket errors|Non-2xx" "$work/wrk.out" || true)
echo "---"
echo "restarts: $restarts, old exit codes: ${exit_codes[*]}"
echo "wrk errors: ${errors:-none}"
[[ -z $errors ]]
