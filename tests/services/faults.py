"""A fault-injecting HTTP server on loopback: it answers each request with the next
behaviour of its script, then proxies to a real service ("recovers")."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class FaultServer:
    """``script``: behaviours in order — ``reset``, ``500``, ``503``, ``429``, ``stall``,
    ``400``, ``401``, ``garbage``, ``proxy``; when it runs out, every request is proxied."""

    def __init__(self, upstream: str, script: list[str], stall_s: float = 3.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.script = list(script)
        self.stall_s = stall_s
        self.requests: list[str] = []  # paths, in arrival order
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()  # closed: until start(), connections to the port are refused

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def next_behaviour(self, path: str) -> str:
        with self._lock:
            self.requests.append(path)
            return self.script.pop(0) if self.script else "proxy"

    def start(self) -> FaultServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                self._answer(body)

            def _send(self, status: int, payload: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _answer(self, body: bytes | None) -> None:
                behaviour = owner.next_behaviour(self.path)
                if behaviour == "reset":
                    linger = struct.pack("ii", 1, 0)  # close with RST, not FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.connection.close()
                    return
                if behaviour == "stall":
                    time.sleep(owner.stall_s)
                    behaviour = "proxy"
                if behaviour in ("500", "503", "429", "401", "400"):
                    codes = {"400": "invalid_image", "401": "unauthorized"}
                    error = codes.get(behaviour, "unavailable")
                    message = json.dumps({"error": error, "message": f"injected {behaviour}"})
                    self._send(int(behaviour), message.encode())
                    return
                if behaviour == "garbage":
                    self._send(200, b"<html>not the contract</html>", "text/html")
                    return
                try:
                    upstream = requests.request(
                        self.command,
                        owner.upstream + self.path,
                        data=body,
                        headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                        timeout=30,
                    )
                except requests.ConnectionError:  # the service is down: so are we
                    self.close_connection = True
                    self.connection.close()
                    return
                self._send(upstream.status_code, upstream.content)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
