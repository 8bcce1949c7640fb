#!/usr/bin/env python3
"""SMTP acceptance benchmark.

Starts `mairust serve` on a fresh data directory, creates a domain and a user, pushes N
messages over M parallel SMTP sessions (one transaction per message, sessions reused), and
prints accepted messages per second and p50/p99 acceptance latency (end of DATA to 250).
The same load is then run in the same run against Postfix's `smtp-sink` (accepts and
discards, stores nothing): the ratio MaiRust/smtp-sink says how much of the client-side
ceiling the durable path keeps. `--variants` picks the backends measured: the embedded ones
(SQLite + files), a throwaway PostgreSQL + s3s-fs, each optionally with a master key
(encryption at rest).

No assertions: this prints figures.
"""

import argparse
import os
import smtplib
import statistics
import subprocess
import sys
import threading
import time

from benchlib import MaiRust, Services, SmtpSink

VARIANTS = ("sqlite-fs", "sqlite-fs+key", "postgres-s3", "postgres-s3+key")


def load(port, messages, concurrency, size, rcpt):
    body = ("X" * 76 + "\r\n") * max(1, size // 78)
    latencies = []
    errors = []
    lock = threading.Lock()
    counter = iter(range(messages))

    def worker():
        local = []
        try:
            client = smtplib.SMTP("127.0.0.1", port, timeout=30)
            client.ehlo("bench.client")
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    break
                msg = f"From: bench@client.test\r\nTo: {rcpt}\r\nSubject: bench {n}\r\n\r\n{body}"
                client.mail("bench@client.test")
                client.rcpt(rcpt)
                started = time.perf_counter()
                code, _ = client.data(msg.encode())
                elapsed = time.perf_counter() - started
                if code == 250:
                    local.append(elapsed)
                else:
                    errors.append(code)
            client.quit()
        except Exception as e:  # noqa: BLE001 - report, not crash the run
            errors.append(repr(e))
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return latencies, errors, wall


def summarize(name, latencies, errors, wall):
    n = len(latencies)
    rate = n / wall if wall > 0 else 0.0
    q = statistics.quantiles(latencies, n=100) if n >= 2 else [0.0] * 99
    print(
        f"{name:<16} accepted={n:<6} errors={len(errors):<4} "
        f"rate={rate:8.1f} msg/s  p50={q[49]*1000:7.2f} ms  p99={q[98]*1000:7.2f} ms"
    )
    if errors:
        print(f"           first errors: {errors[:3]}")
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.environ.get("MAIRUST_BIN", "target/release/mairust"))
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--size", type=int, default=4096, help="approximate body bytes")
    ap.add_argument("--variants", default="sqlite-fs",
                    help=f"comma-separated, from {', '.join(VARIANTS)}")
    args = ap.parse_args()

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    services = Services() if any(v.startswith("postgres-s3") for v in variants) else None
    print(f"load: {args.messages} messages, {args.concurrency} sessions, ~{args.size} B bodies")
    limits = f"smtp: {{max_connections_per_ip: {args.concurrency * 2 + 10}}}\n"
    rates = {}
    try:
        for n, variant in enumerate(variants):
            env = {}
            if variant.endswith("+key"):
                key = subprocess.run([args.bin, "key", "generate"], capture_output=True, text=True, check=True)
                env["MAIRUST_MASTER_KEY"] = key.stdout.strip()
            backend = services.backend_yaml(f"bench{n}") if variant.startswith("postgres-s3") else None
            server = MaiRust(args.bin, limits, backend_yaml=backend, env=env)
            try:
                server.api("POST", "/api/v1/domains", {"name": "bench.test"})
                server.api("POST", "/api/v1/users", {"email": "sink@bench.test", "password": "sinkpassword"})
                lat, err, wall = load(server.smtp_port, args.messages, args.concurrency, args.size, "sink@bench.test")
                rates[variant] = summarize(variant, lat, err, wall)
            finally:
                server.stop()
    finally:
        if services:
            services.stop()

    sink = SmtpSink()
    try:
        lat, err, wall = load(sink.port, args.messages, args.concurrency, args.size, "sink@bench.test")
        base_rate = summarize("smtp-sink", lat, err, wall)
    finally:
        sink.stop()
    if base_rate > 0:
        for variant, rate in rates.items():
            print(f"ratio      {variant}/smtp-sink = {rate / base_rate:.2f}")


if __name__ == "__main__":
    sys.exit(main())
