"""The container images built by scripts/build-images: sizes, labels, a read-only root, a
non-root user, the health check, no shell, and the documented quick start and first-admin
commands (which therefore need none).

The images are built once per session, the test stand-ins included (`scripts/build-images
--test-images`, compose_util's `docker_images`); every container a test starts is removed at
teardown, with its anonymous volumes.
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import subprocess
import time
import uuid

import pytest
import requests
from compose_util import docker, docker_images, smtp_greeting  # noqa: F401 (docker_images: fixture)
from conftest import BACKEND, REPO, cargo_version, free_ports, insecure_tls

# The images carry their own backends: one run, in the SQLite + files pass of scripts/test.
pytestmark = pytest.mark.skipif(
    BACKEND != "sqlite-fs", reason="independent of the host's backends; runs in the SQLite + files pass"
)

ROLE_IMAGES = ("all-in-one", "core", "api", "web")
# The deployment spec's targets (section 6.1), in MB as `docker images` counts them.
SIZE_TARGET_MB = {"all-in-one": 500, "core": 100, "api": 100, "web": 50}
EXPECTED_ROLES = {
    "all-in-one": "smtp,queue,imap,api,web",
    "core": "smtp,queue,imap",
    "api": "api",
    "web": "web",
}


def inspect(ref: str) -> dict:
    return json.loads(docker("inspect", ref).stdout)[0]


@pytest.fixture
def containers():
    """Starts containers (`run(image, *docker_run_args)` -> id) and removes them at teardown."""
    started: list[str] = []

    def run(image: str, *args: str) -> str:
        name = f"mairust-img-{uuid.uuid4().hex[:8]}"
        cid = docker("run", "-d", "--name", name, *args, image).stdout.strip()
        started.append(cid)
        return cid

    run.started = started
    yield run
    for cid in started:
        docker("rm", "-f", "-v", cid, check=False)


def wait_healthy(cid: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = inspect(cid)["State"]
        health = state.get("Health", {}).get("Status")
        if health == "healthy":
            return state
        if not state["Running"] or time.monotonic() > deadline:
            logs = docker("logs", "--tail", "30", cid, check=False)
            raise AssertionError(
                f"container not healthy ({state['Status']}, health {health}):\n"
                f"{logs.stdout}{logs.stderr}\n{json.dumps(state.get('Health'), indent=1)[-2000:]}"
            )
        time.sleep(0.5)


def test_sizes_are_within_the_spec_targets(docker_images):
    """The spec's targets hold for images of a release binary (scripts/build-images enforces
    them then). The suite builds its images from the binary it tests, a larger debug build:
    then what the image adds to the binary (runtime, files) must stay small."""
    print("\n" + docker_images["build_output"])
    binary = (REPO / "target" / "docker" / "mairust").stat().st_size
    release = "/release/" in docker_images["binary"]
    for name in ROLE_IMAGES:
        size = inspect(docker_images[name])["Size"]
        print(f"{docker_images[name]}: {size / 1e6:.1f} MB (target < {SIZE_TARGET_MB[name]} MB; "
              f"binary {binary / 1e6:.1f} MB, {'release' if release else 'debug'} build)")
        if release:
            assert size < SIZE_TARGET_MB[name] * 1_000_000, name
        else:
            assert size - binary < 20_000_000, (name, size, binary)


def test_labels_name_version_source_and_licence(docker_images):
    version = cargo_version()
    for name in ROLE_IMAGES:
        labels = inspect(docker_images[name])["Config"]["Labels"]
        assert labels["org.opencontainers.image.version"] == version
        assert labels["org.opencontainers.image.title"] == f"mairust/{name}"
        assert labels["org.opencontainers.image.source"].startswith("https://")
        assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
        assert labels["org.opencontainers.image.description"]
        revision = labels["org.opencontainers.image.revision"]
        assert len(revision) == 40 or revision == "unknown", revision


def test_image_defaults(docker_images):
    """Every role image runs `mairust serve` as 65532, with its roles and the in-image ports."""
    for name in ROLE_IMAGES:
        config = inspect(docker_images[name])["Config"]
        env = dict(e.split("=", 1) for e in config["Env"])
        assert config["User"] == "65532:65532"
        assert config["Entrypoint"] == ["/usr/local/bin/mairust"]
        assert config["Cmd"] == ["serve"]
        assert config["Healthcheck"]["Test"] == ["CMD", "/usr/local/bin/mairust", "healthcheck"]
        assert env["MAIRUST_SERVER__ROLES"] == EXPECTED_ROLES[name]
        assert "/var/lib/mairust" in config["Volumes"]
        if name == "web":
            assert env["MAIRUST_SERVER__API_PORT"] == "80"
            assert "80/tcp" in config["ExposedPorts"]
        else:
            # The binary's defaults (25, 587, 143, ...): a config file's ports are not overridden.
            assert not any(k.endswith("_PORT") for k in env), env
        if name in ("all-in-one", "core"):
            expected = {"25/tcp", "587/tcp", "143/tcp", "993/tcp", "110/tcp", "995/tcp", "8080/tcp"}
            assert expected <= set(config["ExposedPorts"])


def test_runtime_files(docker_images):
    """The runtime has the CA bundle (S3 and relays over HTTPS/TLS), the nonroot account and
    time zones, and no package manager."""
    cid = docker("create", docker_images["core"]).stdout.strip()
    try:
        files = subprocess.run(f"docker export {cid} | tar -t", shell=True, capture_output=True,
                               text=True, check=True, timeout=120).stdout.split("\n")
        passwd = docker("cp", f"{cid}:/etc/passwd", "-").stdout
    finally:
        docker("rm", "-v", cid, check=False)
    assert "etc/ssl/certs/ca-certificates.crt" in files
    assert "usr/share/zoneinfo/Europe/Berlin" in files
    assert "etc/services" in files
    assert "nonroot:x:65532:65532" in passwd
    assert not [f for f in files if f.startswith(("usr/bin/apt", "usr/bin/dpkg", "bin/sh"))]


HARDENED = ("--read-only", "--user", "65532:65532", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges:true", "--health-interval", "1s",
            "--health-start-period", "30s")


@pytest.fixture
def network():
    """A private Docker network, removed at teardown (after the containers fixture's)."""
    name = f"mairust-img-{uuid.uuid4().hex[:8]}"
    docker("network", "create", name)
    yield name
    docker("network", "rm", name, check=False)


@pytest.mark.parametrize("name", ROLE_IMAGES)
def test_runs_read_only_as_non_root_and_becomes_healthy(docker_images, network, containers, name):
    extra = []
    if name == "web":
        # A web node is ready when the API it proxies to answers: give it one.
        api = containers(docker_images["api"], *HARDENED, "--network", network,
                         "-e", "MAIRUST_ADMIN_EMAIL=admin@admin.test",
                         "-e", "MAIRUST_ADMIN_PASSWORD=admin-password-123")
        wait_healthy(api)
        extra = ["-e", f"API_URL=http://{inspect(api)['Name'].lstrip('/')}:8080"]
    cid = containers(
        docker_images[name],
        *HARDENED,
        "--network", network,
        "-e", "MAIRUST_ADMIN_EMAIL=admin@admin.test",
        "-e", "MAIRUST_ADMIN_PASSWORD=admin-password-123",
        *extra,
    )
    wait_healthy(cid)
    # The server process itself, seen from the host.
    top = docker("top", cid, "-o", "pid,uid,args").stdout.splitlines()
    procs = [line.split(None, 2)[1:] for line in top[1:]]
    assert procs, top
    for uid, args in procs:
        assert uid == "65532", top
    assert any("mairust serve" in args for _, args in procs), top
    assert inspect(cid)["HostConfig"]["ReadonlyRootfs"] is True
    if name != "web":
        # The root filesystem refuses writes; the state volume takes them. (A web node has no
        # database, so `db export` refuses there before it writes anything; it shares the
        # runtime with the others.)
        r = docker("exec", cid, "/usr/local/bin/mairust", "db", "export", "--output",
                   "/etc/mairust/x", check=False)
        assert r.returncode != 0
        assert "read-only" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
        r = docker("exec", cid, "/usr/local/bin/mairust", "db", "export", "--output",
                   "/var/lib/mairust/db/export-test")
        assert r.returncode == 0


def test_the_quick_start_volume_keeps_the_data(docker_images, containers):
    """`docker run -v mairust_data:/var/lib/mairust mairust/all-in-one` (the spec's quick
    start): the database and the generated files land in that one volume."""
    volume = f"mairust-img-{uuid.uuid4().hex[:8]}"
    cid = None
    try:
        cid = containers(
            docker_images["all-in-one"], "--read-only", "--health-interval", "1s",
            "-v", f"{volume}:/var/lib/mairust",
        )
        wait_healthy(cid)
        # Nothing went to an anonymous volume: the container has exactly the named mount.
        mounts = inspect(cid)["Mounts"]
        assert [m.get("Name") for m in mounts] == [volume], mounts
        # No admin was configured: the generated password went to server.data_dir, on the volume.
        docker("rm", "-f", cid)
        r = docker("run", "--rm", "--read-only", "--entrypoint", "/usr/local/bin/mairust",
                   "-v", f"{volume}:/var/lib/mairust", docker_images["all-in-one"],
                   "db", "export", "--output", "/var/lib/mairust/mail/probe-export")
        r = docker("run", "--rm", "--entrypoint", "ls", "-v", f"{volume}:/state",
                   docker_images["s3"], "/state/db", "/state/mail")
        assert "initial-admin-password" in r.stdout, r.stdout
        assert "mairust.db" in r.stdout, r.stdout
        assert "probe-export" in r.stdout, r.stdout
    finally:
        if cid:
            docker("rm", "-f", cid, check=False)
        docker("volume", "rm", "-f", volume, check=False)


def test_the_quick_start_command_gives_a_working_server(docker_images, containers):
    """The README's `docker run --read-only -p 25:25 -p 587:587 -p 993:993 -p 8080:8080
    -e MAIRUST_SERVER__HOSTNAME=... -v mairust_data:/var/lib/mairust mairust/all-in-one`, on free
    host ports: the greeting carries the host name, mail comes in on 25, the generated admin
    (admin@<that name>, its password from `mairust user initial-password`) adds a domain and a
    user over the API on 8080, who signs in on 587 (STARTTLS) and reads the mail back, and over
    IMAPS on 993."""
    volume = f"mairust-img-{uuid.uuid4().hex[:8]}"
    smtp, submission, api, imaps = free_ports(4)
    hostname = "mail.quick.test"
    try:
        cid = containers(
            docker_images["all-in-one"], "--read-only", "--health-interval", "1s",
            "-p", f"127.0.0.1:{smtp}:25", "-p", f"127.0.0.1:{submission}:587",
            "-p", f"127.0.0.1:{api}:8080", "-p", f"127.0.0.1:{imaps}:993",
            "-e", f"MAIRUST_SERVER__HOSTNAME={hostname}",
            "-v", f"{volume}:/var/lib/mairust",
        )
        wait_healthy(cid)
        password = docker("exec", cid, "mairust", "user", "initial-password").stdout.strip()
        email = f"admin@{hostname}"
        assert smtp_greeting(smtp) == f"{hostname} ESMTP ready"
        base = f"http://127.0.0.1:{api}"
        auth = (email, password)
        assert requests.post(base + "/api/v1/domains", json={"name": "quick.test"}, auth=auth,
                             timeout=10).status_code == 201
        r = requests.post(base + "/api/v1/users", auth=auth, timeout=10,
                          json={"email": "bob@quick.test", "password": "bob-password-123"})
        assert r.status_code == 201, r.text
        with smtplib.SMTP("127.0.0.1", smtp, timeout=20) as s:
            s.ehlo("client.test")
            s.sendmail("alice@remote.test", ["bob@quick.test"],
                       b"From: alice@remote.test\r\nTo: bob@quick.test\r\nSubject: over 25\r\n\r\nHi.\r\n")
        with smtplib.SMTP("127.0.0.1", submission, timeout=20) as s:
            s.ehlo("client.test")
            s.starttls(context=insecure_tls())
            s.ehlo("client.test")
            s.login("bob@quick.test", "bob-password-123")
        deadline = time.monotonic() + 10
        while True:
            items = requests.get(base + "/api/v1/messages", auth=("bob@quick.test", "bob-password-123"),
                                 timeout=10).json()["items"]
            if items or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [m["subject"] for m in items] == ["over 25"], items
        imap = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=insecure_tls(), timeout=20)
        imap.login("bob@quick.test", "bob-password-123")
        assert imap.select("INBOX") == ("OK", [b"1"])
        imap.logout()
    finally:
        docker("rm", "-f", *containers.started, check=False)
        docker("volume", "rm", "-f", volume, check=False)


def test_the_first_admin_commands_need_no_shell(docker_images, containers):
    """README and DEPLOYMENT, for the shell-less image: `docker exec mairust mairust user
    initial-password` prints the generated first-admin password; `docker exec mairust mairust
    user passwd EMAIL --password P` (or `docker exec -e MAIRUST_NEW_USER_PASSWORD=P ...`)
    changes it and deletes the generated-password file."""
    volume = f"mairust-img-{uuid.uuid4().hex[:8]}"
    (api,) = free_ports(1)
    hostname = "mail.first.test"
    email = f"admin@{hostname}"
    base = f"http://127.0.0.1:{api}"

    def signs_in(password: str) -> bool:
        r = requests.get(base + "/api/v1/users", auth=(email, password), timeout=10)
        assert r.status_code in (200, 401), (r.status_code, r.text)
        return r.status_code == 200

    def state_files() -> list[str]:
        return docker("run", "--rm", "--entrypoint", "ls", "-v", f"{volume}:/state:ro",
                      docker_images["s3"], "/state/db").stdout.split()

    try:
        cid = containers(
            docker_images["all-in-one"], "--read-only", "--health-interval", "1s",
            "-p", f"127.0.0.1:{api}:8080", "-e", f"MAIRUST_SERVER__HOSTNAME={hostname}",
            "-v", f"{volume}:/var/lib/mairust",
        )
        wait_healthy(cid)
        generated = docker("exec", cid, "mairust", "user", "initial-password").stdout.strip()
        assert generated and signs_in(generated)

        docker("exec", cid, "mairust", "user", "passwd", email, "--password", "first-new-password")
        assert signs_in("first-new-password") and not signs_in(generated)
        assert "initial-admin-password" not in state_files()
        r = docker("exec", cid, "mairust", "user", "initial-password", check=False)
        assert r.returncode != 0 and generated not in r.stdout, r.stdout + r.stderr

        docker("exec", "-e", "MAIRUST_NEW_USER_PASSWORD=second-new-password", cid,
               "mairust", "user", "passwd", email)
        assert signs_in("second-new-password") and not signs_in("first-new-password")
    finally:
        docker("rm", "-f", *containers.started, check=False)
        docker("volume", "rm", "-f", volume, check=False)


@pytest.mark.parametrize("name", ROLE_IMAGES)
def test_no_shell_in_the_runtime_images(docker_images, name):
    for shell in ("/bin/sh", "/bin/bash", "/bin/busybox"):
        r = docker("run", "--rm", "--entrypoint", shell, docker_images[name], "-c", "true",
                   check=False)
        assert r.returncode != 0, f"{name} has {shell}"
        assert "no such file" in r.stderr.lower() or "not found" in r.stderr.lower(), r.stderr


def test_stand_ins_start_healthy(docker_images, containers):
    pg = containers(docker_images["postgres"], "--health-interval", "1s",
                    "-e", "POSTGRES_USER=mairust", "-e", "POSTGRES_PASSWORD=pw-1",
                    "-e", "POSTGRES_DB=mairust")
    s3 = containers(docker_images["s3"], "--health-interval", "1s",
                    "-e", "MINIO_ROOT_USER=user-1", "-e", "MINIO_ROOT_PASSWORD=secret-123",
                    "-e", "MINIO_DEFAULT_BUCKETS=one,two")
    wait_healthy(pg)
    wait_healthy(s3)
    # Password authentication over TCP (not the trusted socket).
    r = docker("exec", "-e", "PGPASSWORD=pw-1", pg, "psql", "-h", "127.0.0.1", "-U", "mairust",
               "-d", "mairust", "-tAc", "select current_user")
    assert r.stdout.strip() == "mairust"
    r = docker("exec", "-e", "PGPASSWORD=wrong", pg, "psql", "-h", "127.0.0.1", "-U", "mairust",
               "-d", "mairust", "-tAc", "select 1", check=False)
    assert r.returncode != 0 and "password authentication failed" in r.stderr
    assert docker("exec", s3, "ls", "/data").stdout.split() == ["one", "two"]
