# Helpers shared by the whole-system benchmark scripts (scripts/bench.sh,
# scripts/bench-s3-tls.sh). Sourced, not run: it defines functions and the array R, and
# starts nothing. Callers set `set -euo pipefail` themselves.

# Print every command before running it.
run() {
    echo "+ $*"
    "$@"
}

stop_pid() { # TERM, then KILL after 5 s
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Sum of utime+stime ticks of processes and their direct children (nginx's workers).
# $@ = PIDs
cpu_ticks() {
    local root pid total=0 fields
    for root in "$@"; do
        for pid in "$root" $(pgrep -P "$root" || true); do
            fields=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
            fields=${fields##*) } # past "(comm) "; utime and stime are then fields 12 and 13
            read -r -a f <<<"$fields"
            total=$((total + f[11] + f[12]))
        done
    done
    echo "$total"
}

# Parse wrk.lua's "BENCH k=v …" line into the assoc array R.
declare -A R
parse_wrk() {
    local line kv
    R=()
    line=$(grep '^BENCH ' "$1" | tail -1) || return 1
    for kv in ${line#BENCH }; do R[${kv%%=*}]=${kv#*=}; done
    R[errors]=$((R[connect] + R[read] + R[write] + R[status] + R[timeout]))
    R[duration_s]=$(awk -v d="${R[duration_us]}" 'BEGIN { printf "%.3f", d / 1e6 }')
    R[p50_ms]=$(awk -v v="${R[p50_us]}" 'BEGIN { printf "%.3f", v / 1e3 }')
    R[p99_ms]=$(awk -v v="${R[p99_us]}" 'BEGIN { printf "%.3f", v / 1e3 }')
}

# The CPU's model name.
cpu_model() {
    grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'
}

# Which of the CPU flags matching $1 (an extended regex of whole names, e.g.
# 'avx2|avx512f') this CPU has, space-separated, in /proc/cpuinfo's order.
cpu_flags() {
    grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E "^($1)\$" | tr '\n' ' ' | sed 's/ $//'
}

# The MD5 hasher's totals from a keepring's /metrics on 127.0.0.1:$1, as one line
# "lane_bytes room_bytes single_bytes batches chunks", or an empty line when /metrics
# cannot be read. Workers copy their totals into /metrics once a second: read after the
# round has been still that long.
md5_rounds() {
    { curl -s --max-time 5 "http://127.0.0.1:$1/metrics" || true; } | awk '
        $1 == "keepring_md5_round_bytes_total{path=\"lanes\"}" { lanes = $2 }
        $1 == "keepring_md5_round_bytes_total{path=\"single\"}" { single = $2 }
        $1 == "keepring_md5_round_room_bytes_total" { room = $2; seen = 1 }
        $1 == "keepring_md5_batches_total" { batches = $2 }
        $1 == "keepring_md5_chunks_total" { chunks = $2 }
        END { if (seen) printf "%.0f %.0f %.0f %.0f %.0f\n", lanes, room, single, batches, chunks; else print "" }'
}

# From two md5_rounds lines: "fill_pct,streams_per_batch": how full the SIMD lanes ran
# (bytes hashed in lanes over the rounds' room) and streams per hasher batch; empty
# fields where either reading failed or nothing was hashed.
md5_fill() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (split(a, x, " ") < 5 || split(b, y, " ") < 5) { print ","; exit }
        room = y[2] - x[2]; batches = y[4] - x[4]
        fill = room > 0 ? sprintf("%.1f", 100 * (y[1] - x[1]) / room) : ""
        per = batches > 0 ? sprintf("%.2f", (y[5] - x[5]) / batches) : ""
        printf "%s,%s\n", fill, per
    }'
}
