#!/usr/bin/env bash
# Time from a drive appearing to the first PUT stored on it, over N additions.
#
#   scripts/hotadd-latency.sh [--additions 20] [--mode mkdir|mount]
#
# mkdir: `mkdir ROOT/diskN/keep` under a --volume-root. mount: a tmpfs is mounted at
# ROOT/diskN, then its keep dir is made (needs root); the clock starts before the mount.
# After each addition, /mounts is polled until it lists the new volume (the time the
# watcher took to notice), then distinct blocks are PUT as fast as one client goes until
# one lands in the new volume's directory; both times from the mkdir/mount are recorded.
# 127.0.0.1 only; bounded (each addition gives up after 5 s). Prints median and max.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

additions=20 mode=mkdir port=25191
while [[ $# -gt 0 ]]; do
    case $1 in
        --additions) additions=$2; shift 2 ;;
        --mode) mode=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

echo "+ cargo build --release"
cargo build --release --quiet
work=$(mktemp -d /tmp/keepring-hotadd.XXXXXX)
server_pid=""
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    if [[ $mode == mount ]]; then
        for dir in "$work"/root/disk*; do umount -l "$dir" 2>/dev/null || true; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/root/disk0/keep"
cmd=(target/release/keepring --listen "127.0.0.1:$port" --volume-root "$work/root" --log-level warn)
echo "+ ${cmd[*]}"
"${cmd[@]}" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 200); do grep -q "listening on" "$work/server.log" && break; sleep 0.025; done

python3 - "$work/root" "$port" "$additions" "$mode" <<'PY'
import hashlib, http.client, os, statistics, subprocess, sys, time
root, port, additions, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
def put(data):
    global conn
    digest = hashlib.md5(data).hexdigest()
    try:
        conn.request("PUT", "/" + digest, body=data)
        response = conn.getresponse(); response.read()
        return digest, response.status
    except (OSError, http.client.HTTPException):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        return digest, 0
latencies, seen, counter = [], [], 0
for n in range(1, additions + 1):
    disk = os.path.join(root, f"disk{n}")
    os.makedirs(disk)
    if mode == "mount":
        start = time.monotonic()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", disk], check=True)
        os.mkdir(os.path.join(disk, "keep"))
    else:
        start = time.monotonic()
        os.mkdir(os.path.join(disk, "keep"))
    keep = os.path.join(disk, "keep")
    while True:
        conn.request("GET", "/mounts")
        response = conn.getresponse(); listed = response.read().decode()
        if keep in listed:
            seen.append((time.monotonic() - start) * 1000)
            break
        if time.monotonic() - start > 5:
            print(f"addition {n}: not in /mounts within 5 s", file=sys.stderr)
            sys.exit(1)
    while True:
        counter += 1
        digest, status = put(os.urandom(1024) + counter.to_bytes(8, "little"))
        if status == 200 and os.path.exists(os.path.join(keep, digest[:3], digest)):
            latencies.append((time.monotonic() - start) * 1000)
            break
        if time.monotonic() - start > 5:
            print(f"addition {n}: no PUT stored on the new volume within 5 s", file=sys.stderr)
            sys.exit(1)
    time.sleep(0.05)
latencies.sort()
seen.sort()
print(f"mode={mode} additions={additions} PUTs={counter}")
print("listed in /mounts, ms: " + " ".join(f"{value:.1f}" for value in seen))
print(f"  median {statistics.median(seen):.1f} ms, max {max(seen):.1f} ms")
print("first PUT stored on it, ms: " + " ".join(f"{value:.1f}" for value in latencies))
print(f"  median {statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms")
PY
