"""Fixtures and helpers for MaiRust's black-box integration tests.

Every test talks to a real `mairust serve` process started in its own temporary directory on
free loopback ports, with real clients (requests, smtplib, raw sockets). The binary comes from
`MAIRUST_BIN` (default `<repo>/target/debug/mairust`); the tests never build it.

The `server` fixture is a factory: `srv = server(overrides={...}, env={...})` writes the config,
starts the process and waits for `GET /health/ready` == 200. Every process a test started is
stopped at teardown (SIGTERM, then SIGKILL after a bounded wait).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import pytest
import requests

from compose_util import docker_unavailable

REPO = Path(__file__).resolve().parent.parent
BIN = os.environ.get("MAIRUST_BIN", str(REPO / "target" / "debug" / "mairust"))

HOSTNAME = "mx.example.test"
ADMIN_EMAIL = "admin@admin.test"
ADMIN_PASSWORD = "admin-password-123"
DOMAIN = "example.test"
USER_PASSWORD = "user-password-123"

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
SMTP_TIMEOUT = 10.0

# Environment variables the server reads; removed from the inherited environment so that the
# developer's shell cannot change what a test sees.
_SERVER_ENV = {
    "DATABASE_URL",
    "STORAGE_BACKEND",
    "S3_BUCKET",
    "S3_REGION",
    "S3_ENDPOINT",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "LOG_LEVEL",
    "RUST_LOG",
    "MAIRUST_NEW_USER_PASSWORD",
}


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The inherited environment without anything MaiRust reads, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MAIRUST_") and k not in _SERVER_ENV
    }
    env.update(extra or {})
    return env


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (bind to port 0, then close)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_udp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free UDP ports on `host` (for the cluster's QUIC endpoints)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_config(path: Path, config: dict) -> None:
    """Writes `config` as YAML. JSON is a subset of YAML, so no YAML library is needed."""
    path.write_text(json.dumps(config, indent=2) + "\n")


# Backend selection: scripts/test runs the suite once on SQLite + files and once on
# PostgreSQL + S3 (scripts/services.sh starts both and sets these variables).
PG_URL = os.environ.get("MAIRUST_TEST_PG_URL")  # admin URL, e.g. postgres://postgres@127.0.0.1:P
S3_ENDPOINT = os.environ.get("MAIRUST_TEST_S3_ENDPOINT")
S3_ROOT = os.environ.get("MAIRUST_TEST_S3_ROOT")  # s3s-fs root directory: a bucket is a folder
S3_ACCESS_KEY = os.environ.get("MAIRUST_TEST_S3_ACCESS_KEY", "")
S3_SECRET_KEY = os.environ.get("MAIRUST_TEST_S3_SECRET_KEY", "")
BACKEND = "postgres-s3" if PG_URL and S3_ENDPOINT else "sqlite-fs"

_backends: dict[Path, dict] = {}


def create_pg_database(name: str) -> str:
    """Creates a fresh database on the test PostgreSQL; returns its URL."""
    subprocess.run(
        ["psql", PG_URL, "-q", "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{name}"'],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return f"{PG_URL.rstrip('/')}/{name}"


def create_bucket(name: str) -> str:
    """Creates a bucket on the test S3 server (s3s-fs keeps a bucket as a folder)."""
    (Path(S3_ROOT) / name).mkdir(parents=True, exist_ok=True)
    return name


def shared_backend_config() -> dict:
    """A fresh PostgreSQL database and bucket for several servers at once (a cluster); give it
    to each server's root with `use_backend` before creating the Server. postgres-s3 only."""
    assert BACKEND == "postgres-s3", "a shared backend needs PostgreSQL and S3"
    name = "c" + uuid.uuid4().hex[:16]
    return {
        "database": {"url": create_pg_database(name)},
        "storage": {
            "backend": "s3",
            "options": {
                "bucket": create_bucket(name),
                "endpoint": S3_ENDPOINT,
                "region": "us-east-1",
                "access_key": S3_ACCESS_KEY,
                "secret_key": S3_SECRET_KEY,
            },
        },
    }


def use_backend(root: Path, cfg: dict) -> None:
    """Makes the server in `root` use `cfg` (from `shared_backend_config`) instead of a backend
    of its own; its local staging path stays under `root`."""
    cfg = copy.deepcopy(cfg)
    cfg["storage"]["options"]["path"] = str(root / "data" / "mail")
    _backends[root] = cfg


def backend_config(root: Path) -> dict:
    """Database and storage for the server in `root`: its own PostgreSQL database and bucket
    in postgres-s3 mode, files under `root` otherwise. Created once per server."""
    if root in _backends:
        return _backends[root]
    data = root / "data"
    if BACKEND == "postgres-s3":
        name = "t" + uuid.uuid4().hex[:16]
        cfg = {
            "database": {"url": create_pg_database(name)},
            "storage": {
                "backend": "s3",
                "options": {
                    "path": str(data / "mail"),
                    "bucket": create_bucket(name),
                    "endpoint": S3_ENDPOINT,
                    "region": "us-east-1",
                    "access_key": S3_ACCESS_KEY,
                    "secret_key": S3_SECRET_KEY,
                },
            },
        }
    else:
        cfg = {
            "database": {"url": f"sqlite://{data}/db/mairust.db"},
            "storage": {"backend": "fs", "options": {"path": str(data / "mail")}},
        }
    _backends[root] = cfg
    return cfg


def base_config(root: Path, ports: tuple[int, int, int]) -> dict:
    data = root / "data"
    backend = backend_config(root)
    # The imap role is in the default roles: its listeners get free ports too.
    imap, imaps, pop3, pop3s = free_ports(4)
    return {
        "server": {
            "hostname": HOSTNAME,
            "bind": "127.0.0.1",
            "smtp_port": ports[0],
            "submission_port": ports[1],
            "api_port": ports[2],
            "imap_port": imap,
            "imaps_port": imaps,
            "pop3_port": pop3,
            "pop3s_port": pop3s,
            "data_dir": str(data),
        },
        "database": copy.deepcopy(backend["database"]),
        "storage": copy.deepcopy(backend["storage"]),
        "log": {"format": "json", "level": "info"},
    }


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 30.0):
    """Runs the binary to completion; returns the CompletedProcess (text mode)."""
    return subprocess.run(
        [BIN, *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ServerStartError(Exception):
    def __init__(self, message: str, bind_failure: bool = False):
        super().__init__(message)
        self.bind_failure = bind_failure


class Server:
    """One `mairust serve` process and everything a test needs to talk to it."""

    def __init__(
        self,
        root: Path,
        overrides: dict | None = None,
        env: dict[str, str] | None = None,
        admin: bool = True,
    ):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.overrides = overrides or {}
        self.extra_env = dict(env or {})
        if admin:
            self.extra_env.setdefault("MAIRUST_ADMIN_EMAIL", ADMIN_EMAIL)
            self.extra_env.setdefault("MAIRUST_ADMIN_PASSWORD", ADMIN_PASSWORD)
        self.admin = (ADMIN_EMAIL, ADMIN_PASSWORD) if admin else None
        self.config_path = root / "config.yaml"
        self.stdout_path = root / "stdout.log"
        self.stderr_path = root / "stderr.log"
        self.proc: subprocess.Popen | None = None
        # Address the test reaches the listeners at, and a prefix for the command line
        # (`ip netns exec NS` for a server in a network namespace).
        self.host = "127.0.0.1"
        self.command_prefix: list[str] = []
        self._pick_ports()

    # ------------------------------------------------------------------ lifecycle

    def _pick_ports(self) -> None:
        self.smtp_port, self.submission_port, self.api_port = free_ports(3)
        self.config = deep_merge(
            base_config(self.root, (self.smtp_port, self.submission_port, self.api_port)),
            self.overrides,
        )
        write_config(self.config_path, self.config)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def env(self) -> dict[str, str]:
        return clean_env(self.extra_env)

    def start(self, first: bool = True) -> "Server":
        attempts = 3 if first else 1
        for attempt in range(attempts):
            try:
                self._start_once()
                return self
            except ServerStartError as e:
                # Another process may have taken a port between picking and binding it.
                if e.bind_failure and attempt + 1 < attempts:
                    self._pick_ports()
                    continue
                raise
        return self

    def launch(self) -> "Server":
        """Starts the process without waiting for it to be ready."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [*self.command_prefix, BIN, "serve", "--config", str(self.config_path)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                cwd=self.root,
            )
        finally:
            out.close()
            err.close()
        return self

    def _start_once(self) -> None:
        self.launch()
        deadline = time.monotonic() + READY_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                text = self.output()
                raise ServerStartError(
                    f"mairust exited with {code} before it was ready:\n{text}",
                    bind_failure="cannot listen on" in text or "in use" in text,
                )
            try:
                r = requests.get(self.base_url + "/health/ready", timeout=1)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text}"
            except requests.RequestException as e:
                last = repr(e)
            time.sleep(0.05)
        self.kill()
        raise ServerStartError(
            f"mairust not ready after {READY_TIMEOUT}s (last: {last}):\n{self.output()}"
        )

    def output(self) -> str:
        parts = []
        for name, path in (("stdout", self.stdout_path), ("stderr", self.stderr_path)):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace")
                parts.append(f"--- {name} (last 6000 chars) ---\n{text[-6000:]}")
        return "\n".join(parts)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self, hard: bool = False) -> "Server":
        """Stops (SIGTERM, or SIGKILL with `hard`) and starts again on the same dir and ports."""
        if hard:
            self.kill()
        else:
            code = self.stop()
            assert code == 0, f"graceful stop exited with {code}:\n{self.output()}"
        self.start(first=False)
        return self

    # ------------------------------------------------------------------ logs

    def log_lines(self) -> list[dict]:
        """Every stdout line parsed as JSON (a non-JSON line fails the test)."""
        lines = []
        for raw in self.stdout_path.read_text(errors="replace").splitlines():
            if not raw.strip():
                continue
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                pytest.fail(f"log line is not JSON: {raw!r}")
        return lines

    def wait_for_log(self, predicate, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines():
                if predicate(line):
                    return line
            if time.monotonic() > deadline:
                pytest.fail(f"no matching log line within {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    # ------------------------------------------------------------------ API

    def api(self, email: str | None = None, password: str | None = None, token: str | None = None):
        """A requests.Session on the API. No arguments: the bootstrap admin."""
        if email is None and token is None and self.admin is not None:
            email, password = self.admin
        return ApiClient(self.base_url, (email, password) if email else None, token)

    def anon(self) -> "ApiClient":
        return ApiClient(self.base_url, None, None)

    def metrics(self) -> str:
        r = requests.get(self.base_url + "/metrics", timeout=5)
        assert r.status_code == 200, r.text
        return r.text

    def metric_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """Sum of the samples of `name` whose labels include `labels`; None if absent."""
        return metric_value(self.metrics(), name, labels)

    # ------------------------------------------------------------------ SMTP

    def smtp(self, port: str = "smtp", ehlo: bool = True) -> smtplib.SMTP:
        p = self.smtp_port if port == "smtp" else self.submission_port
        s = smtplib.SMTP(self.host, p, local_hostname="client.test", timeout=SMTP_TIMEOUT)
        if ehlo:
            code, _ = s.ehlo()
            assert code == 250
        return s

    def raw(self, port: str = "smtp") -> "RawSMTP":
        p = self.smtp_port if port == "smtp" else self.submission_port
        return RawSMTP(self.host, p)

    def submission(self, email: str, password: str) -> smtplib.SMTP:
        """A submission session after STARTTLS and AUTH."""
        s = self.smtp("submission")
        s.starttls(context=insecure_tls())
        s.ehlo()
        s.login(email, password)
        return s

    def send(
        self,
        rcpts: str | Iterable[str],
        data: bytes,
        mail_from: str = "alice@remote.test",
    ) -> tuple[int, bytes]:
        """Sends one message on port 25; returns the final reply (code, text)."""
        rcpts = [rcpts] if isinstance(rcpts, str) else list(rcpts)
        with contextlib.closing(self.smtp()) as s:
            code, msg = s.mail(mail_from)
            assert code == 250, (code, msg)
            for r in rcpts:
                code, msg = s.rcpt(r)
                assert code == 250, (r, code, msg)
            code, msg = s.data(data)
            with contextlib.suppress(Exception):
                s.quit()
            return code, msg


class ApiClient(requests.Session):
    """A requests.Session with the API's base URL, Basic or bearer auth and a default timeout."""

    def __init__(self, base_url: str, basic: tuple[str, str] | None, token: str | None):
        super().__init__()
        self.base_url = base_url
        if basic:
            self.auth = basic
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        if url.startswith("/"):
            url = self.base_url + url
        kwargs.setdefault("timeout", 15)
        return super().request(method, url, *args, **kwargs)

    # Convenience wrappers that assert success.
    def add_domain(self, name: str) -> dict:
        r = self.post("/api/v1/domains", json={"name": name})
        assert r.status_code == 201, r.text
        return r.json()

    def add_user(self, email: str, password: str = USER_PASSWORD, **extra) -> dict:
        r = self.post("/api/v1/users", json={"email": email, "password": password, **extra})
        assert r.status_code == 201, r.text
        return r.json()

    def messages(self, **params) -> dict:
        r = self.get("/api/v1/messages", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def all_messages(self, limit: int = 200) -> list[dict]:
        """Every message in INBOX, following next_cursor."""
        items, cursor = [], None
        for _ in range(10_000):
            params = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            page = self.messages(**params)
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return items
        raise AssertionError("pagination does not end")

    def wait_messages(self, n: int, timeout: float = 5.0) -> list[dict]:
        """Polls until at least n messages are listed (acceptance is synchronous, so this
        should return at once; the wait only absorbs scheduling noise)."""
        deadline = time.monotonic() + timeout
        while True:
            items = self.all_messages()
            if len(items) >= n or time.monotonic() > deadline:
                return items
            time.sleep(0.05)


def assert_error(r: requests.Response, status: int, code: str | None = None) -> dict:
    """Asserts an API error: status, JSON content type, `{"error": {"code", "message"}}`."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"].get("code"), str) and body["error"]["code"], body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    import re

    total = None
    pattern = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = pattern.match(line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if labels and any(got.get(k) != v for k, v in labels.items()):
            continue
        total = (total or 0.0) + float(m.group(4))
    return total


def insecure_tls() -> ssl.SSLContext:
    """Client context for the server's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawSMTP:
    """A line-level SMTP client on a plain socket, for what smtplib cannot express."""

    def __init__(self, host: str, port: int, timeout: float = SMTP_TIMEOUT):
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (host, port), timeout=timeout
        )
        self.buf = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed; unread: {self.buf!r}")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: (code, text lines joined by newlines)."""
        lines = []
        while True:
            line = self.line()
            assert len(line) >= 3 and line[:3].isdigit(), f"not a reply line: {line!r}"
            lines.append(line[4:].decode(errors="replace"))
            if len(line) == 3 or line[3:4] == b" ":
                return int(line[:3]), "\n".join(lines)
            assert line[3:4] == b"-", f"bad reply line: {line!r}"

    def replies(self, n: int) -> list[tuple[int, str]]:
        return [self.reply() for _ in range(n)]

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def nothing_pending(self, wait: float = 0.3) -> bytes:
        """Returns whatever arrives within `wait` seconds (b"" if nothing)."""
        extra = self.buf
        self.buf = b""
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                extra += chunk
        except (socket.timeout, TimeoutError):
            pass
        finally:
            self.sock.settimeout(old)
        return extra

    def is_closed(self, wait: float = 2.0) -> bool:
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except (socket.timeout, TimeoutError):
            return False
        finally:
            self.sock.settimeout(old)

    def starttls(self, ctx: ssl.SSLContext | None = None) -> None:
        assert self.buf == b"", f"unread plaintext before TLS: {self.buf!r}"
        self.sock = (ctx or insecure_tls()).wrap_socket(self.sock, server_hostname=HOSTNAME)

    def greet(self, name: str = "client.test") -> tuple[int, str]:
        code, text = self.reply()
        assert code == 220, (code, text)
        code, text = self.cmd(f"EHLO {name}")
        assert code == 250, (code, text)
        return code, text


def fs_blobs(root: Path) -> list[Path]:
    """The bodies the fs blob store keeps under `root` (its `tmp/` staging area excluded)."""
    return [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "tmp"]


def simple_message(subject: str, body: str = "Hello.\r\n", to: str = f"bob@{DOMAIN}") -> bytes:
    return (
        f"From: Alice <alice@remote.test>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@remote.test>\r\n"
        f"\r\n"
        f"{body}"
    ).encode()


def setup_domain_and_user(
    srv: Server,
    domain: str = DOMAIN,
    users: Iterable[str] = ("bob",),
    password: str = USER_PASSWORD,
    **user_fields: Any,
) -> list[str]:
    """Creates `domain` and the users (local parts or full addresses); returns the addresses."""
    admin = srv.api()
    admin.add_domain(domain)
    out = []
    for u in users:
        email = u if "@" in u else f"{u}@{domain}"
        admin.add_user(email, password, **user_fields)
        out.append(email)
    return out


def basic(email: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{email}:{password}".encode()).decode()


# ---------------------------------------------------------------------- backends

class Services:
    """A private PostgreSQL and s3s-fs started with scripts/services.sh."""

    def __init__(self, root: Path):
        self.root = root
        subprocess.run([str(REPO / "scripts" / "services.sh"), "start", str(root)], check=True,
                       capture_output=True, timeout=120)
        self.env = {}
        for line in (root / "env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            self.env[key] = value
        self.pg_url = self.env["MAIRUST_TEST_PG_URL"]
        self.s3_endpoint = self.env["MAIRUST_TEST_S3_ENDPOINT"]
        self.s3_port = int(self.s3_endpoint.rsplit(":", 1)[1])
        self.s3_pid = int(self.env["MAIRUST_TEST_S3_PID"])

    def database(self) -> str:
        name = "t" + uuid.uuid4().hex[:12]
        subprocess.run(["psql", self.pg_url, "-q", "-c", f'CREATE DATABASE "{name}"'], check=True,
                       capture_output=True, timeout=30)
        return f"{self.pg_url}/{name}"

    def bucket(self) -> str:
        name = "b" + uuid.uuid4().hex[:12]
        (self.root / "s3" / name).mkdir()
        return name

    def storage(self, bucket: str | None = None, secret: str = "mairust-test-secret") -> dict:
        return {
            "backend": "s3",
            "options": {
                "bucket": bucket or self.bucket(),
                "endpoint": self.s3_endpoint,
                "region": "us-east-1",
                "access_key": "mairust-test",
                "secret_key": secret,
            },
        }

    def stop_s3(self):
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.s3_pid, signal.SIGTERM)
        time.sleep(0.3)

    def start_s3(self):
        proc = subprocess.Popen(
            ["s3s-fs", "--host", "127.0.0.1", "--port", str(self.s3_port), "--access-key",
             "mairust-test", "--secret-key", "mairust-test-secret", str(self.root / "s3")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.s3_pid = proc.pid
        time.sleep(0.5)

    def pg_ctl(self, action: str):
        pg_ctl = next((p for p in ("/usr/local/bin/pg_ctl", *sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")))
                       if Path(p).exists()), "pg_ctl")
        pg_dir = Path(self.env["MAIRUST_TEST_PG_DIR"])
        port = self.pg_url.rsplit(":", 1)[1]
        cmd = [str(pg_ctl), "-D", str(pg_dir / "data"), "-w", "-m", "fast", action,
               "-l", str(pg_dir / "postgres.log"),
               "-o", f"-p {port} -k {pg_dir} -c listen_addresses=127.0.0.1 -c max_connections=300"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def stop(self):
        subprocess.run([str(REPO / "scripts" / "services.sh"), "stop", str(self.root)],
                       capture_output=True, timeout=60)





# ---------------------------------------------------------------------- fixtures


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "sqlite_fs: needs the embedded backends (SQLite file and local blob directory)"
    )


# Modules whose tests share one expensive module-scoped fixture (test_cluster.py: one
# three-node cluster): under pytest-xdist they run on one worker, every other test is spread
# one by one as with `--dist load`. (xdist's own `loadgroup` does not group under pytest 9:
# it renames items through an attribute pytest no longer reads.)
# The Docker modules share one build of the images (the session fixture `docker_images`) and
# the daemon's CPU: they run together on one worker.
SERIAL_MODULES = {
    "test_cluster.py": "test_cluster.py",
    "test_images.py": "docker",
    "test_compose.py": "docker",
    "test_compose_cluster.py": "docker",
}


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SERIAL_MODULES.get(module.rsplit("/", 1)[-1], nodeid)

    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    if BACKEND != "sqlite-fs":
        skip = pytest.mark.skip(reason=f"needs SQLite + files; running on {BACKEND}")
        for item in items:
            if "sqlite_fs" in item.keywords:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the item (`item.rep_call`), so that a fixture can tell at
    teardown whether its test failed (and then print the servers' logs)."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def pytest_report_header(config):
    return f"mairust backends: {BACKEND}"


@pytest.fixture(scope="session", autouse=True)
def _binary_exists():
    if not os.access(BIN, os.X_OK):
        pytest.exit(f"mairust binary not found at {BIN}; build it or set MAIRUST_BIN", 2)


@pytest.fixture
def server(tmp_path, request):
    """Factory: `server(overrides=None, env=None, admin=True, start=True) -> Server`.

    A failed test prints the logs of the servers it started (in its teardown section)."""
    started: list[Server] = []

    def make(
        overrides: dict | None = None,
        env: dict[str, str] | None = None,
        admin: bool = True,
        start: bool = True,
    ) -> Server:
        srv = Server(tmp_path / f"srv{len(started)}", overrides, env, admin)
        started.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for srv in started:
            print(f"=== {srv.root.name}\n{srv.output()}")
    for srv in started:
        with contextlib.suppress(Exception):
            srv.stop(timeout=10)
        with contextlib.suppress(Exception):
            srv.kill()


@pytest.fixture
def services(tmp_path):
    """A private PostgreSQL and s3s-fs for this test (it may stop and start them)."""
    if shutil.which("s3s-fs") is None:
        pytest.skip("s3s-fs is not installed (cargo install s3s-fs --version 0.14.1 --features binary)")
    svc = Services(tmp_path / "svc")
    yield svc
    svc.stop()


@pytest.fixture
def srv(server) -> Server:
    """A started server with the defaults."""
    return server()


@pytest.fixture
def mailsrv(server) -> Server:
    """A started server hosting example.test with users bob and carol."""
    s = server()
    setup_domain_and_user(s, users=("bob", "carol"))
    return s


# ---------------------------------------------------------------------- docker


def cargo_version() -> str:
    for line in (REPO / "Cargo.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in Cargo.toml")


@pytest.fixture(scope="session")
def docker_images() -> dict[str, str]:
    """Builds every image once per session with scripts/build-images (the test binary,
    `MAIRUST_IMAGE_BIN` or `MAIRUST_BIN`, goes in as PREBUILT) and returns the image names.
    A file lock keeps concurrent sessions from building at the same time."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    import fcntl

    binary = os.environ.get("MAIRUST_IMAGE_BIN", BIN)
    with open("/tmp/mairust-build-images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = subprocess.run(
            [str(REPO / "scripts" / "build-images")],
            env={**os.environ, "PREBUILT": binary},
            capture_output=True,
            text=True,
            timeout=1800,
        )
    print(r.stdout)
    assert r.returncode == 0, f"scripts/build-images failed:\n{r.stdout}\n{r.stderr}"
    version = cargo_version()
    names = {n: f"mairust/{n}:{version}" for n in ("all-in-one", "core", "api", "web")}
    names["postgres"] = "mairust-test/postgres:15"
    names["s3"] = "mairust-test/s3:latest"
    names["build_output"] = r.stdout
    names["binary"] = str(Path(binary).resolve())
    return names
