"""Mail from the SMTP clients operators use: swaks by hand on both listeners, Postfix's
smtp-source for load."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import DOMAIN, USER_PASSWORD, setup_domain_and_user

BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"


def swaks(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("swaks")
    if binary is None:
        pytest.fail("swaks is not installed (apt-get install swaks; .ci/run does it)")
    return subprocess.run(
        [binary, "--server", "127.0.0.1", "--helo", "client.test", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_swaks_delivers_to_a_hosted_mailbox(server):
    srv = server()
    setup_domain_and_user(srv)
    p = swaks("--port", str(srv.smtp_port), "--from", "alice@remote.test", "--to", BOB,
              "--header", "Subject: hello from swaks", "--body", "swaks body line")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "<-  250 2.0.0" in p.stdout
    bob = srv.api(BOB, USER_PASSWORD)
    item = bob.wait_messages(1)[0]
    assert item["subject"] == "hello from swaks"
    assert "swaks body line" in bob.get(f"/api/v1/messages/{item['id']}").json()["text"]


def test_swaks_refused_recipient_gets_550_511(server):
    srv = server()
    setup_domain_and_user(srv)
    p = swaks("--port", str(srv.smtp_port), "--from", "alice@remote.test",
              "--to", f"nobody@{DOMAIN}")
    assert p.returncode != 0
    assert "<** 550 5.1.1" in p.stdout, p.stdout


def test_swaks_submission_with_starttls_and_auth(server):
    srv = server()
    setup_domain_and_user(srv, users=("bob", "carol"))
    p = swaks("--port", str(srv.submission_port), "--tls", "--auth", "PLAIN",
              "--auth-user", BOB, "--auth-password", USER_PASSWORD,
              "--from", BOB, "--to", CAROL, "--header", "Subject: submitted with swaks")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "<~  235 2.7.0" in p.stdout, p.stdout
    carol = srv.api(CAROL, USER_PASSWORD)
    assert carol.wait_messages(1)[0]["subject"] == "submitted with swaks"

    wrong = swaks("--port", str(srv.submission_port), "--tls", "--auth", "LOGIN",
                  "--auth-user", BOB, "--auth-password", "not-the-password",
                  "--from", BOB, "--to", CAROL)
    assert wrong.returncode != 0
    assert "<~* 535 5.7.8" in wrong.stdout, wrong.stdout


def test_postfix_smtp_source_load_is_stored_completely(server):
    """Postfix's load generator: 200 messages over 8 parallel sessions, all in the mailbox."""
    binary = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not shutil.which(binary):
        pytest.fail("smtp-source is not installed (apt-get install postfix; .ci/run does it)")
    srv = server()
    setup_domain_and_user(srv)
    p = subprocess.run(
        [binary, "-c", "-s", "8", "-m", "200", "-l", "2048", "-f", "alice@remote.test",
         "-t", BOB, f"127.0.0.1:{srv.smtp_port}"],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(srv.api(BOB, USER_PASSWORD).all_messages()) == 200
