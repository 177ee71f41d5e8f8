#!/usr/bin/env bash
# Instructions per request of small GETs, counted by callgrind: steady where CPU time on a
# shared host swings by half from one round to the next, so a change to keepring's own
# per-request work shows as a number that does not move with the neighbours.
#
#   scripts/bench-instructions.sh [--size 4096] [--connections 64] [--duration 6] [BINARY...]
#
# For each binary (default: this tree's release build, built if missing): start it under
# valgrind --tool=callgrind (one worker, a temp volume, 127.0.0.1 only), store one block,
# warm up for 2 s with wrk, then count the whole process's instructions (user space: every
# thread, the runtime and libc included, the kernel not) while wrk sends GETs of that block
# for --duration seconds; prints instructions per request. Give two binaries (before,
# after) to compare a change.
#
# What valgrind changes, the same for every binary: it hides AVX-512 (the AVX2 MD5
# kernel runs, 8 lanes) and does not know openat2, so every open takes the io_uring
# fallback (about 2-3k instructions of the figure). Needs valgrind, wrk and curl (installs
# them with apt-get when missing). Stops by itself: wrk is bounded by `timeout`, the server
# is killed on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
size=4096 connections=64 duration=6
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in
        --size) size=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
binaries=("$@")
if [[ ${#binaries[@]} -eq 0 ]]; then
    cargo build --release --quiet
    binaries=(target/release/keepring)
fi
missing=()
for tool in valgrind wrk curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
server=
cleanup() {
    [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

head -c "$size" /dev/urandom >"$work/block"
hash=$(md5sum "$work/block" | cut -d' ' -f1)
echo "GET ${size} B x ${connections} connections, ${duration} s counted; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
for binary in "${binaries[@]}"; do
    run=$(mktemp -d -p "$work")
    port=$((20000 + RANDOM % 20000))
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$run/callgrind.out" \
        "$binary" --listen "127.0.0.1:$port" --volume "$run/volume" --workers 1 --log-level warn \
        --scrub-interval-secs 0 --no-handover --control-socket "$run/control.sock" >"$run/log" 2>&1 &
    server=$!
    for _ in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.2
    done
    curl -s -X PUT --data-binary @"$work/block" "http://127.0.0.1:$port/$hash" >/dev/null
    url="http://127.0.0.1:$port/$hash+$size"
    timeout 30 wrk -t1 -c"$connections" -d2s "$url" >/dev/null
    callgrind_control -i on "$server" >/dev/null 2>&1
    out=$(timeout $((duration + 30)) wrk -t1 -c"$connections" -d"${duration}s" "$url")
    callgrind_control -i off "$server" >/dev/null 2>&1
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    instructions=$(awk '/^totals:/ {print $2}' "$run/callgrind.out")
    if [[ -z $requests || -z $instructions || $requests -eq 0 ]]; then
        echo "$binary: no count; its log ends:" >&2
        tail -5 "$run/log" >&2
        exit 1
    fi
    echo "$binary: $requests requests, $((instructions / requests)) instructions per request"
done
