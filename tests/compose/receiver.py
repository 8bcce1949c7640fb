"""A minimal SMTP receiver for the compose tests, run in a container on a bookworm base with
only python3-minimal (no asyncio, no socketserver, no json there).

- While the file /data/defer exists, every RCPT is answered `451 4.3.0` (the sender keeps the
  mail queued); each refusal is appended to /data/deferred.log as `<client ip>`.
- Otherwise each accepted message is appended to /data/received.log as
  `<client ip>\t<Message-ID>\t<Subject>`, flushed and fsynced before the `250`, so what the
  log holds is what was acknowledged.

Listens on 0.0.0.0:25. No TLS (the cores deliver with `delivery.tls: none`).
"""

import os
import re
import socket
import sys
import threading

DATA = "/data"
DEFER = os.path.join(DATA, "defer")
LOCK = threading.Lock()
HEADER = re.compile(rb"^(Message-ID|Subject):[ \t]*(.*)$", re.IGNORECASE)


def append(name, line):
    with LOCK:
        with open(os.path.join(DATA, name), "ab") as f:
            f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())


def headers_of(body):
    found = {}
    for raw in body.split(b"\r\n"):
        if raw == b"":
            break
        m = HEADER.match(raw)
        if m:
            found.setdefault(m.group(1).lower(), m.group(2).strip())
    return found


def session(conn, peer):
    reader = conn.makefile("rb")

    def reply(text):
        conn.sendall(text.encode() + b"\r\n")

    reply("220 receiver ESMTP test")
    rcpts = 0
    while True:
        line = reader.readline(4096)
        if not line:
            return
        verb = line.strip().split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            reply("250-receiver")
            reply("250 8BITMIME")
        elif verb == b"HELO":
            reply("250 receiver")
        elif verb == b"MAIL":
            rcpts = 0
            reply("250 2.1.0 ok")
        elif verb == b"RCPT":
            if os.path.exists(DEFER):
                append("deferred.log", peer.encode())
                reply("451 4.3.0 try again later")
            else:
                rcpts += 1
                reply("250 2.1.5 ok")
        elif verb == b"DATA":
            if rcpts == 0:
                reply("554 5.5.1 no valid recipients")
                continue
            reply("354 go ahead")
            lines = []
            while True:
                chunk = reader.readline(1 << 20)
                if not chunk:
                    return
                if chunk == b".\r\n":
                    break
                lines.append(chunk[1:] if chunk.startswith(b"..") else chunk)
            found = headers_of(b"".join(lines))
            append(
                "received.log",
                b"\t".join([peer.encode(), found.get(b"message-id", b"-"), found.get(b"subject", b"-")]),
            )
            rcpts = 0
            reply("250 2.0.0 accepted")
        elif verb == b"RSET":
            rcpts = 0
            reply("250 2.0.0 ok")
        elif verb == b"NOOP":
            reply("250 2.0.0 ok")
        elif verb == b"QUIT":
            reply("221 2.0.0 bye")
            return
        else:
            reply("502 5.5.2 not implemented")


def serve(conn, addr):
    try:
        with conn:
            session(conn, addr[0])
    except OSError:
        pass


def main():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 25))
    server.listen(128)
    print("receiver listening on 0.0.0.0:25", flush=True)
    while True:
        conn, addr = server.accept()
        threading.Thread(target=serve, args=(conn, addr), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
