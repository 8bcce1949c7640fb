"""docker/compose.all-in-one.yml and docker/compose.production.yml, brought up for real.

Each test runs its own compose project (unique `-p` name) on free loopback ports, with the
images of scripts/build-images (conftest's `docker_images`); the production file runs with the
PostgreSQL and S3 stand-ins in place of postgres and minio. Every project is taken down with
`down -v` at teardown, also when the test failed.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import time
import uuid
from datetime import datetime

import pytest
import requests
from compose_util import compose_command
from conftest import (
    ADMIN_EMAIL,
    BACKEND,
    ADMIN_PASSWORD,
    DOMAIN,
    REPO,
    USER_PASSWORD,
    ApiClient,
    free_ports,
    simple_message,
)

# The images carry their own backends: one run, in the SQLite + files pass of scripts/test.
pytestmark = pytest.mark.skipif(
    BACKEND != "sqlite-fs", reason="independent of the host's backends; runs in the SQLite + files pass"
)

DOCKER_DIR = REPO / "docker"
UP_TIMEOUT = 180


class Project:
    """One compose project: `up`, `down`, `ps` and the containers' state."""

    def __init__(self, file: str, env: dict[str, str]):
        self.name = f"mairust-t{uuid.uuid4().hex[:10]}"
        self.file = str(DOCKER_DIR / file)
        self.env = {**os.environ, **env}
        self.base = [*compose_command(), "-p", self.name, "-f", self.file]

    def run(self, *args: str, timeout: float = UP_TIMEOUT, check: bool = True):
        r = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if check:
            assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout}\n{r.stderr}\n{self.logs()}"
        return r

    def up(self):
        return self.run("up", "-d")

    def down(self, volumes: bool = False):
        return self.run("down", *(["-v"] if volumes else []), "--remove-orphans", check=False)

    def container(self, service: str) -> str:
        out = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}",
             "--filter", f"label=com.docker.compose.service={service}"],
            capture_output=True, text=True, check=True).stdout.split()
        assert len(out) == 1, f"{service}: {out}"
        return out[0]

    def inspect(self, service: str) -> dict:
        r = subprocess.run(["docker", "inspect", self.container(service)], capture_output=True,
                           text=True, check=True)
        return json.loads(r.stdout)[0]

    def wait_healthy(self, services: list[str], timeout: float = UP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending:
            for s in list(pending):
                state = self.inspect(s)["State"]
                if state.get("Health", {}).get("Status") == "healthy":
                    pending.remove(s)
                elif not state["Running"] and state["Status"] != "created":
                    raise AssertionError(f"{s} stopped ({state['Status']}):\n{self.logs()}")
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"not healthy in {timeout}s: {pending}\n{self.logs()}")
            time.sleep(1)

    def logs(self) -> str:
        r = subprocess.run([*self.base, "logs", "--no-color", "--tail", "40"], env=self.env,
                           capture_output=True, text=True, timeout=60)
        return r.stdout[-8000:] + r.stderr[-2000:]

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.name}"
        out = {}
        for kind, cmd in (("containers", ["ps", "-aq"]), ("volumes", ["volume", "ls", "-q"]),
                          ("networks", ["network", "ls", "-q"])):
            r = subprocess.run(["docker", *cmd, "--filter", label], capture_output=True,
                               text=True, check=True)
            out[kind] = r.stdout.split()
        return out


@pytest.fixture
def project(docker_images):
    """Factory: `project(file, env) -> Project`; every project is taken down with -v."""
    made: list[Project] = []

    def make(file: str, env: dict[str, str]) -> Project:
        p = Project(file, env)
        made.append(p)
        return p

    yield make
    for p in made:
        p.down(volumes=True)


def docker_time(text: str) -> float:
    """Seconds since the epoch of a Docker RFC 3339 timestamp (nanoseconds cut to micro)."""
    text = text.rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(text + "+00:00").timestamp()


def setup_mailbox(api_url: str) -> ApiClient:
    admin = ApiClient(api_url, (ADMIN_EMAIL, ADMIN_PASSWORD), None)
    admin.add_domain(DOMAIN)
    admin.add_user(f"bob@{DOMAIN}", USER_PASSWORD)
    return ApiClient(api_url, (f"bob@{DOMAIN}", USER_PASSWORD), None)


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        s.sendmail("alice@remote.test", [f"bob@{DOMAIN}"], simple_message(subject))


def subjects(bob: ApiClient) -> list[str]:
    return sorted(m["subject"] for m in bob.all_messages())


def test_all_in_one_keeps_mail_across_down_and_up(project):
    smtp, submission, api = free_ports(3)
    p = project("compose.all-in-one.yml", {
        "PUBLISH_ADDRESS": "127.0.0.1",
        "SMTP_PORT": str(smtp),
        "SUBMISSION_PORT": str(submission),
        "API_PORT": str(api),
        "MAIRUST_ADMIN_EMAIL": ADMIN_EMAIL,
        "MAIRUST_ADMIN_PASSWORD": ADMIN_PASSWORD,
    })
    p.up()
    p.wait_healthy(["mairust"])
    state = p.inspect("mairust")
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    assert state["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    mounts = {m["Destination"]: m for m in state["Mounts"]}
    assert mounts["/etc/mairust/config.yaml"]["RW"] is False
    url = f"http://127.0.0.1:{api}"
    bob = setup_mailbox(url)
    send(smtp, "before restart")
    assert subjects(bob) == ["before restart"]
    # The mounted config file is the one in use (its hostname answers in the greeting).
    with smtplib.SMTP("127.0.0.1", smtp, timeout=20) as s:
        assert b"mx.example.com" in s.ehlo("client.test")[1]

    p.down(volumes=False)
    assert p.leftovers()["containers"] == []
    assert len(p.leftovers()["volumes"]) == 2  # mairust_db and mairust_mail survive
    p.up()
    p.wait_healthy(["mairust"])
    send(smtp, "after restart")
    assert subjects(bob) == ["after restart", "before restart"]
    # The body came back from the mail volume, not only the database row.
    first = next(m for m in bob.all_messages() if m["subject"] == "before restart")
    r = bob.get(f"/api/v1/messages/{first['id']}/raw")
    assert r.status_code == 200, r.text
    assert "Hello." in r.text

    p.down(volumes=True)
    assert p.leftovers() == {"containers": [], "volumes": [], "networks": []}


PRODUCTION_ORDER = {
    # service: the services that must be healthy before it starts
    "core": ["db", "minio"],
    "api": ["db", "minio"],
    "web": ["api", "core"],
}


@pytest.fixture
def production(project, docker_images):
    smtp, submission, api, web = free_ports(4)
    p = project("compose.production.yml", {
        "POSTGRES_IMAGE": docker_images["postgres"],
        "MINIO_IMAGE": docker_images["s3"],
        "POSTGRES_PASSWORD": f"db-{uuid.uuid4().hex}",
        "MINIO_ROOT_USER": "mairust-s3",
        "MINIO_ROOT_PASSWORD": f"s3-{uuid.uuid4().hex}",
        "MAIRUST_ADMIN_EMAIL": ADMIN_EMAIL,
        "MAIRUST_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "PUBLISH_ADDRESS": "127.0.0.1",
        "SMTP_PORT": str(smtp),
        "SUBMISSION_PORT": str(submission),
        "API_PORT": str(api),
        "WEB_PORT": str(web),
    })
    p.ports = {"smtp": smtp, "api": api, "web": web}
    started = time.time() - 1
    p.up()
    p.wait_healthy(["db", "minio", "core", "api", "web"])
    p.events = health_events(p, started)
    return p


def health_events(p: Project, since: float) -> list[dict]:
    r = subprocess.run(
        ["docker", "events", "--since", f"{since:.0f}", "--until", f"{time.time() + 1:.0f}",
         "--filter", f"label=com.docker.compose.project={p.name}", "--filter", "type=container",
         "--format", "{{json .}}"],
        capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_production_starts_in_health_order_and_carries_mail(production):
    p = production
    service_of = {p.container(s): s for s in ("db", "minio", "core", "api", "web")}
    healthy_at: dict[str, float] = {}
    for e in p.events:
        s = service_of.get(e["id"][:12]) or next(
            (v for k, v in service_of.items() if e["id"].startswith(k)), None)
        if s and e.get("status") == "health_status: healthy" and s not in healthy_at:
            healthy_at[s] = e["timeNano"] / 1e9
    assert set(healthy_at) == set(service_of.values()), (healthy_at, p.events[-20:])
    for service, deps in PRODUCTION_ORDER.items():
        started = docker_time(p.inspect(service)["State"]["StartedAt"])
        for dep in deps:
            assert healthy_at[dep] <= started, f"{service} started before {dep} was healthy"

    # Hardening of the MaiRust services, as the file promises.
    for s in ("core", "api", "web"):
        host = p.inspect(s)["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["Memory"] > 0 and host["NanoCpus"] > 0, "deploy.resources.limits not applied"
    # The database and the object store sit on the internal network only.
    for s in ("db", "minio"):
        nets = p.inspect(s)["NetworkSettings"]["Networks"]
        assert list(nets) == [f"{p.name}_backend"], nets

    bob = setup_mailbox(f"http://127.0.0.1:{p.ports['api']}")
    send(p.ports["smtp"], "through core")
    assert subjects(bob) == ["through core"]
    msg = bob.all_messages()[0]
    r = bob.get(f"/api/v1/messages/{msg['id']}/raw")
    assert r.status_code == 200 and "Hello." in r.text, r.text
    # The body is in the bucket of the S3 stand-in, not on a local disk.
    r = subprocess.run(["docker", "exec", p.container("minio"), "find", "/data/mairust-mails",
                        "-type", "f"], capture_output=True, text=True, check=True)
    assert len(r.stdout.split()) >= 1, r.stdout

    p.down(volumes=True)
    assert p.leftovers() == {"containers": [], "volumes": [], "networks": []}


def test_production_web_serves_the_ui_and_proxies_the_api(production):
    p = production
    web = f"http://127.0.0.1:{p.ports['web']}"
    r = requests.get(web + "/", timeout=10)
    assert r.status_code == 200 and "html" in r.headers.get("content-type", ""), r.status_code
    bob_api = setup_mailbox(f"http://127.0.0.1:{p.ports['api']}")
    send(p.ports["smtp"], "through web")
    assert subjects(bob_api) == ["through web"]
    bob_web = ApiClient(web, (f"bob@{DOMAIN}", USER_PASSWORD), None)
    assert subjects(bob_web) == ["through web"]
