"""The web role: the embedded UI page, and `/api` proxied to the API at `web.api_url`.

A web-only process is started with no database and no blob store configured; it proxies to a
real api-role process (or, where the test must see exactly what arrives upstream or make the
upstream misbehave, to a tiny Python HTTP server).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import re
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    DOMAIN,
    HOSTNAME,
    USER_PASSWORD,
    Server,
    assert_error,
    free_ports,
    metric_value,
    run_cli,
    setup_domain_and_user,
    simple_message,
    write_config,
)

CSP = "default-src 'self'"


class WebNode(Server):
    """A `mairust serve` with `server.roles: [web]` and nothing but the API's URL: no
    database, no blob store, no admin. Its data dir sits under a regular file, so any attempt
    to create or write it would fail the start."""

    def __init__(self, root: Path, api_url: str, web: dict | None = None):
        self.api_url = api_url
        self.web_overrides = web or {}
        super().__init__(root, env={"API_URL": api_url}, admin=False)

    def _pick_ports(self) -> None:
        (self.api_port,) = free_ports(1)
        self.smtp_port = self.submission_port = None
        blocker = self.root / "not-a-dir"
        blocker.write_text("a web node must not write here\n")
        self.config = {
            "server": {
                "hostname": HOSTNAME,
                "bind": "127.0.0.1",
                "api_port": self.api_port,
                "roles": ["web"],
                "data_dir": str(blocker / "data"),
            },
            "log": {"format": "json", "level": "info"},
        }
        if self.web_overrides:
            self.config["web"] = self.web_overrides
        write_config(self.config_path, self.config)


@pytest.fixture
def web_node(tmp_path):
    """Factory: `web_node(api_url, web=None) -> WebNode`, started and ready."""
    started: list[WebNode] = []

    def make(api_url: str, web: dict | None = None, start: bool = True) -> WebNode:
        node = WebNode(tmp_path / f"web{len(started)}", api_url, web)
        started.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in started:
        with contextlib.suppress(Exception):
            node.stop(timeout=10)
        with contextlib.suppress(Exception):
            node.kill()


class Upstream:
    """A minimal HTTP server standing in for the API: records every request, answers 200
    with a JSON echo, or sleeps on `/api/v1/slow`."""

    def __init__(self):
        self.requests: list[dict] = []
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        body += self.rfile.read(size)
                        self.rfile.readline()
                else:
                    body = self.rfile.read(length) if length else b""
                upstream.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": [(k.lower(), v) for k, v in self.headers.items()],
                        "body": body,
                    }
                )
                if self.path.startswith("/api/v1/slow"):
                    time.sleep(3)
                out = json.dumps({"path": self.path, "method": self.command}).encode()
                self.send_response(200 if not self.path.startswith("/api/v1/teapot") else 418)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.send_header("X-Upstream", "yes")
                self.send_header("Keep-Alive", "timeout=5")
                self.send_header("Set-Cookie", "session=abc; HttpOnly")
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def last(self, path_prefix: str) -> dict:
        matching = [r for r in self.requests if r["path"].startswith(path_prefix)]
        assert matching, f"no request for {path_prefix} arrived: {self.requests}"
        return matching[-1]


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


def headers_named(request: dict, name: str) -> list[str]:
    return [v for k, v in request["headers"] if k == name]


def assert_wrote_nothing(node: WebNode) -> None:
    written = sorted(
        p.name for p in node.root.iterdir() if p.name not in {"config.yaml", "stdout.log", "stderr.log", "not-a-dir"}
    )
    assert written == [], f"the web node wrote {written}"
    assert (node.root / "not-a-dir").is_file()


# ---------------------------------------------------------------------------------- tests


def test_web_only_node_proxies_the_api_without_a_database(server, web_node):
    api = server()
    bob, carol = setup_domain_and_user(api, users=("bob", "carol"))
    web = web_node(api.base_url)

    r = requests.get(web.base_url + "/health/ready", timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"
    assert r.json()["checks"] == {"api_upstream": "ok"}
    assert requests.get(web.base_url + "/health/live", timeout=5).status_code == 200

    direct_admin, via_admin = api.api(), web.api(ADMIN_EMAIL, ADMIN_PASSWORD)
    # GET with Basic auth: same status and JSON.
    for path in ("/api/v1/domains", "/api/v1/users", "/api/v1/openapi.json"):
        d, v = direct_admin.get(path), via_admin.get(path)
        assert (v.status_code, v.json()) == (d.status_code, d.json()), path
        assert v.headers["content-type"] == d.headers["content-type"]

    # POST through the proxy creates; the API sees it.
    r = via_admin.post("/api/v1/domains", json={"name": "other.test"})
    assert r.status_code == 201, r.text
    assert "other.test" in json.dumps(direct_admin.get("/api/v1/domains").json())

    # A bearer token made through the proxy works through it and directly.
    r = web.api(bob, USER_PASSWORD).post("/api/v1/tokens", json={})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    with api.smtp() as s:
        s.sendmail("alice@remote.test", [bob], simple_message("first", to=bob))
        s.sendmail("alice@remote.test", [bob], simple_message("second", to=bob))
    direct_bob, via_bob = api.api(token=token), web.api(token=token)
    items = direct_bob.wait_messages(2)
    assert len(items) == 2
    # Query strings pass: limit=1 gives one message and a cursor, as directly.
    d, v = direct_bob.get("/api/v1/messages", params={"limit": 1}), via_bob.get("/api/v1/messages?limit=1")
    assert v.status_code == 200, v.text
    assert v.json() == d.json() and len(v.json()["items"]) == 1 and v.json()["next_cursor"]

    # The raw message comes back byte for byte, with the same headers that describe it.
    mid = items[0]["id"]
    d, v = direct_bob.get(f"/api/v1/messages/{mid}/raw"), via_bob.get(f"/api/v1/messages/{mid}/raw")
    assert v.status_code == d.status_code == 200
    assert v.content == d.content and b"Subject:" in v.content
    assert v.headers["content-type"] == d.headers["content-type"]
    if "content-length" in d.headers:
        assert v.headers.get("content-length") == d.headers["content-length"]

    # Wrong credentials: the API's 401 passes through with its challenge.
    r = web.api(bob, "wrong-password").get("/api/v1/messages")
    assert_error(r, 401, "unauthorized")
    assert "Basic" in r.headers.get("www-authenticate", "")
    # Another user's message is not found, through the proxy as directly.
    carol_token = api.api(carol, USER_PASSWORD).post("/api/v1/tokens", json={}).json()["token"]
    assert_error(web.api(token=carol_token).get(f"/api/v1/messages/{mid}"), 404, "not_found")

    # DELETE through the proxy: gone for the API too.
    r = via_bob.delete(f"/api/v1/messages/{mid}")
    assert r.status_code == direct_bob.delete(f"/api/v1/messages/{items[1]['id']}").status_code
    assert r.status_code in (200, 204), r.text
    assert_error(direct_bob.get(f"/api/v1/messages/{mid}"), 404)

    # A body over every limit of the API is refused by the proxy itself, with the API's shape.
    # (Declared, not sent: the answer must come before any of the body.)
    conn = http.client.HTTPConnection("127.0.0.1", web.api_port, timeout=10)
    conn.putrequest("POST", "/api/v1/send")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(40 * 1024 * 1024))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    assert json.loads(resp.read())["error"]["code"] == "payload_too_large"
    conn.close()
    # One over api.max_body_bytes but under the send limit reaches the API, whose 413 comes back.
    big = json.dumps({"name": "x" * (2 * 1024 * 1024)})
    r = via_admin.post("/api/v1/domains", data=big, headers={"Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")

    text = web.metrics()
    assert (metric_value(text, "mairust_web_proxy_requests_total", {"status": "200"}) or 0) >= 3, text
    assert (metric_value(text, "mairust_web_proxy_requests_total", {"status": "401"}) or 0) >= 1, text
    # The web node opened no storage: nothing in its directory, no data dir, no migrations.
    assert_wrote_nothing(web)
    log = web.output()
    assert "migrat" not in log.lower() and "bootstrap admin" not in log, log


def test_headers_query_and_body_reach_the_upstream_as_a_proxy_should(upstream, web_node):
    web = web_node(upstream.url)
    conn = http.client.HTTPConnection("127.0.0.1", web.api_port, timeout=10)
    body = b'{"hello": "world"}'
    conn.request(
        "POST",
        "/api/v1/echo?a=1&b=two%20words",
        body=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer some-token",
            "Cookie": "sid=123",
            "Connection": "keep-alive, X-Hop-Private",
            "X-Hop-Private": "secret",
            "Keep-Alive": "timeout=30",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-Custom": "kept",
        },
    )
    r = conn.getresponse()
    out = r.read()
    assert r.status == 200, out
    assert json.loads(out) == {"path": "/api/v1/echo?a=1&b=two%20words", "method": "POST"}
    # The upstream's end-to-end headers come back; its hop-by-hop ones do not.
    assert r.getheader("X-Upstream") == "yes"
    assert r.getheader("Set-Cookie") == "session=abc; HttpOnly"
    assert r.getheader("Keep-Alive") is None
    conn.close()

    got = upstream.last("/api/v1/echo")
    assert got["method"] == "POST" and got["body"] == body
    assert got["path"] == "/api/v1/echo?a=1&b=two%20words"
    names = {k for k, _ in got["headers"]}
    for gone in ("x-hop-private", "keep-alive", "te", "proxy-authorization"):
        assert gone not in names, f"{gone} was forwarded: {got['headers']}"
    assert headers_named(got, "connection") in ([], ["keep-alive"], ["close"])
    assert headers_named(got, "authorization") == ["Bearer some-token"]
    assert headers_named(got, "cookie") == ["sid=123"]
    assert headers_named(got, "x-custom") == ["kept"]
    assert headers_named(got, "content-type") == ["application/json"]
    # A declared length stays declared (the API sees no chunked upload).
    assert headers_named(got, "content-length") == [str(len(body))]
    assert headers_named(got, "transfer-encoding") == []
    assert headers_named(got, "x-forwarded-for") == ["127.0.0.1"]
    assert headers_named(got, "x-forwarded-proto") == ["http"]
    assert headers_named(got, "x-forwarded-host") == [f"127.0.0.1:{web.api_port}"]
    # Host is the upstream's own.
    assert headers_named(got, "host") == [upstream.url.removeprefix("http://")]

    # An X-Forwarded-For from a proxy in front is extended, not replaced.
    r = requests.put(
        web.base_url + "/api/v1/echo2", data=b"abc", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5
    )
    assert r.status_code == 200
    got = upstream.last("/api/v1/echo2")
    assert got["method"] == "PUT" and got["body"] == b"abc"
    assert headers_named(got, "x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]

    # A chunked body (no Content-Length) is cut off at the API's limit while it streams.
    def chunks():
        for _ in range(40):
            yield b"y" * 65536

    r = requests.post(web.base_url + "/api/v1/chunked", data=chunks(), timeout=10)
    assert_error(r, 413, "payload_too_large")
    # A chunked body under the limit arrives whole.
    r = requests.post(web.base_url + "/api/v1/chunked-small", data=iter([b"ab", b"cd"]), timeout=10)
    assert r.status_code == 200
    got = upstream.last("/api/v1/chunked-small")
    assert got["body"] == b"abcd" and headers_named(got, "transfer-encoding") == ["chunked"]

    # Any upstream status passes through untouched.
    r = requests.get(web.base_url + "/api/v1/teapot", timeout=5)
    assert r.status_code == 418 and r.json()["method"] == "GET"


def test_a_slow_upstream_gives_504(upstream, web_node):
    web = web_node(upstream.url, web={"proxy_timeout": "1s"})
    started = time.monotonic()
    r = requests.get(web.base_url + "/api/v1/slow", timeout=10)
    err = assert_error(r, 504, "gateway_timeout")
    assert time.monotonic() - started < 2.8
    assert "web.api_url" in err["message"] and upstream.url in err["message"]
    assert "web.proxy_timeout" in err["message"]


def test_upstream_down_gives_502_and_not_ready(server, web_node):
    api = server()
    web = web_node(api.base_url)
    assert requests.get(web.base_url + "/health/ready", timeout=5).status_code == 200
    api.stop()

    for path in ("/health/ready", "/health"):
        r = requests.get(web.base_url + path, timeout=10)
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["status"] == "unavailable"
        assert r.json()["checks"] == {"api_upstream": "unavailable"}
    # Liveness is this process's own: still fine.
    assert requests.get(web.base_url + "/health/live", timeout=5).status_code == 200

    r = requests.get(web.base_url + "/api/v1/domains", auth=(ADMIN_EMAIL, ADMIN_PASSWORD), timeout=10)
    err = assert_error(r, 502, "bad_gateway")
    assert f"cannot reach the API at {api.base_url} (web.api_url)" in err["message"], err
    assert "connection refused" in err["message"].lower(), err
    text = web.metrics()
    assert (metric_value(text, "mairust_web_proxy_requests_total", {"status": "502"}) or 0) >= 1, text

    # The API back: ready again, requests go through.
    api.start(first=False)
    r = requests.get(web.base_url + "/health/ready", timeout=5)
    assert r.status_code == 200, r.text
    assert web.api(ADMIN_EMAIL, ADMIN_PASSWORD).get("/api/v1/domains").status_code == 200


def assert_ui_page(base_url: str) -> None:
    r = requests.get(base_url + "/", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "MaiRust" in r.text and "web UI" in r.text
    csp = r.headers.get("content-security-policy", "")
    assert csp.startswith(CSP), csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # No inline script or style that the CSP would block anyway.
    assert "<style" not in r.text and "style=" not in r.text
    # Scripts only as files of this origin: every <script> names its src.
    assert re.findall(r"<script\b[^>]*>", r.text) == ['<script type="module" src="/assets/app.js">'], r.text
    total = len(r.content)
    # app.js and the modules it imports.
    for name in ("app.js", "core.js", "mail.js", "admin.js"):
        js = requests.get(f"{base_url}/assets/{name}", timeout=5)
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript"), name
        assert js.headers.get("content-security-policy", "").startswith(CSP)
        total += len(js.content)
    css = requests.get(base_url + "/assets/style.css", timeout=5)
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert css.headers.get("content-security-policy", "").startswith(CSP)
    # The whole first page (the page, its style and its scripts) stays small.
    assert total + len(css.content) < 200_000
    assert_error(requests.get(base_url + "/assets/nope.js", timeout=5), 404, "not_found")


def test_the_web_node_serves_the_page_with_a_strict_csp(upstream, web_node):
    web = web_node(upstream.url)
    assert_ui_page(web.base_url)
    # The page is the web node's own: nothing of it went upstream.
    assert not [r for r in upstream.requests if not r["path"].startswith("/health")]


def test_all_in_one_serves_the_page_and_its_own_api(server):
    srv = server()  # default roles: smtp, queue, api, web
    assert srv.config["server"].get("roles") is None
    assert_ui_page(srv.base_url)
    r = srv.api().get("/api/v1/domains")
    assert r.status_code == 200, r.text
    r = requests.get(srv.base_url + "/health/ready", timeout=5)
    assert r.status_code == 200 and "database" in r.json()["checks"]


def test_an_api_only_node_does_not_serve_the_page(server):
    srv = server(overrides={"server": {"roles": ["api"]}})
    assert_error(requests.get(srv.base_url + "/", timeout=5), 404)


def test_web_without_api_url_is_a_startup_error(tmp_path):
    (port,) = free_ports(1)
    config = tmp_path / "config.yaml"
    write_config(
        config,
        {"server": {"bind": "127.0.0.1", "api_port": port, "roles": ["web"], "data_dir": str(tmp_path / "d")}},
    )
    r = run_cli(["serve", "--config", str(config)], timeout=20)
    assert r.returncode != 0
    text = r.stdout + r.stderr
    assert "web.api_url" in text and "API_URL" in text, text
    r = run_cli(["serve", "--config", str(config)], env={"API_URL": "ftp://api:8080"}, timeout=20)
    assert r.returncode != 0 and "web.api_url" in r.stdout + r.stderr


def test_proxied_requests_need_no_admin_or_storage_env(upstream, web_node):
    """The env of a web-only process has only API_URL: DATABASE_URL and friends are absent."""
    web = web_node(upstream.url)
    env = web.env()
    assert "API_URL" in env and "DATABASE_URL" not in env and "MAIRUST_ADMIN_PASSWORD" not in env
    assert requests.get(web.base_url + "/api/v1/anything", timeout=5).status_code == 200
    assert_wrote_nothing(web)
    # SIGTERM stops it cleanly.
    assert web.stop() == 0, web.output()
    assert_wrote_nothing(web)


def test_a_taken_port_is_a_startup_error_naming_the_listener(upstream, web_node):
    first = web_node(upstream.url)
    second = web_node(upstream.url, start=False)
    second.api_port = first.api_port
    second.config["server"]["api_port"] = first.api_port
    write_config(second.config_path, second.config)
    second.launch()
    assert second.proc.wait(timeout=15) != 0
    text = second.output()
    assert f"cannot listen on 127.0.0.1:{first.api_port} for the web UI" in text, text


def test_web_next_to_other_roles_proxies_api_and_serves_the_page(server):
    """A process with smtp, queue and web but no api: its own health, the page, /api proxied."""
    api = server()
    node = server(overrides={"server": {"roles": ["smtp", "queue", "web"]}}, env={"API_URL": api.base_url})
    assert_ui_page(node.base_url)
    r = requests.get(node.base_url + "/api/v1/domains", auth=(ADMIN_EMAIL, ADMIN_PASSWORD), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == api.api().get("/api/v1/domains").json()
    assert "database" in requests.get(node.base_url + "/health/ready", timeout=5).json()["checks"]
    assert (node.metric_value("mairust_web_proxy_requests_total", {"status": "200"}) or 0) >= 1


def test_a_browser_session_works_through_the_web_node(server, web_node):
    """The deployed path: the page on the web node signs in through its `/api` proxy; the
    session cookie and CSRF token then work there, and a forged change is refused."""
    api = server()
    setup_domain_and_user(api)
    web = web_node(api.base_url)
    origin = web.base_url
    s = requests.Session()
    r = s.post(web.base_url + "/api/v1/session", json={"email": f"bob@{DOMAIN}", "password": USER_PASSWORD},
               headers={"Origin": origin}, timeout=15)
    assert r.status_code == 201, r.text
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    csrf = r.json()["csrf_token"]
    assert s.get(web.base_url + "/api/v1/messages", timeout=15).status_code == 200
    # A token created with the cookie needs the CSRF token, also through the proxy.
    assert_error(s.post(web.base_url + "/api/v1/tokens", json={}, headers={"Origin": origin}, timeout=15), 403)
    made = s.post(web.base_url + "/api/v1/tokens", json={}, headers={"Origin": origin, "X-CSRF-Token": csrf},
                  timeout=15)
    assert made.status_code == 201, made.text
    out = s.delete(web.base_url + "/api/v1/session", headers={"Origin": origin, "X-CSRF-Token": csrf}, timeout=15)
    assert out.status_code == 204, out.text
    assert_error(s.get(web.base_url + "/api/v1/messages", timeout=15), 401)
