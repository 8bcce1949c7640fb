"""Shared helpers of the benchmark scripts: ports, a MaiRust process, the admin API, smtp-sink."""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ADMIN = ("admin@bench.test", "benchpassword")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def api(port, method, path, body=None, auth=ADMIN):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "content-type": "application/json",
            "authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode(),
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Services:
    """A throwaway PostgreSQL and s3s-fs (scripts/services.sh), for the postgres-s3 variants."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mairust-bench-services-")
        subprocess.run([os.path.join(REPO, "scripts", "services.sh"), "start", self.dir],
                       check=True, stdout=subprocess.DEVNULL)
        self.env = {}
        with open(os.path.join(self.dir, "env")) as f:
            for line in f:
                key, _, value = line.strip().removeprefix("export ").partition("=")
                self.env[key] = value

    def backend_yaml(self, name):
        """Config lines for a fresh database and bucket called `name`."""
        pg = self.env["MAIRUST_TEST_PG_URL"]
        subprocess.run(["psql", pg, "-q", "-c", f'CREATE DATABASE "{name}"'], check=True)
        os.makedirs(os.path.join(self.env["MAIRUST_TEST_S3_ROOT"], name))
        return (
            f"database: {{url: \"{pg}/{name}\"}}\n"
            f"storage: {{backend: s3, options: {{bucket: {name}, region: us-east-1, "
            f"endpoint: \"{self.env['MAIRUST_TEST_S3_ENDPOINT']}\", "
            f"access_key: {self.env['MAIRUST_TEST_S3_ACCESS_KEY']}, "
            f"secret_key: {self.env['MAIRUST_TEST_S3_SECRET_KEY']}}}}}\n"
        )

    def stop(self):
        subprocess.run([os.path.join(REPO, "scripts", "services.sh"), "stop", self.dir],
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


class MaiRust:
    """A `mairust serve` on a fresh data directory; `extra_yaml` is appended to the config,
    `backend_yaml` replaces the embedded database and storage, `env` adds variables, `wrapper`
    is a command line the binary runs under (valgrind)."""

    def __init__(self, binary, extra_yaml="", backend_yaml=None, env=None, wrapper=(), start_timeout=20.0):
        self.dir = tempfile.mkdtemp(prefix="mairust-bench-")
        self.smtp_port, self.submission_port, self.api_port = free_port(), free_port(), free_port()
        self.imap_port = free_port()
        config = os.path.join(self.dir, "config.yaml")
        with open(config, "w") as f:
            f.write(
                f"server: {{hostname: bench.test, bind: 127.0.0.1, smtp_port: {self.smtp_port}, "
                f"submission_port: {self.submission_port}, api_port: {self.api_port}, "
                # The imap role's listeners (a default role) on free ports too.
                f"imap_port: {self.imap_port}, imaps_port: {free_port()}, "
                f"pop3_port: {free_port()}, pop3s_port: {free_port()}, "
                f"data_dir: {self.dir}/data}}\n"
                + (
                    backend_yaml
                    or f"database: {{url: \"sqlite://{self.dir}/data/db/mairust.db\"}}\n"
                    f"storage: {{backend: fs, options: {{path: {self.dir}/data/mail}}}}\n"
                )
                + "log: {level: warn, format: json}\n"
                + extra_yaml
            )
        env = dict(os.environ, MAIRUST_ADMIN_EMAIL=ADMIN[0], MAIRUST_ADMIN_PASSWORD=ADMIN[1], **(env or {}))
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen(
            [*wrapper, binary, "serve", "--config", config], env=env, stdout=self.log, stderr=self.log
        )
        wait_port(self.api_port, start_timeout)
        wait_port(self.smtp_port, start_timeout)

    def api(self, method, path, body=None, auth=ADMIN):
        return api(self.api_port, method, path, body, auth)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def smtp_sink_binary():
    return shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if os.path.exists("/usr/sbin/smtp-sink") else None)


class SmtpSink:
    """Postfix's smtp-sink (accepts and discards mail), counting messages."""

    def __init__(self, backlog=1024):
        binary = smtp_sink_binary()
        if not binary:
            raise SystemExit("smtp-sink not found: install Debian's postfix package")
        self.port = free_port()
        self.out = tempfile.TemporaryFile()
        cmd = [binary, "-c", f"127.0.0.1:{self.port}", str(backlog)]
        if os.geteuid() == 0:
            cmd[1:1] = ["-u", "nobody"]
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def received(self):
        """Messages received so far (smtp-sink -c prints `... mesg=N` counters)."""
        self.out.seek(0)
        text = self.out.read().decode(errors="replace")
        marker = text.rfind("mesg=")
        if marker < 0:
            return 0
        digits = ""
        for ch in text[marker + 5:]:
            if not ch.isdigit():
                break
            digits += ch
        return int(digits or 0)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.out.close()


def proc_kib_field(path, name):
    """A `Name:  N kB` line of a /proc file, in bytes (0 once the process is gone)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_rss(pid):
    """VmRSS of a process in bytes (0 once it is gone)."""
    return proc_kib_field(f"/proc/{pid}/status", "VmRSS")


def process_pss(pid):
    """Proportional set size of a process in bytes (shared pages split among their users)."""
    return proc_kib_field(f"/proc/{pid}/smaps_rollup", "Pss")


def child_pids(pid):
    """Direct children of a process, from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def postfix_binary(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


class Postfix:
    """A private Postfix on loopback: config, queue, data directory and Maildirs in a temp dir,
    its own SMTP port, logging to a file (postlogd, no syslog). Mail for `user@bench.test` goes
    to a virtual Maildir; other domains go to `relayhost` when `relay_port` is given. Postfix's
    defaults otherwise, except no DNS (loopback only) and no reverse lookup of the client.
    Needs root (Debian's `postfix` user and `postdrop` group own the queue)."""

    MASTER_CF = """\
{port} inet n - n - {smtpd_limit} smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def __init__(self, relay_port=None, smtpd_limit=None):
        if os.geteuid() != 0:
            raise SystemExit("a private Postfix needs root (its queue belongs to the postfix user)")
        import grp
        import pwd

        user = pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
        self.dir = tempfile.mkdtemp(prefix="mairust-bench-postfix-")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.conf = os.path.join(self.dir, "conf")
        for sub in ("conf", "queue", "data", "mail"):
            os.makedirs(os.path.join(self.dir, sub))
        for sub in ("data", "mail"):
            os.chown(os.path.join(self.dir, sub), user.pw_uid, user.pw_gid)
        self.maildir = os.path.join(self.dir, "mail", "bench.test", "user", "new")
        with open(os.path.join(self.conf, "vmailbox"), "w") as f:
            f.write("user@bench.test bench.test/user/\n")
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(
                "compatibility_level = 3.6\n"
                f"queue_directory = {self.dir}/queue\n"
                f"data_directory = {self.dir}/data\n"
                "mail_owner = postfix\nsetgid_group = postdrop\n"
                "inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n"
                "myhostname = postfix.bench.test\nmydestination =\nmynetworks = 127.0.0.0/8\n"
                # maillog_file must start with one of maillog_file_prefixes (default /var,
                # /dev/stdout), else `postfix start` fails with its reason sent to syslog only.
                f"maillog_file_prefixes = {self.dir}\nmaillog_file = {self.dir}/maillog\n"
                "smtpd_peername_lookup = no\nsmtp_dns_support_level = disabled\n"
                "virtual_mailbox_domains = bench.test\n"
                f"virtual_mailbox_base = {self.dir}/mail\n"
                f"virtual_mailbox_maps = texthash:{self.conf}/vmailbox\n"
                f"virtual_uid_maps = static:{user.pw_uid}\nvirtual_gid_maps = static:{user.pw_gid}\n"
                + (f"relayhost = [127.0.0.1]:{relay_port}\n" if relay_port else "")
            )
        self.smtpd_limit = smtpd_limit
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(self.MASTER_CF.format(port=f"127.0.0.1:{self.port}", smtpd_limit=smtpd_limit or "-"))
        try:
            subprocess.run([postfix_binary("postfix"), "-c", self.conf, "start"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            wait_port(self.port)
        except BaseException:
            self.stop()
            raise

    def master_pid(self):
        try:
            with open(os.path.join(self.dir, "queue", "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def pids(self):
        """The master and its children (each Postfix daemon is a child of the master)."""
        master = self.master_pid()
        return [master, *child_pids(master)] if master else []

    def memory(self):
        """Sums of VmRSS and of PSS over all Postfix processes of this instance, and their count."""
        pids = self.pids()
        return sum(process_rss(p) for p in pids), sum(process_pss(p) for p in pids), len(pids)

    def delivered(self):
        """Messages in the Maildir's new/."""
        try:
            return len(os.listdir(self.maildir))
        except FileNotFoundError:
            return 0

    def _ours(self, pid):
        """Whether `pid` still is a process of this instance (its environment names our config)."""
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return f"MAIL_CONFIG={self.conf}".encode() in f.read().split(b"\0")
        except OSError:
            return False

    def stop(self):
        pids = self.pids()
        subprocess.run([postfix_binary("postfix"), "-c", self.conf, "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        deadline = time.monotonic() + 20
        while pids and time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.1)
        for p in pids:
            if self._ours(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)


DOVECOT_CONF = """base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 8
mail_location = maildir:{root}/mail/%u
default_process_limit = {processes}
default_client_limit = {clients}
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
protocol imap {{
  mail_max_userip_connections = {clients}
}}
"""


class Dovecot:
    """A private Dovecot 2.3 (Debian dovecot-imapd) on loopback with one passwd-file user, in a
    temporary directory its unprivileged users can reach. Needs root."""

    def __init__(self, user, password, sessions=100):
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not os.path.exists(binary):
            raise SystemExit("dovecot not found: install Debian's dovecot-imapd package")
        self.root = tempfile.mkdtemp(prefix="mairust-bench-dovecot-")
        os.chmod(self.root, 0o755)
        for d in ("run", "state", "mail", "home"):
            os.makedirs(os.path.join(self.root, d))
        for d in ("mail", "home", "state"):
            os.chmod(os.path.join(self.root, d), 0o777)
        with open(os.path.join(self.root, "passwd"), "w") as f:
            f.write(f"{user}:{{PLAIN}}{password}\n")
        os.chmod(os.path.join(self.root, "passwd"), 0o644)
        self.port = free_port()
        conf = os.path.join(self.root, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(DOVECOT_CONF.format(root=self.root, port=self.port,
                                        processes=sessions + 50, clients=sessions + 50))
        self.proc = subprocess.Popen([binary, "-F", "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def pids(self):
        """The master and every process under it (login, auth, imap)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(child_pids(pid))
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)
