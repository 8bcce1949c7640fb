"""Configuration, command line and operations: errors that name the bad key, file, or address;
environment overrides (`MAIRUST_<SECTION>__<KEY>` and the conventional names); the bootstrap
administrator; the `domain`/`user`/`healthcheck`/`check-config` subcommands; JSON log lines.

These tests start the binary directly where the fixture's assumptions (a config that works)
do not hold."""

import contextlib
import re
import smtplib
import socket
import stat
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import requests

from conftest import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    BIN,
    DOMAIN,
    HOSTNAME,
    USER_PASSWORD,
    assert_error,
    base_config,
    clean_env,
    deep_merge,
    free_ports,
    fs_blobs,
    insecure_tls,
    run_cli,
    setup_domain_and_user,
    simple_message,
    write_config,
)

START_FAIL_TIMEOUT = 20


def config_file(tmp_path: Path, overrides: dict | None = None, raw: str | None = None) -> Path:
    path = tmp_path / "config.yaml"
    if raw is not None:
        path.write_text(raw)
    else:
        write_config(path, deep_merge(base_config(tmp_path, tuple(free_ports(3))), overrides or {}))
    return path


def serve_expecting_failure(config: Path | str, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(
            [BIN, "serve", "--config", str(config)],
            env=clean_env({"MAIRUST_ADMIN_EMAIL": ADMIN_EMAIL, "MAIRUST_ADMIN_PASSWORD": ADMIN_PASSWORD, **(env or {})}),
            capture_output=True,
            text=True,
            timeout=START_FAIL_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mairust kept running with a bad configuration: {e.stdout!r} {e.stderr!r}")
    assert p.returncode != 0, f"exit 0 with a bad configuration:\n{p.stdout}\n{p.stderr}"
    return p


# ---------------------------------------------------------------------- config errors


def test_unknown_key_in_file_is_named(tmp_path):
    cfg = config_file(tmp_path, {"server": {"smtp_prot": 2525}})
    p = serve_expecting_failure(cfg)
    assert "smtp_prot" in p.stderr, p.stderr


def test_unknown_section_in_file_is_named(tmp_path):
    cfg = config_file(tmp_path, {"sever": {"hostname": "x"}})
    p = serve_expecting_failure(cfg)
    assert "sever" in p.stderr, p.stderr


def test_invalid_yaml_names_the_file(tmp_path):
    cfg = config_file(tmp_path, raw="server: [unclosed\n  smtp_port: :\n")
    p = serve_expecting_failure(cfg)
    assert str(cfg) in p.stderr, p.stderr


def test_bad_value_from_env_names_the_key(tmp_path):
    cfg = config_file(tmp_path)
    p = serve_expecting_failure(cfg, {"MAIRUST_SERVER__SMTP_PORT": "abc"})
    assert "smtp_port" in p.stderr, p.stderr
    p = serve_expecting_failure(cfg, {"MAIRUST_SMTP__COMMAND_TIMEOUT": "soon"})
    assert "command_timeout" in p.stderr, p.stderr
    p = serve_expecting_failure(cfg, {"MAIRUST_SMTP__NO_SUCH_KEY": "1"})
    assert "no_such_key" in p.stderr.lower(), p.stderr


def test_bad_value_in_file_names_the_key(tmp_path):
    cfg = config_file(tmp_path, {"smtp": {"max_recipients": "many"}})
    p = serve_expecting_failure(cfg)
    assert "max_recipients" in p.stderr, p.stderr
    cfg = config_file(tmp_path, {"server": {"bind": "not-an-ip"}})
    p = serve_expecting_failure(cfg)
    assert "bind" in p.stderr, p.stderr


def test_missing_config_file_is_named(tmp_path):
    p = serve_expecting_failure("/nonexistent/mairust.yaml")
    assert "/nonexistent/mairust.yaml" in p.stderr, p.stderr


@pytest.mark.parametrize("which", ["smtp_port", "submission_port", "api_port"])
def test_port_in_use_is_a_clear_error(tmp_path, which):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        cfg = config_file(tmp_path, {"server": {which: port}})
        p = serve_expecting_failure(cfg)
        assert f"127.0.0.1:{port}" in p.stderr, p.stderr
        assert "in use" in p.stderr.lower(), p.stderr
    finally:
        blocker.close()


def test_partial_admin_env_is_refused(tmp_path):
    cfg = config_file(tmp_path)
    p = subprocess.run(
        [BIN, "serve", "--config", str(cfg)],
        env=clean_env({"MAIRUST_ADMIN_EMAIL": ADMIN_EMAIL}),
        capture_output=True,
        text=True,
        timeout=START_FAIL_TIMEOUT,
    )
    assert p.returncode != 0
    assert "MAIRUST_ADMIN_PASSWORD" in p.stderr, p.stderr
    p = serve_expecting_failure(cfg, {"MAIRUST_ADMIN_PASSWORD": "short"})
    assert "MAIRUST_ADMIN_PASSWORD" in p.stderr and "8" in p.stderr, p.stderr


def test_check_config_redacts_secrets(tmp_path):
    cfg = config_file(tmp_path, {
        "delivery": {"relay_host": "relay.example.test:587",
                     "relay_auth": {"username": "relay-user", "password": "relay-secret-1"}},
        "storage": {"options": {"secret_key": "s3-secret-2", "access_key": "s3-access"}},
    })
    p = run_cli(["check-config", "--config", str(cfg)], env={
        "DATABASE_URL": "postgres://mairust:db-secret-3@db.example.test:5432/mairust",
        "MAIRUST_ADMIN_EMAIL": ADMIN_EMAIL,
        "MAIRUST_ADMIN_PASSWORD": "admin-secret-4",
        "MAIRUST_MASTER_KEY": "master-secret-5",
    })
    assert p.returncode == 0, p.stderr
    for secret in ("relay-secret-1", "s3-secret-2", "db-secret-3", "admin-secret-4", "master-secret-5"):
        assert secret not in p.stdout + p.stderr, f"{secret} printed by check-config"
    # What is not secret is still shown, and a set secret shows as set.
    assert "relay-user" in p.stdout and "s3-access" in p.stdout and ADMIN_EMAIL in p.stdout
    assert "postgres://mairust:<redacted>@db.example.test:5432/mairust" in p.stdout, p.stdout
    assert "<redacted>" in p.stdout


def test_check_config(tmp_path):
    cfg = config_file(tmp_path)
    p = run_cli(["check-config", "--config", str(cfg)])
    assert p.returncode == 0, p.stderr
    # The effective configuration as YAML, every key (these two were left out once).
    import yaml

    printed = yaml.safe_load(p.stdout)
    assert printed["server"]["hostname"] == HOSTNAME
    assert printed["database"]["statement_timeout"] == "30s"
    assert printed["database"]["commit_timeout"] == "1m"
    # It is a configuration file: fed back, it gives the same configuration.
    again = tmp_path / "printed.yaml"
    again.write_text(p.stdout)
    p2 = run_cli(["check-config", "--config", str(again)])
    assert p2.returncode == 0, p2.stderr
    assert p2.stdout == p.stdout
    p = run_cli(["check-config", "--config", str(cfg)], env={"MAIRUST_SERVER__SMTP_PORT": "99999"})
    assert p.returncode != 0
    assert "smtp_port" in p.stderr, p.stderr


# ---------------------------------------------------------------------- environment overrides


def test_env_overrides_file(server):
    srv = server(start=False)
    file_port = srv.api_port
    assert srv.config["server"]["api_port"] == file_port
    [env_port] = free_ports(1)
    srv.extra_env["MAIRUST_SERVER__API_PORT"] = str(env_port)
    srv.api_port = env_port
    srv.start(first=False)
    assert requests.get(f"http://127.0.0.1:{env_port}/health/ready", timeout=5).status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{file_port}/health/ready", timeout=2)


def test_database_url_env(server, tmp_path):
    db = tmp_path / "elsewhere" / "meta.db"
    srv = server(env={"DATABASE_URL": f"sqlite://{db}"})
    srv.api().add_domain(DOMAIN)
    assert db.exists()
    assert not (srv.data_dir / "db" / "mairust.db").exists()


def test_storage_backend_env(server):
    # Every body to the backend (none kept in its row), so the file shows where it went.
    srv = server({"storage": {"backend": "s3", "inline_max_bytes": 0}}, env={"STORAGE_BACKEND": "fs"})
    setup_domain_and_user(srv)
    assert srv.send(f"bob@{DOMAIN}", simple_message("on fs"))[0] == 250
    files = fs_blobs(srv.data_dir / "mail")
    assert files, "no blob written under storage.options.path"
    assert any(b"on fs" in p.read_bytes() for p in files)


def test_storage_backend_env_bad_value(tmp_path):
    cfg = config_file(tmp_path)
    p = serve_expecting_failure(cfg, {"STORAGE_BACKEND": "tape"})
    assert "backend" in p.stderr, p.stderr


def test_log_level_env(server):
    srv = server(env={"LOG_LEVEL": "warn"})
    srv.api().add_domain(DOMAIN)
    srv.stop()
    levels = {line["level"] for line in srv.log_lines()}
    assert levels <= {"WARN", "ERROR"}, levels


# ---------------------------------------------------------------------- bootstrap admin


def test_bootstrap_admin_is_idempotent(server):
    srv = server()
    assert srv.api().get("/api/v1/users").status_code == 200
    srv.restart()
    srv.restart(hard=True)
    admins = [u for u in srv.api().get("/api/v1/users").json()["items"] if u["is_admin"]]
    assert [u["email"] for u in admins] == [ADMIN_EMAIL]

    # Changing the configured password updates the account.
    srv.extra_env["MAIRUST_ADMIN_PASSWORD"] = "rotated-password-1"
    srv.admin = (ADMIN_EMAIL, "rotated-password-1")
    srv.restart()
    assert srv.api().get("/api/v1/users").status_code == 200
    assert_error(srv.api(ADMIN_EMAIL, ADMIN_PASSWORD).get("/api/v1/users"), 401)
    admins = [u for u in srv.api().get("/api/v1/users").json()["items"] if u["is_admin"]]
    assert len(admins) == 1


def test_the_generated_password_is_printed_by_the_cli_and_forgotten_once_changed(server):
    """In a shell-less image `cat` and `rm` do not exist: `mairust user initial-password`
    prints the generated password, and changing that admin's password (API or CLI) deletes
    the file; another account's change leaves it."""
    srv = server(admin=False)
    line = srv.wait_for_log(lambda l: "first admin" in l["message"])
    email = line["fields"]["email"]
    cfg = str(srv.config_path)
    p = run_cli(["--config", cfg, "user", "initial-password"])
    assert p.returncode == 0, p.stderr
    password = p.stdout.strip()
    assert srv.api(email, password).get("/api/v1/users").status_code == 200
    setup = srv.api(email, password)
    assert setup.post("/api/v1/domains", json={"name": DOMAIN}).status_code == 201
    setup.add_user(f"bob@{DOMAIN}")
    # Another account's change does not touch the file.
    p = run_cli(["--config", cfg, "user", "passwd", f"bob@{DOMAIN}", "--password", "bob-password-2"])
    assert p.returncode == 0, p.stderr
    assert (srv.data_dir / "initial-admin-password").exists()
    # The admin's own change does.
    r = setup.put(f"/api/v1/users/{email}/password", json={"password": "chosen-password-1"})
    assert r.status_code == 204, r.text
    assert not (srv.data_dir / "initial-admin-password").exists()
    p = run_cli(["--config", cfg, "user", "initial-password"])
    assert p.returncode != 0 and "no generated admin password" in p.stderr, p.stderr
    assert "user passwd" in p.stderr, p.stderr


def test_admin_commands_never_create_a_database(tmp_path):
    """`mairust domain list` on a machine without the server's configuration created an empty
    database under /var/lib/mairust; admin commands open an existing database only and say
    where they looked."""
    missing = tmp_path / "nowhere" / "mairust.db"
    for args in (["domain", "list"], ["user", "list"], ["user", "add", f"x@{DOMAIN}"], ["db", "export", "--output", str(tmp_path / "d")]):
        p = run_cli(args, env={"DATABASE_URL": f"sqlite://{missing}"})
        assert p.returncode != 0, (args, p.stdout)
        assert f"no database at {missing}" in p.stderr, p.stderr
        assert "built-in defaults and the environment" in p.stderr, p.stderr
        assert "--config" in p.stderr
    assert not (tmp_path / "nowhere").exists()
    cfg = config_file(tmp_path, {"database": {"url": f"sqlite://{missing}"}})
    p = run_cli(["--config", str(cfg), "domain", "list"])
    assert p.returncode != 0 and f"--config {cfg}" in p.stderr, p.stderr


def test_admin_env_naming_a_regular_user_is_refused(server):
    srv = server()
    setup_domain_and_user(srv)
    srv.stop()
    srv.extra_env["MAIRUST_ADMIN_EMAIL"] = f"bob@{DOMAIN}"
    p = subprocess.run(
        [BIN, "serve", "--config", str(srv.config_path)],
        env=srv.env(),
        capture_output=True,
        text=True,
        timeout=START_FAIL_TIMEOUT,
    )
    assert p.returncode != 0
    assert f"bob@{DOMAIN}" in p.stderr, p.stderr


def test_generated_admin_password_goes_to_a_private_file(server):
    srv = server(admin=False)
    line = srv.wait_for_log(lambda l: "first admin" in l["message"])
    email, path = line["fields"]["email"], Path(line["fields"]["password_file"])
    assert "password" not in line["fields"], line
    assert email == f"admin@{HOSTNAME}"
    assert path == srv.data_dir / "initial-admin-password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
    password = path.read_text().strip()
    assert len(password) >= 16
    # Nothing else was left behind by the atomic write.
    assert not [p for p in srv.data_dir.iterdir() if p.name.startswith(".initial-admin")]
    assert srv.api(email, password).get("/api/v1/users").status_code == 200
    srv.restart()
    assert srv.api(email, password).get("/api/v1/users").status_code == 200
    srv.stop()
    text = srv.stdout_path.read_text() + srv.stderr_path.read_text()
    assert password not in text, "the generated password must never reach the log stream"
    admins = [u for u in srv.start(first=False).api(email, password).get("/api/v1/users").json()["items"]
              if u["is_admin"]]
    assert len(admins) == 1


def test_cli_passwd_and_bootstrap_password_update_revoke_tokens(server):
    srv = server()
    setup_domain_and_user(srv)
    bob_token = srv.api(f"bob@{DOMAIN}", USER_PASSWORD).post("/api/v1/tokens").json()["token"]
    admin_token = srv.api().post("/api/v1/tokens").json()["token"]
    p = run_cli(["--config", str(srv.config_path), "user", "passwd", f"bob@{DOMAIN}",
                 "--password", "rotated-password-2"])
    assert p.returncode == 0, p.stderr
    assert_error(srv.api(token=bob_token).get("/api/v1/messages"), 401)
    assert srv.api(token=admin_token).get("/api/v1/users").status_code == 200
    # A new MAIRUST_ADMIN_PASSWORD at start revokes the admin's tokens too.
    srv.extra_env["MAIRUST_ADMIN_PASSWORD"] = "rotated-password-3"
    srv.admin = (ADMIN_EMAIL, "rotated-password-3")
    srv.restart()
    assert_error(srv.api(token=admin_token).get("/api/v1/users"), 401)
    assert srv.api().get("/api/v1/users").status_code == 200


# ---------------------------------------------------------------------- CLI


def test_cli_domain_and_user_then_delivery(server):
    # The first start creates the database; the CLI then works on it with the server stopped.
    srv = server()
    srv.stop()
    cfg = str(srv.config_path)
    p = run_cli(["domain", "add", DOMAIN, "--config", cfg])
    assert p.returncode == 0, p.stderr
    p = run_cli(["--config", cfg, "user", "add", f"bob@{DOMAIN}", "--password", USER_PASSWORD])
    assert p.returncode == 0, p.stderr
    assert USER_PASSWORD not in p.stdout
    p = run_cli(["--config", cfg, "domain", "list"])
    assert p.returncode == 0 and DOMAIN in p.stdout.split(), p.stdout

    srv.start(first=False)
    # And while the server runs, another user with a generated password.
    p = run_cli(["--config", cfg, "user", "add", f"carol@{DOMAIN}"])
    assert p.returncode == 0, p.stderr
    m = re.search(r"password (\S+)", p.stdout)
    assert m, p.stdout
    carol_password = m.group(1)

    assert srv.send([f"bob@{DOMAIN}", f"carol@{DOMAIN}"], simple_message("cli users"))[0] == 250
    assert [i["subject"] for i in srv.api(f"bob@{DOMAIN}", USER_PASSWORD).wait_messages(1)] == ["cli users"]
    assert [i["subject"] for i in srv.api(f"carol@{DOMAIN}", carol_password).wait_messages(1)] == ["cli users"]

    p = run_cli(["--config", cfg, "user", "list"])
    assert p.returncode == 0
    assert f"bob@{DOMAIN}" in p.stdout and f"carol@{DOMAIN}" in p.stdout


def test_cli_changes_apply_to_a_running_server(server):
    """An operator who rotates a leaked password or removes an account with the CLI while the
    server runs expects the old credentials to stop working at once, on the API as on SMTP."""
    srv = server()
    setup_domain_and_user(srv, users=("bob", "carol"))
    srv.api().add_user("ops@admin.test", "ops-password-1", is_admin=True)
    cfg = str(srv.config_path)
    # Use every account once, as a running client would.
    assert srv.api(f"bob@{DOMAIN}", USER_PASSWORD).get("/api/v1/messages").status_code == 200
    assert srv.api(f"carol@{DOMAIN}", USER_PASSWORD).get("/api/v1/messages").status_code == 200
    assert srv.api("ops@admin.test", "ops-password-1").get("/api/v1/users").status_code == 200

    for args in (
        ["user", "passwd", f"bob@{DOMAIN}", "--password", "rotated-password-2"],
        ["user", "remove", f"carol@{DOMAIN}"],
        ["user", "remove", "ops@admin.test"],
    ):
        p = run_cli(["--config", cfg, *args])
        assert p.returncode == 0, p.stderr

    assert srv.api(f"bob@{DOMAIN}", "rotated-password-2").get("/api/v1/messages").status_code == 200
    problems = []
    r = srv.api(f"bob@{DOMAIN}", USER_PASSWORD).get("/api/v1/messages")
    if r.status_code != 401:
        problems.append(f"old password after `user passwd`: {r.status_code}")
    r = srv.api(f"carol@{DOMAIN}", USER_PASSWORD).get("/api/v1/messages")
    if r.status_code != 401:
        problems.append(f"removed user: {r.status_code}")
    r = srv.api("ops@admin.test", "ops-password-1").post("/api/v1/domains", json={"name": "late.test"})
    if r.status_code != 401:
        problems.append(f"removed admin adding a domain: {r.status_code} {r.text}")
    # SMTP AUTH sees the change at once.
    with contextlib.closing(srv.smtp("submission")) as s:
        s.starttls(context=insecure_tls())
        s.ehlo()
        try:
            s.login(f"bob@{DOMAIN}", USER_PASSWORD)
            problems.append("old password accepted by SMTP AUTH")
        except smtplib.SMTPAuthenticationError:
            pass
    assert not problems, problems


def test_cli_errors_are_clear(server):
    srv = server()
    cfg = str(srv.config_path)
    assert run_cli(["--config", cfg, "domain", "add", DOMAIN]).returncode == 0
    p = run_cli(["--config", cfg, "domain", "add", DOMAIN])
    assert p.returncode != 0 and DOMAIN in p.stderr and "exists" in p.stderr, p.stderr
    p = run_cli(["--config", cfg, "domain", "add", "bad_domain!"])
    assert p.returncode != 0 and "bad_domain" in p.stderr, p.stderr
    p = run_cli(["--config", cfg, "user", "add", "not-an-email", "--password", USER_PASSWORD])
    assert p.returncode != 0 and "not-an-email" in p.stderr, p.stderr
    p = run_cli(["--config", cfg, "user", "add", "bob@unhosted.test", "--password", USER_PASSWORD])
    assert p.returncode != 0 and "unhosted.test" in p.stderr, p.stderr
    p = run_cli(["--config", cfg, "user", "add", f"bob@{DOMAIN}", "--password", "short"])
    assert p.returncode != 0 and "8" in p.stderr, p.stderr
    # The API's rules, from the one place both call.
    p = run_cli(["--config", cfg, "user", "add", f"bob@{DOMAIN}", "--password", USER_PASSWORD,
                 "--quota-bytes=-5"])
    assert p.returncode != 0 and "quota_bytes must not be negative" in p.stderr, p.stderr
    p = run_cli(["--config", cfg, "user", "add", f"bob@{DOMAIN}", "--password", "tab\tinside-it"])
    assert p.returncode != 0 and "control characters" in p.stderr, p.stderr
    assert run_cli(["--config", cfg, "user", "add", f"bob@{DOMAIN}", "--password", USER_PASSWORD]).returncode == 0
    p = run_cli(["--config", cfg, "user", "passwd", f"BOB@{DOMAIN}", "--password", "x" * 1025])
    assert p.returncode != 0 and "too long" in p.stderr, p.stderr
    p = run_cli(["--config", cfg, "user", "remove", f"nobody@{DOMAIN}"])
    assert p.returncode != 0 and "nobody" in p.stderr, p.stderr


def test_healthcheck(server):
    srv = server()
    p = run_cli(["healthcheck", "--config", str(srv.config_path)])
    assert p.returncode == 0, (p.stdout, p.stderr)
    p = run_cli(["healthcheck", "--addr", f"127.0.0.1:{srv.api_port}"])
    assert p.returncode == 0, (p.stdout, p.stderr)
    srv.stop()
    p = run_cli(["healthcheck", "--config", str(srv.config_path)], timeout=20)
    assert p.returncode != 0
    assert str(srv.api_port) in p.stderr, p.stderr


# ---------------------------------------------------------------------- logs


def test_logs_are_json_lines(server):
    srv = server()
    setup_domain_and_user(srv)
    assert srv.send(f"bob@{DOMAIN}", simple_message("logged"))[0] == 250
    srv.stop()
    lines = srv.log_lines()  # fails on any non-JSON line
    assert lines
    for line in lines:
        assert list(line) == ["timestamp", "level", "component", "message", "fields"], line
        datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert line["level"] in {"TRACE", "DEBUG", "INFO", "WARN", "ERROR"}, line
        assert isinstance(line["component"], str) and line["component"], line
        assert isinstance(line["message"], str), line
        assert isinstance(line["fields"], dict), line
    started = [l for l in lines if l["message"] == "MaiRust started"]
    assert len(started) == 1 and started[0]["component"] == "server", started
    accepted = [l for l in lines if l["message"] == "message accepted"]
    assert len(accepted) == 1, accepted
    assert accepted[0]["component"] == "smtp"
    assert accepted[0]["fields"]["recipients"] == 1
    assert {"id", "size", "from"} <= set(accepted[0]["fields"]), accepted[0]


def test_secrets_never_reach_the_logs(server):
    srv = server({"log": {"level": "debug"}})
    setup_domain_and_user(srv)
    with contextlib.closing(srv.smtp("submission")) as s:
        s.starttls(context=insecure_tls())
        s.ehlo()
        with contextlib.suppress(smtplib.SMTPAuthenticationError):
            s.login(f"bob@{DOMAIN}", "typo-secret-password")
        s.login(f"bob@{DOMAIN}", USER_PASSWORD)
    srv.api(f"bob@{DOMAIN}", USER_PASSWORD).get("/api/v1/messages")
    srv.api().put(f"/api/v1/users/bob@{DOMAIN}/password", json={"password": "rotated-secret-99"})
    srv.stop()
    text = srv.stdout_path.read_text() + srv.stderr_path.read_text()
    for secret in (ADMIN_PASSWORD, USER_PASSWORD, "typo-secret-password", "rotated-secret-99"):
        assert secret not in text, f"{secret!r} appears in the logs"
