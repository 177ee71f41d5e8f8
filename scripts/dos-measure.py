#!/usr/bin/env python3
"""Measure keepring under the two denial-of-service attacks of issue 15, on loopback only,
bounded in count and time. Prints honest-client success and latency (p50/p99) with and
without each attack, and the server's memory per 1,000 idle connections.

    scripts/dos-measure.py [--binary target/release/keepring]

1. Connection flood: a server limited to --max-connections 1000 (one worker); 1,000 idle
   keep-alive connections, then 48 new clients each do one 4 KiB GET (connect to answer).
2. Slow bodies: --max-buffers 4; 4 uploads announce 64 MiB and trickle a byte a second,
   then 5 honest 64 MiB PUTs, one after another.
Each attack is compared with the same honest clients on a fresh server without it.
"""

import argparse
import hashlib
import os
import socket
import subprocess
import tempfile
import time

HOST = "127.0.0.1"


def start(binary, port, volume, *extra):
    args = [binary, "--listen", f"{HOST}:{port}", "--volume", volume, "--workers", "1",
            "--no-handover", "--log-level", "warn", *extra]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("keepring did not start")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def request(port, method, path, body=b"", timeout=30.0):
    """One request on a fresh connection: (status, seconds) or (None, seconds)."""
    started = time.time()
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as conn:
            head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            conn.sendall(head.encode() + body)
            answer = b""
            while b"\r\n" not in answer:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
            status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1 ") else None
            return status, time.time() - started
    except OSError:
        return None, time.time() - started


def summary(label, results):
    ok = [seconds for status, seconds in results if status == 200]
    times = sorted(seconds for _, seconds in results)
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000
    print(f"  {label}: {len(ok)}/{len(results)} answered 200, p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms")


def put_block(port, data):
    return request(port, "PUT", "/" + hashlib.md5(data).hexdigest(), data)


def connection_flood(binary, root):
    print("connection flood: --max-connections 1000, 1,000 idle keep-alive connections, 48 new clients")
    block = os.urandom(4096)
    locator = f"/{hashlib.md5(block).hexdigest()}+4096"
    for attack in (False, True):
        server = start(binary, 25911, tempfile.mkdtemp(dir=root), "--max-connections", "1000")
        try:
            put_block(25911, block)
            idle = []
            before = rss_kib(server.pid)
            if attack:
                for _ in range(1000):
                    conn = socket.create_connection((HOST, 25911), timeout=5)
                    conn.sendall(f"GET {locator} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                    conn.recv(65536)
                    idle.append(conn)
                time.sleep(1.5)
                print(f"  memory: {rss_kib(server.pid) - before} KiB more RSS for 1,000 idle connections")
            results = [request(25911, "GET", locator, timeout=10) for _ in range(48)]
            summary("with the flood" if attack else "without", results)
            for conn in idle:
                conn.close()
        finally:
            server.kill()
            server.wait()


def slow_bodies(binary, root):
    print("slow bodies: --max-buffers 4, 4 uploads of 64 MiB trickling, 5 honest 64 MiB PUTs")
    big = 64 * 1024 * 1024
    for attack in (False, True):
        server = start(binary, 25912, tempfile.mkdtemp(dir=root), "--max-buffers", "4")
        tricklers = []
        try:
            if attack:
                for index in range(4):
                    conn = socket.create_connection((HOST, 25912), timeout=5)
                    head = f"PUT /{hashlib.md5(bytes([index])).hexdigest()} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {big}\r\n\r\n"
                    conn.sendall(head.encode() + b"x")
                    tricklers.append(conn)
                time.sleep(3)
            results = [put_block(25912, os.urandom(big)) for _ in range(5)]
            summary("with the tricklers" if attack else "without", results)
        finally:
            for conn in tricklers:
                conn.close()
            server.kill()
            server.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default="target/release/keepring")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="keepring-dos-") as root:
        connection_flood(args.binary, root)
        slow_bodies(args.binary, root)


if __name__ == "__main__":
    main()
