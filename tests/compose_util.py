"""Helpers for the tests that run Docker and compose files (real containers, no mocks).

- `docker_unavailable()` says why Docker cannot be used here (None when it can).
- `compose_command()` is `docker compose` (v2 plugin) when present, else `docker-compose`
  (v1, with `--compatibility` so that `deploy.resources.limits` apply).
- `Compose` runs one project (unique name, given files and environment) and finds what it
  left behind; like every compose command here it reads `empty_env_file()`, never a
  developer's docker/.env.
- `build_images()` runs scripts/build-images once per process (the test stand-ins included
  when asked), and the session fixture `docker_images` gives the tests its image names.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO / "docker"
# Held while scripts/build-images runs, by every test session (conftest's fixture too).
BUILD_LOCK = "/tmp/mairust-build-images.lock"


def _ok(cmd: list[str], timeout: float = 20) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def docker_unavailable() -> str | None:
    """Why the Docker tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    if not _ok(["docker", "info"]):
        return "the Docker daemon is not reachable (`docker info` fails)"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    return None


def compose_command() -> list[str] | None:
    """`docker compose` if the v2 plugin is there, else `docker-compose --compatibility`."""
    if shutil.which("docker") and _ok(["docker", "compose", "version"]):
        return ["docker", "compose"]
    if shutil.which("docker-compose") and _ok(["docker-compose", "version"]):
        return ["docker-compose", "--compatibility"]
    return None


def empty_env_file() -> Path:
    """An empty file for compose's `--env-file`: the tests set every variable they mean in the
    environment, and a developer's docker/.env (which compose reads by default) changes none."""
    path = Path(tempfile.gettempdir()) / "mairust-tests-empty.env"
    if not path.exists() or path.stat().st_size:
        path.write_text("")
    return path


def cargo_version() -> str:
    return re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)


_builds: dict[bool, tuple[subprocess.CompletedProcess, str]] = {}


def build_images(test_images: bool = True) -> dict[str, str]:
    """Runs scripts/build-images (with `--test-images`: the PostgreSQL and S3 stand-ins too)
    once per process, under the lock every session takes, with the test binary
    (`MAIRUST_IMAGE_BIN`, else `MAIRUST_BIN`, else target/debug/mairust) as PREBUILT; returns
    the image names, the script's output ("build_output") and the binary's path ("binary").
    Skips where Docker cannot be used."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    if test_images not in _builds:
        binary = os.environ.get("MAIRUST_IMAGE_BIN") or os.environ.get(
            "MAIRUST_BIN", str(REPO / "target" / "debug" / "mairust"))
        args = [str(REPO / "scripts" / "build-images"), *(["--test-images"] if test_images else [])]
        with open(BUILD_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            proc = subprocess.run(args, env={**os.environ, "PREBUILT": binary}, capture_output=True,
                                  text=True, timeout=1800)
        _builds[test_images] = (proc, binary)
    proc, binary = _builds[test_images]
    assert proc.returncode == 0, f"scripts/build-images failed:\n{proc.stdout}\n{proc.stderr}"
    version = cargo_version()
    names = {n: f"mairust/{n}:{version}" for n in ("all-in-one", "core", "api", "web")}
    if test_images:
        names["postgres"] = "mairust-test/postgres:15"
        names["s3"] = "mairust-test/s3:latest"
    names["build_output"] = proc.stdout
    names["binary"] = str(Path(binary).resolve())
    return names


@pytest.fixture(scope="session")
def docker_images() -> dict[str, str]:
    """The images, the test stand-ins included (`build_images(test_images=True)`). Test modules
    import it, in place of conftest's fixture of the same name, which builds the product images
    only now that scripts/build-images makes the stand-ins only when asked."""
    return build_images(test_images=True)


def smtp_greeting(port: int, host: str = "127.0.0.1") -> str:
    """The text of the 220 greeting on host:port (e.g. "mail.example.test ESMTP ready")."""
    smtp = smtplib.SMTP(timeout=20)
    try:
        code, text = smtp.connect(host, port)
        assert code == 220, (code, text)
        return text.decode()
    finally:
        smtp.close()


def image_exists(name: str) -> bool:
    return _ok(["docker", "image", "inspect", name])


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs `docker ARGS`; raises with its output when `check` and it fails."""
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def unique_project(prefix: str) -> str:
    """A compose project name no other run uses (lowercase letters and digits)."""
    return f"{prefix}{os.getpid()}{uuid.uuid4().hex[:6]}"


class Compose:
    """One compose project: `files` with `env` on top of this process's environment."""

    def __init__(self, project: str, files: Iterable[Path], env: dict[str, str]):
        base = compose_command()
        assert base is not None, "no compose command"
        self.project = project
        self.files = [Path(f) for f in files]
        self.env = {**os.environ, **env}
        self.base = base
        self.cmd = [*base, "--env-file", str(empty_env_file()), "-p", project]
        for f in self.files:
            self.cmd += ["-f", str(f)]

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.cmd, *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, cwd=self.files[0].parent)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(self.cmd[:2])} {' '.join(args)} failed "
                                 f"({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def container(self, service: str) -> str:
        """The id of the service's (single) container, running or not."""
        out = docker("ps", "-aq", "--no-trunc", "--filter", f"label=com.docker.compose.project={self.project}",
                     "--filter", f"label=com.docker.compose.service={service}").stdout.split()
        assert len(out) == 1, f"expected one container of {service}, found {out}"
        return out[0]

    def containers(self) -> list[str]:
        return docker("ps", "-aq", "--no-trunc", "--filter",
                      f"label=com.docker.compose.project={self.project}").stdout.split()

    def inspect(self, container: str) -> dict:
        return json.loads(docker("inspect", container).stdout)[0]

    def health(self, service: str) -> str:
        state = self.inspect(self.container(service))["State"]
        return state.get("Health", {}).get("Status", "none") if state.get("Running") else "stopped"

    def wait_healthy(self, services: Iterable[str], timeout: float) -> None:
        services = list(services)
        deadline = time.monotonic() + timeout
        status: dict[str, str] = {}
        while time.monotonic() < deadline:
            status = {}
            for s in services:
                try:
                    status[s] = self.health(s)
                except AssertionError:
                    status[s] = "absent"
            if all(v == "healthy" for v in status.values()):
                return
            time.sleep(1)
        raise AssertionError(f"not healthy within {timeout:.0f}s: {status}\n{self.logs(tail=40)}")

    def volumes_in_use(self) -> set[str]:
        """Every volume (named or anonymous) mounted by the project's containers."""
        names = set()
        for c in self.containers():
            for m in self.inspect(c).get("Mounts", []):
                if m.get("Type") == "volume":
                    names.add(m["Name"])
        return names

    def leftovers(self, volumes: Iterable[str] = ()) -> dict[str, list[str]]:
        """Containers, volumes and networks of the project that still exist (`volumes`: names
        seen earlier, anonymous ones included, which carry no project label)."""
        label = f"label=com.docker.compose.project={self.project}"
        existing = set(docker("volume", "ls", "-q").stdout.split())
        return {
            "containers": self.containers(),
            "volumes": sorted(set(docker("volume", "ls", "-q", "--filter", label).stdout.split())
                              | (set(volumes) & existing)),
            "networks": docker("network", "ls", "-q", "--filter", label).stdout.split(),
        }

    def logs(self, tail: int = 200) -> str:
        proc = self.run("logs", "--no-color", f"--tail={tail}", check=False, timeout=60)
        return proc.stdout + proc.stderr

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False, timeout=180)
