"""The queue under pressure: fair scheduling between destinations, bounces that cannot be
built at once, and a database that stops answering. Real receivers (aiosmtpd), a real DNS
server (dnsmasq) and, on the PostgreSQL pass, a real lock held by another session.
"""

from __future__ import annotations

import contextlib
import smtplib
import sqlite3
import subprocess
import threading
import time

import pytest

from conftest import BACKEND, DOMAIN, USER_PASSWORD, free_ports, setup_domain_and_user, simple_message
from test_delivery import Dns, delivery_overrides, receiver, submit, wait_queue  # noqa: F401 (fixture)

BOB = f"bob@{DOMAIN}"


def test_a_slow_domain_does_not_hold_back_another_in_its_partition(server, receiver, tmp_path):
    # One partition, one connection per destination, one message per connection, and scans
    # of three rows: before fair selection, the three oldest rows (all for the slow domain)
    # filled every scan and the fast domain's message waited for the slow backlog.
    port = free_ports(1)[0]
    slow = receiver(host="127.0.0.2", port=port)
    slow.data_delay = 1.5
    fast = receiver(host="127.0.0.3", port=port)
    dns = Dns(
        tmp_path,
        [
            "--mx-host=slow.test,mx.slow.test,10",
            "--address=/mx.slow.test/127.0.0.2",
            "--mx-host=fast.test,mx.fast.test,10",
            "--address=/mx.fast.test/127.0.0.3",
        ],
    )
    try:
        overrides = delivery_overrides(
            dns_servers=[f"127.0.0.1:{dns.port}"],
            port=port,
            concurrency_per_destination=1,
            max_messages_per_connection=1,
        )
        overrides["queue"].update({"partitions": 1, "batch_size": 3})
        srv = server(overrides)
        setup_domain_and_user(srv, users=("bob",))
        for i in range(8):
            submit(srv, [f"u{i}@slow.test"], f"slow {i}")
        slow.wait(1, timeout=10)
        started = time.monotonic()
        submit(srv, ["someone@fast.test"], "fast")
        fast.wait(1, timeout=6)
        elapsed = time.monotonic() - started
        # The slow backlog alone needs 8 x 1.5 s; the fast message must not wait for it.
        assert elapsed < 5, f"fast.test waited {elapsed:.1f}s behind slow.test"
        assert len(slow.messages) < 8, "the fast message was not overtaken by the whole backlog"
    finally:
        dns.stop()


@pytest.mark.sqlite_fs
def test_a_bounce_that_cannot_be_stored_is_retried_not_lost(server, receiver):
    port = free_ports(1)[0]
    # Nothing listens yet: the first attempt defers.
    # Bounces go to the blob store (not their rows), whose write path this test breaks.
    srv = server({**delivery_overrides(relay_host=f"127.0.0.1:{port}"), "storage": {"inline_max_bytes": 0}})
    setup_domain_and_user(srv, users=("bob",))
    submit(srv, ["reject-me@remote.test"], "will bounce")
    wait_queue(srv, lambda i: i and i[0]["status"] == "deferred")

    # Break the blob store's write path (its temporary directory becomes a file), then let
    # the receiver reject the recipient for good: the bounce's body cannot be written.
    tmp = srv.data_dir / "mail" / "tmp"
    tmp.rename(tmp.with_name("tmp.away"))
    tmp.write_text("not a directory")
    try:
        receiver(port=port)
        items = wait_queue(
            srv, lambda i: i and "bounce could not be built" in (i[0]["last_error"] or ""), timeout=20
        )
        assert items[0]["status"] == "deferred", items[0]
        assert srv.api(BOB, USER_PASSWORD).all_messages() == []
    finally:
        tmp.unlink()
        tmp.with_name("tmp.away").rename(tmp)

    # Writable again: the next attempt fails the same way and the bounce goes out.
    items = wait_queue(srv, lambda i: i and i[0]["status"] == "failed", timeout=20)
    assert "5.1.1" in items[0]["last_error"], items[0]
    bounces = srv.api(BOB, USER_PASSWORD).wait_messages(1, timeout=10)
    assert bounces[0]["subject"] == "Undelivered Mail Returned to Sender"


def send_and_time(srv) -> tuple[int, float]:
    """Sends one message on port 25 and returns the DATA reply code and how long it took."""
    started = time.monotonic()
    with contextlib.closing(srv.smtp()) as s:
        s.timeout = 60
        s.sock.settimeout(60)
        try:
            s.sendmail("sender@elsewhere.test", [BOB], simple_message("while stuck"))
            code = 250
        except smtplib.SMTPDataError as e:
            code = e.smtp_code
            assert b"4.3.0" in e.smtp_error, e.smtp_error
    return code, time.monotonic() - started


@pytest.mark.sqlite_fs
def test_a_stuck_database_answers_451_within_the_commit_timeout(server):
    srv = server({"database": {"commit_timeout": "2s"}})
    setup_domain_and_user(srv, users=("bob",))
    # Another process holds SQLite's write lock (longer than the commit timeout).
    db = sqlite3.connect(
        srv.data_dir / "db" / "mairust.db", timeout=5, isolation_level=None, check_same_thread=False
    )
    db.execute("BEGIN IMMEDIATE")
    release = threading.Timer(8, db.rollback)
    release.start()
    try:
        code, took = send_and_time(srv)
    finally:
        release.join()
        db.close()
    assert code == 451
    assert took < 6, f"451 came after {took:.1f}s"
    # The server works again once the lock is gone.
    assert send_and_time(srv)[0] == 250


@pytest.mark.skipif(BACKEND != "postgres-s3", reason="a PostgreSQL lock held by another session")
def test_a_locked_postgresql_answers_451_instead_of_hanging(server):
    srv = server({"database": {"statement_timeout": "1s", "commit_timeout": "30s"}})
    setup_domain_and_user(srv, users=("bob",))
    url = srv.config["database"]["url"]
    # psql holds an exclusive lock on the messages table for 10 s: every insert waits on it.
    locker = subprocess.Popen(
        ["psql", url, "-q", "-c", "BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(10); COMMIT;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Until psql holds the lock (not a fixed second): the send must meet it.
        held = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation " \
               "WHERE c.relname = 'messages' AND l.mode = 'AccessExclusiveLock' AND l.granted"
        deadline = time.monotonic() + 10
        while subprocess.run(["psql", url, "-tAc", held], capture_output=True, text=True).stdout.strip() != "1":
            assert time.monotonic() < deadline, "psql never took the lock"
            time.sleep(0.05)
        code, took = send_and_time(srv)
        assert code == 451
        assert took < 8, f"451 came after {took:.1f}s"
    finally:
        locker.wait(timeout=30)
    assert send_and_time(srv)[0] == 250
