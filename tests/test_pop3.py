"""POP3 and POP3S (the imap role) with real clients: Python's poplib line by line, and
fetchmail downloading a mailbox the way a user's machine does."""

from __future__ import annotations

import base64
import os
import poplib
import shutil
import socket
import subprocess
import time

import pytest

from conftest import USER_PASSWORD, free_ports, insecure_tls, setup_domain_and_user


def pop3_server(server):
    pop3, pop3s = free_ports(2)
    srv = server({"server": {"roles": ["smtp", "queue", "api", "imap"],
                             "pop3_port": pop3, "pop3s_port": pop3s}})
    srv.pop3_port, srv.pop3s_port = pop3, pop3s
    return srv


def deliver(srv, bob: str, n: int) -> None:
    for i in range(n):
        body = f"line one of {i}\r\n.a line that starts with a dot\r\n..and two\r\nlast\r\n"
        assert srv.send(bob, f"Subject: pop {i}\r\nFrom: a@remote.test\r\n\r\n{body}".encode())[0] == 250
    srv.api(bob, USER_PASSWORD).wait_messages(n)


def signed_in(srv, bob: str) -> poplib.POP3:
    pop = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=10)
    pop.stls(insecure_tls())
    pop.user(bob)
    pop.pass_(USER_PASSWORD)
    return pop


def test_a_client_reads_and_deletes_inbox_mail_after_stls(server):
    srv = pop3_server(server)
    [bob] = setup_domain_and_user(srv)
    deliver(srv, bob, 3)
    api = srv.api(bob, USER_PASSWORD)
    listed = list(reversed(api.messages()["items"]))  # oldest first, as POP3 numbers them

    pop = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=10)
    assert pop.getwelcome().startswith(b"+OK mx.example.test")
    capa = pop.capa()
    assert "STLS" in capa and "UIDL" in capa and "TOP" in capa and "USER" not in capa
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Use STLS"):
        pop.user(bob)
    pop.stls(insecure_tls())
    capa = pop.capa()
    assert "STLS" not in capa and "USER" in capa and capa.get("SASL") == ["PLAIN"]
    pop.user(bob)
    pop.pass_(USER_PASSWORD)

    count, total = pop.stat()
    assert count == 3
    sizes = [int(line.split()[1]) for line in pop.list()[1]]
    assert sum(sizes) == total
    uidls = [line.split()[1].decode() for line in pop.uidl()[1]]
    assert uidls == [m["id"] for m in listed], "UIDL is the message id the API shows"
    for n, message in enumerate(listed, start=1):
        raw = api.get(f"/api/v1/messages/{message['id']}/raw").content
        _, lines, octets = pop.retr(n)
        assert b"\r\n".join(lines) + b"\r\n" == raw, "RETR gives the bytes /raw gives"
        assert len(raw) == sizes[n - 1], "LIST's size is what RETR sends"
        assert b".a line that starts with a dot" in lines and b"..and two" in lines
    header = pop.top(1, 0)[1]
    assert b"Subject: pop 0" in header and b"line one of 0" not in header
    assert pop.top(1, 1)[1][-1] == b"line one of 0"

    pop.dele(1)
    with pytest.raises(poplib.error_proto, match="deleted"):
        pop.retr(1)
    pop.rset()
    pop.dele(2)
    assert pop.stat()[0] == 2
    with pytest.raises(poplib.error_proto, match="Unknown command"):
        pop._shortcmd("XYZZY")
    pop.quit()

    left = [m["subject"] for m in api.messages()["items"]]
    assert left == ["pop 2", "pop 0"], "only what was deleted at QUIT is gone"
    folders = {f["name"]: f for f in api.get("/api/v1/folders").json()["items"]}
    assert folders["INBOX"]["messages"] == 2


def test_a_dropped_connection_deletes_nothing(server):
    srv = pop3_server(server)
    [bob] = setup_domain_and_user(srv)
    deliver(srv, bob, 2)
    pop = signed_in(srv, bob)
    pop.dele(1)
    pop.dele(2)
    pop.sock.close()  # no QUIT: RFC 1939 leaves the maildrop as it was
    api = srv.api(bob, USER_PASSWORD)
    assert len(api.messages()["items"]) == 2


def test_pop3s_with_auth_plain_and_the_shared_throttle_counts_failures(server):
    srv = pop3_server(server)
    [bob] = setup_domain_and_user(srv)
    deliver(srv, bob, 1)

    def plain(password: str) -> str:
        return base64.b64encode(f"\0{bob}\0{password}".encode()).decode()

    pop = poplib.POP3_SSL("127.0.0.1", srv.pop3s_port, context=insecure_tls(), timeout=10)
    assert "STLS" not in pop.capa()
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Authentication failed"):
        pop._shortcmd("AUTH PLAIN " + plain("wrong password"))
    assert pop._shortcmd("AUTH PLAIN " + plain(USER_PASSWORD)).startswith(b"+OK Signed in; 1 messages")
    assert pop.stat()[0] == 1
    pop.quit()
    assert srv.metric_value("mairust_pop3_auth_failures_total") == 1
    assert srv.metric_value("mairust_pop3_sessions_total", {"listener": "pop3s"}) == 1
    assert srv.metric_value("mairust_pop3_commands_total", {"command": "AUTH", "result": "err"}) == 1


def raw_lines(srv, lines: list[bytes]) -> bytes:
    """What the server answers to `lines` sent at once, up to its close (bounded)."""
    with socket.create_connection(("127.0.0.1", srv.pop3_port), timeout=10) as s:
        s.recv(1024)
        s.sendall(b"".join(lines))
        out = b""
        while chunk := s.recv(65536):
            out += chunk
            if len(out) > 1_000_000:
                break
        return out


def test_bad_input_gets_an_error_and_a_flood_of_it_ends_the_connection(server):
    srv = pop3_server(server)
    setup_domain_and_user(srv)
    answer = raw_lines(srv, [b"HELO x\r\n", b"RETR 1\r\n", b"\xff\xfe\r\n", b"CAPA\r\n"])
    assert answer.count(b"-ERR") == 3 and answer.endswith(b"-ERR Too many bad commands; closing\r\n")
    assert b"Capability" not in answer, "nothing is answered after the close"
    answer = raw_lines(srv, [b"USER " + b"x" * 10_000 + b"\r\n"])
    assert answer == b"-ERR Line too long; closing\r\n"


def test_fetchmail_downloads_and_removes_the_mail(server, tmp_path):
    fetchmail = shutil.which("fetchmail")
    if fetchmail is None:
        pytest.skip("fetchmail is not installed (apt-get install fetchmail)")
    srv = pop3_server(server)
    [bob] = setup_domain_and_user(srv)
    deliver(srv, bob, 3)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f'poll 127.0.0.1 service {srv.pop3_port} protocol pop3 uidl\n'
        f'  user "{bob}" password "{USER_PASSWORD}" sslproto "tls1.2+" no sslcertck\n'
    )
    rc.chmod(0o600)
    batch = tmp_path / "batch.bsmtp"
    p = subprocess.run(
        [fetchmail, "--fetchmailrc", str(rc), "--nodetach", "--nosyslog", "--bsmtp", str(batch),
         "--idfile", str(tmp_path / "ids")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stdout + p.stderr
    got = batch.read_bytes()
    for i in range(3):
        assert f"Subject: pop {i}".encode() in got
    # BSMTP dot-stuffs again: the body line that starts with a dot arrives intact.
    assert b"\n..a line that starts with a dot" in got
    assert srv.api(bob, USER_PASSWORD).messages()["items"] == []


def test_a_stalled_tls_handshake_loses_its_slot(server):
    """A client that connects to POP3S and never starts TLS is dropped after 30 s instead of
    holding one of its address's connection slots for good."""
    srv = pop3_server(server)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", srv.pop3s_port), timeout=45) as s:
        assert s.recv(1024) == b"", "the server closed the connection"
    took = time.monotonic() - started
    assert 25 < took < 40, took
