#!/usr/bin/env bash
# A real S3 store for keepring's tests: a three-node Garage cluster (https://garagehq.deuxfleurs.fr,
# an S3-compatible distributed object store written in Rust) on 127.0.0.1, replication
# factor 3 (writes and reads need a quorum of 2: one node may be down).
#
#   scripts/s3-store.sh install              build Garage once into the tools cache; print its path
#   scripts/s3-store.sh installed            print its path if it is built, else fail (never builds)
#   scripts/s3-store.sh start DIR            three nodes under DIR, layout applied, one bucket and
#                                            one key; print the S3_* lines below (also in DIR/env)
#   scripts/s3-store.sh stop DIR             stop every node of DIR (DIR and its data stay)
#   scripts/s3-store.sh stop-node DIR N      stop node N (1..3); returns once the other nodes
#                                            see it gone (the cluster "degraded")
#   scripts/s3-store.sh start-node DIR N     start node N again; returns once the cluster is healthy
#   scripts/s3-store.sh status DIR           which nodes run, and Garage's own view of the cluster
#   scripts/s3-store.sh selftest DIR         a plain S3 client (boto3, and raw SigV4 requests)
#                                            against the cluster, then again with node 3 stopped;
#                                            starts (and at the end stops) the cluster if DIR has
#                                            none running
#   scripts/s3-store.sh client-python        print the path of a python with boto3 (cached venv)
#
# `start` on a DIR that holds a stopped cluster starts it again (same ports, keys and data),
# on one whose nodes all run just prints its S3_* lines (tests call it to find or make their
# store), on one with some nodes running starts the others; on a new or empty DIR it creates
# one. Concurrent starts of one DIR take turns (flock on DIR.lock). Everything listens on 127.0.0.1 only: per node one
# RPC port and one S3 API port, picked free at creation (S3_STORE_PORT_BASE=P uses P..P+5).
# Progress goes to stderr; stdout has only what the command prints for its caller:
#
#   S3_ENDPOINT=http://127.0.0.1:PORT      node 1's S3 API (S3_ENDPOINT_1..3: each node's)
#   S3_REGION=garage                       the region requests must be signed for (Garage
#                                          refuses any other in the SigV4 scope)
#   S3_BUCKET=keepring-test
#   S3_ACCESS_KEY_ID=GK...                 read, write and owner on the bucket
#   S3_SECRET_ACCESS_KEY=...
#   S3_USE_PATH_STYLE=true                 no root_domain: virtual-host style is not served
#
# Plain KEY=VALUE lines, no quoting needed: `set -a; . DIR/env; set +a` or parse them.
# Stopping node 1 takes S3_ENDPOINT down with it; to test "one node down", stop node 2 or
# 3, or send requests to S3_ENDPOINT_2.
#
# How tests use it: scripts/test (and so CI) starts a cluster in a temp dir as below and
# stops it at exit; a bare `cargo test` without S3_* set uses (and leaves running) the
# cluster in target/s3-store (keepring::s3::testing::test_store). By hand:
#
#     dir=$(mktemp -d); trap 'scripts/s3-store.sh stop "$dir"; rm -rf "$dir"' EXIT
#     scripts/s3-store.sh start "$dir" >/dev/null
#     set -a; . "$dir/env"; set +a
#     cargo test ...    # tests read S3_*; the failover test runs stop-node/start-node DIR 3
#
# or `scripts/s3-store.sh selftest "$(mktemp -d)"` to check the store itself. A test that
# stops a node should wait for stop-node to return: Garage notices a stopped peer only when
# it next writes to its connection, and until then a request routed to it stalls (seen:
# 3-5 s; up to a ping interval, 15 s); stop-node makes the other nodes notice at once.
#
# Costs, measured on the 2-core dev machine:
#   install, first time: `cargo install --locked garage@2.5.0`, ~290 crates plus C builds
#     of libsodium, zstd, lmdb and sqlite: 36 CPU-minutes; 40.5 min wall at nice 19 beside
#     other builds, so expect ~20 min on 2 idle cores. Peak RSS 1.4 GB, build dir kept
#     until success (resumes if interrupted) and removed after. A 56 MB binary (53 MiB,
#     not stripped). Cached: `install` returns in ~50 ms.
#   boto3 venv, first time: ~8 s (pip, 7 pinned wheels).
#   start: new cluster 1.3-1.8 s (layout applied and healthy 0.4-0.5 s after apply),
#     existing stopped cluster 1.2 s; stop 0.3-0.8 s; stop-node 0.3-2 s; start-node ~0.5 s.
#   selftest: 13-15 s with its own cluster (21 + 7 + 3 checks, a 64 MiB object among
#     them, node 3 stopped and started); ~12 s on a running one.
#
# Environment:
#   KEEPRING_TOOLS_DIR   tools cache (default ~/.cache/keepring-tools): garage-<version>/bin,
#                        s3-client-venv/ (boto3, for selftest)
#   S3_STORE_PORT_BASE   use ports BASE..BASE+5 instead of free ones picked at random
# Needs: cargo (first install only), a C compiler and make (Garage's bundled C libraries),
# python3 with venv (selftest only), flock (util-linux).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Pinned, so a Garage release never changes what the tests run against unannounced. The
# newest release on crates.io (2.x: `replication_factor` in the config, admin over RPC).
garage_version=2.5.0
# boto3 and its dependencies, pinned (selftest only).
client_pins=(boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0
    python-dateutil==2.9.0.post0 six==1.17.0 urllib3==2.8.0)

tools_dir=${KEEPRING_TOOLS_DIR:-${HOME:-/root}/.cache/keepring-tools}
garage_root=$tools_dir/garage-$garage_version
garage_bin=$garage_root/bin/garage
client_venv=$tools_dir/s3-client-venv

bucket=keepring-test
key_name=keepring-test
region=garage
# Bounds on every wait.
node_up_seconds_max=30
healthy_seconds_max=60
node_stop_seconds_max=15

log() { printf 's3-store: %s\n' "$*" >&2; }
run() {
    printf '+ %s\n' "$*" >&2
    "$@"
}
die() {
    printf 's3-store: FAILED: %s\n' "$*" >&2
    exit 1
}
usage() {
    sed -n '/^#   scripts\/s3-store.sh install/,/^#$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

ms_now() { date +%s%3N; }
# elapsed START_MS: seconds since START_MS, one decimal.
elapsed() {
    local ms=$(($(ms_now) - $1))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

# ---- install ----------------------------------------------------------------------

garage_is_installed() {
    [[ -x $garage_bin ]] && [[ $("$garage_bin" --version 2>/dev/null) == "garage cargo:$garage_version "* ]]
}

ensure_build_tools() {
    if ! command -v cargo >/dev/null && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
        export PATH="${HOME:-/root}/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null || die "cargo not found (install a Rust toolchain with rustup)"
    local missing=() tool
    for tool in cc make; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        # Garage builds libsodium (configure + make), zstd and sqlite from bundled sources.
        command -v apt-get >/dev/null || die "missing ${missing[*]} (needed to build Garage)"
        local sudo=()
        [[ $(id -u) -eq 0 ]] || sudo=(sudo)
        run "${sudo[@]}" apt-get update -qq >&2
        run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends gcc libc6-dev make >&2
    fi
}

# install_garage: build Garage into the cache unless it is there; one build at a time.
install_garage() {
    if garage_is_installed; then
        return 0
    fi
    mkdir -p "$tools_dir"
    local lock_fd
    exec {lock_fd}>"$tools_dir/garage-$garage_version.lock"
    flock "$lock_fd"
    if ! garage_is_installed; then
        ensure_build_tools
        log "building garage $garage_version into $garage_root (first time only: ~20 min on 2 cores)"
        local started_at
        started_at=$(ms_now)
        # The build directory is kept until success, so an interrupted build resumes.
        run cargo install --locked --root "$garage_root" --target-dir "$tools_dir/garage-build" \
            "garage@$garage_version" >&2
        rm -rf "$tools_dir/garage-build"
        garage_is_installed || die "$garage_bin does not report version $garage_version"
        log "garage $garage_version built in $(elapsed "$started_at") s"
    fi
    exec {lock_fd}>&-
}

cmd_install() {
    install_garage
    echo "$garage_bin"
}

cmd_installed() {
    garage_is_installed || die "garage $garage_version is not built in $garage_root (scripts/s3-store.sh install)"
    echo "$garage_bin"
}

# ---- the python client (selftest) -------------------------------------------------

client_is_ready() {
    [[ -x $client_venv/bin/python && -f $client_venv/.pins ]] &&
        [[ "$(cat "$client_venv/.pins")" == "${client_pins[*]}" ]] &&
        "$client_venv/bin/python" -c 'import boto3' 2>/dev/null
}

ensure_client() {
    if client_is_ready; then
        return 0
    fi
    command -v python3 >/dev/null || die "python3 not found (apt-get install python3 python3-venv)"
    python3 -c 'import ensurepip, venv' 2>/dev/null ||
        die "python3 cannot create venvs (apt-get install python3-venv)"
    log "creating $client_venv with ${client_pins[*]}"
    rm -rf "$client_venv"
    mkdir -p "$tools_dir"
    run python3 -m venv "$client_venv" >&2
    run "$client_venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        "${client_pins[@]}" >&2
    "$client_venv/bin/python" -c 'import boto3' || die "boto3 does not import"
    echo "${client_pins[*]}" >"$client_venv/.pins"
}

# ---- cluster directory helpers ------------------------------------------------------

# set_dir DIR [create]: absolute path of the cluster directory in $dir.
set_dir() {
    [[ -n ${1:-} ]] || usage
    if [[ ${2:-} == create ]]; then
        mkdir -p "$1"
    fi
    [[ -d $1 ]] || die "no directory $1"
    dir=$(cd "$1" && pwd)
    # It goes into TOML strings and sed expressions as is.
    [[ $dir =~ ^[A-Za-z0-9_./+-]+$ ]] || die "directory path '$dir' has characters this script does not quote"
}

check_node_number() {
    [[ ${1:-} =~ ^[1-3]$ ]] || die "node number must be 1, 2 or 3, not '${1:-}'"
}

node_dir() { echo "$dir/node$1"; }
node_config() { echo "$dir/node$1/garage.toml"; }
node_log() { echo "$dir/node$1/garage.log"; }
node_pidfile() { echo "$dir/node$1/pid"; }

# garage N ARGS...: the garage CLI against node N (over RPC, with N's config).
garage() {
    local n=$1
    shift
    NO_COLOR=1 RUST_LOG=${GARAGE_CLI_LOG:-warn} "$garage_bin" -c "$(node_config "$n")" "$@"
}

# node_pid N: the pid of node N's garage server if it runs (its pid file names a live
# process started with node N's config), else nothing and status 1.
node_pid() {
    local pidfile pid
    pidfile=$(node_pidfile "$1")
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    [[ $({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) == *" $(node_config "$1") server "* ]] || return 1
    echo "$pid"
}

# process_alive PID: the process exists and is not a zombie (a node that died is this
# script's child until reaped).
process_alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ ${stat##*) } != Z* ]]
}

is_cluster() { [[ -f $dir/cluster && -f $dir/env ]]; }

# port_in_use PORT: some socket is bound to it (any state, IPv4 or IPv6).
port_in_use() {
    local hex
    hex=$(printf ':%04X ' "$1")
    grep -qF "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# pick_ports: six ports (rpc, s3 for nodes 1..3) into the array ports.
pick_ports() {
    ports=()
    if [[ -n ${S3_STORE_PORT_BASE:-} ]]; then
        if ! [[ $S3_STORE_PORT_BASE =~ ^[0-9]+$ ]] || ((S3_STORE_PORT_BASE < 1024 || S3_STORE_PORT_BASE > 65530)); then
            die "S3_STORE_PORT_BASE must be a port number from 1024 to 65530"
        fi
        local i
        for i in 0 1 2 3 4 5; do
            ports+=($((S3_STORE_PORT_BASE + i)))
            ! port_in_use "${ports[-1]}" || die "port ${ports[-1]} (S3_STORE_PORT_BASE+$i) is in use"
        done
        return 0
    fi
    # Random ports below the kernel's ephemeral range (32768..60999 by default), so an
    # outgoing connection cannot take one between this check and Garage's bind.
    local candidate tries=0
    while ((${#ports[@]} < 6)); do
        ((tries++ < 1000)) || die "found no free ports"
        candidate=$((20000 + RANDOM % 12000))
        port_in_use "$candidate" && continue
        [[ " ${ports[*]} " == *" $candidate "* ]] && continue
        ports+=("$candidate")
    done
}

# write_config N RPC_PORT S3_PORT [BOOTSTRAP_PEER...]
write_config() {
    local n=$1 rpc_port=$2 s3_port=$3 nd
    shift 3
    nd=$(node_dir "$n")
    local peers="" peer
    for peer in "$@"; do
        peers+="\"$peer\", "
    done
    cat >"$nd/garage.toml.new" <<EOF
# Garage node $n of the keepring test cluster (scripts/s3-store.sh); garage $garage_version.
metadata_dir = "$nd/meta"
data_dir = "$nd/data"
db_engine = "lmdb"
metadata_fsync = false
data_fsync = false
# Test data is random: do not spend CPU on zstd.
compression_level = "none"

replication_factor = 3
consistency_mode = "consistent"

rpc_secret_file = "$dir/rpc_secret"
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_bind_outgoing = true
rpc_public_addr = "127.0.0.1:$rpc_port"
bootstrap_peers = [${peers%, }]

[s3_api]
s3_region = "$region"
api_bind_addr = "127.0.0.1:$s3_port"
EOF
    mv "$nd/garage.toml.new" "$nd/garage.toml"
}

# config_port N rpc|s3: a port from node N's config.
config_port() {
    local key
    case $2 in
    rpc) key=rpc_bind_addr ;;
    s3) key=api_bind_addr ;;
    esac
    sed -n "s/^$key = \"127\\.0\\.0\\.1:\\([0-9]*\\)\"$/\\1/p" "$(node_config "$1")"
}

# ---- starting and stopping nodes -----------------------------------------------------

# Nodes this invocation started: stopped again if it fails.
started_here=()
# The descriptor of DIR.lock while `start` holds it.
start_lock_fd=""

# spawn_node N: start node N's server in the background, its output appended to its log.
spawn_node() {
    local n=$1 nd
    nd=$(node_dir "$n")
    mkdir -p "$nd/meta" "$nd/data"
    printf '\n==== %s: start\n' "$(date -u +%FT%TZ)" >>"$(node_log "$n")"
    # No stdin, and no inherited stdout/stderr: a caller reading our output through a pipe
    # ($(...)) must not wait for the servers.
    # Nor the start lock: a server holding it would block every later start.
    (
        if [[ -n $start_lock_fd ]]; then
            exec {start_lock_fd}>&-
        fi
        NO_COLOR=1 RUST_LOG=${GARAGE_LOG:-netapp=info,garage=info} \
            exec "$garage_bin" -c "$(node_config "$n")" server </dev/null >>"$(node_log "$n")" 2>&1
    ) &
    echo $! >"$(node_pidfile "$n")"
    started_here+=("$n")
}

log_tail() {
    printf -- '---- last 30 lines of %s ----\n' "$(node_log "$1")" >&2
    tail -n 30 "$(node_log "$1")" >&2 || true
    printf -- '----\n' >&2
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_node_up N: until node N answers RPC (garage status) and accepts connections on its
# S3 port, bounded.
wait_node_up() {
    local n=$1 deadline=$((SECONDS + node_up_seconds_max)) s3_port
    s3_port=$(config_port "$n" s3)
    while ! port_open "$s3_port" || ! garage "$n" status >/dev/null 2>&1; do
        # The process itself, not node_pid: until the spawned subshell has exec'd Garage
        # its command line is still bash's, which node_pid would take for "not running"
        # (seen under load: a node killed in its first milliseconds as "exited").
        if ! process_alive "$(<"$(node_pidfile "$n")")"; then
            log_tail "$n"
            die "node $n exited during startup"
        fi
        ((SECONDS < deadline)) || {
            log_tail "$n"
            die "node $n did not answer RPC within ${node_up_seconds_max}s"
        }
        sleep 0.1
    done
}

# cluster_health N: Garage's health status as node N sees it (healthy, degraded, unavailable).
cluster_health() {
    garage "$1" json-api GetClusterHealth 2>/dev/null |
        sed -n 's/^ *"status": *"\([a-z]*\)".*/\1/p'
}

# wait_healthy N...: until each of these nodes reports the cluster healthy (connected to
# every storage node, all partitions complete), bounded.
wait_healthy() {
    local deadline=$((SECONDS + healthy_seconds_max)) n status
    for n in "$@"; do
        while status=$(cluster_health "$n") && [[ $status != healthy ]]; do
            ((SECONDS < deadline)) || {
                garage "$n" status >&2 || true
                die "node $n still sees the cluster ${status:-unreachable} after ${healthy_seconds_max}s"
            }
            sleep 0.1
        done
    done
}

# stop_nodes N...: SIGTERM to each that runs, wait (bounded) until all are gone, SIGKILL
# the stragglers. Quiet for nodes that do not run. (A stopped node that is this shell's
# child stays a zombie until reaped: node_pid does not count it as running.)
stop_nodes() {
    local n pid pids=() nodes=()
    for n in "$@"; do
        if pid=$(node_pid "$n"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            nodes+=("$n")
        else
            rm -f "$(node_pidfile "$n")"
        fi
    done
    local deadline=$((SECONDS + node_stop_seconds_max)) i killed=""
    for i in "${!nodes[@]}"; do
        n=${nodes[$i]}
        while node_pid "$n" >/dev/null; do
            if ((SECONDS >= deadline)) && [[ -z $killed ]]; then
                log "node $n (pid ${pids[$i]}) did not stop within ${node_stop_seconds_max}s of SIGTERM; killing what is left"
                for pid in "${pids[@]}"; do
                    kill -KILL "$pid" 2>/dev/null || true
                done
                killed=yes
            fi
            sleep 0.05
        done
        # Reap it if it is this shell's child; harmless otherwise.
        wait "${pids[$i]}" 2>/dev/null || true
        rm -f "$(node_pidfile "$n")"
    done
}

# node_id N: node N's full id and address (id@127.0.0.1:port), from its metadata dir.
node_id() {
    garage "$1" node id -q
}

# running_nodes_except N: the numbers of the running nodes other than N.
running_nodes_except() {
    local m
    for m in 1 2 3; do
        if [[ $m != "$1" ]] && node_pid "$m" >/dev/null; then
            echo "$m"
        fi
    done
}

# notice_node_down N: make the running nodes notice that node N is gone, and wait
# (bounded) until each reports the cluster degraded. Garage notices a closed peer
# connection only when it next writes to it (its reader stops at EOF quietly; the writer's
# EPIPE tears the connection down): until then requests routed to the stopped node stall,
# up to a ping interval (15 s). Two small requests from each running node to node N (the
# first write draws the RST, the second fails) make that happen now.
# ask_node_info M ID: node M asks node ID for its info (bounded; failure expected).
ask_node_info() {
    timeout 5 env NO_COLOR=1 RUST_LOG=error "$garage_bin" -c "$(node_config "$1")" \
        json-api GetNodeInfo "{\"node\":\"$2\",\"body\":null}" >/dev/null 2>&1 || true
}

notice_node_down() {
    local n=$1 id m deadline=$((SECONDS + healthy_seconds_max)) status
    id=$(node_id "$n") || return 0
    for m in $(running_nodes_except "$n"); do
        ask_node_info "$m" "${id%@*}"
        ask_node_info "$m" "${id%@*}"
        while status=$(cluster_health "$m") && [[ $status == healthy ]]; do
            ((SECONDS < deadline)) || die "node $m still sees node $n up ${healthy_seconds_max}s after it stopped"
            sleep 0.1
        done
    done
}

# notice_node_up N: make the running nodes connect to node N now, not at their next
# reconnection attempt (every 30 s: until then they send it nothing).
notice_node_up() {
    local n=$1 id m
    id=$(node_id "$n")
    for m in $(running_nodes_except "$n"); do
        garage "$m" node connect "$id" >/dev/null
    done
}

# At exit: after a failure, stop every node this invocation started (no process is left
# behind); with stop_all_at_exit set (selftest on its own cluster), stop every node.
stop_all_at_exit=""
on_exit() {
    local status=$? n
    if [[ $status -ne 0 && ${#started_here[@]} -gt 0 ]]; then
        log "stopping the nodes started here after the failure"
        stop_nodes "${started_here[@]}"
    fi
    if [[ -n $stop_all_at_exit ]]; then
        stop_nodes 1 2 3
        log "stopped the cluster in $dir"
    fi
    exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

print_env() {
    cat "$dir/env"
}

# ---- commands ------------------------------------------------------------------------

cmd_start() {
    set_dir "${1:-}" create
    install_garage
    local n started_at
    started_at=$(ms_now)
    # One start per DIR at a time (test processes starting the same cluster at once);
    # the lock file sits beside DIR, which must stay empty or a cluster.
    exec {start_lock_fd}>"$dir.lock"
    flock "$start_lock_fd"
    local running=() stopped=()
    for n in 1 2 3; do
        if node_pid "$n" >/dev/null; then
            running+=("$n")
        else
            stopped+=("$n")
        fi
    done
    if ((${#running[@]} > 0)) && ! is_cluster; then
        die "nodes ${running[*]} of $dir run but $dir holds no finished cluster; stop them first"
    fi
    if is_cluster; then
        if ((${#stopped[@]} == 0)); then
            # Already up: reuse it (a few ms when healthy).
            wait_healthy 1 2 3
            log "cluster in $dir already runs; reusing it"
            print_env
            return 0
        fi
        log "starting the existing cluster in $dir${running[*]:+ (nodes ${running[*]} already run)}"
        for n in "${stopped[@]}"; do
            spawn_node "$n"
        done
        for n in 1 2 3; do
            wait_node_up "$n"
        done
        if ((${#running[@]} > 0)); then
            for n in "${stopped[@]}"; do
                notice_node_up "$n"
            done
        fi
        wait_healthy 1 2 3
        log "cluster up in $(elapsed "$started_at") s"
        print_env
        return 0
    fi
    [[ -z $(ls -A "$dir") ]] || die "$dir is neither empty nor a cluster made by this script"

    log "creating a three-node garage $garage_version cluster in $dir"
    local ports
    pick_ports
    # 32 random bytes, hex: Garage's rpc_secret. The file must not be world-readable.
    (
        umask 077
        od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$dir/rpc_secret"
    )
    for n in 1 2 3; do
        mkdir -p "$(node_dir "$n")"
        write_config "$n" "${ports[$((2 * n - 2))]}" "${ports[$((2 * n - 1))]}"
        spawn_node "$n"
    done
    for n in 1 2 3; do
        wait_node_up "$n"
    done

    # Node ids (public keys, made at first start) as id@127.0.0.1:port.
    local ids=() id
    for n in 1 2 3; do
        id=$(garage "$n" node id -q)
        [[ $id =~ ^[0-9a-f]{64}@127\.0\.0\.1:[0-9]+$ ]] || die "unexpected node id from node $n: '$id'"
        ids+=("$id")
    done
    # Every node names the others as bootstrap peers for later starts; now, connect them.
    for n in 1 2 3; do
        write_config "$n" "${ports[$((2 * n - 2))]}" "${ports[$((2 * n - 1))]}" "${ids[@]}"
    done
    run garage 1 node connect "${ids[1]}" >&2
    run garage 1 node connect "${ids[2]}" >&2

    # Layout: the three nodes in one zone, 1 GB each (a weight: nothing is reserved).
    run garage 1 layout assign -z dc1 -c 1G "${ids[0]%@*}" "${ids[1]%@*}" "${ids[2]%@*}" >/dev/null
    run garage 1 layout apply --version 1 >/dev/null
    local layout_at
    layout_at=$(ms_now)
    wait_healthy 1 2 3
    log "layout applied; all nodes healthy $(elapsed "$layout_at") s later"

    run garage 1 bucket create "$bucket" >/dev/null
    local key_info key_id secret
    key_info=$(run garage 1 key create "$key_name")
    key_id=$(sed -n 's/^Key ID: *\(GK[0-9a-f]*\)$/\1/p' <<<"$key_info")
    secret=$(sed -n 's/^Secret key: *\([0-9a-f]*\)$/\1/p' <<<"$key_info")
    [[ -n $key_id && -n $secret ]] || die "could not read the key from 'garage key create': $key_info"
    run garage 1 bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null

    cat >"$dir/env.new" <<EOF
S3_ENDPOINT=http://127.0.0.1:${ports[1]}
S3_ENDPOINT_1=http://127.0.0.1:${ports[1]}
S3_ENDPOINT_2=http://127.0.0.1:${ports[3]}
S3_ENDPOINT_3=http://127.0.0.1:${ports[5]}
S3_REGION=$region
S3_BUCKET=$bucket
S3_ACCESS_KEY_ID=$key_id
S3_SECRET_ACCESS_KEY=$secret
S3_USE_PATH_STYLE=true
EOF
    chmod 600 "$dir/env.new"
    mv "$dir/env.new" "$dir/env"
    printf 'garage %s\n' "$garage_version" >"$dir/cluster"
    log "cluster up in $(elapsed "$started_at") s (S3 on ports ${ports[1]} ${ports[3]} ${ports[5]}, RPC on ${ports[0]} ${ports[2]} ${ports[4]}; logs in $dir/node*/garage.log)"
    print_env
}

cmd_stop() {
    set_dir "${1:-}"
    local n started_at
    started_at=$(ms_now)
    stop_nodes 1 2 3
    log "stopped every node of $dir in $(elapsed "$started_at") s"
}

cmd_stop_node() {
    set_dir "${1:-}"
    check_node_number "${2:-}"
    is_cluster || die "$dir holds no cluster"
    local started_at
    started_at=$(ms_now)
    node_pid "$2" >/dev/null || log "node $2 was not running"
    stop_nodes "$2"
    local exited_in
    exited_in=$(elapsed "$started_at")
    notice_node_down "$2"
    local others other
    others=$(running_nodes_except "$2")
    other=${others%%$'\n'*}
    log "node $2 stopped in $(elapsed "$started_at") s (exited in $exited_in s)${other:+; node $other sees the cluster $(cluster_health "$other")}"
}

cmd_start_node() {
    set_dir "${1:-}"
    check_node_number "${2:-}"
    is_cluster || die "$dir holds no cluster"
    local n=$2 started_at pid
    if pid=$(node_pid "$n"); then
        die "node $n already runs (pid $pid)"
    fi
    started_at=$(ms_now)
    install_garage
    spawn_node "$n"
    wait_node_up "$n"
    notice_node_up "$n"
    # Every running node must see the cluster whole again.
    local running=()
    for pid in 1 2 3; do
        node_pid "$pid" >/dev/null && running+=("$pid")
    done
    wait_healthy "${running[@]}"
    log "node $n started; cluster healthy in $(elapsed "$started_at") s"
}

cmd_status() {
    set_dir "${1:-}"
    is_cluster || die "$dir holds no cluster"
    local n pid any=""
    for n in 1 2 3; do
        if pid=$(node_pid "$n"); then
            printf 'node %d: running, pid %s, S3 port %s, RPC port %s\n' "$n" "$pid" \
                "$(config_port "$n" s3)" "$(config_port "$n" rpc)"
            any=${any:-$n}
        else
            printf 'node %d: stopped\n' "$n"
        fi
    done
    if [[ -n $any ]]; then
        printf 'health (node %s): %s\n' "$any" "$(cluster_health "$any")"
        garage "$any" status
    fi
}

# selftest_failed: what the cluster looked like, for the log; then fail.
selftest_failed() {
    local n
    cmd_status "$dir" >&2 || true
    for n in 1 2 3; do
        printf -- '---- node %d: last warnings and errors in %s ----\n' "$n" "$(node_log "$n")" >&2
        grep -E ' (WARN|ERROR) ' "$(node_log "$n")" | tail -n 15 >&2 || true
    done
    die "selftest failed"
}

cmd_selftest() {
    [[ -n ${1:-} ]] || usage
    local started_at
    started_at=$(ms_now)
    ensure_client
    set_dir "$1" create
    local own_cluster="" n
    for n in 1 2 3; do
        if ! node_pid "$n" >/dev/null; then
            own_cluster=yes
        fi
    done
    if [[ -n $own_cluster ]]; then
        # Some node is down: (re)start all of it here, and stop it at the end.
        if is_cluster; then
            cmd_stop "$dir"
        fi
        stop_all_at_exit=yes
        local start_at
        start_at=$(ms_now)
        cmd_start "$dir" >/dev/null
        log "selftest: cluster start took $(elapsed "$start_at") s"
    fi
    local test_at
    test_at=$(ms_now)
    local py=("$client_venv/bin/python" "$script_dir/s3-selftest.py" "$dir")
    run "${py[@]}" all-up || selftest_failed
    cmd_stop_node "$dir" 3
    run "${py[@]}" node3-down || selftest_failed
    cmd_start_node "$dir" 3
    run "${py[@]}" node3-back || selftest_failed
    log "selftest: passed; S3 checks and node stop/start took $(elapsed "$test_at") s, $(elapsed "$started_at") s in all"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
install) cmd_install ;;
installed) cmd_installed ;;
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
stop-node) cmd_stop_node "$@" ;;
start-node) cmd_start_node "$@" ;;
status) cmd_status "$@" ;;
selftest) cmd_selftest "$@" ;;
client-python)
    ensure_client
    echo "$client_venv/bin/python"
    ;;
*) usage ;;
esac
