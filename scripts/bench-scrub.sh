#!/usr/bin/env bash
# The scrubber's benchmark line (issue 14): how fast one volume is scrubbed, whether the
# rate bound holds, what a pass leaves in the page cache, and the p99 of 4 KiB GETs beside
# a running scrub against the same server with the scrubber off.
#
#   scripts/bench-scrub.sh [--rounds N] [--duration SECS] [--mib MIB] [--out DIR]
#
# - Builds the release binary, prints the CPU and its SIMD features and the single-stream
#   MD5 rate (Python hashlib, OpenSSL), writes MIB MiB of random 64 MiB blocks and one hot
#   4 KiB block into a fresh volume under target/ (a real disk, not tmpfs).
# - Throughput: page cache dropped (as root), one keepring (--workers 1, pinned to core 0)
#   with --scrub-rate-mb 0 scrubs the volume; MB/s from keepring_scrub_bytes_total over
#   the pass, beside the disk's own cold read rate (cat, cache dropped again) and the MD5
#   rate. Then fincore: how much of the scrubbed blocks stayed cached (the scrubber drops
#   what nobody had cached) and whether the hot block stayed.
# - Rate bound: the default --scrub-rate-mb 50, measured over DURATION seconds.
# - Beside: 8 connections of 4 KiB GETs (wrk, on the last core) for DURATION seconds
#   against keepring with the scrubber off, then with a scrub at the default rate running
#   (interval 1 s, so passes follow each other), interleaved for ROUNDS rounds; medians of
#   p99 and req/s, and the ratio (target: p99 beside a scrub within 1.2× of without).
# Writes DIR/scrub.md (default bench-results). Sends traffic to 127.0.0.1 only; every
# process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
command_line="scripts/bench-scrub.sh${*:+ $*}"
rounds=3 duration=8 mib=1024 out=bench-results
while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --mib) mib=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for value in "$rounds" "$duration" "$mib"; do
    [[ $value =~ ^[1-9][0-9]*$ ]] || { echo "--rounds, --duration and --mib take positive integers" >&2; exit 2; }
done
command -v wrk >/dev/null || {
    sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
}
nice_level=0
[[ $(id -u) == 0 ]] && nice_level=-10
ncpu=$(nproc)
client_cores=$((ncpu - 1))
((ncpu >= 2)) || client_cores=0

echo "+ cargo build --release --quiet"
cargo build --release --quiet
binary=${CARGO_TARGET_DIR:-$repo/target}/release/keepring
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
simd="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512bw|avx512vl)$' | tr '\n' ' ' | sed 's/ $//')"
echo "CPU: $cpu; SIMD: $simd; $ncpu cores; $(uname -r)"
md5_mbs=$(taskset -c 0 python3 -c '
import hashlib, os, time
chunk = os.urandom(1 << 20); h = hashlib.md5(); t = time.perf_counter()
for _ in range(256): h.update(chunk)
print(f"{256 * (1 << 20) / (time.perf_counter() - t) / 1e6:.0f}")')
echo "single-stream MD5 (hashlib, core 0): $md5_mbs MB/s"

work=$(mktemp -d "$repo/target/bench-scrub.XXXXXX")
vol=$work/vol
mkdir -p "$vol" "$work/logs"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------- blocks
store() { # $1 = file → stored under its MD5; prints the hash
    local hash
    hash=$(md5sum "$1" | cut -c1-32)
    mkdir -p "$vol/${hash:0:3}"
    mv "$1" "$vol/${hash:0:3}/$hash"
    echo "$hash"
}
count=$(((mib + 63) / 64))
for _ in $(seq "$count"); do
    head -c $((64 << 20)) /dev/urandom >"$work/block"
    store "$work/block" >>"$work/big.list"
done
head -c 4096 /dev/urandom >"$work/hot"
hot=$(store "$work/hot")
total_bytes=$((count * (64 << 20) + 4096))
sync
echo "volume: $count blocks of 64 MiB and one of 4 KiB ($total_bytes bytes) on $(df -T "$vol" | awk 'NR == 2 { print $2 }')"

drop_caches() {
    sync
    if [[ $(id -u) == 0 ]]; then echo 3 >/proc/sys/vm/drop_caches; else echo "(not root: page cache not dropped)"; fi
}

port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Start keepring on the volume (core 0, one worker); sets kpid and kport.
start() { # $1 = name, $2 = log level, $3… flags
    local name=$1 level=$2 log=$work/logs/$1.log
    shift 2
    kport=$(port)
    nice -n "$nice_level" taskset -c 0 "$binary" --listen "127.0.0.1:$kport" --volume "$vol" --workers 1 --log-level "$level" --no-handover \
        "$@" >"$log" 2>&1 &
    kpid=$!
    pids+=("$kpid")
    for _ in $(seq 200); do
        grep -q "listening on" "$log" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "keepring ($name) did not start" >&2
    cat "$log" >&2
    exit 1
}
stop() { kill "$kpid" 2>/dev/null || true; wait "$kpid" 2>/dev/null || true; }

scrubbed_bytes() {
    curl -s "http://127.0.0.1:$kport/metrics" | awk '/^keepring_scrub_bytes_total/ { sum += $NF } END { printf "%d", sum }'
}

# ---------------------------------------------------------------------------- throughput
drop_caches
start throughput info --scrub-interval-secs 1 --scrub-rate-mb 0
while (($(scrubbed_bytes) == 0)); do sleep 0.02; done
t0=$(date +%s.%N)
while (($(scrubbed_bytes) < total_bytes)); do sleep 0.02; done
t1=$(date +%s.%N)
stop
scrub_mbs=$(awk -v b="$total_bytes" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.0f", b / (z - a) / 1e6 }')
echo "scrub, unbounded, cold cache: $scrub_mbs MB/s"
cached_kib=$(cd "$vol" && fincore -b -n -o RES $(sed 's|^\(...\)|\1/\1|' "$work/big.list") | awk '{ s += $1 } END { printf "%d", s / 1024 }')
echo "scrubbed blocks still cached after the pass: $cached_kib KiB of $((count * 65536)) KiB"
drop_caches
t0=$(date +%s.%N)
(cd "$vol" && cat $(sed 's|^\(...\)|\1/\1|' "$work/big.list") >/dev/null)
t1=$(date +%s.%N)
disk_mbs=$(awk -v b="$((count * (64 << 20)))" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.0f", b / (z - a) / 1e6 }')
echo "disk cold read (cat): $disk_mbs MB/s"

# ---------------------------------------------------------------------------- rate bound
drop_caches
start rate info --scrub-interval-secs 1
while (($(scrubbed_bytes) == 0)); do sleep 0.05; done
b0=$(scrubbed_bytes); t0=$(date +%s.%N)
sleep "$duration"
b1=$(scrubbed_bytes); t1=$(date +%s.%N)
stop
rate_mbs=$(awk -v b="$((b1 - b0))" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.1f", b / (z - a) / 1e6 }')
echo "scrub at the default --scrub-rate-mb 50: $rate_mbs MB/s"

# ---------------------------------------------------------------------------- beside
# wrk prints its latency distribution with --latency; p99 in ms.
p99_ms() {
    awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000; print v }' "$1"
}
rps_of() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
: >"$work/beside.csv"
for round in $(seq "$rounds"); do
    for mode in off on; do
        if [[ $mode == off ]]; then
            start "beside-$mode" warn --scrub-interval-secs 0
        else
            start "beside-$mode" warn --scrub-interval-secs 1
            while (($(scrubbed_bytes) == 0)); do sleep 0.05; done
        fi
        curl -s -o /dev/null "http://127.0.0.1:$kport/$hot+4096"
        result=$work/logs/beside-$mode-$round.txt
        nice -n "$nice_level" taskset -c "$client_cores" wrk -t1 -c8 -d"${duration}s" --latency "http://127.0.0.1:$kport/$hot+4096" >"$result"
        bytes=$(scrubbed_bytes)
        stop
        echo "$mode,$round,$(p99_ms "$result"),$(rps_of "$result"),$bytes" >>"$work/beside.csv"
        echo "  4 KiB GETs, scrub $mode, round $round: p99 $(p99_ms "$result") ms, $(rps_of "$result") req/s (scrubbed so far: $bytes bytes)"
    done
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
p99_off=$(awk -F, '$1 == "off" { print $3 }' "$work/beside.csv" | median)
p99_on=$(awk -F, '$1 == "on" { print $3 }' "$work/beside.csv" | median)
rps_off=$(awk -F, '$1 == "off" { print $4 }' "$work/beside.csv" | median)
rps_on=$(awk -F, '$1 == "on" { print $4 }' "$work/beside.csv" | median)
ratio=$(awk -v a="$p99_on" -v b="$p99_off" 'BEGIN { printf "%.2f", a / b }')
echo "p99 of 4 KiB GETs beside a scrub / without: $p99_on / $p99_off ms = ${ratio}× (target ≤ 1.2×)"

mkdir -p "$out"
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
cat >"$out/scrub.md" <<EOF
# Scrubber benchmark

\`$command_line\` at $revision, $(date -u +%Y-%m-%dT%H:%MZ). CPU: $cpu ($ncpu cores; SIMD: $simd), $(uname -r);
volume: $count × 64 MiB on $(df -T "$vol" | awk 'NR == 2 { print $2 }'); keepring --workers 1 on core 0, wrk on core $client_cores, both at nice $nice_level.

| measure | value |
| --- | --- |
| scrub, one volume, unbounded (\`--scrub-rate-mb 0\`), cold cache | $scrub_mbs MB/s |
| the disk's cold read rate (cat) / single-stream MD5 (hashlib) | $disk_mbs / $md5_mbs MB/s |
| scrubbed blocks still in the page cache after the pass | $cached_kib of $((count * 65536)) KiB |
| scrub at the default \`--scrub-rate-mb 50\` | $rate_mbs MB/s |
| 4 KiB GETs (8 connections), p99 without / beside a scrub (medians of $rounds) | $p99_off / $p99_on ms (${ratio}×) |
| 4 KiB GETs, req/s without / beside a scrub | $rps_off / $rps_on |
EOF
echo "wrote $out/scrub.md"
