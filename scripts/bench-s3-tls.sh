#!/usr/bin/env bash
# HTTPS GETs against nginx with TLS, and S3 volume GETs and PUTs against the store itself
# (issue 13's throughput table), on 127.0.0.1 only.
#
#   scripts/bench-s3-tls.sh [--rounds N] [--duration SECS] [--out DIR] [--connections-64m C]
#
# Builds keepring (release), makes a self-signed P-256 certificate, random blocks of
# 4 KiB, 1 MiB and 64 MiB, and a three-node Garage cluster (scripts/s3-store.sh, which
# builds Garage once into its tools cache). Every keepring runs `--workers 1` on core 0,
# nginx (`worker_processes 1`) on core 0 too, wrk (one thread) on core 1; as root all of
# them at nice -10. Garage's three nodes are not pinned (they float over both cores),
# neither in the direct runs nor behind keepring.
#
# 1. HTTPS GET: keepring with `--tls-certificate/--tls-key` on a directory volume, and
#    nginx (`listen ... ssl`, the same certificate, `root` on the same volume with the
#    rewrite of scripts/bench.sh, sendfile on) serving the same block files; both also over
#    plain HTTP (a second keepring on the same volume, a second nginx listener) as the
#    reference. GET 4 KiB with 64 connections, GET 64 MiB with C connections (default 16).
#    TLS 1.3 with TLS_AES_128_GCM_SHA256 on both: wrk's OpenSSL is pinned to that suite
#    and version by an OpenSSL config file (OPENSSL_CONF; keepring has no suite setting),
#    nginx too (`ssl_protocols TLSv1.3`, `ssl_conf_command Ciphersuites`); what each
#    negotiates is checked with `openssl s_client` and, for nginx, by wrk itself
#    ($ssl_cipher in a response body). Kernel TLS: measured with nginx
#    (`ssl_conf_command Options KTLS`) only when the kernel offers the `tls` ULP; else the
#    report says why not.
# 2. S3 volume: a keepring whose only volume is the Garage bucket (`--config`, S3 driver,
#    PrefixLength 0, BlobSigning off), beside Garage itself (presigned path-style URLs
#    made with boto3, sent by the same wrk) and keepring's directory volume (the HTTP
#    keepring above). GET 1 MiB (4 connections) and 64 MiB (2): keepring's GET of a block
#    it stored; Garage's GET of that same object. PUT 1 MiB (4) and 64 MiB (2), with
#    scripts/bench/wrk.lua: every PUT to keepring's S3 volume or to Garage sends a block
#    never sent before (a fresh pool of random blocks per round and target, sized from the
#    rate measured so far, so that no block is sent twice: a re-PUT would only be a touch
#    for keepring, and Garage deduplicates its data blocks by content, so even deleting
#    between rounds would not make a re-PUT of the same bytes a full write). Rounds where
#    the pool ran out are marked (`repeats`). Garage's direct PUTs go to keys `direct/<md5>`
#    and carry no Content-MD5; keepring's send Content-MD5 and, as keepstore, first look
#    for an existing copy (HEAD) and then write the `recent/` marker. The directory
#    volume's PUTs remove the stored copy before each PUT, as scripts/bench.sh does.
#    An unrecorded warm-up run (3 s) of each PUT case sizes the first pool. PUT 64 MiB
#    rounds last at least 10 s (a 64 MiB PUT to Garage takes over a second here).
# Every case runs in interleaved rounds (one round of each target, then the next round),
# DURATION seconds each; medians of req/s, MB/s, p99, and the servers' CPU time
# (utime+stime of the process and its children from /proc/PID/stat around each round) per
# request; for S3 cases also Garage's (its three nodes); and wrk's own CPU share, which
# says when the client rather than the server was the limit. GETs of 1 MiB and more
# count MB/s from the bytes wrk read, so that transfers cut off at the end of a round count
# too (16 connections of 64 MiB can take longer than a round), and CPU per block's worth
# of bytes. Writes DIR/s3-tls.md (medians, ratios, how it was run) and DIR/s3-tls.csv
# (every round), and prints the report.
# Defaults: 3 rounds of 5 s, DIR bench-results. Every client is bounded by `timeout`;
# everything started here is stopped on exit; logs stay in the temp dir (printed at the end).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
command_line="scripts/bench-s3-tls.sh${*:+ $*}"
# run, stop_pid, free_port, cpu_ticks, parse_wrk (into R), cpu_model, cpu_flags
. "$repo/scripts/bench/lib.sh"

rounds=3 duration=5 out=bench-results connections_64m=16
# PUT 64 MiB rounds last at least this long (see the PUT loop); PUT warm-up runs this long.
put_64m_seconds_min=10
warmup_seconds=3
while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --connections-64m) connections_64m=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for value in "$rounds" "$duration" "$connections_64m"; do
    [[ $value =~ ^[1-9][0-9]*$ ]] || { echo "--rounds, --duration and --connections-64m take positive integers" >&2; exit 2; }
done
nice_level=0
[[ $(id -u) == 0 ]] && nice_level=-10
ncpu=$(nproc)
clk_tck=$(getconf CLK_TCK)
server_cores=0
client_cores=1
((ncpu >= 2)) || client_cores=0

# ---------------------------------------------------------------------------- tools
missing=()
for tool in wrk curl openssl python3 taskset; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ " ${missing[*]} " == *" taskset "* ]] && missing=("${missing[@]/#taskset/util-linux}")
if ! command -v nginx >/dev/null && ! [[ -x /usr/sbin/nginx ]]; then
    missing+=(nginx-light) # has the ssl module
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    sudo=""
    [[ $(id -u) == 0 ]] || sudo=sudo
    run $sudo apt-get update -qq
    run $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
run scripts/s3-store.sh install >/dev/null
s3_python=$(scripts/s3-store.sh client-python)

run cargo build --release --quiet
binary=${CARGO_TARGET_DIR:-$repo/target}/release/keepring

# ---------------------------------------------------------------------------- work dir
work=$(mktemp -d /tmp/keepring-bench-s3-tls.XXXXXX)
logs=$work/logs
mkdir -p "$logs" "$work/vol" "$work/blocks" "$work/pool" "$work/nginx/tmp" "$work/s3"
server_pids=()
s3_started=0
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${server_pids[@]}"; do stop_pid "$pid"; done
    if [[ $s3_started == 1 ]]; then
        timeout 60 scripts/s3-store.sh stop "$work/s3" >/dev/null 2>&1 || echo "could not stop the Garage cluster in $work/s3" >&2
    fi
    rm -rf "$work/vol" "$work/blocks" "$work/pool" "$work/nginx" "$work/s3" "$work/s3.lock"
    echo "server and client logs: $logs"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- kernel TLS
# The kernel offers kTLS when "tls" is among the TCP upper-layer protocols; it may be a
# module not loaded yet (modprobe as root).
ulp_file=/proc/sys/net/ipv4/tcp_available_ulp
ktls_available=0
if ! grep -qw tls "$ulp_file" 2>/dev/null && [[ $(id -u) == 0 ]] && command -v modprobe >/dev/null; then
    modprobe tls 2>/dev/null || true
fi
if grep -qw tls "$ulp_file" 2>/dev/null; then
    ktls_available=1
    ktls_note="kernel TLS: the kernel offers the tls ULP ($ulp_file: $(cat "$ulp_file")); measured with nginx (ssl_conf_command Options KTLS; whether OpenSSL really used it is not checked)."
else
    kernel_config=""
    if [[ -r /proc/config.gz ]]; then
        kernel_config=$(zcat /proc/config.gz | grep -E '^(# )?CONFIG_TLS[ =]' || true)
    elif [[ -r /boot/config-$(uname -r) ]]; then
        kernel_config=$(grep -E '^(# )?CONFIG_TLS[ =]' "/boot/config-$(uname -r)" || true)
    fi
    modprobe_note="no modprobe on this system"
    command -v modprobe >/dev/null && modprobe_note="\`modprobe tls\`: $(modprobe tls 2>&1 | head -1 || true)"
    ktls_note="kernel TLS not measured: this kernel ($(uname -r)) has no tls ULP ($ulp_file: '$(cat "$ulp_file" 2>/dev/null)'; ${kernel_config:-CONFIG_TLS unknown}; $modprobe_note)."
fi
echo "$ktls_note"

# ---------------------------------------------------------------------------- TLS files
run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$work/tls.key" -out "$work/tls.crt" 2>"$logs/openssl-req.log"
tls_suite=TLS_AES_128_GCM_SHA256
# The clients' OpenSSL (wrk, s_client): TLS 1.3 only, one suite.
client_openssl_conf=$work/client-openssl.cnf
cat >"$client_openssl_conf" <<EOF
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_module
[ssl_module]
system_default = tls_pinned
[tls_pinned]
MinProtocol = TLSv1.3
Ciphersuites = $tls_suite
EOF

# ---------------------------------------------------------------------------- blocks
declare -A hash_of
for size in 4096 1048576 67108864; do
    head -c "$size" /dev/urandom >"$work/blocks/b$size"
    hash_of[$size]=$(md5sum "$work/blocks/b$size" | cut -c1-32)
done

# Writes COUNT random blocks of SIZE bytes that no store has seen (AES-CTR under a fresh
# key: fast, and never the same bytes twice) into DIR; prints "<md5> <file>" per block.
make_blocks() { # $1 = size, $2 = count, $3 = dir
    local key
    key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    mkdir -p "$3"
    (openssl enc -aes-128-ctr -nosalt -K "$key" -iv 0 -in /dev/zero 2>/dev/null || true) | head -c $(($1 * $2)) |
        python3 -c '
import hashlib, os, sys
size, count, directory = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for _ in range(count):
    data = sys.stdin.buffer.read(size)
    assert len(data) == size, "short block stream"
    digest = hashlib.md5(data).hexdigest()
    path = os.path.join(directory, digest)
    with open(path, "wb") as file:
        file.write(data)
    print(digest, path)' "$1" "$2" "$3"
}

# ---------------------------------------------------------------------------- Garage
echo "+ scripts/s3-store.sh start $work/s3"
s3_started=1
scripts/s3-store.sh start "$work/s3" >/dev/null 2>"$logs/s3-store.log" || { cat "$logs/s3-store.log" >&2; exit 1; }
s3_env() { sed -n "s/^$1=//p" "$work/s3/env"; }
s3_endpoint=$(s3_env S3_ENDPOINT)
s3_bucket=$(s3_env S3_BUCKET)
garage_pids=()
for node in 1 2 3; do garage_pids+=("$(cat "$work/s3/node$node/pid")"); done
garage_version=$("$(scripts/s3-store.sh installed)" --version 2>/dev/null | cut -d' ' -f1-2)

# Presigned path-style URLs (boto3, SigV4, 2 h): stdin lines "GET|PUT <key>" → URLs.
presign() {
    "$s3_python" -c '
import sys
import boto3
from botocore.config import Config
env = dict(line.strip().split("=", 1) for line in open(sys.argv[1]) if "=" in line)
client = boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name=env["S3_REGION"],
    aws_access_key_id=env["S3_ACCESS_KEY_ID"], aws_secret_access_key=env["S3_SECRET_ACCESS_KEY"],
    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
for line in sys.stdin:
    method, key = line.split()
    operation = {"GET": "get_object", "PUT": "put_object"}[method]
    print(client.generate_presigned_url(operation, Params={"Bucket": env["S3_BUCKET"], "Key": key}, ExpiresIn=7200))
' "$work/s3/env"
}

# ---------------------------------------------------------------------------- servers
ports=()
while ((${#ports[@]} < 6)); do
    port=$(free_port)
    [[ " ${ports[*]} " == *" $port "* ]] || ports+=("$port")
done
khttps_port=${ports[0]} khttp_port=${ports[1]} ks3_port=${ports[2]}
nhttps_port=${ports[3]} nhttp_port=${ports[4]} nktls_port=${ports[5]}

# Start a keepring (--workers 1, core 0); sets started_pid once it listens.
# $1 = name (log and control socket), $2 = port, $3... flags
start_keepring() {
    local name=$1 port=$2 log=$logs/$1.log
    shift 2
    local cmd=("$binary" --listen "127.0.0.1:$port" --workers 1 --log-level warn --scrub-interval-secs 0
        "$@" --control-socket "$work/$name.sock")
    echo "+ nice -n $nice_level taskset -c $server_cores ${cmd[*]} >$log 2>&1 &"
    nice -n "$nice_level" taskset -c "$server_cores" "${cmd[@]}" >"$log" 2>&1 &
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

start_keepring keepring-http "$khttp_port" --volume "$work/vol"
khttp_pid=$started_pid
start_keepring keepring-https "$khttps_port" --volume "$work/vol" --tls-certificate "$work/tls.crt" --tls-key "$work/tls.key"
khttps_pid=$started_pid
s3_config=$work/keepring-s3.yml
(
    umask 077
    cat >"$s3_config" <<EOF
Clusters:
  zzzzz:
    Collections:
      BlobSigning: false
    Volumes:
      zzzzz-nyw5e-000000000000000:
        Driver: S3
        DriverParameters:
          Bucket: $s3_bucket
          Region: $(s3_env S3_REGION)
          Endpoint: "$s3_endpoint"
          UsePathStyle: true
          AccessKeyID: $(s3_env S3_ACCESS_KEY_ID)
          SecretAccessKey: $(s3_env S3_SECRET_ACCESS_KEY)
          PrefixLength: 0
EOF
)
start_keepring keepring-s3 "$ks3_port" --config "$s3_config"
ks3_pid=$started_pid

# nginx: one worker on core 0; plain HTTP, HTTPS, and HTTPS with kTLS when the kernel has it.
nginx_conf=$work/nginx/nginx.conf
nginx_locations='
        root '"$work"'/vol;
        location / {
            # /<hash>[+size][+hints] → /<first 3 hex>/<hash>, as keepstore lays blocks out
            rewrite "^/(([0-9a-f]{3})[0-9a-f]{29})(\+[^/]*)?$" /$2/$1 break;
        }'
nginx_tls='
        ssl_certificate '"$work"'/tls.crt;
        ssl_certificate_key '"$work"'/tls.key;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites '"$tls_suite"';
        location = /tls-info { return 200 "$ssl_protocol $ssl_cipher\n"; }'
nginx_ktls_server=""
if [[ $ktls_available == 1 ]]; then
    nginx_ktls_server="server {
        listen 127.0.0.1:$nktls_port ssl;
        ssl_conf_command Options KTLS;$nginx_tls$nginx_locations
    }"
fi
user_line=""
[[ $(id -u) == 0 ]] && user_line="user root;" # block files are 0600, owned by whoever runs keepring
cat >"$nginx_conf" <<EOF
$user_line
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $logs/nginx-error.log warn;
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
        listen 127.0.0.1:$nhttp_port;$nginx_locations
    }
    server {
        listen 127.0.0.1:$nhttps_port ssl;$nginx_tls$nginx_locations
    }
    $nginx_ktls_server
}
EOF
run "$nginx_bin" -t -q -p "$work/nginx" -c "$nginx_conf"
echo "+ nice -n $nice_level taskset -c $server_cores $nginx_bin -p $work/nginx -c $nginx_conf -g 'daemon off;' >$logs/nginx.log 2>&1 &"
nice -n "$nice_level" taskset -c "$server_cores" "$nginx_bin" -p "$work/nginx" -c "$nginx_conf" -g 'daemon off;' >"$logs/nginx.log" 2>&1 &
nginx_pid=$!
server_pids+=("$nginx_pid")
for _ in $(seq 200); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$nhttp_port/" && break
    kill -0 "$nginx_pid" 2>/dev/null || { cat "$logs/nginx.log" "$logs/nginx-error.log" >&2; echo "nginx exited" >&2; exit 1; }
    sleep 0.05
done

# ---------------------------------------------------------------------------- targets
# Each target: its base URL, the processes whose CPU is "the server's", and (S3 cases)
# the store's.
declare -A base_of pids_of store_pids_of label_of
add_target() { # $1 name, $2 base URL, $3 server PIDs, $4 store PIDs, $5 label
    base_of[$1]=$2 pids_of[$1]=$3 store_pids_of[$1]=$4 label_of[$1]=$5
}
add_target keepring-https "https://127.0.0.1:$khttps_port" "$khttps_pid" "" "keepring HTTPS"
add_target nginx-https "https://127.0.0.1:$nhttps_port" "$nginx_pid" "" "nginx HTTPS"
add_target nginx-ktls "https://127.0.0.1:$nktls_port" "$nginx_pid" "" "nginx HTTPS, kTLS"
add_target keepring-http "http://127.0.0.1:$khttp_port" "$khttp_pid" "" "keepring HTTP"
add_target nginx-http "http://127.0.0.1:$nhttp_port" "$nginx_pid" "" "nginx HTTP"
add_target keepring-s3 "http://127.0.0.1:$ks3_port" "$ks3_pid" "${garage_pids[*]}" "keepring, S3 volume"
add_target garage "$s3_endpoint" "${garage_pids[*]}" "" "Garage direct"
add_target keepring-dir "http://127.0.0.1:$khttp_port" "$khttp_pid" "" "keepring, directory volume"

# Store the blocks: 4 KiB, 1 MiB and 64 MiB on the directory volume, 1 MiB and 64 MiB on
# the S3 volume (through keepring, so Garage's GETs read the object keepring wrote).
for size in 4096 1048576 67108864; do
    run curl -sS --fail --max-time 60 -o /dev/null -X PUT --data-binary @"$work/blocks/b$size" \
        "http://127.0.0.1:$khttp_port/${hash_of[$size]}"
done
for size in 1048576 67108864; do
    run curl -sS --fail --max-time 120 -o /dev/null -X PUT --data-binary @"$work/blocks/b$size" \
        "http://127.0.0.1:$ks3_port/${hash_of[$size]}"
done
declare -A garage_get_url
for size in 1048576 67108864; do
    garage_get_url[$size]=$(echo "GET ${hash_of[$size]}" | presign)
done

# Every target must return the blocks intact.
check_body() { # $1 URL, $2 expected MD5, $3... curl flags
    local url=$1 want=$2 got
    shift 2
    got=$(curl -sS --fail --max-time 60 "$@" "$url" | md5sum | cut -c1-32) || true
    [[ $got == "$want" ]] || { echo "GET $url: body MD5 $got, not $want" >&2; return 1; }
}
tls_targets=(keepring-https nginx-https keepring-http nginx-http)
[[ $ktls_available == 1 ]] && tls_targets=(keepring-https nginx-https nginx-ktls keepring-http nginx-http)
for target in "${tls_targets[@]}"; do
    for size in 4096 67108864; do
        check_body "${base_of[$target]}/${hash_of[$size]}+$size" "${hash_of[$size]}" --cacert "$work/tls.crt"
    done
done
for size in 1048576 67108864; do
    check_body "${base_of[keepring-s3]}/${hash_of[$size]}+$size" "${hash_of[$size]}"
    check_body "${garage_get_url[$size]}" "${hash_of[$size]}"
done
echo "every target returns the blocks intact"

# What TLS each server negotiates: with the pinned client (what wrk uses), and with the
# client's OpenSSL defaults (keepring follows the client's preference, as rustls does).
negotiated() { # $1 port, $2 "pinned" or "default"
    local env=(env)
    [[ $2 == pinned ]] && env=(env OPENSSL_CONF="$client_openssl_conf")
    "${env[@]}" timeout 10 openssl s_client -connect "127.0.0.1:$1" -servername 127.0.0.1 -brief </dev/null 2>&1 |
        awk -F': ' '/^Protocol version/ { p = $2 } /^Ciphersuite/ { c = $2 } END { print (p ? p : "?") " " (c ? c : "handshake failed") }'
}
tls_keepring_pinned=$(negotiated "$khttps_port" pinned)
tls_keepring_default=$(negotiated "$khttps_port" default)
tls_nginx_pinned=$(negotiated "$nhttps_port" pinned)
tls_nginx_default=$(negotiated "$nhttps_port" default)
probe_lua=$work/tls-probe.lua
cat >"$probe_lua" <<'EOF'
local shown = false
function response(status, headers, body)
    if not shown then
        io.write("TLSINFO " .. body)
        shown = true
    end
end
EOF
tls_nginx_wrk=$(OPENSSL_CONF="$client_openssl_conf" timeout 20 wrk -t1 -c1 -d1s -s "$probe_lua" \
    "https://127.0.0.1:$nhttps_port/tls-info" 2>&1 | sed -n 's/^TLSINFO //p' | head -1)
echo "TLS, pinned client (wrk, s_client): keepring $tls_keepring_pinned; nginx $tls_nginx_pinned (wrk itself: ${tls_nginx_wrk:-?})"
echo "TLS, client defaults (s_client): keepring $tls_keepring_default; nginx $tls_nginx_default"

# ---------------------------------------------------------------------------- measuring
mkdir -p "$out"
csv=$out/s3-tls.csv
echo "case,target,round,seconds,connections,requests,errors,repeats,duration_s,req_s,mb_s,p50_ms,p99_ms,cpu_us_per_req,cpu_pct,store_cpu_us_per_req,store_cpu_pct,client_cpu_pct" >"$csv"

# utime+stime ticks of this shell's waited-for descendants (wrk, through timeout).
client_ticks() {
    local fields
    fields=$(cat "/proc/$$/stat") # $$: the shell that runs measure, not this $(...) subshell
    fields=${fields##*) } # cutime and cstime are then fields 14 and 15
    read -r -a f <<<"$fields"
    echo $((f[13] + f[14]))
}

declare -A size_of conns_of method_of
add_case() { size_of[$1]=$2 conns_of[$1]=$3 method_of[$1]=$4; }
add_case get_4k 4096 64 GET
add_case get_64m 67108864 "$connections_64m" GET
add_case get_1m 1048576 4 GET
add_case get_64m_s3 67108864 2 GET
add_case put_1m 1048576 4 PUT
add_case put_64m 67108864 2 PUT

# PUT pools: the highest rate seen per case and target sizes the next pool.
declare -A put_rate
initial_put_rate() { # $1 size → a generous first guess, req/s
    if (($1 >= 67108864)); then echo 2; else echo 100; fi
}
# Writes the PUT list for one run of CASE against TARGET lasting SECS; prints its path.
put_list() { # $1 case, $2 target, $3 seconds
    local case=$1 target=$2 secs=$3 size=${size_of[$1]} conns=${conns_of[$1]} list count
    list=$work/pool/$case-$target.list
    rm -rf "$work/pool/$case-$target" "$list"
    if [[ $target == keepring-dir ]]; then
        # The stored copy is removed before each PUT (wrk.lua), as scripts/bench.sh does.
        make_blocks "$size" $((2 * conns + 2)) "$work/pool/$case-$target" |
            while read -r hash file; do echo "$hash $file $work/vol/${hash:0:3}/$hash"; done >"$list"
        echo "$list"
        return
    fi
    local rate=${put_rate[$case/$target]:-$(initial_put_rate "$size")}
    count=$(awk -v r="$rate" -v s="$secs" -v c="$conns" 'BEGIN { printf "%d", r * (s + 1) * 1.5 + c + 2 }')
    make_blocks "$size" "$count" "$work/pool/$case-$target" >"$list.blocks"
    if [[ $target == garage ]]; then
        # A presigned PUT of direct/<md5>; wrk sends its path and query to Garage.
        awk '{ print "PUT direct/" $1 }' "$list.blocks" | presign | sed 's|^https\?://[^/]*||' >"$list.paths"
        paste -d' ' "$list.paths" <(awk '{ print $2 }' "$list.blocks") | sed 's/$/ -/' >"$list"
    else
        awk '{ print $1, $2, "-" }' "$list.blocks" >"$list"
    fi
    echo "$list"
}

# One run of CASE against TARGET; with a round number, appends a CSV row and prints it.
# $1 case, $2 target, $3 round (or "warmup"), $4 seconds
measure() {
    local case=$1 target=$2 round=$3 secs=$4 size conns method url list=""
    size=${size_of[$case]} conns=${conns_of[$case]} method=${method_of[$case]}
    if [[ $method == PUT ]]; then
        list=$(put_list "$case" "$target" "$secs")
        url=${base_of[$target]}/
    elif [[ $target == garage ]]; then
        url=${garage_get_url[$size]}
    else
        url=${base_of[$target]}/${hash_of[$size]}+$size
    fi
    local outfile=$logs/$case-$target-r$round.txt
    local envs=(OPENSSL_CONF="$client_openssl_conf")
    [[ -z $list ]] || envs+=(BENCH_PUT_LIST="$list")
    local cmd=(env "${envs[@]}"
        timeout $((secs + 60)) nice -n "$nice_level" taskset -c "$client_cores"
        wrk -t1 -c"$conns" -d"${secs}s" --timeout 30s -s "$repo/scripts/bench/wrk.lua" "$url")
    echo "+ ${cmd[*]}"
    local pids store_pids before after store_before store_after
    read -r -a pids <<<"${pids_of[$target]}"
    read -r -a store_pids <<<"${store_pids_of[$target]}"
    before=$(cpu_ticks "${pids[@]}")
    local client_before client_after
    client_before=$(client_ticks)
    store_before=0
    ((${#store_pids[@]} == 0)) || store_before=$(cpu_ticks "${store_pids[@]}")
    "${cmd[@]}" >"$outfile" 2>&1 || echo "client exited $? (see $outfile)"
    after=$(cpu_ticks "${pids[@]}")
    client_after=$(client_ticks)
    store_after=0
    ((${#store_pids[@]} == 0)) || store_after=$(cpu_ticks "${store_pids[@]}")
    [[ -n $list ]] && rm -rf "$work/pool/$case-$target"
    parse_wrk "$outfile" || {
        echo "could not parse $outfile:" >&2
        cat "$outfile" >&2
        R=([requests]=0 [errors]=0 [repeats]=0 [duration_s]=$secs [p50_ms]="" [p99_ms]="")
    }
    # Big GETs: MB/s from the bytes wrk read (it counts every read, so transfers cut off
    # at the end of the round count too; a 64 MiB GET on 16 connections can take longer
    # than a round), and CPU per block's worth of bytes. Otherwise: completed requests.
    local blocks=${R[requests]}
    if [[ $method == GET && $size -ge 1048576 ]]; then
        blocks=$(awk -v b="${R[bytes]:-0}" -v s="$size" 'BEGIN { printf "%.3f", b / s }')
    fi
    local row
    row=$(awk -v n="${R[requests]}" -v blocks="$blocks" -v d="${R[duration_s]}" -v b="$size" \
        -v ticks=$((after - before)) -v store_ticks=$((store_after - store_before)) \
        -v client=$((client_after - client_before)) -v has_store=${#store_pids[@]} -v hz="$clk_tck" '
        BEGIN {
            rps = d > 0 ? n / d : 0
            cpu_us = ticks * 1e6 / hz; store_us = store_ticks * 1e6 / hz
            per = blocks > 0 ? sprintf("%.1f", cpu_us / blocks) : ""
            store_per = (blocks > 0 && has_store) ? sprintf("%.1f", store_us / blocks) : ""
            pct = d > 0 ? cpu_us / (d * 1e6) * 100 : 0
            store_pct = (d > 0 && has_store) ? sprintf("%.0f", store_us / (d * 1e6) * 100) : ""
            client_pct = d > 0 ? client * 1e6 / hz / (d * 1e6) * 100 : 0
            mbs = d > 0 ? blocks * b / d / 1e6 : 0
            printf "%.1f,%.1f,%s,%.0f,%s,%s,%.0f", rps, mbs, per, pct, store_per, store_pct, client_pct
        }')
    local rps mbs per_req cpu_pct store_per store_pct client_pct
    IFS=, read -r rps mbs per_req cpu_pct store_per store_pct client_pct <<<"$row"
    if [[ $method == PUT && ${R[requests]} -gt 0 ]]; then
        local seen=${put_rate[$case/$target]:-0}
        put_rate[$case/$target]=$(awk -v a="$seen" -v b="$rps" 'BEGIN { print (b > a) ? b : a }')
    fi
    [[ $round == warmup ]] && return 0
    echo "$case,$target,$round,$secs,$conns,${R[requests]},${R[errors]},${R[repeats]:-0},${R[duration_s]},$rps,$mbs,${R[p50_ms]},${R[p99_ms]},$per_req,$cpu_pct,$store_per,$store_pct,$client_pct" >>"$csv"
    printf '  %-10s %-14s round %s: %9s req/s %8s MB/s  p99 %8s ms  cpu %9s us/req (%s%%)%s  wrk %s%%  errors %s%s\n' \
        "$case" "$target" "$round" "$rps" "$mbs" "${R[p99_ms]}" "${per_req:--}" "$cpu_pct" \
        "${store_per:+  garage $store_per us/req ($store_pct%)}" "$client_pct" "${R[errors]}" \
        "$( ((${R[repeats]:-0} > 0)) && echo "  REPEATED PUTS ${R[repeats]} (pool too small)")"
    sleep 0.3
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "machine: $ncpu cores, $(uname -r), load average $load_before"
echo "rounds=$rounds duration=${duration}s out=$out work=$work; servers on core $server_cores, wrk on core $client_cores"
started=$(date +%s)
echo "== HTTPS GET (keepring and nginx, TLS and plain HTTP)"
for case in get_4k get_64m; do
    for round in $(seq "$rounds"); do
        for target in "${tls_targets[@]}"; do measure "$case" "$target" "$round" "$duration"; done
    done
done
echo "== S3 volume (keepring on Garage, Garage direct, keepring on a directory volume)"
s3_targets=(keepring-s3 garage keepring-dir)
for case in get_1m get_64m_s3; do
    for round in $(seq "$rounds"); do
        for target in "${s3_targets[@]}"; do measure "$case" "$target" "$round" "$duration"; done
    done
done
for case in put_1m put_64m; do
    # A 64 MiB PUT to Garage takes over a second here: a short round would count a few.
    secs=$duration
    [[ $case == put_64m ]] && ((secs < put_64m_seconds_min)) && secs=$put_64m_seconds_min
    for target in keepring-s3 garage; do measure "$case" "$target" warmup "$warmup_seconds"; done
    for round in $(seq "$rounds"); do
        for target in "${s3_targets[@]}"; do measure "$case" "$target" "$round" "$secs"; done
    done
done
grep -E "VmHWM" "/proc/$khttps_pid/status" | tr -s ' \t' ' ' | sed 's/^/keepring-https /'
grep -E "VmHWM" "/proc/$ks3_pid/status" | tr -s ' \t' ' ' | sed 's/^/keepring-s3 /'
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
echo "measured in $(($(date +%s) - started)) s; load average $load_after"

# ---------------------------------------------------------------------------- report
if revision=$(git rev-parse --short HEAD 2>/dev/null); then
    if [[ -n $(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock) ]]; then
        revision+=" with uncommitted changes in src/ or Cargo.*"
    fi
else
    revision="unknown (not a git checkout)"
fi
machine="$ncpu cores, $(cpu_model); SIMD and crypto: $(cpu_flags 'aes|pclmulqdq|vaes|vpclmulqdq|sha_ni|avx2|avx512f|avx512bw|avx512vl'); $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
versions="$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //') ($(openssl version | cut -d' ' -f1-2)); $( (wrk -v 2>&1 || true) | head -1 | cut -d' ' -f1-2); $garage_version (3 nodes, replication 3, data_fsync off); keepring's TLS: rustls 0.23 with ring"
run python3 "$repo/scripts/bench/s3-tls-report.py" "$csv" "$out/s3-tls.md" \
    --command "$command_line" --revision "$revision" --date "$(date -u +%Y-%m-%dT%H:%MZ)" \
    --machine "$machine" --versions "$versions" --rounds "$rounds" --duration "$duration" \
    --nice "$nice_level" --load "$load_before → $load_after" --ktls "$ktls_note" \
    --tls "pinned client (wrk's OpenSSL and s_client, OPENSSL_CONF: MinProtocol TLSv1.3, Ciphersuites $tls_suite): keepring $tls_keepring_pinned, nginx $tls_nginx_pinned (as wrk saw it: ${tls_nginx_wrk:-not shown}); OpenSSL's client defaults: keepring $tls_keepring_default, nginx $tls_nginx_default"
cat "$out/s3-tls.md"
echo "wrote $out/s3-tls.md and $csv"
