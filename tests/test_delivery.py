"""Outbound delivery: the partitioned queue, the SMTP client, retries, bounces, DKIM, and the
queue and send APIs, against real receiving SMTP servers (aiosmtpd) on loopback and a real DNS
server (dnsmasq) for MX routing.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP

from conftest import (
    ADMIN_EMAIL,
    DOMAIN,
    USER_PASSWORD,
    Server,
    free_ports,
    metric_value,
    run_cli,
    setup_domain_and_user,
    simple_message,
)

REMOTE = "remote.test"


class Receiver:
    """A real SMTP server (aiosmtpd) that records what it receives.

    Behaviour by recipient local part: `reject*` gets `550 5.1.1` at RCPT; `tempfail*` gets
    `451 4.3.0` at RCPT while `self.tempfail_left` > 0 (then accepts); `always451*` always
    gets `451`. With `tls_cert` it offers STARTTLS.
    """

    def __init__(
        self,
        tls_cert: tuple[Path, Path] | None = None,
        require_tls: bool = False,
        credentials: tuple[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        idle_timeout: float = 300,
    ):
        self.messages: list[dict] = []
        self.sessions: set[int] = set()
        self.quits: list[tuple[int, float]] = []
        self.tempfail_left = 1
        self.data_delay = 0.0
        self.lock = threading.Lock()
        self.host = host
        self.port = port or free_ports(1)[0]
        kwargs = {}
        if tls_cert:
            import ssl

            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls_cert[0]), str(tls_cert[1]))
            kwargs = {"tls_context": ctx, "require_starttls": require_tls}
        self.logins: list[str] = []
        if credentials:
            from aiosmtpd.smtp import AuthResult

            def authenticator(server, session, envelope, mechanism, auth_data):
                ok = (auth_data.login.decode(), auth_data.password.decode()) == credentials
                self.logins.append(f"{mechanism}:{auth_data.login.decode()}:{ok}")
                return AuthResult(success=ok, handled=False)

            kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=True)
        self.controller = Controller(
            self, hostname=host, port=self.port, enable_SMTPUTF8=True, timeout=idle_timeout, **kwargs
        )
        self.controller.start()

    def stop(self):
        with contextlib.suppress(Exception):
            self.controller.stop()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.sessions.add(id(session))
        session.host_name = hostname
        return responses

    async def handle_QUIT(self, server, session, envelope):
        with self.lock:
            self.quits.append((id(session), time.monotonic()))
        return "221 Bye"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("reject"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if local.startswith("always451"):
            return "451 4.3.0 Try again later"
        if local.startswith("tempfail"):
            with self.lock:
                if self.tempfail_left > 0:
                    self.tempfail_left -= 1
                    return "451 4.3.0 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            import asyncio

            await asyncio.sleep(self.data_delay)
        with self.lock:
            self.messages.append(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "content": bytes(envelope.original_content or envelope.content),
                    "tls": session.ssl is not None,
                    "session": id(session),
                }
            )
        return "250 2.0.0 Message accepted for delivery"

    def wait(self, n: int, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            raise AssertionError(f"expected {n} messages, got {len(self.messages)}")


class Dns:
    """dnsmasq on a loopback port serving MX and A records for the test domains."""

    def __init__(self, root: Path, records: list[str]):
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not Path(binary).exists():
            pytest.fail("dnsmasq is not installed (apt-get install dnsmasq-base; .ci/run does it)")
        self.port = free_ports(1)[0]
        self.log = open(root / "dnsmasq.log", "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                f"--port={self.port}",
                "--pid-file=",
                *records,
            ],
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", self.port))
                except OSError:
                    return  # taken: dnsmasq is listening
            time.sleep(0.05)
        raise AssertionError("dnsmasq did not start")

    def stop(self):
        self.proc.terminate()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        self.log.close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**kwargs) -> Receiver:
        r = Receiver(**kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def delivery_overrides(**delivery) -> dict:
    base = {
        "retry_intervals": ["1s"],
        "connect_timeout": "2s",
        "command_timeout": "10s",
        "data_timeout": "10s",
    }
    base.update(delivery)
    return {"delivery": base, "queue": {"lease_ttl": "2s", "poll_interval": "1s"}}


def relay_server(server, rcv: Receiver, **delivery) -> Server:
    srv = server(delivery_overrides(relay_host=f"127.0.0.1:{rcv.port}", **delivery))
    setup_domain_and_user(srv, users=("bob", "carol"))
    return srv


def submit(srv: Server, to: list[str], subject: str, sender: str = f"bob@{DOMAIN}", body: str = "Hello.\r\n") -> None:
    msg = (
        f"From: {sender}\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n\r\n{body}"
    ).encode()
    with contextlib.closing(srv.submission(sender, USER_PASSWORD)) as s:
        s.sendmail(sender, to, msg)


def queue_items(srv: Server, **params) -> list[dict]:
    r = srv.api().get("/api/v1/queue", params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def wait_queue(srv: Server, predicate, timeout: float = 15.0, **params) -> list[dict]:
    deadline = time.monotonic() + timeout
    items: list[dict] = []
    while time.monotonic() < deadline:
        items = queue_items(srv, **params)
        if predicate(items):
            return items
        time.sleep(0.1)
    raise AssertionError(f"queue never matched; last: {items}")


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_submission_to_a_remote_domain_goes_through_the_relay(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    submit(srv, [f"alice@{REMOTE}", f"carol@{DOMAIN}"], "over the relay")
    got = rcv.wait(1)
    assert got[0]["mail_from"] == f"bob@{DOMAIN}"
    assert got[0]["rcpt_tos"] == [f"alice@{REMOTE}"]
    msg = parse(got[0]["content"])
    assert msg["Subject"] == "over the relay"
    assert "mx.example.test" in msg["Received"]
    # The local recipient got it directly, not through the queue.
    assert [m["subject"] for m in srv.api(f"carol@{DOMAIN}", USER_PASSWORD).all_messages()] == ["over the relay"]
    items = wait_queue(srv, lambda i: i and i[0]["status"] == "delivered")
    assert len(items) == 1
    item = items[0]
    assert item["recipient"] == f"alice@{REMOTE}" and item["domain"] == REMOTE
    assert item["attempts"] == 1 and item["last_error"] is None
    assert item["owner"] and 0 <= item["partition"] < 64
    time.sleep(1.0)
    assert len(rcv.messages) == 1, "delivered exactly once"


def test_port_25_still_refuses_relaying(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    with contextlib.closing(srv.smtp()) as s:
        s.mail("someone@elsewhere.test")
        code, msg = s.rcpt(f"alice@{REMOTE}")
    assert code == 554 and b"5.7.1" in msg


def test_mx_routing_through_a_real_dns_server(server, receiver, tmp_path):
    rcv = receiver()
    dns = Dns(
        tmp_path,
        [
            f"--mx-host={REMOTE},mx1.{REMOTE},10",
            f"--address=/mx1.{REMOTE}/127.0.0.1",
            "--address=/nowhere.test/",
            # No MX: RFC 5321 §5.1 falls back to the domain's own address.
            "--host-record=fallback.test,127.0.0.1",
            "--local=/fallback.test/",
            # Null MX (RFC 7505): the domain accepts no mail at all.
            "--mx-host=nullmx.test,.,0",
        ],
    )
    try:
        srv = server(delivery_overrides(dns_servers=[f"127.0.0.1:{dns.port}"], port=rcv.port))
        setup_domain_and_user(srv, users=("bob",))
        submit(srv, [f"alice@{REMOTE}"], "via MX")
        got = rcv.wait(1)
        assert got[0]["rcpt_tos"] == [f"alice@{REMOTE}"]
        # A domain that does not exist fails at once and bounces.
        submit(srv, ["x@nowhere.test"], "to nowhere")
        items = wait_queue(srv, lambda i: i and i[0]["status"] == "failed", domain="nowhere.test")
        assert "does not exist" in items[0]["last_error"]
        bounces = srv.api(f"bob@{DOMAIN}", USER_PASSWORD).wait_messages(1)
        assert bounces[0]["subject"] == "Undelivered Mail Returned to Sender"

        submit(srv, ["carol@fallback.test"], "via the A record")
        items = wait_queue(srv, lambda i: i and i[0]["status"] != "queued", domain="fallback.test")
        assert items[0]["status"] == "delivered", items[0]["last_error"]
        assert rcv.wait(2)[1]["rcpt_tos"] == ["carol@fallback.test"]

        submit(srv, ["x@nullmx.test"], "to a null MX")
        items = wait_queue(srv, lambda i: i and i[0]["status"] == "failed", domain="nullmx.test")
        assert "null MX" in items[0]["last_error"] and items[0]["attempts"] == 1, items[0]
        srv.api(f"bob@{DOMAIN}", USER_PASSWORD).wait_messages(2)
    finally:
        dns.stop()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "rcv.pem", tmp_path / "rcv.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=mx.remote.test", "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_starttls_to_the_receiver(server, receiver, tmp_path):
    rcv = receiver(tls_cert=self_signed(tmp_path), require_tls=True)
    srv = relay_server(server, rcv, tls="required")
    submit(srv, [f"alice@{REMOTE}"], "encrypted")
    got = rcv.wait(1)
    assert got[0]["tls"] is True


def test_smarthost_auth_after_starttls(server, receiver, tmp_path):
    rcv = receiver(tls_cert=self_signed(tmp_path), credentials=("relayuser", "relay-secret"))
    srv = relay_server(server, rcv, relay_auth={"username": "relayuser", "password": "relay-secret"})
    submit(srv, [f"alice@{REMOTE}"], "authenticated relay")
    got = rcv.wait(1)
    assert got[0]["tls"] is True
    assert any(login.endswith(":relayuser:True") for login in rcv.logins), rcv.logins


def test_smarthost_password_sealed_with_the_master_key(server, receiver, tmp_path):
    rcv = receiver(tls_cert=self_signed(tmp_path), credentials=("relayuser", "relay-secret"))
    key = run_cli(["key", "generate"]).stdout.strip()
    sealed = run_cli(["key", "seal", "--value", "relay-secret"], env={"MAIRUST_MASTER_KEY": key})
    assert sealed.returncode == 0, sealed.stderr
    password = sealed.stdout.strip()
    assert password.startswith("enc:v1:") and "relay-secret" not in password
    overrides = delivery_overrides(
        relay_host=f"127.0.0.1:{rcv.port}",
        relay_auth={"username": "relayuser", "password": password},
    )
    # Without the key the sealed password is useless, and start-up says why.
    locked = server(overrides, start=False)
    with pytest.raises(Exception) as err:
        locked.start()
    assert "relay_auth.password is encrypted" in str(err.value)
    srv = server(overrides, env={"MAIRUST_MASTER_KEY": key})
    setup_domain_and_user(srv, users=("bob", "carol"))
    submit(srv, [f"alice@{REMOTE}"], "sealed relay password")
    assert rcv.wait(1)[0]["tls"] is True
    assert any(login.endswith(":relayuser:True") for login in rcv.logins), rcv.logins


def test_smarthost_auth_failure_defers(server, receiver, tmp_path):
    rcv = receiver(tls_cert=self_signed(tmp_path), credentials=("relayuser", "relay-secret"))
    srv = relay_server(server, rcv, relay_auth={"username": "relayuser", "password": "wrong"})
    submit(srv, [f"alice@{REMOTE}"], "bad relay password")
    items = wait_queue(srv, lambda i: i and i[0]["status"] == "deferred")
    assert "AUTH" in items[0]["last_error"]
    assert rcv.messages == []


def test_required_tls_without_starttls_defers(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv, tls="required")
    submit(srv, [f"alice@{REMOTE}"], "needs tls")
    items = wait_queue(srv, lambda i: i and i[0]["status"] == "deferred")
    assert "TLS" in items[0]["last_error"]
    assert rcv.messages == []


def test_temporary_failure_then_success(server, receiver):
    rcv = receiver()
    rcv.tempfail_left = 1
    srv = relay_server(server, rcv)
    submit(srv, [f"tempfail@{REMOTE}"], "greylisted")
    items = wait_queue(srv, lambda i: i and i[0]["status"] == "delivered", timeout=20)
    assert items[0]["attempts"] == 2
    assert len(rcv.wait(1)) == 1


def test_permanent_failure_bounces_to_the_local_sender(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    submit(srv, [f"reject@{REMOTE}", f"alice@{REMOTE}"], "partly undeliverable")
    rcv.wait(1)
    items = wait_queue(
        srv, lambda i: len(i) == 2 and {x["status"] for x in i} == {"delivered", "failed"}
    )
    failed = [x for x in items if x["status"] == "failed"][0]
    assert failed["recipient"] == f"reject@{REMOTE}"
    assert "550 5.1.1" in failed["last_error"]
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    bounce = bob.wait_messages(1)[0]
    assert bounce["subject"] == "Undelivered Mail Returned to Sender"
    raw = bob.get(f"/api/v1/messages/{bounce['id']}/raw").content
    dsn = parse(raw)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = [p.get_content_type() for p in dsn.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    text = raw.decode(errors="replace")
    assert f"Final-Recipient: rfc822; reject@{REMOTE}" in text
    assert "Status: 5.1.1" in text
    assert "Subject: partly undeliverable" in text
    assert f"alice@{REMOTE}" not in text.split("message/delivery-status")[1].split("rfc822-headers")[0], \
        "only the failed recipient is reported"


def test_expiry_bounces_with_4_4_7(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv, max_queue_lifetime="3s")
    submit(srv, [f"always451@{REMOTE}"], "never accepted")
    items = wait_queue(srv, lambda i: i and i[0]["status"] == "failed", timeout=20)
    assert items[0]["attempts"] >= 2
    assert "expired" in items[0]["last_error"]
    bounce = srv.api(f"bob@{DOMAIN}", USER_PASSWORD).wait_messages(1)[0]
    raw = srv.api(f"bob@{DOMAIN}", USER_PASSWORD).get(f"/api/v1/messages/{bounce['id']}/raw").text
    assert "Status: 4.4.7" in raw


def test_null_sender_failures_never_bounce(server, receiver):
    """A message from a remote sender fails: its DSN goes back to that sender with the null
    sender. That DSN fails too, and must bounce nowhere (RFC 3464 §2.1; no loops)."""
    rcv = receiver()
    srv = server(delivery_overrides(relay_host=f"127.0.0.1:{rcv.port}") |
                 {"smtp": {"trusted_networks": ["127.0.0.1"]}})
    setup_domain_and_user(srv, users=("bob",))
    # An application on a trusted network relays for a remote sender the receiver refuses.
    code, msg = srv.send([f"reject-target@{REMOTE}"], simple_message("doomed"),
                         mail_from=f"reject-origin@{REMOTE}")
    assert code == 250, msg
    # The original fails, its DSN (null sender) is queued to reject-origin and fails as well.
    items = wait_queue(srv, lambda i: len(i) >= 2 and all(x["status"] == "failed" for x in i))
    dsn = [x for x in items if x["sender"] == ""]
    assert [x["recipient"] for x in dsn] == [f"reject-origin@{REMOTE}"], items
    # A bounce is committed with the failure that causes it: had the DSN's failure bounced,
    # its row would be here by now.
    items = queue_items(srv)
    assert len(items) == 2, items
    assert srv.metric_value("mairust_bounces_total") == 1
    assert srv.metric_value("mairust_delivery_attempts_total", {"result": "failed"}) == 2


def test_queue_api_retry_and_cancel(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv, retry_intervals=["1h"])
    submit(srv, [f"always451@{REMOTE}"], "stuck one")
    submit(srv, [f"always451b@{REMOTE}"], "stuck two")
    items = wait_queue(srv, lambda i: len(i) == 2 and all(x["status"] == "deferred" for x in i))
    admin = srv.api()
    first, second = sorted(items, key=lambda x: int(x["id"]))
    assert admin.get(f"/api/v1/queue/{first['id']}").json()["status"] == "deferred"
    assert queue_items(srv, status="delivered") == []
    assert len(queue_items(srv, status="deferred", domain=REMOTE)) == 2
    assert admin.get("/api/v1/queue", params={"status": "bogus"}).status_code == 400
    # Retry makes it due now: another attempt happens at once.
    r = admin.post(f"/api/v1/queue/{first['id']}/retry")
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while admin.get(f"/api/v1/queue/{first['id']}").json()["attempts"] < 2:
        assert time.monotonic() < deadline, "retry did not cause an attempt"
        time.sleep(0.1)
    # Cancel without and with a bounce.
    r = admin.delete(f"/api/v1/queue/{first['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    r = admin.delete(f"/api/v1/queue/{second['id']}", params={"bounce": "true"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    bounces = srv.api(f"bob@{DOMAIN}", USER_PASSWORD).wait_messages(1)
    assert len(bounces) == 1 and bounces[0]["subject"] == "Undelivered Mail Returned to Sender"
    # Finished rows cannot change; unknown rows are 404; users may not see the queue.
    assert admin.post(f"/api/v1/queue/{first['id']}/retry").status_code == 409
    assert admin.get("/api/v1/queue/999999").status_code == 404
    assert srv.api(f"bob@{DOMAIN}", USER_PASSWORD).get("/api/v1/queue").status_code == 403


def test_send_api_with_attachments(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    pdf = b"%PDF-1.4 pretend"
    r = bob.post("/api/v1/send", json={
        "from": f"bob@{DOMAIN}",
        "to": [f"alice@{REMOTE}"],
        "cc": [f"carol@{DOMAIN}"],
        "bcc": [f"hidden@{REMOTE}"],
        "subject": "Report ✓",
        "text": "See attached.",
        "html": "<p>See attached.</p>",
        "attachments": [{"filename": "r.pdf", "content_type": "application/pdf",
                          "content_base64": base64.b64encode(pdf).decode()}],
        "headers": {"X-Campaign": "q4"},
    })
    assert r.status_code == 202, r.text
    body = r.json()
    assert sorted(body["queued"]) == sorted([f"alice@{REMOTE}", f"hidden@{REMOTE}"])
    assert body["delivered"] == [f"carol@{DOMAIN}"]
    got = rcv.wait(1)
    assert sorted(got[0]["rcpt_tos"]) == sorted([f"alice@{REMOTE}", f"hidden@{REMOTE}"])
    msg = parse(got[0]["content"])
    assert msg["Subject"] == "Report ✓"
    assert msg["X-Campaign"] == "q4"
    assert "hidden" not in got[0]["content"].decode(errors="replace"), "Bcc is not in the headers"
    assert msg["Message-ID"].strip("<>") == body["message_id"]
    atts = [p for p in msg.iter_attachments()]
    assert atts[0].get_filename() == "r.pdf" and atts[0].get_content() == pdf
    carol = srv.api(f"carol@{DOMAIN}", USER_PASSWORD)
    item = carol.wait_messages(1)[0]
    detail = carol.get(f"/api/v1/messages/{item['id']}").json()
    assert detail["attachments"][0]["filename"] == "r.pdf"
    assert carol.get(f"/api/v1/messages/{item['id']}/attachments/0").content == pdf


def test_send_api_refuses_bad_input(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    ok = {"from": f"bob@{DOMAIN}", "to": [f"alice@{REMOTE}"], "subject": "s", "text": "t"}
    for bad in (
        {**ok, "subject": "hi\r\nBcc: victim@x.test"},
        {**ok, "to": ["a@x.test\r\nRCPT TO:<b@y.test>"]},
        {**ok, "headers": {"X-Ok": "v\nInjected: yes"}},
        {**ok, "headers": {"Content-Type": "text/html"}},
        {**ok, "to": []},
        {**ok, "to": ["not an address"]},
        {**ok, "attachments": [{"filename": "a", "content_base64": "!!!"}]},
    ):
        r = bob.post("/api/v1/send", json=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["code"] == "bad_request"
    r = bob.post("/api/v1/send", json={**ok, "from": f"carol@{DOMAIN}"})
    assert r.status_code == 403
    # Admins may send as any hosted address, not as outsiders.
    admin = srv.api()
    assert admin.post("/api/v1/send", json={**ok, "from": f"carol@{DOMAIN}"}).status_code == 202
    assert admin.post("/api/v1/send", json={**ok, "from": "x@elsewhere.test"}).status_code == 403
    assert srv.anon().post("/api/v1/send", json=ok).status_code == 401


def test_dkim_signature_verifies_on_the_received_copy(server, receiver):
    """RSA-2048 is the default key; an Ed25519 key added beside it makes the domain's mail
    carry both signatures (RFC 8463), RSA first; dkimpy verifies each."""
    dkim = pytest.importorskip("dkim")
    rcv = receiver()
    srv = relay_server(server, rcv)
    admin = srv.api()
    r = admin.post(f"/api/v1/domains/{DOMAIN}/dkim")
    assert r.status_code == 201, r.text
    rsa = r.json()
    assert rsa["algorithm"] == "rsa" and rsa["dns_value"].startswith("v=DKIM1; k=rsa; p=")
    assert len(rsa["dns_value"]) > 255 and len(rsa["dns_value_strings"]) == 2
    assert "".join(rsa["dns_value_strings"]) == rsa["dns_value"]
    submit(srv, [f"alice@{REMOTE}"], "signed rsa")
    raw = received_with(rcv, b"signed rsa", 1)
    assert dkim_signatures(raw) == 1 and dkim_verifies(raw, rsa), raw[:600]
    assert not dkim_verifies(raw.replace(b"Hello.", b"Hellp."), rsa)

    ed = dkim_key(srv, selector="ed1", algorithm="ed25519")
    assert ed["dns_value"].startswith("v=DKIM1; k=ed25519; p=") and ed["signing"] is True
    listed = admin.get(f"/api/v1/domains/{DOMAIN}/dkim").json()["items"]
    assert [(k["algorithm"], k["signing"]) for k in listed] == [("ed25519", True), ("rsa", True)]
    submit(srv, [f"alice@{REMOTE}"], "signed twice")
    raw = received_with(rcv, b"signed twice", 2)
    headers = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b"").replace(b"\r\n ", b"")
    assert dkim_signatures(raw) == 2, raw[:800]
    first = headers.split(b"DKIM-Signature:")[1]
    assert b"a=rsa-sha256" in first, "RSA signs first"
    assert dkim_verifies(raw, rsa, ed)
    # Each signature on its own: both keys' records are needed.
    assert not dkim_verifies(raw, rsa) and not dkim_verifies(raw, ed)
    assert admin.post("/api/v1/domains/unknown.test/dkim", json={}).status_code == 404


BODY_LINES = [
    "", " ", "\t", "  \t ", "hello", "trailing space ", "two  spaces\tand tab", " leading",
    "Gr\u00fc\u00dfe, \u00e9t\u00e9 \u2014 \u65e5\u672c", ".dot first", "From the start", "x" * 1200,
]


def test_what_mairust_signs_verifies_with_dkimpy_whatever_the_body(server, receiver):
    """A property test over real submissions: bodies with white-space-only lines, empty lines at
    the end, long lines, 8-bit text and attachments, signed by MaiRust (RSA and Ed25519) and
    relayed, all verify with dkimpy. (mail-auth 0.13.3 signed `hello\\r\\n \\r\\n` so that
    dkimpy refused it; vendor/mail-auth/PATCHED.md.)"""
    from email.message import EmailMessage

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    rcv = receiver()
    srv = relay_server(server, rcv)
    records = [dkim_key(srv, selector="prop-rsa", algorithm="rsa"),
               dkim_key(srv, selector="prop-ed", algorithm="ed25519")]
    counter = iter(range(10**6))

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(lines=st.lists(st.sampled_from(BODY_LINES), max_size=10),
           attachment=st.one_of(st.none(), st.binary(max_size=300)),
           utf8=st.booleans())
    def check(lines, attachment, utf8):
        n = next(counter)
        text = "\r\n".join(lines) + ("\r\n" if lines else "")
        subject = f"prop {n}"
        if attachment is None and not utf8:
            data = (f"From: bob@{DOMAIN}\r\nTo: alice@{REMOTE}\r\nSubject: {subject}\r\n"
                    f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    f"Content-Transfer-Encoding: 8bit\r\n\r\n{text}").encode()
        else:
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = f"bob@{DOMAIN}", f"alice@{REMOTE}", subject
            msg.set_content(text.replace("\r\n", "\n"), cte="8bit" if utf8 else None)
            if attachment is not None:
                msg.add_attachment(attachment, maintype="application", subtype="octet-stream",
                                   filename="a.bin")
            data = msg.as_bytes(policy=email.policy.SMTP)
        with contextlib.closing(srv.submission(f"bob@{DOMAIN}", USER_PASSWORD)) as s:
            assert s.sendmail(f"bob@{DOMAIN}", [f"alice@{REMOTE}"], data) == {}
        raw = received_with(rcv, f"Subject: {subject}\r\n".encode(), n + 1)
        assert dkim_signatures(raw) == 2, raw[:600]
        assert dkim_verifies(raw, *records), f"dkimpy refuses a signature of {raw!r}"

    check()


def test_deferred_mail_survives_sigkill_and_is_retried_after_restart(server, receiver):
    rcv = receiver()
    rcv.tempfail_left = 1000
    srv = relay_server(server, rcv, retry_intervals=["1s"])
    submit(srv, [f"tempfail@{REMOTE}"], "crash survivor")
    wait_queue(srv, lambda i: i and i[0]["status"] == "deferred")
    srv.kill()
    rcv.tempfail_left = 0
    srv.start()
    items = wait_queue(srv, lambda i: i and i[0]["status"] == "delivered", timeout=30)
    assert items[0]["attempts"] >= 2
    got = rcv.wait(1)
    assert len(got) == 1 and b"crash survivor" in got[0]["content"]


def test_connections_are_reused_for_queued_mail(server, receiver):
    rcv = receiver()
    rcv.data_delay = 0.4
    srv = relay_server(server, rcv, concurrency_per_destination=1)
    for i in range(6):
        submit(srv, [f"alice@{REMOTE}"], f"batch {i}")
    got = rcv.wait(6, timeout=30)
    assert len(got) == 6
    assert len({m["session"] for m in got}) < 6, "several messages shared a connection"


def test_an_idle_connection_carries_the_next_message_then_quits(server, receiver):
    # Each message leaves on its own wake-up (the previous one is delivered before the next
    # is submitted): all of them share one connection, kept idle in between, and that
    # connection ends with QUIT once it has been idle for the cache time.
    rcv = receiver()
    srv = relay_server(server, rcv, connection_cache_time="3s")
    for i in range(3):
        submit(srv, [f"alice@{REMOTE}"], f"one by one {i}")
        got = rcv.wait(i + 1)
        wait_queue(srv, lambda items, n=i + 1: sum(x["status"] == "delivered" for x in items) == n)
    assert len({m["session"] for m in got}) == 1, got
    assert rcv.quits == []
    last = time.monotonic()
    deadline = last + 10
    while not rcv.quits and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [q[0] for q in rcv.quits] == [got[0]["session"]]
    assert rcv.quits[0][1] - last > 2, "the connection was closed before its idle time was up"
    text = srv.metrics()
    assert metric_value(text, "mairust_delivery_connections_total", {"reused": "true"}) == 2, text
    assert metric_value(text, "mairust_delivery_connections_total", {"reused": "false"}) == 1, text


def test_a_connection_the_server_closed_while_idle_is_replaced(server, receiver):
    # The receiver hangs up after 0.5 s of silence (with a 421, as servers do); the next
    # message, 1.5 s later, must go out on a new connection at its first attempt.
    rcv = receiver(idle_timeout=0.5)
    srv = relay_server(server, rcv, connection_cache_time="10s")
    submit(srv, [f"alice@{REMOTE}"], "before the hang-up")
    rcv.wait(1)
    time.sleep(1.5)
    submit(srv, [f"alice@{REMOTE}"], "after the hang-up")
    got = rcv.wait(2)
    assert len({m["session"] for m in got}) == 2
    items = wait_queue(srv, lambda i: len(i) == 2 and all(x["status"] == "delivered" for x in i))
    assert [x["attempts"] for x in items] == [1, 1], items


def test_without_a_cache_time_every_delivery_opens_its_own_connection(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv, connection_cache_time="0s")
    for i in range(2):
        submit(srv, [f"alice@{REMOTE}"], f"uncached {i}")
        got = rcv.wait(i + 1)
    assert len({m["session"] for m in got}) == 2
    deadline = time.monotonic() + 5
    while len(rcv.quits) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(rcv.quits) == 2, "each connection ended with QUIT"


def test_queue_metrics(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    submit(srv, [f"alice@{REMOTE}"], "metered")
    rcv.wait(1)
    wait_queue(srv, lambda i: i and i[0]["status"] == "delivered")
    deadline = time.monotonic() + 10
    while True:
        text = srv.metrics()
        if 'mairust_delivery_attempts_total{result="delivered"} 1' in text:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert "mairust_delivery_latency_seconds_bucket" in text
    assert "mairust_queue_depth" in text


# ---------------------------------------------------------------------- what leaves the server


def bare_line_breaks(raw: bytes) -> list[int]:
    """Offsets of every CR not followed by LF and every LF not preceded by CR."""
    return [
        i for i, b in enumerate(raw)
        if (b == 0x0D and raw[i + 1:i + 2] != b"\n") or (b == 0x0A and (i == 0 or raw[i - 1] != 0x0D))
    ]


def dkim_key(srv: Server, selector: str | None = None, algorithm: str = "ed25519") -> dict:
    body = {"algorithm": algorithm} | ({"selector": selector} if selector else {})
    r = srv.api().post(f"/api/v1/domains/{DOMAIN}/dkim", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def dkim_signatures(raw: bytes) -> int:
    return raw.split(b"\r\n\r\n", 1)[0].count(b"DKIM-Signature:")


def dkim_verifies(raw: bytes, *records: dict) -> bool:
    """Whether dkimpy verifies every DKIM signature of `raw` (at least one) against `records`,
    published as a DNS server would: TXT strings of at most 255 bytes, joined."""
    import dkim

    published = {r["dns_name"]: "".join(r["dns_value_strings"]).encode() for r in records}
    assert all(len(part) <= 255 for r in records for part in r["dns_value_strings"])

    def dnsfunc(name, timeout=5):
        return published.get(name.decode().rstrip("."))

    def verifies(idx: int) -> bool:
        try:
            return dkim.DKIM(raw).verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.DKIMException:
            return False

    signatures = dkim_signatures(raw)
    return signatures > 0 and all(verifies(i) for i in range(signatures))


def received_with(rcv: Receiver, marker: bytes, n: int) -> bytes:
    return [m for m in rcv.wait(n) if marker in m["content"]][0]["content"]


def test_smuggling_sequences_never_leave_and_the_signature_verifies(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    record = dkim_key(srv)
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    sent = 0
    for i, text in enumerate((
        "outer\r.\rMAIL FROM:<evil@remote.test>\r\nRCPT TO:<victim@remote.test>\r\nDATA\r\n",
        "outer\r.\nMAIL FROM:<evil@remote.test>\nRCPT TO:<victim@remote.test>\n",
    )):
        r = bob.post("/api/v1/send", json={
            "from": f"bob@{DOMAIN}", "to": [f"alice@{REMOTE}"], "subject": f"api {i}", "text": text})
        assert r.status_code == 202, r.text
        sent += 1
        raw = received_with(rcv, f"api {i}".encode(), sent)
        assert bare_line_breaks(raw) == [], raw
        assert dkim_verifies(raw, record), raw
        # The text arrives as separate lines, not as hidden commands.
        assert b"\r\nMAIL FROM:<evil@remote.test>\r\n" in raw, raw



@pytest.mark.parametrize(
    "header",
    [b"Subject: hi\rFrom: carol@example.test", b"Subject: hi\nFrom: carol@example.test"],
    ids=["bare-cr", "bare-lf"],
)
def test_bdat_line_break_tricks_cannot_forge_a_signed_from(server, receiver, header):
    """BDAT LAST with `Subject: hi<CR>From: carol@...`: the From check would see one Subject
    field, the receiver (after CRLF normalisation) a From signed for the domain. Refused whole,
    like DATA's bare line breaks; nothing is stored, queued or sent."""
    rcv = receiver()
    srv = relay_server(server, rcv)
    dkim_key(srv)
    body = header + f"\r\nTo: alice@{REMOTE}\r\n\r\nbody\r\n".encode()
    with contextlib.closing(srv.submission(f"bob@{DOMAIN}", USER_PASSWORD)) as s:
        assert s.mail(f"bob@{DOMAIN}")[0] == 250
        assert s.rcpt(f"alice@{REMOTE}")[0] == 250
        assert s.rcpt(f"carol@{DOMAIN}")[0] == 250
        s.send(b"BDAT %d LAST\r\n" % len(body) + body)
        code, msg = s.getreply()
        assert (code, msg[:7]) == (550, b"5.6.11 "), (code, msg)
        # The session goes on.
        assert s.noop()[0] == 250
    assert queue_items(srv) == []
    assert srv.api(f"carol@{DOMAIN}", USER_PASSWORD).all_messages() == []
    assert srv.metric_value("mairust_smtp_messages_accepted_total") in (None, 0)


def test_quoted_local_parts_stay_quoted_in_return_path_and_on_the_wire(server, receiver):
    """`MAIL FROM:<"a>b"@attacker.test>` was stored as `Return-Path: <a>b@attacker.test>`
    and relayed as `MAIL FROM:<a>b@attacker.test>`: a quoted local part keeps its quotes."""
    rcv = receiver()
    srv = server(delivery_overrides(relay_host=f"127.0.0.1:{rcv.port}") |
                 {"smtp": {"trusted_networks": ["127.0.0.1"]}})
    setup_domain_and_user(srv, users=("bob",))
    with contextlib.closing(srv.smtp()) as s:
        assert s.mail('"a>b"@attacker.test')[0] == 250
        assert s.rcpt(f"bob@{DOMAIN}")[0] == 250
        assert s.rcpt(f'"x y"@{REMOTE}')[0] == 250
        code, msg = s.data(b"From: app@app.test\r\nSubject: quoted\r\n\r\nhi\r\n")
        assert code == 250, msg
    api = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    [item] = api.wait_messages(1)
    raw = api.get(f"/api/v1/messages/{item['id']}/raw").content
    assert raw.startswith(b'Return-Path: <"a>b"@attacker.test>\r\n'), raw[:80]
    [got] = rcv.wait(1)
    assert got["mail_from"] == '"a>b"@attacker.test', got
    assert got["rcpt_tos"] == [f'"x y"@{REMOTE}'], got


def test_long_lines_are_reencoded_before_they_leave(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    record = dkim_key(srv)
    long_text = "word " * 600 + "= é"
    blob = bytes(range(256)) * 20
    msg = (
        f"From: bob@{DOMAIN}\r\nTo: alice@{REMOTE}\r\nSubject: long lines\r\n"
        f"X-Long: {'v ' * 700}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"short\r\n{long_text}\r\n"
        "--b1\r\nContent-Type: text/plain\r\n\r\nan untouched part\r\n"
        "--b1--\r\n"
    ).encode()
    with contextlib.closing(srv.submission(f"bob@{DOMAIN}", USER_PASSWORD)) as s:
        s.sendmail(f"bob@{DOMAIN}", [f"alice@{REMOTE}"], msg)
    raw = received_with(rcv, b"long lines", 1)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998, "a line over 998 octets left"
    assert dkim_verifies(raw, record)
    got = parse(raw)
    parts = list(got.iter_parts())
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
    # The CRLF before a delimiter belongs to the delimiter, so the content ends without one.
    assert parts[0].get_content().replace("\r\n", "\n") == f"short\n{long_text}"
    assert parts[1].get_content().strip() == "an untouched part"
    assert b"Content-Type: text/plain\r\n\r\nan untouched part\r\n" in raw
    assert " ".join(got["X-Long"].split()) == " ".join(("v " * 700).split())

    # The send API: a long attachment line and a long HTML line.
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    r = bob.post("/api/v1/send", json={
        "from": f"bob@{DOMAIN}", "to": [f"alice@{REMOTE}"], "subject": "api long",
        "html": "<p>" + "x" * 5000 + "</p>",
        "attachments": [{"filename": "b.bin", "content_base64": base64.b64encode(blob).decode()}]})
    assert r.status_code == 202, r.text
    raw = received_with(rcv, b"api long", 2)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert [p.get_content() for p in parse(raw).iter_attachments()] == [blob]

    # A header line that cannot be folded cannot be sent: refused before the 250.
    bad = f"From: bob@{DOMAIN}\r\nTo: alice@{REMOTE}\r\nX-Solid: {'z' * 1200}\r\n\r\nbody\r\n"
    with contextlib.closing(srv.submission(f"bob@{DOMAIN}", USER_PASSWORD)) as s:
        s.mail(f"bob@{DOMAIN}")
        s.rcpt(f"alice@{REMOTE}")
        code, text = s.data(bad.encode())
    assert code == 550 and b"5.6.0" in text, (code, text)


def test_dkim_key_rotation_keeps_old_signatures_verifiable(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    admin = srv.api()
    first = dkim_key(srv, algorithm="rsa")
    submit(srv, [f"alice@{REMOTE}"], "under the first key")
    old_mail = received_with(rcv, b"under the first key", 1)
    second = dkim_key(srv, algorithm="rsa")
    assert second["selector"] != first["selector"], "a new key gets a new selector"
    assert second["signing"] is True
    listed = admin.get(f"/api/v1/domains/{DOMAIN}/dkim").json()["items"]
    assert [(k["selector"], k["signing"]) for k in listed] == [
        (second["selector"], True), (first["selector"], False)]
    assert {k["dns_name"]: k["dns_value"] for k in listed} == {
        first["dns_name"]: first["dns_value"], second["dns_name"]: second["dns_value"]}

    submit(srv, [f"alice@{REMOTE}"], "under the second key")
    new_mail = received_with(rcv, b"under the second key", 2)
    assert f"s={second['selector']};".encode() in new_mail.replace(b" ", b"").replace(b"\r\n\t", b"")
    assert dkim_verifies(new_mail, second)
    # Mail signed before the rotation still verifies against the record that stays.
    assert dkim_verifies(old_mail, first)

    # A taken selector is a conflict; removing the old key leaves the new one signing.
    r = admin.post(f"/api/v1/domains/{DOMAIN}/dkim", json={"selector": first["selector"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict", r.text
    assert admin.delete(f"/api/v1/domains/{DOMAIN}/dkim/{first['selector']}").status_code == 204
    r = admin.delete(f"/api/v1/domains/{DOMAIN}/dkim/{first['selector']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    listed = admin.get(f"/api/v1/domains/{DOMAIN}/dkim").json()["items"]
    assert [(k["selector"], k["signing"]) for k in listed] == [(second["selector"], True)]
    assert admin.get("/api/v1/domains/unknown.test/dkim").status_code == 404
    assert srv.api(f"bob@{DOMAIN}", USER_PASSWORD).get(f"/api/v1/domains/{DOMAIN}/dkim").status_code == 403
