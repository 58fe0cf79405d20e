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


def serve_one(client, target, path):
    host, port = target.rsplit(":", 1)
    server = socket.create_connection((host, int(port)))
    log, lock = [], threading.Lock()
    threads = [
        threading.Thread(target=relay, args=(client, server, b">", log, lock)),
        threading.Thread(target=relay, args=(server, client, b"<", log, lock)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    server.close()
    with open(path, "wb") as f:
        f.write(b"".join(log))


def main():
    listen, target, out = sys.argv[1], sys.argv[2], sys.argv[3]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(listen)))
    sock.listen(16)
    stem, ext = os.path.splitext(out)
    for i in range(count):
        client, _ = sock.accept()
        path = out if i == 0 else f"{stem}.{i + 1}{ext}"
        serve_one(client, target, path)


if __name__ == "__main__":
    main()
