"""IMAP and IMAPS (the imap role) with real clients: Python's imaplib as a mail client uses
it (STARTTLS, sign-in, folders, FETCH, STORE, SEARCH, APPEND, COPY, MOVE, EXPUNGE), IDLE over
a raw TLS socket, and the REST API and IMAP seeing each other's changes."""

from __future__ import annotations

import imaplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import USER_PASSWORD, free_ports, insecure_tls, setup_domain_and_user


def imap_server(server, **extra):
    imap, imaps, pop3, pop3s = free_ports(4)
    config = {"server": {"roles": ["smtp", "queue", "api", "imap"], "imap_port": imap,
                         "imaps_port": imaps, "pop3_port": pop3, "pop3s_port": pop3s}}
    for key, value in extra.items():
        config.setdefault(key, {}).update(value)
    srv = server(config)
    srv.imap_port, srv.imaps_port = imap, imaps
    return srv


def deliver(srv, bob: str, n: int, subject: str = "imap") -> None:
    for i in range(n):
        body = f"Subject: {subject} {i}\r\nFrom: Alice <alice@remote.test>\r\nTo: {bob}\r\n\r\nbody {i}\r\n"
        assert srv.send(bob, body.encode())[0] == 250


def signed_in(srv, bob: str) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps_port, ssl_context=insecure_tls(), timeout=10)
    imap.login(bob, USER_PASSWORD)
    return imap


def ok(result):
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def test_a_client_signs_in_after_starttls_and_reads_flags_and_expunges(server):
    srv = imap_server(server)
    [bob] = setup_domain_and_user(srv)
    deliver(srv, bob, 3)
    api = srv.api(bob, USER_PASSWORD)
    listed = list(reversed(api.wait_messages(3)))  # oldest first: sequence order

    imap = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=10)
    caps = imap.capabilities
    assert "STARTTLS" in caps and "LOGINDISABLED" in caps and "AUTH=PLAIN" not in caps
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        imap.login(bob, USER_PASSWORD)
    imap.starttls(insecure_tls())
    assert "AUTH=PLAIN" in imap.capabilities and "LOGINDISABLED" not in imap.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap.login(bob, "wrong password")
    ok(imap.login(bob, USER_PASSWORD))

    folders = b"\n".join(ok(imap.list()))
    for name, use in [(b"INBOX", None), (b"Sent", b"\\Sent"), (b"Drafts", b"\\Drafts"),
                      (b"Junk", b"\\Junk"), (b"Trash", b"\\Trash"), (b"Archive", b"\\Archive")]:
        line = next(l for l in folders.split(b"\n") if l.endswith(b'"/" ' + name) or l.endswith(b'"/" "' + name + b'"'))
        assert use is None or use in line, line

    count = ok(imap.select("INBOX"))
    assert count == [b"3"]
    assert re.match(rb"\d+", imap.untagged_responses["UIDVALIDITY"][0])
    data = ok(imap.fetch("1:*", "(UID FLAGS RFC822.SIZE)"))
    assert len(data) == 3 and all(b"FLAGS ()" in d for d in data), data
    for n, message in enumerate(listed, start=1):
        raw = api.get(f"/api/v1/messages/{message['id']}/raw").content
        size = int(re.search(rb"RFC822.SIZE (\d+)", data[n - 1]).group(1))
        assert size == len(raw), "RFC822.SIZE is the size of what BODY[] sends"
        peeked = ok(imap.fetch(str(n), "(BODY.PEEK[])"))
        assert peeked[0][1] == raw, "BODY[] is the message /raw serves"
    assert not any(m["seen"] for m in api.messages()["items"]), "PEEK sets no \\Seen"

    fetched = ok(imap.fetch("2", "(BODY[HEADER.FIELDS (SUBJECT)] ENVELOPE)"))
    assert fetched[0][1] == b"Subject: imap 1\r\n\r\n"
    assert b'"imap 1" (("Alice" NIL "alice" "remote.test"))' in fetched[1], fetched
    assert [m for m in api.messages()["items"] if m["id"] == listed[1]["id"]][0]["seen"], \
        "a non-PEEK BODY[] marks the message read, as the API shows"

    ok(imap.store("1", "+FLAGS", "(\\Deleted \\Flagged)"))
    expunged = ok(imap.expunge())
    assert expunged == [b"1"]
    assert len(api.messages()["items"]) == 2
    assert imap.logout()[0] == "BYE"


def test_append_copy_move_search_and_status(server):
    srv = imap_server(server)
    [bob] = setup_domain_and_user(srv)
    deliver(srv, bob, 2, subject="hello")
    deliver(srv, bob, 1, subject="invoice")
    imap = signed_in(srv, bob)

    draft = b"From: bob@example.test\r\nSubject: draft one\r\n\r\nnot yet\r\n"
    typ, data = imap.append("Drafts", "(\\Draft \\Seen)", None, draft)
    assert typ == "OK" and re.search(rb"\[APPENDUID \d+ 1\]", data[0]), data
    ok(imap.select("Drafts"))
    fetched = ok(imap.fetch("1", "(FLAGS BODY.PEEK[])"))
    assert b"\\Draft" in fetched[0][0] and b"\\Seen" in fetched[0][0]
    assert fetched[0][1].endswith(draft), "an APPENDed message keeps its bytes"
    with pytest.raises(imaplib.IMAP4.error, match="TRYCREATE"):
        typ, data = imap.append("Nowhere", None, None, draft)
        if typ != "OK":
            raise imaplib.IMAP4.error(data[0].decode())

    ok(imap.select("INBOX"))
    assert ok(imap.uid("SEARCH", None, "SUBJECT", "invoice")) == [b"3"]
    assert ok(imap.search(None, "UNSEEN", "NOT", "SUBJECT", "invoice")) == [b"1 2"]
    # (imaplib keeps a tagged reply's text only from its plain command call.)
    typ, data = imap._simple_command("UID", "COPY", "1", "Archive")
    assert typ == "OK" and re.search(rb"\[COPYUID \d+ 1 1\]", data[0]), data
    ok(imap._simple_command("UID", "MOVE", "2:3", "Trash"))
    assert imap.untagged_responses.get("EXPUNGE") == [b"3", b"2"], imap.untagged_responses
    assert re.search(rb"COPYUID \d+ 2:3 1:2", imap.untagged_responses["OK"][-1])
    status = ok(imap.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)"))
    assert b"MESSAGES 1" in status[0] and b"UIDNEXT 4" in status[0], status
    status = ok(imap.status("Trash", "(MESSAGES)"))
    assert b"MESSAGES 2" in status[0]
    status = ok(imap.status("Archive", "(MESSAGES)"))
    assert b"MESSAGES 1" in status[0]

    ok(imap.create("Projects/2026"))
    folders = b"\n".join(ok(imap.list('""', "Projects/%")))
    assert b"Projects/2026" in folders
    assert b"\\HasChildren" in b"\n".join(ok(imap.list('""', "Projects")))
    ok(imap.rename("Projects/2026", "Projects/Done"))
    ok(imap.delete("Projects/Done"))
    with pytest.raises(imaplib.IMAP4.error, match="NONEXISTENT"):
        typ, data = imap.select("Projects/Done")
        if typ != "OK":
            raise imaplib.IMAP4.error(data[0].decode())
    # Names beyond ASCII travel in modified UTF-7.
    ok(imap.create("&AMk-t&AOk-"))  # "Été"
    api = srv.api(bob, USER_PASSWORD)
    assert "Été" in [f["name"] for f in api.get("/api/v1/folders").json()["items"]]
    imap.logout()


def read_until(sock, pattern: bytes, timeout: float) -> bytes:
    sock.settimeout(timeout)
    got = b""
    deadline = time.monotonic() + timeout
    while pattern not in got:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} within {timeout}s; got {got!r}")
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed; got {got!r}")
        got += chunk
    return got


def test_idle_reports_new_mail_and_changes_made_through_the_api(server):
    srv = imap_server(server)
    [bob] = setup_domain_and_user(srv)
    deliver(srv, bob, 1)
    api = srv.api(bob, USER_PASSWORD)
    [first] = api.wait_messages(1)

    raw = socket.create_connection(("127.0.0.1", srv.imaps_port), timeout=10)
    sock = insecure_tls().wrap_socket(raw, server_hostname="mx.example.test")
    read_until(sock, b"IMAP ready\r\n", 5)
    sock.sendall(f"a LOGIN {bob} \"{USER_PASSWORD}\"\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
    read_until(sock, b"+ idling\r\n", 5)
    assert srv.metric_value("mairust_imap_idle_sessions") == 1

    started = time.monotonic()
    deliver(srv, bob, 1, subject="while idling")
    read_until(sock, b"* 2 EXISTS\r\n", 3)
    assert time.monotonic() - started < 2.0

    r = api.patch(f"/api/v1/messages/{first['id']}", json={"seen": True, "flagged": True})
    assert r.status_code == 200, r.text
    read_until(sock, b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Seen))\r\n", 3)

    sock.sendall(b"DONE\r\n")
    read_until(sock, b"c OK IDLE terminated\r\n", 3)
    assert srv.metric_value("mairust_imap_idle_sessions") == 0
    sock.sendall(b"d LOGOUT\r\n")
    read_until(sock, b"d OK", 3)
    sock.close()


def test_bad_input_gets_clear_answers(server):
    srv = imap_server(server, smtp={"max_message_size": 1000})
    [bob] = setup_domain_and_user(srv)
    raw = socket.create_connection(("127.0.0.1", srv.imaps_port), timeout=10)
    sock = insecure_tls().wrap_socket(raw, server_hostname="mx.example.test")
    read_until(sock, b"IMAP ready\r\n", 5)
    sock.sendall(b"a1 FROBNICATE\r\n")
    read_until(sock, b"a1 BAD", 3)
    sock.sendall(b"a1b NOOP\r\n")
    read_until(sock, b"a1b OK", 3)
    sock.sendall(b"a2 SELECT INBOX\r\n")
    read_until(sock, b"a2 BAD Sign in first", 3)
    sock.sendall(f"a3 LOGIN {bob} \"{USER_PASSWORD}\"\r\n".encode())
    read_until(sock, b"a3 OK", 3)
    sock.sendall(b"a4 APPEND INBOX {5000}\r\n")
    read_until(sock, b"a4 NO [TOOBIG]", 3)
    sock.sendall(b"a5 FETCH 1 FLAGS\r\n")
    read_until(sock, b"a5 BAD Select a mailbox first", 3)
    sock.sendall(b"a6 APPEND INBOX {20}\r\n")
    read_until(sock, b"+ ", 3)
    sock.sendall(b"From: a@b\r\nFrom: c@d\r\n")
    sock.sendall(b"\r\n")
    read_until(sock, b"a6 NO", 3)
    sock.sendall(b"a7 SELECT INBOX\r\na8 FETCH 1:* (BINARY.PEEK[1])\r\n")
    read_until(sock, b"a8 BAD", 3)
    sock.close()


def mbsync_config(srv, bob: str, root) -> str:
    cert = srv.data_dir / "tls" / "cert.pem"
    (root / "mail").mkdir(exist_ok=True)
    config = root / "mbsyncrc"
    config.write_text(f"""IMAPAccount mairust
Host 127.0.0.1
Port {srv.imaps_port}
User {bob}
Pass {USER_PASSWORD}
SSLType IMAPS
CertificateFile {cert}

IMAPStore remote
Account mairust

MaildirStore local
Path {root}/mail/
Inbox {root}/mail/INBOX
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")
    return str(config)


def mbsync(config: str) -> str:
    done = subprocess.run(["mbsync", "-c", config, "all"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"mbsync failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def maildir_files(folder) -> list:
    return sorted([*(folder / "cur").iterdir(), *(folder / "new").iterdir()])


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync (Debian isync) is not installed")
def test_mbsync_mirrors_the_mailbox_both_ways(server, tmp_path):
    srv = imap_server(server)
    [bob] = setup_domain_and_user(srv)
    deliver(srv, bob, 3)
    api = srv.api(bob, USER_PASSWORD)
    listed = list(reversed(api.wait_messages(3)))
    config = mbsync_config(srv, bob, tmp_path)

    mbsync(config)
    inbox = tmp_path / "mail" / "INBOX"
    files = maildir_files(inbox)
    assert len(files) == 3
    raws = {api.get(f"/api/v1/messages/{m['id']}/raw").content for m in listed}
    # mbsync adds its own X-TUID field to the copies it stores, with LF line ends.
    local = {re.sub(rb"X-TUID: [^\r\n]*\r?\n", b"", f.read_bytes()).replace(b"\n", b"\r\n")
             for f in files}
    assert local == raws, "mbsync stores the bytes /raw serves"
    for name in ["Sent", "Drafts", "Junk", "Trash", "Archive"]:
        assert (tmp_path / "mail" / name / "cur").is_dir(), f"{name} mirrored"

    # The user reads one message and deletes another locally, and saves a draft.
    read, doomed = files[0], files[1]
    read.rename(inbox / "cur" / (read.name.split(":2,")[0] + ":2,S"))
    doomed.unlink()
    drafts = tmp_path / "mail" / "Drafts"
    (drafts / "cur" / "1700000000.1.local:2,DS").write_bytes(
        b"From: bob@example.test\nSubject: from mbsync\n\ndraft body\n")
    mbsync(config)
    items = api.messages()["items"]
    assert len(items) == 2, "the message deleted locally is gone from the server"
    assert sum(m["seen"] for m in items) == 1, "the local read state reached the server"
    drafts_listed = api.messages(folder="Drafts")["items"]
    assert [m["subject"] for m in drafts_listed] == ["from mbsync"]

    # Nothing changed: a third run changes nothing on either side.
    before = sorted(p.name for p in inbox.rglob("*") if p.is_file())
    mbsync(config)
    assert sorted(p.name for p in inbox.rglob("*") if p.is_file()) == before
    assert len(api.messages()["items"]) == 2


class Raw:
    """A raw IMAPS session: commands in, every line up to the tagged reply out."""

    def __init__(self, srv, bob: str):
        raw = socket.create_connection(("127.0.0.1", srv.imaps_port), timeout=10)
        self.sock = insecure_tls().wrap_socket(raw, server_hostname="mx.example.test")
        self.buf = read_until(self.sock, b"IMAP ready\r\n", 5)
        self.n = 0
        self.run(f'LOGIN {bob} "{USER_PASSWORD}"')

    def run(self, command: str, expect: str = "OK") -> str:
        self.n += 1
        tag = f"t{self.n}"
        self.sock.sendall(f"{tag} {command}\r\n".encode())
        got = b""
        deadline = time.monotonic() + 5
        while not re.search(rb"(^|\r\n)" + tag.encode() + rb" [^\r\n]*\r\n$", got):
            assert time.monotonic() < deadline, f"no reply to {command!r}; got {got!r}"
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed; got {got!r}"
            got += chunk
        text = got.decode()
        last = text.rstrip("\r\n").split("\r\n")[-1]
        assert last.startswith(f"{tag} {expect}"), text
        return text


def test_condstore_and_qresync_resynchronise_a_client(server):
    srv = imap_server(server)
    [bob] = setup_domain_and_user(srv)
    deliver(srv, bob, 3)
    api = srv.api(bob, USER_PASSWORD)
    listed = list(reversed(api.wait_messages(3)))

    first = Raw(srv, bob)
    assert "CONDSTORE" in first.run("CAPABILITY") and "QRESYNC" in first.run("CAPABILITY")
    assert "* ENABLED QRESYNC" in first.run("ENABLE QRESYNC")
    selected = first.run("SELECT INBOX")
    uidvalidity = int(re.search(r"UIDVALIDITY (\d+)", selected).group(1))
    since = int(re.search(r"\[HIGHESTMODSEQ (\d+)\]", selected).group(1))

    # Changes made elsewhere: read through the API, one deleted, one new.
    assert api.patch(f"/api/v1/messages/{listed[0]['id']}", json={"seen": True}).status_code == 200
    assert api.delete(f"/api/v1/messages/{listed[1]['id']}").status_code == 204
    deliver(srv, bob, 1, subject="later")

    # The open session hears of the expunge as VANISHED (QRESYNC), with MODSEQs.
    noop = first.run("NOOP")
    assert "* VANISHED 2\r\n" in noop and " EXPUNGE" not in noop, noop
    assert re.search(r"\* 1 FETCH \(UID 1 FLAGS \(\\Seen\) MODSEQ \(\d+\)\)", noop), noop
    assert "* 3 EXISTS" in noop, noop

    # A client coming back with its old state learns exactly what changed.
    second = Raw(srv, bob)
    second.run("ENABLE QRESYNC")
    resync = second.run(f"SELECT INBOX (QRESYNC ({uidvalidity} {since} 1:3))")
    assert "* VANISHED (EARLIER) 2\r\n" in resync, resync
    assert re.search(r"\* 1 FETCH \(UID 1 FLAGS \(\\Seen\) MODSEQ \(\d+\)\)", resync), resync
    assert re.search(r"\* 3 FETCH \(UID 4 FLAGS \(\) MODSEQ \(\d+\)\)", resync), resync
    assert "UID 3 " not in resync, "an unchanged message is not repeated"
    fetched = second.run(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {since} VANISHED)")
    assert "* VANISHED (EARLIER) 2\r\n" in fetched and "UID 3 " not in fetched, fetched

    # STORE UNCHANGEDSINCE: a message changed after the client's modseq is left alone.
    stale = second.run("UID STORE 1 (UNCHANGEDSINCE 1) +FLAGS (\\Flagged)")
    assert "[MODIFIED 1]" in stale and "\\Flagged" not in stale, stale
    now = int(re.search(r"UID 1 FLAGS \(\\Seen\) MODSEQ \((\d+)\)", resync).group(1))
    stored = second.run(f"UID STORE 1 (UNCHANGEDSINCE {now}) +FLAGS.SILENT (\\Flagged)")
    after = int(re.search(r"UID 1 FLAGS \(\\Flagged \\Seen\) MODSEQ \((\d+)\)", stored).group(1))
    assert after > now and "MODIFIED" not in stored, stored
    assert [m for m in api.messages()["items"] if m["id"] == listed[0]["id"]][0]["flagged"]

    found = second.run(f"UID SEARCH MODSEQ {after}")
    assert f"* SEARCH 1 (MODSEQ {after})" in found, found
    found = second.run(f"UID SEARCH MODSEQ {now + 1}")
    assert f"* SEARCH 1 4 (MODSEQ {after})" in found, "the new message changed after the read"
    status = second.run("STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
    assert f"HIGHESTMODSEQ {after}" in status and "MESSAGES 3" in status, status
    # Selecting another folder closes the first one explicitly.
    assert "* OK [CLOSED]" in second.run("SELECT Sent")


def test_a_clients_copy_of_what_save_to_sent_filed_is_not_stored_twice(server):
    srv = imap_server(server, submission={"save_to_sent": True})
    [bob] = setup_domain_and_user(srv)
    message = (f"From: {bob}\r\nTo: carol@remote.test\r\nSubject: sent once\r\n"
               f"Message-ID: <once@example.test>\r\n\r\nhello\r\n").encode()
    with srv.submission(bob, USER_PASSWORD) as s:
        assert s.sendmail(bob, ["carol@remote.test"], message) == {}
    imap = signed_in(srv, bob)
    # The client APPENDs its own copy to Sent, as Thunderbird does after sending.
    typ, data = imap.append("Sent", "(\\Seen)", None, message)
    assert typ == "OK" and b"APPENDUID" in data[0], data
    assert ok(imap.select("Sent")) == [b"1"], "one copy in Sent"
    # Another message (another Message-ID) and the same one in another folder are stored.
    other = message.replace(b"<once@", b"<twice@")
    ok(imap.append("Sent", None, None, other))
    ok(imap.append("Drafts", None, None, message))
    assert ok(imap.status("Sent", "(MESSAGES)"))[0].endswith(b"(MESSAGES 2)")
    assert ok(imap.status("Drafts", "(MESSAGES)"))[0].endswith(b"(MESSAGES 1)")
    imap.logout()


def test_quota_and_folder_size_are_reported_and_append_respects_the_quota(server):
    srv = imap_server(server)
    [bob] = setup_domain_and_user(srv, quota_bytes=4096)
    [carol] = setup_domain_and_user(srv, domain="other.test", users=("carol",))
    deliver(srv, bob, 2)
    api = srv.api(bob, USER_PASSWORD)
    sizes = [len(api.get(f"/api/v1/messages/{m['id']}/raw").content) for m in api.wait_messages(2)]
    imap = signed_in(srv, bob)
    assert "QUOTA" in imap.capabilities and "STATUS=SIZE" in imap.capabilities
    typ, data = imap.getquotaroot("INBOX")
    assert typ == "OK", data
    roots, quotas = data
    assert roots == [b'"INBOX" ""'], roots
    used = int(re.search(rb"STORAGE (\d+) 4\)", quotas[0]).group(1))
    assert used * 1024 >= sum(sizes) - 2 * 100 and used <= 4, (used, sizes)
    status = ok(imap.status("INBOX", "(SIZE MESSAGES)"))[0]
    # SIZE counts what FETCH sends; the stored bytes behind the quota lack the Return-Path.
    assert f"SIZE {sum(sizes)}".encode() in status, (status, sizes)
    # Filled to the quota: APPEND is refused, naming why.
    big = b"Subject: big\r\n\r\n" + b"x" * 4000 + b"\r\n"
    ok(imap.append("Drafts", None, None, big))
    typ, data = imap.append("Drafts", None, None, big)
    assert typ == "NO" and b"[OVERQUOTA]" in data[0], (typ, data)
    imap.logout()
    # Without a quota there is no quota root.
    unlimited = signed_in(srv, carol)
    typ, data = unlimited.getquotaroot("INBOX")
    assert typ == "OK" and data[0] == [b'"INBOX"'], data
    unlimited.logout()


def test_strangers_and_greedy_accounts_are_cut_off(server):
    srv = imap_server(server, imap={"max_connections_per_user": 2})
    [bob] = setup_domain_and_user(srv)
    # Three invalid commands in a row before sign-in end the connection.
    raw = socket.create_connection(("127.0.0.1", srv.imaps_port), timeout=10)
    sock = insecure_tls().wrap_socket(raw, server_hostname="mx.example.test")
    read_until(sock, b"IMAP ready\r\n", 5)
    sock.sendall(b"x1 HELO\r\nx2 EHLO\r\nx3 GET / HTTP/1.0\r\n")
    got = read_until(sock, b"* BYE Too many invalid commands\r\n", 3)
    assert got.count(b" BAD ") == 3
    sock.settimeout(3)
    assert sock.recv(100) == b"", "the server closed the connection"
    # At most max_connections_per_user sessions of one account at once.
    first, second = signed_in(srv, bob), signed_in(srv, bob)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[LIMIT\]"):
        signed_in(srv, bob)
    first.logout()
    third = signed_in(srv, bob)
    third.logout()
    second.logout()


def test_sigkill_while_clients_append_and_smtp_accepts_keeps_every_acknowledged_message(server):
    srv = imap_server(server)
    [bob] = setup_domain_and_user(srv)
    appended: dict[str, int] = {}  # subject -> the UID APPENDUID gave
    accepted: set[str] = set()
    lock = threading.Lock()
    killed = threading.Event()
    failures: list[str] = []

    def appender(n: int) -> None:
        try:
            imap = signed_in(srv, bob)
            for i in range(5000):
                subject = f"append-{n}-{i}"
                body = f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\n{'y' * 300}\r\n"
                typ, data = imap.append("Drafts", None, None, body.encode())
                if typ == "OK":
                    uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
                    with lock:
                        appended[subject] = uid
        except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError) as e:
            if not killed.is_set():
                failures.append(f"appender {n}: {e!r}")

    def sender(n: int) -> None:
        try:
            with srv.smtp() as s:
                for i in range(5000):
                    subject = f"smtp-{n}-{i}"
                    s.mail("alice@remote.test")
                    s.rcpt(bob)
                    if s.data(f"Subject: {subject}\r\n\r\nhello\r\n".encode())[0] == 250:
                        with lock:
                            accepted.add(subject)
        except (OSError, smtplib.SMTPException) as e:
            if not killed.is_set():
                failures.append(f"sender {n}: {e!r}")

    threads = [threading.Thread(target=appender, args=(n,), daemon=True) for n in range(4)]
    threads += [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if len(appended) >= 40 and len(accepted) >= 20:
                break
        time.sleep(0.05)
    killed.set()
    srv.kill()
    for t in threads:
        t.join(timeout=30)
    assert not failures, failures
    with lock:
        appended_now, accepted_now = dict(appended), set(accepted)
    assert appended_now and accepted_now, "nothing was acknowledged before the kill"

    srv.start(first=False)
    imap = signed_in(srv, bob)
    for folder, acknowledged in [("Drafts", set(appended_now)), ("INBOX", accepted_now)]:
        ok(imap.select(folder))
        fetched = ok(imap.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
        uids: dict[str, int] = {}
        for item in fetched:
            if not isinstance(item, tuple):
                continue
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            subject = item[1].decode().split(":", 1)[1].strip()
            assert subject not in uids, f"{subject} stored twice"
            uids[subject] = uid
        assert len(set(uids.values())) == len(uids), "a UID repeats"
        missing = sorted(acknowledged - set(uids))
        assert not missing, f"{len(missing)} acknowledged messages lost from {folder}: {missing[:5]}"
        if folder == "Drafts":
            moved = {s: (u, uids[s]) for s, u in appended_now.items() if uids[s] != u}
            assert not moved, f"UIDs changed across the crash: {list(moved.items())[:5]}"
    imap.logout()


def test_a_folder_deleted_under_a_session_ends_that_session(server):
    srv = imap_server(server)
    [bob] = setup_domain_and_user(srv)
    watcher, other = Raw(srv, bob), Raw(srv, bob)
    watcher.run("CREATE Projects")
    watcher.run("SELECT Projects")
    other.run("DELETE Projects")
    out = watcher.run("NOOP")
    assert "* BYE [NONEXISTENT]" in out, out
    watcher.sock.settimeout(3)
    assert watcher.sock.recv(100) == b"", "the session ended"
    other.run("LOGOUT")


def test_list_extended_and_list_status(server):
    srv = imap_server(server)
    [bob] = setup_domain_and_user(srv)
    deliver(srv, bob, 2)
    client = Raw(srv, bob)
    caps = client.run("CAPABILITY")
    assert "LIST-EXTENDED" in caps and "LIST-STATUS" in caps
    client.run("UNSUBSCRIBE Junk")
    subscribed = client.run('LIST (SUBSCRIBED) "" "*"')
    assert '* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"' in subscribed, subscribed
    assert "Junk" not in subscribed and "\\Subscribed \\Sent" in subscribed, subscribed
    special = client.run('LIST (SPECIAL-USE) "" "*" RETURN (STATUS (MESSAGES UNSEEN))')
    assert "INBOX" not in special and special.count("* LIST ") == 5, special
    assert '* STATUS "Junk" (MESSAGES 0 UNSEEN 0)' in special, special
    several = client.run('LIST "" ("INBOX" "Sent") RETURN (STATUS (MESSAGES UNSEEN))')
    assert several.count("* LIST ") == 2, several
    assert '* STATUS "INBOX" (MESSAGES 2 UNSEEN 2)' in several, several
    lsub = client.run('LSUB "" "*"')
    assert "Junk" not in lsub and "\\Subscribed" not in lsub, lsub
    client.run('LIST (BOGUS) "" "*"', expect="BAD")


def test_esearch_returns_what_was_asked(server):
    srv = imap_server(server)
    [bob] = setup_domain_and_user(srv)
    deliver(srv, bob, 5)
    client = Raw(srv, bob)
    assert "ESEARCH" in client.run("CAPABILITY")
    client.run("SELECT INBOX")
    client.run("STORE 2 +FLAGS (\\Seen)")
    out = client.run("UID SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
    assert '* ESEARCH (TAG "t5") UID MIN 1 MAX 5 COUNT 4 ALL 1,3:5\r\n' in out, out
    out = client.run("SEARCH RETURN () SEEN")
    assert '* ESEARCH (TAG "t6") ALL 2\r\n' in out, out
    out = client.run("SEARCH RETURN (COUNT) SUBJECT nothing-like-this")
    assert '* ESEARCH (TAG "t7") COUNT 0\r\n' in out, out
    # A plain SEARCH after them answers as before.
    assert "* SEARCH 2\r\n" in client.run("SEARCH SEEN")
