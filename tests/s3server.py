"""A real S3 server for tests: moto's server mode in its own process, behind a TCP relay.

boto3 talks HTTP to the relay; stopping the relay makes the endpoint refuse connections
(the server "goes away") while moto keeps its state, and starting it again on the same
port brings the same buckets back.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

# Ray's default worker ports are 10002-19999; ours are picked above them.
LOWEST_PORT = 20000


def free_ports(count: int) -> list[int]:
    """`count` distinct ports on 127.0.0.1 that nothing holds, picked below the kernel's
    ephemeral range: bind(0) never hands those out, so a port given to a server here
    cannot also go to one that a server (Ray starts several) takes at random, nor come
    back from a second bind(0), as a port just closed can."""
    import random
    from pathlib import Path

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    picked: list[int] = []
    held: list[socket.socket] = []
    try:
        for port in random.sample(range(LOWEST_PORT, max(low, LOWEST_PORT + 1000)), 200):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)  # held until all are picked: the same port never twice
            picked.append(port)
            if len(picked) == count:
                return picked
    finally:
        for sock in held:
            sock.close()
    raise RuntimeError(f"no {count} free ports from {LOWEST_PORT} up")


def free_port() -> int:
    return free_ports(1)[0]


def start_moto(env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """moto_server on 127.0.0.1 and a free port; returns once it answers HTTP."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc, port
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


class Relay:
    """A TCP relay from `port` to the server; stop() refuses and drops connections."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.start()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self.listener = self.listener, None
        if listener:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
