#!/usr/bin/env python3
"""PUT load for scripts/bench.sh: keeps N connections each sending whole blocks back to back.

    put-load.py --list FILE --connections N --duration SECONDS URL

FILE has lines "<md5> <body file> <stored path>", as for scripts/bench/wrk.lua. Each
connection (one thread) sends the next block of the list (round robin across all of them)
as `PUT URL<md5>`, after removing the server's stored copy so that every PUT writes and
fsyncs; the list is longer than the connection count + 1, so a block is never removed
while its previous PUT is still in flight.

Why not wrk: a wrk Lua `request()` returns the request as a string that wrk copies into a
fresh buffer for every request, on its one thread, so 64 MiB PUTs left gaps of tens of
milliseconds on every connection between one response and the next request (the server
core was ~78% busy while wrk's was ~40%). Here each body is read once; `sendall` hands
the kernel the same bytes each time.

At the deadline every socket is shut down, as wrk closes its connections, so a request
still in flight is neither counted nor left running on the server. Prints one line
"BENCH requests=… duration_us=… bytes=… connect=… read=… write=… status=… timeout=…
p50_us=… p99_us=… mean_us=… repeats=0", the keys scripts/bench/lib.sh's parse_wrk reads.
Sends to the URL's host, which bench.sh makes 127.0.0.1.
"""

import argparse
import os
import socket
import sys
import threading
import time
import urllib.parse


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("url")
    return parser.parse_args()


def load_blocks(path, url_path):
    blocks = []
    with open(path) as listing:
        for line in listing:
            fields = line.split()
            if len(fields) != 3:
                continue
            target, body_path, stored = fields
            with open(body_path, "rb") as body_file:
                body = body_file.read()
            head = (
                f"PUT {url_path}{target} HTTP/1.1\r\nHost: bench\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            blocks.append((head, body, stored))
    if not blocks:
        sys.exit(f"{path} lists no blocks")
    return blocks


class Response(Exception):
    """The server answered something this client cannot read as a response."""


def read_response(sock, pending):
    """Read one response (head and Content-Length body); returns (status, rest)."""
    while b"\r\n\r\n" not in pending:
        data = sock.recv(65536)
        if not data:
            raise Response("connection closed before a response")
        pending += data
    head, _, pending = pending.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise Response(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(pending) < length:
        data = sock.recv(65536)
        if not data:
            raise Response("connection closed inside a response body")
        pending += data
    return status, pending[length:]


class Load:
    def __init__(self, args):
        url = urllib.parse.urlsplit(args.url)
        self.address = (url.hostname, url.port or 80)
        self.blocks = load_blocks(args.list, url.path if url.path.endswith("/") else url.path + "/")
        self.timeout = args.timeout
        self.lock = threading.Lock()
        self.next_block = 0
        self.stopping = False
        self.sockets = []
        self.latencies_us = []
        self.counts = dict(requests=0, bytes=0, connect=0, read=0, write=0, status=0, timeout=0)

    def count(self, key, amount=1):
        with self.lock:
            self.counts[key] += amount

    def take_block(self):
        with self.lock:
            block = self.blocks[self.next_block]
            self.next_block = (self.next_block + 1) % len(self.blocks)
            return block

    def connect(self):
        try:
            sock = socket.create_connection(self.address, timeout=self.timeout)
        except OSError:
            self.count("connect")
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            if self.stopping:
                sock.close()
                return None
            self.sockets.append(sock)
        return sock

    def connection(self):
        sock = None
        pending = b""
        while not self.stopping:
            if sock is None:
                sock, pending = self.connect(), b""
                if sock is None:
                    time.sleep(0.01)
                    continue
            head, body, stored = self.take_block()
            try:
                os.remove(stored)
            except FileNotFoundError:
                pass
            started = time.monotonic()
            phase = "write"
            try:
                sock.sendall(head)
                sock.sendall(body)
                phase = "read"
                status, pending = read_response(sock, pending)
            except (OSError, Response) as error:
                if not self.stopping:
                    self.count("timeout" if isinstance(error, socket.timeout) else phase)
                sock.close()
                sock = None
                continue
            elapsed_us = (time.monotonic() - started) * 1e6
            if self.stopping:
                break
            with self.lock:
                self.counts["requests"] += 1
                self.counts["bytes"] += len(body)
                self.latencies_us.append(elapsed_us)
                if status >= 400:
                    self.counts["status"] += 1
        if sock is not None:
            sock.close()

    def run(self, connections, duration):
        threads = [threading.Thread(target=self.connection, daemon=True) for _ in range(connections)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, started + duration - time.monotonic()))
        with self.lock:
            self.stopping = True
            elapsed = time.monotonic() - started
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in threads:
            thread.join(timeout=self.timeout)
        return elapsed


def percentile(sorted_values, fraction):
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def main():
    args = parse_args()
    load = Load(args)
    elapsed = load.run(args.connections, args.duration)
    latencies = sorted(load.latencies_us)
    mean = sum(latencies) / len(latencies) if latencies else 0
    c = load.counts
    print(
        f"BENCH requests={c['requests']} duration_us={int(elapsed * 1e6)} bytes={c['bytes']} "
        f"connect={c['connect']} read={c['read']} write={c['write']} status={c['status']} "
        f"timeout={c['timeout']} p50_us={int(percentile(latencies, 0.5))} "
        f"p99_us={int(percentile(latencies, 0.99))} mean_us={int(mean)} repeats=0"
    )


if __name__ == "__main__":
    main()
