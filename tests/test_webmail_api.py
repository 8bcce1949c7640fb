"""API endpoints the web UI needs: the sanitized HTML view of a message, the dashboard's
stats and the message trace with its delivery attempts."""

import contextlib
import json
import time

from email.message import EmailMessage
from email.utils import make_msgid

import requests

from conftest import DOMAIN, USER_PASSWORD, assert_error, run_cli, setup_domain_and_user
from test_delivery import REMOTE, receiver, relay_server, submit, wait_queue  # noqa: F401 (fixture)

# The smallest valid PNG (1x1, transparent): its bytes must come back from the attachment URL.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6300010000000500010d0a2db40000000049454e44ae426082"
)


def html_mail(to: str) -> EmailMessage:
    """multipart/alternative (text + multipart/related HTML with a cid: image)."""
    msg = EmailMessage()
    msg["From"] = "Mallory <mallory@remote.test>"
    msg["To"] = to
    msg["Subject"] = "Newsletter"
    msg["Message-ID"] = make_msgid(domain="remote.test")
    msg.set_content("Plain text version.\n")
    cid = "logo.1234@remote.test"
    msg.add_alternative(
        f"""<html><body>
<h1>Hello</h1>
<script>document.title = 'pwned'</script>
<img src="x.png" onerror="alert('onerror')">
<p onclick="steal()">Click <a href="javascript:alert('js')">here</a> or
<a href="https://example.org/page">there</a>.</p>
<img src="https://tracker.remote.test/pixel.gif?u=bob" alt="tracker">
<img src="cid:{cid}" alt="logo">
</body></html>""",
        subtype="html",
    )
    msg.get_payload()[1].add_related(PNG, "image", "png", cid=f"<{cid}>", filename="logo.png")
    return msg


def send_html_mail(srv, to: str) -> str:
    with srv.smtp() as s:
        s.send_message(html_mail(to), from_addr="mallory@remote.test", to_addrs=[to])
    items = srv.api(to, USER_PASSWORD).wait_messages(1)
    assert len(items) == 1, items
    return items[0]["id"]


def test_html_view_is_sanitized_and_blocks_remote_images(server):
    srv = server()
    bob, carol = setup_domain_and_user(srv, users=("bob", "carol"))
    mid = send_html_mail(srv, bob)
    api = srv.api(bob, USER_PASSWORD)

    r = api.get(f"/api/v1/messages/{mid}/html")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp = r.headers["content-security-policy"]
    assert csp.startswith("sandbox;"), csp
    assert "default-src 'none'" in csp and "img-src 'self' data:" in csp, csp
    assert "http" not in csp and "script" not in csp, csp
    assert r.headers["x-remote-images-blocked"] == "1"
    html = r.text
    lower = html.lower()
    assert "<h1>Hello</h1>" in html
    for bad in ("<script", "pwned", "onerror", "onclick", "javascript:", "tracker.remote.test"):
        assert bad not in lower, (bad, html)
    assert 'href="https://example.org/page"' in html
    assert 'rel="noopener noreferrer"' in html and 'target="_blank"' in html, html
    assert "cid:" not in html

    # The cid: image points at the attachment carrying that Content-ID, which serves the PNG.
    detail = api.get(f"/api/v1/messages/{mid}").json()
    names = [a["filename"] for a in detail["attachments"]]
    assert "logo.png" in names, detail["attachments"]
    src = f'/api/v1/messages/{mid}/attachments/{names.index("logo.png")}'
    assert f'src="{src}"' in html, html
    img = api.get(src)
    assert img.status_code == 200, img.text
    assert img.content == PNG
    assert img.headers["content-type"] == "image/png"

    # Allowing remote images keeps the tracker and widens img-src, nothing else.
    r = api.get(f"/api/v1/messages/{mid}/html", params={"remote_images": "allow"})
    assert r.status_code == 200, r.text
    assert r.headers["x-remote-images-blocked"] == "0"
    assert 'src="https://tracker.remote.test/pixel.gif?u=bob"' in r.text, r.text
    assert "https: http:" in r.headers["content-security-policy"]
    assert "<script" not in r.text.lower() and "javascript:" not in r.text.lower()

    assert_error(api.get(f"/api/v1/messages/{mid}/html", params={"remote_images": "yes"}), 400)

    # Another user cannot tell the message exists; nor read its attachment.
    other = srv.api(carol, USER_PASSWORD)
    assert_error(other.get(f"/api/v1/messages/{mid}/html"), 404, "not_found")
    assert_error(other.get(src), 404, "not_found")
    assert other.get(f"/api/v1/messages/{mid}/html").status_code == 404


def test_attachments_and_raw_are_served_as_untrusted_content(server):
    """Attachments carry the sender's content type (`text/html`, `image/svg+xml`, a script)
    and are served from the UI's origin: never sniffed, and sandboxed should a browser render
    one (no scripts, no access to the signed-in origin); `/raw` likewise."""
    srv = server()
    bob, = setup_domain_and_user(srv)
    msg = EmailMessage()
    msg["From"] = "mallory@remote.test"
    msg["To"] = bob
    msg["Subject"] = "files"
    msg.set_content("see attached\n")
    msg.add_attachment(b"<script>fetch('/api/v1/tokens')</script>", maintype="text", subtype="html",
                       filename="page.html")
    msg.add_attachment(b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', maintype="image",
                       subtype="svg+xml", filename="pic.svg")
    msg.add_attachment(b"alert(1)", maintype="application", subtype="javascript", filename="x.js")
    with srv.smtp() as s:
        s.send_message(msg, from_addr="mallory@remote.test", to_addrs=[bob])
    api = srv.api(bob, USER_PASSWORD)
    [item] = api.wait_messages(1)
    paths = [f"/api/v1/messages/{item['id']}/attachments/{n}" for n in range(3)]
    for path in paths + [f"/api/v1/messages/{item['id']}/raw"]:
        r = api.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers.get("x-content-type-options") == "nosniff", (path, r.headers)
        csp = r.headers.get("content-security-policy", "")
        assert csp.startswith("sandbox") and "default-src 'none'" in csp, (path, r.headers)
    assert api.get(paths[0]).headers["content-type"].startswith("text/html")


def test_html_view_of_a_text_only_message_is_404(server):
    srv = server()
    (bob,) = setup_domain_and_user(srv)
    with srv.smtp() as s:
        s.sendmail("alice@remote.test", [bob], (
            f"From: alice@remote.test\r\nTo: {bob}\r\nSubject: plain\r\n\r\nJust text.\r\n"
        ))
    api = srv.api(bob, USER_PASSWORD)
    (item,) = api.wait_messages(1)
    err = assert_error(api.get(f"/api/v1/messages/{item['id']}/html"), 404, "not_found")
    assert "HTML" in err["message"], err
    assert_error(api.get("/api/v1/messages/999999/html"), 404, "not_found")


def test_html_view_is_in_the_openapi_document(srv):
    doc = srv.api().get("/api/v1/openapi.json").json()
    op = doc["paths"]["/api/v1/messages/{id}/html"]["get"]
    assert "text/html; charset=utf-8" in op["responses"]["200"]["content"], op
    assert {p["name"] for p in op["parameters"]} == {"id", "remote_images"}, op


# ---------------------------------------------------------------------- dashboard stats


def test_stats_count_the_last_hour_and_the_deferred_mail(server, receiver):
    rcv = receiver()
    srv = relay_server(server, rcv)
    admin = srv.api()
    bob = srv.api(f"bob@{DOMAIN}", USER_PASSWORD)
    carol = srv.api(f"carol@{DOMAIN}", USER_PASSWORD)

    empty = admin.get("/api/v1/stats")
    assert empty.status_code == 200, empty.text
    assert empty.json() == {
        "last_hour": {"accepted": 0, "delivered": 0, "bounced": 0, "deferred": 0},
        "queue": {"queued": 0, "deferred": 0},
        "deferred_by_domain": [],
        # The test server's host name is fully qualified and its admin password its own.
        "setup_warnings": [],
    }

    submit(srv, [f"carol@{DOMAIN}"], "local")
    submit(srv, [f"alice@{REMOTE}"], "delivered")
    submit(srv, [f"always451@{REMOTE}"], "deferred")
    submit(srv, [f"always451-again@{REMOTE}"], "deferred too")
    submit(srv, [f"reject@{REMOTE}"], "bounced")
    carol.wait_messages(1)
    rcv.wait(1)
    wait_queue(srv, lambda items: sorted(i["status"] for i in items)
               == ["deferred", "deferred", "delivered", "failed"])
    # The bounce to bob is a message accepted too.
    assert bob.wait_messages(1)[0]["subject"] == "Undelivered Mail Returned to Sender"

    r = admin.get("/api/v1/stats")
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["last_hour"] == {"accepted": 6, "delivered": 1, "bounced": 1, "deferred": 2}, stats
    assert stats["queue"] == {"queued": 0, "deferred": 2}, stats
    assert stats["deferred_by_domain"] == [{"domain": REMOTE, "count": 2}], stats

    assert_error(bob.get("/api/v1/stats"), 403, "forbidden")
    assert_error(requests.get(srv.base_url + "/api/v1/stats", timeout=5), 401)


# ---------------------------------------------------------------------- message trace


def test_trace_shows_each_delivery_attempt(server, receiver, tmp_path):
    rcv = receiver()
    rcv.tempfail_left = 1
    srv = relay_server(server, rcv)
    admin = srv.api()
    bob = f"bob@{DOMAIN}"
    header_id = f"trace-{time.time_ns()}@example.test"
    with contextlib.closing(srv.submission(bob, USER_PASSWORD)) as s:
        s.sendmail(bob, [f"tempfail@{REMOTE}", f"carol@{DOMAIN}"], (
            f"From: {bob}\r\nTo: tempfail@{REMOTE}, carol@{DOMAIN}\r\nSubject: traced\r\n"
            f"Message-ID: <{header_id}>\r\n\r\nHello.\r\n"
        ).encode())
    rcv.wait(1)
    (row,) = wait_queue(srv, lambda items: items and items[0]["status"] == "delivered")

    r = admin.get("/api/v1/trace", params={"q": f"<{header_id}>"})
    assert r.status_code == 200, r.text
    (msg,) = r.json()["messages"]
    assert msg["message_id"] == header_id
    assert msg["envelope_from"] == bob and bob in msg["from"]
    assert msg["local_recipients"] == [f"carol@{DOMAIN}"]
    assert msg["size"] > 0 and msg["received_at"].endswith("Z")
    (remote,) = msg["remote"]
    assert remote["queue_id"] == row["id"]
    assert remote["recipient"] == f"tempfail@{REMOTE}"
    assert remote["status"] == "delivered" and remote["attempts"] == 2
    outcomes = [a["outcome"] for a in remote["history"]]
    assert outcomes == ["deferred", "delivered"], remote["history"]
    assert "451" in remote["history"][0]["detail"], remote["history"]
    assert all(a["node"] for a in remote["history"])
    assert remote["history"][0]["attempted_at"] <= remote["history"][1]["attempted_at"]

    # The same message by queue id, by internal id and by the bare header.
    for q in (str(row["id"]), msg["id"], header_id):
        again = admin.get("/api/v1/trace", params={"q": q})
        assert again.status_code == 200, (q, again.text)
        assert [m["id"] for m in again.json()["messages"]] == [msg["id"]], q

    assert_error(admin.get("/api/v1/trace", params={"q": "no-such@example.test"}), 404, "not_found")
    assert_error(admin.get("/api/v1/trace", params={"q": "987654321"}), 404, "not_found")
    assert_error(admin.get("/api/v1/trace"), 400)
    user = srv.api(bob, USER_PASSWORD)
    assert_error(user.get("/api/v1/trace", params={"q": header_id}), 403, "forbidden")

    # The history moves with `db export`.
    dump = tmp_path / "dump"
    p = run_cli(["--config", str(srv.config_path), "db", "export", "--output", str(dump)], timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads((dump / "manifest.json").read_text())["tables"]["delivery_attempts"] == 2
    rows = [json.loads(line) for line in (dump / "delivery_attempts.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in rows] == ["deferred", "delivered"], rows


def test_folders_list_the_standard_folders_with_counts_that_follow_the_mail(server):
    """Every user has INBOX, Sent, Drafts, Junk, Trash and Archive (with their RFC 6154 special
    use), and the counts follow what arrives, what is read, what is sent and what is deleted."""
    srv = server()
    bob, carol = setup_domain_and_user(srv, users=("bob", "carol"))
    api = srv.api(bob, USER_PASSWORD)

    def folders() -> dict:
        r = api.get("/api/v1/folders")
        assert r.status_code == 200, r.text
        return {f["name"]: f for f in r.json()["items"]}

    start = folders()
    assert list(start) == ["INBOX", "Sent", "Drafts", "Junk", "Trash", "Archive"]
    assert [f["special_use"] for f in start.values()] == [
        None, "\\Sent", "\\Drafts", "\\Junk", "\\Trash", "\\Archive"]
    assert all((f["messages"], f["unseen"], f["uidnext"]) == (0, 0, 1) for f in start.values())

    for i in range(3):
        assert srv.send(bob, f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())[0] == 250
    inbox = api.wait_messages(3)
    r = api.patch(f"/api/v1/messages/{inbox[0]['id']}", json={"seen": True})
    assert r.status_code == 200, r.text
    r = api.post("/api/v1/send", json={"from": bob, "to": [carol], "subject": "s", "text": "t"})
    assert r.status_code == 202, r.text
    assert api.delete(f"/api/v1/messages/{inbox[1]['id']}").status_code == 204

    now = folders()
    assert (now["INBOX"]["messages"], now["INBOX"]["unseen"], now["INBOX"]["uidnext"]) == (2, 1, 4)
    assert (now["Sent"]["messages"], now["Sent"]["unseen"]) == (1, 0)
    assert now["INBOX"]["size"] > 0
    assert now["INBOX"]["uidvalidity"] == start["INBOX"]["uidvalidity"]
    assert now["INBOX"]["highestmodseq"] > start["INBOX"]["highestmodseq"]
    assert [m["subject"] for m in api.messages(folder="Sent")["items"]] == ["s"]
    # Another user's folders are their own.
    carols = {f["name"]: f for f in srv.api(carol, USER_PASSWORD).get("/api/v1/folders").json()["items"]}
    assert carols["INBOX"]["messages"] == 1
    assert_error(srv.anon().get("/api/v1/folders"), 401)


def test_folders_are_created_renamed_and_deleted_and_messages_move_and_take_flags(server):
    """The REST side of the mailbox model: a user files mail into folders of their own, moves
    a message to Junk (it keeps its id), stars it, empties the Trash, renames and deletes
    folders; what cannot be done is a 4xx naming the problem."""
    srv = server()
    bob, carol = setup_domain_and_user(srv, users=("bob", "carol"))
    api = srv.api(bob, USER_PASSWORD)
    for i in range(3):
        assert srv.send(bob, f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())[0] == 250
    m0, m1, m2 = reversed(api.wait_messages(3))

    def folders() -> dict:
        return {f["name"]: f for f in api.get("/api/v1/folders").json()["items"]}

    r = api.post("/api/v1/folders", json={"name": "Projects/2026"})
    assert r.status_code == 201, r.text
    assert (r.json()["name"], r.json()["messages"], r.json()["uidnext"]) == ("Projects/2026", 0, 1)
    assert_error(api.post("/api/v1/folders", json={"name": "Projects/2026"}), 409)
    assert_error(api.post("/api/v1/folders", json={"name": "inbox"}), 409)
    assert "empty level" in assert_error(api.post("/api/v1/folders", json={"name": "a//b"}), 400)["message"]
    assert_error(api.post("/api/v1/folders", json={"name": "x*"}), 400)

    r = api.patch(f"/api/v1/messages/{m0['id']}", json={"folder": "Projects/2026"})
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["folder"]) == (m0["id"], "Projects/2026")
    r = api.patch(f"/api/v1/messages/{m1['id']}", json={"folder": "Junk", "flagged": True})
    assert (r.json()["folder"], r.json()["flagged"], r.json()["seen"]) == ("Junk", True, False)
    assert_error(api.patch(f"/api/v1/messages/{m2['id']}", json={"folder": "Nowhere"}), 404)
    assert_error(srv.api(carol, USER_PASSWORD).patch(
        f"/api/v1/messages/{m2['id']}", json={"folder": "Junk"}), 404)
    assert [m["id"] for m in api.messages(folder="Junk")["items"]] == [m1["id"]]
    assert [m["subject"] for m in api.messages()["items"]] == ["m2"]

    # Rename with what is inside, subscriptions, and the protected cases.
    r = api.patch("/api/v1/folders/Projects%2F2026", json={"name": "Archive/2026", "subscribed": False})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["messages"], r.json()["subscribed"]) == ("Archive/2026", 1, False)
    assert api.get(f"/api/v1/messages/{m0['id']}").status_code == 200
    assert_error(api.patch("/api/v1/folders/INBOX", json={"name": "Old"}), 409)
    assert_error(api.patch("/api/v1/folders/Nope", json={"subscribed": True}), 404)
    assert "inside it" in assert_error(api.delete("/api/v1/folders/Archive"), 409)["message"]
    assert_error(api.delete("/api/v1/folders/INBOX"), 409)

    # Trash is emptied; a deleted folder takes its mail with it; usage follows.
    assert api.patch(f"/api/v1/messages/{m2['id']}", json={"folder": "Trash"}).status_code == 200
    used = srv.api().get("/api/v1/users").json()
    used = next(u for u in (used["items"] if isinstance(used, dict) else used) if u["email"] == bob)
    assert api.delete("/api/v1/folders/Trash/messages").status_code == 204
    assert api.delete("/api/v1/folders/Archive%2F2026").status_code == 204
    now = folders()
    assert "Archive/2026" not in now and now["Trash"]["messages"] == 0
    assert_error(api.get(f"/api/v1/messages/{m0['id']}"), 404)
    assert_error(api.get(f"/api/v1/messages/{m2['id']}"), 404)
    assert [m["id"] for m in api.messages(folder="Junk")["items"]] == [m1["id"]]
    after = srv.api().get("/api/v1/users").json()
    after = next(u for u in (after["items"] if isinstance(after, dict) else after) if u["email"] == bob)
    assert after["used_bytes"] < used["used_bytes"]
