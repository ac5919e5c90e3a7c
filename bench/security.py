"""`make security`: the whole stack (`make up`) on loopback, met as an attacker would.

Starts the stack from deploy/Procfile on a Redis database and ports of its own, with two
tenants' keys, an operator's key and a webhook allow-list naming one loopback receiver;
listens on 127.0.0.2 and on an unlisted loopback port as traps; then sends hostile
requests and messages — URL parser tricks and IP encodings for callbacks, redirects, other
tenants' keys, image bombs by format, slow heads and bodies, nested, duplicate and
mistyped JSON, hand-made broker messages — and prints one line per probe (what was
expected, what came). Exits 1 on any mismatch. Every request goes to loopback; no probe
ever connects anywhere else (the traps prove the refused ones never connected at all).

    python bench/security.py [--report docs/security.md]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402
from chaos import free_port, redis_mentions, wait_for  # noqa: E402
from PIL import Image  # noqa: E402
from redisdb import CLAIM_KEY, claim_redis_db  # noqa: E402

from photos import fetch  # noqa: E402
from samples import png_header_claiming  # noqa: E402

KEYS = {
    "alpha": "k-alpha-" + uuid.uuid4().hex,
    "alpha/ios": "k-alpha-ios-" + uuid.uuid4().hex,  # the same tenant: alpha
    "beta": "k-beta-" + uuid.uuid4().hex,
    "flood": "k-flood-" + uuid.uuid4().hex,
    "ops": "k-ops-" + uuid.uuid4().hex,  # an operator's key
}
SECRET = uuid.uuid4().hex
READS_PER_MINUTE = 200
PORTS = ("API_PORT", "DETECTION_PORT", "EMBEDDING_PORT", "FLOWER_PORT", "METRICS_PORT")
_OURS = ("AURUM_", "QDRANT_", "TASK_", "RETRY_", "COOLDOWN_", "FACE_", "ML_SERVICE", "FLOWER_")


@dataclass
class Result:
    group: str
    name: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


# --- the loopback receiver and the traps -----------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []
    trap_url = ""

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, dict(self.headers), body))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.trap_url)
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class Trap:
    """A listener that counts every connection offered to it (and answers nothing)."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


# --- the stack ---------------------------------------------------------------------------------


@contextmanager
def stack(env: dict[str, str], folder: Path) -> Iterator[None]:
    make = ["make", "--no-print-directory", f"STACK={folder / 'stack'}"]

    def run(target: str) -> subprocess.CompletedProcess:
        return subprocess.run(make + [target], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    up = run("up")
    if up.returncode != 0:
        raise SystemExit(f"make up failed:\n{up.stdout}{up.stderr}")
    try:
        yield
    finally:
        run("down")


def _answers(url: str, status: int = 200) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == status
        except requests.RequestException:
            return False

    return check


# --- images -------------------------------------------------------------------------------------


def _png(pixels: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


def _pil(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _bmp_header(width: int, height: int) -> bytes:
    import struct

    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54) + info + b"\0" * 16


def bombs() -> dict[str, tuple[bytes, str]]:
    """Hostile images by format → (bytes, the answer expected)."""
    tall = Image.new("RGB", (7700, 5200), (120, 90, 60))
    return {
        "16-bit RGBA PNG, 24 MP in a few hundred KB": (
            _png(np.zeros((4000, 6000, 4), np.uint16)),
            "rejected image_too_large",
        ),
        "progressive 4:4:4 JPEG, 40 MP": (
            _pil(tall, "JPEG", progressive=True, subsampling=0, quality=60),
            "rejected image_too_large",
        ),
        "PNG header claiming 100 000 x 100 000 px": (
            png_header_claiming(100_000, 100_000),
            "rejected image_too_large",
        ),
        "BMP header claiming 30 000 x 30 000 px": (
            _bmp_header(30_000, 30_000),
            "rejected image_too_large",
        ),
        "lossless WebP, 48 MP of one colour": (
            _pil(Image.new("RGB", (8000, 6000)), "WEBP", lossless=True),
            "rejected image_too_large",
        ),
        "GIF (not a format we take)": (
            _pil(Image.new("RGB", (200, 200)), "GIF"),
            "rejected invalid_image",
        ),
        "TIFF (not a format we take)": (
            _pil(Image.new("RGB", (200, 200)), "TIFF"),
            "rejected invalid_image",
        ),
        "SVG with an external entity": (
            b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<svg xmlns="http://www.w3.org/2000/svg">&x;</svg>',
            "rejected invalid_image",
        ),
        "truncated JPEG": (
            _pil(Image.new("RGB", (800, 600), (9, 9, 9)), "JPEG")[:600],
            "rejected invalid_image",
        ),
    }


# --- the probes -----------------------------------------------------------------------------------


class Probes:
    def __init__(self, api: str, services: dict[str, str], flower: str, flower_auth: tuple,
                 token: str, receiver: int, traps: list[Trap], broker: str) -> None:  # fmt: skip
        self.api, self.services, self.flower = api, services, flower
        self.flower_auth, self.token, self.receiver = flower_auth, token, receiver
        self.traps, self.broker = traps, broker
        self.results: list[Result] = []
        self.photos = fetch()

    def check(self, group: str, name: str, expected: str, probe: Callable[[], str]) -> None:
        try:
            got = probe()
        except Exception as exc:  # noqa: BLE001 - a probe that raises is a mismatch, shown
            got = f"error {type(exc).__name__}: {exc}"[:160]
        result = Result(group, name, expected, got)
        self.results.append(result)
        mark = "ok  " if result.ok else "FAIL"
        print(f"{mark} {group:9} {name:58} expected {expected!r:34} got {got!r}", flush=True)

    # helpers
    def h(self, key: str | None) -> dict[str, str]:
        return {} if key is None else {"X-API-Key": KEYS.get(key, key)}

    def post_score(self, body: Any, key: str | None = "alpha", wait: int = 0, **kw) -> Any:
        query = f"?wait={wait}" if wait else ""
        return requests.post(f"{self.api}/v1/score{query}", json=body, headers=self.h(key),
                             timeout=60, **kw)  # fmt: skip

    @staticmethod
    def code(r: requests.Response) -> str:
        try:
            return f"{r.status_code} {r.json().get('error')}"
        except ValueError:
            return str(r.status_code)

    def image(self, name: str) -> str:
        return base64.b64encode((self.photos / name).read_bytes()).decode()

    def outcome(self, r: requests.Response) -> str:
        view = r.json()
        if r.status_code != 200:
            return self.code(r)
        result = view.get("result") or {}
        return f"{result.get('status')} {result.get('reason')}"

    def raw(self, port: int, data: bytes, hold_s: float = 0.0, read_s: float = 6.0) -> tuple:
        """Send ``data``, keep the connection ``hold_s``, then read: (closed, reply)."""
        with socket.create_connection(("127.0.0.1", port), timeout=read_s) as conn:
            if data:
                conn.sendall(data)
            time.sleep(hold_s)
            reply = b""
            try:
                while chunk := conn.recv(4096):
                    reply += chunk
            except TimeoutError:
                return False, reply
            except ConnectionResetError:
                return True, reply
        return True, reply

    # groups
    def callbacks(self) -> None:
        r, t = self.receiver, self.traps[0].port
        other = self.traps[1].port  # an unlisted port on the listed host
        refused = {
            "backslash before @ (requests reads 127.0.0.2)": f"http://127.0.0.2:{t}\\@127.0.0.1:{r}/x",
            "backslash, bare listed host": f"http://127.0.0.2:{t}\\@127.0.0.1/x",
            "user info naming the listed host": f"http://127.0.0.1:{r}@127.0.0.2:{t}/x",
            "user:password@listed host": f"http://user:pw@127.0.0.1:{r}/x",
            "decimal IP 2130706434": f"http://2130706434:{t}/x",
            "hex IP 0x7f000002": f"http://0x7f000002:{t}/x",
            "octal IP 0177.0.0.2": f"http://0177.0.0.2:{t}/x",
            "short IP 127.2": f"http://127.2:{t}/x",
            "trailing dot 127.0.0.1.": f"http://127.0.0.1.:{r}/x",
            "percent-encoded host": f"http://%31%32%37.0.0.1:{r}/x",
            "host:port followed by a name": f"http://127.0.0.1:{r}.evil.example/x",
            "newline in the URL (header injection)": f"http://127.0.0.1:{r}/x\r\nX-Evil: 1",
            "file scheme": "file:///etc/passwd",
            "gopher scheme": f"gopher://127.0.0.1:{r}/_x",
            "3000-character URL": f"http://127.0.0.1:{r}/" + "a" * 3000,
            "IPv6 zone id": f"http://[fe80::1%25lo]:{r}/",
        }
        for name, url in refused.items():
            self.check("callback", name, "422 invalid_request",
                       lambda u=url: self.code(self.post_score(self.body(u))))  # fmt: skip
        not_allowed = {
            "IPv4-mapped IPv6 of 127.0.0.2": f"http://[::ffff:127.0.0.2]:{t}/x",
            "::1 on the listed port": f"http://[::1]:{r}/x",
            "localhost on the listed port": f"http://localhost:{r}/x",
            "cloud metadata 169.254.169.254": "http://169.254.169.254/latest/meta-data/",
            "private 10.0.0.1": "http://10.0.0.1/hook",
            "compose service name qdrant:6333": "http://qdrant:6333/collections",
            "listed host, unlisted port": f"http://127.0.0.1:{other}/x",
            "listed host, default port": "http://127.0.0.1/x",
            "another loopback address 127.0.0.2": f"http://127.0.0.2:{t}/x",
        }
        for name, url in not_allowed.items():
            self.check("callback", name, "422 callback_not_allowed",
                       lambda u=url: self.code(self.post_score(self.body(u))))  # fmt: skip

    def body(self, url: str, user: str = "u-hook") -> dict[str, Any]:
        return {"image_base64": "AAAA", "user_id": user, "callback_url": url}

    def deliveries(self) -> None:
        image = self.image("obama3.jpg")

        def submit(path: str, user: str) -> str:
            body = {"image_base64": image, "user_id": user,
                    "callback_url": f"http://127.0.0.1:{self.receiver}{path}"}  # fmt: skip
            return self.post_score(body, "alpha", wait=30).json()["job_id"]

        ok_job = submit("/ok", "u-hook-ok")
        redirect_job = submit("/redirect", "u-hook-redirect")

        def webhook(job: str) -> dict[str, Any]:
            deadline = time.monotonic() + 30
            while True:
                view = requests.get(f"{self.api}/v1/jobs/{job}", headers=self.h("alpha"),
                                    timeout=10).json()  # fmt: skip
                if (view.get("webhook") or {}).get("attempts") or time.monotonic() > deadline:
                    return view.get("webhook") or {}
                time.sleep(0.3)

        def signed() -> str:
            from aurum_ml.pipeline.webhooks import SIGNATURE_HEADER, verify

            hook = webhook(ok_job)
            sent = [r for r in _Receiver.received if r[0] == "/ok"]
            good = sent and verify(SECRET, sent[0][1][SIGNATURE_HEADER], sent[0][2])
            return f"{hook} signed={bool(good)}"

        self.check("delivery", "listed receiver: delivered, signed", "{'delivered': True, "
                   "'attempts': 1} signed=True", signed)  # fmt: skip
        self.check("delivery", "302 to a trap: not followed, not told", "{'delivered': False, "
                   "'attempts': 1}", lambda: str(webhook(redirect_job)))  # fmt: skip

    def traps_untouched(self) -> None:
        for trap, where in zip(self.traps, ("127.0.0.2", "an unlisted port"), strict=True):
            self.check("delivery", f"no connection ever reached {where}", "0 connections",
                       lambda t=trap: f"{t.hits} connections")  # fmt: skip

    def tenancy(self) -> None:
        first = self.post_score({"image_base64": self.image("obama.jpg"), "user_id": "u-alpha"},
                                "alpha", wait=30).json()  # fmt: skip
        self.alpha_job = first["job_id"]
        api = self.api

        def get(path: str, key: str | None) -> str:
            return self.code(requests.get(api + path, headers=self.h(key), timeout=30))

        self.check("tenancy", "alpha's user scored", "scored",
                   lambda: str(first["result"]["status"]))  # fmt: skip
        self.check("tenancy", "beta reads alpha's user", "404 not_found",
                   lambda: get("/v1/users/u-alpha/score", "beta"))  # fmt: skip
        self.check("tenancy", "beta asks who resembles alpha's user", "404 not_found",
                   lambda: get("/v1/users/u-alpha/similar", "beta"))  # fmt: skip
        self.check("tenancy", "beta polls alpha's job", "404 not_found",
                   lambda: get(f"/v1/jobs/{self.alpha_job}", "beta"))  # fmt: skip
        self.check(
            "tenancy",
            "beta erases alpha's user",
            "404 not_found",
            lambda: self.code(
                requests.delete(f"{api}/v1/users/u-alpha", headers=self.h("beta"), timeout=30)
            ),
        )
        self.check(
            "tenancy",
            "beta submits a photo as alpha's user",
            "404 not_found",
            lambda: self.code(
                self.post_score(
                    {"image_base64": self.image("biden.jpg"), "user_id": "u-alpha"}, "beta"
                )
            ),
        )
        self.check("tenancy", "alpha/ios (same tenant) reads it", "200 None",
                   lambda: get("/v1/users/u-alpha/score", "alpha/ios"))  # fmt: skip
        self.check("tenancy", "the operator's key reads it", "200 None",
                   lambda: get("/v1/users/u-alpha/score", "ops"))  # fmt: skip
        self.check("tenancy", "no key", "401 unauthorized",
                   lambda: get("/v1/users/u-alpha/score", None))  # fmt: skip
        self.check("tenancy", "a key one character off", "401 unauthorized",
                   lambda: get("/v1/stats", KEYS["alpha"][:-1] + "x"))  # fmt: skip

        def matches() -> str:  # the same person as beta's user: never named to beta
            r = self.post_score({"image_base64": self.image("obama2.jpg"), "user_id": "u-beta"},
                                "beta", wait=30).json()  # fmt: skip
            names = {m["user_id"] for m in r["result"]["matches"]}
            return "named" if "u-alpha" in names else "absent"

        self.check("tenancy", "alpha's user among beta's matches", "absent", matches)

        def board() -> str:
            r = requests.get(f"{api}/v1/leaderboard?limit=100", headers=self.h("beta"),
                             timeout=30).json()  # fmt: skip
            return "listed" if "u-alpha" in {b["user_id"] for b in r} else "absent"

        self.check("tenancy", "alpha's user in beta's leaderboard", "absent", board)

        def host_header() -> str:
            r = requests.post(
                f"{api}/v1/score",
                json={"image_base64": "AAAA", "user_id": "u-host"},
                headers={**self.h("alpha"), "Host": "evil.example"},
                timeout=30,
            )
            return r.json()["status_url"].split("/v1/")[0] or "relative"

        self.check("tenancy", "status_url with a forged Host header", "relative", host_header)

        def flood() -> str:
            with requests.Session() as session:  # one connection, as a client would
                for _ in range(READS_PER_MINUTE + 1):
                    last = session.get(f"{api}/v1/jobs/x", headers=self.h("flood"), timeout=10)
            return f"{last.status_code} retry-after={'Retry-After' in last.headers}"

        self.check("tenancy", f"{READS_PER_MINUTE + 1} reads in a minute", "429 "
                   "retry-after=True", flood)  # fmt: skip

    def flower_clean(self, when: str) -> None:
        def tasks() -> str:
            seen = requests.get(f"{self.flower}/api/tasks", auth=self.flower_auth, timeout=10)
            text = seen.text
            fields = ("'matches'", "'landmarks'", "'score'", "'vibes'", "'quality'", "'box'")
            leaks = [w for w in ("u-alpha", "u-beta", *fields) if w in text]
            return f"{seen.status_code} leaks={leaks}"

        self.check("flower", f"task list {when}", "200 leaks=[]", tasks)

    def flower_auth_required(self) -> None:
        for path in ("/api/tasks", "/api/workers", "/"):
            self.check(
                "flower",
                f"{path} without credentials",
                "401",
                lambda p=path: str(requests.get(self.flower + p, timeout=10).status_code),
            )

    def images(self) -> None:
        for name, (data, expected) in bombs().items():
            body = {"image_base64": base64.b64encode(data).decode(), "user_id": "u-bomb"}
            self.check(
                "image",
                name,
                expected,
                lambda b=body: self.outcome(self.post_score(b, "alpha", wait=30)),
            )
        big = {"image_base64": "A" * (15 * 1024 * 1024), "user_id": "u-bomb"}
        self.check("image", "15 MB of base64", "413 image_too_large",
                   lambda: self.code(self.post_score(big)))  # fmt: skip
        port = int(self.api.rsplit(":", 1)[1])
        head = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"X-API-Key: " + KEYS["alpha"].encode() +
                b"\r\nContent-Length: 1000000000\r\n\r\n")  # fmt: skip
        self.check("image", "Content-Length 1 GB, no body", "413",
                   lambda: self.raw(port, head, read_s=5)[1][9:12].decode())  # fmt: skip

    def slow(self) -> None:
        api = int(self.api.rsplit(":", 1)[1])
        detection = int(self.services["detection"].rsplit(":", 1)[1])
        self.check("slow", "API: a connection that sends nothing", "closed",
                   lambda: "closed" if self.raw(api, b"", read_s=8)[0] else "open")  # fmt: skip
        self.check(
            "slow",
            "service: a connection that sends nothing",
            "closed",
            lambda: "closed" if self.raw(detection, b"", read_s=8)[0] else "open",
        )

        def trickle() -> str:
            with socket.create_connection(("127.0.0.1", api), timeout=1) as conn:
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaa":
                    try:
                        conn.sendall(bytes([byte]))
                        time.sleep(0.25)
                    except OSError:
                        return "closed"
            return "open"

        self.check("slow", "API: a request head one byte every 0.25 s", "closed", trickle)
        head = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"X-API-Key: " + KEYS["alpha"].encode() + b"\r\nContent-Length: 5000\r\n\r\n"
                b'{"image_base64": "')  # fmt: skip
        self.check("slow", "API: a body that stops arriving", "408",
                   lambda: self.raw(api, head, read_s=8)[1][9:12].decode())  # fmt: skip

    def json_bodies(self) -> None:
        as_json = {**self.h("alpha"), "Content-Type": "application/json"}

        def send(data: bytes, headers: dict[str, str] = as_json) -> str:
            return self.code(requests.post(f"{self.api}/v1/score", data=data, headers=headers,
                                           timeout=30))  # fmt: skip

        cases = {
            "nested 5000 deep": (b"[" * 5000 + b"]" * 5000, "422 invalid_request"),
            "a key twice": (b'{"image_base64":"AAAA","user_id":"a","user_id":"b"}',
                            "422 invalid_request"),
            "an array": (b"[]", "422 invalid_request"),
            "a number for the user": (b'{"image_base64":"AAAA","user_id":1e999}',
                                      "422 invalid_request"),
            "a string for the flag": (
                b'{"image_base64":"AAAA","user_id":"u","allow_multiple_faces":"yes"}',
                "422 invalid_request",
            ),
            "an unknown field": (b'{"image_base64":"AAAA","user_id":"u","admin":true}',
                                 "422 invalid_request"),
            "a user id with a newline": (b'{"image_base64":"AAAA","user_id":"u\\nINFO x"}',
                                         "422 invalid_request"),
            "a stored-image reference as the image": (
                json.dumps({"image_base64": "aurum-image:sha256:" + "ab" * 32,
                            "user_id": "u"}).encode(), "422 invalid_request"),  # fmt: skip
        }  # fmt: skip
        for name, (data, expected) in cases.items():
            self.check("json", name, expected, lambda d=data: send(d))
        self.check(
            "json",
            "JSON sent as text/plain",
            "415 unsupported_media_type",
            lambda: send(b'{"user_id":"u"}', {**self.h("alpha"), "Content-Type": "text/plain"}),
        )

    def services_edge(self) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        detect, extract = self.services["detection"], self.services["embedding"]

        def post(url: str, body: Any, headers: dict[str, str]) -> str:
            return self.code(requests.post(url, json=body, headers=headers, timeout=30))

        self.check(
            "service",
            "detect without a token",
            "401 unauthorized",
            lambda: post(f"{detect}/detect", {"image_base64": "AAAA"}, {}),
        )
        self.check("service", "detect with a wrong token", "401 unauthorized",
                   lambda: post(f"{detect}/detect", {"image_base64": "AAAA"},
                                {"Authorization": "Bearer nope"}))  # fmt: skip
        image = self.image("obama.jpg")
        for name, landmarks in {
            "landmarks of one coordinate": [[1], [2], [3], [4], [5]],
            "a landmark at 1e30": [[1e30, 1], [2, 2], [3, 3], [4, 4], [5, 5]],
        }.items():
            face = {"bounding_box": [0, 0, 100, 100], "landmarks": landmarks}
            self.check(
                "service",
                name,
                "422 invalid_request",
                lambda f=face: post(f"{extract}/extract", {"image_base64": image, "face": f}, auth),
            )
        self.check(
            "service",
            "JSON nested 5000 deep",
            "422 invalid_request",
            lambda: self.code(
                requests.post(
                    f"{detect}/detect",
                    data=b"[" * 5000 + b"]" * 5000,
                    headers={**auth, "Content-Type": "application/json"},
                    timeout=30,
                )
            ),
        )
        port = int(detect.rsplit(":", 1)[1])
        head = (b"POST /detect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                self.token.encode() + b"\r\nContent-Length: 900000000\r\n\r\n")  # fmt: skip
        self.check("service", "Content-Length 900 MB, no body", "413",
                   lambda: self.raw(port, head, read_s=5)[1][9:12].decode())  # fmt: skip

    def messages(self) -> None:
        from aurum_ml.errors import InvalidRequest
        from aurum_ml.pipeline.celery_app import app
        from aurum_ml.pipeline.tasks import score_face

        def outcome(result: Any, seconds: float = 30) -> str:
            try:
                out = result.get(timeout=seconds, propagate=False, disable_sync_subtasks=False)
            except Exception as exc:  # noqa: BLE001 - celery's TimeoutError: nothing came
                return f"no answer ({type(exc).__name__})"
            if isinstance(out, dict):
                return f"{out.get('status')} {out.get('reason')}"
            return f"{result.state} {type(out).__name__}"

        self.check(
            "message",
            "score_face with no arguments",
            "rejected invalid_request",
            lambda: outcome(app.send_task("aurum_ml.score_face", args=[], kwargs={})),
        )
        self.check(
            "message",
            "score_face with an extra argument",
            "rejected invalid_request",
            lambda: outcome(app.send_task("aurum_ml.score_face", args=["AAAA", "u", None, "more"])),
        )
        self.check(
            "message",
            "score_face with an unknown keyword",
            "rejected invalid_request",
            lambda: outcome(
                app.send_task(
                    "aurum_ml.score_face", args=["AAAA"], kwargs={"user_id": "u", "as_admin": True}
                )
            ),
        )
        self.check(
            "message",
            "a reference to an image not staged for the job",
            "FAILURE ImageExpired",
            lambda: outcome(
                app.send_task("aurum_ml.score_face", args=["aurum-image:sha256:" + "cd" * 32, "u"])
            ),
        )
        self.check(
            "message",
            "a pickle message (never run)",
            "no answer (TimeoutError)",
            lambda: outcome(
                app.send_task("aurum_ml.score_face", args=["AAAA", "u"], serializer="pickle"),
                seconds=5,
            ),
        )

        def caller_pickle() -> str:
            try:
                score_face.apply_async(("AAAA", "u"), serializer="pickle")
            except InvalidRequest as exc:
                return f"InvalidRequest {exc.reason}"
            return "published"

        self.check("message", "the caller asked to publish pickle", "InvalidRequest "
                   "invalid_request", caller_pickle)  # fmt: skip
        self.check(
            "message",
            "the workers still answer after all that",
            "200",
            lambda: str(requests.get(f"{self.api}/readyz", timeout=10).status_code),
        )

    def erasure(self) -> None:
        api = self.api
        gone = requests.delete(f"{api}/v1/users/u-alpha", headers=self.h("alpha/ios"), timeout=30)
        job = gone.json()["job_id"]

        def done() -> str:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                view = requests.get(f"{api}/v1/jobs/{job}", headers=self.h("alpha/ios"),
                                    timeout=10).json()  # fmt: skip
                if view["state"] in ("done", "failed"):
                    return view["state"]
                time.sleep(0.3)
            return "timeout"

        self.check("erasure", "alpha's other key erases alpha's user", "done", done)
        time.sleep(1)
        client = redis.Redis.from_url(self.broker)
        self.check("erasure", "the user's id anywhere in Redis", "[]",
                   lambda: str(redis_mentions(client, "u-alpha")))  # fmt: skip
        self.flower_clean("after the erasure")


def write_report(path: Path, results: list[Result], seconds: float) -> None:
    failed = [r for r in results if not r.ok]
    lines = [
        "# Security probes (`make security`)",
        "",
        f"{len(results)} hostile requests and messages against the whole stack (`make up`) on "
        f"loopback; {len(results) - len(failed)} answered as expected, {len(failed)} did not "
        f"({seconds:.0f} s, generated by bench/security.py).",
        "",
        "| group | probe | expected | got |",
        "|---|---|---|---|",
    ]
    for r in results:
        got = r.got if r.ok else f"**{r.got}**"
        lines.append(f"| {r.group} | {r.name} | `{r.expected}` | `{got}` |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args()
    started = time.monotonic()
    broker = claim_redis_db()
    client = redis.Redis.from_url(broker)
    client.flushdb()
    client.set(CLAIM_KEY, os.getpid(), ex=7200)
    ports = {name: str(free_port()) for name in PORTS}
    traps = [Trap("127.0.0.2"), Trap("127.0.0.1")]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.trap_url = f"http://127.0.0.2:{traps[0].port}/stolen"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    receiver = server.server_address[1]
    folder = Path(tempfile.mkdtemp(prefix="aurum-security-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    env.update(
        ports,
        AURUM_BROKER_URL=broker,
        AURUM_DATA_DIR=str(folder / "data"),
        AURUM_API_KEYS=",".join(f"{n}:{k}" for n, k in KEYS.items()),
        AURUM_API_ADMIN_KEYS="ops",
        AURUM_API_READ_RATE_LIMIT=f"{READS_PER_MINUTE}/minute",
        AURUM_API_RATE_LIMIT="120/minute",
        AURUM_WEBHOOK_SECRET=SECRET,
        AURUM_WEBHOOK_ALLOWED_HOSTS=f"127.0.0.1:{receiver}",
        COOLDOWN_DAYS="0",
        HTTP_HEADER_TIMEOUT="2",
        HTTP_BODY_TIMEOUT="3",
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("AURUM_")})
    results: list[Result] = []
    try:
        with stack(env, folder):
            creds = dict(
                line.split("=", 1) for line in (folder / "stack" / "env").read_text().splitlines()
            )
            api = f"http://127.0.0.1:{ports['API_PORT']}"
            services = {
                "detection": f"http://127.0.0.1:{ports['DETECTION_PORT']}",
                "embedding": f"http://127.0.0.1:{ports['EMBEDDING_PORT']}",
            }
            flower = f"http://127.0.0.1:{ports['FLOWER_PORT']}"
            wait_for(_answers(f"{api}/readyz"), "the API", 120, 0.3)
            for url in services.values():
                wait_for(_answers(f"{url}/health"), url, 120, 0.3)
            wait_for(_answers(f"{flower}/healthcheck"), "Flower", 60, 0.3)
            user, password = creds["FLOWER_BASIC_AUTH"].split(":", 1)
            probes = Probes(api, services, flower, (user, password),
                            creds["ML_SERVICE_TOKEN"], receiver, traps, broker)  # fmt: skip
            results = probes.results
            probes.callbacks()
            probes.tenancy()
            probes.deliveries()
            probes.flower_auth_required()
            probes.flower_clean("after the jobs")
            probes.images()
            probes.slow()
            probes.json_bodies()
            probes.services_edge()
            probes.messages()
            probes.erasure()
            time.sleep(1)
            probes.traps_untouched()
    finally:
        server.shutdown()
        for trap in traps:
            trap.close()
        client.flushdb()
    seconds = time.monotonic() - started
    failed = [r for r in results if not r.ok]
    print(f"\n{len(results)} probes, {len(results) - len(failed)} as expected, "
          f"{len(failed)} not ({seconds:.0f} s)")  # fmt: skip
    if args.report:
        write_report(args.report, results, seconds)
    if failed or len(results) < 60:
        sys.exit(1)


if __name__ == "__main__":
    main()
