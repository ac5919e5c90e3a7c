"""A receiver outage longer than the Redis visibility timeout (#25): the notify worker's
retries wait longer than the broker keeps a message handed out, so Redis hands a waiting
retry out again and two copies run side by side. Each job's webhook must still succeed
exactly once, and `attempts` count every POST that left.

A real `celery -A aurum_ml worker -Q notify` subprocess with a 5 s visibility timeout, on
this run's Redis database; a loopback receiver answering 503 for 25 s, then 200."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from celery import states

from aurum_ml.pipeline.celery_app import app
from aurum_ml.pipeline.tasks import notify

ROOT = Path(__file__).resolve().parents[2]
OUTAGE_S = 25
JOBS = [f"outage-job-{n}" for n in range(4)]


class _Receiver(BaseHTTPRequestHandler):
    up_at = 0.0
    posts: list[tuple[str, int]] = []

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        status = 200 if time.monotonic() >= self.up_at else 503
        self.posts.append((self.headers["X-Aurum-Job-Id"], status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_long_outage_gives_each_webhook_exactly_once(runtime, redis_client, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(
        os.environ,
        BROKER_VISIBILITY_TIMEOUT="5",  # the backoff passes it from the 4th retry on
        AURUM_WEBHOOK_ALLOWED_HOSTS=f"127.0.0.1:{port}",
        WEBHOOK_RETRY_FOR="600",
    )
    log = (tmp_path / "notify.log").open("w")
    worker = subprocess.Popen(
        [str(ROOT / ".venv/bin/celery"), "-A", "aurum_ml", "worker", "-Q", "notify",
         "--pool", "threads", "-c", "4", "-n", "notify-outage@%h", "-l", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _Receiver.up_at = time.monotonic() + OUTAGE_S
        for job in JOBS:
            runtime.hooks.register(job, f"http://127.0.0.1:{port}/hook")
            result = {"job_id": job, "status": "scored", "user_id": "u-outage", "matches": []}
            app.backend.store_result(job, result, states.SUCCESS)
            notify.apply_async((job,))
        deadline = time.monotonic() + OUTAGE_S + 90
        while time.monotonic() < deadline:
            delivered = {j for j, status in _Receiver.posts if status == 200}
            if delivered >= set(JOBS):
                break
            time.sleep(0.5)
        time.sleep(12)  # any copy still waiting fires by now (copies share the retry's ETA)
        assert worker.poll() is None, (tmp_path / "notify.log").read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(30)
        server.shutdown()
    assert "aurum_ml: WARNING" not in (tmp_path / "notify.log").read_text()  # configured
    ok = Counter(j for j, status in _Receiver.posts if status == 200)
    assert ok == dict.fromkeys(JOBS, 1), (ok, _Receiver.posts)  # once each, never twice
    sent = Counter(j for j, _ in _Receiver.posts)
    for job in JOBS:
        record = runtime.hooks.get(job)
        assert record is not None and record.delivered
        assert record.attempts == sent[job] >= 5, (job, record, sent[job])  # every POST counted
    runtime.hooks.drop(JOBS)
    for job in JOBS:
        app.backend.forget(job)
    redis_client.delete("notify", "unacked", "unacked_index")


def test_a_notify_worker_without_the_webhook_settings_says_so_at_start(tmp_path):
    """#27: a notify worker started without the API's webhook settings refused every
    delivery after one attempt, and said nothing at start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURUM_WEBHOOK_")}
    log_path = tmp_path / "notify.log"
    worker = subprocess.Popen(
        [str(ROOT / ".venv/bin/celery"), "-A", "aurum_ml", "worker", "-Q", "notify",
         "--pool", "threads", "-c", "1", "-n", "notify-bare@%h", "-l", "warning"],
        cwd=ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "aurum_ml: WARNING" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            assert worker.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(30)
    line = next(x for x in log_path.read_text().splitlines() if "aurum_ml: WARNING" in x)
    assert "AURUM_WEBHOOK_SECRET and AURUM_WEBHOOK_ALLOWED_HOSTS are unset" in line
