"""STARTTLS as third-party checkers see it: testssl.sh finds the server's cipher order
enforced and a generated certificate valid for a year; a generated certificate near its end
(or one of the century-long ones earlier versions made) is made again at start."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess

import pytest

from conftest import HOSTNAME

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")


def testssl(srv, tmp_path) -> dict[str, dict]:
    """testssl.sh's server-preference (-P) and server-defaults (-S) checks on port 25's
    STARTTLS, by finding id."""
    if TESTSSL is None:
        pytest.skip("testssl.sh is not installed (apt-get install testssl.sh)")
    out = tmp_path / "testssl.json"
    subprocess.run(
        [TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--jsonfile", str(out),
         "--starttls", "smtp", "-P", "-S", f"{srv.host}:{srv.smtp_port}"],
        capture_output=True, timeout=300, check=False,
    )
    return {f["id"]: f for f in json.loads(out.read_text())}


def not_after(pem_path) -> datetime.datetime:
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(pem_path)],
                         capture_output=True, text=True, check=True).stdout
    return datetime.datetime.strptime(out.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z")


def test_testssl_finds_server_cipher_order_and_a_certificate_of_a_year(server, tmp_path):
    srv = server()
    found = testssl(srv, tmp_path)
    assert found["cipher_order"]["severity"] == "OK", found["cipher_order"]
    assert found["cipher_order"]["finding"] == "server", found["cipher_order"]
    assert found["cert_commonName"]["finding"] == HOSTNAME
    # rcgen's default was 1975 to 4096: testssl flags a validity period that long.
    assert found["cert_validityPeriod"]["finding"] == "No finding", found["cert_validityPeriod"]
    assert found["cert_expirationStatus"]["severity"] == "OK", found["cert_expirationStatus"]
    until = datetime.datetime.strptime(found["cert_notAfter"]["finding"], "%Y-%m-%d %H:%M")
    left = until - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert datetime.timedelta(days=360) < left <= datetime.timedelta(days=366), until


@pytest.mark.parametrize("days", [10, 40000], ids=["expiring", "century-long"])
def test_a_generated_certificate_near_its_end_is_made_again_at_start(server, days):
    srv = server()
    cert, key = srv.data_dir / "tls" / "cert.pem", srv.data_dir / "tls" / "key.pem"
    srv.stop()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN={HOSTNAME}",
         "-addext", f"subjectAltName=DNS:{HOSTNAME}"],
        capture_output=True, check=True,
    )
    srv.start(first=False)
    left = not_after(cert) - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert datetime.timedelta(days=360) < left <= datetime.timedelta(days=366), left
    assert any("making a new one" in line["message"] for line in srv.log_lines())
    # A certificate with most of its year left is kept.
    before = cert.read_bytes()
    srv.restart()
    assert cert.read_bytes() == before
