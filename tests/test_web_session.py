"""Browser sessions of the web UI over plain HTTP: sign-in cookie, CSRF token on every change,
sign-out, expiry, revocation, and the same data rules as the rest of the API."""

import time

import requests

from conftest import DOMAIN, USER_PASSWORD, assert_error, setup_domain_and_user, simple_message

BOB = f"bob@{DOMAIN}"
COOKIE = "mairust_session"


def sign_in(srv, email=BOB, password=USER_PASSWORD, headers=None) -> tuple[requests.Session, dict]:
    """A browser-like session: signs in and keeps the cookie, as a browser would."""
    s = requests.Session()
    r = s.post(srv.base_url + "/api/v1/session", json={"email": email, "password": password},
               headers=headers or {}, timeout=15)
    assert r.status_code == 201, r.text
    return s, r.json()


def test_sign_in_sets_a_strict_http_only_cookie_and_answers_who_is_signed_in(server):
    srv = server()
    setup_domain_and_user(srv)
    s, info = sign_in(srv)
    assert info["email"] == BOB and info["is_admin"] is False
    assert len(info["csrf_token"]) >= 24 and info["expires_at"].endswith("Z")
    cookie = s.cookies.get(COOKIE)
    assert cookie and cookie != info["csrf_token"]
    # The raw header: HttpOnly, SameSite=Strict, whole site; no Secure over plain HTTP.
    r = requests.post(srv.base_url + "/api/v1/session",
                      json={"email": BOB, "password": USER_PASSWORD}, timeout=15)
    header = r.headers["set-cookie"]
    assert header.startswith(f"{COOKIE}=")
    for part in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
        assert part in header, header
    assert "Secure" not in header, header

    me = s.get(srv.base_url + "/api/v1/session", timeout=15)
    assert me.status_code == 200 and me.json()["csrf_token"] == info["csrf_token"], me.text
    # The cookie authenticates the rest of the API for reading.
    assert s.get(srv.base_url + "/api/v1/messages", timeout=15).status_code == 200


def test_a_wrong_password_gets_401_and_no_cookie(server):
    srv = server()
    setup_domain_and_user(srv)
    r = requests.post(srv.base_url + "/api/v1/session",
                      json={"email": BOB, "password": "wrong-password"}, timeout=15)
    assert_error(r, 401)
    assert "set-cookie" not in r.headers
    # No Basic challenge for a browser: it would open its login dialog and then send the
    # cached password with every request, which no CSRF token guards.
    assert "Basic" not in r.headers.get("www-authenticate", ""), r.headers
    assert_error(requests.post(srv.base_url + "/api/v1/session", json={"email": BOB}, timeout=15), 400)
    # Without a cookie (or with a made-up one), nothing is readable.
    assert_error(requests.get(srv.base_url + "/api/v1/session", timeout=15), 401)
    r = requests.get(srv.base_url + "/api/v1/messages", cookies={COOKIE: "made-up"}, timeout=15)
    assert_error(r, 401)
    assert "Basic" not in r.headers.get("www-authenticate", ""), r.headers


def test_changes_with_the_cookie_need_the_csrf_token(server):
    srv = server()
    setup_domain_and_user(srv)
    assert srv.send(BOB, simple_message("csrf target"))[0] == 250
    s, info = sign_in(srv)
    item = srv.api(BOB, USER_PASSWORD).get("/api/v1/messages").json()["items"][0]
    url = f"{srv.base_url}/api/v1/messages/{item['id']}"
    # A forged request (the browser sends the cookie, but the attacker cannot read the token).
    assert_error(s.patch(url, json={"seen": True}, timeout=15), 403)
    assert_error(s.patch(url, json={"seen": True}, headers={"X-CSRF-Token": "guess"}, timeout=15), 403)
    assert_error(s.delete(url, timeout=15), 403)
    assert_error(s.post(srv.base_url + "/api/v1/tokens", json={}, timeout=15), 403)
    assert srv.api(BOB, USER_PASSWORD).get(f"/api/v1/messages/{item['id']}").status_code == 200
    # From another site: refused even with the token.
    r = s.patch(url, json={"seen": True},
                headers={"X-CSRF-Token": info["csrf_token"], "Origin": "https://evil.test"}, timeout=15)
    assert_error(r, 403)
    # With the token, from the page's own origin, it works.
    ok = s.patch(url, json={"seen": True},
                 headers={"X-CSRF-Token": info["csrf_token"], "Origin": srv.base_url}, timeout=15)
    assert ok.status_code == 200, ok.text
    assert s.delete(url, headers={"X-CSRF-Token": info["csrf_token"]}, timeout=15).status_code == 204
    assert_error(srv.api(BOB, USER_PASSWORD).get(f"/api/v1/messages/{item['id']}"), 404)


def test_sign_in_from_another_site_is_refused(server):
    srv = server()
    setup_domain_and_user(srv)
    r = requests.post(srv.base_url + "/api/v1/session", json={"email": BOB, "password": USER_PASSWORD},
                      headers={"Origin": "https://evil.test"}, timeout=15)
    assert_error(r, 403)
    assert "set-cookie" not in r.headers


def test_sign_out_ends_the_session_on_the_server(server):
    srv = server()
    setup_domain_and_user(srv)
    s, info = sign_in(srv)
    kept = s.cookies.get(COOKIE)
    assert_error(s.delete(srv.base_url + "/api/v1/session", timeout=15), 403)  # no CSRF token
    r = s.delete(srv.base_url + "/api/v1/session", headers={"X-CSRF-Token": info["csrf_token"]}, timeout=15)
    assert r.status_code == 204, r.text
    assert "Max-Age=0" in r.headers["set-cookie"]
    # A copy of the cookie kept by a thief is worthless now.
    r = requests.get(srv.base_url + "/api/v1/messages", cookies={COOKIE: kept}, timeout=15)
    assert_error(r, 401)


def test_a_password_change_and_removing_the_user_end_their_sessions(server):
    srv = server()
    setup_domain_and_user(srv, users=("bob", "carol"))
    bob, _ = sign_in(srv)
    carol, _ = sign_in(srv, f"carol@{DOMAIN}")
    admin = srv.api()
    assert admin.put(f"/api/v1/users/{BOB}/password", json={"password": "a-new-password-1"}).status_code == 204
    assert_error(bob.get(srv.base_url + "/api/v1/messages", timeout=15), 401)
    assert carol.get(srv.base_url + "/api/v1/messages", timeout=15).status_code == 200
    assert admin.delete(f"/api/v1/users/carol@{DOMAIN}").status_code == 204
    assert_error(carol.get(srv.base_url + "/api/v1/messages", timeout=15), 401)


def test_an_idle_session_expires(server):
    srv = server({"api": {"session_idle_timeout": "2s", "session_lifetime": "1h"}})
    setup_domain_and_user(srv)
    s, _ = sign_in(srv)
    assert s.get(srv.base_url + "/api/v1/session", timeout=15).status_code == 200
    time.sleep(3)
    assert_error(s.get(srv.base_url + "/api/v1/session", timeout=15), 401)


def test_a_session_ends_at_its_lifetime_however_active(server):
    srv = server({"api": {"session_idle_timeout": "2s", "session_lifetime": "3s"}})
    setup_domain_and_user(srv)
    s, _ = sign_in(srv)
    deadline = time.monotonic() + 6
    codes = []
    while time.monotonic() < deadline:
        codes.append(s.get(srv.base_url + "/api/v1/session", timeout=15).status_code)
        time.sleep(0.5)
    assert codes[0] == 200 and codes[-1] == 401, codes


def test_a_session_sees_only_its_users_data_and_admin_pages_refuse_plain_users(server):
    srv = server()
    setup_domain_and_user(srv, users=("bob", "carol"))
    assert srv.send(f"carol@{DOMAIN}", simple_message("for carol", to=f"carol@{DOMAIN}"))[0] == 250
    carol_item = srv.api(f"carol@{DOMAIN}", USER_PASSWORD).get("/api/v1/messages").json()["items"][0]
    bob, _ = sign_in(srv)
    assert bob.get(srv.base_url + "/api/v1/messages", timeout=15).json()["items"] == []
    assert_error(bob.get(f"{srv.base_url}/api/v1/messages/{carol_item['id']}", timeout=15), 404)
    for path in ("/api/v1/users", "/api/v1/domains", "/api/v1/queue"):
        assert_error(bob.get(srv.base_url + path, timeout=15), 403)
    admin, info = sign_in(srv, *srv.admin)
    assert info["is_admin"] is True
    assert admin.get(srv.base_url + "/api/v1/users", timeout=15).status_code == 200


def test_secure_cookies_behind_https_or_when_configured(server):
    srv = server()
    setup_domain_and_user(srv)
    r = requests.post(srv.base_url + "/api/v1/session", json={"email": BOB, "password": USER_PASSWORD},
                      headers={"X-Forwarded-Proto": "https"}, timeout=15)
    assert r.status_code == 201 and "; Secure" in r.headers["set-cookie"], r.headers
    always = server({"api": {"secure_cookies": "always"}})
    setup_domain_and_user(always)
    r = requests.post(always.base_url + "/api/v1/session", json={"email": BOB, "password": USER_PASSWORD},
                      timeout=15)
    assert r.status_code == 201 and "; Secure" in r.headers["set-cookie"], r.headers


def test_sign_in_failures_are_throttled_with_smtp_auth(server):
    srv = server({"smtp": {"auth_failure_delay": "500ms", "auth_failures_free": 2}})
    setup_domain_and_user(srv)
    took = []
    for i in range(5):
        started = time.monotonic()
        r = requests.post(srv.base_url + "/api/v1/session",
                          json={"email": BOB, "password": f"guess-{i}"}, timeout=15)
        took.append(time.monotonic() - started)
        assert_error(r, 401)
    # As for API Basic (test_hardening.py): the free failures, then each waits longer.
    assert max(took[:3]) < 0.45 and took[3] >= 0.45 and took[4] >= 0.95, took
