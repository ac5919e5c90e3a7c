"""Lose nothing: a SIGKILLed worker's jobs come back, a Redis restart fails no job and the
calling app keeps working, and a stage run twice for one job changes nothing.

The fault scenarios are bench/chaos.py's (what `make chaos` runs at full size), small:
their own redis-server (AOF on) on a free loopback port, celery workers and the calling app
as subprocesses. The visibility timeout is cut to 10 s here so a killed worker's messages
come back quickly, and beat sweeps for lost jobs every 5 s; production computes the
timeout from the limits (celeryconfig.py) and sweeps every minute."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import chaos  # noqa: E402

FAST = {
    "BROKER_VISIBILITY_TIMEOUT": "10",
    "RETRY_BACKOFF_MAX": "2",
    "TASK_MAX_RETRIES": "8",
    # beat's sweep sends a job the broker lost again after 20 s without progress
    "STALLED_AFTER": "20",
    "REDRIVE_INTERVAL": "5",
}


def _no_job_lost(summary: dict, jobs: int) -> None:
    print(json.dumps(summary, indent=1))  # shown in full when an assertion below fails
    assert summary["after"] == "ok", summary["caller_errors"]  # the calling app still works
    assert summary["unresolved"] == 0, summary
    assert summary["outcomes"] == {"scored": jobs}, summary  # none failed, none rejected
    assert summary["faces_in_index"] == jobs, summary  # each stored exactly once
    assert summary["leftovers"] == {"images": 0, "chips": 0, "vectors": 0}, summary
    # forget is total after the faults: no face, key or value names a user of the run
    assert summary["forgotten"] == jobs and summary["faces_after_forget"] == 0, summary
    assert summary["mentions_after_forget"] == 0, summary


def test_a_killed_model_workers_jobs_all_come_back(tmp_path, photos):
    summary = chaos.kill_model_worker(tmp_path, photos, jobs=10, kill_after=3, **FAST)
    _no_job_lost(summary, 10)


def test_a_redis_restart_fails_no_job_and_the_caller_survives(tmp_path, photos):
    summary = chaos.restart_redis(
        tmp_path, photos, jobs=16, stop_after=5, down_s=3.0, deadline_s=240, **FAST
    )
    _no_job_lost(summary, 16)


def test_every_stage_run_twice_for_one_job_changes_nothing(runtime, model, photos):
    """What a redelivered message does: the same stage again, with the same payload."""
    from aurum_ml.schemas import Job

    data = (photos / "obama3.jpg").read_bytes()
    sha = "d" * 64
    runtime.state.put_image(sha, data, "job-twice")
    job = Job(job_id="job-twice", status="pending", user_id="u-twice", image_sha256=sha,
              submitted_at=time.time())  # fmt: skip
    detected = runtime.detect(job, runtime.local)
    assert runtime.detect(job, runtime.local).face == detected.face
    embedded = runtime.embed(detected, runtime.local)
    first_vector = runtime.state.get_embedding("job-twice")
    assert runtime.embed(detected, runtime.local).face == embedded.face
    assert np.array_equal(runtime.state.get_embedding("job-twice"), first_vector)
    before = runtime.index.count()
    scored = runtime.score(embedded)  # counted in at score time, pending
    assert runtime.score(embedded).percentile == scored.percentile
    assert runtime.index.count() == before + 1
    stored = runtime.store(scored)  # confirmed
    again = runtime.store(scored)  # the image and vector are gone: it finds its point
    assert again.point_id == stored.point_id and again.score == stored.score
    assert runtime.index.count() == before + 1
    assert len(runtime.vectors.user_points("u-twice")) == 1
    from aurum_ml.population.forget import forget_user

    forget_user(runtime, "u-twice")


def test_the_visibility_timeout_follows_the_limits():
    from aurum_ml.pipeline.celery_app import config as celeryconfig

    late = [
        hard
        for name, (_, hard) in celeryconfig._LIMITS.items()
        if name not in celeryconfig._ACK_EARLY
    ]
    settings = celeryconfig._settings
    if settings.visibility_timeout_s is None:
        expected = settings.retry_backoff_max_s + max(late) + 10
        assert expected == celeryconfig.VISIBILITY_TIMEOUT
    # every acked-late task fits: its longest backoff plus its hard limit
    assert all(settings.retry_backoff_max_s + hard < 130 for hard in late)
    for name in celeryconfig._ACK_EARLY:  # the half-hour tasks are acked on receipt
        assert celeryconfig.task_annotations[name]["acks_late"] is False


def test_a_retry_that_cannot_be_published_is_requeued_not_dropped():
    """Celery turns a retry whose publish fails into Reject(requeue=False), which loses
    the job; PipelineTask asks for a requeue instead. A real broker that is down: a
    closed loopback port, one publish try."""
    from celery import Celery
    from celery.exceptions import Reject

    from aurum_ml.errors import StateUnavailable
    from aurum_ml.pipeline.tasks import PipelineTask

    dead = Celery("dead-broker", broker=f"redis://127.0.0.1:{chaos.free_port()}/0",
                  set_as_current=False)  # fmt: skip
    dead.conf.task_publish_retry_policy = {"max_retries": 0}

    @dead.task(bind=True, base=PipelineTask, name="aurum_ml.test_stage")
    def stage(self):  # pragma: no cover - never run, only retried
        return None

    stage.push_request(id="job-requeue", retries=0, called_directly=False, delivery_info={})
    try:
        with pytest.raises(Reject) as rejected:
            stage.retry(exc=StateUnavailable("Redis unavailable"), countdown=1)
    finally:
        stage.pop_request()
    assert rejected.value.requeue is True


def test_only_the_detect_stage_reads_the_image(runtime, model, photos):
    """Detect decodes once and hands on the chip and the quality: with the image gone after
    detect, embed and score still run — and give the whole-image path's vector."""
    from aurum_ml.pipeline.backends.local import face_chip
    from aurum_ml.pipeline.imaging import decode_image
    from aurum_ml.pipeline.stages.detect import detection_of
    from aurum_ml.schemas import Job

    data = (photos / "obama3.jpg").read_bytes()
    sha = "c" * 64
    runtime.state.put_image(sha, data, "job-once")
    job = Job(job_id="job-once", status="pending", user_id="u-once", image_sha256=sha,
              submitted_at=time.time())  # fmt: skip
    detected = runtime.detect(job, runtime.local)
    assert detected.quality is not None and runtime.state.get_chip("job-once") is not None
    runtime.state.redis.delete(f"aurum:img:{sha}")  # nothing after detect may need it
    embedded = runtime.embed(detected, runtime.local)
    scored = runtime.score(embedded)
    assert scored.status == "pending" and scored.score is not None
    image = decode_image(data, runtime.settings)
    whole = model.embed_chip(face_chip(image, detection_of(detected.face)))
    assert np.max(np.abs(runtime.state.get_embedding("job-once") - whole)) < 1e-6
    runtime.index.withdraw(scored.point_id)
    runtime.state.release(sha, "job-once")
    assert runtime.state.get_chip("job-once") is None


def test_a_store_run_again_keeps_one_truth_per_job(pipeline_worker, runtime, model, photos):
    """#25: a store message run again (its worker died after the result was written, before
    the ack) recomputed matches and timings and rewrote the user's cached result, while
    the Celery result kept the first run's: two answers for one job. Through the worker,
    the store task twice under the job's id, with another user's face of the same person
    stored in between (so a second run would find a match the first did not): the cached
    result, the Celery result and both runs' answers are one."""
    from aurum_ml.pipeline.celery_app import app
    from aurum_ml.pipeline.tasks import store
    from aurum_ml.population.forget import forget_user
    from aurum_ml.schemas import Job

    def scored_job(job_id: str, user: str, photo: str) -> Job:
        sha = hashlib.sha256(job_id.encode()).hexdigest()
        runtime.state.put_image(sha, (photos / photo).read_bytes(), job_id)
        job = Job(job_id=job_id, status="pending", user_id=user, image_sha256=sha,
                  submitted_at=time.time())  # fmt: skip
        return runtime.score(runtime.embed(runtime.detect(job, runtime.local), runtime.local))

    job = scored_job("job-truth", "u-truth", "obama.jpg").model_dump(mode="json")
    first = store.apply_async((job,), task_id="job-truth").get(timeout=60)
    runtime.store(scored_job("job-truth-other", "u-truth-other", "obama2.jpg"))
    time.sleep(0.05)  # a later run's total time would differ
    app.backend.forget("job-truth")  # as if the first run died before writing it
    again = store.apply_async((job,), task_id="job-truth").get(timeout=60)
    cached = runtime.users.latest_result("u-truth")
    assert again == first == cached
    assert app.AsyncResult("job-truth").get(timeout=5) == first
    forget_user(runtime, "u-truth")
    forget_user(runtime, "u-truth-other")
    app.backend.forget("job-truth")
