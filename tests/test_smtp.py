"""SMTP on the MX port (`server.smtp_port`, port 25 in production): greeting and EHLO, delivery
into mailboxes and what the messages API then shows (decoded headers, bodies, attachments, raw
bytes, flags, deletion, pagination, isolation between users), recipient and size policies,
the small commands, BDAT (CHUNKING), PIPELINING, connection limits and timeouts, and quotas."""

import contextlib
import email.policy
import re
import time
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

from conftest import (
    DOMAIN,
    HOSTNAME,
    USER_PASSWORD,
    assert_error,
    insecure_tls,
    setup_domain_and_user,
    simple_message,
)

BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"


def bob_api(srv):
    return srv.api(BOB, USER_PASSWORD)


def raw_of(api, item_id) -> bytes:
    r = api.get(f"/api/v1/messages/{item_id}/raw")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("message/rfc822")
    return r.content


def split_received(stored: bytes, sent: bytes, sender: bytes = b"alice@remote.test") -> bytes:
    """Asserts `stored` is `sent` with a `Return-Path:` and exactly one `Received:` header in
    front; returns the Received header."""
    assert stored.endswith(sent), f"stored message does not end with what was sent:\n{stored[:600]!r}"
    return_path, _, stored = stored.partition(b"\r\n")
    assert return_path.startswith(b"Return-Path: <"), return_path
    if sender is not None:
        assert return_path == b"Return-Path: <" + sender + b">", return_path
    prefix = stored[: len(stored) - len(sent)]
    assert prefix.startswith(b"Received: "), prefix
    assert prefix.endswith(b"\r\n"), prefix
    lines = prefix[:-2].split(b"\r\n")
    assert all(line[:1] in (b" ", b"\t") for line in lines[1:]), f"more than a Received header: {prefix!r}"
    return prefix


# ---------------------------------------------------------------------- greeting and EHLO


def test_greeting_names_the_host(srv):
    with srv.raw() as r:
        code, text = r.reply()
        assert code == 220
        assert text.split()[0] == HOSTNAME, text


def test_ehlo_lists_extensions_without_auth_on_port_25(srv):
    with contextlib.closing(srv.smtp(ehlo=False)) as s:
        code, msg = s.ehlo("client.test")
        assert code == 250
        assert msg.decode().splitlines()[0].startswith(HOSTNAME), msg
        features = s.esmtp_features
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "starttls"):
            assert ext in features, (ext, features)
        assert "auth" not in features, features
        assert features["size"].strip() == str(25 * 1024 * 1024)
        # AUTH is refused outright on the MX port, even if a client tries.
        code, msg = s.docmd("AUTH", "PLAIN AGJvYgBwYXNzd29yZA==")
        assert code == 503, (code, msg)


def test_starttls_on_port_25(mailsrv):
    sent = simple_message("over tls")
    with contextlib.closing(mailsrv.smtp()) as s:
        s.starttls(context=insecure_tls())
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert "starttls" not in s.esmtp_features
        assert "auth" not in s.esmtp_features
        assert "chunking" in s.esmtp_features
        assert s.sendmail("alice@remote.test", [BOB], sent) == {}
    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    prefix = split_received(raw_of(api, item["id"]), sent)
    assert b" with ESMTPS " in prefix, prefix


def test_helo_works_and_is_recorded_as_smtp(mailsrv):
    with contextlib.closing(mailsrv.smtp(ehlo=False)) as s:
        code, msg = s.helo("old.client.test")
        assert code == 250
        assert "pipelining" not in s.esmtp_features
        sent = simple_message("via helo")
        s.sendmail("alice@remote.test", [BOB], sent)
    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    prefix = split_received(raw_of(api, item["id"]), sent)
    assert b"from old.client.test" in prefix
    assert b" with SMTP " in prefix, prefix


# ---------------------------------------------------------------------- delivery and the API view


def test_delivery_shows_up_in_the_mailbox(mailsrv):
    sent = (
        "From: =?UTF-8?B?SsO8cmdlbiBNw7xsbGVy?= <juergen@remote.test>\r\n"
        f"To: Bob <{BOB}>\r\n"
        "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln_=E2=9C=93?=\r\n"
        "Date: Tue, 24 Nov 2026 10:00:00 +0100\r\n"
        "Message-ID: <first@remote.test>\r\n"
        "\r\n"
        "Hallo Bob.\r\n"
    ).encode()
    code, msg = mailsrv.send(BOB, sent, mail_from="juergen@remote.test")
    assert code == 250, msg
    assert msg.startswith(b"2.0.0"), msg

    api = bob_api(mailsrv)
    page = api.messages()
    assert page["next_cursor"] is None
    [item] = page["items"]
    assert item["subject"] == "Grüße aus Köln ✓"
    assert item["from"] == "Jürgen Müller <juergen@remote.test>"
    assert item["to"] == [f"Bob <{BOB}>"]
    assert item["date"] == "2026-11-24T09:00:00Z"
    assert item["seen"] is False
    assert item["has_attachments"] is False
    stored = raw_of(api, item["id"])
    assert item["size"] == len(stored)
    split_received(stored, sent, sender=b"juergen@remote.test")

    # Carol got nothing.
    assert mailsrv.api(CAROL, USER_PASSWORD).messages()["items"] == []


def build_multipart() -> tuple[bytes, bytes]:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"
    msg = EmailMessage()
    msg["From"] = "Alice Example <alice@remote.test>"
    msg["To"] = BOB
    msg["Cc"] = CAROL
    msg["Subject"] = "Quarterly report – Übersicht"
    msg["Date"] = "Tue, 24 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = "<report-1@remote.test>"
    msg.set_content("Plain text body\n.leading dot line\n..two dots\n")
    msg.add_alternative("<p>HTML <b>body</b></p>\n", subtype="html")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="report.pdf")
    data = msg.as_bytes(policy=email.policy.SMTP)
    assert b"=?utf-8?" in data.lower(), "subject should be RFC 2047 encoded"
    return data, pdf


def test_message_detail_raw_and_attachment(mailsrv):
    sent, pdf = build_multipart()
    with contextlib.closing(mailsrv.smtp()) as s:
        refused = s.sendmail("alice@remote.test", [BOB, CAROL], sent)
        assert refused == {}

    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    assert item["has_attachments"] is True
    assert item["subject"] == "Quarterly report – Übersicht"

    r = api.get(f"/api/v1/messages/{item['id']}")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["id"] == item["id"]
    assert d["subject"] == "Quarterly report – Übersicht"
    assert d["from"] == "Alice Example <alice@remote.test>"
    assert d["to"] == [BOB]
    assert d["cc"] == [CAROL]
    assert d["message_id"] == "report-1@remote.test"
    assert d["date"] == "2026-11-24T10:00:00Z"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", d["received_at"]), d["received_at"]
    assert "Plain text body" in d["text"]
    assert ".leading dot line" in d["text"]
    assert "..two dots" in d["text"]
    assert "<b>body</b>" in d["html"]
    assert d["attachments"] == [
        {"filename": "report.pdf", "content_type": "application/pdf", "size": len(pdf)}
    ]
    assert d["seen"] is False

    stored = raw_of(api, item["id"])
    assert d["size"] == len(stored)
    prefix = split_received(stored, sent)
    assert HOSTNAME.encode() in prefix
    # Two recipients: the Received header must not list them (Bcc privacy).
    assert BOB.encode() not in prefix and CAROL.encode() not in prefix

    r = api.get(f"/api/v1/messages/{item['id']}/attachments/0")
    assert r.status_code == 200
    assert r.content == pdf
    assert r.headers["content-type"] == "application/pdf"
    assert "report.pdf" in r.headers.get("content-disposition", "")
    assert_error(api.get(f"/api/v1/messages/{item['id']}/attachments/1"), 404)

    # Carol received the same message.
    carol = mailsrv.api(CAROL, USER_PASSWORD)
    [citem] = carol.wait_messages(1)
    assert raw_of(carol, citem["id"]) == stored


def test_received_header_for_single_recipient(mailsrv):
    sent = simple_message("trace")
    mailsrv.send(BOB, sent)
    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    prefix = split_received(raw_of(api, item["id"]), sent)
    text = prefix.decode()
    assert "from client.test ([127.0.0.1])" in text, text
    assert f"by {HOSTNAME}" in text
    assert "with ESMTP" in text
    assert f"for <{BOB}>" in text


def test_dot_stuffing_round_trips_byte_exact(mailsrv):
    body = ".starts with a dot\r\n..two dots\r\n.\r\nx\r\n. \r\n...\r\n"
    sent = simple_message("dots", body=body)
    assert mailsrv.send(BOB, sent)[0] == 250
    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    split_received(raw_of(api, item["id"]), sent)


def test_8bit_and_smtputf8_are_accepted_verbatim(mailsrv):
    sent = (
        "From: jürgen@remote.test\r\n"
        f"To: {BOB}\r\n"
        "Subject: Grüße\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Schöne Grüße – ✓\r\n"
    ).encode()
    with contextlib.closing(mailsrv.smtp()) as s:
        code, msg = s.mail("jürgen@remote.test", ["SMTPUTF8", "BODY=8BITMIME"])
        assert code == 250, msg
        assert s.rcpt(BOB)[0] == 250
        code, msg = s.data(sent)
        assert code == 250, msg
    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    split_received(raw_of(api, item["id"]), sent, sender="jürgen@remote.test".encode())
    assert item["subject"] == "Grüße"
    d = api.get(f"/api/v1/messages/{item['id']}").json()
    assert "Schöne Grüße – ✓" in d["text"]


def test_non_ascii_sender_without_smtputf8_is_refused(mailsrv):
    with mailsrv.raw() as r:
        r.greet()
        code, msg = r.cmd("MAIL FROM:<jürgen@remote.test>".encode())
        assert code == 553, (code, msg)
        assert r.cmd("MAIL FROM:<jürgen@remote.test> SMTPUTF8".encode())[0] == 250


def test_null_sender_is_accepted(mailsrv):
    with contextlib.closing(mailsrv.smtp()) as s:
        assert s.mail("<>")[0] == 250
        assert s.rcpt(BOB)[0] == 250
        assert s.data(simple_message("bounce"))[0] == 250
    assert [i["subject"] for i in bob_api(mailsrv).wait_messages(1)] == ["bounce"]


def test_recipient_address_case_does_not_matter(mailsrv):
    with contextlib.closing(mailsrv.smtp()) as s:
        assert s.mail("alice@remote.test")[0] == 250
        code, msg = s.rcpt("BoB@Example.TEST")
        assert code == 250, msg
        assert s.data(simple_message("case"))[0] == 250
    assert [i["subject"] for i in bob_api(mailsrv).wait_messages(1)] == ["case"]


def test_seen_flag(mailsrv):
    mailsrv.send(BOB, simple_message("flag me"))
    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    assert item["seen"] is False
    r = api.patch(f"/api/v1/messages/{item['id']}", json={"seen": True})
    assert r.status_code == 200, r.text
    assert r.json()["seen"] is True
    assert r.json()["id"] == item["id"]
    assert api.get(f"/api/v1/messages/{item['id']}").json()["seen"] is True
    assert api.messages()["items"][0]["seen"] is True
    r = api.patch(f"/api/v1/messages/{item['id']}", json={"seen": False})
    assert r.status_code == 200
    assert api.messages()["items"][0]["seen"] is False
    assert_error(api.patch(f"/api/v1/messages/{item['id']}", json={"starred": True}), 400)
    assert_error(api.patch(f"/api/v1/messages/{item['id']}", json={"seen": "yes"}), 400)


def test_delete_message(mailsrv):
    mailsrv.send([BOB, CAROL], simple_message("delete me"))
    mailsrv.send(BOB, simple_message("keep me"))
    api = bob_api(mailsrv)
    items = api.wait_messages(2)
    victim = next(i for i in items if i["subject"] == "delete me")
    r = api.delete(f"/api/v1/messages/{victim['id']}")
    assert r.status_code == 204, r.text
    assert_error(api.get(f"/api/v1/messages/{victim['id']}"), 404, "not_found")
    assert_error(api.get(f"/api/v1/messages/{victim['id']}/raw"), 404)
    assert_error(api.delete(f"/api/v1/messages/{victim['id']}"), 404)
    assert [i["subject"] for i in api.all_messages()] == ["keep me"]
    # Carol's copy of the same message is untouched, body included.
    carol = mailsrv.api(CAROL, USER_PASSWORD)
    [citem] = carol.all_messages()
    assert citem["subject"] == "delete me"
    assert b"delete me" in raw_of(carol, citem["id"])


def test_other_users_messages_are_404(mailsrv):
    mailsrv.send(BOB, simple_message("private"))
    [item] = bob_api(mailsrv).wait_messages(1)
    mid = item["id"]
    for who in (mailsrv.api(CAROL, USER_PASSWORD), mailsrv.api()):
        assert_error(who.get(f"/api/v1/messages/{mid}"), 404, "not_found")
        assert_error(who.get(f"/api/v1/messages/{mid}/raw"), 404, "not_found")
        assert_error(who.get(f"/api/v1/messages/{mid}/attachments/0"), 404)
        assert_error(who.patch(f"/api/v1/messages/{mid}", json={"seen": True}), 404)
        assert_error(who.delete(f"/api/v1/messages/{mid}"), 404)
        assert who.messages()["items"] == []
    # And nothing they tried had an effect.
    [after] = bob_api(mailsrv).all_messages()
    assert after["seen"] is False


def test_pagination_newest_first(mailsrv):
    subjects = [f"page test {i}" for i in range(5)]
    with contextlib.closing(mailsrv.smtp()) as s:
        for subj in subjects:
            s.sendmail("alice@remote.test", [BOB], simple_message(subj))
    api = bob_api(mailsrv)
    api.wait_messages(5)
    seen, cursor, pages = [], None, []
    for _ in range(10):
        params = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.messages(**params)
        pages.append(len(page["items"]))
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [2, 2, 1]
    assert [i["subject"] for i in seen] == list(reversed(subjects))
    assert len({i["id"] for i in seen}) == 5
    # The default page holds them all; limit is clamped, not an error.
    assert [i["subject"] for i in api.messages()["items"]] == list(reversed(subjects))
    assert len(api.messages(limit=0)["items"]) >= 1
    assert len(api.messages(limit=100000)["items"]) == 5
    # New mail arriving between pages neither duplicates nor skips older messages.
    page1 = api.messages(limit=2)
    mailsrv.send(BOB, simple_message("late arrival"))
    rest, cursor = [], page1["next_cursor"]
    while cursor:
        page = api.messages(limit=2, cursor=cursor)
        rest.extend(page["items"])
        cursor = page["next_cursor"]
    assert [i["subject"] for i in page1["items"] + rest] == list(reversed(subjects))
    assert api.messages(limit=1)["items"][0]["subject"] == "late arrival"


# ---------------------------------------------------------------------- policy rejections


def test_unknown_user_in_hosted_domain_is_550_511(mailsrv):
    with contextlib.closing(mailsrv.smtp()) as s:
        assert s.mail("alice@remote.test")[0] == 250
        code, msg = s.rcpt(f"nobody@{DOMAIN}")
        assert code == 550, msg
        assert msg.startswith(b"5.1.1"), msg
        # The transaction goes on for the valid recipient.
        assert s.rcpt(BOB)[0] == 250
        assert s.data(simple_message("partial"))[0] == 250
    assert len(bob_api(mailsrv).wait_messages(1)) == 1


def test_unhosted_domain_is_relay_denied(mailsrv):
    with contextlib.closing(mailsrv.smtp()) as s:
        assert s.mail(BOB)[0] == 250
        for rcpt in ("someone@elsewhere.test", f"bob@sub.{DOMAIN}", "bob@example.test.evil.test"):
            code, msg = s.rcpt(rcpt)
            assert code == 554, (rcpt, code, msg)
            assert msg.startswith(b"5.7.1"), msg
        code, msg = s.docmd("DATA")
        assert 500 <= code < 600, (code, msg)


def test_declared_size_too_large_is_552(srv):
    setup_domain_and_user(srv)
    with contextlib.closing(srv.smtp()) as s:
        code, msg = s.mail("alice@remote.test", [f"SIZE={25 * 1024 * 1024 + 1}"])
        assert code == 552, msg
        assert msg.startswith(b"5.3.4"), msg
        code, msg = s.mail("alice@remote.test", [f"SIZE={25 * 1024 * 1024}"])
        assert code == 250, msg


def test_message_over_max_size_is_552_and_not_stored(server):
    srv = server({"smtp": {"max_message_size": 2000}})
    setup_domain_and_user(srv)
    with contextlib.closing(srv.smtp()) as s:
        assert s.esmtp_features["size"].strip() == "2000"
        code, msg = s.mail("alice@remote.test", ["SIZE=2001"])
        assert code == 552 and msg.startswith(b"5.3.4"), (code, msg)

        assert s.mail("alice@remote.test")[0] == 250
        assert s.rcpt(BOB)[0] == 250
        code, msg = s.data(simple_message("too big", body=("y" * 70 + "\r\n") * 80))
        assert code == 552, (code, msg)
        assert msg.startswith(b"5.3.4"), msg
        # The session is still usable, and a message under the limit goes through.
        assert s.noop()[0] == 250
        assert s.mail("alice@remote.test")[0] == 250
        assert s.rcpt(BOB)[0] == 250
        code, msg = s.data(simple_message("fits", body=("z" * 70 + "\r\n") * 15))
        assert code == 250, msg
    assert [i["subject"] for i in bob_api(srv).wait_messages(1)] == ["fits"]


def test_max_message_size_boundary(server):
    srv = server({"smtp": {"max_message_size": 2000}})
    setup_domain_and_user(srv)
    head = simple_message("boundary", body="")
    for total, expected in ((2000, 250), (2001, 552)):
        data = head + b"b" * (total - len(head) - 2) + b"\r\n"
        assert len(data) == total
        with contextlib.closing(srv.smtp()) as s:
            assert s.mail("alice@remote.test")[0] == 250
            assert s.rcpt(BOB)[0] == 250
            code, msg = s.data(data)
            assert code == expected, (total, code, msg)
    assert len(bob_api(srv).all_messages()) == 1


def test_data_timeout_stores_nothing(server):
    srv = server({"smtp": {"data_timeout": "1s"}})
    setup_domain_and_user(srv)
    with srv.raw() as r:
        r.greet()
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
        assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        r.send(b"Subject: stalled\r\n\r\npartial body\r\n")
        code, msg = r.reply()
        assert code == 421, (code, msg)
        assert r.is_closed()
    assert bob_api(srv).all_messages() == []


def test_too_many_recipients_is_452(server):
    srv = server({"smtp": {"max_recipients": 2}})
    setup_domain_and_user(srv, users=("bob", "carol", "dave"))
    with contextlib.closing(srv.smtp()) as s:
        assert s.mail("alice@remote.test")[0] == 250
        assert s.rcpt(BOB)[0] == 250
        assert s.rcpt(CAROL)[0] == 250
        code, msg = s.rcpt(f"dave@{DOMAIN}")
        assert code == 452, msg
        assert msg.startswith(b"4.5.3"), msg
        assert s.data(simple_message("two only"))[0] == 250
    assert len(bob_api(srv).wait_messages(1)) == 1
    assert len(srv.api(CAROL, USER_PASSWORD).wait_messages(1)) == 1
    assert srv.api(f"dave@{DOMAIN}", USER_PASSWORD).all_messages() == []


def test_quota_makes_next_rcpt_452_422(mailsrv):
    admin = mailsrv.api()
    admin.add_user(f"small@{DOMAIN}", USER_PASSWORD, quota_bytes=2000)
    small = f"small@{DOMAIN}"
    big = simple_message("fills the box", body=("q" * 70 + "\r\n") * 40)
    assert len(big) > 2000
    assert mailsrv.send(small, big)[0] == 250
    users = {u["email"]: u for u in admin.get("/api/v1/users").json()["items"]}
    assert users[small]["used_bytes"] >= len(big)

    with contextlib.closing(mailsrv.smtp()) as s:
        assert s.mail("alice@remote.test")[0] == 250
        code, msg = s.rcpt(small)
        assert code == 452, msg
        assert msg.startswith(b"4.2.2"), msg
        # Other mailboxes are not affected.
        assert s.rcpt(BOB)[0] == 250
        assert s.data(simple_message("for bob only"))[0] == 250
    assert [i["subject"] for i in mailsrv.api(small, USER_PASSWORD).all_messages()] == ["fills the box"]

    # Deleting mail frees the quota.
    api = mailsrv.api(small, USER_PASSWORD)
    [item] = api.all_messages()
    assert api.delete(f"/api/v1/messages/{item['id']}").status_code == 204
    with contextlib.closing(mailsrv.smtp()) as s:
        assert s.mail("alice@remote.test")[0] == 250
        assert s.rcpt(small)[0] == 250


# ---------------------------------------------------------------------- small commands


def test_vrfy_is_disabled(mailsrv):
    with contextlib.closing(mailsrv.smtp()) as s:
        for who in (BOB, f"nobody@{DOMAIN}"):
            code, msg = s.verify(who)
            assert code == 502, (code, msg)
            assert msg.startswith(b"5.5.1"), msg
        code, msg = s.expn("staff")
        assert code == 502, (code, msg)


def test_vrfy_when_enabled_does_not_reveal_users(server):
    srv = server({"smtp": {"vrfy": True}})
    setup_domain_and_user(srv)
    with contextlib.closing(srv.smtp()) as s:
        a = s.verify(BOB)
        b = s.verify(f"nobody@{DOMAIN}")
        assert a[0] == b[0] == 252, (a, b)
        assert a[1] == b[1]


def test_help_noop_rset_quit_and_unknown(mailsrv):
    with contextlib.closing(mailsrv.smtp()) as s:
        code, msg = s.docmd("HELP")
        assert code == 214, msg
        assert s.noop()[0] == 250
        assert s.mail("alice@remote.test")[0] == 250
        assert s.rset()[0] == 250
        # RSET ended the transaction: RCPT now needs a new MAIL.
        code, msg = s.rcpt(BOB)
        assert code == 503, (code, msg)
        # EHLO also resets the transaction.
        assert s.mail("alice@remote.test")[0] == 250
        assert s.ehlo("client.test")[0] == 250
        code, msg = s.rcpt(BOB)
        assert code == 503, (code, msg)
        code, msg = s.docmd("FROBNICATE", "now")
        assert code == 500, (code, msg)
        assert msg.startswith(b"5.5.2"), msg
        code, msg = s.docmd("")
        assert 500 <= code <= 501, (code, msg)
        assert s.noop()[0] == 250
        code, msg = s.quit()
        assert code == 221


def test_commands_out_of_order_are_503(mailsrv):
    with mailsrv.raw() as r:
        assert r.reply()[0] == 220
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 503
        assert r.cmd("EHLO client.test")[0] == 250
        assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 503
        assert r.cmd("DATA")[0] == 503
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 503
        code, _ = r.cmd("DATA")
        assert code in (503, 554), code
        assert r.cmd("MAIL FROM:<alice@remote.test> FOO=BAR")[0] in (501, 503, 555)
        assert r.cmd("QUIT")[0] == 221
        assert r.is_closed()


def test_syntax_errors_are_501_or_555(mailsrv):
    with mailsrv.raw() as r:
        r.greet()
        assert r.cmd("MAIL FROM:alice")[0] in (501, 553)
        assert r.cmd("MAIL FROM:<alice@remote.test> FOO=BAR")[0] in (501, 555)
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
        assert r.cmd("RCPT TO:<not an address>")[0] in (501, 553)
        assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250


def test_too_many_errors_close_the_connection(server):
    srv = server({"smtp": {"max_errors": 3}})
    with srv.raw() as r:
        r.greet()
        assert r.cmd("BOGUS1")[0] == 500
        assert r.cmd("BOGUS2")[0] == 500
        r.send(b"BOGUS3\r\n")
        replies = []
        with contextlib.suppress(ConnectionError, OSError):
            for _ in range(2):
                replies.append(r.reply())
        assert [c for c, _ in replies] == [500, 421], replies
        assert r.is_closed()


def test_overlong_command_line_is_500(mailsrv):
    with mailsrv.raw() as r:
        r.greet()
        code, msg = r.cmd("NOOP " + "x" * 5000)
        assert code == 500, (code, msg)
        assert r.cmd("NOOP")[0] == 250


def test_idle_connection_times_out_with_421(server):
    srv = server({"smtp": {"command_timeout": "1s"}})
    with srv.raw() as r:
        r.greet()
        t0 = time.monotonic()
        code, msg = r.reply()
        assert code == 421, (code, msg)
        assert 0.5 < time.monotonic() - t0 < 8
        assert r.is_closed()
    # The listener goes on.
    with srv.raw() as r:
        assert r.reply()[0] == 220


def test_connection_limit_per_ip(server):
    srv = server({"smtp": {"max_connections_per_ip": 2}})
    a, b = srv.raw(), srv.raw()
    try:
        assert a.reply()[0] == 220
        assert b.reply()[0] == 220
        with srv.raw() as c:
            code, msg = c.reply()
            assert code == 421, (code, msg)
            assert c.is_closed()
    finally:
        a.close()
        b.close()
    # Slots are freed when connections close.
    deadline = time.monotonic() + 5
    while True:
        with srv.raw() as d:
            code, _ = d.reply()
        if code == 220 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert code == 220


# ---------------------------------------------------------------------- BDAT and PIPELINING


def bdat_session(srv):
    r = srv.raw()
    r.greet()
    assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
    assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    return r


def test_bdat_chunks_then_bdat_0_last(mailsrv):
    part1 = b"From: alice@remote.test\r\nSubject: chunked one\r\n\r\nfirst part, split in the mid"
    part2 = b"dle of a line\r\n.\r\nMAIL FROM:<evil@x>\r\n..dots stay\r\n"
    with bdat_session(mailsrv) as r:
        r.send(b"BDAT %d\r\n" % len(part1) + part1)
        code, msg = r.reply()
        assert code == 250, msg
        r.send(b"BDAT %d\r\n" % len(part2) + part2)
        code, msg = r.reply()
        assert code == 250, msg
        code, msg = r.cmd("BDAT 0 LAST")
        assert code == 250, msg
        # Nothing inside the chunks ran as a command.
        assert r.nothing_pending() == b""
        assert r.cmd("NOOP")[0] == 250
    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    assert item["subject"] == "chunked one"
    split_received(raw_of(api, item["id"]), part1 + part2)


def test_bdat_last_with_data(mailsrv):
    part1 = b"From: alice@remote.test\r\nSubject: chunked two\r\n"
    part2 = b"\r\nbody\r\n"
    with bdat_session(mailsrv) as r:
        # Both chunks in one write (BDAT may be pipelined).
        r.send(b"BDAT %d\r\n" % len(part1) + part1 + b"BDAT %d LAST\r\n" % len(part2) + part2)
        assert r.reply()[0] == 250
        code, msg = r.reply()
        assert code == 250, msg
    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    assert item["subject"] == "chunked two"
    split_received(raw_of(api, item["id"]), part1 + part2)


def test_bdat_over_max_size_is_552(server):
    srv = server({"smtp": {"max_message_size": 1000}})
    setup_domain_and_user(srv)
    with bdat_session(srv) as r:
        chunk = b"x" * 800
        r.send(b"BDAT 800\r\n" + chunk)
        first = r.reply()
        r.send(b"BDAT 800 LAST\r\n" + chunk)
        code, msg = r.reply()
        assert first[0] in (250, 552), first
        assert code == 552, (code, msg)
        assert msg.startswith("5.3.4"), msg
        assert r.cmd("NOOP")[0] == 250
    assert bob_api(srv).all_messages() == []


def test_pipelining_answers_every_command(mailsrv):
    with mailsrv.raw() as r:
        r.greet()
        r.send(
            b"MAIL FROM:<alice@remote.test>\r\n"
            + f"RCPT TO:<{BOB}>\r\n".encode()
            + f"RCPT TO:<nobody@{DOMAIN}>\r\n".encode()
            + f"RCPT TO:<{CAROL}>\r\n".encode()
            + b"DATA\r\n"
        )
        codes = [c for c, _ in r.replies(5)]
        assert codes == [250, 250, 550, 250, 354], codes
        r.send(simple_message("pipelined") + b".\r\nNOOP\r\nQUIT\r\n")
        codes = [c for c, _ in r.replies(3)]
        assert codes == [250, 250, 221], codes
    assert [i["subject"] for i in bob_api(mailsrv).wait_messages(1)] == ["pipelined"]
    assert [i["subject"] for i in mailsrv.api(CAROL, USER_PASSWORD).wait_messages(1)] == ["pipelined"]


def test_pipelined_transactions_back_to_back(mailsrv):
    batch = b""
    for i in range(3):
        batch += b"MAIL FROM:<alice@remote.test>\r\n" + f"RCPT TO:<{BOB}>\r\n".encode() + b"DATA\r\n"
        batch += simple_message(f"batch {i}") + b".\r\n"
    with mailsrv.raw() as r:
        r.greet()
        # A client that pipelines through DATA (not allowed to expect it to work, but it must
        # never confuse data with commands): send the first transaction's commands, then the rest.
        first, rest = batch.split(b"DATA\r\n", 1)
        r.send(first + b"DATA\r\n")
        assert [c for c, _ in r.replies(3)] == [250, 250, 354]
        r.send(rest)
        # 250 for message 0, then for each further transaction 250 250 354 250.
        codes = [c for c, _ in r.replies(1 + 4 * 2)]
        assert codes == [250] + [250, 250, 354, 250] * 2, codes
    subjects = [i["subject"] for i in bob_api(mailsrv).wait_messages(3)]
    assert subjects == ["batch 2", "batch 1", "batch 0"]


# ---------------------------------------------------------------------- mailbox edge cases


def test_duplicate_recipients_get_one_copy(mailsrv):
    with contextlib.closing(mailsrv.smtp()) as s:
        assert s.mail("alice@remote.test")[0] == 250
        assert s.rcpt(BOB)[0] == 250
        assert s.rcpt(BOB)[0] == 250
        assert s.rcpt(BOB.upper())[0] == 250
        assert s.data(simple_message("once"))[0] == 250
    assert [i["subject"] for i in bob_api(mailsrv).wait_messages(1)] == ["once"]


def test_deleted_user_mail_is_gone_and_shared_copies_survive(mailsrv):
    sent = simple_message("shared")
    assert mailsrv.send([BOB, CAROL], sent)[0] == 250
    admin = mailsrv.api()
    token = bob_api(mailsrv).post("/api/v1/tokens").json()["token"]
    assert admin.delete(f"/api/v1/users/{BOB}").status_code == 204
    assert_error(mailsrv.api(token=token).get("/api/v1/messages"), 401)
    # Carol's copy, body included, is intact.
    carol = mailsrv.api(CAROL, USER_PASSWORD)
    [item] = carol.all_messages()
    assert raw_of(carol, item["id"]).endswith(sent)
    # A new account with the same address does not inherit the old mailbox.
    admin.add_user(BOB, "another-password-1")
    assert mailsrv.api(BOB, "another-password-1").all_messages() == []
    # And mail to the address now reaches the new account.
    assert mailsrv.send(BOB, simple_message("new bob"))[0] == 250
    assert [i["subject"] for i in mailsrv.api(BOB, "another-password-1").all_messages()] == ["new bob"]


def test_empty_and_headerless_messages_are_stored_and_readable(mailsrv):
    with mailsrv.raw() as r:
        r.greet()
        for body in (b"", b"just a line without headers\r\n"):
            assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
            assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
            assert r.cmd("DATA")[0] == 354
            r.send(body + b".\r\n")
            code, msg = r.reply()
            assert code == 250, (body, code, msg)
    api = bob_api(mailsrv)
    items = api.wait_messages(2)
    assert len(items) == 2
    for item in items:
        assert item["subject"] == ""
        # Without a Date: header the arrival time is shown.
        shown = datetime.fromisoformat(item["date"].replace("Z", "+00:00"))
        assert abs(shown.timestamp() - time.time()) < 120, item["date"]
        r = api.get(f"/api/v1/messages/{item['id']}")
        assert r.status_code == 200, r.text
        raw = raw_of(api, item["id"])
        assert raw.startswith(b"Return-Path: <alice@remote.test>\r\nReceived: ")


def test_large_message_round_trips(mailsrv):
    blob = bytes((i * 7 + 3) % 256 for i in range(1_500_000))
    msg = EmailMessage()
    msg["From"] = "alice@remote.test"
    msg["To"] = BOB
    msg["Subject"] = "large"
    msg.set_content("see attachment\n")
    msg.add_attachment(blob, maintype="application", subtype="octet-stream", filename="big.bin")
    sent = msg.as_bytes(policy=email.policy.SMTP)
    assert len(sent) > 2_000_000
    with contextlib.closing(mailsrv.smtp()) as s:
        assert s.sendmail("alice@remote.test", [BOB], sent) == {}
    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    split_received(raw_of(api, item["id"]), sent)
    r = api.get(f"/api/v1/messages/{item['id']}/attachments/0")
    assert r.status_code == 200
    assert r.content == blob


def test_acceptance_and_rejection_metrics(mailsrv):
    assert mailsrv.send(BOB, simple_message("counted"))[0] == 250
    with contextlib.closing(mailsrv.smtp()) as s:
        assert s.mail("alice@remote.test")[0] == 250
        assert s.rcpt(f"nobody@{DOMAIN}")[0] == 550
        assert s.rcpt("x@elsewhere.test")[0] == 554
    text = mailsrv.metrics()
    from conftest import metric_value

    assert metric_value(text, "mairust_smtp_messages_accepted_total", {"listener": "smtp"}) == 1
    assert metric_value(text, "mairust_smtp_messages_rejected_total", {"reason": "unknown_user"}) == 1
    assert metric_value(text, "mairust_smtp_messages_rejected_total", {"reason": "relay_denied"}) == 1
    assert (metric_value(text, "mairust_smtp_connections_total", {"listener": "smtp"}) or 0) >= 2


# ---------------------------------------------------------------------- hardening


def test_numbers_too_large_for_the_parser_are_refused(mailsrv):
    with bdat_session(mailsrv) as r:
        # smtp-proto alone reads this as a 9-octet chunk and stores "abcdeNOOP".
        r.send(b"BDAT 999999999999999999999 LAST\r\nabcdeNOOP\r\n")
        code, msg = r.reply()
        assert code == 501 and msg.startswith("5.5.4"), (code, msg)
        # The octets were not taken as a chunk; they are a (bad) command line.
        assert r.reply()[0] == 500
        assert r.cmd("RSET")[0] == 250
        code, msg = r.cmd("MAIL FROM:<alice@remote.test> SIZE=999999999999999999995")
        assert code == 552 and msg.startswith("5.3.4"), (code, msg)
    assert bob_api(mailsrv).all_messages() == []


def test_client_headers_are_dropped_and_return_path_added(mailsrv):
    body = b"Bcc: in the body stays\r\n"
    sent = (
        b"Return-Path: <forged@evil.test>\r\n"
        b"From: alice@remote.test\r\n"
        b"To: " + BOB.encode() + b"\r\n"
        b"Bcc: hidden@remote.test,\r\n\tother-hidden@remote.test\r\n"
        b"Content-Length: 5\r\n"
        b"Resent-Bcc: x@remote.test\r\n"
        b"Delivered-To: someone@remote.test\r\n"
        b"Subject: dropped headers\r\n"
        b"\r\n" + body
    )
    assert mailsrv.send(BOB, sent, mail_from="bounces@remote.test")[0] == 250
    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    raw = raw_of(api, item["id"])
    assert item["size"] == len(raw)
    # Return-Path comes from the envelope and is the first line; the forged one is gone.
    assert raw.startswith(b"Return-Path: <bounces@remote.test>\r\nReceived: "), raw[:200]
    assert b"forged" not in raw
    headers = raw.split(b"\r\n\r\n", 1)[0]
    for gone in (b"hidden", b"Content-Length", b"Resent-Bcc"):
        assert gone not in headers, (gone, headers)
    assert headers.count(b"Return-Path:") == 1
    assert b"Delivered-To: someone@remote.test" in headers
    assert raw.endswith(b"Subject: dropped headers\r\n\r\n" + body)


def test_null_sender_gets_an_empty_return_path(mailsrv):
    assert mailsrv.send(BOB, simple_message("bounce"), mail_from="")[0] == 250
    api = bob_api(mailsrv)
    [item] = api.wait_messages(1)
    assert raw_of(api, item["id"]).startswith(b"Return-Path: <>\r\nReceived: ")


def test_recipient_probing_is_cut_off(server):
    # The default smtp.max_errors (20); error_delay shortened so that the test stays fast.
    srv = server({"smtp": {"error_delay": "10ms"}})
    setup_domain_and_user(srv)
    with srv.raw() as r:
        r.greet()
        assert r.cmd("MAIL FROM:<prober@remote.test>")[0] == 250
        codes = []
        with contextlib.suppress(ConnectionError, OSError):
            for i in range(200):
                code, _ = r.cmd(f"RCPT TO:<nobody{i}@{DOMAIN}>")
                codes.append(code)
                if code == 421:
                    break
        assert codes[:20] == [550] * 20 and codes[20:] == [421], codes
        assert r.is_closed()


def test_junk_commands_are_limited(server):
    srv = server({"smtp": {"max_junk_commands": 10, "max_errors": 5, "error_delay": "10ms"}})
    with srv.raw() as r:
        r.greet()
        codes = []
        with contextlib.suppress(ConnectionError, OSError):
            for i in range(1000):
                code, _ = r.cmd("RSET" if i % 2 else "NOOP")
                codes.append(code)
                if code != 250:
                    break
        # 10 free junk commands, then 5 that count as errors; the fifth error closes.
        assert codes == [250] * 15 + [421], codes
        assert r.is_closed()


def test_errors_past_the_soft_limit_are_slowed_down(server):
    srv = server({"smtp": {"soft_error_limit": 2, "error_delay": "400ms"}})
    with srv.raw() as r:
        r.greet()
        for _ in range(2):
            t0 = time.monotonic()
            assert r.cmd("BOGUS")[0] == 500
            assert time.monotonic() - t0 < 0.3
        t0 = time.monotonic()
        assert r.cmd("BOGUS")[0] == 500
        assert time.monotonic() - t0 >= 0.35
        # Good commands are not delayed.
        t0 = time.monotonic()
        assert r.cmd("NOOP")[0] == 250
        assert time.monotonic() - t0 < 0.3


def test_a_trickled_command_hits_the_command_deadline(server):
    srv = server({"smtp": {"command_timeout": "10s", "command_deadline": "1s"}})
    with srv.raw() as r:
        r.greet()
        t0 = time.monotonic()
        reply = None
        with contextlib.suppress(ConnectionError, OSError):
            for _ in range(40):  # one byte every 0.2 s, never a CRLF
                r.send(b"X")
                extra = r.nothing_pending(0.2)
                if extra:
                    reply = extra
                    break
        assert reply is not None and reply.startswith(b"421 4.4.2"), reply
        assert time.monotonic() - t0 < 4
        assert r.is_closed()


def test_trickled_commands_that_complete_are_fine(server):
    srv = server({"smtp": {"command_deadline": "1s"}})
    with srv.raw() as r:
        r.greet()
        # Each command completes within the deadline, the session as a whole lasts longer.
        for _ in range(4):
            r.send(b"NO")
            time.sleep(0.2)
            r.send(b"OP\r\n")
            assert r.reply()[0] == 250
            time.sleep(0.3)


def test_a_trickled_message_hits_the_data_deadline(server):
    srv = server({"smtp": {"data_timeout": "10s", "data_deadline": "1s"}})
    setup_domain_and_user(srv)
    with srv.raw() as r:
        r.greet()
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
        assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        t0 = time.monotonic()
        reply = None
        with contextlib.suppress(ConnectionError, OSError):
            for _ in range(40):  # whole lines, one every 0.2 s: each read is quick
                r.send(b"Subject: slow\r\n")
                extra = r.nothing_pending(0.2)
                if extra:
                    reply = extra
                    break
        assert reply is not None and reply.startswith(b"421 4.4.2"), reply
        assert time.monotonic() - t0 < 4
    assert bob_api(srv).all_messages() == []


def test_a_trickled_bdat_transfer_hits_the_data_deadline(server):
    srv = server({"smtp": {"data_timeout": "10s", "data_deadline": "1s"}})
    setup_domain_and_user(srv)
    with bdat_session(srv) as r:
        t0 = time.monotonic()
        codes = []
        with contextlib.suppress(ConnectionError, OSError):
            for _ in range(40):  # small chunks, each answered at once
                r.send(b"BDAT 3\r\nabc")
                code, _ = r.reply()
                codes.append(code)
                if code != 250:
                    break
                time.sleep(0.1)
        assert codes[-1] == 421 and 250 in codes, codes
        assert time.monotonic() - t0 < 4
    assert bob_api(srv).all_messages() == []


def test_postmaster_is_always_accepted(mailsrv):
    # Bare <postmaster> and postmaster@ the hosted domain go to the bootstrap admin.
    with contextlib.closing(mailsrv.smtp()) as s:
        assert s.mail("alice@remote.test")[0] == 250
        for rcpt in ("postmaster", f"postmaster@{DOMAIN}", f"PostMaster@{DOMAIN}"):
            code, msg = s.rcpt(rcpt)
            assert code == 250, (rcpt, code, msg)
        code, msg = s.data(simple_message("to the postmaster"))
        assert code == 250, msg
        # postmaster at a domain that is not hosted is still relaying.
        assert s.mail("alice@remote.test")[0] == 250
        assert s.rcpt("postmaster@elsewhere.test")[0] == 554
    admin = mailsrv.api()
    [item] = admin.wait_messages(1)
    assert item["subject"] == "to the postmaster"


def test_postmaster_mailbox_is_configurable_and_real_users_keep_theirs(server):
    srv = server({"smtp": {"postmaster": f"carol@{DOMAIN}"}})
    setup_domain_and_user(srv, users=("bob", "carol"))
    setup_domain_and_user(srv, domain="other.test", users=("postmaster",))
    assert srv.send("postmaster", simple_message("bare"))[0] == 250
    assert srv.send(f"postmaster@{DOMAIN}", simple_message("at example"))[0] == 250
    assert srv.send("postmaster@other.test", simple_message("real one"))[0] == 250
    # The send API resolves recipients the same way.
    r = srv.api(BOB, USER_PASSWORD).post("/api/v1/send", json={
        "from": BOB, "to": [f"postmaster@{DOMAIN}"], "subject": "through the API", "text": "hi"})
    assert r.status_code == 202, r.text
    carol = srv.api(CAROL, USER_PASSWORD)
    assert sorted(i["subject"] for i in carol.wait_messages(3)) == [
        "at example", "bare", "through the API"]
    real = srv.api("postmaster@other.test", USER_PASSWORD)
    assert [i["subject"] for i in real.wait_messages(1)] == ["real one"]
    assert srv.api().all_messages() == []


def test_postmaster_goes_to_the_generated_admin_without_configuration(server):
    srv = server(admin=False)
    line = srv.wait_for_log(lambda l: "first admin" in l["message"])
    password = Path(line["fields"]["password_file"]).read_text().strip()
    admin = srv.api(line["fields"]["email"], password)
    admin.add_domain(DOMAIN)
    assert srv.send(f"postmaster@{DOMAIN}", simple_message("for the admin"))[0] == 250
    assert [i["subject"] for i in admin.wait_messages(1)] == ["for the admin"]
