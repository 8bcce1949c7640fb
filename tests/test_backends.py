"""Production backends: PostgreSQL and S3 (s3s-fs) as real servers, start-up against them
(retries, clear errors), readiness while a backend is down, and encryption at rest.

Tests that stop a backend start private PostgreSQL and s3s-fs instances (the `services`
fixture), so the shared ones of the postgres-s3 pass are never disturbed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import smtplib
import time
import uuid

import pytest
import requests

from conftest import (
    BACKEND,
    DOMAIN,
    USER_PASSWORD,
    Server,
    fs_blobs,
    run_cli,
    setup_domain_and_user,
    simple_message,
)

BOB = f"bob@{DOMAIN}"

def ready(srv: Server) -> int:
    try:
        return requests.get(srv.base_url + "/health/ready", timeout=10).status_code
    except requests.RequestException:
        return 0


def wait_ready(srv: Server, status: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while ready(srv) != status:
        assert time.monotonic() < deadline, f"/health/ready never became {status}"
        time.sleep(0.2)


@pytest.mark.sqlite_fs
def test_postgres_and_s3_serve_mail(server, services):
    srv = server({"database": {"url": services.database()}, "storage": services.storage()})
    setup_domain_and_user(srv)
    assert srv.send(BOB, simple_message("stored in S3"))[0] == 250
    bob = srv.api(BOB, USER_PASSWORD)
    item = bob.wait_messages(1)[0]
    assert item["subject"] == "stored in S3"
    assert b"stored in S3" in bob.get(f"/api/v1/messages/{item['id']}/raw").content
    health = srv.anon().get("/health").json()
    assert health["checks"] == {"database": "ok", "blob_store": "ok"}


@pytest.mark.sqlite_fs
def test_readiness_follows_s3_down_and_back(server, services):
    storage = {**services.storage(), "inline_max_bytes": 1024}
    srv = server({"database": {"url": services.database()}, "storage": storage})
    setup_domain_and_user(srv)
    large = ("s" * 70 + "\r\n") * 40
    services.stop_s3()
    wait_ready(srv, 503)
    assert srv.anon().get("/health").json()["checks"]["blob_store"] != "ok"
    # No 250 for a body that belongs in S3 while it cannot be stored there...
    with contextlib.closing(srv.smtp()) as s:
        s.mail("a@remote.test")
        s.rcpt(BOB)
        code, _ = s.data(simple_message("while S3 is down", body=large))
    assert 400 <= code < 500
    # ...while one small enough for its row needs only PostgreSQL.
    assert srv.send(BOB, simple_message("small, while S3 is down"))[0] == 250
    services.start_s3()
    wait_ready(srv, 200)
    assert srv.send(BOB, simple_message("S3 is back", body=large))[0] == 250
    subjects = {m["subject"] for m in srv.api(BOB, USER_PASSWORD).all_messages()}
    assert subjects == {"small, while S3 is down", "S3 is back"}


@pytest.mark.sqlite_fs
def test_readiness_follows_postgres_down_and_back(server, services):
    srv = server({"database": {"url": services.database()}, "storage": services.storage()})
    setup_domain_and_user(srv)
    services.pg_ctl("stop")
    wait_ready(srv, 503)
    assert srv.anon().get("/health").json()["checks"]["database"] != "ok"
    # Nothing is acknowledged that cannot be committed: a temporary failure, never a 5xx.
    # The recipient lookup needs the database; the pool gives up on it after 10 s.
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.mail("a@remote.test")[0] == 250
        code, text = s.rcpt(BOB)
    assert (code, text[:5]) == (451, b"4.3.0"), (code, text)
    services.pg_ctl("start")
    wait_ready(srv, 200)
    assert srv.send(BOB, simple_message("PostgreSQL is back"))[0] == 250


@pytest.mark.sqlite_fs
def test_startup_errors_name_the_cause(server, services, tmp_path):
    cases = [
        ({"storage": services.storage(bucket="no-such-bucket")}, "does not exist"),
        ({"storage": services.storage(secret="wrong-secret")}, "access denied"),
        ({"storage": {"backend": "s3", "options": {"bucket": "x", "endpoint": "http://127.0.0.1:9",
                                                     "access_key": "a", "secret_key": "b"}}},
         "unreachable"),
        ({"database": {"url": "postgres://postgres@127.0.0.1:9/nothing"}}, "database"),
    ]
    for overrides, expected in cases:
        srv = server({"server": {"startup_timeout": "2s"}, **overrides}, start=False)
        started = time.monotonic()
        with pytest.raises(Exception) as err:
            srv.start(first=False)
        assert expected in str(err.value), str(err.value)[-2000:]
        assert time.monotonic() - started < 30
        assert srv.proc.poll() not in (None, 0)


@pytest.mark.sqlite_fs
def test_startup_waits_for_a_late_database(server, services):
    url = services.database()
    services.pg_ctl("stop")
    srv = server({"database": {"url": url}, "storage": services.storage(),
                  "server": {"startup_timeout": "60s"}}, start=False)
    proc_started = threading_start(srv)
    time.sleep(2)
    services.pg_ctl("start")
    proc_started.join(timeout=60)
    assert ready(srv) == 200
    attempts = [l for l in srv.log_lines() if l.get("message") == "backend not reachable yet"]
    assert attempts and attempts[0]["fields"]["backend"] == "database"


def threading_start(srv: Server):
    import threading

    t = threading.Thread(target=srv.start, kwargs={"first": False})
    t.start()
    return t


def test_encryption_at_rest(server):
    key = run_cli(["key", "generate"]).stdout.strip()
    # One body in the blob store and one in its row, both sealed.
    srv = server({"storage": {"inline_max_bytes": 1024}}, env={"MAIRUST_MASTER_KEY": key})
    setup_domain_and_user(srv)
    secret = "Subject: confidential " + uuid.uuid4().hex
    assert srv.send(BOB, simple_message(secret.removeprefix("Subject: "), body="x" * 2000 + "\r\n"))[0] == 250
    small_secret = "small confidential " + uuid.uuid4().hex
    assert srv.send(BOB, simple_message(small_secret))[0] == 250
    bob = srv.api(BOB, USER_PASSWORD)
    item = next(i for i in bob.wait_messages(2) if i["subject"] == secret.removeprefix("Subject: "))
    raw = bob.get(f"/api/v1/messages/{item['id']}/raw").content
    assert secret.encode() in raw
    if BACKEND == "sqlite-fs":
        blobs = fs_blobs(srv.data_dir / "mail")
        stored = [p.read_bytes() for p in blobs]
        assert stored and all(b.startswith(b"MRE1") for b in stored)
        assert not any(secret.encode() in b for b in stored), "plaintext on disk"
        import hashlib
        names = {p.name for p in blobs}
        assert hashlib.sha256(raw).hexdigest() not in names, "keys must not be plain hashes"
    # DKIM private keys are sealed too (checked through a dump of the database).
    r = srv.api().post(f"/api/v1/domains/{DOMAIN}/dkim", json={})
    assert r.status_code == 201
    srv.stop()
    dump = srv.root / "dump"
    p = run_cli(["--config", str(srv.config_path), "db", "export", "--output", str(dump)],
                env={"MAIRUST_MASTER_KEY": key})
    assert p.returncode == 0, p.stderr
    assert '"private_key":"enc:v1:' in (dump / "dkim_keys.jsonl").read_text().replace(" ", "")
    # The body kept in its row is sealed in the database.
    rows = [json.loads(line) for line in (dump / "messages.jsonl").read_text().splitlines()]
    inline = [base64.b64decode(r["body"]["base64"]) for r in rows if r["body"] is not None]
    assert len(inline) == 1 and inline[0].startswith(b"MRE1"), rows
    assert small_secret.encode() not in inline[0], "plaintext in the database"
    # A wrong key and a missing key are clear start-up errors.
    for env, expected in (
        ({"MAIRUST_MASTER_KEY": run_cli(["key", "generate"]).stdout.strip()}, "not the key"),
        ({"MAIRUST_MASTER_KEY": ""}, "encrypted"),
    ):
        srv.extra_env.update(env)
        if not env["MAIRUST_MASTER_KEY"]:
            srv.extra_env.pop("MAIRUST_MASTER_KEY")
        with pytest.raises(Exception) as err:
            srv.start(first=False)
        assert expected in str(err.value), str(err.value)[-1500:]
    srv.extra_env["MAIRUST_MASTER_KEY"] = key
    srv.start(first=False)
    assert bob.get(f"/api/v1/messages/{item['id']}/raw").content == raw


def test_key_rotation(server):
    old = run_cli(["key", "generate"]).stdout.strip()
    new = run_cli(["key", "generate"]).stdout.strip()
    srv = server(env={"MAIRUST_MASTER_KEY": old})
    setup_domain_and_user(srv)
    assert srv.send(BOB, simple_message("rotate me"))[0] == 250
    bob = srv.api(BOB, USER_PASSWORD)
    item = bob.wait_messages(1)[0]
    raw = bob.get(f"/api/v1/messages/{item['id']}/raw").content
    srv.stop()
    args = ["--config", str(srv.config_path), "key", "rotate", "--new-key", new]
    p = run_cli(args, env={"MAIRUST_MASTER_KEY": old})
    assert p.returncode == 0, p.stderr
    assert "re-encrypted 1 bodies" in p.stdout
    again = run_cli(args, env={"MAIRUST_MASTER_KEY": old})
    assert again.returncode == 0 and "(1 already done)" in again.stdout, again.stdout
    srv.extra_env["MAIRUST_MASTER_KEY"] = new
    srv.start(first=False)
    assert bob.get(f"/api/v1/messages/{item['id']}/raw").content == raw
    srv.stop()
    srv.extra_env["MAIRUST_MASTER_KEY"] = old
    with pytest.raises(Exception) as err:
        srv.start(first=False)
    assert "not the key" in str(err.value)
