"""Where a webhook may go (#24): one parser for the check and the send, exact host and port,
no loopback/private/link-local address unless that address is listed — and a trap listener
that proves a refused URL never gets a connection, whatever its spelling."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aurum_ml.callbacks import Refused, parse_allow_list, parse_callback
from aurum_ml.pipeline.webhooks import SIGNATURE_HEADER, HookRecords, deliver, verify

ALLOWED = parse_allow_list("127.0.0.1:18081, hooks.example.com, [::1]:9000")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2:18081\\@127.0.0.1:18081/x",  # requests ends the host at the backslash
        "http://127.0.0.2:18081\\@127.0.0.1/x",
        "http://127.0.0.1:18081@127.0.0.2:18081/x",  # user info
        "http://user:pw@127.0.0.1:18081/x",
        "http://2130706433:18081/",  # 127.0.0.1 as one number
        "http://0x7f.0.0.1:18081/",
        "http://0x7f000001:18081/",
        "http://127.1:18081/",
        "http://0177.0.0.1:18081/",
        "http://127.0.0.1.:18081/",
        "http://127.0.0.1:18081 /x",
        "http://127.0.0.1:18081/\tx",
        "http://[::1%25lo]:9000/",
        "ftp://127.0.0.1:18081/",
        "http:127.0.0.1:18081/",
        "//127.0.0.1:18081/",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:18081/é",
    ],
)
def test_spellings_that_could_be_read_two_ways_are_refused(url):
    with pytest.raises(Refused) as refused:
        ALLOWED.check(parse_callback(url))
    assert refused.value.reason == "invalid_request"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",  # a bare host... is listed with its port only
        "http://127.0.0.1:18082/x",  # another port
        "http://hooks.example.com:8080/x",  # a bare host means 80/443
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
        "http://qdrant:6333/",
        "http://localhost:18081/",
        "http://[::ffff:127.0.0.1]:18081/",
        "http://[::1]:9001/",
    ],
)
def test_only_exact_listed_hosts_and_ports_pass(url):
    with pytest.raises(Refused) as refused:
        ALLOWED.check(parse_callback(url))
    assert refused.value.reason == "callback_not_allowed"


def test_what_is_listed_passes_as_it_is_read():
    ok = ALLOWED.check(parse_callback("http://127.0.0.1:18081/hook?a=1"))
    assert (ok.host, ok.port, ok.target, ok.host_header) == (
        "127.0.0.1",
        18081,
        "/hook?a=1",
        "127.0.0.1:18081",
    )
    assert ALLOWED.check(parse_callback("https://HOOKS.example.com/h")).port == 443
    assert ALLOWED.check(parse_callback("http://hooks.example.com/h")).port == 80
    assert ALLOWED.check(parse_callback("http://[::1]:9000/")).host_header == "[::1]:9000"


def test_a_name_resolving_to_an_unlisted_private_address_is_refused():
    names = parse_allow_list("localhost:18081")
    with pytest.raises(Refused, match="not public"):
        names.resolve(parse_callback("http://localhost:18081/"))  # 127.0.0.1 / ::1
    both = parse_allow_list("localhost:18081,127.0.0.1:18081,[::1]:18081")
    assert str(both.resolve(parse_callback("http://localhost:18081/"))) in ("127.0.0.1", "::1")


def test_a_public_address_passes_the_address_rule_without_a_lookup():
    public = parse_allow_list("93.184.216.34:443")
    assert str(public.resolve(parse_callback("https://93.184.216.34/"))) == "93.184.216.34"


def test_a_malformed_allow_list_entry_is_named():
    with pytest.raises(ValueError, match="'http://x'"):
        parse_allow_list("127.0.0.1, http://x")


# --- delivery: the trap ---------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def receiver() -> Iterator[tuple[int, list]]:
    received: list = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()


@pytest.fixture()
def trap() -> Iterator[tuple[int, list[str]]]:
    """A listener on 127.0.0.2 that records every connection it is offered."""
    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))
    sock.listen(16)
    sock.settimeout(0.1)
    hits: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = sock.accept()
            except TimeoutError:
                continue
            hits.append(str(peer))
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1], hits
    stop.set()
    thread.join()
    sock.close()


def test_delivery_reaches_the_listed_receiver_and_never_the_trap(
    receiver, trap, settings, redis_client
):
    port, received = receiver
    trap_port, hits = trap
    allowed = f"127.0.0.1:{port}"
    cfg = settings.model_copy(update={"webhook_allowed_hosts": allowed})
    hooks = HookRecords(redis_client, 60)
    tricks = [
        f"http://127.0.0.2:{trap_port}\\@127.0.0.1:{port}/x",
        f"http://127.0.0.2:{trap_port}\\@127.0.0.1/x",
        f"http://127.0.0.1:{port}@127.0.0.2:{trap_port}/x",
        f"http://127.0.0.2:{trap_port}/x",
        f"http://2130706434:{trap_port}/x",  # 127.0.0.2 as a number
        f"http://127.2:{trap_port}/x",
        f"http://localhost:{trap_port}/x",
    ]
    for n, url in enumerate(tricks):
        job = f"trap-{n}"
        hooks.register(job, url)  # as if the allow-list had let it in at submission
        record = hooks.get(job)
        assert record is not None and hooks.claim(job, 1, lease_s=30)  # as notify does
        assert deliver(job, record, hooks, cfg, b"{}") == "final", url
        assert hooks.get(job).public() == {"delivered": False, "attempts": 1}
    hooks.register("fine", f"http://127.0.0.1:{port}/hook")
    assert deliver("fine", hooks.get("fine"), hooks, cfg, b'{"ok":1}') == "delivered"
    time.sleep(0.3)  # a connection to the trap would have been accepted by now
    assert hits == []
    ((path, headers, body),) = received
    assert path == "/hook" and body == b'{"ok":1}' and headers["Host"] == allowed
    assert verify(settings.webhook_secret, headers[SIGNATURE_HEADER], body)
    hooks.drop([f"trap-{n}" for n in range(len(tricks))] + ["fine"])
