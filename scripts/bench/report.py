#!/usr/bin/env python3
"""Summarise a scripts/bench.sh CSV: medians per (case, workers, server), keepring/nginx
ratios, the issue-7 targets, a markdown summary and the data + gnuplot script for the
ratio chart. Standard library only.

    report.py CSV SUMMARY_MD CHART_DIR --md5-mbs X --md5-source TEXT --command TEXT [--note TEXT]...

Prints the summary (markdown) on stdout too.
"""

import argparse
import csv
import os
import statistics
from collections import defaultdict

# Order and labels of the cases as bench.sh names them.
CASES = [
    ("get_4k", "GET 4 KiB"),
    ("get_1m", "GET 1 MiB"),
    ("get_64m", "GET 64 MiB"),
    ("head_4k", "HEAD 4 KiB"),
    ("get_4k_beside_64m", "GET 4 KiB beside 64 MiB GETs"),
    ("get_4k_cached", "GET 4 KiB, verified-copy cache"),
    ("get_64m_cached", "GET 64 MiB, verified-copy cache"),
    ("put_1m", "PUT 1 MiB"),
    ("put_64m", "PUT 64 MiB"),
    ("get_64m_x16", "GET 64 MiB × 16 clients"),
    ("get_4k_x64", "GET 4 KiB × 64 connections"),
    ("put_64m_x8", "PUT 64 MiB × 8 clients"),
]
LABEL = dict(CASES)
# Verified cases and their block size, for the floor table (HEAD hashes the block too).
FLOOR_CASES = [("get_4k", 4096), ("head_4k", 4096), ("get_1m", 1 << 20), ("get_64m", 64 << 20)]
# Cases whose keepring rate is compared with the single-core MD5 rate (per worker).
MD5_CASES = {"get_1m", "get_64m", "put_1m", "put_64m", "get_64m_cached", "get_64m_x16", "put_64m_x8"}


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0, suffix=""):
    if value is None:
        return "–"
    if digits == 0:
        return f"{value:,.0f}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def load(path):
    groups = defaultdict(list)
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            groups[(row["case"], int(row["workers"]), row["server"])].append(row)
    return groups


def medians(rows):
    keys = ["req_s", "mb_s", "p50_ms", "p99_ms", "cpu_us_per_req", "server_cpu_pct", "beside_mb_s",
            "lane_fill_pct", "streams_per_batch"]
    # (CSVs from before the MD5 lane columns lack them.)
    result = {key: median([number(row.get(key)) for row in rows]) for key in keys}
    result["rounds"] = len(rows)
    result["errors"] = sum(int(row["errors"] or 0) for row in rows)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("summary")
    parser.add_argument("chart_dir")
    parser.add_argument("--md5-mbs", type=float, required=True)
    parser.add_argument("--md5-source", required=True)
    parser.add_argument("--disk-mbs", type=float)
    parser.add_argument("--duration", type=float, help="nominal seconds per round, to flag overruns")
    parser.add_argument("--command", required=True)
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args()

    groups = load(args.csv)
    workers_seen = sorted({w for (_, w, _) in groups})
    med = {key: medians(rows) for key, rows in groups.items()}

    def get(case, workers, server, key):
        entry = med.get((case, workers, server))
        return entry[key] if entry else None

    lines = []
    out = lines.append
    out("# keepring benchmark: medians and keepring/nginx ratios")
    out("")
    out(f"Command: `{args.command}`  ")
    out(f"Raw rounds: `{os.path.relpath(args.csv, os.path.dirname(os.path.abspath(args.summary)))}`  ")
    for note in args.note:
        out(f"{note}  ")
    out(f"Single-core MD5 reference: {args.md5_mbs:,.0f} MB/s ({args.md5_source}).  ")
    if args.disk_mbs:
        out(
            f"Volume disk reference: {args.disk_mbs:,.0f} MB/s (dd of 64 MiB with conv=fdatasync, median of 3); "
            "every PUT is written and fdatasync'd before its rename, so PUT rates are bounded by it too."
        )
    out("")
    out("MB/s is 10^6 bytes of block body per second. CPU µs/req is the server's utime+stime")
    out("(all its threads or processes) over a round divided by the requests wrk completed in it.")
    out("Ratios are keepring ÷ nginx of the medians; for CPU, lower is better for keepring.")
    out("p50/p99 are wrk's (hey's for HEAD) per-request latencies in ms.")
    out("")
    out(
        "| case | workers | keepring req/s | nginx req/s | req/s ratio | keepring MB/s | "
        "MB/s per worker ÷ MD5 | keepring CPU µs/req | nginx CPU µs/req | CPU ratio | "
        "keepring p50 / p99 ms | nginx p50 / p99 ms | errors k/n |"
    )
    out("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    chart_rows = []
    for case, label in CASES:
        for workers in workers_seen:
            k = med.get((case, workers, "keepring"))
            n = med.get((case, workers, "nginx"))
            if not k and not n:
                continue
            k_req, n_req = get(case, workers, "keepring", "req_s"), get(case, workers, "nginx", "req_s")
            k_cpu, n_cpu = (
                get(case, workers, "keepring", "cpu_us_per_req"),
                get(case, workers, "nginx", "cpu_us_per_req"),
            )
            k_mbs = get(case, workers, "keepring", "mb_s")
            vs_md5 = ratio(k_mbs, workers * args.md5_mbs) if case in MD5_CASES else None
            latency = "{} / {}"
            out(
                f"| {label} | {workers} | {fmt(k_req)} | {fmt(n_req) if n else 'no nginx peer'} | "
                f"{fmt(ratio(k_req, n_req), 2, '×')} | {fmt(k_mbs)} | {fmt(vs_md5, 2, '×')} | "
                f"{fmt(k_cpu, 1)} | {fmt(n_cpu, 1)} | {fmt(ratio(k_cpu, n_cpu), 2, '×')} | "
                + latency.format(
                    fmt(get(case, workers, "keepring", "p50_ms"), 2), fmt(get(case, workers, "keepring", "p99_ms"), 2)
                )
                + " | "
                + (
                    latency.format(
                        fmt(get(case, workers, "nginx", "p50_ms"), 2), fmt(get(case, workers, "nginx", "p99_ms"), 2)
                    )
                    if n
                    else "–"
                )
                + f" | {k['errors'] if k else '–'}/{n['errors'] if n else '–'} |"
            )
            chart_rows.append((case, workers, ratio(k_req, n_req) if n else vs_md5, ratio(k_cpu, n_cpu)))
    out("")

    # Issue 7 targets, from the same medians.
    out("## Issue 7 targets")
    out("")
    out("| target | measured | met |")
    out("| --- | --- | --- |")

    def target(text, value, good, shown):
        met = "–" if value is None else ("yes" if good(value) else "**no**")
        out(f"| {text} | {shown if value is not None else 'not measured'} | {met} |")

    for workers in workers_seen:
        value = ratio(get("get_4k", workers, "keepring", "cpu_us_per_req"), get("get_4k", workers, "nginx", "cpu_us_per_req"))
        target(
            f"GET 4 KiB server CPU/req ≤ 0.5× nginx (workers {workers})",
            value,
            lambda v: v <= 0.5,
            f"{fmt(value, 2, '×')} ({fmt(get('get_4k', workers, 'keepring', 'cpu_us_per_req'), 1)} vs "
            f"{fmt(get('get_4k', workers, 'nginx', 'cpu_us_per_req'), 1)} µs)",
        )
        value = ratio(get("get_4k", workers, "keepring", "req_s"), get("get_4k", workers, "nginx", "req_s"))
        target(f"GET 4 KiB req/s ≥ 1.3× nginx (workers {workers})", value, lambda v: v >= 1.3, fmt(value, 2, "×"))
    for case, limit in (("get_64m", 0.9), ("put_64m", 0.85)):
        for workers in workers_seen:
            k_mbs = get(case, workers, "keepring", "mb_s")
            value = ratio(k_mbs, workers * args.md5_mbs)
            target(
                f"{LABEL[case]} ≥ {limit}× MD5 rate per worker (workers {workers})",
                value,
                lambda v, limit=limit: v >= limit,
                f"{fmt(value, 2, '×')} ({fmt(k_mbs)} MB/s"
                + (f"; disk reference {fmt(args.disk_mbs)} MB/s)" if case.startswith("put") and args.disk_mbs else ")"),
            )
    for workers in workers_seen:
        value = get("get_4k_beside_64m", workers, "keepring", "p99_ms")
        target(
            f"p99 of 4 KiB GETs beside 64 MiB GETs < 5 ms (workers {workers})",
            value,
            lambda v: v < 5,
            f"{fmt(value, 2)} ms (nginx {fmt(get('get_4k_beside_64m', workers, 'nginx', 'p99_ms'), 2)} ms)",
        )
    if 1 in workers_seen and 2 in workers_seen:
        value = ratio(get("get_1m", 2, "keepring", "req_s"), get("get_1m", 1, "keepring", "req_s"))
        target("GET 1 MiB: workers 2 ≥ 1.8× workers 1", value, lambda v: v >= 1.8, fmt(value, 2, "×"))
    many_stream_targets(get, target, args, workers_seen)
    out("")
    md5_lanes(get, out, workers_seen)

    # The floor of a verified GET on this machine: what nginx spends to send the block
    # (its CPU per request, sendfile, no checking) plus hashing the block once at the MD5
    # reference rate. No server that MD5-verifies every byte can spend less per request,
    # short of a cheaper way to send than nginx's.
    out("## Against the verified floor")
    out("")
    out(
        "Floor = nginx's CPU µs per request (it sends with sendfile and checks nothing) + the block's "
        f"size at the single-core MD5 reference rate ({args.md5_mbs:,.0f} MB/s). A server that MD5-verifies "
        "every byte cannot go below it without sending more cheaply than nginx."
    )
    out("")
    out("| case | workers | MD5 µs/req | nginx CPU µs/req | floor µs/req | keepring CPU µs/req | keepring ÷ floor |")
    out("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for case, size in FLOOR_CASES:
        for workers in workers_seen:
            n_cpu = get(case, workers, "nginx", "cpu_us_per_req")
            k_cpu = get(case, workers, "keepring", "cpu_us_per_req")
            if n_cpu is None or k_cpu is None:
                continue
            md5_us = size / args.md5_mbs
            floor = n_cpu + md5_us
            out(
                f"| {LABEL[case]} | {workers} | {fmt(md5_us, 1)} | {fmt(n_cpu, 1)} | {fmt(floor, 1)} | "
                f"{fmt(k_cpu, 1)} | {fmt(ratio(k_cpu, floor), 2, '×')} |"
            )
    out("")
    # A wrk run that lasts well past its -d was not scheduled on time: the machine stalled
    # (other load, steal), and that round says little about either server.
    if args.duration:
        overran = [
            row
            for rows in groups.values()
            for row in rows
            if (number(row["duration_s"]) or 0) > 1.5 * args.duration * nominal_rounds(row["case"])
        ]
        if overran:
            out("## Disturbed rounds")
            out("")
            out(
                f"These rounds lasted over 1.5× the nominal {args.duration:g} s (64 MiB PUTs: twice that), so the client was not scheduled "
                "on time (the machine stalled); medians include them, the raw rounds are in the CSV:"
            )
            out("")
            for row in overran:
                out(
                    f"- {LABEL.get(row['case'], row['case'])}, workers {row['workers']}, {row['server']}, "
                    f"round {row['round']}: {row['duration_s']} s, {row['req_s']} req/s"
                )
            out("")
    out("![keepring/nginx ratios](ratios.png)")

    text = "\n".join(lines) + "\n"
    with open(args.summary, "w") as handle:
        handle.write(text)
    print(text)

    # Chart data: one row per case, one column per worker count; "-" is missing.
    # throughput.dat: every case; cpu.dat: the cases that have a CPU ratio.
    os.makedirs(args.chart_dir, exist_ok=True)
    by_case = defaultdict(dict)
    for case, workers, throughput, cpu in chart_rows:
        by_case[case][workers] = (throughput, cpu)
    for name, column in (("throughput.dat", 0), ("cpu.dat", 1)):
        with open(os.path.join(args.chart_dir, name), "w") as handle:
            handle.write("# label " + " ".join(f"workers_{w}" for w in workers_seen) + "\n")
            for case, label in CASES:
                values = [by_case.get(case, {}).get(w, (None, None))[column] for w in workers_seen]
                if all(value is None for value in values):
                    continue
                shown = label.replace("GET 4 KiB beside 64 MiB GETs", "GET 4 KiB beside 64 MiB")
                if case.startswith("put"):
                    shown += " (÷ MD5)"
                cells = ["-" if value is None else f"{value:.6f}" for value in values]
                handle.write(f'"{shown}" ' + " ".join(cells) + "\n")
    with open(os.path.join(args.chart_dir, "workers.txt"), "w") as handle:
        handle.write(" ".join(str(w) for w in workers_seen) + "\n")



def nominal_rounds(case):
    """How many --duration a case's round lasts: bench.sh gives 64 MiB PUTs twice the time."""
    return 2 if case.startswith("put_64m") else 1


def many_stream_targets(get, target, args, workers_seen):
    """Issue 16's targets: many streams per worker, hashed together in SIMD lanes."""
    if 1 in workers_seen:
        k_mbs, n_mbs = get("get_64m_x16", 1, "keepring", "mb_s"), get("get_64m_x16", 1, "nginx", "mb_s")
        value = ratio(k_mbs, n_mbs)
        target("GET 64 MiB × 16 clients ≥ 1.0× nginx MB/s (workers 1)", value, lambda v: v >= 1.0,
               f"{fmt(value, 2, '×')} ({fmt(k_mbs)} vs {fmt(n_mbs)} MB/s)")
        value = ratio(k_mbs, args.md5_mbs)
        target("GET 64 MiB × 16 clients ≥ 3× the single-stream MD5 rate (workers 1)", value,
               lambda v: v >= 3.0, f"{fmt(value, 2, '×')}")
        p_mbs = get("put_64m_x8", 1, "keepring", "mb_s")
        floor = min(2.0 * args.md5_mbs, 0.9 * args.disk_mbs) if args.disk_mbs else 2.0 * args.md5_mbs
        value = ratio(p_mbs, floor)
        target("PUT 64 MiB × 8 clients ≥ 2× MD5 rate, or ≥ 0.9× the disk's write+fdatasync rate where lower (workers 1)",
               value, lambda v: v >= 1.0,
               f"{fmt(p_mbs)} MB/s against {fmt(floor)} MB/s (MD5 {fmt(args.md5_mbs)}, disk {fmt(args.disk_mbs)})")
        value = ratio(get("get_4k_x64", 1, "keepring", "cpu_us_per_req"), get("get_4k_x64", 1, "nginx", "cpu_us_per_req"))
        target("GET 4 KiB × 64 connections: server CPU/req ≤ 0.9× nginx (workers 1)", value, lambda v: v <= 0.9,
               f"{fmt(value, 2, '×')} ({fmt(get('get_4k_x64', 1, 'keepring', 'cpu_us_per_req'), 1)} vs "
               f"{fmt(get('get_4k_x64', 1, 'nginx', 'cpu_us_per_req'), 1)} µs)")
    if 1 in workers_seen and 2 in workers_seen:
        value = ratio(get("get_64m_x16", 2, "keepring", "mb_s"), get("get_64m_x16", 1, "keepring", "mb_s"))
        target("GET 64 MiB × 16 clients: workers 2 ≥ 1.8× workers 1 (on 2 cores the client shares them)",
               value, lambda v: v >= 1.8, fmt(value, 2, "×"))

def md5_lanes(get, out, workers_seen):
    """How full keepring's SIMD lanes ran in each case (its /metrics, per round)."""
    rows = [
        (case, workers, get(case, workers, "keepring", "lane_fill_pct"), get(case, workers, "keepring", "streams_per_batch"))
        for case, _ in CASES
        for workers in workers_seen
    ]
    rows = [row for row in rows if row[2] is not None]
    if not rows:
        return
    out("## MD5 lanes")
    out("")
    out(
        "From keepring's /metrics around each round: bytes its hashers' SIMD rounds hashed over the room "
        "those rounds had (a round of 5 streams on an 8-lane shape is 62.5% full), and streams per hasher "
        "batch. Lone streams take the single-stream path and are not in the fill."
    )
    out("")
    out("| case | workers | lanes full | streams per batch |")
    out("| --- | ---: | ---: | ---: |")
    for case, workers, fill, per_batch in rows:
        out(f"| {LABEL[case]} | {workers} | {fmt(fill, 1, '%')} | {fmt(per_batch, 2)} |")
    out("")


if __name__ == "__main__":
    main()
