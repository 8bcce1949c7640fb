"""`smtp.trusted_networks` (Postfix's mynetworks): clients from those networks relay without
AUTH on port 25 and 587; everyone else still needs AUTH to relay, over IPv4 and IPv6."""

import smtplib

import pytest

from conftest import DOMAIN, setup_domain_and_user, simple_message

REMOTE = "someone@elsewhere.test"


def connect(host: str, port: int, source: str) -> smtplib.SMTP:
    s = smtplib.SMTP(host, port, local_hostname="app.test", timeout=15, source_address=(source, 0))
    assert s.ehlo()[0] == 250
    return s


def queued_for(srv, recipient: str) -> list[dict]:
    items = srv.api().get("/api/v1/queue").json()["items"]
    return [i for i in items if i["recipient"] == recipient]


@pytest.mark.parametrize("port_name", ["smtp", "submission"])
def test_a_trusted_address_relays_without_auth_and_others_may_not(server, port_name):
    srv = server({"smtp": {"trusted_networks": ["127.0.0.2/32", "10.0.0.0/8"]}})
    setup_domain_and_user(srv)
    port = srv.smtp_port if port_name == "smtp" else srv.submission_port
    rcpt = f"{port_name}-{REMOTE}"
    with connect("127.0.0.1", port, "127.0.0.2") as s:
        assert s.mail("app@anything.test")[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(simple_message("from the app", to=rcpt))
        assert code == 250, text
    # Queued for the remote domain (its delivery may already have been tried and failed:
    # the name does not exist).
    assert len(queued_for(srv, rcpt)) == 1
    # Local mail from a trusted client still goes to the mailbox.
    with connect("127.0.0.1", port, "127.0.0.2") as s:
        assert s.sendmail("app@anything.test", [f"bob@{DOMAIN}"], simple_message("local")) == {}
    # From another address: no relay on 25, AUTH first on 587.
    with connect("127.0.0.1", port, "127.0.0.3") as s:
        if port_name == "smtp":
            assert s.mail("app@anything.test")[0] == 250
            code, text = s.rcpt(f"other-{REMOTE}")
            assert code == 554 and b"5.7.1" in text, (code, text)
        else:
            code, text = s.mail("app@anything.test")
            assert code == 530 and b"5.7.0" in text, (code, text)
    assert queued_for(srv, f"other-{REMOTE}") == []


def test_ipv6_clients_are_matched_as_ipv6_and_mapped_ipv4_as_ipv4(server):
    """On a dual-stack listener an IPv4 client shows up as ::ffff:a.b.c.d; it is matched
    against IPv4 networks, and ::1 against IPv6 ones."""
    srv = server({"server": {"bind": "::"}, "smtp": {"trusted_networks": ["::1", "127.0.0.2"]}})
    setup_domain_and_user(srv)
    for host, source, allowed in (("::1", "::1", True), ("127.0.0.1", "127.0.0.2", True),
                                  ("127.0.0.1", "127.0.0.3", False)):
        rcpt = f"v-{source.replace(':', '_')}-{REMOTE}"
        with connect(host, srv.smtp_port, source) as s:
            assert s.mail("app@anything.test")[0] == 250
            code, _ = s.rcpt(rcpt)
            assert (code == 250) == allowed, (host, source, code)


@pytest.mark.parametrize("entry, says", [
    ("10.0.0.0/33", "is not a network"),
    ("0.0.0.0/0", "covers every address and would make an open relay"),
    ("::/0", "covers every address and would make an open relay"),
    ("127.0.0.1/8", "has host bits set: write `127.0.0.0/8` for the network or `127.0.0.1/32`"),
    ("2001:db8::1/32", "has host bits set: write `2001:db8::/32`"),
])
def test_a_bad_network_is_a_startup_error_naming_it(tmp_path, entry, says):
    from conftest import run_cli, write_config

    cfg = tmp_path / "c.yaml"
    write_config(cfg, {"smtp": {"trusted_networks": ["192.0.2.0/24", entry]}})
    r = run_cli(["check-config", "--config", str(cfg)])
    assert r.returncode != 0
    assert entry in r.stderr and "trusted_networks" in r.stderr and says in r.stderr, r.stderr
    # The environment's list form too.
    r = run_cli(["check-config"], env={"MAIRUST_SMTP__TRUSTED_NETWORKS": entry})
    assert r.returncode != 0 and says in r.stderr, r.stderr
