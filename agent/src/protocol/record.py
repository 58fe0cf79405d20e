#!/usr/bin/env python3
"""Records what real clients and servers say, as protocol fixtures.

A relaying TCP proxy on 127.0.0.1:LISTEN forwards every connection to
TARGET (host:port) and logs each read it makes, in the order they happened,
to OUT: a direction byte ('>' client to server, '<' server to client), a
4-byte big-endian length, then the bytes. Each connection gets its own file
(OUT, then OUT with .2, .3, ... before the extension). It stops after
CONNECTIONS connections have closed.

Usage: python3 record.py LISTEN TARGET OUT [CONNECTIONS]

The redis, http1 and http2 fixtures were made with it (their folders'
README.md say with which clients and servers).
"""

import os
import socket
import struct
import sys
import threading


def relay(src, dst, mark, log, lock):
    while True:
        try:
            data = src.recv(65536)
        except OSError:
            data = b""
        if not data:
            break
        with lock:
            log.append(mark + struct.pack(">I", len(data)) + data)
        dst.sendall(data)
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class Recorder:
    """Relays the first connection `listener` accepts to the socket
    `connect()` returns, recording both directions in the format above.
    Other capture scripts (agent/benches/fixtures/grpc, protocol/redis/
    fixtures) import it to record the clients they drive."""

    def __init__(self, listener, connect):
        self.log, self.lock = [], threading.Lock()
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(listener, connect), daemon=True).start()

    def _run(self, listener, connect):
        client, _ = listener.accept()
        server = connect()
        for s in (client, server):
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # a Unix socket
        threads = [
            threading.Thread(target=relay, args=(client, server, b">", self.log, self.lock)),
            threading.Thread(target=relay, args=(server, client, b"<", self.log, self.lock)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        client.close()
        server.close()
        self.done.set()

    def save(self, path, timeout=None):
        """Writes the records once both ends have closed (or `timeout`
        seconds have passed)."""
        self.done.wait(timeout)
        with self.lock, open(path, "wb") as f:
            f.write(b"".join(self.log))


def main():
    listen, target, out = sys.argv[1], sys.argv[2], sys.argv[3]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    host, port = target.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(listen)))
    sock.listen(16)
    stem, ext = os.path.splitext(out)
    for i in range(count):
        path = out if i == 0 else f"{stem}.{i + 1}{ext}"
        Recorder(sock, lambda: socket.create_connection((host, int(port)))).save(path)


if __name__ == "__main__":
    main()
