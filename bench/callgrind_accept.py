#!/usr/bin/env python3
"""Instructions per accepted message, counted by valgrind's callgrind: a figure that does not
depend on the machine's load or clock, so two builds compare even on a noisy machine.

`mairust serve` (SQLite + files) runs under callgrind. After a warm-up, the counters are zeroed,
smtp-source sends --messages messages of --size bytes (2 KiB) to a local mailbox over --sessions sessions (a
new connection per message), and the counters are dumped. The script prints the instructions
(Ir) per message of the whole process, the functions with the most instructions of their own,
and with --baseline-bin the same for an earlier build and the ratio of the medians over
--repeat alternated runs. It asserts nothing.

  python3 bench/callgrind_accept.py --bin target/release/mairust [--baseline-bin OLD]
"""

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

from benchlib import MaiRust

LOCAL_RCPT = "user@bench.test"
# Thread and task entry points: in a build without debug info, code inlined into them is
# charged to them, so their "own" instructions say nothing about where the work is.
RUNTIME_FRAMES = re.compile(r"thread_start|start_thread|clone\.S|__rust_begin_short_backtrace|"
                            r"FnOnce::call_once|tokio::runtime::")


def smtp_source(port, messages, sessions, size):
    subprocess.run(
        ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size), "-f", "bench@client.test",
         "-t", LOCAL_RCPT, f"127.0.0.1:{port}"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


def head_of(path):
    """The start of a callgrind dump, where its description (the dump hint) stands."""
    with open(path, errors="replace") as f:
        return f.read(4096)


def measure(binary, args):
    """(instructions per message, [(Ir, function)] of the top functions) for one build."""
    out = tempfile.mkdtemp(prefix="mairust-callgrind-")
    wrapper = ("valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out}/callgrind.out.%p")
    server = MaiRust(binary, "smtp: {max_connections: 1000, max_connections_per_ip: 200}\n",
                     wrapper=wrapper, start_timeout=180)
    try:
        server.api("POST", "/api/v1/domains", {"name": "bench.test"})
        server.api("POST", "/api/v1/users", {"email": LOCAL_RCPT, "password": "userpassword"})
        smtp_source(server.smtp_port, args.warmup, args.sessions, args.size)
        pid = str(server.proc.pid)
        subprocess.run(["callgrind_control", "--zero", pid], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        smtp_source(server.smtp_port, args.messages, args.sessions, args.size)
        deadline = time.monotonic() + 120
        while server.api("GET", "/api/v1/stats")["last_hour"]["accepted"] < args.warmup + args.messages:
            if time.monotonic() > deadline:
                raise SystemExit("not every message was accepted")
            time.sleep(0.5)
        subprocess.run(["callgrind_control", "--dump=measured", pid], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        server.stop()
    dumps = [f for f in glob.glob(f"{out}/callgrind.out.*") if "measured" in head_of(f)]
    if not dumps:
        raise SystemExit(f"no callgrind dump named 'measured' in {out}")
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", dumps[0]], capture_output=True,
                               text=True, check=True).stdout
    total = re.search(r"^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", annotated, re.M)
    if not total:
        raise SystemExit(f"no totals in {dumps[0]}")
    top = []
    for line in annotated.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*)$", line)
        if m and "PROGRAM TOTALS" not in line and not RUNTIME_FRAMES.search(m.group(2)):
            top.append((int(m.group(1).replace(",", "")), m.group(2)))
    shutil.rmtree(out, ignore_errors=True)
    return int(total.group(1).replace(",", "")) / args.messages, top[:args.top]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("MAIRUST_BIN", "target/release/mairust"))
    ap.add_argument("--baseline-bin", help="an earlier build, counted the same way")
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=2048, help="bytes per message (smtp-source -l)")
    ap.add_argument("--top", type=int, default=12, help="functions listed per build (first run)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each build")
    args = ap.parse_args()
    builds = [("after", args.bin)] + ([("before", args.baseline_bin)] if args.baseline_bin else [])
    counts = {name: [] for name, _ in builds}
    for run in range(args.repeat):
        # Alternated: how sessions share a group commit depends on timing even under valgrind,
        # so a single run of each varies by about 10%.
        for name, binary in builds:
            ir, top = measure(binary, args)
            counts[name].append(ir)
            print(f"== {name} ({run + 1}/{args.repeat}): {binary}\n  {ir:,.0f} instructions per message "
                  f"({args.messages} messages of {args.size:,} bytes, {args.sessions} sessions, SQLite + files)", flush=True)
            for cost, function in top if run == 0 else []:
                print(f"  {cost / args.messages:12,.0f}  {function[:110]}")
    per_message = {name: statistics.median(values) for name, values in counts.items()}
    for name, value in per_message.items():
        print(f"\n{name}: median {value:,.0f} instructions per message over {args.repeat} runs", end="")
    print()
    if "before" in per_message:
        print(f"\nratio after / before: {per_message['after'] / per_message['before']:.2f}")


if __name__ == "__main__":
    main()
