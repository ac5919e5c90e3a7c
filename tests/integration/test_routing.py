"""Each stage runs only on workers consuming its queue; only JSON messages are accepted."""

from __future__ import annotations

import time

import pytest

from aurum_ml.celery_app import app
from aurum_ml.embedded import run_worker
from aurum_ml.tasks import detect, score_face

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
        detect.apply_async((job,), serializer="pickle")
        deadline = time.monotonic() + 5
        while redis_client.llen("detect") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
    assert redis_client.llen("detect") == 0  # taken off the queue...
    assert "aurum_ml.detect" not in ran  # ...and never run
