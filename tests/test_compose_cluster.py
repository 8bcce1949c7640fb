"""docker/compose.cluster.yml, run for real: three core containers clustered over QUIC, an api,
a web, PostgreSQL and S3 (the local stand-ins built by scripts/build-images), and a receiver
container: a real SMTP server (tests/compose/receiver.py on a bookworm base with only
python3-minimal) that the cores relay to over the compose network. It answers `451` while a
flag file exists and records the Message-ID of every message it accepts.

One test, in order (each step needs the state the previous one left):
0. every service healthy (compose starts them in their depends_on order); every core greets
   with MAIL_HOSTNAME; the web container proxies /api to the api;
1. mail for remote domains is submitted (AUTH on submission) through every core while the
   receiver defers; every message is attempted and deferred;
2. `docker kill` of the core holding the most deferred mail: the api's GET /api/v1/cluster shows
   every partition owned by the two others; the receiver accepts; every message arrives exactly
   once; the killed core starts again and the cluster converges;
3. more mail through every core while the receiver defers; one core is disconnected from the
   `backend` network (its peers, the database and the bucket; it can still reach the receiver);
   its partitions are taken over, the mail arrives exactly once, and after reconnecting the
   cluster converges (every member alive, every partition owned, the reconnected core among
   the owners) with no duplicate;
4. a database client holding lease row locks vanishes from the network: the cluster owns every
   partition again within the database's keepalive time;
5. `down -v` leaves no container, volume or network of the project.

Images: `mairust/{core,api,web}:<Cargo.toml version>` and the stand-ins
`mairust-test/postgres:15`, `mairust-test/s3:latest` (built by `scripts/build-images
--test-images`: compose_util's `docker_images`); MAIRUST_TEST_IMAGE_PREFIX,
MAIRUST_TEST_POSTGRES_IMAGE, MAIRUST_TEST_S3_IMAGE name others, and MAIRUST_TEST_COMPOSE_FILES
adds override files (os.pathsep-separated). No compose command reads a developer's docker/.env.

Skipped, saying why, where Docker (daemon and compose) is absent, and in the PostgreSQL + S3
pass of scripts/test (the containers bring their own backends, so one pass is enough).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import random
import re
import shutil
import smtplib
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests

from compose_util import (
    DOCKER_DIR,
    REPO,
    Compose,
    docker,
    docker_images,  # noqa: F401 (fixture: the images, the stand-ins included)
    docker_unavailable,
    image_exists,
    smtp_greeting,
    unique_project,
)
from conftest import BACKEND, free_ports, insecure_tls

REASON = docker_unavailable()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=f"needs Docker: {REASON}"),
    # The containers bring their own PostgreSQL and S3: the backend pass does not matter, so
    # the test runs once, in the first pass of scripts/test.
    pytest.mark.skipif(BACKEND != "sqlite-fs",
                       reason="runs once, in the sqlite-fs pass (its containers bring their own backends)"),
]

VERSION = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
IMAGE_PREFIX = os.environ.get("MAIRUST_TEST_IMAGE_PREFIX", "mairust")
POSTGRES_IMAGE = os.environ.get("MAIRUST_TEST_POSTGRES_IMAGE", "mairust-test/postgres:15")
S3_IMAGE = os.environ.get("MAIRUST_TEST_S3_IMAGE", "mairust-test/s3:latest")
CORES = ["core-1", "core-2", "core-3"]
PARTITIONS = 64
ADMIN = ("admin@example.test", "admin-password-123")
MAIL_HOSTNAME = "mail.cluster.test"
SENDER, SENDER_PASSWORD = "bob@example.test", "user-password-123"
DOMAINS = [f"d{i}.remote.test" for i in range(24)]
PER_CORE = 8
RECEIVER_PACKAGES = ["python3-minimal"]


# ---------------------------------------------------------------------- images


def receiver_base() -> str:
    """A bookworm root with python3-minimal, made with mmdebstrap and `docker import`
    (no registry here), cached under a tag derived from its recipe."""
    recipe = f"bookworm minbase {' '.join(RECEIVER_PACKAGES)}"
    tag = f"mairust-test/receiver-base:{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if image_exists(tag):
        return tag
    if shutil.which("mmdebstrap") is None:
        pytest.skip("the receiver's base image is built with mmdebstrap, which is not installed")
    mirror = os.environ.get("MAIRUST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    build = subprocess.Popen(
        ["mmdebstrap", "--variant=minbase", f"--include={','.join(RECEIVER_PACKAGES)}",
         "bookworm", "-", mirror], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    imported = subprocess.run(["docker", "import", "-", tag], stdin=build.stdout,
                              capture_output=True, timeout=600)
    _, err = build.communicate(timeout=600)
    assert build.returncode == 0 and imported.returncode == 0, (
        f"cannot build {tag}: {err.decode()[-2000:]} {imported.stderr.decode()}")
    return tag


def require_images() -> None:
    images = [f"{IMAGE_PREFIX}/{n}:{VERSION}" for n in ("core", "api", "web")]
    images += [POSTGRES_IMAGE, S3_IMAGE]
    missing = [i for i in images if not image_exists(i)]
    assert not missing, f"images not built: {missing}; run scripts/build-images --test-images"


# ---------------------------------------------------------------------- setup


def free_subnet() -> str:
    """First three octets of a /24 that no Docker network and no host route uses."""
    used = []
    for net in docker("network", "ls", "-q").stdout.split():
        for cfg in json.loads(docker("network", "inspect", net).stdout)[0]["IPAM"]["Config"] or []:
            with contextlib.suppress(KeyError, ValueError):
                used.append(ipaddress.ip_network(cfg["Subnet"], strict=False))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout.splitlines():
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(line.split()[0], strict=False))
    rng = random.Random()
    for _ in range(200):
        prefix = f"10.{rng.randrange(160, 250)}.{rng.randrange(0, 256)}"
        net = ipaddress.ip_network(f"{prefix}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return prefix
    raise AssertionError("no free /24 for the backend network")


def override(receiver_image: str, receiver_dir: Path) -> str:
    """The test's additions: the receiver, on `frontend` where other mail servers are."""
    return json.dumps({
        "services": {
            "receiver": {
                "image": receiver_image,
                "command": ["python3", "/srv/receiver.py"],
                "volumes": [f"{REPO / 'tests' / 'compose' / 'receiver.py'}:/srv/receiver.py:ro",
                            f"{receiver_dir}:/data"],
                "networks": ["frontend"],
                "healthcheck": {
                    "test": ["CMD", "python3", "-c",
                             "import socket; socket.create_connection(('127.0.0.1', 25), 2).close()"],
                    "interval": "2s", "retries": 15,
                },
            },
        },
    }, indent=2)


def cluster_config(path: Path) -> None:
    """The file mounted as every MaiRust container's config (CLUSTER_CONFIG): relay to the
    receiver, retry every second, a short backstop scan. (The host name is MAIL_HOSTNAME's.)"""
    path.write_text(
        "queue:\n  lease_ttl: 4s\n  poll_interval: 2s\n"
        "delivery:\n  relay_host: \"receiver:25\"\n  tls: none\n  retry_intervals: [1s]\n"
        "  connect_timeout: 5s\n"
    )
    path.chmod(0o644)


class Receiver:
    """The receiver container's records, read from its bind-mounted directory."""

    def __init__(self, root: Path):
        self.root = root

    def defer(self, on: bool) -> None:
        flag = self.root / "defer"
        if on:
            flag.write_text("1")
        else:
            flag.unlink(missing_ok=True)

    def received(self) -> Counter:
        path = self.root / "received.log"
        if not path.exists():
            return Counter()
        return Counter(line.split("\t")[1] for line in path.read_text().splitlines() if "\t" in line)

    def deferrals(self) -> int:
        path = self.root / "deferred.log"
        return len(path.read_text().splitlines()) if path.exists() else 0


# ---------------------------------------------------------------------- the cluster's API


class Cluster:
    def __init__(self, compose: Compose, ports: dict[str, int]):
        self.compose = compose
        self.ports = ports
        self.api = requests.Session()
        self.api.auth = ADMIN
        # What the last check saw, for the failure message.
        self.seen: object = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['api']}{path}"

    def view(self) -> dict:
        r = self.api.get(self.url("/api/v1/cluster"), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def owners(self) -> Counter:
        return Counter(p["owner"] for p in self.view()["partitions"])

    def pending(self) -> list[dict]:
        rows, cursor = [], None
        while True:
            params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            r = self.api.get(self.url("/api/v1/queue"), params=params, timeout=10)
            assert r.status_code == 200, r.text
            body = r.json()
            rows += [i for i in body["items"] if i["status"] in ("queued", "deferred")]
            cursor = body.get("next_cursor")
            if not cursor:
                return rows

    def wait(self, what: str, predicate, timeout: float):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
            except (requests.RequestException, AssertionError) as e:
                last = e
            if last and not isinstance(last, Exception):
                return last
            time.sleep(0.5)
        raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r}, seen: {self.seen!r})\n"
                             f"{self.compose.logs(tail=60)}")

    def converged(self, members: list[str]):
        """Every given member alive in the api's view and every partition owned by a core
        among them, each of those cores owning some."""
        view = self.view()
        states = {m["node_id"]: m["state"] for m in view["members"]}
        owners = Counter(p["owner"] for p in view["partitions"])
        cores = [m for m in members if m in CORES]
        self.seen = (states, dict(owners))
        ok = (all(states.get(m) == "alive" for m in members)
              and len(view["partitions"]) == PARTITIONS
              and set(owners) == set(cores))
        return (states, dict(owners)) if ok else None

    def owned_only_by(self, cores: list[str]):
        owners = self.owners()
        self.seen = dict(owners)
        return dict(owners) if set(owners) <= set(cores) and None not in owners else None


def submit(port: int, core: str, count: int, batch: str) -> dict[str, str]:
    """`count` messages to remote domains over one authenticated submission session;
    returns {Message-ID: recipient}."""
    sent = {}
    with contextlib.closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as s:
        s.ehlo()
        s.starttls(context=insecure_tls())
        s.ehlo()
        s.login(SENDER, SENDER_PASSWORD)
        for i in range(count):
            rcpt = f"user{i}@{random.choice(DOMAINS)}"
            mid = f"<{uuid.uuid4().hex}@{core}.cluster.test>"
            body = (f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: {batch} via {core} #{i}\r\n"
                    f"Message-ID: {mid}\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n\r\nhello\r\n")
            s.sendmail(SENDER, [rcpt], body.encode())
            sent[mid] = rcpt
        with contextlib.suppress(smtplib.SMTPException):
            s.quit()
    return sent


def submit_everywhere(cluster: Cluster, batch: str) -> dict[str, str]:
    sent = {}
    for core in CORES:
        sent.update(submit(cluster.ports[f"{core}-submission"], core, PER_CORE, batch))
    return sent


def exactly_once(receiver: Receiver, sent: dict[str, str]):
    got = receiver.received()
    return got if all(got[m] >= 1 for m in sent) else None


# ---------------------------------------------------------------------- the test


def test_cluster_compose_survives_a_killed_and_a_cut_off_core(tmp_path, docker_images):
    require_images()
    receiver_image = receiver_base()
    receiver_dir = tmp_path / "receiver"
    receiver_dir.mkdir()
    receiver = Receiver(receiver_dir)
    config = tmp_path / "cluster.yaml"
    cluster_config(config)
    (tmp_path / "override.yml").write_text(override(receiver_image, receiver_dir))

    names = ["api", "web"] + [f"{c}-{k}" for c in CORES for k in ("smtp", "submission", "imaps")]
    ports = dict(zip(names, free_ports(len(names))))
    net = free_subnet()
    env = {
        "MAIRUST_IMAGE_PREFIX": IMAGE_PREFIX,
        "MAIRUST_VERSION": VERSION,
        "POSTGRES_IMAGE": POSTGRES_IMAGE,
        "MINIO_IMAGE": S3_IMAGE,
        "POSTGRES_PASSWORD": "db-password-" + uuid.uuid4().hex[:8],
        "MINIO_ROOT_USER": "mairust-test",
        "MINIO_ROOT_PASSWORD": "s3-password-" + uuid.uuid4().hex[:8],
        "S3_BUCKET": "mairust-mails",
        "MAIL_HOSTNAME": MAIL_HOSTNAME,
        "MAIRUST_ADMIN_EMAIL": ADMIN[0],
        "MAIRUST_ADMIN_PASSWORD": ADMIN[1],
        "CLUSTER_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
        "CLUSTER_NET": net,
        "CLUSTER_CONFIG": str(config),
        "PUBLISH_ADDRESS": "127.0.0.1",
        "API_PORT": str(ports["api"]),
        "WEB_PORT": str(ports["web"]),
        **{f"CORE{i + 1}_SMTP_PORT": str(ports[f"{c}-smtp"]) for i, c in enumerate(CORES)},
        **{f"CORE{i + 1}_SUBMISSION_PORT": str(ports[f"{c}-submission"]) for i, c in enumerate(CORES)},
        **{f"CORE{i + 1}_IMAPS_PORT": str(ports[f"{c}-imaps"]) for i, c in enumerate(CORES)},
    }
    files = [DOCKER_DIR / "compose.cluster.yml", tmp_path / "override.yml"]
    # More override files (os.pathsep-separated), e.g. for other stand-in images.
    files += [Path(f) for f in os.environ.get("MAIRUST_TEST_COMPOSE_FILES", "").split(os.pathsep) if f]
    compose = Compose(unique_project("mrcluster"), files, env)
    cluster = Cluster(compose, ports)
    volumes: set[str] = set()
    try:
        compose.run("up", "-d", timeout=600)
        compose.wait_healthy(["db", "minio", *CORES, "api", "web", "receiver"], timeout=180)
        volumes = compose.volumes_in_use()
        view = cluster.wait("cluster formed", lambda: cluster.converged([*CORES, "api"]), 60)
        print("cluster formed:", view)
        # MAIL_HOSTNAME, not the container's host name (core-1...), in every core's greeting.
        for core in CORES:
            assert smtp_greeting(ports[f"{core}-smtp"]) == f"{MAIL_HOSTNAME} ESMTP ready", core

        # The web container serves the UI and proxies /api to the api container.
        through_web = cluster.api.get(f"http://127.0.0.1:{ports['web']}/api/v1/cluster", timeout=10)
        assert through_web.status_code == 200, through_web.text
        assert {m["node_id"] for m in through_web.json()["members"]} == {*CORES, "api"}

        admin = cluster.api
        assert admin.post(cluster.url("/api/v1/domains"), json={"name": "example.test"},
                          timeout=10).status_code == 201
        r = admin.post(cluster.url("/api/v1/users"), json={"email": SENDER, "password": SENDER_PASSWORD},
                       timeout=10)
        assert r.status_code == 201, r.text

        # 1. Mail through every core while the receiver defers.
        receiver.defer(True)
        first = submit_everywhere(cluster, "first")
        cluster.wait("every message attempted and deferred", lambda: (
            len(rows := cluster.pending()) == len(first)
            and all(r["status"] == "deferred" and r["attempts"] >= 1 for r in rows)), 60)
        assert receiver.received() == Counter(), "nothing may be accepted while deferring"

        # 2. Kill the core that owns the most deferred mail.
        by_owner = Counter(r["owner"] for r in cluster.pending())
        victim = max(CORES, key=lambda c: by_owner.get(c, 0))
        assert by_owner[victim] > 0, by_owner
        survivors = [c for c in CORES if c != victim]
        docker("kill", compose.container(victim))
        started = time.monotonic()
        owners = cluster.wait(f"{victim}'s partitions taken over",
                              lambda: cluster.owned_only_by(survivors), 30)
        print(f"{victim} killed; partitions owned by {owners} after {time.monotonic() - started:.1f}s")
        assert sum(owners.values()) == PARTITIONS
        receiver.defer(False)
        cluster.wait("every message delivered", lambda: exactly_once(receiver, first), 60)
        cluster.wait("queue empty", lambda: not cluster.pending(), 30)
        got = receiver.received()
        assert {m: n for m, n in got.items() if n != 1} == {}, "delivered twice"
        assert set(got) == set(first), "unexpected messages at the receiver"

        compose.run("start", victim)
        compose.wait_healthy([victim], timeout=90)
        cluster.wait("cluster converged after the restart",
                     lambda: cluster.converged([*CORES, "api"]), 60)

        # 3. Cut the core holding the most deferred mail off from its peers, the database and
        # the bucket (it still reaches the receiver on `frontend`).
        receiver.defer(True)
        second = submit_everywhere(cluster, "second")
        cluster.wait("second batch attempted and deferred", lambda: (
            len(rows := cluster.pending()) == len(second)
            and all(r["status"] == "deferred" and r["attempts"] >= 1 for r in rows)), 60)
        by_owner = Counter(r["owner"] for r in cluster.pending())
        print("second batch pending by owner:", dict(by_owner))
        cut = max(CORES, key=lambda c: by_owner.get(c, 0))
        assert by_owner[cut] > 0, by_owner
        backend = f"{compose.project}_backend"
        container = compose.container(cut)
        address = compose.inspect(container)["NetworkSettings"]["Networks"][backend]["IPAddress"]
        docker("network", "disconnect", backend, container)
        others = [c for c in CORES if c != cut]
        owners = cluster.wait(f"{cut}'s partitions taken over while cut off",
                              lambda: cluster.owned_only_by(others), 45)
        print(f"{cut} cut off; partitions owned by {owners}")
        receiver.defer(False)
        cluster.wait("second batch delivered", lambda: exactly_once(receiver, second), 60)
        cluster.wait("queue empty again", lambda: not cluster.pending(), 30)

        docker("network", "connect", "--ip", address, "--alias", cut, backend, container)
        view = cluster.wait("cluster converged after reconnecting",
                            lambda: cluster.converged([*CORES, "api"]), 90)
        print("converged after reconnecting:", view)
        # A client that vanishes while its transaction holds lease row locks (what a core cut
        # off in the middle of its fencing check leaves behind) must not stall the cluster
        # for longer than the database's TCP keepalives take to end its session.
        locker = f"{compose.project}_locker"
        docker("run", "-d", "--name", locker, "--network", backend, "-e",
               f"PGPASSWORD={env['POSTGRES_PASSWORD']}", "--entrypoint", "bash", POSTGRES_IMAGE, "-c",
               "printf 'BEGIN;\\nSELECT partition FROM partition_leases WHERE partition < 3 FOR UPDATE;"
               "\\n\\\\! sleep 600\\n' | psql -h db -U mairust -d mairust")
        try:
            cluster.wait("lease rows locked", lambda: "(3 rows)" in docker("logs", locker).stdout, 30)
            docker("network", "disconnect", backend, locker)
            started = time.monotonic()
            db = compose.container("db")

            def lock_holders() -> int:
                out = docker("exec", db, "psql", "-U", "mairust", "-d", "mairust", "-tAc",
                             "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'"
                             " AND query LIKE '%FOR UPDATE%'").stdout
                return int(out.strip() or 0)

            assert lock_holders() == 1
            cluster.wait("the vanished session ended by the database's keepalives",
                         lambda: lock_holders() == 0, 40)
            ended = time.monotonic() - started
            cluster.wait("cluster owns everything again after a vanished lock holder",
                         lambda: cluster.converged([*CORES, "api"]), 30)
            print(f"vanished lock holder: session ended after {ended:.1f}s, "
                  f"converged after {time.monotonic() - started:.1f}s")
        finally:
            docker("rm", "-f", "-v", locker, check=False)  # -v: its image's anonymous data volume

        time.sleep(3)  # anything the reconnected core might still send would arrive by now
        got = receiver.received()
        assert {m: n for m, n in got.items() if n != 1} == {}, "delivered twice"
        assert set(got) == set(first) | set(second), "lost or unexpected messages"
        assert receiver.deferrals() > 0
    except BaseException:
        print(compose.logs(tail=300))
        raise
    finally:
        receiver.defer(False)
        compose.down()

    # 4. Nothing of the project is left.
    assert compose.leftovers(volumes) == {"containers": [], "volumes": [], "networks": []}
