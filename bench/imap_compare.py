#!/usr/bin/env python3
"""MaiRust's IMAP next to a private Dovecot 2.3, in one run, with the same client.

Both servers run on loopback with fresh data, plain IMAP (no TLS on either side), one user.
The client is Python's imaplib, one connection, commands one after the other; each case runs
`--rounds` times on both servers (order flipped every round) and the median is printed, with
the ratio Dovecot/MaiRust (above 1: MaiRust is faster). Cases:

  append          APPEND of --messages messages of 2 KiB to INBOX: messages per second
  select+flags    SELECT INBOX, then UID FETCH 1:* (FLAGS) on the --messages folder
  envelope-all    UID FETCH 1:* (ENVELOPE)
  envelope-last   the last 100 messages' ENVELOPE
  search-subject  UID SEARCH SUBJECT "needle" (10% of the messages match)
  search-text     UID SEARCH TEXT "needle"
  idle-rss        --idle-sessions sessions signed in, INBOX selected, in IDLE: the RSS of
                  MaiRust's process next to the summed RSS of Dovecot's processes

MaiRust runs on SQLite + files (the embedded defaults). Needs root (Dovecot's processes run as
its own users) and Debian's dovecot-imapd. No assertions: this prints figures.
"""

import argparse
import imaplib
import statistics
import sys
import time

from benchlib import MaiRust, Dovecot, process_rss

USER, PASSWORD = "bob@bench.test", "bench-password-1"
SUBJECT_NEEDLE = "needle"


def message(i):
    subject = f"{SUBJECT_NEEDLE} {i}" if i % 10 == 0 else f"message {i}"
    body = (f"line {i} of a message body\r\n" * 80)[:1900]
    return (
        f"From: Alice Example <alice@example.org>\r\nTo: Bob <{USER}>\r\n"
        f"Subject: {subject}\r\nDate: Tue, 08 Dec 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{i}@example.org>\r\n\r\n{body}\r\n"
    ).encode()


def connect(port):
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=600)
    imap.login(USER, PASSWORD)
    return imap


def timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def fill(port, n):
    imap = connect(port)
    seconds = timed(lambda: [imap.append("INBOX", None, None, message(i)) for i in range(n)])
    imap.logout()
    return n / seconds


def read_cases(port, n):
    imap = connect(port)
    out = {}
    out["select+flags"] = timed(lambda: (imap.select("INBOX"), imap.uid("FETCH", "1:*", "(FLAGS)")))
    out["envelope-all"] = timed(lambda: imap.uid("FETCH", "1:*", "(ENVELOPE)"))
    out["envelope-last"] = timed(lambda: imap.fetch(f"{max(1, n - 99)}:*", "(UID ENVELOPE)"))
    out["search-subject"] = timed(lambda: imap.uid("SEARCH", None, "SUBJECT", SUBJECT_NEEDLE))
    out["search-text"] = timed(lambda: imap.uid("SEARCH", None, "TEXT", SUBJECT_NEEDLE))
    imap.logout()
    return out


def idle_rss(port, sessions, pids):
    clients = []
    for _ in range(sessions):
        imap = connect(port)
        imap.select("INBOX")
        tag = imap._new_tag().decode()
        imap.send(f"{tag} IDLE\r\n".encode())
        imap.readline()  # "+ idling"
        clients.append(imap)
    time.sleep(1)
    rss = sum(process_rss(p) for p in pids())
    for imap in clients:
        imap.shutdown()
    return rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True, help="the mairust binary (release build)")
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-sessions", type=int, default=200)
    args = parser.parse_args()

    results = {"mairust": {}, "dovecot": {}}
    servers = {}
    mairust = MaiRust(
        args.binary,
        extra_yaml=f"smtp: {{allow_insecure_auth: true, max_connections_per_ip: {args.idle_sessions + 50}}}\n"
        f"imap: {{max_connections_per_user: {args.idle_sessions + 10}}}\n",
    )
    mairust.api("POST", "/api/v1/domains", {"name": "bench.test"})
    mairust.api("POST", "/api/v1/users", {"email": USER, "password": PASSWORD})
    dovecot = Dovecot(USER, PASSWORD, sessions=args.idle_sessions)
    servers["mairust"] = (mairust.imap_port, lambda: [mairust.proc.pid])
    servers["dovecot"] = (dovecot.port, dovecot.pids)
    try:
        for name, (port, _) in servers.items():
            rate = fill(port, args.messages)
            results[name]["append"] = [rate]
            print(f"{name}: appended {args.messages} messages at {rate:.0f}/s", file=sys.stderr)
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for name in order:
                for case, seconds in read_cases(servers[name][0], args.messages).items():
                    results[name].setdefault(case, []).append(seconds)
        for name, (port, pids) in servers.items():
            results[name]["idle-rss"] = [idle_rss(port, args.idle_sessions, pids)]
    finally:
        mairust.stop()
        dovecot.stop()

    print(f"\n{args.messages} messages, {args.rounds} rounds (median), "
          f"{args.idle_sessions} IDLE sessions")
    print(f"{'case':16} {'MaiRust':>14} {'Dovecot':>14} {'Dovecot/MaiRust':>16}")
    for case in ["append", "select+flags", "envelope-all", "envelope-last", "search-subject",
                 "search-text", "idle-rss"]:
        ours = statistics.median(results["mairust"][case])
        theirs = statistics.median(results["dovecot"][case])
        if case == "append":
            cells, ratio = (f"{ours:.0f} msg/s", f"{theirs:.0f} msg/s"), ours / theirs
        elif case == "idle-rss":
            cells, ratio = (f"{ours / 2**20:.1f} MiB", f"{theirs / 2**20:.1f} MiB"), theirs / ours
        else:
            cells, ratio = (f"{ours * 1000:.1f} ms", f"{theirs * 1000:.1f} ms"), theirs / ours
        print(f"{case:16} {cells[0]:>14} {cells[1]:>14} {ratio:>15.2f}x")


if __name__ == "__main__":
    main()
