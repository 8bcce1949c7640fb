"""The OpenAPI document matches the server: schemathesis generates requests from
`/api/v1/openapi.json` (valid and invalid ones) and checks every answer against it: status
codes and bodies as documented, no 5xx, valid input accepted, invalid input refused. The run
is bounded (few examples per operation, a fixed seed, a time limit)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, setup_domain_and_user

MAX_EXAMPLES = 12
TIME_LIMIT = 100  # seconds, for the whole run


def schemathesis() -> list[str]:
    exe = Path(sys.executable).parent / "schemathesis"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("schemathesis")
    if not found:
        pytest.fail("schemathesis is not installed (pip install -r tests/requirements.txt)")
    return [found]


# Operations that can take the test's own credentials away (a new password for the account
# it signs in with, its token deleted): they run last, on their own.
CREDENTIAL_CHANGERS = ["PUT /api/v1/users/{email}/password", "DELETE /api/v1/tokens/{id}"]

# Hypothesis's target optimiser fails inside its own hill climbing (an IndexError in
# `attempt_replace`) while fuzzing this operation; its examples and coverage phases run
# outside Hypothesis and check it against the document all the same.
NOT_FUZZED = ["DELETE /api/v1/folders/{name}/messages"]


def run_schemathesis(srv, tmp_path, name: str, filters: list[str], max_time: int,
                     auth: tuple[str, str] = (ADMIN_EMAIL, ADMIN_PASSWORD),
                     phases: str = "examples,coverage,fuzzing") -> str:
    args = [
        *schemathesis(),
        "run",
        f"{srv.base_url}/api/v1/openapi.json",
        "--auth", f"{auth[0]}:{auth[1]}",
        "--checks", "all",
        # Stateful checks need links the document does not declare.
        "--exclude-checks", "use_after_free,ensure_resource_availability",
        "--phases", phases,
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", "20261201",
        # One worker: hypothesis's source inspection is not thread-safe on every Python.
        "--workers", "1",
        "--request-timeout", "10",
        "--max-time", str(max_time),
        "--no-color",
        "--report-dir", str(tmp_path / name),
        "--generation-database", "none",
        *filters,
    ]
    # Its caches go to the test's directory, not the work tree.
    p = subprocess.run(args, capture_output=True, text=True, timeout=max_time + 60,
                       env=dict(os.environ), cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-20000:]
    return out


def test_the_server_conforms_to_its_openapi_document(server, tmp_path):
    # Schemathesis sends many requests with wrong credentials on purpose; the failure throttle
    # (tested in test_hardening.py) would then slow the valid ones down past the timeout.
    srv = server({"smtp": {"auth_failures_free": 1000000}})
    setup_domain_and_user(srv)
    keep_credentials = [arg for name in CREDENTIAL_CHANGERS + NOT_FUZZED
                        for arg in ("--exclude-name", name)]
    out = run_schemathesis(srv, tmp_path, "main", keep_credentials, TIME_LIMIT - 35)
    assert "Tested:" in out, out[-2000:]
    unfuzzed = [arg for name in NOT_FUZZED for arg in ("--include-name", name)]
    out = run_schemathesis(srv, tmp_path, "not-fuzzed", unfuzzed, 15, phases="examples,coverage")
    assert "Tested:" in out, out[-2000:]
    # Every operation runs: the credential changers too, last and as an administrator of
    # their own, so whatever they change cannot lock the run's main account out.
    fuzzer = ("fuzz-admin@admin.test", "fuzz-admin-password-1")
    srv.api().add_user(fuzzer[0], fuzzer[1], is_admin=True)
    only_them = [arg for name in CREDENTIAL_CHANGERS for arg in ("--include-name", name)]
    out = run_schemathesis(srv, tmp_path, "credentials", only_them, 15, auth=fuzzer)
    assert "Tested:" in out, out[-2000:]
    assert srv.api().get("/api/v1/users").status_code == 200, "the main admin was locked out"
    # Every operation of the document was in one of the two runs.
    document = srv.api().get("/api/v1/openapi.json").json()
    operations = {f"{m.upper()} {p}" for p, item in document["paths"].items() for m in item}
    assert {"POST /api/v1/session", "DELETE /api/v1/session", *CREDENTIAL_CHANGERS} <= operations
