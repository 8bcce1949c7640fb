#!/usr/bin/env python3
"""SMTP acceptance benchmark.

Starts `mairust serve` on a fresh data directory, creates a domain and a user, pushes N
messages over M parallel SMTP sessions (one transaction per message, sessions reused), and
prints accepted messages per second and p50/p99 acceptance latency (end of DATA to 250).
The same load is then run in the same run against Postfix's `smtp-sink` (accepts and
discards, stores nothing): the ratio MaiRust/smtp-sink says how much of the client-side
ceiling the durable path keeps.

No assertions: this prints figures.
"""

import argparse
import os
import smtplib
import statistics
import sys
import threading
import time

from benchlib import MaiRust, SmtpSink


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
        f"{name:<10} accepted={n:<6} errors={len(errors):<4} "
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
    args = ap.parse_args()

    server = MaiRust(args.bin, f"smtp: {{max_connections_per_ip: {args.concurrency * 2 + 10}}}\n")
    try:
        server.api("POST", "/api/v1/domains", {"name": "bench.test"})
        server.api("POST", "/api/v1/users", {"email": "sink@bench.test", "password": "sinkpassword"})
        print(f"load: {args.messages} messages, {args.concurrency} sessions, ~{args.size} B bodies")
        lat, err, wall = load(server.smtp_port, args.messages, args.concurrency, args.size, "sink@bench.test")
        rate = summarize("mairust", lat, err, wall)
    finally:
        server.stop()

    sink = SmtpSink()
    try:
        lat, err, wall = load(sink.port, args.messages, args.concurrency, args.size, "sink@bench.test")
        base_rate = summarize("smtp-sink", lat, err, wall)
    finally:
        sink.stop()
    if base_rate > 0:
        print(f"ratio      mairust/smtp-sink = {rate / base_rate:.2f}")


if __name__ == "__main__":
    sys.exit(main())
