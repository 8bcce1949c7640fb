"""REST API: health and metrics endpoints, the OpenAPI document, authentication (Basic and
bearer tokens, admin-only endpoints), domain and user management, and the JSON error shape
for bad input and unknown routes."""

import re
import shutil
import subprocess
import time

import pytest
import requests

from conftest import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    DOMAIN,
    USER_PASSWORD,
    assert_error,
    basic,
    setup_domain_and_user,
)

PROM_SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? '
    r"(-?[0-9.eE+-]+|NaN|\+Inf|-Inf)( -?[0-9]+)?$"
)


# ---------------------------------------------------------------------- health, metrics, docs


def test_health_endpoints_report_backends(srv):
    for path in ("/health", "/health/ready"):
        r = requests.get(srv.base_url + path, timeout=5)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ok"
        assert body["checks"] == {"database": "ok", "blob_store": "ok"}
        assert isinstance(body["version"], str) and body["version"]
    r = requests.get(srv.base_url + "/health/live", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


@pytest.mark.sqlite_fs
def test_health_shows_backend_errors_only_to_admins(srv):
    setup_domain_and_user(srv)
    staging = srv.data_dir / "mail" / "tmp"
    shutil.rmtree(staging)  # the blob store's health probe writes here
    try:
        for path in ("/health", "/health/ready"):
            for client in (srv.anon(), srv.api(f"bob@{DOMAIN}", USER_PASSWORD)):
                r = client.get(path)
                assert r.status_code == 503, r.text
                body = r.json()
                assert body["status"] == "unavailable"
                assert body["checks"] == {"database": "ok", "blob_store": "unavailable"}, body
                assert "details" not in body, body
                assert str(srv.data_dir) not in r.text and "os error" not in r.text, r.text
            r = srv.api().get(path)
            assert r.status_code == 503
            details = r.json()["details"]
            assert details["database"] == "ok"
            assert details["blob_store"] not in ("ok", "unavailable"), details
        # The cause is in the log for the operator.
        srv.wait_for_log(lambda l: l["message"] == "health check failed"
                         and l["fields"].get("backend") == "blob_store")
    finally:
        staging.mkdir()
    assert srv.anon().get("/health").json()["checks"]["blob_store"] == "ok"


def test_health_needs_no_credentials_but_api_does(srv):
    assert requests.get(srv.base_url + "/health/ready", timeout=5).status_code == 200
    assert_error(srv.anon().get("/api/v1/domains"), 401, "unauthorized")


def test_metrics_are_prometheus_text_with_mairust_metrics(srv):
    # Make some traffic so that request counters exist.
    srv.api().get("/api/v1/domains")
    srv.anon().get("/api/v1/domains")
    r = requests.get(srv.base_url + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    names = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            assert re.match(r"^# (TYPE|HELP) [a-zA-Z_:][a-zA-Z0-9_:]* ", line), line
            continue
        assert PROM_SAMPLE.match(line), f"not a Prometheus sample: {line!r}"
        names.add(line.split("{")[0].split(" ")[0])
    assert any(n.startswith("mairust_") for n in names), names
    assert re.search(r"^# TYPE mairust_\w+ (counter|gauge|histogram|summary)", text, re.M)
    # The API counts its requests by status.
    assert (srv.metric_value("mairust_api_requests_total", {"status": "401"}) or 0) >= 1
    assert (srv.metric_value("mairust_api_requests_total", {"status": "200"}) or 0) >= 1


def test_openapi_document_lists_the_endpoints(srv):
    r = requests.get(srv.base_url + "/api/v1/openapi.json", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert str(doc.get("openapi", "")).startswith("3."), doc.get("openapi")
    paths = doc["paths"]
    for p in (
        "/health",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/api/v1/tokens",
        "/api/v1/tokens/{id}",
        "/api/v1/domains",
        "/api/v1/domains/{name}",
        "/api/v1/users",
        "/api/v1/users/{email}",
        "/api/v1/users/{email}/password",
        "/api/v1/messages",
        "/api/v1/messages/{id}",
        "/api/v1/messages/{id}/raw",
        "/api/v1/messages/{id}/attachments/{n}",
    ):
        assert p in paths, f"{p} missing from {sorted(paths)}"
    assert {"get", "post"} <= set(paths["/api/v1/domains"])
    assert {"get", "post"} <= set(paths["/api/v1/tokens"])
    assert "delete" in paths["/api/v1/tokens/{id}"]
    assert {"get", "patch", "delete"} <= set(paths["/api/v1/messages/{id}"])
    schemes = doc["components"]["securitySchemes"]
    assert schemes["basic"]["scheme"].lower() == "basic"
    assert schemes["bearer"]["scheme"].lower() == "bearer"


# ---------------------------------------------------------------------- authentication


def test_missing_credentials_are_401_json(srv):
    r = srv.anon().get("/api/v1/messages")
    err = assert_error(r, 401, "unauthorized")
    assert "Basic" in r.headers.get("www-authenticate", ""), r.headers
    assert err["message"]


def test_wrong_password_and_unknown_user_are_401(srv):
    assert_error(srv.api(ADMIN_EMAIL, "not-the-password").get("/api/v1/domains"), 401)
    assert_error(srv.api("nobody@admin.test", ADMIN_PASSWORD).get("/api/v1/domains"), 401)
    # Malformed Authorization headers are 401 too, not 400 or 500.
    for header in ("Basic !!!notbase64", "Basic " + "dXNlcg==", "Digest abc", "Bearer"):
        r = srv.anon().get("/api/v1/messages", headers={"Authorization": header})
        assert_error(r, 401)


def test_admin_endpoints_are_forbidden_to_users(srv):
    setup_domain_and_user(srv)
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    assert bob.get("/api/v1/messages").status_code == 200
    assert_error(bob.get("/api/v1/domains"), 403, "forbidden")
    assert_error(bob.post("/api/v1/domains", json={"name": "evil.test"}), 403, "forbidden")
    assert_error(bob.get("/api/v1/users"), 403, "forbidden")
    assert_error(
        bob.post("/api/v1/users", json={"email": f"mallory@{DOMAIN}", "password": "x" * 12}),
        403,
    )
    assert_error(bob.delete(f"/api/v1/domains/{DOMAIN}"), 403)
    assert_error(bob.delete(f"/api/v1/users/{ADMIN_EMAIL}"), 403)
    assert_error(bob.post("/api/v1/debug/faults", json={"target": "smtp_session"}), 403)
    # Nothing changed.
    assert [d["name"] for d in srv.api().get("/api/v1/domains").json()["items"]] == [DOMAIN]


def test_bearer_token_works_and_garbage_token_is_401(srv):
    setup_domain_and_user(srv)
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    r = bob.post("/api/v1/tokens", json={"name": "cli", "ttl": "1h"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "token", "expires_at"}
    assert len(body["token"]) >= 20
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", body["expires_at"]), body

    with_token = srv.api(token=body["token"])
    assert with_token.get("/api/v1/messages").status_code == 200
    # The token carries the user's rights, not more.
    assert_error(with_token.get("/api/v1/domains"), 403)

    assert_error(srv.api(token="garbage-" + body["token"]).get("/api/v1/messages"), 401)
    assert_error(srv.api(token="x").get("/api/v1/messages"), 401)

    # An admin token (empty body is allowed) works on admin endpoints.
    r = srv.api().post("/api/v1/tokens")
    assert r.status_code == 201, r.text
    assert srv.api(token=r.json()["token"]).get("/api/v1/domains").status_code == 200


def test_tokens_are_listed_and_revoked(srv):
    setup_domain_and_user(srv, users=("bob", "carol"))
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    first = bob.post("/api/v1/tokens", json={"name": "laptop", "ttl": "1h"}).json()
    second = bob.post("/api/v1/tokens", json={"name": "phone"}).json()
    r = bob.get("/api/v1/tokens")
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [t["name"] for t in items] == ["phone", "laptop"], items
    assert [t["id"] for t in items] == [second["id"], first["id"]]
    for t in items:
        assert set(t) == {"id", "name", "created_at", "expires_at"}, t
        assert re.match(r"^\d{4}-\d\d-\d\dT", t["created_at"]), t
    assert items[1]["expires_at"] == first["expires_at"]
    assert first["token"] not in r.text and second["token"] not in r.text
    # A token lists its owner's tokens too, and nobody else's.
    assert srv.api(token=first["token"]).get("/api/v1/tokens").json()["items"] == items
    assert srv.api(f"carol@{DOMAIN}", USER_PASSWORD).get("/api/v1/tokens").json() == {"items": []}

    # Another user cannot revoke bob's token (404, like any unknown id).
    carol = srv.api(f"carol@{DOMAIN}", USER_PASSWORD)
    assert_error(carol.delete(f"/api/v1/tokens/{first['id']}"), 404, "not_found")
    assert_error(srv.api().delete(f"/api/v1/tokens/{first['id']}"), 404)
    assert srv.api(token=first["token"]).get("/api/v1/messages").status_code == 200

    r = srv.api(token=second["token"]).delete(f"/api/v1/tokens/{first['id']}")
    assert r.status_code == 204, r.text
    assert_error(srv.api(token=first["token"]).get("/api/v1/messages"), 401)
    assert srv.api(token=second["token"]).get("/api/v1/messages").status_code == 200
    assert_error(bob.delete(f"/api/v1/tokens/{first['id']}"), 404)
    assert_error(bob.delete("/api/v1/tokens/not-a-number"), 404)
    assert_error(srv.anon().delete(f"/api/v1/tokens/{second['id']}"), 401)
    assert_error(srv.anon().get("/api/v1/tokens"), 401)


def test_password_change_revokes_tokens(srv):
    setup_domain_and_user(srv, users=("bob", "carol"))
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    token = bob.post("/api/v1/tokens").json()["token"]
    carol_token = srv.api(f"carol@{DOMAIN}", USER_PASSWORD).post("/api/v1/tokens").json()["token"]
    # A user changing their own password (e.g. after a leak) ends every session.
    r = bob.put(f"/api/v1/users/bob@{DOMAIN}/password", json={"password": "new-password-456"})
    assert r.status_code == 204, r.text
    assert_error(srv.api(token=token).get("/api/v1/messages"), 401)
    bob = srv.api(f"bob@{DOMAIN}", "new-password-456")
    assert bob.get("/api/v1/tokens").json() == {"items": []}
    # So does an admin resetting it.
    token = bob.post("/api/v1/tokens").json()["token"]
    r = srv.api().put(f"/api/v1/users/bob@{DOMAIN}/password", json={"password": "third-password-789"})
    assert r.status_code == 204, r.text
    assert_error(srv.api(token=token).get("/api/v1/messages"), 401)
    # Other users' tokens are untouched.
    assert srv.api(token=carol_token).get("/api/v1/messages").status_code == 200
    # Deleting a user revokes their tokens.
    assert srv.api().delete(f"/api/v1/users/carol@{DOMAIN}").status_code == 204
    assert_error(srv.api(token=carol_token).get("/api/v1/messages"), 401)


def test_expired_token_is_401(srv):
    r = srv.api().post("/api/v1/tokens", json={"ttl": "1s"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    created = time.monotonic()
    assert srv.api(token=token).get("/api/v1/domains").status_code == 200
    # Until it ends (bounded), and not before its second is up.
    while (r := srv.api(token=token).get("/api/v1/domains")).status_code == 200:
        assert time.monotonic() - created < 5, "the token outlived its ttl"
        time.sleep(0.05)
    assert_error(r, 401)
    assert time.monotonic() - created > 0.9, "the token ended before its ttl"


def test_token_request_validation(srv):
    admin = srv.api()
    assert_error(admin.post("/api/v1/tokens", json={"ttl": "soon"}), 400, "bad_request")
    assert_error(admin.post("/api/v1/tokens", json={"ttl": "0s"}), 400)
    assert_error(admin.post("/api/v1/tokens", json={"bogus": 1}), 400)
    assert_error(srv.anon().post("/api/v1/tokens"), 401)


# ---------------------------------------------------------------------- domains


def test_domains_crud(srv):
    admin = srv.api()
    assert admin.get("/api/v1/domains").json() == {"items": []}

    created = admin.add_domain("Example.ORG")
    assert created["name"] == "example.org"
    # Times are RFC 3339 everywhere in the API, as ids are strings.
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", created["created_at"]), created
    admin.add_domain("b.example.test")
    names = [d["name"] for d in admin.get("/api/v1/domains").json()["items"]]
    assert sorted(names) == ["b.example.test", "example.org"]

    assert_error(admin.post("/api/v1/domains", json={"name": "example.org"}), 409, "conflict")
    assert_error(admin.post("/api/v1/domains", json={"name": "EXAMPLE.org."}), 409, "conflict")

    r = admin.delete("/api/v1/domains/b.example.test")
    assert r.status_code == 204, r.text
    names = [d["name"] for d in admin.get("/api/v1/domains").json()["items"]]
    assert names == ["example.org"]
    assert_error(admin.delete("/api/v1/domains/b.example.test"), 404, "not_found")


def test_invalid_domain_names_are_400(srv):
    admin = srv.api()
    for bad in ("", "bad_domain.test", "-x.test", "a..b", "spa ce.test", "x" * 64 + ".test", "ü.test"):
        assert_error(admin.post("/api/v1/domains", json={"name": bad}), 400, "bad_request")
    assert_error(admin.post("/api/v1/domains", json={"name": 42}), 400)
    assert admin.get("/api/v1/domains").json() == {"items": []}


def test_domain_with_users_cannot_be_deleted(srv):
    setup_domain_and_user(srv)
    admin = srv.api()
    assert_error(admin.delete(f"/api/v1/domains/{DOMAIN}"), 409, "conflict")
    assert [d["name"] for d in admin.get("/api/v1/domains").json()["items"]] == [DOMAIN]
    # Once the user is gone the domain can go.
    assert admin.delete(f"/api/v1/users/bob@{DOMAIN}").status_code == 204
    assert admin.delete(f"/api/v1/domains/{DOMAIN}").status_code == 204


def test_delete_missing_domain_is_404(srv):
    assert_error(srv.api().delete("/api/v1/domains/nothing.test"), 404, "not_found")


# ---------------------------------------------------------------------- users


def test_users_crud(srv):
    admin = srv.api()
    admin.add_domain(DOMAIN)
    user = admin.add_user(f"Bob@{DOMAIN}", USER_PASSWORD, quota_bytes=1_000_000)
    assert user["email"] == f"bob@{DOMAIN}"
    assert user["is_admin"] is False
    assert user["quota_bytes"] == 1_000_000
    assert user["used_bytes"] == 0
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", user["created_at"]), user
    assert not any("pass" in k or "hash" in k for k in user), user

    users = admin.get("/api/v1/users").json()["items"]
    assert sorted(u["email"] for u in users) == sorted([ADMIN_EMAIL, f"bob@{DOMAIN}"])
    assert all(not any("pass" in k or "hash" in k for k in u) for u in users)
    assert [u["is_admin"] for u in users if u["email"] == ADMIN_EMAIL] == [True]

    # The new user can sign in.
    assert srv.api(f"bob@{DOMAIN}", USER_PASSWORD).get("/api/v1/messages").status_code == 200

    assert admin.delete(f"/api/v1/users/bob@{DOMAIN}").status_code == 204
    assert_error(srv.api(f"bob@{DOMAIN}", USER_PASSWORD).get("/api/v1/messages"), 401)
    assert_error(admin.delete(f"/api/v1/users/bob@{DOMAIN}"), 404, "not_found")
    assert [u["email"] for u in admin.get("/api/v1/users").json()["items"]] == [ADMIN_EMAIL]


def test_user_validation_errors(srv):
    admin = srv.api()
    admin.add_domain(DOMAIN)
    for bad in ("no-at-sign", f"a b@{DOMAIN}", f"@{DOMAIN}", "bob@", f"a@b@{DOMAIN}", "bob@bad_domain"):
        assert_error(
            admin.post("/api/v1/users", json={"email": bad, "password": USER_PASSWORD}), 400, "bad_request"
        )
    assert_error(
        admin.post("/api/v1/users", json={"email": f"bob@{DOMAIN}", "password": "short"}), 400, "bad_request"
    )
    # A domain that is not hosted is a missing resource (administrator accounts may use any).
    assert_error(
        admin.post("/api/v1/users", json={"email": "bob@unhosted.test", "password": USER_PASSWORD}),
        404,
        "not_found",
    )
    assert_error(
        admin.post(
            "/api/v1/users",
            json={"email": f"bob@{DOMAIN}", "password": USER_PASSWORD, "quota_bytes": -1},
        ),
        400,
    )
    assert_error(admin.post("/api/v1/users", json={"email": f"bob@{DOMAIN}"}), 400)
    assert [u["email"] for u in admin.get("/api/v1/users").json()["items"]] == [ADMIN_EMAIL]

    admin.add_user(f"bob@{DOMAIN}")
    assert_error(
        admin.post("/api/v1/users", json={"email": f"BOB@{DOMAIN}", "password": USER_PASSWORD}),
        409,
        "conflict",
    )


def test_password_change(srv):
    setup_domain_and_user(srv, users=("bob", "carol"))
    admin = srv.api()
    bob_old = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    assert bob_old.get("/api/v1/messages").status_code == 200  # also primes any credential cache

    # Too short is refused and changes nothing.
    r = admin.put(f"/api/v1/users/bob@{DOMAIN}/password", json={"password": "short"})
    assert_error(r, 400)
    assert bob_old.get("/api/v1/messages").status_code == 200

    r = admin.put(f"/api/v1/users/bob@{DOMAIN}/password", json={"password": "new-password-456"})
    assert r.status_code == 204, r.text
    assert_error(srv.api(f"bob@{DOMAIN}", USER_PASSWORD).get("/api/v1/messages"), 401)
    bob = srv.api(f"bob@{DOMAIN}", "new-password-456")
    assert bob.get("/api/v1/messages").status_code == 200

    # A user may change their own password, but not someone else's.
    r = bob.put(f"/api/v1/users/bob@{DOMAIN}/password", json={"password": "third-password-789"})
    assert r.status_code == 204, r.text
    assert_error(srv.api(f"bob@{DOMAIN}", "new-password-456").get("/api/v1/messages"), 401)
    bob = srv.api(f"bob@{DOMAIN}", "third-password-789")
    assert_error(bob.put(f"/api/v1/users/carol@{DOMAIN}/password", json={"password": "hijacked-pass"}), 403)
    assert srv.api(f"carol@{DOMAIN}", USER_PASSWORD).get("/api/v1/messages").status_code == 200

    assert_error(admin.put("/api/v1/users/nobody@example.test/password", json={"password": "whatever-123"}), 404)


def test_admin_cannot_delete_own_account(srv):
    assert_error(srv.api().delete(f"/api/v1/users/{ADMIN_EMAIL}"), 409, "conflict")
    assert srv.api().get("/api/v1/users").status_code == 200


# ---------------------------------------------------------------------- bad input


def test_bad_json_is_400_json_error(srv):
    admin = srv.api()
    r = admin.post(
        "/api/v1/domains", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(r, 400, "bad_request")
    r = admin.post("/api/v1/domains", data=b"", headers={"Content-Type": "application/json"})
    assert_error(r, 400, "bad_request")
    r = admin.post("/api/v1/domains", json="example.test")
    assert_error(r, 400, "bad_request")
    r = admin.post("/api/v1/users", data=b'{"email": "a@b.test", "password": ', headers={"Content-Type": "application/json"})
    assert_error(r, 400)


def test_unknown_fields_are_400(srv):
    admin = srv.api()
    r = admin.post("/api/v1/domains", json={"name": "example.test", "color": "red"})
    err = assert_error(r, 400, "bad_request")
    assert "color" in err["message"], err
    assert admin.get("/api/v1/domains").json() == {"items": []}
    admin.add_domain(DOMAIN)
    r = admin.post(
        "/api/v1/users",
        json={"email": f"bob@{DOMAIN}", "password": USER_PASSWORD, "admin": True},
    )
    assert_error(r, 400, "bad_request")
    assert [u["email"] for u in admin.get("/api/v1/users").json()["items"]] == [ADMIN_EMAIL]


def test_bad_query_parameters_are_400(srv):
    admin = srv.api()
    assert_error(admin.get("/api/v1/messages", params={"cursor": "not-a-cursor"}), 400)
    assert_error(admin.get("/api/v1/messages", params={"limit": "lots"}), 400)
    assert_error(admin.get("/api/v1/messages", params={"sort": "up"}), 400)


def test_unknown_routes_are_404_json(srv):
    for path in ("/nope", "/api/v1/nope", "/api/v2/messages", "/api/v1/messages/1/nope"):
        assert_error(srv.api().get(path), 404, "not_found")
    assert_error(srv.anon().get("/nope"), 404, "not_found")


def test_unknown_message_ids_are_404(srv):
    admin = srv.api()
    for mid in ("1", "999999", "abc", "-1"):
        assert_error(admin.get(f"/api/v1/messages/{mid}"), 404, "not_found")
        assert_error(admin.get(f"/api/v1/messages/{mid}/raw"), 404, "not_found")
        assert_error(admin.delete(f"/api/v1/messages/{mid}"), 404, "not_found")
        assert_error(admin.patch(f"/api/v1/messages/{mid}", json={"seen": True}), 404, "not_found")


def test_fault_endpoint_is_off_by_default(srv):
    r = srv.api().post("/api/v1/debug/faults", json={"target": "storage_writer"})
    assert_error(r, 404)
    # And the storage writer is unaffected: the server still answers and stores.
    assert requests.get(srv.base_url + "/health/ready", timeout=5).status_code == 200


def test_basic_header_built_by_hand(srv):
    """Clients that build the header themselves (curl -u, scripts) get the same answer."""
    r = requests.get(
        srv.base_url + "/api/v1/users",
        headers={"Authorization": basic(ADMIN_EMAIL, ADMIN_PASSWORD)},
        timeout=5,
    )
    assert r.status_code == 200
    r = requests.get(
        srv.base_url + "/api/v1/users",
        headers={"Authorization": basic(ADMIN_EMAIL, ADMIN_PASSWORD + "x")},
        timeout=5,
    )
    assert_error(r, 401)


# ---------------------------------------------------------------------- size limits


def test_request_bodies_and_fields_have_size_limits(server):
    srv = server({"api": {"max_body_bytes": 4096}, "smtp": {"max_message_size": 300_000}})
    setup_domain_and_user(srv)
    admin = srv.api()
    # Over api.max_body_bytes: 413 with the JSON error shape, nothing stored.
    r = admin.post("/api/v1/tokens", json={"name": "n" * 10_000})
    # The unread rest of the body would be taken for the next request: the server says the
    # connection ends, so clients do not reuse it.
    assert r.headers.get("connection", "").lower() == "close", r.headers
    err = assert_error(r, 413, "payload_too_large")
    assert "api.max_body_bytes" in err["message"]
    assert_error(admin.post("/api/v1/domains", json={"name": "d" * 5000 + ".test"}), 413, "payload_too_large")
    assert_error(admin.post(f"/api/v1/domains/{DOMAIN}/dkim", data=b"{" + b" " * 5000 + b"}",
                            headers={"Content-Type": "application/json"}), 413)
    # Also without a Content-Length (chunked).
    r = admin.post("/api/v1/domains", data=iter([b'{"name": "', b"x" * 5000, b'"}']),
                   headers={"Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")
    # Under the body limit, each string field has its own.
    assert_error(admin.post("/api/v1/tokens", json={"name": "n" * 201}), 400, "bad_request")
    assert admin.post("/api/v1/tokens", json={"name": "n" * 200}).status_code == 201
    assert_error(admin.post("/api/v1/users", json={"email": "a" * 64 + "@" + ("b" * 60 + ".") * 4 + "test",
                                                    "password": USER_PASSWORD}), 400, "bad_request")
    assert_error(admin.post("/api/v1/users", json={"email": f"x@{DOMAIN}", "password": "p" * 1025}), 400)
    # The send API takes what smtp.max_message_size needs in base64, not more.
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    import base64

    att = [{"filename": "a.bin", "content_base64": base64.b64encode(b"\x01" * 200_000).decode()}]
    ok = {"from": f"bob@{DOMAIN}", "to": [f"bob@{DOMAIN}"], "subject": "big", "attachments": att}
    r = bob.post("/api/v1/send", json=ok)
    assert r.status_code == 202, r.text
    att = [{"filename": "a.bin", "content_base64": base64.b64encode(b"\x01" * 280_000).decode()}]
    assert_error(bob.post("/api/v1/send", json={**ok, "attachments": att}), 413, "payload_too_large")
    att = [{"filename": "a.bin", "content_base64": "AAAA" * 600_000}]
    assert_error(bob.post("/api/v1/send", json={**ok, "attachments": att}), 413, "payload_too_large")
    assert_error(bob.post("/api/v1/send", json={**ok, "subject": "s" * 2001, "attachments": []}), 400)


def test_nul_characters_are_bad_input_not_a_storage_failure(srv):
    # PostgreSQL cannot store a NUL: before, it surfaced as 503 "storage unavailable".
    admin = srv.api()
    assert_error(admin.get("/api/v1/messages", params={"folder": "IN\x00BOX"}), 400)
    assert_error(admin.post("/api/v1/tokens", json={"name": "a\x00b"}), 400)
    assert_error(admin.post("/api/v1/domains", json={"name": "nul\x00.test"}), 400)
    # A body of only white space is not an empty body.
    r = admin.post("/api/v1/tokens", data=b"\r", headers={"content-type": "application/json"})
    assert_error(r, 400)


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("path, body", [
    ("/api/v1/tokens", '{"name": "t"}'),          # an optional JSON body
    (f"/api/v1/domains/{DOMAIN}/dkim", "{}"),      # an optional JSON body
    ("/api/v1/users", '{"email": "x@example.test", "password": "long-password-1"}'),
    ("/api/v1/queue/1/retry", "x"),                # a route that reads no body
])
def test_a_body_that_is_not_declared_json_is_415(srv, path, body, content_type):
    """README promises 415 for a body that is not JSON: every body, on every route, whether the
    handler reads it or not (a form or text/plain post is what a browser sends cross-site
    without a preflight)."""
    setup_domain_and_user(srv)
    headers = {"Authorization": basic(ADMIN_EMAIL, ADMIN_PASSWORD)}
    if content_type:
        headers["Content-Type"] = content_type
    r = requests.post(srv.base_url + path, data=body.encode(), headers=headers, timeout=10)
    assert_error(r, 415, "unsupported_media_type")
    # Declared JSON, or no body at all, passes on to the handler.
    headers["Content-Type"] = "application/json"
    r = requests.post(srv.base_url + path, data=body.encode(), headers=headers, timeout=10)
    assert r.status_code != 415, r.text


def test_mail_sent_through_the_api_has_a_received_line_spamassassin_can_parse(server):
    """`Received: from api (authenticated user ...) ... with HTTP` was UNPARSEABLE_RELAY to
    SpamAssassin: the line has the RFC 5321 form, with the client's address."""
    spamassassin = shutil.which("spamassassin")
    if spamassassin is None:
        pytest.skip("spamassassin is not installed (apt-get install spamassassin)")
    srv = server()
    bob, carol = setup_domain_and_user(srv, users=("bob", "carol"))
    r = srv.api(bob, USER_PASSWORD).post("/api/v1/send", json={
        "from": bob, "to": [carol], "subject": "through the API", "text": "hello"})
    assert r.status_code == 202, r.text
    api = srv.api(carol, USER_PASSWORD)
    [item] = api.wait_messages(1)
    raw = api.get(f"/api/v1/messages/{item['id']}/raw").content
    received = raw.split(b"\r\nReceived: ", 1)[1].split(b";", 1)[0]
    assert received.startswith(b"from [127.0.0.1] ([127.0.0.1])\r\n\tby mx.example.test (MaiRust) with ESMTPA id "), received
    assert b"(via the REST API)" in received and f"for <{carol}>".encode() in received
    p = subprocess.run([spamassassin, "-L", "-t"], input=raw, capture_output=True, timeout=120)
    status = p.stdout.split(b"X-Spam-Status:", 1)[1].split(b"\n\n", 1)[0]
    assert b"UNPARSEABLE_RELAY" not in status, status


def promtool_problems(text: str) -> str:
    """What `promtool check metrics` (Debian's prometheus package) says of `text`."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    return (r.stdout + r.stderr).strip() if r.returncode != 0 else ""


def test_promtool_finds_nothing_in_a_live_metrics_page(server):
    """Every metric the node has recorded after real traffic (SMTP in, a delivery attempt, a
    bounce, API requests of every kind) passes promtool's lint: HELP text, names, units."""
    srv = server({"delivery": {"relay_host": "127.0.0.1:9", "retry_intervals": ["1s"], "max_queue_lifetime": "1s",
                               "connect_timeout": "1s"}, "queue": {"poll_interval": "1s"}})
    setup_domain_and_user(srv)
    code, msg = srv.send(f"bob@{DOMAIN}", b"From: a@remote.test\r\nSubject: m\r\n\r\nhi\r\n")
    assert code == 250, msg
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    r = bob.post("/api/v1/send", json={"from": f"bob@{DOMAIN}", "to": ["x@unreachable.test"],
                                       "subject": "s", "text": "t"})
    assert r.status_code == 202, r.text
    srv.anon().get("/api/v1/domains")
    srv.api().delete("/api/v1/domains/nothing.test")
    # The remote recipient fails (nothing listens on port 9) and expires: delivery and bounce
    # metrics appear.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not srv.metric_value("mairust_bounces_total"):
        time.sleep(0.2)
    assert srv.metric_value("mairust_bounces_total"), "no bounce was recorded"
    text = requests.get(srv.base_url + "/metrics", timeout=5).text
    assert promtool_problems(text) == "", text


def test_invented_request_methods_add_no_series(srv):
    """`M123X /health` from anyone (and an 8,000-character method) counts as `other`: a
    label takes known values only, so /metrics cannot be grown from outside."""
    import socket

    for method in ("M123X", "X" * 8000, "get"):
        with socket.create_connection(("127.0.0.1", srv.api_port), timeout=5) as sock:
            sock.sendall(f"{method} /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            while sock.recv(65536):
                pass
    text = requests.get(srv.base_url + "/metrics", timeout=5).text
    methods = set(re.findall(r'^mairust_api_requests_total\{[^}]*method="([^"]*)"', text, re.M))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    assert "other" in methods, text
    assert max(len(line) for line in text.splitlines()) < 300


def test_a_node_without_the_api_role_still_serves_health_and_metrics(server):
    """Probes and scrapes reach SMTP- and queue-only nodes; the REST API stays off there."""
    srv = server(overrides={"server": {"roles": ["smtp", "queue"]}})
    r = requests.get(srv.base_url + "/health/ready", timeout=5)
    assert r.status_code == 200, r.text
    assert requests.get(srv.base_url + "/health/live", timeout=5).status_code == 200
    metrics = requests.get(srv.base_url + "/metrics", timeout=5)
    assert metrics.status_code == 200 and "mairust_" in metrics.text
    r = srv.api(ADMIN_EMAIL, ADMIN_PASSWORD).get("/api/v1/domains")
    assert_error(r, 404)
    with srv.smtp() as s:
        assert s.noop()[0] == 250
