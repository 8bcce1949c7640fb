"""docker/compose.all-in-one.yml and docker/compose.production.yml, brought up for real, and
what every compose file (the cluster file's too) requires of docker/.env.

The `config` tests need a compose command and no image: each compose file must refuse to
render without the variables the operator has to choose (the mail host name, the first admin,
the secrets), naming the missing one, and put the host name into every MaiRust container.

Each other test runs its own compose project (unique `-p` name) on free loopback ports, with
the images of `scripts/build-images --test-images` (compose_util's `docker_images`); the
production file runs with the PostgreSQL and S3 stand-ins in place of postgres and minio.
Every project is taken down with `down -v` at teardown, also when the test failed. No command
reads a developer's docker/.env (`--env-file` names an empty file).
"""

from __future__ import annotations

import imaplib
import json
import os
import re
import smtplib
import subprocess
import time
import uuid
from datetime import datetime

import pytest
import requests
import yaml
from compose_util import (  # noqa: F401 (docker_images: the fixture)
    compose_command,
    docker_images,
    empty_env_file,
    smtp_greeting,
)
from conftest import (
    ADMIN_EMAIL,
    BACKEND,
    ADMIN_PASSWORD,
    DOMAIN,
    REPO,
    USER_PASSWORD,
    ApiClient,
    free_ports,
    insecure_tls,
    simple_message,
)

# The images carry their own backends: one run, in the SQLite + files pass of scripts/test.
pytestmark = pytest.mark.skipif(
    BACKEND != "sqlite-fs", reason="independent of the host's backends; runs in the SQLite + files pass"
)

DOCKER_DIR = REPO / "docker"
UP_TIMEOUT = 180
MAIL_HOSTNAME = "mail.compose.test"


class Project:
    """One compose project: `up`, `down`, `ps` and the containers' state."""

    def __init__(self, file: str, env: dict[str, str]):
        self.name = f"mairust-t{uuid.uuid4().hex[:10]}"
        self.file = str(DOCKER_DIR / file)
        self.env = {**os.environ, **env}
        self.base = [*compose_command(), "--env-file", str(empty_env_file()), "-p", self.name,
                     "-f", self.file]

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
    smtp, submission, api, imap, imaps, pop3, pop3s = free_ports(7)
    p = project("compose.all-in-one.yml", {
        "PUBLISH_ADDRESS": "127.0.0.1",
        "SMTP_PORT": str(smtp),
        "SUBMISSION_PORT": str(submission),
        "IMAP_PORT": str(imap),
        "IMAPS_PORT": str(imaps),
        "POP3_PORT": str(pop3),
        "POP3S_PORT": str(pop3s),
        "API_PORT": str(api),
        "MAIL_HOSTNAME": MAIL_HOSTNAME,
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
    assert mounts["/etc/mairust/config.yaml"]["Source"] == str(DOCKER_DIR / "config.yaml")
    url = f"http://127.0.0.1:{api}"
    bob = setup_mailbox(url)
    send(smtp, "before restart")
    assert subjects(bob) == ["before restart"]
    # A mail client reads it over IMAPS, on the published port.
    imap = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=insecure_tls(), timeout=20)
    imap.login(f"bob@{DOMAIN}", USER_PASSWORD)
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.logout()
    # MAIL_HOSTNAME from the environment (docker/.env) is the name in the greeting, not the
    # container's id.
    assert smtp_greeting(smtp) == f"{MAIL_HOSTNAME} ESMTP ready"
    with smtplib.SMTP("127.0.0.1", smtp, timeout=20) as s:
        assert s.ehlo("client.test")[1].startswith(MAIL_HOSTNAME.encode())

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
        "MAIL_HOSTNAME": MAIL_HOSTNAME,
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

    assert smtp_greeting(p.ports["smtp"]) == f"{MAIL_HOSTNAME} ESMTP ready"
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


# ---------------------------------------------------------------------- `config`, no images

needs_compose = pytest.mark.skipif(compose_command() is None,
                                   reason="neither `docker compose` nor `docker-compose` is installed")

# What the operator must choose, in docker/.env: the values the tests choose.
CHOSEN = {
    "MAIL_HOSTNAME": "mail.config.test",
    "MAIRUST_ADMIN_EMAIL": "root@config.test",
    "MAIRUST_ADMIN_PASSWORD": "admin-password-config",
    "POSTGRES_PASSWORD": "db-password-config",
    "MINIO_ROOT_PASSWORD": "s3-password-config",
    "CLUSTER_SECRET": "cluster-secret-config-0123456789abcdef",
}
COMMON = ["MAIL_HOSTNAME", "MAIRUST_ADMIN_EMAIL", "MAIRUST_ADMIN_PASSWORD"]
BACKENDS = ["POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"]
FILES = {
    # file: (required variables, its MaiRust services, those given the first admin)
    "compose.all-in-one.yml": (COMMON, ["mairust"], ["mairust"]),
    "compose.production.yml": (COMMON + BACKENDS, ["core", "api", "web"], ["core", "api"]),
    "compose.cluster.yml": (COMMON + BACKENDS + ["CLUSTER_SECRET"],
                            ["core-1", "core-2", "core-3", "api", "web"], ["api"]),
}


def compose_config(file: str, env: dict[str, str], env_file=None) -> subprocess.CompletedProcess:
    """`compose -f docker/FILE config` with `env` and nothing of the caller's environment that
    the file reads, and `env_file` (default: an empty one) in place of docker/.env."""
    text = (DOCKER_DIR / file).read_text()
    read = set(re.findall(r"\$\{([A-Za-z0-9_]+)", text))
    base = {k: v for k, v in os.environ.items() if k not in read}
    return subprocess.run(
        [*compose_command(), "--env-file", str(env_file or empty_env_file()), "-f",
         str(DOCKER_DIR / file), "config"],
        env={**base, **env}, capture_output=True, text=True, timeout=60, cwd=DOCKER_DIR)


def refusal(proc: subprocess.CompletedProcess) -> str:
    """The message of compose's refusal, without the interpolated text docker-compose v1
    prints before it (which repeats every `${...}` of the service)."""
    return (proc.stderr + proc.stdout).rsplit("}", 1)[-1]


@needs_compose
@pytest.mark.parametrize("file, variable", [(f, v) for f, (req, _, _) in FILES.items() for v in req])
def test_config_refuses_a_missing_required_variable_and_names_it(file, variable):
    """Unset or empty, each variable the operator must choose stops compose before anything
    starts, with a message naming it (no default host name, admin or password)."""
    for value in (None, ""):
        env = {k: v for k, v in CHOSEN.items() if k != variable}
        if value is not None:
            env[variable] = value
        proc = compose_config(file, env)
        assert proc.returncode != 0, f"{file} rendered with {variable}={value!r}:\n{proc.stdout}"
        message = refusal(proc)
        assert f"set {variable} in docker/.env" in message, proc.stderr


@needs_compose
@pytest.mark.parametrize("file", list(FILES))
def test_config_puts_the_chosen_host_name_and_admin_into_the_containers(file):
    _, mairust, with_admin = FILES[file]
    proc = compose_config(file, CHOSEN)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert sorted(s for s, c in services.items() if "mairust/" in c["image"]) == sorted(mairust)
    for name in mairust:
        env = services[name].get("environment") or {}
        assert env.get("MAIRUST_SERVER__HOSTNAME") == CHOSEN["MAIL_HOSTNAME"], (name, env)
        if name in with_admin:
            assert env["MAIRUST_ADMIN_EMAIL"] == CHOSEN["MAIRUST_ADMIN_EMAIL"], (name, env)
            assert env["MAIRUST_ADMIN_PASSWORD"] == CHOSEN["MAIRUST_ADMIN_PASSWORD"], (name, env)
        else:
            assert "MAIRUST_ADMIN_PASSWORD" not in env, (name, env)
        assert services[name].get("read_only") is True, name


@needs_compose
@pytest.mark.parametrize("file", list(FILES))
def test_the_example_env_file_starts_nothing_until_the_operator_fills_it_in(file):
    """docker/.env.example holds no usable password or secret, and no host name or admin: a
    copy of it alone is refused; filled in (here through the environment, which takes
    precedence over the file), it renders."""
    example = DOCKER_DIR / ".env.example"
    entries = dict(line.split("=", 1) for line in example.read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#"))
    for key in CHOSEN:
        assert entries.get(key, "") == "", f".env.example sets {key}={entries[key]}"
    assert not [k for k, v in entries.items() if re.search("PASSWORD|SECRET", k) and v], entries
    refused = compose_config(file, {}, env_file=example)
    assert refused.returncode != 0, refused.stdout
    assert re.search(r"set [A-Z_]+ in docker/\.env", refusal(refused)), refused.stderr
    filled = compose_config(file, CHOSEN, env_file=example)
    assert filled.returncode == 0, filled.stderr
