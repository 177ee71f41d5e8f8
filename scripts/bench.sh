#!/usr/bin/env bash
# keepring against nginx serving the same block files (issue 7), on 127.0.0.1 only.
#
#   scripts/bench.sh [--quick] [--rounds 3] [--duration 5] [--workers "1 2"] [--out DIR]
#                    [--nice -10] [--keep]
#
# One command on a fresh Debian/Ubuntu machine with a Rust toolchain: installs wrk, hey,
# nginx, gnuplot, curl and python3 with apt when missing, builds keepring (release), measures
# the single-core MD5 rate (criterion `md5/blockdigest/1048576` of benches/micro.rs: the MD5
# keepring runs) and the volume disk's write+fdatasync rate, then for each --workers W:
#   - starts keepring (`--workers W`, no signing key, so GETs need no signature) on a temp
#     volume, stores random blocks of 4 KiB, 1 MiB and 64 MiB with curl PUT, and starts nginx
#     (`worker_processes W`, sendfile on, access_log off, `root` on the same volume, a
#     rewrite of /<hash>[+hints] to /<xxx>/<hash>); checks both serve every block intact;
#   - pins both servers to cores 0..W-1 and the load generator to the next core(s), or to all
#     cores when there are not enough (on 2 cores: W=1 → servers on 0, wrk on 1; W=2 →
#     servers on 0-1 and wrk shares them, so W=2 figures include the client's CPU contention);
#   - runs every case in interleaved rounds (keepring, nginx, keepring, nginx …), --rounds
#     each, --duration seconds each: GET 4 KiB, GET 1 MiB, GET 64 MiB (wrk), HEAD 4 KiB (hey:
#     wrk cannot do HEAD, it waits for a body), GET 4 KiB while 64 MiB GETs run beside it
#     (p50/p99 of the small ones), PUT 1 MiB and PUT 64 MiB (scripts/bench/put-load.py, a
#     thread per connection sending whole blocks back to back: wrk copies a Lua-made request
#     on its one thread each time, which starved 64 MiB PUTs; the stored copy is removed
#     before each PUT so every PUT writes and fsyncs; nginx takes no PUT, so these are
#     keepring alone, compared with the MD5 rate and the disk's);
#   - samples each server's CPU time (utime+stime of the process and its children from
#     /proc/PID/stat) around every round → CPU µs per request.
# Writes OUT/bench-<date>.csv (every round), OUT/summary.md (medians, ratios, the issue's
# targets, this command) and OUT/ratios.png, and prints the summary. OUT is bench-results/,
# or target/bench-quick/ for --quick so a smoke run does not replace committed results.
#
# --quick: 1 round of 3 s per case (a smoke run, about 2 minutes with the build cached).
# Default: 3 rounds of 5 s, about 9 minutes. As root, servers and clients run at nice -10 (the
# same for both servers) so that other work on the machine disturbs the rounds less;
# --nice 0 turns that off. Every client run is bounded by `timeout`; servers and
# clients are stopped on exit; their logs stay in the temp dir (printed at the end).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
command_line="scripts/bench.sh${*:+ $*}"
# run, stop_pid, free_port, cpu_ticks, parse_wrk (into R), cpu_model, cpu_flags
. "$repo/scripts/bench/lib.sh"

rounds="" duration="" quick=0 workers_list="1 2" out="" keep=0 nice_level=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) quick=1; shift ;;
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --workers) workers_list=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --nice) nice_level=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ $quick == 1 ]]; then
    rounds=${rounds:-1} duration=${duration:-3} out=${out:-target/bench-quick}
fi
rounds=${rounds:-3} duration=${duration:-5} out=${out:-bench-results}
if [[ -z $nice_level ]]; then
    nice_level=0
    [[ $(id -u) == 0 ]] && nice_level=-10
fi
pin() { # pin CORES command… : taskset at the chosen nice level
    local cores=$1
    shift
    nice -n "$nice_level" taskset -c "$cores" "$@"
}
[[ $rounds =~ ^[1-9][0-9]*$ && $duration =~ ^[1-9][0-9]*$ ]] || { echo "--rounds and --duration take positive integers" >&2; exit 2; }

# ---------------------------------------------------------------------------- tools
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v hey >/dev/null || missing+=(hey)
command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v taskset >/dev/null || missing+=(util-linux)
if ! command -v nginx >/dev/null && ! [[ -x /usr/sbin/nginx ]]; then
    missing+=(nginx)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    sudo=""
    [[ $(id -u) == 0 ]] || sudo=sudo
    run $sudo apt-get update -qq
    if [[ " ${missing[*]} " == *" nginx "* ]] && apt-cache show nginx-light >/dev/null 2>&1; then
        missing=("${missing[@]/#nginx/nginx-light}") # the smallest build has all we need
    fi
    run $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

ncpu=$(nproc)
clk_tck=$(getconf CLK_TCK)
for w in $workers_list; do
    [[ $w =~ ^[1-9][0-9]*$ && $w -le $ncpu ]] || { echo "--workers $w: need 1..$ncpu" >&2; exit 2; }
done

# ---------------------------------------------------------------------------- build
run cargo build --release --quiet
# The revision measured: the tree as built now (edits made while the run goes on are not in it).
if revision=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null); then
    if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock) ]]; then
        revision+=" with uncommitted changes in src/ or Cargo.*"
    fi
else
    revision="unknown (not a git checkout)"
fi
target_dir=${CARGO_TARGET_DIR:-$repo/target}
binary=$target_dir/release/keepring

# ---------------------------------------------------------------------------- work dir
work=$(mktemp -d /tmp/keepring-bench.XXXXXX)
logs=$work/logs
mkdir -p "$logs" "$work/vol" "$work/blocks" "$work/nginx/tmp"
server_pids=()
client_pids=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${client_pids[@]}" "${server_pids[@]}"; do stop_pid "$pid"; done
    if [[ $keep == 1 ]]; then
        echo "work dir kept: $work"
    else
        rm -rf "$work/vol" "$work/blocks" "$work/nginx"
        echo "server and client logs: $logs"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- MD5 reference
# The rate of keepring's own MD5 (BlockDigest: OpenSSL, md-5 fallback) over 1 MiB updates on
# one core, from criterion (the bench profile reuses the release build's dependencies); the
# portable md-5 rate is shown beside it. Falls back to Python's hashlib (OpenSSL), labelled so.
echo "+ nice -n $nice_level taskset -c 0 cargo bench --bench micro -- 'md5/.*/1048576'"
criterion_rate() { # $1 = benchmark id → MB/s, or nothing
    local estimates=$target_dir/criterion/$1/new/estimates.json
    [[ -f $estimates ]] || return 0
    python3 -c '
import json, sys
ns = json.load(open(sys.argv[1]))["median"]["point_estimate"]
print(f"{1048576 / ns * 1e3:.1f}")' "$estimates"
}
rm -rf "$target_dir/criterion/md5"
md5_mbs=""
if pin 0 cargo bench --quiet --bench micro -- 'md5/.*/1048576' >"$logs/md5-criterion.log" 2>&1; then
    md5_mbs=$(criterion_rate md5/blockdigest/1048576)
    portable_mbs=$(criterion_rate md5/portable/1048576)
    md5_source="criterion md5/blockdigest/1048576: keepring's BlockDigest, OpenSSL MD5; portable md-5: ${portable_mbs:-?} MB/s; pinned to core 0"
fi
if [[ -z $md5_mbs ]]; then
    echo "criterion MD5 measurement failed (see $logs/md5-criterion.log); using Python hashlib"
    md5_source="Python hashlib (OpenSSL MD5), 256 MiB in 1 MiB updates, pinned to core 0"
    md5_mbs=$(pin 0 python3 -c '
import hashlib, os, time
chunk = os.urandom(1 << 20); h = hashlib.md5(); t = time.perf_counter()
for _ in range(256): h.update(chunk)
print(f"{256 * (1 << 20) / (time.perf_counter() - t) / 1e6:.1f}")')
fi
echo "single-core MD5: $md5_mbs MB/s ($md5_source)"

# What the volume's disk takes: 64 MiB written and fdatasync'd, three times, median. PUT
# writes and fdatasyncs every block before its rename, so this bounds the PUT rates.
disk_mbs=$(for _ in 1 2 3; do
    dd if=/dev/zero of="$work/dd-test" bs=1M count=64 conv=fdatasync 2>&1 | awk '/copied/ { print $(NF-1), $NF }'
    rm -f "$work/dd-test"
done | awk '{ v = $1; if ($2 ~ /^GB/) v *= 1000; if ($2 ~ /^kB/) v /= 1000; print v }' | sort -n | sed -n 2p)
echo "+ dd if=/dev/zero of=$work/dd-test bs=1M count=64 conv=fdatasync (3 times): median $disk_mbs MB/s"

# ---------------------------------------------------------------------------- blocks
declare -A hash_of
for size in 4096 1048576 67108864; do
    head -c "$size" /dev/urandom >"$work/blocks/b$size"
    hash_of[$size]=$(md5sum "$work/blocks/b$size" | cut -c1-32)
done
# PUT blocks: more than the most PUT connections + 1 of each size (see wrk.lua).
max_workers=$(tr ' ' '\n' <<<"$workers_list" | sort -n | tail -1)
put_list() { # $1 = size, $2 = count → list file path
    local size=$1 count=$2 list=$work/blocks/put-$1.list i file hash
    : >"$list"
    for i in $(seq "$count"); do
        file=$work/blocks/put-$size-$i
        head -c "$size" /dev/urandom >"$file"
        hash=$(md5sum "$file" | cut -c1-32)
        echo "$hash $file $work/vol/${hash:0:3}/$hash" >>"$list"
    done
    echo "$list"
}
put_list_1m=$(put_list 1048576 $((4 * max_workers + 2)))
put_list_64m=$(put_list 67108864 $((2 * max_workers + 2)))
# Eight PUTs at once per worker (issue 16): its own, longer list.
put_list_64m_x8=$(put_list 67108864 $((8 * max_workers + 2)))

# ---------------------------------------------------------------------------- servers
kport=$(free_port)
cport=$(free_port)
while [[ $cport == "$kport" ]]; do cport=$(free_port); done
nport=$(free_port)
while [[ $nport == "$kport" || $nport == "$cport" ]]; do nport=$(free_port); done

# Start a keepring on the shared volume; sets started_pid once it listens.
# $1 = workers, $2 = cores, $3 = port, $4 = name (log and control socket), $5... extra flags
start_keepring_on() {
    local workers=$1 cores=$2 port=$3 name=$4 log=$logs/$4-w$1.log
    shift 4
    local cmd=("$binary" --listen "127.0.0.1:$port" --volume "$work/vol" --workers "$workers" --log-level warn --scrub-interval-secs 0
        "$@" --control-socket "$work/$name.sock")
    echo "+ nice -n $nice_level taskset -c $cores ${cmd[*]} >$log 2>&1 &"
    nice -n "$nice_level" taskset -c "$cores" "${cmd[@]}" >"$log" 2>&1 &
    started_pid=$!
    server_pids+=("$started_pid")
    for _ in $(seq 200); do
        grep -q "listening on" "$log" 2>/dev/null && return 0
        kill -0 "$started_pid" 2>/dev/null || { cat "$log" >&2; echo "$name exited" >&2; return 1; }
        sleep 0.05
    done
    echo "$name did not start within 10 s" >&2
    return 1
}

start_keepring() { # $1 = workers, $2 = cores
    start_keepring_on "$1" "$2" "$kport" keepring
    kpid=$started_pid
}

# A second keepring on the same volume with the verified-copy cache on (the *_cached cases):
# hot blocks are not rehashed, the trade-off the README describes.
start_keepring_cached() { # $1 = workers, $2 = cores
    start_keepring_on "$1" "$2" "$cport" keepring-cached --verified-cache-entries 100000
    cpid=$started_pid
}

start_nginx() { # $1 = workers, $2 = cores
    local conf=$work/nginx/nginx-w$1.conf log=$logs/nginx-w$1.log user_line=""
    [[ $(id -u) == 0 ]] && user_line="user root;" # block files are 0600, owned by whoever runs keepring
    cat >"$conf" <<EOF
$user_line
worker_processes $1;
pid $work/nginx/nginx.pid;
error_log $logs/nginx-error-w$1.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000000;
    default_type application/octet-stream;
    client_body_temp_path $work/nginx/tmp;
    server {
        listen 127.0.0.1:$nport;
        root $work/vol;
        location / {
            # /<hash>[+size][+hints] → /<first 3 hex>/<hash>, as keepstore lays blocks out
            rewrite "^/(([0-9a-f]{3})[0-9a-f]{29})(\+[^/]*)?$" /\$2/\$1 break;
        }
    }
}
EOF
    run "$nginx_bin" -t -q -p "$work/nginx" -c "$conf"
    echo "+ nice -n $nice_level taskset -c $2 $nginx_bin -p $work/nginx -c $conf -g 'daemon off;' >$log 2>&1 &"
    nice -n "$nice_level" taskset -c "$2" "$nginx_bin" -p "$work/nginx" -c "$conf" -g 'daemon off;' >"$log" 2>&1 &
    npid=$!
    server_pids+=("$npid")
    for _ in $(seq 200); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$nport/" && return 0
        kill -0 "$npid" 2>/dev/null || { cat "$log" "$logs/nginx-error-w$1.log" >&2; echo "nginx exited" >&2; return 1; }
        sleep 0.05
    done
    echo "nginx did not start within 10 s" >&2
    return 1
}

# Both servers must return every block intact (and keepring must take the PUTs).
check_servers() {
    local size hash url got
    for size in 4096 1048576 67108864; do
        hash=${hash_of[$size]}
        for url in "http://127.0.0.1:$kport/$hash+$size" "http://127.0.0.1:$nport/$hash+$size"; do
            got=$(curl -sS --fail --max-time 30 "$url" | md5sum | cut -c1-32) || true
            if [[ $got != "$hash" ]]; then
                echo "GET $url returned a body with MD5 $got, not $hash:" >&2
                curl -sS -D - -o /dev/null --max-time 30 "$url" >&2 || true
                return 1
            fi
            got=$(curl -sS --fail --max-time 10 -I "$url" | tr -d '\r' | awk -F': ' 'tolower($1) == "content-length" { print $2 }')
            if [[ $got != "$size" ]]; then
                echo "HEAD $url: Content-Length '$got', expected $size" >&2
                return 1
            fi
        done
    done
    echo "both servers return all blocks intact (GET and HEAD)"
}

# ---------------------------------------------------------------------------- clients
csv=$out/bench-$(date +%Y%m%d-%H%M%S).csv
mkdir -p "$out"
echo "case,workers,server,round,connections,requests,errors,duration_s,req_s,mb_s,p50_ms,p99_ms,cpu_us_per_req,server_cpu_pct,beside_mb_s,lane_fill_pct,streams_per_batch" >"$csv"

# Parse hey's text summary into R (same keys as parse_wrk).
parse_hey() {
    R=()
    eval "$(awk '
        /^  Total:/ { printf "R[duration_s]=%s\n", $2 }
        /^  50% in/ { printf "R[p50_ms]=%.3f\n", $3 * 1000 }
        /^  99% in/ { printf "R[p99_ms]=%.3f\n", $3 * 1000 }
        /^Error distribution:/ { in_errors = 1; next }
        /^  \[[0-9]+\]/ {
            count = substr($1, 2, length($1) - 2)
            if (in_errors) errs += count             # "  [N]\tGet …: error"
            else if ($1 ~ /^\[2/) ok += $2          # "  [200]\tN responses"
            else bad += $2
        }
        END { printf "R[requests]=%d\nR[errors]=%d\n", ok, bad + errs }
    ' "$1")"
    [[ -n ${R[duration_s]:-} ]]
}

# One round of one case against one server; appends a CSV row.
# $1 case, $2 workers, $3 server (keepring|nginx), $4 round
measure() {
    local case=$1 workers=$2 server=$3 round=$4 port pid size conns tool=wrk outfile before after
    local threads=$client_threads beside_mbs="" put_list="" method=GET
    if [[ $server == keepring ]]; then port=$kport pid=$kpid; else port=$nport pid=$npid; fi
    if [[ $server == keepring && $case == *_cached ]]; then port=$cport pid=$cpid; fi
    case $case in
        get_4k | get_4k_cached) size=4096 conns=$((16 * workers)) ;;
        get_64m_cached) size=67108864 conns=$((2 * workers)) ;;
        get_1m) size=1048576 conns=$((4 * workers)) ;;
        get_64m) size=67108864 conns=$((2 * workers)) ;;
        get_64m_x16) size=67108864 conns=$((16 * workers)) ;;
        get_4k_x64) size=4096 conns=$((64 * workers)) ;;
        head_4k) size=4096 conns=$((16 * workers)) tool=hey method=HEAD ;;
        get_4k_beside_64m) size=4096 conns=8 threads=1 ;;
        put_1m) size=1048576 conns=$((4 * workers)) threads=1 put_list=$put_list_1m method=PUT ;;
        put_64m) size=67108864 conns=$((2 * workers)) threads=1 put_list=$put_list_64m method=PUT ;;
        put_64m_x8) size=67108864 conns=$((8 * workers)) threads=1 put_list=$put_list_64m_x8 method=PUT ;;
    esac
    ((conns >= threads)) || threads=$conns
    local url=http://127.0.0.1:$port/${hash_of[$size]}+$size
    outfile=$logs/$case-w$workers-$server-r$round.txt
    local big_pid="" big_out=$logs/$case-w$workers-$server-r$round-beside.txt
    if [[ $case == get_4k_beside_64m ]]; then
        local big_cmd=(timeout $((duration + 30)) nice -n "$nice_level" taskset -c "$client_cores" wrk -t1 -c"$workers" -d$((duration + 2))s
            --timeout 30s -s "$repo/scripts/bench/wrk.lua" "http://127.0.0.1:$port/${hash_of[67108864]}+67108864")
        echo "+ ${big_cmd[*]} >$big_out &"
        "${big_cmd[@]}" >"$big_out" 2>&1 &
        big_pid=$!
        client_pids+=("$big_pid")
        sleep 1
    fi
    # A 64 MiB PUT takes most of a second when 8 run at once and only whole PUTs count:
    # twice the rounds' duration keeps the last unfinished ones a smaller share.
    local put_duration=$duration
    [[ $case == put_64m* ]] && put_duration=$((2 * duration))
    local cmd
    if [[ $tool == hey ]]; then
        cmd=(timeout $((duration + 30)) nice -n "$nice_level" taskset -c "$client_cores" hey -z "${duration}s" -c "$conns" -m "$method"
            -cpus "$client_ncores" -disable-compression "$url")
    else
        cmd=(timeout $((duration + 60)) nice -n "$nice_level" taskset -c "$client_cores" wrk -t"$threads" -c"$conns" -d"${duration}s"
            --timeout 30s -s "$repo/scripts/bench/wrk.lua")
        if [[ -n $put_list ]]; then
            cmd=(timeout $((duration + 60)) nice -n "$nice_level" taskset -c "$client_cores" python3
                "$repo/scripts/bench/put-load.py" --list "$put_list" --connections "$conns" --duration "$put_duration"
                "http://127.0.0.1:$port/")
        else
            cmd+=("$url")
        fi
    fi
    echo "+ ${cmd[*]}"
    local rounds_before="" lane_fill="" streams_per_batch=""
    if [[ $server == keepring && $case != *_cached ]]; then rounds_before=$(md5_rounds "$port") || true; fi
    before=$(cpu_ticks "$pid")
    "${cmd[@]}" >"$outfile" 2>&1 || echo "client exited $? (see $outfile)"
    after=$(cpu_ticks "$pid")
    if [[ -n $rounds_before ]]; then
        sleep 1.1 # the workers' once-a-second copy into /metrics
        IFS=, read -r lane_fill streams_per_batch <<<"$(md5_fill "$rounds_before" "$(md5_rounds "$port")")"
    fi
    if [[ -n $big_pid ]]; then
        wait "$big_pid" || true
        if parse_wrk "$big_out"; then
            beside_mbs=$(awk -v n="${R[requests]}" -v d="${R[duration_s]}" 'BEGIN { printf "%.1f", n * 67108864 / d / 1e6 }')
        fi
    fi
    if [[ $tool == hey ]]; then parse_hey "$outfile"; else parse_wrk "$outfile"; fi || {
        echo "could not parse $outfile:" >&2
        cat "$outfile" >&2
        R=([requests]=0 [errors]=0 [duration_s]=$duration [p50_ms]="" [p99_ms]="")
    }
    local body=$size
    [[ $method == HEAD ]] && body=0
    local row
    row=$(awk -v n="${R[requests]}" -v d="${R[duration_s]}" -v b="$body" -v ticks=$((after - before)) \
        -v hz="$clk_tck" -v beside="$case" '
        BEGIN {
            rps = d > 0 ? n / d : 0
            cpu_us = ticks * 1e6 / hz
            per = (n > 0 && beside != "get_4k_beside_64m") ? sprintf("%.2f", cpu_us / n) : ""
            pct = d > 0 ? cpu_us / (d * 1e6) * 100 : 0
            printf "%.1f,%.1f,%s,%.1f", rps, rps * b / 1e6, per, pct
        }')
    IFS=, read -r rps mbs per_req cpu_pct <<<"$row"
    echo "$case,$workers,$server,$round,$conns,${R[requests]},${R[errors]},${R[duration_s]},$rps,$mbs,${R[p50_ms]},${R[p99_ms]},$per_req,$cpu_pct,$beside_mbs,$lane_fill,$streams_per_batch" >>"$csv"
    printf '  %-18s w%s %-8s round %s: %10s req/s %9s MB/s  p50 %7s ms  p99 %7s ms  cpu %7s us/req (%s%%)  errors %s%s%s\n' \
        "$case" "$workers" "$server" "$round" "$rps" "$mbs" "${R[p50_ms]}" "${R[p99_ms]}" "${per_req:--}" "$cpu_pct" \
        "${R[errors]}" "${beside_mbs:+  beside: $beside_mbs MB/s}" \
        "${lane_fill:+  MD5 lanes $lane_fill% full, $streams_per_batch streams/batch}"
    sleep 0.3
}

# ---------------------------------------------------------------------------- run
echo "machine: $ncpu cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rounds=$rounds duration=${duration}s workers=($workers_list) out=$out work=$work"
started=$(date +%s)
stored=0
for workers in $workers_list; do
    server_cores=0-$((workers - 1))
    if ((ncpu >= 2 * workers)); then
        client_cores=$workers-$((2 * workers - 1)) client_ncores=$workers
    elif ((ncpu > workers)); then
        client_cores=$workers-$((ncpu - 1)) client_ncores=$((ncpu - workers))
    else
        client_cores=0-$((ncpu - 1)) client_ncores=$ncpu # the client shares the servers' cores
    fi
    client_threads=$client_ncores
    echo "== --workers $workers: servers on cores $server_cores, clients on cores $client_cores"
    start_keepring "$workers" "$server_cores"
    if [[ $stored == 0 ]]; then
        for size in 4096 1048576 67108864; do
            run curl -sS --fail --max-time 60 -X PUT --data-binary @"$work/blocks/b$size" \
                "http://127.0.0.1:$kport/${hash_of[$size]}"
            echo
        done
        stored=1
    fi
    start_keepring_cached "$workers" "$server_cores"
    start_nginx "$workers" "$server_cores"
    check_servers
    if [[ -z ${md5_lanes:-} ]]; then
        md5_lanes=$(curl -s "http://127.0.0.1:$kport/metrics" | grep -m1 '^keepring_md5_lanes' || true)
        echo "MD5 lanes: ${md5_lanes:-unknown}"
    fi
    for case in get_4k get_1m get_64m head_4k get_4k_beside_64m get_4k_cached get_64m_cached get_64m_x16 get_4k_x64; do
        for round in $(seq "$rounds"); do
            measure "$case" "$workers" keepring "$round"
            measure "$case" "$workers" nginx "$round"
        done
    done
    for case in put_1m put_64m put_64m_x8; do
        for round in $(seq "$rounds"); do
            measure "$case" "$workers" keepring "$round"
        done
    done
    grep -E "VmHWM|VmRSS" "/proc/$kpid/status" | tr -s ' \t' ' ' | sed "s/^/keepring w$workers /"
    stop_pid "$cpid"
    stop_pid "$kpid"
    stop_pid "$npid"
done
echo "measured in $(($(date +%s) - started)) s"

# ---------------------------------------------------------------------------- report
# The commit measured, and whether the code differs from it (the bench tooling itself aside).
notes=(
    "keepring revision: $revision. Machine: $ncpu cores ($(cpu_model); SIMD: $(cpu_flags 'sse4_2|avx|avx2|avx512f|avx512bw|avx512vl|avx512_vbmi2|sha_ni')), $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME"); $("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //'); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); volume on $(df -T "$work" | awk 'NR == 2 { print $2 }'); date $(date -u +%Y-%m-%dT%H:%MZ)."
    "$rounds rounds of ${duration}s per case and server (64 MiB PUTs: twice that), interleaved; medians shown. Servers pinned to cores 0..W-1; wrk/hey to the next core when there is one, else to all cores (W=2 on a 2-core machine: the client competes with the servers); servers and clients at nice $nice_level."
    "MD5: ${md5_lanes:-lane count unknown} (keepring's /metrics: the kernel its per-core hasher runs, streams per kernel call); single-stream MD5 rate ${md5_mbs} MB/s (${md5_source})."
    "Connections: GET/HEAD 4 KiB 16×W, GET/PUT 1 MiB 4×W, GET/PUT 64 MiB 2×W; many-stream cases (issue 16): GET 64 MiB 16×W, GET 4 KiB 64×W, PUT 64 MiB 8×W; beside case: 8 connections of 4 KiB GETs plus W of 64 MiB GETs. HEAD is driven by hey (wrk cannot do HEAD), PUT by scripts/bench/put-load.py (a thread per connection; wrk copies a Lua-made request on its one thread each time, which starved 64 MiB PUTs); every GET by wrk. keepring has no signing key (GETs unsigned, every GET MD5-verified, except in the *verified-copy cache* cases, served by a second keepring with --verified-cache-entries 100000); nginx: worker_processes W, sendfile on, access_log off."
)
note_args=()
for note in "${notes[@]}"; do note_args+=(--note "$note"); done
run python3 "$repo/scripts/bench/report.py" "$csv" "$out/summary.md" "$work/chart" --md5-mbs "$md5_mbs" \
    --md5-source "$md5_source" --disk-mbs "$disk_mbs" --duration "$duration" --command "$command_line" "${note_args[@]}"
run gnuplot -e "dir='$work/chart'; outfile='$out/ratios.png'; workers='$workers_list'; title_text='keepring vs nginx, same blocks, same cores ($(date -u +%Y-%m-%d), $command_line)'" \
    "$repo/scripts/bench/ratios.gp"
echo "wrote $csv, $out/summary.md, $out/ratios.png"
