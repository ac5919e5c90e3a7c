"""The HTTP API (#10) through a real uvicorn server (`aurum-ml serve api`, a subprocess on a
loopback port) and a real worker on Redis; webhooks received by a loopback HTTP server."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from aurum_ml.pipeline.webhooks import SIGNATURE_HEADER, verify

from samples import b64, raw_reply

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos  # noqa: E402

KEYS = {
    "miniapp": "k-miniapp-0123456789abcdef",
    "miniapp/ios": "k-miniapp-ios-0123456789abcdef",  # the same tenant: miniapp
    "other": "k-other-0123456789abcdef",
    "flood": "k-flood-0123456789abcdef",
    "ops": "k-ops-0123456789abcdef",  # an operator's key (AURUM_API_ADMIN_KEYS)
}
SECRET = os.environ["AURUM_WEBHOOK_SECRET"]
TIMEOUT = 90
# the one receiver port the tests' allow-list names (tests/conftest.py)
WEBHOOK_RECEIVER_PORT = int(os.environ["AURUM_TEST_WEBHOOK_PORT"])
API_PROCESS: dict[str, subprocess.Popen] = {}  # the module's API server, by its URL


def _serve_api(env: dict[str, str], log_path, *options: str) -> tuple[subprocess.Popen, str]:
    """`aurum-ml serve api` on a free loopback port, once it answers /healthz."""
    port = chaos.free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "aurum_ml.surfaces.cli", "serve", "api", "--port", str(port),
             *options],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, Path(log_path).read_text()[-2000:]  # it died
        try:
            return requests.get(f"{url}/healthz", timeout=1).ok
        except requests.ConnectionError:
            return False

    chaos.wait_for(answers, "the API to start", 90, 0.2)
    return process, url


@pytest.fixture(scope="module")
def api(pipeline_worker, tmp_path_factory) -> Iterator[str]:
    """`aurum-ml serve api` on a free loopback port, keys set, 20 submits/min per key."""
    env = dict(
        os.environ,
        AURUM_API_KEYS=",".join(f"{n}:{k}" for n, k in KEYS.items()),
        AURUM_API_RATE_LIMIT="20/minute",
        AURUM_API_READ_RATE_LIMIT="300/minute",
        AURUM_API_ADMIN_KEYS="ops",
    )
    process, url = _serve_api(env, tmp_path_factory.mktemp("api") / "api.log")
    API_PROCESS[url] = process
    yield url
    process.terminate()
    process.wait(20)


def _h(name: str = "miniapp") -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


def _poll(url: str, status_url: str, key: str = "miniapp") -> dict:
    deadline = time.monotonic() + TIMEOUT
    while True:
        view = requests.get(url + status_url, headers=_h(key), timeout=10).json()
        if view["state"] in ("done", "failed"):
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.2)


def test_submit_poll_result(api, photos):
    image = b64((photos / "obama.jpg").read_bytes())
    r = requests.post(
        f"{api}/v1/score",
        json={"image_base64": image, "user_id": "u-api-1"},
        headers=_h(),
        timeout=30,
    )
    assert r.status_code == 202, r.text
    job = r.json()
    # relative: never built from the request's Host header (#24)
    assert (
        job["state"] in ("queued", "running") and job["status_url"] == f"/v1/jobs/{job['job_id']}"
    )
    view = _poll(api, job["status_url"])
    assert view["state"] == "done" and view["result"]["status"] == "scored"
    assert view["result"]["user_id"] == "u-api-1" and view["result"]["job_id"] == job["job_id"]


def test_wait_answers_with_the_result(api, photos):
    image = b64((photos / "biden.jpg").read_bytes())
    r = requests.post(
        f"{api}/v1/score?wait=30",
        json={"image_base64": image, "user_id": "u-api-2"},
        headers=_h(),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "done" and r.json()["result"]["status"] == "scored"


def test_multipart_upload(api, photos):
    r = requests.post(
        f"{api}/v1/score?wait=30",
        files={"image": ("obama2.jpg", (photos / "obama2.jpg").read_bytes(), "image/jpeg")},
        data={"user_id": "u-api-3"},
        headers=_h(),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["result"]["status"] == "scored"


def test_bad_input_is_a_typed_answer(api, photos):
    not_image = requests.post(
        f"{api}/v1/score?wait=30",
        json={"image_base64": b64(b"not an image"), "user_id": "u-api-4"},
        headers=_h(),
        timeout=60,
    )
    assert not_image.status_code == 200
    result = not_image.json()["result"]
    assert (result["status"], result["reason"]) == ("rejected", "invalid_image")

    cases = [
        ({"image_base64": "AAAA"}, "user_id"),  # missing field
        ({"image_base64": "AAAA", "user_id": ""}, "user_id"),
        ({"image_base64": "AAAA", "user_id": "u", "allow_multiple_faces": "yes"}, "allow"),
        ({"image_base64": "AAAA", "user_id": "u", "surprise": 1}, "surprise"),
        ({"image_base64": "aurum-image:sha256:" + "ab" * 32, "user_id": "u"}, "reference"),
    ]
    for body, mentioned in cases:
        r = requests.post(f"{api}/v1/score", json=body, headers=_h("other"), timeout=10)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"] == "invalid_request" and mentioned in r.json()["message"]
    as_json = _h("other") | {"Content-Type": "application/json"}
    r = requests.post(f"{api}/v1/score", data=b"{not json", headers=as_json, timeout=10)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    deep = b"[" * 5000 + b"]" * 5000  # a 500 before #24 (RecursionError)
    r = requests.post(f"{api}/v1/score", data=deep, headers=as_json, timeout=10)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    twice = b'{"image_base64": "AAAA", "user_id": "a", "user_id": "b"}'
    r = requests.post(f"{api}/v1/score", data=twice, headers=as_json, timeout=10)
    assert r.status_code == 422 and "twice" in r.json()["message"]
    plain = _h("other") | {"Content-Type": "text/plain"}
    r = requests.post(f"{api}/v1/score", data=b'{"user_id": "a"}', headers=plain, timeout=10)
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"


def test_keys_owners_and_limits(api, photos):
    image = b64((photos / "obama3.jpg").read_bytes())
    assert requests.post(f"{api}/v1/score", json={}, timeout=10).status_code == 401
    wrong = requests.get(
        f"{api}/v1/stats", headers={"X-API-Key": "k-miniapp-0123456789abcdeX"}, timeout=10
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"

    r = requests.post(
        f"{api}/v1/score",
        json={"image_base64": image, "user_id": "u-api-5"},
        headers=_h(),
        timeout=30,
    )
    mine = r.json()["status_url"]
    assert requests.get(api + mine, headers=_h("other"), timeout=10).status_code == 404
    assert requests.get(f"{api}/v1/jobs/never-issued", headers=_h(), timeout=10).status_code == 404
    assert _poll(api, mine)["state"] == "done"

    reply = raw_reply(
        "127.0.0.1",
        int(api.rsplit(":", 1)[1]),
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-API-Key: " + KEYS["other"].encode() + b"\r\nContent-Length: 1000000000\r\n\r\n",
    )  # and no body: the answer must not wait for one
    assert reply.startswith(b"HTTP/1.1 413") and b"image_too_large" in reply

    answers = [
        requests.post(f"{api}/v1/score", json={}, headers=_h("flood"), timeout=10)
        for _ in range(21)
    ]
    assert [a.status_code for a in answers[:20]] == [422] * 20
    assert answers[20].status_code == 429 and answers[20].json()["error"] == "rate_limited"
    assert 1 <= int(answers[20].headers["Retry-After"]) <= 60
    # the limit is per key: the others still get through
    assert requests.get(f"{api}/v1/stats", headers=_h("other"), timeout=30).status_code == 200


class _Receiver(BaseHTTPRequestHandler):
    """Answers each path with its scripted statuses (the last one repeats); records POSTs."""

    script: dict[str, list[int]] = {}
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, dict(self.headers), body))
        statuses = self.script.get(self.path, [200])
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    """On the one port the tests' allow-list names (conftest: 127.0.0.1:port)."""
    server = ThreadingHTTPServer(("127.0.0.1", WEBHOOK_RECEIVER_PORT), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Receiver
    server.shutdown()


def _webhook_of(api: str, job_id: str, expected: dict) -> dict:
    """The job's view once its webhook shows ``expected`` (an attempt is counted as its
    POST leaves, so a view mid-POST shows it counted and not yet delivered)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        view = requests.get(f"{api}/v1/jobs/{job_id}", headers=_h(), timeout=10).json()
        hook = view.get("webhook") or {}
        if hook == expected or hook.get("attempts", 0) > expected["attempts"]:
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.2)


def test_webhooks_signed_retried_and_refused(api, receiver, photos):
    base, handler = receiver
    handler.script.update({"/ok": [200], "/flaky": [503, 503, 200], "/refuse": [400]})
    image = b64((photos / "obama.jpg").read_bytes())

    def submit(path: str, user: str) -> str:
        body = {"image_base64": image, "user_id": user, "callback_url": f"{base}{path}"}
        r = requests.post(f"{api}/v1/score", json=body, headers=_h(), timeout=30)
        assert r.status_code == 202, r.text
        return r.json()["job_id"]

    ok, flaky, refused = (
        submit("/ok", "u-hook-1"),
        submit("/flaky", "u-hook-2"),
        submit("/refuse", "u-hook-3"),
    )
    view = _webhook_of(api, ok, {"delivered": True, "attempts": 1})
    assert view["webhook"] == {"delivered": True, "attempts": 1}
    ((path, headers, body),) = [r for r in handler.received if r[0] == "/ok"]
    assert verify(SECRET, headers[SIGNATURE_HEADER], body)
    assert not verify("another-secret", headers[SIGNATURE_HEADER], body)
    sent = json.loads(body)
    assert sent["job_id"] == ok and sent["state"] == "done"
    assert sent["result"] == view["result"]  # the result itself, as polled

    flaky_done = {"delivered": True, "attempts": 3}
    assert _webhook_of(api, flaky, flaky_done)["webhook"] == flaky_done
    assert [r[0] for r in handler.received].count("/flaky") == 3

    # the far side's answer is not told to the caller (it would map ports): only the fact
    refused_done = {"delivered": False, "attempts": 1}
    assert _webhook_of(api, refused, refused_done)["webhook"] == refused_done
    time.sleep(3)  # a 400 is final: never retried
    assert [r[0] for r in handler.received].count("/refuse") == 1

    outside = {
        "image_base64": image,
        "user_id": "u-hook-4",
        "callback_url": "http://localhost:9/hook",
    }
    r = requests.post(f"{api}/v1/score", json=outside, headers=_h(), timeout=10)
    assert r.status_code == 422 and r.json()["error"] == "callback_not_allowed"


def test_queries_and_forget_via_delete_leave_nothing(api, photos, runtime, redis_client):
    image = b64((photos / "obama3.jpg").read_bytes())
    r = requests.post(
        f"{api}/v1/score?wait=30",
        json={"image_base64": image, "user_id": "u-api-del"},
        headers=_h(),
        timeout=60,
    )
    scored = r.json()
    assert scored["result"]["status"] == "scored"
    latest = requests.get(f"{api}/v1/users/u-api-del/score", headers=_h(), timeout=60).json()
    assert latest["point_id"] == scored["result"]["point_id"]
    near = requests.get(f"{api}/v1/users/u-api-del/similar?k=2", headers=_h(), timeout=60)
    assert near.status_code == 200 and len(near.json()) <= 2
    board = requests.get(f"{api}/v1/leaderboard?limit=3", headers=_h(), timeout=60)
    assert board.status_code == 200 and [b["position"] for b in board.json()] == [1, 2, 3]
    assert "models" in requests.get(f"{api}/v1/stats", headers=_h(), timeout=60).json()

    gone = requests.delete(f"{api}/v1/users/u-api-del", headers=_h(), timeout=30)
    assert gone.status_code == 202
    view = _poll(api, gone.json()["status_url"])
    assert view["state"] == "done" and view["result"]["points"] == 1
    assert runtime.vectors.user_points("u-api-del") == []
    assert chaos.redis_mentions(redis_client, "u-api-del") == []
    from aurum_ml.pipeline.celery_app import app

    assert app.AsyncResult(scored["job_id"]).state == "PENDING"  # its result is forgotten
    # its status URL says so, instead of "queued" for ever
    erased_job = requests.get(api + scored["status_url"], headers=_h(), timeout=10)
    assert erased_job.status_code == 404 and erased_job.json()["error"] == "not_found"
    after = requests.get(f"{api}/v1/users/u-api-del/score", headers=_h(), timeout=60)
    assert after.status_code == 404 and after.json()["error"] == "not_found"
    bad = requests.get(f"{api}/v1/users/%20x/score", headers=_h(), timeout=10)
    assert bad.status_code == 422


def test_health_readiness_and_schema(api):
    assert requests.get(f"{api}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{api}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"broker": "ok", "result_backend": "ok", "state": "ok"}
    schema = requests.get(f"{api}/openapi.json", timeout=5).json()
    for path in (
        "/v1/score",
        "/v1/jobs/{job_id}",
        "/v1/users/{user_id}/score",
        "/v1/users/{user_id}/similar",
        "/v1/leaderboard",
        "/v1/stats",
        "/v1/users/{user_id}",
        "/healthz",
        "/readyz",
    ):
        assert path in schema["paths"], path
    body = schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert {"401", "413", "422", "429"} <= set(schema["paths"]["/v1/score"]["post"]["responses"])
    assert body["application/json"]["schema"]["required"] == ["image_base64", "user_id"]
    # every $ref resolves (a dangling one stopped openapi-typescript: #27)
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(schema))
    assert refs and set(refs) <= set(schema["components"]["schemas"]), set(refs)


def test_the_api_serves_its_request_metrics_by_route_template(api):
    requests.get(f"{api}/v1/jobs/not-a-job-1", headers=_h(), timeout=10)
    requests.get(f"{api}/v1/jobs/not-a-job-2", timeout=10)  # no key: 401
    text = requests.get(f"{api}/metrics", timeout=10).text
    assert 'aurum_api_requests_total{method="GET",route="/v1/jobs/{job_id}",status="401"}' in text
    assert 'aurum_api_request_duration_seconds_count{route="/v1/jobs/{job_id}"}' in text
    assert "not-a-job" not in text  # templates, never ids


def test_with_several_workers_the_metrics_sum_them_all(tmp_path):
    """`serve api --workers 2`: whichever process answers /metrics, it counts every
    process's requests (prometheus_client's multiprocess mode)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process, url = _serve_api(env, tmp_path / "api.log", "--workers", "2")
    try:
        for _ in range(30):  # fresh connections: the kernel spreads them over both workers
            assert requests.get(f"{url}/healthz", timeout=5, headers={"Connection": "close"}).ok
        line = 'aurum_api_requests_total{method="GET",route="/healthz",status="200"}'
        for _ in range(4):  # whichever worker answers, the same sum
            page = requests.get(f"{url}/metrics", timeout=5, headers={"Connection": "close"})
            counted = [x for x in page.text.splitlines() if x.startswith(line)]
            assert counted and float(counted[0].split()[-1]) == 31.0, counted
    finally:
        process.terminate()
        process.wait(30)


def test_the_api_refuses_a_public_address_without_keys():
    env = {k: v for k, v in os.environ.items() if k != "AURUM_API_KEYS"}
    out = subprocess.run(
        [sys.executable, "-m", "aurum_ml.surfaces.cli", "serve", "api", "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "without keys" in out.stderr


def test_a_key_sees_and_erases_only_its_tenants_users(api, photos):
    """#24: users are scoped to the tenant that submitted them; another tenant's key gets
    404 — read, similar, erase and submit alike — and never sees them in a leaderboard,
    a similar list or a match; an operator's key (AURUM_API_ADMIN_KEYS) sees every user."""
    image = b64((photos / "obama2.jpg").read_bytes())
    r = requests.post(
        f"{api}/v1/score?wait=30",
        json={"image_base64": image, "user_id": "u-tenant-a"},
        headers=_h("miniapp"),
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["result"]["status"] == "scored", r.text
    theirs = requests.post(  # the same person, another tenant's user
        f"{api}/v1/score?wait=30",
        json={"image_base64": b64((photos / "obama.jpg").read_bytes()), "user_id": "u-tenant-b"},
        headers=_h("other"),
        timeout=60,
    ).json()
    assert theirs["result"]["status"] == "scored"
    assert "u-tenant-a" not in {m["user_id"] for m in theirs["result"]["matches"]}

    for path in ("/v1/users/u-tenant-a/score", "/v1/users/u-tenant-a/similar"):
        assert requests.get(api + path, headers=_h("other"), timeout=30).status_code == 404
        assert requests.get(api + path, headers=_h("miniapp/ios"), timeout=30).status_code == 200
        assert requests.get(api + path, headers=_h("ops"), timeout=30).status_code == 200
    gone = requests.delete(f"{api}/v1/users/u-tenant-a", headers=_h("other"), timeout=30)
    assert gone.status_code == 404 and gone.json()["error"] == "not_found"
    taken = requests.post(
        f"{api}/v1/score",
        json={"image_base64": image, "user_id": "u-tenant-a"},
        headers=_h("other"),
        timeout=30,
    )
    assert taken.status_code == 404
    near = requests.get(f"{api}/v1/users/u-tenant-b/similar?k=50", headers=_h("other"), timeout=30)
    assert "u-tenant-a" not in {n["user_id"] for n in near.json()}
    board = requests.get(f"{api}/v1/leaderboard?limit=100", headers=_h("other"), timeout=30)
    assert {b["user_id"] for b in board.json()} == {"u-tenant-b"}
    everyone = requests.get(f"{api}/v1/leaderboard?limit=100", headers=_h("ops"), timeout=30)
    assert {"u-tenant-a", "u-tenant-b"} <= {b["user_id"] for b in everyone.json()}
    # the user is still there for its own tenant
    mine = requests.get(f"{api}/v1/users/u-tenant-a/score", headers=_h("miniapp"), timeout=30)
    assert mine.status_code == 200 and mine.json()["user_id"] == "u-tenant-a"
    ops_near = requests.get(
        f"{api}/v1/users/u-tenant-b/similar?k=50", headers=_h("ops"), timeout=30
    )
    assert "u-tenant-a" in {n["user_id"] for n in ops_near.json()}
    for user, key in (("u-tenant-a", "miniapp/ios"), ("u-tenant-b", "other")):
        erased = requests.delete(f"{api}/v1/users/{user}", headers=_h(key), timeout=30)
        assert erased.status_code == 202
        assert _poll(api, erased.json()["status_url"], key)["state"] == "done"


def test_reads_and_erasures_are_rate_limited_too(api):
    answers = [
        requests.get(f"{api}/v1/jobs/none", headers=_h("flood"), timeout=10).status_code
        for _ in range(301)
    ]
    assert answers[:300] == [404] * 300 and answers[300] == 429
    erasures = [
        requests.delete(f"{api}/v1/users/nobody", headers=_h("flood"), timeout=10)
        for _ in range(21)
    ]
    assert [e.status_code for e in erasures[:20]] == [404] * 20
    assert erasures[20].status_code == 429 and "Retry-After" in erasures[20].headers


def _files_open(pid: int) -> list[str]:
    """What the process's descriptors point at, sockets, pipes and devices left out."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if not target.startswith(("socket:", "pipe:", "anon_inode:", "/dev/")):
            found.append(target)
    return found


def test_an_upload_is_never_written_to_disk(api):
    """#24: a multipart part over 1 MB is kept in memory (Starlette spools it to /tmp by
    default: an unlinked file holding the photo, visible under /proc during the upload)."""
    pid = API_PROCESS[api].pid
    before = set(_files_open(pid))
    part = os.urandom(1_500_000)
    boundary = b"aurum-boundary-0123"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="user_id"\r\n\r\nu-spool\r\n'
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + part + b"\r\n--" + boundary + b"--\r\n"
    )
    head = (
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEYS["miniapp"].encode() +
        b"\r\nContent-Type: multipart/form-data; boundary=" + boundary +
        b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )  # fmt: skip
    port = int(api.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(head + body[:-64])  # all but the end: the parser holds the part now
        time.sleep(1.0)
        during = set(_files_open(pid)) - before
        conn.sendall(body[-64:])
        reply = conn.recv(4096)
    assert during == set(), during
    assert reply.startswith(b"HTTP/1.1 "), reply[:100]
