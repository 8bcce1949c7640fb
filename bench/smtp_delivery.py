#!/usr/bin/env python3
"""End-to-end delivery benchmark.

Starts Postfix's `smtp-sink` and `mairust serve` relaying to it (delivery.relay_host), submits
N messages over M parallel authenticated submission sessions to recipients spread over D
remote domains (so over several queue partitions), and prints the rate from the first
submission to the arrival of the last message at smtp-sink, plus the submission rate alone.
The baseline, in the same run, is Postfix's `smtp-source` sending the same number of messages
straight to the same smtp-sink: the ratio says what the durable path through the queue costs.

No assertions: this prints figures.
"""

import argparse
import os
import smtplib
import subprocess
import sys
import threading
import time

from benchlib import MaiRust, SmtpSink


def submit(server, messages, concurrency, size, domains):
    body = ("X" * 76 + "\r\n") * max(1, size // 78)
    counter = iter(range(messages))
    lock = threading.Lock()
    errors = []

    def worker():
        try:
            client = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=60)
            client.ehlo("bench.client")
            client.login("sender@bench.test", "senderpassword")
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    break
                rcpt = f"user{n}@d{n % domains}.remote.test"
                msg = f"From: sender@bench.test\r\nTo: {rcpt}\r\nSubject: e2e {n}\r\n\r\n{body}"
                client.sendmail("sender@bench.test", [rcpt], msg.encode())
            client.quit()
        except Exception as e:  # noqa: BLE001 - report, not crash the run
            errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.environ.get("MAIRUST_BIN", "target/release/mairust"))
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--domains", type=int, default=16)
    ap.add_argument("--size", type=int, default=4096, help="approximate body bytes")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()

    sink = SmtpSink()
    server = MaiRust(
        args.bin,
        f"smtp: {{allow_insecure_auth: true, max_connections_per_ip: {args.concurrency * 2 + 10}}}\n"
        f"delivery: {{relay_host: \"127.0.0.1:{sink.port}\", tls: none, concurrency_per_destination: 8}}\n",
    )
    try:
        server.api("POST", "/api/v1/domains", {"name": "bench.test"})
        server.api("POST", "/api/v1/users", {"email": "sender@bench.test", "password": "senderpassword"})
        print(
            f"load: {args.messages} messages, {args.concurrency} sessions, {args.domains} domains, "
            f"~{args.size} B bodies, relayed to smtp-sink"
        )
        started = time.perf_counter()
        errors = submit(server, args.messages, args.concurrency, args.size, args.domains)
        submitted = time.perf_counter() - started
        deadline = time.monotonic() + args.timeout
        while sink.received() < args.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        arrived = sink.received()
        e2e = time.perf_counter() - started
    finally:
        server.stop()
        sink.stop()
    print(f"submission  {args.messages / submitted:8.1f} msg/s  ({submitted:.2f} s, errors={len(errors)})")
    print(f"end-to-end  {arrived / e2e:8.1f} msg/s  ({arrived}/{args.messages} arrived in {e2e:.2f} s)")
    if errors:
        print(f"            first errors: {errors[:3]}")

    sink = SmtpSink()
    try:
        source = "/usr/sbin/smtp-source" if os.path.exists("/usr/sbin/smtp-source") else "smtp-source"
        started = time.perf_counter()
        subprocess.run(
            [source, "-s", str(args.concurrency), "-m", str(args.messages), "-l", str(args.size),
             "-f", "sender@bench.test", "-t", "user@d0.remote.test", f"127.0.0.1:{sink.port}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        direct = time.perf_counter() - started
        base = sink.received() / direct
    finally:
        sink.stop()
    print(f"direct      {base:8.1f} msg/s  (smtp-source -> smtp-sink)")
    if base > 0:
        print(f"ratio       mairust end-to-end / direct = {arrived / e2e / base:.3f}")


if __name__ == "__main__":
    sys.exit(main())
