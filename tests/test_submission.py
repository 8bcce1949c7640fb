"""Submission (`server.submission_port`, port 587 in production): STARTTLS with the generated
self-signed certificate, AUTH PLAIN and LOGIN only after TLS, MAIL only after AUTH, the
throttle on repeated AUTH failures, sender ownership, Message-ID/Date added to submissions, and
the STARTTLS command-injection defence (CVE-2011-0411)."""

import base64
import contextlib
import email.utils
import smtplib
import ssl
import time

import pytest

from conftest import (
    DOMAIN,
    HOSTNAME,
    USER_PASSWORD,
    insecure_tls,
    setup_domain_and_user,
    simple_message,
)

BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"


@pytest.fixture
def subsrv(server):
    s = server()
    setup_domain_and_user(s, users=("bob", "carol"))
    return s


def tls_session(srv) -> smtplib.SMTP:
    s = srv.smtp("submission")
    code, _ = s.starttls(context=insecure_tls())
    assert code == 220
    code, _ = s.ehlo("client.test")
    assert code == 250
    return s


def plain(authzid: str, user: str, password: str) -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def raw_messages(srv, who, password=USER_PASSWORD) -> list[bytes]:
    api = srv.api(who, password)
    return [api.get(f"/api/v1/messages/{i['id']}/raw").content for i in api.all_messages()]


def test_ehlo_before_tls_offers_starttls_not_auth(subsrv):
    with contextlib.closing(subsrv.smtp("submission")) as s:
        assert "starttls" in s.esmtp_features
        assert "auth" not in s.esmtp_features
        # Even a client that tries gets no AUTH over plaintext.
        code, msg = s.docmd("AUTH", "PLAIN " + plain("", BOB, USER_PASSWORD))
        assert code == 538, (code, msg)
        assert msg.startswith(b"5.7.11"), msg
        code, msg = s.docmd("AUTH", "LOGIN")
        assert code == 538, (code, msg)
    # Over TLS: AUTH offered, STARTTLS no longer.
    with contextlib.closing(tls_session(subsrv)) as s:
        assert s.esmtp_features.get("auth", "").split() == ["PLAIN", "LOGIN"]
        assert "starttls" not in s.esmtp_features
        code, _ = s.docmd("STARTTLS")
        assert code == 503


def test_mail_before_auth_is_530(subsrv):
    with contextlib.closing(subsrv.smtp("submission")) as s:
        code, msg = s.mail(BOB)
        assert code == 530, (code, msg)
        assert msg.startswith(b"5.7.0"), msg
    with contextlib.closing(tls_session(subsrv)) as s:
        code, msg = s.mail(BOB)
        assert code == 530, (code, msg)
        assert msg.startswith(b"5.7.0"), msg
        code, msg = s.rcpt(CAROL)
        assert code == 503, (code, msg)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("initial_response", [True, False], ids=["initial", "challenge"])
def test_auth_then_send(subsrv, mechanism, initial_response):
    with contextlib.closing(tls_session(subsrv)) as s:
        s.user, s.password = BOB, USER_PASSWORD
        code, msg = s.auth(mechanism, getattr(s, f"auth_{mechanism.lower()}"), initial_response_ok=initial_response)
        assert code == 235, (code, msg)
        assert msg.startswith(b"2.7.0"), msg
        # A second AUTH in the same session is refused.
        assert s.docmd("AUTH", "PLAIN " + plain("", BOB, USER_PASSWORD))[0] == 503
        sent = simple_message(f"submitted {mechanism}", to=CAROL).replace(
            b"From: Alice <alice@remote.test>", f"From: Bob <{BOB}>".encode()
        )
        refused = s.sendmail(BOB, [CAROL], sent)
        assert refused == {}
    [stored] = raw_messages(subsrv, CAROL)
    assert stored.endswith(sent)
    received = stored[: len(stored) - len(sent)]
    assert b"with ESMTPSA" in received, received
    assert HOSTNAME.encode() in received


@pytest.mark.parametrize("initial_response", [True, False], ids=["initial", "challenge"])
def test_smtplib_login_convenience(subsrv, initial_response):
    with contextlib.closing(tls_session(subsrv)) as s:
        code, _ = s.login(BOB, USER_PASSWORD, initial_response_ok=initial_response)
        assert code == 235
        assert s.mail(BOB)[0] == 250


def test_wrong_password_is_535(subsrv):
    with contextlib.closing(tls_session(subsrv)) as s:
        s.user, s.password = BOB, "wrong-password"
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.auth("PLAIN", s.auth_plain)
        assert e.value.smtp_code == 535, e.value
        assert e.value.smtp_error.startswith(b"5.7.8"), e.value
        s.user, s.password = "nobody@example.test", USER_PASSWORD
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert e.value.smtp_code == 535, e.value
        # A failed attempt does not authenticate.
        assert s.mail(BOB)[0] == 530
        # The right password still works in the same session.
        s.user, s.password = BOB, USER_PASSWORD
        assert s.auth("PLAIN", s.auth_plain)[0] == 235
        assert s.mail(BOB)[0] == 250


def test_auth_exchange_can_be_cancelled(subsrv):
    with subsrv.raw("submission") as r:
        r.greet()
        assert r.cmd("STARTTLS")[0] == 220
        r.starttls()
        assert r.cmd("EHLO client.test")[0] == 250
        assert r.cmd("AUTH LOGIN")[0] == 334
        assert r.cmd("*")[0] == 501
        assert r.cmd("AUTH PLAIN")[0] == 334
        assert r.cmd("!!not base64!!")[0] == 501
        assert r.cmd("MAIL FROM:<%s>" % BOB)[0] == 530


def test_plain_authzid_for_another_user_is_refused(subsrv):
    """RFC 4616: a PLAIN authorization identity other than the authenticated user must fail
    (MaiRust has no proxy authorization), never silently log in as someone."""
    with contextlib.closing(tls_session(subsrv)) as s:
        code, msg = s.docmd("AUTH", "PLAIN " + plain(CAROL, BOB, USER_PASSWORD))
        assert code == 535, (code, msg)
        # The same identity in both fields is fine.
        code, msg = s.docmd("AUTH", "PLAIN " + plain(BOB, BOB, USER_PASSWORD))
        assert code == 235, (code, msg)


def test_repeated_failures_slow_down(server):
    srv = server({"smtp": {"auth_failure_delay": "1s", "auth_failures_free": 2}})
    setup_domain_and_user(srv)
    with contextlib.closing(tls_session(srv)) as s:
        times = []
        for _ in range(4):
            t0 = time.monotonic()
            code, _ = s.docmd("AUTH", "PLAIN " + plain("", BOB, "wrong-password"))
            times.append(time.monotonic() - t0)
            assert code == 535
        fastest_free = min(times[:3])
        assert times[3] - fastest_free >= 0.8, times
        assert times[1] - fastest_free < 0.8, times  # the free failures are not delayed
        # A success withdraws only its own attempt: the failures stay counted, so whoever
        # knows one password gets no free guesses from this address afterwards.
        assert s.docmd("AUTH", "PLAIN " + plain("", BOB, USER_PASSWORD))[0] == 235
    with contextlib.closing(tls_session(srv)) as s:
        t0 = time.monotonic()
        assert s.docmd("AUTH", "PLAIN " + plain("", BOB, "wrong-again"))[0] == 535
        assert time.monotonic() - t0 >= times[3] - 0.2, (time.monotonic() - t0, times)
    m = srv.metric_value("mairust_smtp_auth_failures_total")
    assert m is not None and m >= 5, m


def test_sender_must_be_own_address(subsrv):
    with contextlib.closing(subsrv.submission(BOB, USER_PASSWORD)) as s:
        for other in (CAROL, "ceo@bigbank.test", f"bob@sub.{DOMAIN}"):
            code, msg = s.mail(other)
            assert code == 553, (other, code, msg)
            assert msg.startswith(b"5.7.1"), msg
        code, msg = s.mail("BOB@Example.Test")
        assert code == 250, msg
        assert s.rcpt(CAROL)[0] == 250
        assert s.data(own_message("as myself", to=CAROL))[0] == 250
    assert len(raw_messages(subsrv, CAROL)) == 1


def own_message(subject: str, to: str = CAROL, sender: str = BOB) -> bytes:
    return simple_message(subject, to=to).replace(
        b"From: Alice <alice@remote.test>", f"From: Bob <{sender}>".encode()
    )


@pytest.mark.parametrize(
    "headers",
    [
        "From: ceo@other.test",
        "From: Bob <bob@example.test>, ceo@other.test",
        'From: "bob@example.test" <ceo@other.test>',
        "From: bob@example.test\r\nSender: ceo@other.test",
        f"From: {CAROL}",
        "From: undisclosed:;",
    ],
    ids=["other", "list", "display-name", "sender", "colleague", "no-address"],
)
def test_header_from_and_sender_must_be_owned(subsrv, headers):
    data = f"{headers}\r\nTo: {CAROL}\r\nSubject: spoof\r\n\r\nwire the money\r\n".encode()
    with contextlib.closing(subsrv.submission(BOB, USER_PASSWORD)) as s:
        assert s.mail(BOB)[0] == 250
        assert s.rcpt(CAROL)[0] == 250
        code, msg = s.data(data)
        assert code == 553, (code, msg)
        assert msg.startswith(b"5.7.1"), msg
        # The session goes on, and an honest message passes.
        assert s.mail(BOB)[0] == 250
        assert s.rcpt(CAROL)[0] == 250
        own = f"From: BOB@Example.test\r\nSender: Bob <{BOB}>\r\nTo: {CAROL}\r\nSubject: mine\r\n\r\nok\r\n"
        assert s.data(own.encode())[0] == 250
    subjects = [i["subject"] for i in subsrv.api(CAROL, USER_PASSWORD).all_messages()]
    assert subjects == ["mine"]


@pytest.mark.parametrize(
    "headers",
    [
        b"From\0: carol@example.test",
        b"From: bob@example.test\r\nFrom\0: carol@example.test",
        b"From: bob@example.test\r\nSubject: a\0b",
        b"From: bob@example.test\r\nFrom: Bob <bob@example.test>",
        b"From: bob@example.test\r\nFrom: ceo@other.test",
        b"From: bob@example.test\r\nFr\x01om: carol@example.test",
        b"From: bob@example.test\r\nnot a header line",
    ],
    ids=["nul-in-name", "nul-in-second-from", "nul-in-value", "two-own-froms", "two-froms", "control-in-name", "no-colon"],
)
def test_header_sections_readers_could_disagree_on_are_refused(subsrv, headers):
    """A NUL, a control character or a line that is no field makes readers disagree on the
    header fields (the From check could pass on fields a recipient never sees); RFC 5322
    allows one From. Such submissions are refused, naming the problem."""
    data = headers + f"\r\nTo: {CAROL}\r\nSubject: x\r\n\r\nbody\r\n".encode()
    with contextlib.closing(subsrv.submission(BOB, USER_PASSWORD)) as s:
        assert s.mail(BOB)[0] == 250
        assert s.rcpt(CAROL)[0] == 250
        code, msg = s.data(data)
        assert code == 550 and msg.startswith(b"5.6.0 Message rejected: "), (code, msg)
        assert s.mail(BOB)[0] == 250
    assert raw_messages(subsrv, CAROL) == []


def test_submitted_bcc_header_is_not_shown_to_recipients(subsrv):
    data = (
        f"From: {BOB}\r\nTo: {CAROL}\r\nBcc: hidden@{DOMAIN}\r\nSubject: bcc\r\n\r\nhi\r\n"
    ).encode()
    with contextlib.closing(subsrv.submission(BOB, USER_PASSWORD)) as s:
        assert s.sendmail(BOB, [CAROL, BOB], data) == {}
    for who in (CAROL, BOB):
        [raw] = raw_messages(subsrv, who)
        assert b"hidden" not in raw and b"Bcc:" not in raw, raw
        assert raw.startswith(f"Return-Path: <{BOB}>\r\nReceived: ".encode()), raw[:200]
        assert raw.endswith(data.replace(f"Bcc: hidden@{DOMAIN}\r\n".encode(), b""))


def test_submission_gets_message_id_and_date(subsrv):
    bare = f"From: {BOB}\r\nTo: {CAROL}\r\nSubject: no id, no date\r\n\r\nbody\r\n".encode()
    complete = own_message("has both", to=CAROL)
    with contextlib.closing(subsrv.submission(BOB, USER_PASSWORD)) as s:
        s.sendmail(BOB, [CAROL], bare)
        s.sendmail(BOB, [CAROL], complete)
    api = subsrv.api(CAROL, USER_PASSWORD)
    by_subject = {i["subject"]: i for i in api.all_messages()}

    item = by_subject["no id, no date"]
    raw = api.get(f"/api/v1/messages/{item['id']}/raw").content
    assert raw.endswith(bare)
    headers = raw.split(b"\r\n\r\n", 1)[0].decode()
    lines = [l for l in headers.split("\r\n") if not l.startswith(("\t", " "))]
    mid = [l for l in lines if l.lower().startswith("message-id:")]
    dates = [l for l in lines if l.lower().startswith("date:")]
    assert len(mid) == 1 and len(dates) == 1, headers
    assert mid[0].split(":", 1)[1].strip().startswith("<") and f"@{HOSTNAME}>" in mid[0], mid
    email_date = email.utils.parsedate_to_datetime(dates[0].split(":", 1)[1].strip())
    assert abs(email_date.timestamp() - time.time()) < 300, dates
    detail = api.get(f"/api/v1/messages/{item['id']}").json()
    assert detail["message_id"] and detail["message_id"].endswith(f"@{HOSTNAME}")

    item = by_subject["has both"]
    raw = api.get(f"/api/v1/messages/{item['id']}/raw").content
    assert raw.endswith(complete)
    headers = raw.split(b"\r\n\r\n", 1)[0].lower()
    assert headers.count(b"\r\nmessage-id:") + headers.startswith(b"message-id:") == 1
    assert headers.count(b"\r\ndate:") == 1


def test_mx_port_does_not_add_message_id(subsrv):
    bare = f"From: x@remote.test\r\nTo: {BOB}\r\nSubject: mx\r\n\r\nbody\r\n".encode()
    assert subsrv.send(BOB, bare)[0] == 250
    [raw] = raw_messages(subsrv, BOB)
    assert raw.endswith(bare)
    assert b"message-id:" not in raw.lower()


@pytest.mark.parametrize("port", ["submission", "smtp"])
def test_starttls_command_injection_is_discarded(subsrv, port):
    with subsrv.raw(port) as r:
        r.greet()
        r.send(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<" + BOB.encode() + b">\r\n")
        code, msg = r.reply()
        assert code == 220, (code, msg)
        # Nothing else in plaintext.
        assert r.buf == b"", r.buf
        r.starttls()
        r.send(b"EHLO client.test\r\n")
        code, text = r.reply()
        assert code == 250, (code, text)
        assert text.splitlines()[0].startswith(HOSTNAME), f"first reply after TLS was not EHLO's: {text!r}"
        assert r.nothing_pending(0.3) == b"", "a pipelined plaintext command was answered over TLS"
        # The injected MAIL did not start a transaction.
        assert r.cmd(f"RCPT TO:<{CAROL}>")[0] == 503


def test_tls_session_requires_new_ehlo(subsrv):
    with subsrv.raw("submission") as r:
        r.greet()
        assert r.cmd("STARTTLS")[0] == 220
        r.starttls()
        # RFC 3207: state is reset, the client must EHLO again.
        code, _ = r.cmd("MAIL FROM:<%s>" % BOB)
        assert code == 503, code
        assert r.cmd("EHLO client.test")[0] == 250


def test_certificate_is_generated_and_reused(subsrv):
    cert_path = subsrv.data_dir / "tls" / "cert.pem"
    assert cert_path.is_file()
    pem = cert_path.read_bytes()
    assert b"BEGIN CERTIFICATE" in pem

    def served_cert() -> bytes:
        with subsrv.raw("submission") as r:
            r.greet()
            assert r.cmd("STARTTLS")[0] == 220
            r.starttls()
            return r.sock.getpeercert(binary_form=True)

    der = ssl.PEM_cert_to_DER_cert(pem.decode().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    assert served_cert() == der

    subsrv.restart()
    assert cert_path.read_bytes() == pem
    assert served_cert() == der
    # The certificate names the configured host: subject and SAN, not the library's default.
    assert HOSTNAME.encode() in der
    decoded = ssl._ssl._test_decode_cert(str(cert_path))
    assert decoded["subject"] == ((("commonName", HOSTNAME),),), decoded
    assert ("DNS", HOSTNAME) in decoded["subjectAltName"], decoded


def test_allow_insecure_auth_option(server):
    srv = server({"smtp": {"allow_insecure_auth": True}})
    setup_domain_and_user(srv)
    with contextlib.closing(srv.smtp("submission")) as s:
        assert s.esmtp_features.get("auth", "").split() == ["PLAIN", "LOGIN"]
        assert s.login(BOB, USER_PASSWORD)[0] == 235
        assert s.mail(BOB)[0] == 250
    # Port 25 still has no AUTH.
    with contextlib.closing(srv.smtp()) as s:
        assert "auth" not in s.esmtp_features


def test_save_to_sent_keeps_a_read_copy_of_what_a_user_submits(server):
    """Off by default (IMAP clients APPEND their own copy); on, the submitter finds what they
    sent in Sent, read, as the recipient got it; mail on the MX port gets no copy."""
    for save in (False, True):
        srv = server({"submission": {"save_to_sent": save}})
        setup_domain_and_user(srv, users=("bob", "carol"))
        with contextlib.closing(srv.submission(BOB, USER_PASSWORD)) as s:
            assert s.sendmail(BOB, [CAROL], own_message("submitted", to=CAROL)) == {}
        assert srv.send(BOB, simple_message("from outside"))[0] == 250
        bob = srv.api(BOB, USER_PASSWORD)
        carol = srv.api(CAROL, USER_PASSWORD)
        [received] = carol.wait_messages(1)
        sent = bob.messages(folder="Sent")["items"]
        assert [m["subject"] for m in bob.messages()["items"]] == ["from outside"]
        if not save:
            assert sent == []
            continue
        assert [(m["subject"], m["seen"]) for m in sent] == [("submitted", True)]
        copy = bob.get(f"/api/v1/messages/{sent[0]['id']}/raw").content
        original = carol.get(f"/api/v1/messages/{received['id']}/raw").content
        assert copy == original
        folders = {f["name"]: f for f in bob.get("/api/v1/folders").json()["items"]}
        assert (folders["Sent"]["messages"], folders["Sent"]["unseen"]) == (1, 0)
