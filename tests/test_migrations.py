"""The operator's path from the all-in-one defaults to production: `db export`, `db import`
into PostgreSQL and `storage migrate` to S3, then a server on PostgreSQL + S3 serves the same
messages byte for byte. Uses private PostgreSQL and s3s-fs instances (the `services` fixture).
"""

from __future__ import annotations

import base64
import contextlib
import email.policy
import hashlib
import json
import signal
import sqlite3
import subprocess
import time
from email.message import EmailMessage

import pytest

from conftest import (
    BIN,
    DOMAIN,
    REPO,
    ServerStartError,
    USER_PASSWORD,
    clean_env,
    fs_blobs,
    run_cli,
    setup_domain_and_user,
    simple_message,
)

BOB = f"bob@{DOMAIN}"

# These start private PostgreSQL and S3 servers, so one pass (the default one) is enough.
pytestmark = pytest.mark.sqlite_fs


# Bodies up to this size stay in their message rows (and move with the dump); larger ones are
# in the blob store (and move with `storage migrate`).
INLINE_MAX = 1024
LARGE = ("z" * 70 + "\r\n") * 40


def embedded(tmp_path, name: str, inline_max_bytes: int = INLINE_MAX) -> dict:
    data = tmp_path / name
    return {
        "database": {"url": f"sqlite://{data}/db/mairust.db"},
        "storage": {"backend": "fs", "options": {"path": str(data / "mail")},
                    "inline_max_bytes": inline_max_bytes},
    }


def production(services, bucket: str, fs_path) -> dict:
    storage = services.storage(bucket)
    storage["options"]["path"] = str(fs_path)
    storage["inline_max_bytes"] = INLINE_MAX
    return {"database": {"url": services.database()}, "storage": storage}


def mailbox(srv, user=BOB) -> dict[str, bytes]:
    api = srv.api(user, USER_PASSWORD)
    return {
        m["subject"]: api.get(f"/api/v1/messages/{m['id']}/raw").content
        for m in api.all_messages()
    }


def cli(srv, *args, env=None):
    p = run_cli(["--config", str(srv.config_path), *args], env=env, timeout=300)
    assert p.returncode == 0, f"{args}: {p.stdout}\n{p.stderr}"
    return p.stdout


def test_move_from_sqlite_and_files_to_postgres_and_s3(server, services, tmp_path):
    old = server(embedded(tmp_path, "old"))
    setup_domain_and_user(old, users=("bob", "carol"))
    for i in range(5):
        assert old.send(BOB, simple_message(f"before the move {i}"))[0] == 250
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@remote.test", BOB, "with attachment"
    msg.set_content("see attached")
    # Over INLINE_MAX: the one body in the blob store; the five others are in their rows.
    msg.add_attachment(b"\x00\x01binary" * 400, maintype="application", subtype="octet-stream", filename="b.bin")
    assert old.send(BOB, msg.as_bytes(policy=email.policy.SMTP))[0] == 250
    token = old.api(BOB, USER_PASSWORD).post("/api/v1/tokens", json={}).json()["token"]
    before = mailbox(old)
    assert len(before) == 6

    # Export while the server still runs: the dump is a consistent snapshot.
    dump = tmp_path / "dump"
    out = cli(old, "db", "export", "--output", str(dump))
    assert "messages: 6 rows" in out, out
    manifest = json.loads((dump / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["tables"]["users"] == 3
    old.stop()

    bucket = services.bucket()
    target = production(services, bucket, tmp_path / "old" / "mail")
    out = cli(old, "db", "import", "--input", str(dump), "--target", target["database"]["url"])
    assert "counts verified" in out
    # The server's config now points at S3 for storage migrate's target.
    migrate_cfg = {**old.config, "storage": target["storage"]}
    old.config_path.write_text(json.dumps(migrate_cfg))
    out = cli(old, "storage", "migrate", "--from", "fs", "--to", "s3")
    assert "copied 1" in out and "failed 0" in out, out

    new = server(target)
    assert mailbox(new) == before, "same messages, byte for byte"
    # Accounts, passwords and tokens moved too; new mail works.
    assert new.api(token=token).get("/api/v1/messages").status_code == 200
    assert new.send(f"carol@{DOMAIN}", simple_message("after the move", to=f"carol@{DOMAIN}"))[0] == 250
    assert "after the move" in mailbox(new, f"carol@{DOMAIN}")

    # Importing again into the now non-empty database is refused without --force.
    p = run_cli(["--config", str(old.config_path), "db", "import", "--input", str(dump),
                 "--target", target["database"]["url"]])
    assert p.returncode != 0 and "not empty" in p.stderr


def test_interrupted_storage_migration_completes_when_run_again(server, services, tmp_path):
    srv = server(embedded(tmp_path, "src", inline_max_bytes=0))
    setup_domain_and_user(srv)
    big = "x" * 20000 + "\r\n"
    for i in range(150):
        assert srv.send(BOB, simple_message(f"body {i}", body=big))[0] == 250
    before = mailbox(srv)
    srv.stop()
    bucket = services.bucket()
    storage = services.storage(bucket)
    storage["options"]["path"] = str(tmp_path / "src" / "mail")
    srv.config_path.write_text(json.dumps({**srv.config, "storage": storage}))

    args = [BIN, "--config", str(srv.config_path), "storage", "migrate", "--from", "fs", "--to", "s3",
            "--parallel", "1"]
    proc = subprocess.Popen(args, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    objects = services.root / "s3" / bucket
    deadline = time.monotonic() + 60
    while sum(1 for p in objects.rglob("*") if p.is_file()) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    copied_before = sum(1 for p in objects.rglob("*") if p.is_file() and p.parent.name != "mairust")
    assert 0 < copied_before < 150, f"the kill should land mid-way ({copied_before} copied)"

    p = run_cli(args[1:], timeout=300)
    assert p.returncode == 0, p.stderr
    assert "failed 0" in p.stdout, p.stdout
    assert "already there 0" not in p.stdout, "the second run skipped what the first copied"

    srv.config_path.write_text(json.dumps({**srv.config, "storage": {**storage, "backend": "s3"}}))
    srv.config["storage"] = storage
    srv.start(first=False)
    assert mailbox(srv) == before


def test_import_refuses_a_damaged_dump(server, services, tmp_path):
    srv = server(embedded(tmp_path, "a"))
    setup_domain_and_user(srv, users=("bob", "carol"))
    dump = tmp_path / "dump"
    cli(srv, "db", "export", "--output", str(dump))
    users = (dump / "users.jsonl").read_text().splitlines()
    (dump / "users.jsonl").write_text("\n".join(users[:-1]) + "\n")
    url = services.database()
    p = run_cli(["--config", str(srv.config_path), "db", "import", "--input", str(dump), "--target", url])
    assert p.returncode != 0 and "users" in p.stderr, p.stderr
    # Nothing was imported: a clean import of a good dump into the same database works.
    good = tmp_path / "good"
    cli(srv, "db", "export", "--output", str(good))
    cli(srv, "db", "import", "--input", str(good), "--target", url)


def test_sigkill_under_load_on_postgres_and_s3_loses_nothing(server, services):
    import threading

    srv = server({"database": {"url": services.database()}, "storage": services.storage()})
    setup_domain_and_user(srv)
    acked: list[str] = []
    stop = threading.Event()

    def sender(n: int):
        import smtplib

        for i in range(400):
            if stop.is_set():
                return
            subject = f"load {n}-{i}"
            try:
                with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=10) as s:
                    s.sendmail("a@remote.test", [BOB], simple_message(subject))
                acked.append(subject)
            except (OSError, smtplib.SMTPException):
                return

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    # Killed under load: once some messages are acknowledged, not after a fixed time.
    deadline = time.monotonic() + 30
    while len(acked) < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.kill()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert acked, "nothing was acknowledged before the kill"
    srv.start(first=False)
    stored = set(mailbox(srv))
    missing = [s for s in acked if s not in stored]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"


def test_the_way_back_to_sqlite_and_files_with_encrypted_bodies(server, services, tmp_path):
    key = run_cli(["key", "generate"]).stdout.strip()
    env = {"MAIRUST_MASTER_KEY": key}
    fs_path = tmp_path / "back" / "mail"
    srv = server(production(services, services.bucket(), fs_path), env=env)
    setup_domain_and_user(srv)
    for i in range(4):
        # Two in their rows, two in the bucket.
        assert srv.send(BOB, simple_message(f"sealed {i}", body=LARGE if i % 2 else "small\r\n"))[0] == 250
    before = mailbox(srv)
    srv.stop()

    dump = tmp_path / "dump"
    cli(srv, "db", "export", "--output", str(dump), env=env)
    target = embedded(tmp_path, "back")
    out = cli(srv, "db", "import", "--input", str(dump), "--target", target["database"]["url"], env=env)
    assert "counts verified" in out
    # The bodies kept in their rows came with the dump, still sealed.
    rows = [json.loads(line) for line in (dump / "messages.jsonl").read_text().splitlines()]
    inline = [base64.b64decode(r["body"]["base64"]) for r in rows if r["body"] is not None]
    assert len(inline) == 2 and all(b.startswith(b"MRE1") for b in inline), rows
    out = cli(srv, "storage", "migrate", "--from", "s3", "--to", "fs", env=env)
    assert "copied 2" in out and "failed 0" in out, out
    # The copies on disk are still sealed: migration moves ciphertext, verified by its HMAC key.
    files = fs_blobs(fs_path)
    assert len(files) == 2 and all(p.read_bytes().startswith(b"MRE1") for p in files)

    back = server(target, env=env)
    assert mailbox(back) == before


def test_an_older_build_on_a_newer_schema_stops_at_once_saying_why(server):
    """Rolling back the binary across a migration: the database knows a migration this build
    does not. That is not an outage to wait out: the server exits at once and says what to do."""
    srv = server()
    srv.stop()
    path = srv.config["database"]["url"].split("://", 1)[1]
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO _sqlx_migrations (version, description, success, checksum, "
                   "execution_time) VALUES (9999, 'from a newer build', 1, X'00', 1)")
        db.commit()
    started = time.monotonic()
    with pytest.raises(ServerStartError) as failed:
        srv.start(first=False)
    took = time.monotonic() - started
    text = str(failed.value)
    assert "newer MaiRust" in text and "9999" in text, text
    assert took < 10, f"gave up after {took:.1f}s, not at once"


# The last migration of the release before folders, UIDs and flags (0010).
PREVIOUS_RELEASE = 9
UPGRADE_TOKEN = "token-of-the-previous-release"


def previous_release_migrations(dialect: str) -> list[tuple[int, str, bytes]]:
    out = []
    for path in sorted((REPO / "migrations" / dialect).glob("*.sql")):
        version, _, name = path.stem.partition("_")
        if int(version) <= PREVIOUS_RELEASE:
            out.append((int(version), name.replace("_", " "), path.read_bytes()))
    return out


# A user with mail in INBOX (one read, one not), in Sent and in a folder of their own, as
# the previous release stored it: `folder` and `seen` columns, no folders table.
OLD_MAIL = [
    # (entry id, message id, folder, seen, subject)
    (11, "old-1", "INBOX", 1, "read before the upgrade"),
    (12, "old-2", "INBOX", 0, "unread before the upgrade"),
    (14, "old-3", "Sent", 1, "sent before the upgrade"),
    (15, "old-4", "Projects/2025", 0, "filed before the upgrade"),
]


def old_rows_sql(now_ms: int) -> list[tuple[str, tuple]]:
    token = hashlib.sha256(UPGRADE_TOKEN.encode()).hexdigest()
    rows = [
        ("INSERT INTO domains (id, name, created_at) VALUES (1, ?, ?)", (DOMAIN, now_ms)),
        ("INSERT INTO users (id, email, domain_id, password_hash, is_admin, used_bytes, "
         "created_at) VALUES (7, ?, 1, 'not-a-hash', 0, 0, ?)", (BOB, now_ms)),
        ("INSERT INTO api_tokens (user_id, token_hash, name, created_at, expires_at) "
         "VALUES (7, ?, 'upgrade', ?, ?)", (token, now_ms, now_ms + 86_400_000)),
    ]
    for entry, message, folder, seen, subject in OLD_MAIL:
        body = f"From: a@remote.test\r\nTo: {BOB}\r\nSubject: {subject}\r\n\r\nold\r\n".encode()
        rows.append((
            "INSERT INTO messages (id, blob_key, size, received_at, envelope_from, from_addr, "
            "to_addrs, cc_addrs, subject, date, message_id, has_attachments, body) "
            "VALUES (?, ?, ?, ?, 'a@remote.test', 'a@remote.test', ?, '[]', ?, NULL, NULL, 0, ?)",
            (message, "k-" + message, len(body), now_ms, json.dumps([BOB]), subject, body)))
        rows.append((
            "INSERT INTO mailbox_entries (id, user_id, message_id, folder, seen, created_at) "
            "VALUES (?, 7, ?, ?, ?, ?)", (entry, message, folder, seen, now_ms)))
    return rows


def make_previous_release_sqlite(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT "
                   "NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success "
                   "BOOLEAN NOT NULL, checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)")
        for version, name, sql in previous_release_migrations("sqlite"):
            db.executescript(sql.decode())
            db.execute("INSERT INTO _sqlx_migrations (version, description, success, checksum, "
                       "execution_time) VALUES (?, ?, 1, ?, 1)",
                       (version, name, hashlib.sha384(sql).digest()))
        for sql, params in old_rows_sql(int(time.time() * 1000)):
            db.execute(sql, params)
        db.commit()


def make_previous_release_postgres(url: str) -> None:
    def psql(sql: str) -> None:
        subprocess.run(["psql", url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True,
                       capture_output=True, timeout=60)

    def literal(value) -> str:
        if isinstance(value, bytes):
            return f"'\\x{value.hex()}'::bytea"
        if isinstance(value, int):
            return str(value)
        return "'" + str(value).replace("'", "''") + "'"

    psql("CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, "
         "installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, "
         "checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)")
    for version, name, sql in previous_release_migrations("postgres"):
        psql(sql.decode())
        psql("INSERT INTO _sqlx_migrations (version, description, success, checksum, "
             f"execution_time) VALUES ({version}, {literal(name)}, true, "
             f"{literal(hashlib.sha384(sql).digest())}, 1)")
    for sql, params in old_rows_sql(int(time.time() * 1000)):
        for value in params:
            sql = sql.replace("?", literal(value), 1)
        psql(sql)
    # The rows above name their ids; the release's own inserts moved the sequences past them.
    for table in ("domains", "users", "api_tokens", "mailbox_entries"):
        psql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
             f"(SELECT MAX(id) FROM {table}))")


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_a_database_of_the_previous_release_upgrades_in_place(server, services, tmp_path, dialect):
    """Folders, UIDs and flags arrive with a migration: every existing user gets the standard
    folders, every message keeps its folder, id and read state and gets a UID in arrival
    order, new mail is numbered after it, and `db export` carries the new tables."""
    if dialect == "sqlite":
        path = tmp_path / "old" / "mairust.db"
        make_previous_release_sqlite(path)
        overrides = {"database": {"url": f"sqlite://{path}"}}
    else:
        url = services.database()
        make_previous_release_postgres(url)
        overrides = {"database": {"url": url}}
    srv = server(overrides)
    api = srv.api(token=UPGRADE_TOKEN)

    folders = {f["name"]: f for f in api.get("/api/v1/folders").json()["items"]}
    assert list(folders)[:6] == ["INBOX", "Sent", "Drafts", "Junk", "Trash", "Archive"]
    assert folders["Sent"]["special_use"] == "\\Sent"
    counts = {name: (f["messages"], f["unseen"], f["uidnext"]) for name, f in folders.items()}
    assert counts == {
        "INBOX": (2, 1, 3), "Sent": (1, 0, 2), "Drafts": (0, 0, 1), "Junk": (0, 0, 1),
        "Trash": (0, 0, 1), "Archive": (0, 0, 1), "Projects/2025": (1, 1, 2),
    }
    for entry, _, folder, seen, subject in OLD_MAIL:
        listed = api.messages(folder=folder)["items"]
        item = next(m for m in listed if m["id"] == str(entry))
        assert (item["subject"], item["seen"]) == (subject, bool(seen))
        raw = api.get(f"/api/v1/messages/{entry}/raw")
        assert raw.status_code == 200 and f"Subject: {subject}".encode() in raw.content

    # New mail is numbered after the old, and reading it is counted.
    assert srv.send(BOB, simple_message("after the upgrade"))[0] == 250
    inbox = api.messages(folder="INBOX")["items"]
    assert [m["subject"] for m in inbox][0] == "after the upgrade"
    assert int(inbox[0]["id"]) > max(e[0] for e in OLD_MAIL)
    folders = {f["name"]: f for f in api.get("/api/v1/folders").json()["items"]}
    assert (folders["INBOX"]["messages"], folders["INBOX"]["unseen"]) == (3, 2)
    assert folders["INBOX"]["uidnext"] == 4

    dump = tmp_path / "dump"
    cli(srv, "db", "export", "--output", str(dump))
    manifest = json.loads((dump / "manifest.json").read_text())
    assert manifest["tables"]["folders"] >= 7 and manifest["tables"]["expunged"] == 0
    assert manifest["tables"]["mailbox_entries"] == 5
