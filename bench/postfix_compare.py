#!/usr/bin/env python3
"""MaiRust next to a private Postfix, in one run.

Both servers run on loopback with fresh data for every measurement: MaiRust (`mairust serve`,
one instance per variant) and a private Postfix (its own config, queue and data directory and
Maildir in a temp dir, started and stopped by this script; see benchlib.Postfix). Both are
driven the same way, alternated over `--rounds` rounds (the order flips every round), and
the median of the rounds is compared. Cases:

  accept-2k, accept-64k, accept-1m
      Postfix's smtp-source, 20 sessions, a new connection per message, to user@bench.test:
      a local mailbox (MaiRust: a user; Postfix: queue, then virtual delivery to a Maildir).
      Rate = messages / smtp-source's wall time (msg/s and MB/s of payload). Latency (end of
      DATA to 250) comes from a python smtplib probe running at the same time: one extra
      session, a new connection per message, same size. For Postfix the time until the last
      message is in the Maildir is printed too (MaiRust's 250 already means in the mailbox).
  relay
      smtp-source to user@remote.test; MaiRust relays for 127.0.0.0/8 (smtp.trusted_networks)
      to delivery.relay_host, Postfix for mynetworks to relayhost, both a local smtp-sink.
      Rate = messages / time until the last message arrived at the sink.
  latency
      An open-loop python client (asyncio, a new connection per message) at half of the
      variant's peak acceptance rate (the accept-2k median of this run, else one quick
      smtp-source run), 2 KiB; p50/p99 of end of DATA to 250, against both servers.
  idle
      --idle-sessions SMTP sessions opened (banner read, EHLO answered) and left idle; then the
      RSS of MaiRust's process next to the summed RSS of all Postfix processes. Postfix runs one
      smtpd process per session, at most its process limit (default_process_limit, 100, unless
      --postfix-process-limit): sessions past it get no banner, and the output says so.

Variants (MaiRust only): sqlite-fs, sqlite-fs+key, postgres-s3, postgres-s3+key (a throwaway
PostgreSQL and s3s-fs; +key: encryption at rest with a fresh master key). With --baseline-bin,
each variant also runs on that earlier build (VARIANT@before) in the same rounds.

Needs root (Postfix's queue), Debian's postfix package (postfix, smtp-source, smtp-sink).
No assertions: this prints figures.
"""

import argparse
import asyncio
import os
import re
import resource
import signal
import smtplib
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from benchlib import MaiRust, Postfix, Services, SmtpSink, postfix_binary, process_pss, process_rss

VARIANTS = ("sqlite-fs", "sqlite-fs+key", "postgres-s3", "postgres-s3+key")
CASES = ("accept-2k", "accept-64k", "accept-1m", "relay", "latency", "idle")
SIZES = {"accept-2k": 2048, "accept-64k": 65536, "accept-1m": 1048576, "relay": 2048}
LOCAL_RCPT = "user@bench.test"
REMOTE_RCPT = "user@remote.test"
SENDER = "bench@client.test"
# Suffix of a variant run with --baseline-bin (an earlier build), measured in the same rounds.
BEFORE = "@before"


def quantiles(latencies):
    """p50 and p99 in milliseconds (None without samples)."""
    if len(latencies) < 2:
        return (latencies[0] * 1000, latencies[0] * 1000) if latencies else (None, None)
    q = statistics.quantiles(latencies, n=100)
    return q[49] * 1000, q[98] * 1000


def fmt_ms(value):
    return "      -" if value is None else f"{value:7.2f}"


def message(size, n):
    body = ("X" * 76 + "\r\n") * max(1, size // 78)
    return f"From: {SENDER}\r\nSubject: probe {n}\r\n\r\n{body}".encode()


class Probe(threading.Thread):
    """Closed-loop smtplib client beside the load: a new connection per message, timing the
    end of DATA (the final dot) to the reply."""

    def __init__(self, port, size, rcpt):
        super().__init__(daemon=True)
        self.port, self.size, self.rcpt = port, size, rcpt
        self.latencies, self.errors = [], []
        self.done = threading.Event()

    def run(self):
        n = 0
        while not self.done.is_set() and n < 100000:
            n += 1
            try:
                client = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
                try:
                    client.ehlo("probe.client.test")
                    client.mail(SENDER)
                    client.rcpt(self.rcpt)
                    client.putcmd("data")
                    code, _ = client.getreply()
                    if code != 354:
                        self.errors.append(code)
                        continue
                    client.send(message(self.size, n))
                    started = time.perf_counter()
                    client.send(b".\r\n")
                    code, _ = client.getreply()
                    if code == 250:
                        self.latencies.append(time.perf_counter() - started)
                    else:
                        self.errors.append(code)
                finally:
                    client.close()
            except (OSError, smtplib.SMTPException) as e:
                self.errors.append(repr(e))
                time.sleep(0.05)

    def stop(self):
        self.done.set()
        self.join(timeout=120)


def smtp_source(port, messages, sessions, size, rcpt, timeout):
    """Runs smtp-source (a new connection per message); returns wall seconds and stderr."""
    started = time.perf_counter()
    proc = subprocess.run(
        [postfix_binary("smtp-source"), "-s", str(sessions), "-m", str(messages), "-l", str(size),
         "-f", SENDER, "-t", rcpt, f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout,
    )
    return time.perf_counter() - started, proc.stderr.strip()


def wait_count(count_fn, expected, timeout):
    """Polls until count_fn() >= expected or the timeout; returns (count, perf_counter)."""
    deadline = time.monotonic() + timeout
    count = count_fn()
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.02)
        count = count_fn()
    return count, time.perf_counter()


def throughput(port, args, size, rcpt, arrived_fn):
    """smtp-source load plus the latency probe; arrival counted by arrived_fn (mailbox or sink)."""
    probe = Probe(port, size, rcpt)
    started = time.perf_counter()
    probe.start()
    try:
        wall, stderr = smtp_source(port, args.count, args.sessions, size, rcpt, args.timeout)
    finally:
        probe.stop()
    expected = args.count + len(probe.latencies)
    arrived, last = wait_count(arrived_fn, expected, args.timeout)
    p50, p99 = quantiles(probe.latencies)
    return {
        "rate": args.count / wall,
        "mbps": args.count * size / wall / 1e6,
        "arrival_rate": args.count / (last - started) if arrived >= expected else None,
        "arrival_s": last - started,
        "arrived": arrived,
        "expected": expected,
        "p50": p50,
        "p99": p99,
        "probes": len(probe.latencies),
        "errors": probe.errors[:3] + ([stderr.splitlines()[-1]] if stderr else []),
    }


async def read_reply(reader):
    while True:
        line = await reader.readline()
        if len(line) < 4:
            raise ConnectionError(f"bad reply {line!r}")
        if line[3:4] != b"-":
            return int(line[:3])


async def transaction(port, data, rcpt):
    """One message over a new connection; seconds from the final dot to the 250."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if await read_reply(reader) != 220:
            raise ConnectionError("no 220 greeting")
        for command, want in ((b"EHLO paced.client.test", 250), (f"MAIL FROM:<{SENDER}>".encode(), 250),
                              (f"RCPT TO:<{rcpt}>".encode(), 250), (b"DATA", 354)):
            writer.write(command + b"\r\n")
            code = await read_reply(reader)
            if code != want:
                raise ConnectionError(f"{command.split()[0].decode()}: {code}")
        writer.write(data)
        await writer.drain()
        started = time.perf_counter()
        writer.write(b".\r\n")
        code = await read_reply(reader)
        elapsed = time.perf_counter() - started
        if code != 250:
            raise ConnectionError(f"end of DATA: {code}")
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
        return elapsed
    finally:
        writer.close()


def acceptance_p99_bound(server):
    """The upper bound of the histogram bucket holding the 99th percentile of
    mairust_smtp_acceptance_seconds (end of data to the reply), from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.api_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    buckets = []
    for line in text.splitlines():
        m = re.match(r'mairust_smtp_acceptance_seconds_bucket\{.*le="([^"]+)".*\} (\S+)', line)
        if m and m.group(1) != "+Inf":
            buckets.append((float(m.group(1)), float(m.group(2))))
    total = next((float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("mairust_smtp_acceptance_seconds_count")), 0.0)
    return next((le for le, n in sorted(buckets) if total and n >= 0.99 * total), None)


async def paced(port, rate, count, size, rcpt, timeout):
    """Open loop: message i starts at i / rate seconds, whatever the earlier ones do."""
    data = message(size, 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = []
    for i in range(count):
        delay = started + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(asyncio.wait_for(transaction(port, data, rcpt), timeout)))
    offered = count / max(loop.time() - started, 1e-9)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [r for r in results if isinstance(r, float)]
    errors = [repr(r) for r in results if not isinstance(r, float)]
    return latencies, errors, offered


async def hold_idle(port, sessions, wave, measure):
    """Opens up to `sessions` SMTP sessions (banner + EHLO), `wave` at a time; stops early when a
    whole wave gets no banner (the server takes no more). Calls measure() while they are open."""
    writers = []
    refused = 0

    async def one():
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        try:
            if await asyncio.wait_for(read_reply(reader), 5) != 220:
                raise ConnectionError("no 220 greeting")
            writer.write(b"EHLO idle.client.test\r\n")
            if await asyncio.wait_for(read_reply(reader), 5) != 250:
                raise ConnectionError("EHLO refused")
        except BaseException:
            writer.close()
            raise
        return writer

    try:
        while len(writers) < sessions:
            n = min(wave, sessions - len(writers))
            results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
            opened = [r for r in results if isinstance(r, asyncio.StreamWriter)]
            writers.extend(opened)
            refused += n - len(opened)
            if not opened:
                break
        await asyncio.sleep(2)
        return len(writers), refused, measure()
    finally:
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.5)


class Bench:
    def __init__(self, args):
        self.args = args
        self.services = None
        self.databases = 0
        self.current_variant = None
        self.results = {}  # (case, server) -> list of per-round result dicts

    # --- servers -----------------------------------------------------------------------

    def mairust(self, variant, extra_yaml=""):
        env = {}
        binary = self.args.baseline_bin if variant.endswith(BEFORE) else self.args.bin
        variant = variant.removesuffix(BEFORE)
        if variant.endswith("+key"):
            key = subprocess.run([binary, "key", "generate"], capture_output=True, text=True, check=True)
            env["MAIRUST_MASTER_KEY"] = key.stdout.strip()
        backend = None
        if variant.startswith("postgres-s3"):
            if self.services is None:
                self.services = Services()
            self.databases += 1
            backend = self.services.backend_yaml(f"cmp{self.databases}")
        server = MaiRust(binary, extra_yaml, backend_yaml=backend, env=env)
        try:
            server.api("POST", "/api/v1/domains", {"name": "bench.test"})
            server.api("POST", "/api/v1/users", {"email": LOCAL_RCPT, "password": "userpassword"})
        except BaseException:
            server.stop()
            raise
        return server

    def mairust_yaml(self, sink_port=None, connections=None):
        connections = connections or self.args.sessions * 2 + 10
        yaml = (f"smtp: {{max_connections: {max(connections, 1000)}, max_connections_per_ip: {connections}, "
                "trusted_networks: [\"127.0.0.0/8\"]}\n")
        if sink_port:
            # Postfix's default_destination_concurrency_limit is 20.
            yaml += (f"delivery: {{relay_host: \"127.0.0.1:{sink_port}\", tls: none, "
                     "concurrency_per_destination: 20}\n")
        return yaml

    @staticmethod
    def accepted(server):
        return server.api("GET", "/api/v1/stats")["last_hour"]["accepted"]

    # --- one measurement per server ----------------------------------------------------

    def measure(self, case, name, variant=None):
        """One round of `case` on MaiRust (`variant`) or Postfix (variant None)."""
        args = self.args
        # The previous run's dirty pages are written back now, not during this run's fsyncs.
        os.sync()
        if case in SIZES:
            size = SIZES[case]
            args.count = {"accept-64k": max(20, args.messages // 5),
                          "accept-1m": max(20, args.messages // 50)}.get(case, args.messages)
            sink = SmtpSink() if case == "relay" else None
            try:
                rcpt = REMOTE_RCPT if sink else LOCAL_RCPT
                if variant:
                    server = self.mairust(variant, self.mairust_yaml(sink.port if sink else None))
                    arrived = sink.received if sink else (lambda: self.accepted(server))
                else:
                    server = Postfix(relay_port=sink.port if sink else None)
                    arrived = sink.received if sink else server.delivered
                try:
                    r = throughput(server.smtp_port if variant else server.port, args, size, rcpt, arrived)
                finally:
                    server.stop()
            finally:
                if sink:
                    sink.stop()
            self.print_throughput(case, name, r)
        elif case == "latency":
            rate = self.half_peak(variant or self.current_variant)
            os.sync()  # after the peak run, if there was one
            count = max(50, min(args.messages, int(rate * args.latency_seconds)))
            server = self.mairust(variant, self.mairust_yaml(connections=args.sessions * 10 + 100)) \
                if variant else Postfix()
            try:
                lat, errors, offered = asyncio.run(
                    paced(server.smtp_port if variant else server.port, rate, count, 2048, LOCAL_RCPT,
                          args.transaction_timeout))
                inside = acceptance_p99_bound(server) if variant else None
            finally:
                server.stop()
            p50, p99 = quantiles(lat)
            r = {"rate": rate, "offered": offered, "p50": p50, "p99": p99, "ok": len(lat), "errors": errors[:3],
                 "inside": inside * 1000 if inside else None}
            # The client shares the machine: its own scheduling delays are in its figures, not
            # in the server's histogram.
            own = f"  server-side p99 <= {inside * 1000:g} ms" if inside else ""
            print(f"  {name:<24} offered {offered:8.1f} msg/s (target {rate:.1f})  ok={len(lat):<6} "
                  f"errors={len(errors):<4} p50={fmt_ms(p50)} ms  p99={fmt_ms(p99)} ms{own}", flush=True)
            if errors:
                print(f"  {'':<24} first errors: {errors[:3]}", flush=True)
        else:  # idle
            connections = args.idle_sessions + 100
            if variant:
                server = self.mairust(variant, self.mairust_yaml(connections=connections))
                port = server.smtp_port
                rss_fn = lambda: (process_rss(server.proc.pid), process_pss(server.proc.pid), 1)  # noqa: E731
            else:
                server = Postfix(smtpd_limit=args.postfix_process_limit)
                port = server.port
                rss_fn = server.memory
            try:
                time.sleep(1)
                base_rss = rss_fn()[0]
                opened, refused, (rss, pss, procs) = asyncio.run(hold_idle(port, args.idle_sessions, 500, rss_fn))
            finally:
                server.stop()
            r = {"rss": rss, "pss": pss, "base_rss": base_rss, "opened": opened, "procs": procs}
            per = (rss - base_rss) / opened / 1024 if opened else 0.0
            line = (f"  {name:<24} sessions={opened:<6} RSS {rss / 2**20:8.1f} MiB over {procs} process(es) "
                    f"(PSS {pss / 2**20:.1f} MiB; before the sessions: RSS {base_rss / 2**20:.1f} MiB; "
                    f"{per:.1f} KiB RSS/session)")
            if opened < args.idle_sessions:
                line += f"\n  {'':<24} only {opened} of {args.idle_sessions} sessions got a banner"
                if not variant:
                    limit = args.postfix_process_limit
                    line += (f" (smtpd process limit {limit}, raised by --postfix-process-limit)" if limit
                             else " (smtpd process limit: Postfix's default_process_limit, 100)")
            print(line, flush=True)
        self.results.setdefault((case, name), []).append(r)

    def print_throughput(self, case, name, r):
        arrival = (f"in mailbox {r['arrival_rate']:8.1f} msg/s" if r["arrival_rate"] is not None
                   else f"ARRIVED {r['arrived']}/{r['expected']} in {r['arrival_s']:.1f} s")
        if case == "relay":
            arrival = arrival.replace("in mailbox", "at sink")
        print(f"  {name:<24} accept {r['rate']:8.1f} msg/s {r['mbps']:7.2f} MB/s  {arrival}  "
              f"probe p50={fmt_ms(r['p50'])} ms p99={fmt_ms(r['p99'])} ms (n={r['probes']})", flush=True)
        if r["errors"]:
            print(f"  {'':<24} errors: {r['errors']}", flush=True)

    def half_peak(self, variant):
        """Half of the variant's accept-2k median rate from this run, or from one quick run."""
        runs = self.results.get(("accept-2k", f"mairust {variant}"))
        if not runs:
            args = self.args
            server = self.mairust(variant, self.mairust_yaml())
            try:
                wall, _ = smtp_source(server.smtp_port, args.messages, args.sessions, 2048, LOCAL_RCPT, args.timeout)
            finally:
                server.stop()
            runs = [{"rate": args.messages / wall}]
            self.results[("accept-2k", f"mairust {variant}")] = runs
            print(f"  (peak for {variant}: one smtp-source run, {runs[0]['rate']:.1f} msg/s)", flush=True)
        return statistics.median(r["rate"] for r in runs) / 2

    # --- the run -----------------------------------------------------------------------

    def run(self):
        args = self.args
        for case in args.cases:
            print(f"\n== {case}", flush=True)
            for rnd in range(args.rounds):
                print(f" round {rnd + 1}/{args.rounds}", flush=True)
                if case == "latency":
                    # The rate is per variant: Postfix is measured at each variant's rate.
                    for variant in args.variants:
                        self.current_variant = variant
                        pair = [(f"mairust {variant}", variant), (f"postfix @{variant}", None)]
                        for name, v in pair if rnd % 2 == 0 else reversed(pair):
                            self.measure(case, name, v)
                    continue
                order = [(f"mairust {v}", v) for v in args.variants]
                order = [("postfix", None), *order] if rnd % 2 == 0 else [*order, ("postfix", None)]
                for name, v in order:
                    self.measure(case, name, v)
        self.summary()

    def summary(self):
        print(f"\n== summary (median of {self.args.rounds} rounds; ratio = MaiRust / Postfix)")
        med = lambda runs, key: statistics.median(r[key] for r in runs if r.get(key) is not None) \
            if any(r.get(key) is not None for r in runs) else None  # noqa: E731
        for case in self.args.cases:
            for variant in self.args.variants:
                ours = self.results.get((case, f"mairust {variant}"))
                theirs = self.results.get((case, "postfix" if case != "latency" else f"postfix @{variant}"))
                if not ours or not theirs:
                    continue
                label = f"{case:<11} {variant:<16}"
                if case in SIZES:
                    key = "arrival_rate" if case == "relay" else "rate"
                    a, b = med(ours, key), med(theirs, key)
                    ratio = f"{a / b:5.2f}" if a and b else "    -"
                    unit = "msg/s end to end" if case == "relay" else "msg/s accepted"
                    mb = "" if case == "relay" else f"  ({med(ours, 'mbps'):.2f} vs {med(theirs, 'mbps'):.2f} MB/s)"
                    print(f"{label} mairust {a or 0:8.1f}  postfix {b or 0:8.1f} {unit}  ratio {ratio}{mb}  "
                          f"probe p99 {fmt_ms(med(ours, 'p99'))} vs {fmt_ms(med(theirs, 'p99'))} ms "
                          f"(n={sum(r['probes'] for r in ours)} vs {sum(r['probes'] for r in theirs)} per "
                          f"{len(ours)} rounds)")
                elif case == "latency":
                    print(f"{label} at {med(ours, 'rate'):.1f} msg/s  p50 {fmt_ms(med(ours, 'p50'))} vs "
                          f"{fmt_ms(med(theirs, 'p50'))} ms  p99 {fmt_ms(med(ours, 'p99'))} vs "
                          f"{fmt_ms(med(theirs, 'p99'))} ms (mairust vs postfix); mairust server-side p99 <= "
                          f"{fmt_ms(med(ours, 'inside'))} ms")
                else:
                    a, b = med(ours, "rss"), med(theirs, "rss")
                    print(f"{label} RSS mairust {a / 2**20:8.1f} MiB ({med(ours, 'opened'):.0f} sessions)  "
                          f"postfix {b / 2**20:8.1f} MiB (PSS {med(theirs, 'pss') / 2**20:.1f} MiB; "
                          f"{med(theirs, 'opened'):.0f} sessions, {med(theirs, 'procs'):.0f} processes)")

    def close(self):
        if self.services:
            self.services.stop()


def interrupted(signum, frame):
    """First Ctrl-C or SIGTERM: stop the run; later ones are ignored so clean-up finishes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.environ.get("MAIRUST_BIN", "target/release/mairust"))
    ap.add_argument("--baseline-bin", default=None,
                    help="an earlier build: each variant also runs on it (as VARIANT@before), in the "
                         "same rounds, so before and after are compared against the same Postfix")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--messages", type=int, default=5000,
                    help="messages per run of accept-2k, relay and latency (at most); accept-64k "
                         "sends a fifth, accept-1m a fiftieth (at least 20)")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source sessions (-s)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--idle-sessions", type=int, default=10000)
    ap.add_argument("--postfix-process-limit", type=int, default=None,
                    help="smtpd process limit of the idle case (default: Postfix's, 100)")
    ap.add_argument("--latency-seconds", type=float, default=20.0,
                    help="length of the paced latency run (capped by --messages)")
    ap.add_argument("--timeout", type=float, default=600.0, help="bound of each load and wait")
    ap.add_argument("--transaction-timeout", type=float, default=30.0,
                    help="bound of one paced transaction in the latency case (an error beyond it)")
    args = ap.parse_args()
    args.cases = [c for c in args.cases.split(",") if c]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [c for c in args.cases if c not in CASES] + [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown case(s)/variant(s) {unknown}; cases: {', '.join(CASES)}; "
                         f"variants: {', '.join(VARIANTS)}")
    if args.rounds < 1 or args.messages < 1:
        raise SystemExit("--rounds and --messages must be positive")
    if args.baseline_bin:
        args.variants = [x for v in args.variants for x in (f"{v}{BEFORE}", v)]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if "idle" in args.cases:
        if hard != resource.RLIM_INFINITY and args.idle_sessions + 1000 > hard:
            print(f"note: open files limit is {hard}; idle sessions lowered to {hard - 1000}")
            args.idle_sessions = max(1, hard - 1000)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    version = subprocess.run([postfix_binary("postconf"), "-h", "mail_version"], capture_output=True, text=True)
    before = f" (before: {args.baseline_bin})" if args.baseline_bin else ""
    print(f"mairust: {args.bin}{before}; postfix {version.stdout.strip()} (private instance, Debian's defaults "
          f"but no DNS and no client reverse lookup)")
    print(f"load: smtp-source -s {args.sessions}, a new connection per message; {args.messages} messages "
          f"(64 KiB: {max(20, args.messages // 5)}, 1 MiB: {max(20, args.messages // 50)}); "
          f"{args.rounds} rounds, alternated")
    print("latency: accept cases = python smtplib probe, one extra session beside smtp-source; "
          "latency case = paced python client; both time the final dot to the 250")
    bench = Bench(args)
    try:
        bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
