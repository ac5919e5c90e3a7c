"""Each stage runs only on workers consuming its queue; only JSON messages are accepted."""

from __future__ import annotations

import time

import pytest

from aurum_ml.pipeline.celery_app import app
from aurum_ml.pipeline.tasks import score_face
from aurum_ml.surfaces.embedded import run_worker

from samples import b64

TIMEOUT = 60


@pytest.fixture()
def ran(tasks_run, redis_client):
    return tasks_run


def _wait_for_queue(redis_client, queue: str, length: int, seconds: float = 30) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if redis_client.llen(queue) >= length:
            break
        time.sleep(0.05)
    return redis_client.llen(queue)


def test_a_detect_worker_runs_only_intake_and_detect(ran, photos, model, redis_client):
    image = b64((photos / "obama.jpg").read_bytes())
    with run_worker(app, ["detect"], hostname="detect-only@localhost"):
        result = score_face.delay(image, user_id="u-routing")
        # the chain's next message lands on the embed queue, where nobody consumes it
        assert _wait_for_queue(redis_client, "embed", 1) == 1
        time.sleep(0.5)
        assert sorted(set(ran)) == ["aurum_ml.detect", "aurum_ml.score_face"]
        assert result.state != "SUCCESS"
    # a worker for the remaining queues finishes the very same job
    with run_worker(app, ["embed", "score", "store"], hostname="rest@localhost"):
        out = result.get(timeout=TIMEOUT)
    assert out["status"] == "scored"
    assert ran.count("aurum_ml.embed") == ran.count("aurum_ml.store") == 1


def test_a_pickle_message_is_refused_not_run(ran, photos, model, redis_client):
    job = {
        "job_id": "x",
        "status": "pending",
        "user_id": "u-pickle",
        "image_sha256": "0" * 64,
        "submitted_at": 0.0,
    }
    with run_worker(app, ["detect"], hostname="pickle@localhost"):
        app.send_task("aurum_ml.detect", (job,), serializer="pickle")  # by other means
        deadline = time.monotonic() + 5
        while redis_client.llen("detect") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
    assert redis_client.llen("detect") == 0  # taken off the queue...
    assert "aurum_ml.detect" not in ran  # ...and never run


HOSTILE_CONFIG = """\
# an application's own Celery config, as Celery's convention has it
accept_content = ["pickle", "json"]
task_serializer = "pickle"
task_routes = {}
task_default_queue = "celery"
"""

APP_SCRIPT = """\
import base64, json, sys, time
import celeryconfig  # the application's own: proves it comes first on sys.path
assert "pickle" in celeryconfig.accept_content
from celery.signals import task_prerun
from aurum_ml.pipeline.celery_app import app
from aurum_ml.surfaces.embedded import run_worker
from aurum_ml.pipeline.tasks import detect, score_face

ran = []
task_prerun.connect(lambda sender=None, **_: ran.append(sender.name), weak=False)
score_face.delay(base64.b64encode(open(sys.argv[1], "rb").read()).decode(), user_id="u-hostile")
job = {"job_id": "hostile", "status": "pending", "user_id": "u-hostile",
       "image_sha256": "0" * 64, "submitted_at": 0.0}
with run_worker(app, ["embed"], hostname="hostile@localhost"):
    app.send_task("aurum_ml.embed", (job,), serializer="pickle")  # by other means
    time.sleep(2.0)
print(json.dumps({"accept": list(app.conf.accept_content), "ran": ran}))
"""


def test_an_apps_own_celeryconfig_replaces_nothing_of_ours(tmp_path, photos, redis_client):
    """Run from a folder holding a hostile celeryconfig.py: score_face still routes to
    detect, and a pickle message is still refused, not run."""
    import json
    import subprocess
    import sys

    (tmp_path / "celeryconfig.py").write_text(HOSTILE_CONFIG)
    (tmp_path / "app.py").write_text(APP_SCRIPT)
    redis_client.delete("detect", "embed", "celery")
    try:
        done = subprocess.run(
            [sys.executable, "app.py", str(photos / "obama.jpg")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert redis_client.llen("detect") == 1  # our route, not the app's default queue
        assert redis_client.llen("celery") == 0
        assert out["accept"] == ["json"]
        assert "aurum_ml.embed" not in out["ran"]  # the pickle was refused, never run
        assert redis_client.llen("embed") == 0  # ...and taken off the queue
    finally:
        redis_client.delete("detect", "embed", "celery")


def test_sent_events_name_one_publisher_per_host(redis_client):
    """Flower labels its series by an event's hostname: every publishing process (a CLI
    run, an API process, a worker child) must not add a label of its own."""
    import subprocess
    import sys
    import threading

    from aurum_ml.pipeline.celery_app import PUBLISHER

    seen: list[str] = []
    ready = threading.Event()

    def listen() -> None:
        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(
                connection, handlers={"task-sent": lambda event: seen.append(event["hostname"])}
            )
            ready.set()
            for _ in receiver.itercapture(limit=None, timeout=20, wakeup=False):
                if len(seen) >= 2:
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(10)
    time.sleep(1.5)  # the receiver is subscribed
    try:
        from aurum_ml.pipeline.tasks import stats

        stats.delay()  # this process
        subprocess.run(
            [sys.executable, "-c", "from aurum_ml.pipeline.tasks import stats; stats.delay()"],
            check=True,
            timeout=60,
        )  # another one
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        redis_client.delete("maintenance")
    assert seen == [PUBLISHER, PUBLISHER]
