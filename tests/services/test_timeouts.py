"""#24: every HTTP server we ship cuts what would hold it for ever — a connection that never
sends a request head, a head trickled byte by byte, a body that stops arriving, an idle
keep-alive connection — and caps its connections. A real `aurum-ml serve detection` with
short limits, on loopback, met with raw sockets."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from servers import TOKEN, ServiceProcess

LIMITS = {
    "HTTP_HEADER_TIMEOUT": "1",
    "HTTP_BODY_TIMEOUT": "1.5",
    "HTTP_KEEPALIVE_TIMEOUT": "1",
    "HTTP_MAX_CONNECTIONS": "8",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[int]:
    saved = {k: os.environ.get(k) for k in LIMITS}
    os.environ.update(LIMITS)
    try:
        process = ServiceProcess("detection", tmp_path_factory.mktemp("timeouts")).start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield process.port
    process.stop()


def _closed_within(conn: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(was the connection closed by the server within ``seconds``, what it sent)."""
    conn.settimeout(seconds)
    got = b""
    try:
        while chunk := conn.recv(4096):
            got += chunk
    except TimeoutError:
        return False, got
    return True, got


def test_a_silent_connection_is_closed(service):
    with socket.create_connection(("127.0.0.1", service)) as conn:
        started = time.monotonic()
        closed, _ = _closed_within(conn, 6)
    assert closed and time.monotonic() - started < 5


def test_a_trickled_request_head_is_cut(service):
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 30
    with socket.create_connection(("127.0.0.1", service)) as conn:
        started = time.monotonic()
        closed = False
        for byte in head:  # a byte every 0.2 s: 7 s in all, never a whole head
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > 4:
                closed, _ = _closed_within(conn, 0.1)
                break
    assert closed, "the server still waits for the head after 4 s"


def test_a_body_that_stops_arriving_is_a_408(service):
    head = (
        b"POST /detect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
        b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", service)) as conn:
        conn.sendall(head + b'{"image_base64": "')
        started = time.monotonic()
        _, reply = _closed_within(conn, 6)
    assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply, reply[:200]
    assert time.monotonic() - started < 5


def test_an_idle_keep_alive_connection_is_closed(service):
    with socket.create_connection(("127.0.0.1", service)) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        closed, reply = _closed_within(conn, 6)
    assert reply.startswith(b"HTTP/1.1 200") and closed and time.monotonic() - started < 5


def test_connections_past_the_cap_get_a_503(service):
    idle = [socket.create_connection(("127.0.0.1", service)) for _ in range(10)]
    try:
        with socket.create_connection(("127.0.0.1", service)) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            _, reply = _closed_within(conn, 5)
        assert reply.startswith(b"HTTP/1.1 503"), reply[:100]
    finally:
        for conn in idle:
            conn.close()
    time.sleep(0.3)
    with socket.create_connection(("127.0.0.1", service)) as conn:  # and it recovers
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        _, reply = _closed_within(conn, 5)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
