"""Cooldown answers that are true (#8): a photo sent while another photo of the same user
is still being scored gets ``in_progress`` with the job it waits on — not a cooldown with
a date that is not true. Its own module: the first job is held in flight by running a
worker for the detect queue only."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from aurum_ml.pipeline.celery_app import app
from aurum_ml.pipeline.runtime import build_runtime, set_runtime
from aurum_ml.pipeline.tasks import score_face
from aurum_ml.surfaces.embedded import run_worker

from samples import b64

TIMEOUT = 120


@pytest.fixture()
def with_cooldown(runtime, model):
    strict = build_runtime(runtime.settings.model_copy(update={"cooldown_days": 30}), local=model)
    previous = set_runtime(strict)
    yield strict
    set_runtime(previous)


def test_a_photo_sent_while_another_is_scored_waits_on_it(with_cooldown, photos, redis_client):
    first_photo = b64((photos / "obama.jpg").read_bytes())
    second_photo = b64((photos / "obama2.jpg").read_bytes())
    with run_worker(app, ["detect"], hostname="admission@localhost"):
        first = score_face.delay(first_photo, user_id="u-in-flight")
        deadline = time.monotonic() + TIMEOUT
        while redis_client.llen("embed") < 1:  # detected; waits for an embed worker
            assert time.monotonic() < deadline
            time.sleep(0.05)
        waiting = score_face.delay(second_photo, user_id="u-in-flight").get(timeout=TIMEOUT)
    assert (waiting["status"], waiting["reason"]) == ("rejected", "in_progress")
    assert waiting["pending_job_id"] == first.id and waiting["next_allowed_at"] is None
    assert first.id in waiting["message"]

    with run_worker(app, ["detect", "embed", "score", "store"], hostname="rest@localhost"):
        assert first.get(timeout=TIMEOUT)["status"] == "scored"
        later = score_face.delay(second_photo, user_id="u-in-flight").get(timeout=TIMEOUT)
    assert (later["status"], later["reason"]) == ("rejected", "cooldown")
    allowed = datetime.fromisoformat(later["next_allowed_at"])
    assert timedelta(days=29.9) < allowed - datetime.now(UTC) < timedelta(days=30.1)
    assert later["pending_job_id"] is None
