"""Shared helpers of the benchmark scripts: ports, a MaiRust process, the admin API, smtp-sink."""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ADMIN = ("admin@bench.test", "benchpassword")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def api(port, method, path, body=None, auth=ADMIN):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "content-type": "application/json",
            "authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode(),
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Services:
    """A throwaway PostgreSQL and s3s-fs (scripts/services.sh), for the postgres-s3 variants."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mairust-bench-services-")
        subprocess.run([os.path.join(REPO, "scripts", "services.sh"), "start", self.dir],
                       check=True, stdout=subprocess.DEVNULL)
        self.env = {}
        with open(os.path.join(self.dir, "env")) as f:
            for line in f:
                key, _, value = line.strip().removeprefix("export ").partition("=")
                self.env[key] = value

    def backend_yaml(self, name):
        """Config lines for a fresh database and bucket called `name`."""
        pg = self.env["MAIRUST_TEST_PG_URL"]
        subprocess.run(["psql", pg, "-q", "-c", f'CREATE DATABASE "{name}"'], check=True)
        os.makedirs(os.path.join(self.env["MAIRUST_TEST_S3_ROOT"], name))
        return (
            f"database: {{url: \"{pg}/{name}\"}}\n"
            f"storage: {{backend: s3, options: {{bucket: {name}, region: us-east-1, "
            f"endpoint: \"{self.env['MAIRUST_TEST_S3_ENDPOINT']}\", "
            f"access_key: {self.env['MAIRUST_TEST_S3_ACCESS_KEY']}, "
            f"secret_key: {self.env['MAIRUST_TEST_S3_SECRET_KEY']}}}}}\n"
        )

    def stop(self):
        subprocess.run([os.path.join(REPO, "scripts", "services.sh"), "stop", self.dir],
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


class MaiRust:
    """A `mairust serve` on a fresh data directory; `extra_yaml` is appended to the config,
    `backend_yaml` replaces the embedded database and storage, `env` adds variables."""

    def __init__(self, binary, extra_yaml="", backend_yaml=None, env=None):
        self.dir = tempfile.mkdtemp(prefix="mairust-bench-")
        self.smtp_port, self.submission_port, self.api_port = free_port(), free_port(), free_port()
        config = os.path.join(self.dir, "config.yaml")
        with open(config, "w") as f:
            f.write(
                f"server: {{hostname: bench.test, bind: 127.0.0.1, smtp_port: {self.smtp_port}, "
                f"submission_port: {self.submission_port}, api_port: {self.api_port}, "
                f"data_dir: {self.dir}/data}}\n"
                + (
                    backend_yaml
                    or f"database: {{url: \"sqlite://{self.dir}/data/db/mairust.db\"}}\n"
                    f"storage: {{backend: fs, options: {{path: {self.dir}/data/mail}}}}\n"
                )
                + "log: {level: warn, format: json}\n"
                + extra_yaml
            )
        env = dict(os.environ, MAIRUST_ADMIN_EMAIL=ADMIN[0], MAIRUST_ADMIN_PASSWORD=ADMIN[1], **(env or {}))
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", config], env=env, stdout=self.log, stderr=self.log
        )
        wait_port(self.api_port)
        wait_port(self.smtp_port)

    def api(self, method, path, body=None, auth=ADMIN):
        return api(self.api_port, method, path, body, auth)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def smtp_sink_binary():
    return shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if os.path.exists("/usr/sbin/smtp-sink") else None)


class SmtpSink:
    """Postfix's smtp-sink (accepts and discards mail), counting messages."""

    def __init__(self, backlog=1024):
        binary = smtp_sink_binary()
        if not binary:
            raise SystemExit("smtp-sink not found: install Debian's postfix package")
        self.port = free_port()
        self.out = tempfile.TemporaryFile()
        cmd = [binary, "-c", f"127.0.0.1:{self.port}", str(backlog)]
        if os.geteuid() == 0:
            cmd[1:1] = ["-u", "nobody"]
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def received(self):
        """Messages received so far (smtp-sink -c prints `... mesg=N` counters)."""
        self.out.seek(0)
        text = self.out.read().decode(errors="replace")
        marker = text.rfind("mesg=")
        if marker < 0:
            return 0
        digits = ""
        for ch in text[marker + 5:]:
            if not ch.isdigit():
                break
            digits += ch
        return int(digits or 0)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.out.close()
