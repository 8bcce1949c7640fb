"""The same messages, APPENDed to MaiRust and to Dovecot 2.3 (started by the test on loopback),
must come back with the same ENVELOPE, BODYSTRUCTURE, BODY and body sections: where RFC 3501
fixes the answer, MaiRust answers as the reference server does."""

from __future__ import annotations

import imaplib
import os
import shutil
import subprocess
import tempfile
import time
from email.header import decode_header, make_header
from pathlib import Path

import pytest

from conftest import USER_PASSWORD, free_ports, insecure_tls, setup_domain_and_user

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

pytestmark = pytest.mark.skipif(
    not os.path.exists(DOVECOT) or os.geteuid() != 0,
    reason="needs Dovecot (Debian dovecot-imapd) and root (its processes run as mail/dovenull)",
)

# A corpus of shapes mail clients meet: plain text, encoded words, groups, multipart with
# attachments, alternative inside mixed, an attached message, quoted-printable, folded fields.
MESSAGES = [
    b"From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: plain\r\n"
    b"Date: Tue, 08 Dec 2026 10:00:00 +0000\r\nMessage-ID: <a1@example.org>\r\n\r\nHello Bob.\r\n",
    b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jorg@example.org>\r\n"
    b"To: undisclosed-recipients:;\r\nCc: Team: carol@example.test, \"Dan D.\" <dan@example.test>;\r\n"
    b"Subject: =?utf-8?b?w5xiZXIgZGllIEJyw7xja2U=?=\r\nIn-Reply-To: <a1@example.org>\r\n"
    b"Reply-To: replies@example.org\r\n\r\nGroups and encoded words.\r\n",
    b"From: alice@example.org\r\nTo: bob@example.test\r\nSubject: mixed\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\npreamble\r\n--outer\r\n"
    b"Content-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Gr=C3=BC=C3=9Fe\r\nline two\r\n--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<p>Gr\xc3\xbc\xc3\x9fe</p>\r\n--inner--\r\n\r\n--outer\r\n"
    b"Content-Type: application/pdf; name=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=\"report.pdf\"\r\nContent-ID: <pdf1@example.org>\r\n"
    b"Content-Description: The report\r\n\r\nJVBERi0xLjQK\r\nJUVPRgo=\r\n--outer--\r\nepilogue\r\n",
    b"From: alice@example.org\r\nTo: bob@example.test\r\nSubject: forwarded\r\n"
    b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
    b"See below.\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: carol@example.test\r\n"
    b"To: alice@example.org\r\nSubject: the original\r\nDate: Mon, 07 Dec 2026 09:00:00 +0100\r\n\r\n"
    b"Original text.\r\nSecond line.\r\n--b1--\r\n",
    b"From: alice@example.org\r\nTo: bob@example.test,\r\n\tcarol@example.test\r\n"
    b"Subject: a folded\r\n subject line\r\nContent-Type: text/plain; charset=\"ISO-8859-1\"; format=flowed\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\nCaf\xe9\r\n",
]

ITEMS = ["ENVELOPE", "BODYSTRUCTURE", "BODY", "BODY.PEEK[TEXT]", "BODY.PEEK[1]", "BODY.PEEK[1.MIME]",
         "BODY.PEEK[2]", "BODY.PEEK[1.1]", "BODY.PEEK[2.HEADER]", "BODY.PEEK[2.TEXT]",
         "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]", "BODY.PEEK[HEADER.FIELDS.NOT (TO CC)]",
         "BODY.PEEK[TEXT]<4.10>"]


@pytest.fixture
def dovecot():
    # Outside pytest's private temporary directory: Dovecot's users must reach these files.
    root = Path(tempfile.mkdtemp(prefix="mairust-dovecot-"))
    for d in ("run", "state", "mail", "home"):
        (root / d).mkdir(parents=True)
    root.chmod(0o755)
    for d in ("mail", "home", "state"):
        (root / d).chmod(0o777)
    (port,) = free_ports(1)
    (root / "passwd").write_text(f"bob@example.test:{{PLAIN}}{USER_PASSWORD}\n")
    (root / "passwd").chmod(0o644)
    conf = root / "dovecot.conf"
    conf.write_text(f"""base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 8
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""")
    proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            imaplib.IMAP4("127.0.0.1", port, timeout=2).logout()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "dovecot exited"
            assert time.monotonic() < deadline, "Dovecot did not start"
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(root, ignore_errors=True)


def parse(data: bytes, i: int = 0):
    """One IMAP value from `data` at `i`: lists, strings (quoted or literal), NIL, atoms."""
    while data[i:i + 1] == b" ":
        i += 1
    c = data[i:i + 1]
    if c == b"(":
        out, i = [], i + 1
        while data[i:i + 1] != b")":
            value, i = parse(data, i)
            out.append(value)
            while data[i:i + 1] == b" ":
                i += 1
        return out, i + 1
    if c == b'"':
        out, i = bytearray(), i + 1
        while data[i:i + 1] != b'"':
            if data[i:i + 1] == b"\\":
                i += 1
            out += data[i:i + 1]
            i += 1
        return bytes(out), i + 1
    if c == b"{":
        end = data.index(b"}", i)
        n = int(data[i + 1:end].rstrip(b"+"))
        start = end + 3  # }\r\n
        return data[start:start + n], start + n
    end = i
    while end < len(data) and data[end:end + 1] not in (b" ", b")", b"("):
        end += 1
    atom = data[i:end]
    return (None if atom.upper() == b"NIL" else atom), end


def normalise(value):
    """Case-insensitive strings (MIME types and parameter names differ in case only), encoded
    words decoded: a display name may be sent as written or re-encoded, clients decode both."""
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, bytes):
        if value.startswith(b"=?"):
            value = str(make_header(decode_header(value.decode("ascii", "replace")))).encode()
        return value.lower()
    return value


def fetch_item(imap, seq: int, item: str):
    typ, data = imap.fetch(str(seq), f"({item})")
    assert typ == "OK", (item, data)
    flat = b""
    for part in data:
        if isinstance(part, tuple):
            flat += part[0] + b"\r\n" + part[1]
        elif part is not None:
            flat += part
    # "<seq> (<NAME> <value>)"
    start = flat.index(b"(") + 1
    name_end = flat.index(b" ", start)
    if flat[start:name_end].endswith(b"]") or b"[" not in flat[start:name_end]:
        pass
    # The item's name may hold spaces (HEADER.FIELDS (...)): the value follows its closing ].
    if b"[" in flat[start:name_end + 1]:
        name_end = flat.index(b"]", start) + 1
        while flat[name_end:name_end + 1] not in (b" ",):
            name_end += 1
    value, _ = parse(flat, name_end + 1)
    return value


def strip_return_path(value):
    # MaiRust serves an APPENDed message with a Return-Path line in front (its entry has no
    # envelope sender); Dovecot serves the bytes as APPENDed.
    if isinstance(value, bytes) and value.startswith(b"Return-Path: <>\r\n"):
        return value[len(b"Return-Path: <>\r\n"):]
    return value


def test_fetch_answers_match_dovecot(server, dovecot):
    imap_port, imaps, pop3, pop3s = free_ports(4)
    srv = server({"server": {"imap_port": imap_port, "imaps_port": imaps, "pop3_port": pop3,
                             "pop3s_port": pop3s}})
    [bob] = setup_domain_and_user(srv)
    ours = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=insecure_tls(), timeout=10)
    ours.login(bob, USER_PASSWORD)
    theirs = imaplib.IMAP4("127.0.0.1", dovecot, timeout=10)
    theirs.login("bob@example.test", USER_PASSWORD)
    for message in MESSAGES:
        for imap in (ours, theirs):
            typ, data = imap.append("INBOX", None, None, message)
            assert typ == "OK", data
    for imap in (ours, theirs):
        assert imap.select("INBOX")[0] == "OK"
    differences = []
    for seq in range(1, len(MESSAGES) + 1):
        for item in ITEMS:
            mine = normalise(strip_return_path(fetch_item(ours, seq, item)))
            reference = normalise(fetch_item(theirs, seq, item))
            if mine != reference:
                differences.append(f"message {seq} {item}:\n  MaiRust {mine!r}\n  Dovecot {reference!r}")
    assert not differences, "\n".join(differences)


INTERIMAP = shutil.which("interimap")


@pytest.mark.skipif(INTERIMAP is None, reason="interimap (Debian) is not installed")
def test_interimap_keeps_dovecot_and_mairust_in_sync(server, dovecot, tmp_path):
    """interimap, the strictest client (QRESYNC, LIST-EXTENDED, LIST-STATUS, UIDPLUS), syncs a
    Dovecot account (local) with a MaiRust account (remote) both ways, twice."""
    imap_port, imaps, pop3, pop3s = free_ports(4)
    srv = server({"server": {"imap_port": imap_port, "imaps_port": imaps, "pop3_port": pop3,
                             "pop3s_port": pop3s}})
    [bob] = setup_domain_and_user(srv)
    for i in range(3):
        assert srv.send(bob, f"Subject: remote {i}\r\n\r\nfrom MaiRust\r\n".encode())[0] == 250
    local = imaplib.IMAP4("127.0.0.1", dovecot, timeout=10)
    local.login("bob@example.test", USER_PASSWORD)
    assert local.append("INBOX", None, None, b"Subject: local 0\r\n\r\nfrom Dovecot\r\n")[0] == "OK"
    config = tmp_path / "interimap.conf"
    config.write_text(f"""database = {tmp_path}/interimap.db

[local]
type = imap
host = 127.0.0.1
port = {dovecot}
STARTTLS = NO
username = bob@example.test
password = {USER_PASSWORD}

[remote]
type = imaps
host = 127.0.0.1
port = {imaps}
username = {bob}
password = {USER_PASSWORD}
SSL_verify = NO
""")

    def sync() -> str:
        done = subprocess.run([INTERIMAP, f"--config={config}"], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"interimap failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def subjects(imap, folder: str = "INBOX") -> list[str]:
        assert imap.select(folder)[0] == "OK"
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if data == [None]:
            return []
        return sorted(p[1].decode().split(":", 1)[1].strip() for p in data if isinstance(p, tuple))

    sync()
    ours = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=insecure_tls(), timeout=10)
    ours.login(bob, USER_PASSWORD)
    both = ["local 0", "remote 0", "remote 1", "remote 2"]
    assert subjects(ours) == both
    assert subjects(local) == both
    # Changes on either side after the first sync: a flag set locally, a message deleted on
    # MaiRust, a new one on each side.
    assert local.select("INBOX")[0] == "OK"
    typ, [found] = local.uid("SEARCH", None, "SUBJECT", '"remote 1"')
    assert found, "the first sync copied it to Dovecot"
    local.uid("STORE", found.decode(), "+FLAGS", "(\\Flagged)")
    assert ours.select("INBOX")[0] == "OK"
    typ, [doomed] = ours.uid("SEARCH", None, "SUBJECT", '"remote 2"')
    ours.uid("STORE", doomed.decode(), "+FLAGS", "(\\Deleted)")
    ours.expunge()
    assert local.append("INBOX", None, None, b"Subject: local 1\r\n\r\nlater\r\n")[0] == "OK"
    assert srv.send(bob, b"Subject: remote 3\r\n\r\nlater\r\n")[0] == 250
    sync()
    after = ["local 0", "local 1", "remote 0", "remote 1", "remote 3"]
    assert subjects(ours) == after
    assert subjects(local) == after
    typ, [flagged] = ours.uid("SEARCH", None, "FLAGGED")
    assert flagged, "the flag set on Dovecot reached MaiRust"
    ours.logout()
    local.logout()
