"""Durability and supervision: the 250 promise under SIGKILL, persistence across graceful and
hard restarts, graceful shutdown of open sessions, and actor supervision with injected faults
(`server.fault_injection`): a failing storage writer is restarted and loses nothing it
acknowledged, a panicking SMTP session takes down only its own connection."""

import contextlib
import signal
import smtplib
import threading
import time

import pytest
import requests

from conftest import (
    DOMAIN,
    SMTP_TIMEOUT,
    USER_PASSWORD,
    assert_error,
    setup_domain_and_user,
    simple_message,
)

BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"


def subjects(srv, who=BOB) -> list[str]:
    return [i["subject"] for i in srv.api(who, USER_PASSWORD).all_messages()]


# ---------------------------------------------------------------------- restarts


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_mail_users_and_flags_survive_restart(server, hard):
    srv = server()
    setup_domain_and_user(srv, users=("bob",))
    token = srv.api(BOB, USER_PASSWORD).post("/api/v1/tokens").json()["token"]
    sent = {}
    for i in range(3):
        sent[f"persist {i}"] = simple_message(f"persist {i}")
        assert srv.send(BOB, sent[f"persist {i}"])[0] == 250
    api = srv.api(BOB, USER_PASSWORD)
    items = {i["subject"]: i for i in api.all_messages()}
    assert api.patch(f"/api/v1/messages/{items['persist 1']['id']}", json={"seen": True}).status_code == 200
    assert api.delete(f"/api/v1/messages/{items['persist 0']['id']}").status_code == 204
    srv.api().add_user(CAROL)

    srv.restart(hard=hard)

    api = srv.api(BOB, USER_PASSWORD)
    after = {i["subject"]: i for i in api.all_messages()}
    assert set(after) == {"persist 1", "persist 2"}
    assert after["persist 1"]["seen"] is True and after["persist 2"]["seen"] is False
    for subj in after:
        raw = api.get(f"/api/v1/messages/{after[subj]['id']}/raw").content
        assert raw.endswith(sent[subj])
    emails = {u["email"] for u in srv.api().get("/api/v1/users").json()["items"]}
    assert {BOB, CAROL} <= emails
    assert srv.api(token=token).get("/api/v1/messages").status_code == 200
    # And it still accepts mail.
    assert srv.send(CAROL, simple_message("after restart"))[0] == 250
    assert subjects(srv, CAROL) == ["after restart"]


def test_sigterm_closes_open_sessions_with_421(server):
    srv = server()
    setup_domain_and_user(srv)
    r = srv.raw()
    try:
        r.greet()
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
        t0 = time.monotonic()
        srv.proc.terminate()
        code, msg = r.reply()
        assert code == 421, (code, msg)
        assert msg.startswith("4.3.2"), msg
        assert srv.proc.wait(timeout=15) == 0
        assert time.monotonic() - t0 < 8, "shutdown waited for the drain timeout"
    finally:
        r.close()


# ---------------------------------------------------------------------- SIGKILL under load


def test_sigkill_under_load_keeps_every_acknowledged_message(server):
    srv = server()
    setup_domain_and_user(srv)
    # Bounded loops, long enough that the kill lands mid-run even on a fast machine.
    threads_n, per_thread = 8, 2000
    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    errors_after_kill = []
    killed = threading.Event()

    def worker(n: int) -> None:
        s = None
        try:
            s = smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="load.test", timeout=SMTP_TIMEOUT)
            s.ehlo()
            for i in range(per_thread):
                subj = f"load-{n}-{i}"
                data = simple_message(subj, body=f"thread {n} message {i}\r\n" + "x" * 500 + "\r\n")
                s.mail("alice@remote.test")
                s.rcpt(BOB)
                code, _ = s.data(data)
                if code == 250:
                    with lock:
                        acked[subj] = data
        except (smtplib.SMTPException, OSError) as e:
            if not killed.is_set():
                errors_after_kill.append(f"thread {n} failed before the kill: {e!r}")
        finally:
            if s is not None:
                with contextlib.suppress(Exception):
                    s.close()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads_n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    # Kill mid-run: after about a second, once some mail has been acknowledged.
    while time.monotonic() - t0 < 10:
        with lock:
            count = len(acked)
        if time.monotonic() - t0 >= 1.0 and count >= 8:
            break
        time.sleep(0.02)
    killed.set()
    srv.kill()
    for t in threads:
        t.join(timeout=SMTP_TIMEOUT + 5)
    assert not any(t.is_alive() for t in threads), "client threads hung after the kill"
    assert not errors_after_kill, errors_after_kill
    with lock:
        acknowledged = dict(acked)
    assert acknowledged, "no message was acknowledged before the kill"
    assert len(acknowledged) < threads_n * per_thread, "the load ended before the kill"

    srv.start(first=False)
    api = srv.api(BOB, USER_PASSWORD)
    stored = {}
    for item in api.all_messages():
        assert item["subject"] not in stored, f"duplicate message {item['subject']}"
        stored[item["subject"]] = item
    missing = sorted(set(acknowledged) - set(stored))
    assert not missing, f"{len(missing)} acknowledged messages lost after SIGKILL: {missing[:10]}"
    # Every acknowledged body is intact, not just its metadata.
    for subj, data in acknowledged.items():
        raw = api.get(f"/api/v1/messages/{stored[subj]['id']}/raw")
        assert raw.status_code == 200, (subj, raw.text)
        assert raw.content.endswith(data), subj
    # The restarted server accepts mail again.
    assert srv.send(BOB, simple_message("after the crash"))[0] == 250


def test_a_crash_between_a_batchs_body_writes_and_its_commit_loses_and_doubles_nothing(server):
    """Small bodies go into their rows within the group commit, larger ones to blob-store files
    before it. The process aborts after a batch's writes and before its COMMIT: every message
    that got 250 is stored once with its body, the aborted batch left nothing visible, and the
    clients' retries of what was not acknowledged are each stored exactly once."""
    srv = server({"server": {"fault_injection": True}, "storage": {"inline_max_bytes": 4096}})
    setup_domain_and_user(srv)
    threads_n, per_thread = 8, 400
    acked: dict[str, bytes] = {}
    unacked: dict[str, bytes] = {}
    lock = threading.Lock()

    def message(n: int, i: int) -> tuple[str, bytes]:
        subj = f"crash-{n}-{i}"
        # Alternately kept in the row (under 4 KiB) and written to the blob store (9 KiB).
        lines = 4 if i % 2 else 128
        return subj, simple_message(subj, body=f"thread {n} message {i}\r\n" + ("x" * 70 + "\r\n") * lines)

    def worker(n: int) -> None:
        try:
            s = smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname="load.test", timeout=SMTP_TIMEOUT)
        except OSError:
            return
        with contextlib.suppress(smtplib.SMTPException, OSError), s:
            s.ehlo()
            for i in range(per_thread):
                subj, data = message(n, i)
                try:
                    s.mail("alice@remote.test")
                    s.rcpt(BOB)
                    code, _ = s.data(data)
                except (smtplib.SMTPException, OSError):
                    with lock:
                        unacked[subj] = data
                    return
                with lock:
                    (acked if code == 250 else unacked)[subj] = data

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads_n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if len(acked) >= 40:
                break
        time.sleep(0.02)
    r = srv.api().post("/api/v1/debug/faults", json={"target": "abort_before_commit"})
    assert r.status_code == 202, r.text
    code = srv.proc.wait(timeout=60)
    # The fault hit where it was meant to: inside a commit of a batch, by abort().
    assert code == -signal.SIGABRT, f"the process was to abort before a commit, not exit {code}"
    assert any(line["message"] == "fault injection: aborting before the commit" and line["fields"]["ops"] >= 2
               for line in srv.log_lines()), "no batch reached the armed commit"
    for t in threads:
        t.join(timeout=SMTP_TIMEOUT + 5)
    assert not any(t.is_alive() for t in threads), "client threads hung after the crash"
    with lock:
        acknowledged, in_flight = dict(acked), dict(unacked)
    assert len(acknowledged) < threads_n * per_thread, "the load ended before the crash"
    paths = {int(subj.rsplit("-", 1)[1]) % 2 for subj in acknowledged}
    assert paths == {0, 1}, "messages on both body paths were acknowledged before the crash"

    srv.start(first=False)
    api = srv.api(BOB, USER_PASSWORD)

    def stored_subjects() -> dict[str, dict]:
        stored: dict[str, dict] = {}
        for item in api.all_messages():
            assert item["subject"] not in stored, f"duplicate message {item['subject']}"
            stored[item["subject"]] = item
        return stored

    stored = stored_subjects()
    missing = sorted(set(acknowledged) - set(stored))
    assert not missing, f"{len(missing)} acknowledged messages lost: {missing[:10]}"
    assert set(stored) <= set(acknowledged) | set(in_flight), "a message nobody sent"
    # The aborted batch held two or more messages, none acknowledged and none committed.
    lost_in_flight = set(in_flight) - set(stored)
    assert len(lost_in_flight) >= 2, (len(in_flight), len(stored))
    for subj, data in acknowledged.items():
        raw = api.get(f"/api/v1/messages/{stored[subj]['id']}/raw")
        assert raw.status_code == 200, (subj, raw.text)
        assert raw.content.endswith(data), subj

    # The clients retry what was not acknowledged; each ends up stored exactly once.
    for subj in sorted(lost_in_flight):
        assert srv.send(BOB, in_flight[subj])[0] == 250
    stored = stored_subjects()
    assert set(stored) == set(acknowledged) | set(in_flight)
    for subj in lost_in_flight:
        raw = api.get(f"/api/v1/messages/{stored[subj]['id']}/raw")
        assert raw.content.endswith(in_flight[subj]), subj


# ---------------------------------------------------------------------- supervision


def send_with_retry(srv, subject: str, attempts: int = 20) -> list[int]:
    """Sends one message, retrying on 4xx (as a real client would). Returns the codes seen."""
    codes = []
    for _ in range(attempts):
        with contextlib.closing(srv.smtp()) as s:
            # This test is about supervision, not latency: on a loaded machine the fsyncs of
            # a commit can take seconds, and real clients wait minutes for the DATA reply.
            s.sock.settimeout(30)
            assert s.mail("alice@remote.test")[0] == 250
            assert s.rcpt(BOB)[0] == 250
            code, msg = s.data(simple_message(subject))
        codes.append(code)
        if code == 250:
            return codes
        assert 400 <= code < 500, (subject, code, msg)
        time.sleep(0.2)
    pytest.fail(f"{subject} never accepted: {codes}")


def test_storage_writer_fault_is_supervised(server):
    srv = server({"server": {"fault_injection": True}})
    setup_domain_and_user(srv)
    assert srv.send(BOB, simple_message("before fault"))[0] == 250
    admin = srv.api()
    assert_error(admin.post("/api/v1/debug/faults", json={"target": "nonsense"}), 400)

    r = admin.post("/api/v1/debug/faults", json={"target": "storage_writer"})
    assert r.status_code == 202, r.text
    all_codes = []
    for i in range(8):
        all_codes.append(send_with_retry(srv, f"after fault {i}"))
    # Only the first send may meet the failing writer.
    assert all(codes == [250] for codes in all_codes[1:]), all_codes
    assert len(all_codes[0]) <= 3, all_codes

    stored = subjects(srv)
    for i in range(8):
        assert stored.count(f"after fault {i}") == 1, stored
    assert "before fault" in stored

    restarts = srv.metric_value("mairust_actor_restarts_total", {"actor": "storage_writer"})
    assert restarts is not None and restarts >= 1, srv.metrics()
    assert requests.get(srv.base_url + "/health/ready", timeout=5).status_code == 200


def test_storage_writer_fault_under_concurrent_load(server):
    """Messages in flight when the writer dies get 4xx (never 250 without storage), and their
    retries are stored once. The fault is armed before the load starts, so the load's first
    group commit meets it: the test cannot pass with the fault missing the load."""
    srv = server({"server": {"fault_injection": True}})
    setup_domain_and_user(srv)
    acked, codes, lock = [], [], threading.Lock()
    start = threading.Barrier(5)

    def worker(n):
        start.wait(timeout=30)
        for i in range(6):
            subj = f"w{n}-{i}"
            seen = send_with_retry(srv, subj)
            with lock:
                acked.append(subj)
                codes.extend(seen)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    assert srv.api().post("/api/v1/debug/faults", json={"target": "storage_writer"}).status_code == 202
    start.wait(timeout=30)
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert any(400 <= c < 500 for c in codes), f"the fault hit no message in flight: {codes}"
    restarts = srv.metric_value("mairust_actor_restarts_total", {"actor": "storage_writer"})
    assert restarts is not None and restarts >= 1, "the writer did not fail and restart"
    stored = subjects(srv)
    assert sorted(stored) == sorted(acked), (sorted(stored), sorted(acked))


def test_session_fault_drops_one_connection_only(server):
    # A per-address limit of 2: the idle session and the victim fill it, so later connections
    # only get in if the panicked session freed its slot.
    srv = server({"server": {"fault_injection": True}, "smtp": {"max_connections_per_ip": 2}})
    setup_domain_and_user(srv)
    idle = srv.raw()  # a session that is already running is not affected
    try:
        idle.greet()
        r = srv.api().post("/api/v1/debug/faults", json={"target": "smtp_session"})
        assert r.status_code == 202, r.text
        with srv.raw() as victim:
            got = b""
            with contextlib.suppress(ConnectionError, OSError):
                victim.sock.settimeout(5)
                got = victim.sock.recv(1024)
            assert not got.startswith(b"220"), f"the faulted session greeted: {got!r}"
        # The listener keeps accepting, and sessions work.
        for i in range(3):
            # A just-closed connection may hold its slot for a moment: retry briefly.
            deadline = time.monotonic() + 3
            while True:
                with srv.raw() as r2:
                    code, _ = r2.reply()
                if code == 220 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert code == 220, "the listener stopped accepting, or the failed session kept its slot"
        # The last probe's slot is freed when the server notices the close: retry briefly.
        deadline = time.monotonic() + 3
        while True:
            try:
                result = srv.send(BOB, simple_message("after session fault"))
                break
            except smtplib.SMTPConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert result[0] == 250
        assert idle.cmd("NOOP")[0] == 250
    finally:
        idle.close()
    assert subjects(srv) == ["after session fault"]
    failures = srv.metric_value("mairust_smtp_session_failures_total")
    assert failures is not None and failures >= 1, srv.metrics()


@pytest.mark.sqlite_fs
def test_blob_store_failure_is_not_ready_and_never_250(server):
    """A body for the blob store that cannot be written gets 451, never 250; one small enough
    for its message's row needs only the database."""
    srv = server({"storage": {"inline_max_bytes": 1024}})
    setup_domain_and_user(srv)
    large = "y" * 70 + "\r\n"
    tmp = srv.data_dir / "mail" / "tmp"
    assert tmp.is_dir()
    for leftover in tmp.iterdir():
        leftover.unlink()
    tmp.rmdir()
    try:
        r = requests.get(srv.base_url + "/health/ready", timeout=10)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] != "ok" and body["checks"]["blob_store"] != "ok", body
        assert body["checks"]["database"] == "ok", body
        with contextlib.closing(srv.smtp()) as s:
            assert s.mail("alice@remote.test")[0] == 250
            assert s.rcpt(BOB)[0] == 250
            code, msg = s.data(simple_message("cannot be stored", body=large * 40))
        assert code == 451, (code, msg)
        assert msg.startswith(b"4.3.0"), msg
        assert srv.send(BOB, simple_message("small, in its row"))[0] == 250
    finally:
        tmp.mkdir(exist_ok=True)
    assert requests.get(srv.base_url + "/health/ready", timeout=10).status_code == 200
    assert srv.send(BOB, simple_message("stored again", body=large * 40))[0] == 250
    assert sorted(subjects(srv)) == ["small, in its row", "stored again"]
