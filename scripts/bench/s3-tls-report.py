#!/usr/bin/env python3
"""Summarise a scripts/bench-s3-tls.sh CSV: medians per (case, target), the
keepring/nginx (HTTPS) and keepring/Garage (S3) ratios, and a markdown report.
Standard library only.

    s3-tls-report.py CSV REPORT_MD --command TEXT --revision TEXT --date TEXT --machine TEXT
        --versions TEXT --rounds N --duration S --nice N --load TEXT --ktls TEXT --tls TEXT

PUT rounds in which wrk.lua sent a block twice (`repeats` > 0: the pool ran out, so some
PUTs were only touches) are left out of the medians when any clean round exists.
"""

import argparse
import csv
import statistics
from collections import defaultdict

MIB = 1 << 20
CASE_LABEL = {
    "get_4k": "GET 4 KiB",
    "get_64m": "GET 64 MiB",
    "get_1m": "GET 1 MiB",
    "get_64m_s3": "GET 64 MiB",
    "put_1m": "PUT 1 MiB",
    "put_64m": "PUT 64 MiB",
}
TARGET_LABEL = {
    "keepring-https": "keepring HTTPS",
    "nginx-https": "nginx HTTPS",
    "nginx-ktls": "nginx HTTPS, kTLS",
    "keepring-http": "keepring HTTP",
    "nginx-http": "nginx HTTP",
    "keepring-s3": "keepring, S3 volume",
    "garage": "Garage direct",
    "keepring-dir": "keepring, directory volume",
}
TLS_CASES = ["get_4k", "get_64m"]
S3_CASES = ["get_1m", "get_64m_s3", "put_1m", "put_64m"]


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, unit=""):
    if value is None:
        return "–"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text}{unit}"


def ratio(a, b):
    if a is None or not b:
        return "–"
    return f"{a / b:.2f}×"


class Medians:
    """Medians per (case, target) over the rounds kept."""

    def __init__(self, rows):
        grouped = defaultdict(list)
        for row in rows:
            grouped[(row["case"], row["target"])].append(row)
        self.rows = grouped
        self.dropped = {}
        self.values = {}
        for key, group in grouped.items():
            clean = [r for r in group if int(r["repeats"] or 0) == 0]
            kept = clean if clean else group
            self.dropped[key] = len(group) - len(kept)
            self.values[key] = {
                field: median(number(r[field]) for r in kept)
                for field in ("req_s", "mb_s", "p50_ms", "p99_ms", "cpu_us_per_req", "cpu_pct",
                              "store_cpu_us_per_req", "store_cpu_pct", "client_cpu_pct", "seconds")
            }
            self.values[key]["rounds"] = len(kept)
            self.values[key]["connections"] = group[0]["connections"]
            self.values[key]["errors"] = sum(int(r["errors"] or 0) for r in group)
            self.values[key]["repeats"] = sum(int(r["repeats"] or 0) for r in group)

    def get(self, case, target, field):
        return self.values.get((case, target), {}).get(field)

    def has(self, case, target):
        return (case, target) in self.values


def tls_table(m):
    ktls = any(m.has(case, "nginx-ktls") for case in TLS_CASES)
    head = ["case", "keepring HTTPS", "nginx HTTPS"] + (["nginx kTLS"] if ktls else []) + [
        "keepring / nginx (HTTPS)", "keepring HTTP", "nginx HTTP", "keepring HTTPS / HTTP",
        "CPU µs/req: keepring HTTPS · nginx HTTPS · keepring HTTP · nginx HTTP"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for case in TLS_CASES:
        if not m.has(case, "keepring-https"):
            continue
        field, unit = ("req_s", " req/s") if case == "get_4k" else ("mb_s", " MB/s")
        conns = m.get(case, "keepring-https", "connections")
        k, n = m.get(case, "keepring-https", field), m.get(case, "nginx-https", field)
        kh, nh = m.get(case, "keepring-http", field), m.get(case, "nginx-http", field)
        cells = [f"{CASE_LABEL[case]} × {conns} connections", fmt(k, unit), fmt(n, unit)]
        if ktls:
            cells.append(fmt(m.get(case, "nginx-ktls", field), unit))
        cpu = " · ".join(fmt(m.get(case, t, "cpu_us_per_req"))
                         for t in ("keepring-https", "nginx-https", "keepring-http", "nginx-http"))
        cells += [ratio(k, n), fmt(kh, unit), fmt(nh, unit), ratio(k, kh), cpu]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def s3_table(m):
    head = ["case", "keepring, S3 volume", "Garage direct", "keepring / Garage",
            "keepring, directory volume", "keepring CPU µs/req (S3 · directory)",
            "Garage CPU µs/req (behind keepring · direct)"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for case in S3_CASES:
        if not m.has(case, "keepring-s3"):
            continue
        conns = m.get(case, "keepring-s3", "connections")
        k, g = m.get(case, "keepring-s3", "mb_s"), m.get(case, "garage", "mb_s")
        d = m.get(case, "keepring-dir", "mb_s")
        kcpu = f"{fmt(m.get(case, 'keepring-s3', 'cpu_us_per_req'))} · {fmt(m.get(case, 'keepring-dir', 'cpu_us_per_req'))}"
        gcpu = f"{fmt(m.get(case, 'keepring-s3', 'store_cpu_us_per_req'))} · {fmt(m.get(case, 'garage', 'cpu_us_per_req'))}"
        cells = [f"{CASE_LABEL[case]} × {conns} connections", fmt(k, " MB/s"), fmt(g, " MB/s"),
                 ratio(k, g), fmt(d, " MB/s"), kcpu, gcpu]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def detail_table(m, cases):
    head = ["case", "target", "conns", "s/round", "req/s", "MB/s", "p50 ms", "p99 ms",
            "server CPU µs/req", "server CPU %", "Garage CPU µs/req", "Garage CPU %", "wrk CPU %",
            "rounds", "errors", "repeats"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
    for case in cases:
        for target in TARGET_LABEL:
            if not m.has(case, target):
                continue
            g = lambda field: m.get(case, target, field)  # noqa: E731
            dropped = m.dropped[(case, target)]
            rounds = f"{g('rounds')}" + (f" ({dropped} dropped)" if dropped else "")
            cells = [CASE_LABEL[case], TARGET_LABEL[target], g("connections"), f"{g('seconds'):.0f}",
                     fmt(g("req_s")), fmt(g("mb_s")), fmt(g("p50_ms")), fmt(g("p99_ms")),
                     fmt(g("cpu_us_per_req")), fmt(g("cpu_pct")), fmt(g("store_cpu_us_per_req")),
                     fmt(g("store_cpu_pct")), fmt(g("client_cpu_pct")), rounds, str(g("errors")),
                     str(g("repeats"))]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("report")
    for option in ("command", "revision", "date", "machine", "versions", "rounds", "duration",
                   "nice", "load", "ktls", "tls"):
        parser.add_argument(f"--{option}", required=True)
    args = parser.parse_args()
    with open(args.csv, newline="") as file:
        rows = list(csv.DictReader(file))
    m = Medians(rows)
    text = [
        "# HTTPS and S3 volume benchmark (issue 13)",
        "",
        f"`{args.command}` at {args.revision}, {args.date}.",
        f"Machine: {args.machine}. {args.versions}.",
        f"{args.rounds} rounds of {args.duration} s per case and target (PUT 64 MiB: at least "
        f"10 s), interleaved; medians shown (every round in `s3-tls.csv`). GETs of 1 MiB and "
        f"more: MB/s from the bytes wrk read (transfers cut off at a round's end count too) "
        f"and CPU µs per block's worth of bytes; otherwise per completed request. wrk CPU %: "
        f"the client's share of its core (for PUTs it includes reading its pool of bodies "
        f"before the clock starts). keepring `--workers 1` and nginx "
        f"`worker_processes 1` on core 0, wrk (one thread) on core 1, all at nice {args.nice}; "
        f"Garage's three nodes unpinned. Load average before → after: {args.load} (a shared, "
        f"noisy machine: other builds ran beside this; single rounds swing).",
        "",
        "## HTTPS GET (same block files, same certificate)",
        "",
        f"TLS: {args.tls}. Certificate: self-signed ECDSA P-256. nginx: `sendfile on`, which "
        "nginx cannot use for TLS without kernel TLS (it reads the file into its buffers and "
        "encrypts them); keepring MD5-verifies every GET (no verified-copy cache).",
        f"{args.ktls}",
        "",
        *tls_table(m),
        "",
        "## S3 volume GET and PUT (Garage, 3 nodes on this machine)",
        "",
        "keepring's only volume is the bucket (S3 driver, PrefixLength 0). Garage direct: "
        "presigned path-style URLs (boto3) sent by the same wrk, for the object keepring "
        "stored (GET) or for new keys `direct/<md5>` (PUT, no Content-MD5). Every PUT to "
        "keepring's S3 volume or to Garage carries a block never sent before (a fresh pool "
        "of random blocks per round: a re-PUT would only be a touch for keepring, and Garage "
        "deduplicates data by content); keepring's PUT does HEAD, PUT with Content-MD5 and "
        "the `recent/` marker PUT, after the whole body arrived and matched its MD5. "
        "Directory volume: the same keepring build on a temp directory (each PUT removes "
        "the stored copy first, so it writes and fdatasyncs; Garage writes without fsync, "
        "`data_fsync = false`). Garage CPU: its three nodes together.",
        "",
        *s3_table(m),
        "",
        "## Every target",
        "",
        *detail_table(m, TLS_CASES + S3_CASES),
        "",
    ]
    with open(args.report, "w") as file:
        file.write("\n".join(text))


if __name__ == "__main__":
    main()
