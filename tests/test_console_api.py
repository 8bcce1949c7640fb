"""API endpoints behind the admin console and the webmail's compose, Sent and password pages:
changing a user's quota and admin flag, the DNS records of a domain, the queue filtered by
recipient, the Sent folder of the send API, and changing one's own password."""

import base64

from conftest import DOMAIN, USER_PASSWORD, assert_error, setup_domain_and_user
from test_delivery import REMOTE, receiver, relay_server, submit, wait_queue  # noqa: F401 (fixture)
from test_web_session import BOB, sign_in


def test_an_admin_sets_a_quota_and_makes_an_admin(server):
    srv = server()
    setup_domain_and_user(srv, users=("bob", "carol"))
    admin = srv.api()
    r = admin.patch(f"/api/v1/users/{BOB}", json={"quota_bytes": 5_000_000})
    assert r.status_code == 200, r.text
    assert r.json()["quota_bytes"] == 5_000_000 and r.json()["is_admin"] is False
    # Absent fields stay; null is unlimited.
    r = admin.patch(f"/api/v1/users/{BOB}", json={"is_admin": True})
    assert r.json()["quota_bytes"] == 5_000_000 and r.json()["is_admin"] is True
    assert srv.api(BOB, USER_PASSWORD).get("/api/v1/users").status_code == 200
    r = admin.patch(f"/api/v1/users/{BOB}", json={"quota_bytes": None, "is_admin": False})
    assert r.json()["quota_bytes"] is None and r.json()["is_admin"] is False
    users = {u["email"]: u for u in admin.get("/api/v1/users").json()["items"]}
    assert users[BOB]["is_admin"] is False and users[BOB]["quota_bytes"] is None
    # A plain user has lost the admin pages at once.
    assert_error(srv.api(BOB, USER_PASSWORD).get("/api/v1/users"), 403, "forbidden")

    assert_error(admin.patch(f"/api/v1/users/{BOB}", json={"quota_bytes": -1}), 400)
    assert_error(admin.patch(f"/api/v1/users/{BOB}", json={"quota": 1}), 400)
    assert_error(admin.patch(f"/api/v1/users/nobody@{DOMAIN}", json={"quota_bytes": 1}), 404)
    # Nobody demotes themselves (the last admin would lock everyone out).
    assert_error(admin.patch(f"/api/v1/users/{srv.admin[0]}", json={"is_admin": False}), 409, "conflict")
    assert_error(srv.api(f"carol@{DOMAIN}", USER_PASSWORD)
                 .patch(f"/api/v1/users/carol@{DOMAIN}", json={"quota_bytes": None}), 403, "forbidden")


def test_a_domain_lists_the_dns_records_to_publish(server):
    srv = server({"server": {"hostname": "mx1.example.test"}})
    setup_domain_and_user(srv)
    admin = srv.api()
    key = admin.post(f"/api/v1/domains/{DOMAIN}/dkim", json={"selector": "s1"}).json()
    r = admin.get(f"/api/v1/domains/{DOMAIN}/dns")
    assert r.status_code == 200, r.text
    records = {(x["type"], x["name"]): x for x in r.json()["items"]}
    assert records[("MX", DOMAIN)]["value"] == "10 mx1.example.test."
    assert records[("TXT", DOMAIN)]["value"].startswith("v=spf1 ")
    dkim = records[("TXT", f"s1._domainkey.{DOMAIN}")]
    assert dkim["value"] == key["dns_value"] and "signing" in dkim["purpose"]
    # RSA by default: a value over 255 bytes, given as the strings a zone file needs.
    assert key["algorithm"] == "rsa" and len(dkim["value"]) > 255
    assert dkim["value_strings"] == key["dns_value_strings"]
    assert "".join(dkim["value_strings"]) == dkim["value"]
    assert [len(part) for part in dkim["value_strings"]] == [255, len(dkim["value"]) - 255]
    assert records[("MX", DOMAIN)]["value_strings"] == ["10 mx1.example.test."]
    assert records[("TXT", f"_dmarc.{DOMAIN}")]["value"].startswith("v=DMARC1; p=none")
    assert all(x["purpose"] for x in r.json()["items"])
    assert_error(admin.get("/api/v1/domains/not-hosted.test/dns"), 404)
    assert_error(srv.api(BOB, USER_PASSWORD).get(f"/api/v1/domains/{DOMAIN}/dns"), 403)


def test_the_queue_filters_by_part_of_the_recipient(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    for rcpt in (f"always451-Ann@{REMOTE}", f"always451-bob@{REMOTE}", f"always451_x@{REMOTE}"):
        submit(srv, [rcpt], "to be deferred")
    wait_queue(srv, lambda items: len(items) == 3 and all(i["status"] == "deferred" for i in items))
    admin = srv.api()

    def recipients(**params):
        r = admin.get("/api/v1/queue", params=params)
        assert r.status_code == 200, r.text
        return sorted(i["recipient"].lower() for i in r.json()["items"])

    assert recipients(recipient="ann@") == [f"always451-ann@{REMOTE}"]
    assert recipients(recipient="ALWAYS451-") == [f"always451-ann@{REMOTE}", f"always451-bob@{REMOTE}"]
    # LIKE's wildcards mean themselves.
    assert recipients(recipient="451_") == [f"always451_x@{REMOTE}"]
    assert recipients(recipient="%") == []
    assert recipients(recipient="bob", status="deferred", domain=REMOTE) == [f"always451-bob@{REMOTE}"]
    assert recipients(recipient="bob", status="delivered") == []
    assert_error(admin.get("/api/v1/queue", params={"recipient": "x" * 300}), 400)


def test_mail_sent_through_the_api_is_in_the_senders_sent_folder(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    bob = srv.api(BOB, USER_PASSWORD)
    r = bob.post("/api/v1/send", json={
        "from": BOB, "to": [f"alice@{REMOTE}"], "cc": [f"carol@{DOMAIN}"], "bcc": [f"dave@{REMOTE}"],
        "subject": "Minutes", "text": "Attached.",
        "attachments": [{"filename": "minutes.txt", "content_type": "text/plain",
                         "content_base64": base64.b64encode(b"item 1\n").decode()}],
    })
    assert r.status_code == 202, r.text
    rcv.wait(1)  # one transaction for both remote recipients
    (sent,) = bob.get("/api/v1/messages", params={"folder": "Sent"}).json()["items"]
    assert sent["subject"] == "Minutes" and sent["seen"] is True and sent["has_attachments"] is True
    assert bob.get("/api/v1/messages").json()["items"] == []
    full = bob.get(f"/api/v1/messages/{sent['id']}").json()
    assert full["to"] == [f"alice@{REMOTE}"] and full["cc"] == [f"carol@{DOMAIN}"]
    # It counts toward the sender's mailbox, and the trace names only real deliveries.
    me = {u["email"]: u for u in srv.api().get("/api/v1/users").json()["items"]}[BOB]
    assert me["used_bytes"] > 0  # bob has nothing else
    (msg,) = srv.api().get("/api/v1/trace", params={"q": r.json()["id"]}).json()["messages"]
    assert msg["local_recipients"] == [f"carol@{DOMAIN}"]
    # Deleting the Sent copy leaves the delivered mail alone.
    assert bob.delete(f"/api/v1/messages/{sent['id']}").status_code == 204
    assert srv.api(f"carol@{DOMAIN}", USER_PASSWORD).wait_messages(1)[0]["subject"] == "Minutes"


def test_changing_your_own_password_from_a_session_needs_the_current_one(server):
    srv = server()
    setup_domain_and_user(srv)
    s, info = sign_in(srv)
    url = f"{srv.base_url}/api/v1/users/{BOB}/password"
    headers = {"X-CSRF-Token": info["csrf_token"]}
    assert_error(s.put(url, json={"password": "a-new-password-1"}, headers=headers, timeout=15), 400)
    assert_error(s.put(url, json={"password": "a-new-password-1", "current_password": "wrong-password"},
                       headers=headers, timeout=15), 403, "forbidden")
    assert_error(s.put(url, json={"password": "short", "current_password": USER_PASSWORD},
                       headers=headers, timeout=15), 400)
    r = s.put(url, json={"password": "a-new-password-1", "current_password": USER_PASSWORD},
              headers=headers, timeout=15)
    assert r.status_code == 204, r.text
    sign_in(srv, BOB, "a-new-password-1")
    # HTTP Basic carries the password already.
    r = srv.api(BOB, "a-new-password-1").put(f"/api/v1/users/{BOB}/password", json={"password": USER_PASSWORD})
    assert r.status_code == 204, r.text
    # A bearer token does not.
    token = srv.api(BOB, USER_PASSWORD).post("/api/v1/tokens").json()["token"]
    assert_error(srv.api(token=token).put(f"/api/v1/users/{BOB}/password", json={"password": "x-new-password"}), 400)
