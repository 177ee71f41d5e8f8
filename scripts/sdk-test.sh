#!/usr/bin/env bash
# Real-client test: the Arvados Python SDK (arvados.KeepClient) against keepring.
#
# 1. Makes sure a venv at target/sdk-venv holds arvados-python-client (version pinned
#    below, dependencies pinned in tests/python/constraints.txt). Installs Debian
#    packages only when something is missing. Idempotent: a second run skips all of it.
# 2. Builds the server with `cargo build` (the debug build `cargo test` also uses), or
#    uses $KEEPRING_BIN if set.
# 3. Starts it on 127.0.0.1:0 with two temporary volumes, a blob signing key and a
#    system root token, waits (bounded) for "listening on 127.0.0.1:PORT" on its log.
# 4. Runs tests/python/sdk_roundtrip.py against it; stops the server at exit.
#
# `scripts/sdk-test.sh --s3 DIR`: the same, but the server has one volume only, an S3
# volume on the Garage cluster of DIR (`scripts/s3-store.sh start DIR`), configured
# through a cluster config file as keepstore's would be.
# `--https` (with or without --s3): the server listens with TLS on a self-signed
# certificate for 127.0.0.1 made here (openssl), and the SDK verifies it through
# SSL_CERT_FILE, as it would a cluster's own CA (arvados.util.ca_certs_path).
# Exits non-zero on any failure. Meant for a fresh Debian 12 machine, as root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root=$(pwd)

sdk_package="arvados-python-client==3.2.1"
sdk_constraints="tests/python/constraints.txt"
sdk_venv="target/sdk-venv"
# Debian packages that building pycurl from source needs; only used if pip finds no wheel.
pycurl_build_packages=(libcurl4-openssl-dev libssl-dev python3-dev gcc)
server_ready_seconds_max=20
python_test_seconds_max=120
server_stop_seconds_max=10

started_at=$(date +%s)

log() { printf 'sdk-test: %s\n' "$*"; }
run() {
    printf '+ %s\n' "$*"
    "$@"
}
die() {
    printf 'sdk-test: FAILED: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        run "$@"
    elif command -v sudo >/dev/null; then
        run sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

apt_updated=0
# apt_install_missing PACKAGE...: install those of the Debian packages not installed yet.
apt_install_missing() {
    local missing=() package
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$package")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    if [[ $apt_updated -eq 0 ]]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# A python3 (>= 3.10, what the SDK requires) that can create venvs with pip.
ensure_python() {
    if ! command -v python3 >/dev/null; then
        apt_install_missing python3 python3-venv
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "$(python3 --version 2>&1) is too old: arvados-python-client needs Python >= 3.10"
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        # Debian's python3 splits venv/ensurepip into python3-venv (python3.11-venv on 12).
        apt_install_missing python3-venv
    fi
}

venv_stamp() {
    echo "$sdk_package $(sha256sum "$sdk_constraints" | cut -d' ' -f1)"
}

venv_is_ready() {
    [[ -x $sdk_venv/bin/python && -f $sdk_venv/.keepring-sdk-stamp ]] &&
        [[ "$(cat "$sdk_venv/.keepring-sdk-stamp")" == "$(venv_stamp)" ]] &&
        "$sdk_venv/bin/python" -c 'import arvados.keep, pycurl' 2>/dev/null
}

pip_install_sdk() {
    run "$sdk_venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -c "$sdk_constraints" "$@" "$sdk_package"
}

ensure_sdk_venv() {
    if venv_is_ready; then
        log "venv $sdk_venv ready ($sdk_package)"
        return 0
    fi
    log "setting up venv $sdk_venv with $sdk_package"
    ensure_python
    run rm -rf "$sdk_venv"
    run mkdir -p "$(dirname "$sdk_venv")"
    run python3 -m venv "$sdk_venv"
    # pycurl publishes manylinux wheels (bundling libcurl); only without one does it
    # build from source, which needs libcurl's and OpenSSL's headers and a compiler.
    if ! pip_install_sdk --only-binary pycurl; then
        log "no usable pycurl wheel; installing build dependencies and building from source"
        apt_install_missing "${pycurl_build_packages[@]}"
        pip_install_sdk || die "pip could not install $sdk_package"
    fi
    "$sdk_venv/bin/python" -c 'import arvados.keep, pycurl' || die "arvados SDK does not import"
    venv_stamp >"$sdk_venv/.keepring-sdk-stamp"
}

ensure_server_binary() {
    if [[ -n ${KEEPRING_BIN:-} ]]; then
        server_bin=$KEEPRING_BIN
        log "using KEEPRING_BIN=$server_bin"
    else
        if ! command -v cargo >/dev/null && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
            export PATH="${HOME:-/root}/.cargo/bin:$PATH"
        fi
        run cargo build --bin keepring
        server_bin=$repo_root/target/debug/keepring
    fi
    [[ -x $server_bin ]] || die "server binary $server_bin not found"
}

server_pid=""
work_dir=""
# stop_server: SIGTERM (what systemd sends), bounded wait, then SIGKILL; logs the exit status.
stop_server() {
    if [[ -z $server_pid ]] || ! kill -0 "$server_pid" 2>/dev/null; then
        return 0
    fi
    kill -TERM "$server_pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$server_pid" 2>/dev/null && ((waited < server_stop_seconds_max * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        log "server did not stop within ${server_stop_seconds_max}s of SIGTERM; killing it"
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    local server_status=0
    wait "$server_pid" 2>/dev/null || server_status=$?
    log "server stopped on SIGTERM with exit status $server_status"
    server_pid=""
}
cleanup() {
    local status=$?
    stop_server
    if [[ $status -ne 0 && -n $work_dir && -f $work_dir/server.log ]]; then
        echo "---- last 40 lines of the server log ($work_dir/server.log) ----"
        tail -n 40 "$work_dir/server.log" || true
        echo "----"
    fi
    if [[ -n $work_dir ]]; then
        rm -rf "$work_dir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

random_alnum() { od -An -N20 -tx1 /dev/urandom | tr -d ' \n'; }

s3_dir="" https=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --s3)
            s3_dir=${2:?usage: scripts/sdk-test.sh [--s3 DIR] [--https]}
            [[ -f $s3_dir/env ]] || die "no S3 store in $s3_dir (scripts/s3-store.sh start $s3_dir)"
            shift 2
            ;;
        --https) https=1; shift ;;
        *) die "unknown argument $1 (usage: scripts/sdk-test.sh [--s3 DIR] [--https])" ;;
    esac
done
scheme=http
[[ $https == 1 ]] && scheme=https

# The cluster config of the --s3 run: one S3 volume on the store's bucket.
write_s3_config() {
    local S3_ENDPOINT S3_REGION S3_BUCKET S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY
    eval "$(grep -E '^S3_(ENDPOINT|REGION|BUCKET|ACCESS_KEY_ID|SECRET_ACCESS_KEY)=' "$s3_dir/env")"
    cat >"$work_dir/config.yml" <<YAML
Clusters:
  zzzzz:
    SystemRootToken: $system_root_token
    Collections:
      BlobSigningKey: $blob_signing_key
    Volumes:
      zzzzz-nyw5e-sdktests3volume:
        Driver: S3
        DriverParameters:
          Bucket: $S3_BUCKET
          Region: $S3_REGION
          Endpoint: "$S3_ENDPOINT"
          AccessKeyID: $S3_ACCESS_KEY_ID
          SecretAccessKey: $S3_SECRET_ACCESS_KEY
YAML
    chmod 600 "$work_dir/config.yml"
}

start_server() {
    work_dir=$(mktemp -d "${TMPDIR:-/tmp}/keepring-sdk.XXXXXX")
    blob_signing_key=$(random_alnum)
    system_root_token=$(random_alnum)
    user_token=$(random_alnum)
    local args=(--listen 127.0.0.1:0)
    if [[ -n $s3_dir ]]; then
        write_s3_config
        args+=(--config "$work_dir/config.yml")
        volume_roots=""
    else
        mkdir "$work_dir/v0" "$work_dir/v1"
        printf '%s' "$blob_signing_key" >"$work_dir/blob-signing-key"
        printf '%s' "$system_root_token" >"$work_dir/system-root-token"
        chmod 600 "$work_dir/blob-signing-key" "$work_dir/system-root-token"
        args+=(--volume "$work_dir/v0" --volume "$work_dir/v1"
            --blob-signing-key-file "$work_dir/blob-signing-key"
            --system-root-token-file "$work_dir/system-root-token")
        volume_roots="$work_dir/v0:$work_dir/v1"
    fi

    if [[ $https == 1 ]]; then
        run openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
            -addext subjectAltName=IP:127.0.0.1 \
            -keyout "$work_dir/tls.key" -out "$work_dir/tls.crt" 2>/dev/null
        args+=(--tls-certificate "$work_dir/tls.crt" --tls-key "$work_dir/tls.key")
    fi
    printf '+ %s > %s 2>&1 &\n' "$server_bin ${args[*]}" "$work_dir/server.log"
    NO_COLOR=1 "$server_bin" "${args[@]}" >"$work_dir/server.log" 2>&1 &
    server_pid=$!

    local deadline=$((SECONDS + server_ready_seconds_max)) line=""
    while [[ -z $line ]]; do
        # Strip ANSI colour codes in case the log is coloured despite NO_COLOR.
        line=$(sed 's/\x1b\[[0-9;]*m//g' "$work_dir/server.log" |
            grep -m1 -oE 'listening on 127\.0\.0\.1:[0-9]+' || true)
        [[ -n $line ]] && break
        kill -0 "$server_pid" 2>/dev/null || {
            wait "$server_pid" && status=0 || status=$?
            server_pid=""
            die "server exited (status $status) before it was listening"
        }
        ((SECONDS < deadline)) || die "server not listening after ${server_ready_seconds_max}s (no 'listening on 127.0.0.1:PORT' in its log)"
        sleep 0.1
    done
    server_port=${line##*:}
    [[ $server_port -gt 0 ]] || die "server reported port $server_port"
    log "server pid $server_pid listening on 127.0.0.1:$server_port"
}

run_python_test() {
    local status=0 tls_env=()
    [[ $https == 1 ]] && tls_env=(SSL_CERT_FILE="$work_dir/tls.crt")
    local put_timed=1
    [[ -n $s3_dir ]] && put_timed=0
    printf '+ %s\n' "$sdk_venv/bin/python tests/python/sdk_roundtrip.py"
    timeout "$python_test_seconds_max" env \
        ARVADOS_KEEP_SERVICES="$scheme://127.0.0.1:$server_port/" \
        "${tls_env[@]}" \
        KEEPRING_PUT_TIMED="$put_timed" \
        ARVADOS_API_TOKEN="$user_token" \
        KEEPRING_BLOB_SIGNING_KEY="$blob_signing_key" \
        KEEPRING_BLOB_SIGNING_TTL_S=1209600 \
        KEEPRING_VOLUMES="$volume_roots" \
        "$sdk_venv/bin/python" tests/python/sdk_roundtrip.py || status=$?
    if [[ $status -eq 124 ]]; then
        die "tests/python/sdk_roundtrip.py did not finish within ${python_test_seconds_max}s"
    fi
    kill -0 "$server_pid" 2>/dev/null || die "the server died during the test"
    [[ $status -eq 0 ]] || die "tests/python/sdk_roundtrip.py failed (exit $status)"
}

ensure_sdk_venv
ensure_server_binary
start_server
run_python_test
stop_server
log "passed in $(($(date +%s) - started_at))s${s3_dir:+ (S3 volume only)}$([[ $https == 1 ]] && echo ' (over HTTPS)')"
