#!/usr/bin/env bash
# Many concurrent streams on one worker, the load the batched MD5 hasher is for (issue 16):
# GET 64 MiB with 16 connections and GET 4 KiB with 64 connections, against one keepring
# worker (core 0) and nginx (one worker process, core 0) serving the same block files,
# wrk on core 1, on 127.0.0.1 only. Rounds are interleaved (keepring A, [keepring B],
# nginx, …); prints the median req/s, MB/s and server CPU µs per request of each.
#
#   scripts/bench-many-streams.sh [--rounds 3] [--duration 5] [BINARY_A [BINARY_B]]
#
# BINARY_A defaults to this tree's release build (built if missing); give BINARY_B to
# compare two builds in one run (e.g. before and after a change), or set
# KEEPRING_MD5_KERNEL_B=scalar to run BINARY_A a second time with its kernel forced.
# Needs wrk, nginx and curl (scripts/bench.sh installs them). Stops by itself: every wrk
# run is bounded by `timeout`, servers are killed on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=3 duration=5
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
binary_a=${1:-target/release/keepring}
binary_b=${2:-}
if [[ ! -x $binary_a ]]; then
    cargo build --release --quiet
fi
for tool in wrk curl; do
    command -v "$tool" >/dev/null || { echo "$tool missing (run scripts/bench.sh once to install it)" >&2; exit 2; }
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $nginx_bin ]] || { echo "nginx missing (run scripts/bench.sh once to install it)" >&2; exit 2; }

work=$(mktemp -d /tmp/keepring-many.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/vol" "$work/nginx/tmp"

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); SIMD:" \
    "$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512bw|avx512vl)$' | tr '\n' ' ')"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_keepring() { # $1 binary, $2 port, $3 kernel override ('' for none)
    local env=()
    [[ -n $3 ]] && env=(KEEPRING_MD5_KERNEL="$3")
    env "${env[@]}" taskset -c 0 "$1" --listen "127.0.0.1:$2" --volume "$work/vol" --workers 1 \
        --log-level warn --control-socket "$work/ctl-$2.sock" >"$work/keepring-$2.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$2/_health/ping" && return 0
        sleep 0.05
    done
    echo "keepring on $2 did not start" >&2; cat "$work/keepring-$2.log" >&2; exit 1
}

port_a=$(free_port)
start_keepring "$binary_a" "$port_a" ""
servers=("A:$port_a")
if [[ -n $binary_b ]]; then
    port_b=$(free_port); start_keepring "$binary_b" "$port_b" ""; servers+=("B:$port_b")
elif [[ -n ${KEEPRING_MD5_KERNEL_B:-} ]]; then
    port_b=$(free_port); start_keepring "$binary_a" "$port_b" "$KEEPRING_MD5_KERNEL_B"; servers+=("B:$port_b")
fi

# Blocks stored through A: one of 64 MiB, one of 4 KiB (random, so MD5 has real work).
head -c 67108864 /dev/urandom >"$work/big"
head -c 4096 /dev/urandom >"$work/small"
big=$(md5sum "$work/big" | cut -c1-32) small=$(md5sum "$work/small" | cut -c1-32)
for name in big small; do
    hash=${!name}
    curl -sf -X PUT --data-binary "@$work/$name" "http://127.0.0.1:$port_a/$hash" >/dev/null
done

port_n=$(free_port)
# As root, nginx's workers would run as nobody and could not read the 0700 temp dir.
user_line=""
[[ $(id -u) == 0 ]] && user_line="user root;"
cat >"$work/nginx/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off; sendfile on; tcp_nopush on;
    client_body_temp_path $work/nginx/tmp;
    server {
        listen 127.0.0.1:$port_n;
        root $work/vol;
        location ~ "^/(([0-9a-f]{3})[0-9a-f]{29})(\+[^/]*)?$" { try_files /\$2/\$1 =404; }
    }
}
EOF
taskset -c 0 "$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' >"$work/nginx.log" 2>&1 &
pids+=($!)
sleep 0.5
servers+=("nginx:$port_n")
for server in "${servers[@]}"; do
    got=$(curl -sf "http://127.0.0.1:${server#*:}/$big+67108864" | md5sum | cut -c1-32)
    [[ $got == "$big" ]] || { echo "${server%%:*} does not serve the 64 MiB block intact" >&2; exit 1; }
done

cpu_ticks() { # utime+stime of every process holding the listener on port $1 (nginx: master and worker)
    local total=0 pid
    for pid in $(ss -Htlnp "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
    done
    echo "$total"
}

measure() { # $1 label, $2 port, $3 path, $4 connections → "req/s MB/s us/req"
    local before after out
    before=$(cpu_ticks "$2")
    out=$(timeout $((duration + 30)) taskset -c 1 wrk -t1 -c"$4" -d"${duration}s" --timeout 30s "http://127.0.0.1:$2/$3")
    after=$(cpu_ticks "$2")
    python3 - "$out" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import re, sys
out, before, after, hz = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
requests = int(re.search(r"(\d+) requests in", out).group(1))
seconds = float(re.search(r"requests in ([\d.]+)(m?s)", out).group(1))
unit = re.search(r"requests in [\d.]+(m?s)", out).group(1)
seconds = seconds / 1000 if unit == "ms" else seconds
rate = requests / seconds
transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
scale = {"B": 1e-6, "KB": 1.024e-3, "MB": 1.048576, "GB": 1073.741824}[transfer.group(2)]
cpu_us = (after - before) / hz * 1e6 / max(requests, 1)
print(f"{rate:.1f} {float(transfer.group(1)) * scale:.1f} {cpu_us:.1f}")
PY
}

declare -A results
for case in "get_64m:$big+67108864:16" "get_4k:$small+4096:64"; do
    IFS=: read -r name path connections <<<"$case"
    for round in $(seq "$rounds"); do
        for server in "${servers[@]}"; do
            label=${server%%:*} port=${server#*:}
            line=$(measure "$label" "$port" "$path" "$connections")
            printf '  %-8s %-6s round %d: %s (req/s MB/s cpu-us/req)\n' "$name" "$label" "$round" "$line"
            results[$name:$label]+="$line;"
        done
    done
done

echo
echo "| case | server | req/s | MB/s | server CPU µs/req |"
echo "| --- | --- | ---: | ---: | ---: |"
for key in $(printf '%s\n' "${!results[@]}" | sort); do
    python3 - "$key" "${results[$key]}" <<'PY'
import statistics, sys
key, rows = sys.argv[1], [r.split() for r in sys.argv[2].strip(";").split(";")]
median = lambda i: statistics.median(float(r[i]) for r in rows)
name, label = key.split(":")
print(f"| {name} | {label} | {median(0):,.1f} | {median(1):,.1f} | {median(2):,.1f} |")
PY
done
