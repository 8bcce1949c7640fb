"""SMTP smuggling and line-ending handling, over raw sockets.

Inside DATA only CRLF.CRLF ends a message. Sequences that other servers may take for the end
(`\\n.\\n`, `\\n.\\r\\n`, `\\r\\n.\\n`, `\\r.\\r\\n`) must neither end the message nor let the
text after them run as commands; MaiRust rejects such a message with `550 5.6.11` once its
real end arrives, and stores nothing of it; BDAT chunks follow the same rule. Command lines with a bare CR or LF are refused
whole (`500`) and never split into two commands.
"""

import pytest

from conftest import DOMAIN, USER_PASSWORD, setup_domain_and_user, simple_message

BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"

SEQUENCES = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-crlf": b"\r.\r\n",
    "cr-dot-cr": b"\r.\r",
    "lf-dot-cr-lf-crlf": b"\n.\r\n\r\n",
}


@pytest.fixture
def smtpsrv(server):
    s = server()
    setup_domain_and_user(s, users=("bob", "carol"))
    return s


def open_data(srv, rcpt=BOB):
    r = srv.raw()
    r.greet()
    assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
    assert r.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
    code, _ = r.cmd("DATA")
    assert code == 354
    return r


def stored_subjects(srv, who=BOB):
    return [i["subject"] for i in srv.api(who, USER_PASSWORD).all_messages()]


def stored_raw(srv, who=BOB) -> bytes:
    api = srv.api(who, USER_PASSWORD)
    return b"".join(api.get(f"/api/v1/messages/{i['id']}/raw").content for i in api.all_messages())


@pytest.mark.parametrize("seq", list(SEQUENCES.values()), ids=list(SEQUENCES))
def test_fake_end_of_data_does_not_end_the_message(smtpsrv, seq):
    smuggled = (
        b"MAIL FROM:<evil@x.test>\r\n"
        + f"RCPT TO:<{CAROL}>\r\n".encode()
        + b"DATA\r\n"
        + b"Subject: SMUGGLED\r\n\r\nevil body\r\n"
    )
    payload = b"From: alice@remote.test\r\nSubject: carrier\r\n\r\nhello" + seq + smuggled
    with open_data(smtpsrv) as r:
        r.send(payload)
        # Nothing may be answered yet: the message has not ended.
        early = r.nothing_pending(0.5)
        assert early == b"", f"server answered before the real end of data: {early!r}"
        r.send(b".\r\n")
        code, msg = r.reply()
        assert code == 550, (code, msg)
        assert msg.startswith("5.6.11"), msg
        # Exactly one reply: none of the smuggled commands ran.
        assert r.nothing_pending(0.3) == b""
        assert r.cmd("NOOP") == (250, "2.0.0 Ok")
        # We are out of any transaction: RCPT needs a new MAIL.
        assert r.cmd(f"RCPT TO:<{CAROL}>")[0] == 503
        # And the session still delivers a clean message afterwards.
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
        assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        r.send(simple_message("clean after smuggling") + b".\r\n")
        assert r.reply()[0] == 250
    assert stored_subjects(smtpsrv, BOB) == ["clean after smuggling"]
    assert stored_subjects(smtpsrv, CAROL) == []
    raw = stored_raw(smtpsrv, BOB)
    assert b"SMUGGLED" not in raw and b"evil" not in raw and b"carrier" not in raw


@pytest.mark.parametrize("seq", list(SEQUENCES.values()), ids=list(SEQUENCES))
def test_fake_end_split_across_writes(smtpsrv, seq):
    """The same, with the sequence and the smuggled commands in separate TCP writes."""
    with open_data(smtpsrv) as r:
        r.send(b"Subject: carrier\r\n\r\nhello")
        r.send(seq)
        assert r.nothing_pending(0.2) == b""
        r.send(b"MAIL FROM:<evil@x.test>\r\n")
        r.send(f"RCPT TO:<{CAROL}>\r\n".encode())
        r.send(b"DATA\r\n")
        assert r.nothing_pending(0.3) == b""
        r.send(b"Subject: SMUGGLED\r\n\r\nevil\r\n.\r\n")
        code, msg = r.reply()
        assert code == 550 and msg.startswith("5.6.11"), (code, msg)
        assert r.nothing_pending(0.3) == b""
    assert stored_subjects(smtpsrv, BOB) == []
    assert stored_subjects(smtpsrv, CAROL) == []


def test_bare_lf_anywhere_in_data_rejects_the_message(smtpsrv):
    for body in (b"line one\nline two\r\n", b"line one\rline two\r\n", b"bare lf at line end\n\r\n"):
        with open_data(smtpsrv) as r:
            r.send(b"Subject: bare\r\n\r\n" + body + b".\r\n")
            code, msg = r.reply()
            assert code == 550 and msg.startswith("5.6.11"), (body, code, msg)
    assert stored_subjects(smtpsrv) == []


def test_real_end_right_after_a_smuggling_sequence(smtpsrv):
    """`\\n.\\n` immediately followed by the real terminator: one message, rejected."""
    with open_data(smtpsrv) as r:
        r.send(b"Subject: x\r\n\r\nhello\n.\n\r\n.\r\nNOOP\r\n")
        code, msg = r.reply()
        assert code == 550 and msg.startswith("5.6.11"), (code, msg)
        assert r.reply()[0] == 250  # the NOOP after the real end runs, once
        assert r.nothing_pending(0.3) == b""
    assert stored_subjects(smtpsrv) == []


def test_crlf_dot_crlf_inside_stuffed_data_is_kept(smtpsrv):
    """A dot-stuffed line `..` is data, not an end; the message is stored unstuffed."""
    sent = simple_message("stuffed", body="a\r\n.\r\nb\r\n")
    stuffed = sent.replace(b"\r\n.", b"\r\n..")
    with open_data(smtpsrv) as r:
        r.send(stuffed + b".\r\n")
        code, msg = r.reply()
        assert code == 250, (code, msg)
    raw = stored_raw(smtpsrv)
    assert raw.endswith(sent)


def test_command_with_bare_lf_is_refused_whole(smtpsrv):
    with smtpsrv.raw() as r:
        r.greet()
        r.send(b"NOOP\nMAIL FROM:<evil@x.test>\r\n")
        code, msg = r.reply()
        assert code == 500, (code, msg)
        assert r.nothing_pending(0.3) == b"", "the line was split into two commands"
        # MAIL did not run.
        assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 503
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
        r.send(f"RCPT TO:<{BOB}>\nRCPT TO:<{CAROL}>\r\n".encode())
        assert r.reply()[0] == 500
        assert r.nothing_pending(0.3) == b""
        # Neither recipient was added: DATA has no recipients.
        code, _ = r.cmd("DATA")
        assert code in (503, 554), code


def test_command_with_bare_cr_is_refused_whole(smtpsrv):
    with smtpsrv.raw() as r:
        r.greet()
        r.send(b"NOOP\rMAIL FROM:<evil@x.test>\r\n")
        code, msg = r.reply()
        assert code == 500, (code, msg)
        assert r.nothing_pending(0.3) == b""
        assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 503


def test_data_command_with_bare_lf_does_not_start_data(smtpsrv):
    with smtpsrv.raw() as r:
        r.greet()
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
        assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        r.send(b"DATA\nSubject: sneaky\r\n")
        assert r.reply()[0] == 500
        assert r.nothing_pending(0.3) == b""
        # Still in command mode: a command gets a command reply.
        assert r.cmd("NOOP")[0] == 250
    assert stored_subjects(smtpsrv) == []


def test_refused_bdat_chunk_is_consumed_not_executed(smtpsrv):
    """BDAT octets are read even when the command is refused; they never run as commands."""
    payload = (
        b"MAIL FROM:<evil@x.test>\r\n" + f"RCPT TO:<{CAROL}>\r\n".encode() + b"DATA\r\n"
    )
    with smtpsrv.raw() as r:
        r.greet()
        # No transaction at all.
        r.send(b"BDAT %d LAST\r\n" % len(payload) + payload)
        code, _ = r.reply()
        assert code == 503, code
        assert r.nothing_pending(0.3) == b""
        # A transaction without valid recipients.
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
        assert r.cmd(f"RCPT TO:<nobody@{DOMAIN}>")[0] == 550
        r.send(b"BDAT %d LAST\r\n" % len(payload) + payload)
        code, _ = r.reply()
        assert code in (503, 554), code
        assert r.nothing_pending(0.3) == b""
        assert r.cmd("NOOP")[0] == 250
        assert r.cmd(f"RCPT TO:<{CAROL}>")[0] == 503
    assert stored_subjects(smtpsrv, CAROL) == []
    assert stored_subjects(smtpsrv, BOB) == []


@pytest.mark.parametrize("body", [
    b"Subject: binary-ish\r\n\r\nunix\nline endings\n.\nstill data\r\n",
    b"Subject: hi\rFrom: carol@example.test\r\n\r\nbody\r\n",
    b"Subject: ends in a bare CR\r\n\r\nbody\r",
], ids=["bare-lf-in-body", "bare-cr-in-header", "cr-at-the-end"])
def test_bdat_with_bare_cr_or_lf_is_refused_like_data(smtpsrv, body):
    """One rule for DATA and BDAT: a bare CR or LF is read as a line break by some readers and
    not by others, so such a message is refused (MaiRust offers no BINARYMIME)."""
    with smtpsrv.raw() as r:
        r.greet()
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
        assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        half = len(body) // 2
        r.send(b"BDAT %d\r\n" % half + body[:half])
        assert r.reply()[0] == 250
        r.send(b"BDAT %d LAST\r\n" % (len(body) - half) + body[half:])
        code, msg = r.reply()
        assert code == 550 and "5.6.11" in msg, (code, msg)
        assert r.nothing_pending(0.3) == b""
        assert r.cmd("NOOP")[0] == 250
    assert stored_subjects(smtpsrv) == []


def test_bdat_line_break_split_between_chunks_is_kept(smtpsrv):
    body = b"Subject: split\r\n\r\nline one\r\nline two\r\n"
    cut = body.index(b"one\r") + 4  # between the CR and the LF
    with smtpsrv.raw() as r:
        r.greet()
        assert r.cmd("MAIL FROM:<alice@remote.test>")[0] == 250
        assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        r.send(b"BDAT %d\r\n" % cut + body[:cut])
        assert r.reply()[0] == 250
        r.send(b"BDAT %d LAST\r\n" % (len(body) - cut) + body[cut:])
        code, msg = r.reply()
        assert code == 250, msg
    assert stored_raw(smtpsrv).endswith(body)
