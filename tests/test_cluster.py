"""The cluster: three real `mairust` processes on one PostgreSQL and one S3 bucket (s3s-fs) form a
cluster over QUIC on loopback, share the 64 queue partitions, and take over a dead node's
partitions; a real SMTP receiver (aiosmtpd) counts what arrives, by Message-ID.

The cluster tests run in the postgres-s3 pass only (scripts/test starts the services). One
three-node cluster is shared by the module; every test starts from a converged cluster (the
`cluster` fixture restarts whatever a previous test left stopped). The network-namespace test
builds a cluster of its own and needs root and `ip`.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from aiosmtpd.controller import Controller

from conftest import (
    BACKEND,
    DOMAIN,
    USER_PASSWORD,
    Server,
    assert_error,
    free_ports,
    free_udp_ports,
    insecure_tls,
    metric_value,
    run_cli,
    setup_domain_and_user,
    shared_backend_config,
    use_backend,
    write_config,
)
from test_delivery import Receiver

SECRET = "cluster-test-secret-0123456789abcdef"
LEASE_TTL = 4.0
PARTITIONS = 64
SENDER = f"bob@{DOMAIN}"
# Mail for many remote domains, so that it spreads over the partitions (sha256(domain) mod 64).
DOMAINS = [f"d{i}.cluster.test" for i in range(30)]

needs_cluster = pytest.mark.skipif(
    BACKEND != "postgres-s3",
    reason="a cluster needs a database and a bucket every node shares: runs in the postgres-s3 "
    "pass (scripts/test, or set MAIRUST_TEST_PG_URL and MAIRUST_TEST_S3_* from scripts/services.sh)",
)

MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


# ---------------------------------------------------------------------- the receiver


class ClusterReceiver(Receiver):
    """The test receiver, with switches the cluster tests need.

    - `defer`: every recipient gets `451 4.3.0` at RCPT (nothing reaches DATA).
    - `rcpt_delay[ip]`: seconds to wait before answering RCPT from that client address, so
      that transactions are in flight for a while.
    - `refuse_data_from`: client addresses whose end of DATA is answered `451` (the message is
      not accepted, but that the client sent the end of DATA is recorded in `data_ends`).

    Every accepted message is recorded with its Message-ID, the client address and the time.
    """

    def __init__(self, **kwargs):
        self.defer = False
        self.rcpt_delay: dict[str, float] = {}
        self.refuse_data_from: set[str] = set()
        self.data_ends: list[tuple[float, str, str | None]] = []
        self.more: list[Controller] = []
        super().__init__(**kwargs)

    def listen_also(self, host: str, port: int) -> None:
        """A second listener (another address) feeding the same records."""
        c = Controller(self, hostname=host, port=port, enable_SMTPUTF8=True)
        c.start()
        self.more.append(c)

    def stop(self):
        for c in self.more:
            with contextlib.suppress(Exception):
                c.stop()
        super().stop()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.defer:
            return "451 4.3.0 Try again later"
        delay = self.rcpt_delay.get(session.peer[0], 0.0)
        if delay:
            import asyncio

            await asyncio.sleep(delay)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):
        content = bytes(envelope.original_content or envelope.content)
        m = MESSAGE_ID.search(content)
        mid = m.group(1).decode() if m else None
        peer = session.peer[0]
        with self.lock:
            self.data_ends.append((time.monotonic(), peer, mid))
            if peer in self.refuse_data_from:
                return "451 4.3.0 Not now"
            self.messages.append(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "message_id": mid,
                    "peer": peer,
                    "at": time.monotonic(),
                }
            )
        return "250 2.0.0 Message accepted for delivery"

    def counts(self) -> collections.Counter:
        with self.lock:
            return collections.Counter(m["message_id"] for m in self.messages)

    def wait_ids(self, ids: set[str], timeout: float) -> collections.Counter:
        """Waits until every id in `ids` arrived (bounded); returns the counts."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts()
            if ids <= set(counts) or time.monotonic() > deadline:
                return counts
            time.sleep(0.1)


# ---------------------------------------------------------------------- the cluster


def wait_until(what: str, fn, timeout: float, interval: float = 0.1, logs=None):
    """Polls `fn` until it returns something truthy; fails with `what` (and the nodes' logs)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # a node answering badly while it starts or stops
            last = repr(e)
        if time.monotonic() > deadline:
            extra = f"\n{logs()}" if logs else ""
            pytest.fail(f"{what} not within {timeout}s (last: {last!r}){extra}")
        time.sleep(interval)


def message(rcpt: str, mid: str, subject: str = "cluster test") -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
        f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nHello from the cluster.\r\n"
    ).encode()


def submit_many(node: Server, rcpts: list[str]) -> dict[str, str]:
    """Submits one message per recipient over one authenticated session on `node`;
    returns {recipient: Message-ID} of those accepted."""
    out = {}
    with contextlib.closing(node.submission(SENDER, USER_PASSWORD)) as s:
        for rcpt in rcpts:
            mid = f"<{uuid.uuid4().hex}@cluster.test>"
            s.sendmail(SENDER, [rcpt], message(rcpt, mid))
            out[rcpt] = mid
        with contextlib.suppress(Exception):
            s.quit()
    return out


def parse_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Cluster:
    """Nodes of one cluster: one database and bucket, QUIC on `hosts` (loopback by default),
    every node a seed of every other."""

    def __init__(self, root: Path, receiver: ClusterReceiver, ids=("n1", "n2", "n3"),
                 hosts: dict[str, str] | None = None, retry_intervals: tuple[str, ...] = ("1h",)):
        self.root = root
        self.receiver = receiver
        self.backend = shared_backend_config()
        self.ids = list(ids)
        # Where each node's QUIC endpoint listens (loopback unless a test says otherwise).
        self.hosts = {i: (hosts or {}).get(i, "127.0.0.1") for i in self.ids}
        self.retry_intervals = list(retry_intervals)
        self.udp = dict(zip(self.ids, free_udp_ports(len(self.ids))))
        self.nodes: dict[str, Server] = {}
        self.extra: list[Server] = []

    def addr(self, node_id: str) -> str:
        return f"{self.hosts[node_id]}:{self.udp[node_id]}"

    def overrides(self, node_id: str, *, bind: str | None = None, secret: str = SECRET,
                  relay: str | None = None, seeds: list[str] | None = None) -> dict:
        bind = bind or self.addr(node_id)
        return {
            "cluster": {
                "enabled": True,
                "node_id": node_id,
                "bind": bind,
                "advertise": bind,
                "seeds": seeds if seeds is not None else [self.addr(i) for i in self.ids if i != node_id],
                "secret": secret,
            },
            "queue": {"lease_ttl": f"{LEASE_TTL:g}s", "partitions": PARTITIONS, "poll_interval": "2s"},
            "delivery": {
                "relay_host": relay or f"127.0.0.1:{self.receiver.port}",
                # With 1h (the shared cluster) a deferred row waits unless retried through the
                # API, which is how the tests decide when the next attempt happens.
                "retry_intervals": self.retry_intervals,
                "connect_timeout": "2s",
                "command_timeout": "10s",
                "data_timeout": "10s",
            },
        }

    def make(self, node_id: str, overrides: dict, root: Path | None = None) -> Server:
        root = root or self.root / node_id
        use_backend(root, self.backend)
        return Server(root, overrides)

    def start_all(self, prepare=None) -> None:
        """Starts the nodes one after the other (the first runs the migrations and creates the
        admin); `prepare(node_id, overrides) -> Server` may build a node differently."""
        for i in self.ids:
            overrides = self.overrides(i)
            srv = prepare(i, overrides) if prepare else self.make(i, overrides)
            self.nodes[i] = srv
            srv.start()
        setup_domain_and_user(self.nodes[self.ids[0]], users=("bob",))

    def running(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i].running()]

    def others(self, node_id: str) -> list[str]:
        return [i for i in self.running() if i != node_id]

    def logs(self) -> str:
        parts = []
        for name, srv in [*self.nodes.items(), *((s.config["cluster"]["node_id"], s) for s in self.extra)]:
            parts.append(f"===== node {name} ({'running' if srv.running() else 'stopped'})\n{srv.output()}")
        return "\n".join(parts)

    def stop(self) -> None:
        for srv in [*self.nodes.values(), *self.extra]:
            with contextlib.suppress(Exception):
                srv.stop(timeout=10)
            with contextlib.suppress(Exception):
                srv.kill()

    # -------------------------------------------------------------- views

    def view(self, node_id: str) -> dict:
        r = self.nodes[node_id].api().get("/api/v1/cluster", timeout=5)
        if r.status_code == 404:
            # Not a state to wait out: the endpoint does not exist (pytest.fail passes wait_until).
            pytest.fail(f"GET /api/v1/cluster on {node_id} answers 404: the cluster API is not served")
        assert r.status_code == 200, f"GET /api/v1/cluster on {node_id}: {r.status_code} {r.text}"
        return r.json()

    def owners(self, node_id: str) -> dict[int, str | None]:
        return {p["id"]: p["owner"] for p in self.view(node_id)["partitions"]}

    def owned_only_by(self, nodes: list[str]) -> bool:
        """Whether `nodes[0]` sees every partition owned by one of `nodes`."""
        o = self.owners(nodes[0])
        return all(o[p] in nodes for p in range(PARTITIONS))

    def converged(self, expect: list[str]):
        """The owner map if every node in `expect` reports the same view: all of them alive,
        every partition owned by one of them, each of them owning some; else None."""
        maps = []
        for i in expect:
            v = self.view(i)
            assert v["node_id"] == i, v["node_id"]
            # A restarted node's previous incarnation may still be listed (down) beside it.
            alive = {m["node_id"] for m in v["members"] if m["state"] == "alive"}
            if alive != set(expect):
                return None
            owners = {p["id"]: p["owner"] for p in v["partitions"]}
            if sorted(owners) != list(range(PARTITIONS)) or any(o not in expect for o in owners.values()):
                return None
            if set(owners.values()) != set(expect):
                return None
            maps.append(owners)
        if any(m != maps[0] for m in maps):
            return None
        return maps[0]

    def wait_converged(self, expect: list[str] | None = None, timeout: float = 30.0) -> dict[int, str]:
        expect = expect or self.running()
        return wait_until(f"a converged view on {expect}", lambda: self.converged(expect), timeout,
                          interval=0.2, logs=self.logs)

    def wait_settled(self, timeout: float = 60.0) -> dict[int, str]:
        """The converged view of every node once it has held still for a lease lifetime: a
        node that just (re)joined may still have hand-overs to it in flight in a converged view."""
        def settled():
            first = self.wait_converged(self.ids)
            time.sleep(LEASE_TTL)
            return first if self.converged(self.ids) == first else None

        return wait_until("a settled view", settled, timeout=timeout, logs=self.logs)

    def heal(self) -> dict[int, str]:
        """Starts every stopped node and waits for the converged view of all."""
        for i in self.ids:
            if not self.nodes[i].running():
                self.nodes[i].start(first=False)
        return self.wait_converged(self.ids)

    # -------------------------------------------------------------- queue

    def queue_rows(self, via: str | None = None) -> list[dict]:
        api = self.nodes[via or self.running()[0]].api()
        items, cursor = [], None
        while True:
            params = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            r = api.get("/api/v1/queue", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return items


@pytest.fixture(scope="module")
def cluster_receiver():
    rcv = ClusterReceiver()
    yield rcv
    rcv.stop()


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory, cluster_receiver):
    if BACKEND != "postgres-s3":
        pytest.skip("a cluster needs PostgreSQL and S3: runs in the postgres-s3 pass")
    c = Cluster(tmp_path_factory.mktemp("cluster"), cluster_receiver)
    try:
        c.start_all()
        c.wait_converged(c.ids, timeout=40)
    except BaseException:
        print(c.logs())
        c.stop()
        raise
    yield c
    c.stop()


@pytest.fixture
def cluster(three_nodes, request):
    """The shared cluster, converged, with the receiver accepting; the nodes' logs are printed
    when the test fails."""
    three_nodes.receiver.defer = False
    three_nodes.heal()
    yield three_nodes
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(three_nodes.logs())
    for srv in three_nodes.extra:
        with contextlib.suppress(Exception):
            srv.stop(timeout=10)
        with contextlib.suppress(Exception):
            srv.kill()
    three_nodes.extra.clear()
    three_nodes.receiver.defer = False


def partition_of_rows(rows: list[dict]) -> dict[str, int]:
    return {r["recipient"]: r["partition"] for r in rows}


# ---------------------------------------------------------------------- start-up checks


def test_a_cluster_on_sqlite_is_a_startup_error(tmp_path):
    cfg = {
        "database": {"url": f"sqlite://{tmp_path}/db.sqlite"},
        "storage": {"backend": "fs", "options": {"path": str(tmp_path / "mail"), "shared": True}},
        "server": {"data_dir": str(tmp_path / "data"), "bind": "127.0.0.1",
                   "smtp_port": free_ports(1)[0], "submission_port": free_ports(1)[0], "api_port": free_ports(1)[0]},
        "cluster": {"enabled": True, "node_id": "n1", "bind": "127.0.0.1:0", "secret": SECRET},
    }
    write_config(tmp_path / "config.yaml", cfg)
    r = run_cli(["serve", "--config", str(tmp_path / "config.yaml")])
    assert r.returncode != 0, r
    out = r.stdout + r.stderr
    assert "cluster.enabled" in out, out
    assert "SQLite" in out or "postgres" in out, out


def test_a_cluster_on_an_unshared_fs_store_is_a_startup_error(tmp_path):
    # The database is checked first; an unreachable PostgreSQL URL is enough, since the
    # configuration is refused before anything connects.
    base = {
        "database": {"url": "postgres://nobody@127.0.0.1:1/none"},
        "server": {"data_dir": str(tmp_path / "data"), "bind": "127.0.0.1"},
        "cluster": {"enabled": True, "node_id": "n1", "bind": "127.0.0.1:0", "secret": SECRET},
    }
    write_config(tmp_path / "config.yaml",
                 {**base, "storage": {"backend": "fs", "options": {"path": str(tmp_path / "mail")}}})
    r = run_cli(["serve", "--config", str(tmp_path / "config.yaml")])
    assert r.returncode != 0, r
    out = r.stdout + r.stderr
    assert "cluster.enabled" in out and "storage.options.shared" in out, out


# ---------------------------------------------------------------------- the shared cluster


@needs_cluster
def test_partitions_spread_over_the_nodes_and_every_node_reports_the_same_view(cluster):
    owners = cluster.wait_converged(cluster.ids)
    per_node = collections.Counter(owners.values())
    assert set(per_node) == set(cluster.ids) and sum(per_node.values()) == PARTITIONS, per_node
    for i in cluster.ids:
        v = cluster.view(i)
        assert set(v) >= {"node_id", "members", "partitions"}, v
        alive = [m for m in v["members"] if m["state"] == "alive"]
        assert sorted(m["node_id"] for m in alive) == sorted(cluster.ids), v["members"]
        assert all(m["state"] in ("alive", "suspect", "down") for m in v["members"]), v["members"]
        for m in alive:
            assert m["addr"] == cluster.addr(m["node_id"]), m
            assert "queue" in m["roles"], m
        for p in v["partitions"]:
            assert isinstance(p["epoch"], int) and p["epoch"] >= 1, p
            assert p["lease_until"] and parse_time(p["lease_until"]) > time.time() - 1, p  # owned: renewed, not expired
        # What the node's metrics say matches what its API says.
        text = cluster.nodes[i].metrics()
        assert metric_value(text, "mairust_cluster_partitions_owned") == per_node[i], i
        assert metric_value(text, "mairust_cluster_members", {"state": "alive"}) == 3, i
        assert "mairust_cluster_lease_renew_seconds" in text, i
    # The endpoint is for administrators.
    r = cluster.nodes["n1"].anon().get("/api/v1/cluster")
    assert r.status_code == 401, r.text


@needs_cluster
def test_queue_retry_and_cancel_through_a_node_that_does_not_own_the_row(cluster):
    rcv = cluster.receiver
    owners = cluster.wait_converged(cluster.ids)
    rcv.defer = True
    tag = uuid.uuid4().hex[:6]
    rcpts = [f"rc{tag}{i}@{d}" for i, d in enumerate(DOMAINS[:6])]
    mids = submit_many(cluster.nodes["n1"], rcpts)
    rows = wait_until(
        "the rows deferred once",
        lambda: (lambda rs: rs if len(rs) == len(rcpts) and all(r["status"] == "deferred" for r in rs) else None)(
            [r for r in cluster.queue_rows() if r["recipient"] in mids]),
        timeout=20, logs=cluster.logs,
    )
    rcv.defer = False
    # retry_intervals is 1h: nothing happens to these rows unless retried.
    by_rcpt = {r["recipient"]: r for r in rows}
    retried, cancelled = by_rcpt[rcpts[0]], by_rcpt[rcpts[1]]

    owner = owners[retried["partition"]]
    other = next(i for i in cluster.ids if i != owner)
    assert parse_time(retried["next_attempt_at"]) > time.time() + 600, retried
    r = cluster.nodes[other].api().post(f"/api/v1/queue/{retried['id']}/retry")
    assert r.status_code == 200, f"retry through {other} (owner {owner}): {r.status_code} {r.text}"
    body = r.json()
    assert body["id"] == retried["id"]
    # Due now, not in an hour (or already on its way).
    assert body["next_attempt_at"] is None or parse_time(body["next_attempt_at"]) < time.time() + 60, body
    counts = rcv.wait_ids({mids[retried["recipient"]]}, timeout=15)
    assert counts[mids[retried["recipient"]]] == 1, "the retried row was delivered"
    wait_until("the retried row recorded as delivered",
               lambda: cluster.nodes[other].api().get(f"/api/v1/queue/{retried['id']}").json()["status"] == "delivered",
               timeout=10, logs=cluster.logs)

    owner = owners[cancelled["partition"]]
    other = next(i for i in reversed(cluster.ids) if i != owner)
    r = cluster.nodes[other].api().delete(f"/api/v1/queue/{cancelled['id']}")
    assert r.status_code == 200, f"cancel through {other} (owner {owner}): {r.status_code} {r.text}"
    assert r.json()["status"] == "cancelled", r.json()
    for i in cluster.ids:
        got = cluster.nodes[i].api().get(f"/api/v1/queue/{cancelled['id']}").json()
        assert got["status"] == "cancelled", (i, got)
    # A cancelled row is finished: a retry through a non-owner gets the owner's 409.
    assert_error(cluster.nodes[other].api().post(f"/api/v1/queue/{cancelled['id']}/retry"), 409)
    time.sleep(1.5)
    assert mids[cancelled["recipient"]] not in rcv.counts(), "a cancelled row was delivered"

    # Tidy up: the remaining rows would wait an hour.
    for row in rows[2:]:
        cluster.nodes["n1"].api().delete(f"/api/v1/queue/{row['id']}")


@needs_cluster
def test_sigkill_one_node_the_survivors_take_over_and_every_message_arrives_once(cluster):
    rcv = cluster.receiver
    owners = cluster.wait_converged(cluster.ids)
    rcv.defer = True
    tag = uuid.uuid4().hex[:6]
    mids: dict[str, str] = {}
    for n, i in enumerate(cluster.ids):
        # Every node accepts mail for every domain; its rows land in every node's partitions.
        mids.update(submit_many(cluster.nodes[i], [f"k{tag}{n}x{j}@{d}" for j, d in enumerate(DOMAINS)]))
    assert len(mids) == len(cluster.ids) * len(DOMAINS)

    def all_deferred():
        rows = [r for r in cluster.queue_rows() if r["recipient"] in mids]
        return rows if len(rows) == len(mids) and all(r["status"] == "deferred" for r in rows) else None

    rows = wait_until("every row tried once and deferred", all_deferred, timeout=30, logs=cluster.logs)
    # The victim: the node owning the most rows' partitions.
    load = collections.Counter(owners[r["partition"]] for r in rows)
    victim = load.most_common(1)[0][0]
    survivors = cluster.others(victim)
    victim_parts = {p for p, o in owners.items() if o == victim}
    takeovers_before = sum(cluster.nodes[s].metric_value("mairust_cluster_takeovers_total") or 0 for s in survivors)

    killed = time.monotonic()
    cluster.nodes[victim].kill()

    wait_until(f"the survivors owning {victim}'s partitions", lambda: cluster.owned_only_by(survivors),
               timeout=20, interval=0.05, logs=cluster.logs)
    took = time.monotonic() - killed
    assert took <= LEASE_TTL + 1.0, f"takeover of {len(victim_parts)} partitions took {took:.2f}s"
    after = cluster.wait_converged(survivors, timeout=10)
    assert all(after[p] in survivors for p in victim_parts)
    takeovers_after = sum(cluster.nodes[s].metric_value("mairust_cluster_takeovers_total") or 0 for s in survivors)
    assert takeovers_after > takeovers_before, (takeovers_before, takeovers_after)

    # The receiver accepts now; every pending row is retried through a survivor that does not
    # own it (retry_intervals is 1h), which the owner must honour.
    rcv.defer = False
    for n, r in enumerate(rows):
        via = [s for s in survivors if s != after[r["partition"]]][0]
        resp = cluster.nodes[via].api().post(f"/api/v1/queue/{r['id']}/retry")
        assert resp.status_code in (200, 409), f"retry of {r['id']} through {via}: {resp.status_code} {resp.text}"
    counts = rcv.wait_ids(set(mids.values()), timeout=40)
    time.sleep(2.0)  # a late duplicate would arrive now
    counts = rcv.counts()
    missing = [m for m in mids.values() if counts[m] == 0]
    twice = {m: c for m, c in counts.items() if m in set(mids.values()) and c > 1}
    assert not missing, f"{len(missing)} of {len(mids)} messages never arrived"
    assert not twice, f"delivered more than once: {twice}"
    rows = [r for r in cluster.queue_rows(survivors[0]) if r["recipient"] in mids]
    assert {r["status"] for r in rows} == {"delivered"}, collections.Counter(r["status"] for r in rows)

    # The killed node comes back and gets partitions again.
    cluster.nodes[victim].start(first=False)
    owners = cluster.wait_converged(cluster.ids, timeout=30)
    assert victim in owners.values()


@needs_cluster
def test_sigterm_hands_the_partitions_over_within_a_second(cluster):
    # Measured from a settled view, not from one where the last test's restarted node is
    # still being handed its partitions.
    owners = cluster.wait_settled()
    victim = cluster.ids[1]
    survivors = cluster.others(victim)
    srv = cluster.nodes[victim]
    stopped = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)

    wait_until(f"the survivors owning {victim}'s partitions", lambda: cluster.owned_only_by(survivors),
               timeout=15, interval=0.05, logs=cluster.logs)
    took = time.monotonic() - stopped
    code = srv.proc.wait(timeout=20)
    assert code == 0, f"{victim} exited with {code} on SIGTERM:\n{srv.output()}"
    assert took <= 1.0, (f"SIGTERM hand-over of {sum(1 for o in owners.values() if o == victim)} "
                         f"partitions took {took:.2f}s:\n{cluster.logs()}")
    cluster.wait_converged(survivors, timeout=10)
    srv.start(first=False)
    assert victim in cluster.wait_converged(cluster.ids).values()


@needs_cluster
def test_idle_on_one_node_sees_mail_another_node_accepted_within_a_second(cluster):
    cluster.wait_converged(cluster.ids)
    watcher, receiver = (cluster.nodes[i] for i in cluster.ids[:2])
    bob = f"bob@{DOMAIN}"
    raw = socket.create_connection(("127.0.0.1", watcher.config["server"]["imaps_port"]), timeout=10)
    sock = insecure_tls().wrap_socket(raw, server_hostname="mx.example.test")

    def until(pattern: bytes, timeout: float) -> bytes:
        got, deadline = b"", time.monotonic() + timeout
        sock.settimeout(timeout)
        while pattern not in got:
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout}s: {got!r}"
            chunk = sock.recv(4096)
            assert chunk, got
            got += chunk
        return got

    until(b"IMAP ready\r\n", 5)
    sock.sendall(f'a LOGIN {bob} "{USER_PASSWORD}"\r\nb SELECT INBOX\r\n'.encode())
    selected = until(b"b OK", 5)
    exists = int(re.search(rb"\* (\d+) EXISTS", selected).group(1))
    sock.sendall(b"c IDLE\r\n")
    until(b"+ idling\r\n", 5)
    code, _ = receiver.send(bob, b"Subject: across the cluster\r\n\r\nhello\r\n")
    accepted = time.monotonic()
    assert code == 250
    until(f"* {exists + 1} EXISTS\r\n".encode(), 5)
    took = time.monotonic() - accepted
    print(f"IDLE delay across nodes: {took:.3f}s")
    assert took <= 1.0, f"IDLE on another node heard of the new mail after {took:.2f}s"
    sock.sendall(b"DONE\r\nd LOGOUT\r\n")
    until(b"d OK", 5)
    sock.close()


def test_lease_rows_left_locked_by_a_dead_node_cost_the_survivors_none_of_their_own(cluster):
    """A node that vanishes inside a transaction leaves row locks on its lease rows until the
    server ends its session (here: a psql session holding them). The survivors' attempts to
    take those partitions wait on the locks; they must not take the connections the survivors
    renew their own leases with, and the victim's other partitions are taken as usual."""
    owners = cluster.wait_settled()
    victim = cluster.ids[2]
    survivors = cluster.others(victim)
    theirs = sorted(p for p, o in owners.items() if o == victim)
    locked, free = theirs[:3], theirs[3:]
    assert len(locked) == 3 and free, owners
    holder = subprocess.Popen(
        ["psql", cluster.backend["database"]["url"], "-q", "-v", "ON_ERROR_STOP=1", "-c",
         "BEGIN; SELECT 1 FROM partition_leases WHERE partition IN "
         f"({', '.join(map(str, locked))}) FOR UPDATE; SELECT pg_sleep(20); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        assert holder.poll() is None, holder.stderr.read() if holder.stderr else ""
        cluster.nodes[victim].kill()
        kept = {p: o for p, o in owners.items() if o in survivors}
        # Three lease lifetimes and more: long enough for starved renewals to lose leases.
        deadline = time.monotonic() + 4 * LEASE_TTL
        while time.monotonic() < deadline:
            now = cluster.owners(survivors[0])
            lost = sorted(p for p, o in kept.items() if now[p] != o)
            assert not lost, (f"survivors lost {lost} (now {[now[p] for p in lost]}) while lease rows "
                              f"{locked} were locked:\n{cluster.logs()}")
            time.sleep(0.25)
        now = cluster.owners(survivors[0])
        untaken = {p: now[p] for p in free if now[p] not in survivors}
        assert not untaken, f"{untaken} not taken over (locked: {locked}):\n{cluster.logs()}"
    finally:
        holder.terminate()
        holder.wait(timeout=10)
    # Once the locks are gone, the locked partitions are taken too.
    wait_until("the survivors owning every partition", lambda: cluster.owned_only_by(survivors),
               timeout=15, logs=cluster.logs)


def log_text(line: dict) -> str:
    return " ".join([str(line.get("message", "")), *map(str, (line.get("fields") or {}).values())]).lower()


@needs_cluster
def test_a_node_with_a_wrong_secret_never_joins_and_gets_nothing(cluster):
    owners = cluster.wait_converged(cluster.ids)
    rogue_port = free_udp_ports(1)[0]
    bind = f"127.0.0.1:{rogue_port}"
    overrides = cluster.overrides("rogue", bind=bind, secret="another-secret-0123456789abcdef",
                                  seeds=[cluster.addr(i) for i in cluster.ids])
    rogue = cluster.make("rogue", overrides, root=cluster.root / f"rogue-{uuid.uuid4().hex[:6]}")
    cluster.extra.append(rogue)
    # It may start (a cluster of one is ready) or not; either way it must not join.
    rogue.launch()
    line = rogue.wait_for_log(
        lambda l: l.get("level", "").lower() in ("warn", "warning", "error") and "handshake" in log_text(l),
        timeout=15,
    )
    assert line, "the rogue node logs the refused handshake"
    # Several membership rounds later it is still nobody's member and owns nothing.
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        for i in cluster.ids:
            v = cluster.view(i)
            assert "rogue" not in {m["node_id"] for m in v["members"]}, (i, v["members"])
            assert "rogue" not in {p["owner"] for p in v["partitions"]}, (i, v["partitions"])
        time.sleep(0.5)
    assert cluster.wait_converged(cluster.ids) == owners, "the rogue node moved partitions"
    assert rogue.running(), "the rogue node stays up, saying why it is not ready"
    assert not rogue.metric_value("mairust_cluster_partitions_owned")
    r = requests.get(rogue.base_url + "/health/ready", timeout=5)
    assert r.status_code == 503 and r.json()["checks"]["cluster"] == "unavailable", r.text
    r = rogue.api().get("/health/ready")
    assert "no cluster peer accepted this node" in r.json()["details"]["cluster"], r.text
    # The real members stop: their partitions are free in the shared database, and still
    # the rogue node takes none (it used to take every one as orphans).
    for i in cluster.ids:
        cluster.nodes[i].stop()
    deadline = time.monotonic() + 3 * LEASE_TTL
    while time.monotonic() < deadline:
        owned = rogue.metric_value("mairust_cluster_partitions_owned")
        assert not owned, f"the rogue node took {owned} partitions once the members stopped"
        time.sleep(0.25)


# ---------------------------------------------------------------------- a node cut off


class TcpProxy:
    """Forwards TCP connections from `listen` to `target` (threads; for the test's lifetime)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.sock = socket.create_server(listen, reuse_port=False)
        self.open: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def close(self):
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        for c in self.open:
            with contextlib.suppress(OSError):
                c.close()


class Netns:
    """A network namespace joined to the host by two veth pairs: `ctl` (database, S3, cluster
    peers: the one that is cut) and `mail` (the node's SMTP/API and its way to the receiver,
    which stays up so that whether it still delivers can be seen)."""

    def __init__(self):
        # A subnet and interface names no other run on this machine uses right now.
        taken = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True, timeout=10).stdout
        free = [n for n in range(100, 250) if f"10.231.{n}." not in taken and f"mrc{n}h" not in taken]
        assert free, "no free 10.231.N.0/30 subnet for the test namespace"
        self.n = random.choice(free)
        self.name = f"mairust-t{self.n}-{os.getpid()}"
        self.ctl = (f"mrc{self.n}h", f"mrc{self.n}n", f"10.231.{self.n}.1", f"10.231.{self.n}.2")
        self.mail = (f"mrm{self.n}h", f"mrm{self.n}n", f"10.232.{self.n}.1", f"10.232.{self.n}.2")
        self.iptables = False
        self.ip("netns", "add", self.name)
        try:
            self.ip("-n", self.name, "link", "set", "lo", "up")
            for host_end, ns_end, host_addr, ns_addr in (self.ctl, self.mail):
                self.ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
                self.ip("link", "set", ns_end, "netns", self.name)
                self.ip("addr", "add", f"{host_addr}/30", "dev", host_end)
                self.ip("link", "set", host_end, "up")
                self.ip("-n", self.name, "addr", "add", f"{ns_addr}/30", "dev", ns_end)
                self.ip("-n", self.name, "link", "set", ns_end, "up")
        except BaseException:
            self.delete()
            raise

    @staticmethod
    def ip(*args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"

    def cut(self):
        """Drops every packet on the control veth inside the namespace, both ways: a silent
        partition (connections hang, nothing is refused). Without iptables: the link goes down."""
        self.iptables = shutil.which("iptables") is not None
        if self.iptables:
            for rule in (["INPUT", "-i", self.ctl[1]], ["OUTPUT", "-o", self.ctl[1]]):
                self.run("ip", "netns", "exec", self.name, "iptables", "-I", rule[0], *rule[1:], "-j", "DROP")
        else:
            self.ip("-n", self.name, "link", "set", self.ctl[1], "down")

    def heal(self):
        if self.iptables:
            for rule in (["INPUT", "-i", self.ctl[1]], ["OUTPUT", "-o", self.ctl[1]]):
                self.run("ip", "netns", "exec", self.name, "iptables", "-D", rule[0], *rule[1:], "-j", "DROP")
        else:
            self.ip("-n", self.name, "link", "set", self.ctl[1], "up")

    @staticmethod
    def run(*cmd: str) -> None:
        r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"

    def delete(self):
        for host_end in (self.ctl[0], self.mail[0]):
            subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)


def netns_unavailable() -> str | None:
    if BACKEND != "postgres-s3":
        return "a cluster needs PostgreSQL and S3: runs in the postgres-s3 pass"
    if os.geteuid() != 0:
        return "network namespaces need root (run the suite as root to cut a node off)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
    if r.returncode != 0:
        return f"`ip netns` does not work here: {r.stderr.decode(errors='replace').strip()}"
    return None


class Load:
    """Continuous, bounded submission load through some nodes: one message at a time, each to
    a fresh recipient in one of `domains`; `acked` holds the Message-IDs answered 250."""

    def __init__(self, nodes: list[Server], domains: list[str], interval: float = 0.1,
                 max_seconds: float = 150.0):
        self.nodes, self.domains, self.interval = nodes, domains, interval
        self.acked: dict[str, str] = {}
        self.errors: list[str] = []
        self.stop_flag = threading.Event()
        self.deadline = time.monotonic() + max_seconds
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        sessions: dict[int, smtplib.SMTP] = {}
        n = 0
        while not self.stop_flag.is_set() and time.monotonic() < self.deadline:
            k = n % len(self.nodes)
            rcpt = f"load{n}@{self.domains[n % len(self.domains)]}"
            mid = f"<{uuid.uuid4().hex}@cluster.test>"
            n += 1
            try:
                if k not in sessions:
                    sessions[k] = self.nodes[k].submission(SENDER, USER_PASSWORD)
                sessions[k].sendmail(SENDER, [rcpt], message(rcpt, mid, "load"))
                self.acked[mid] = rcpt
            except (smtplib.SMTPException, OSError) as e:
                self.errors.append(f"{rcpt}: {e!r}")
                with contextlib.suppress(Exception):
                    sessions.pop(k).close()
            time.sleep(self.interval)
        for s in sessions.values():
            with contextlib.suppress(Exception):
                s.quit()

    def stop(self):
        self.stop_flag.set()
        self.thread.join(timeout=30)


@pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))
def test_a_node_cut_off_from_its_peers_and_the_database_stops_delivering_at_its_lease_deadline(
    tmp_path, request
):
    from conftest import PG_URL, S3_ENDPOINT

    ns = Netns()
    cleanup: list = [ns.delete]
    cluster = None
    try:
        ctl_host, ctl_ns = ns.ctl[2], ns.ctl[3]
        mail_host, mail_ns = ns.mail[2], ns.mail[3]
        # PostgreSQL and s3s-fs listen on loopback: the namespace reaches them through proxies on
        # the host end of the control veth.
        pg_port = int(PG_URL.rstrip("/").rsplit(":", 1)[1])
        s3_port = int(S3_ENDPOINT.rstrip("/").rsplit(":", 1)[1])
        for port in (pg_port, s3_port):
            proxy = TcpProxy((ctl_host, port), ("127.0.0.1", port))
            cleanup.append(proxy.close)
        rcv = ClusterReceiver()
        cleanup.append(rcv.stop)
        rcv.listen_also(mail_host, rcv.port)
        # Transactions from the cut-off node stay in flight a while, so some straddle the cut.
        rcv.rcpt_delay[mail_ns] = 0.8

        cluster = Cluster(tmp_path, rcv, ids=("h1", "h2", "ns"),
                          hosts={"h1": ctl_host, "h2": ctl_host, "ns": ctl_ns}, retry_intervals=("1s",))
        cleanup.append(cluster.stop)

        def prepare(node_id: str, overrides: dict) -> Server:
            if node_id != "ns":
                return cluster.make(node_id, overrides)
            backend = cluster.backend
            overrides = {
                **overrides,
                "server": {"bind": mail_ns},
                "database": {"url": backend["database"]["url"].replace("127.0.0.1", ctl_host)},
                "storage": {"options": {"endpoint": S3_ENDPOINT.replace("127.0.0.1", ctl_host)}},
            }
            overrides["delivery"] = {**overrides["delivery"], "relay_host": f"{mail_host}:{rcv.port}"}
            srv = cluster.make(node_id, overrides)
            srv.host = mail_ns
            srv.command_prefix = ["ip", "netns", "exec", ns.name]
            return srv

        cluster.start_all(prepare)
        cluster.wait_converged(cluster.ids, timeout=40)
        domains = [f"cut{i}.cluster.test" for i in range(40)]
        load = Load([cluster.nodes["h1"], cluster.nodes["h2"]], domains)
        cleanup.append(load.stop)

        wait_until("deliveries from the node in the namespace",
                   lambda: sum(1 for m in list(rcv.messages) if m["peer"] == mail_ns) >= 8,
                   timeout=30, logs=cluster.logs)
        before = {p["id"]: p for p in cluster.view("h1")["partitions"]}
        ns_parts = {i for i, p in before.items() if p["owner"] == "ns"}
        assert ns_parts
        # From now on the receiver refuses the end of DATA from the namespace (451), so a 250
        # the node could not record cannot make a duplicate: what it still sends is recorded.
        rcv.refuse_data_from.add(mail_ns)
        time.sleep(0.5)
        cut_at = time.monotonic()
        cut_wall = time.time()
        ns.cut()

        # The owner is unreachable: a queue operation on its row through another node is a 503
        # with a message while the lease has not expired yet (asked beside the takeover watch,
        # since the forward may wait for its own timeout).
        forwarded: dict = {}

        def retry_through_h1():
            pending = [r for r in cluster.queue_rows("h1")
                       if r["status"] in ("queued", "deferred") and r["partition"] in ns_parts]
            if not pending:
                return
            row = pending[0]
            try:
                resp = cluster.nodes["h1"].api().post(f"/api/v1/queue/{row['id']}/retry", timeout=30)
            except requests.RequestException as e:
                forwarded["error"] = repr(e)
                return
            forwarded["response"] = resp
            forwarded["owner_after"] = cluster.owners("h1")[row["partition"]]

        asker = threading.Thread(target=retry_through_h1, daemon=True)
        asker.start()

        first_seen: dict[int, float] = {}

        def taken_over():
            owners = cluster.owners("h1")
            now = time.time()
            for p in ns_parts:
                if owners[p] not in ("ns", None):
                    first_seen.setdefault(p, now)
            return len(first_seen) == len(ns_parts)

        wait_until("h1 and h2 owning the cut-off node's partitions", taken_over, timeout=25,
                   interval=0.05, logs=cluster.logs)
        took = time.monotonic() - cut_at
        for p in ns_parts:
            # Taken over after expiry, never before (the view is polled: seen late, not early).
            assert first_seen[p] >= parse_time(before[p]["lease_until"]) - 0.05, (p, before[p], first_seen[p])
        assert took <= LEASE_TTL + 3, f"takeover took {took:.2f}s after the cut"
        asker.join(timeout=40)
        assert "error" not in forwarded, f"retry through h1 of a row the cut-off node owns: {forwarded['error']}"
        if forwarded.get("owner_after") == "ns":
            err = assert_error(forwarded["response"], 503)
            assert err["message"], err

        # Let the cut last past the lease deadline and the takeover.
        time.sleep(2.0)
        late = [(t - cut_at, mid) for t, peer, mid in list(rcv.data_ends)
                if peer == mail_ns and t > cut_at + LEASE_TTL + 0.3]
        assert not late, f"the cut-off node still sent the end of DATA after its lease deadline: {late}"

        ns.heal()
        rcv.refuse_data_from.discard(mail_ns)
        cluster.wait_converged(cluster.ids, timeout=40)
        load.stop()
        assert len(load.acked) > 50, (len(load.acked), load.errors[:5])
        ids = set(load.acked)
        counts = rcv.wait_ids(ids, timeout=60)
        time.sleep(2.0)
        counts = rcv.counts()
        missing = [m for m in ids if counts[m] == 0]
        twice = {m: c for m, c in counts.items() if c > 1}
        assert not missing, f"{len(missing)} of {len(ids)} acknowledged messages never arrived"
        assert not twice, f"delivered more than once: {twice}"
        print(f"cut at {cut_wall:.3f}; takeover {took:.2f}s; {len(ids)} acknowledged, "
              f"{sum(counts[m] for m in ids)} delivered; "
              f"{sum(1 for _, peer, _ in rcv.data_ends if peer == mail_ns)} ends of DATA from the namespace")
    except BaseException:
        if cluster is not None:
            print(cluster.logs())
        raise
    finally:
        for fn in reversed(cleanup):
            with contextlib.suppress(Exception):
                fn()
