"""The re-score of degraded results (#25): an erasure during it leaves none of the user's
job ids anywhere in Redis, and runs never overlap. Real Redis, real models in process, real
photos; the erasure is the real forget_user, run from inside the re-score."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path

import numpy as np

from aurum_ml.pipeline.recovery import rescore_degraded
from aurum_ml.population.forget import forget_user
from aurum_ml.schemas import Job

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from chaos import redis_mentions  # noqa: E402


def _degraded(runtime, photos, job_id: str, user: str, photo: str, at: float) -> Job:
    data = (photos / photo).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    runtime.state.put_image(sha, data, job_id)
    job = Job(job_id=job_id, status="scored", user_id=user, image_sha256=sha,
              submitted_at=at, degraded=True)  # fmt: skip
    runtime.degraded.record(job)
    return job


def test_an_erasure_during_a_rescore_leaves_no_job_id_anywhere(
    runtime, model, photos, redis_client
):
    now = time.time()
    jobs = [
        _degraded(runtime, photos, "rescore-u-1", "u-rescore-erased", "obama.jpg", now),
        _degraded(runtime, photos, "rescore-u-2", "u-rescore-erased", "obama2.jpg", now + 1),
        _degraded(runtime, photos, "rescore-u-3", "u-rescore-erased", "obama3.jpg", now + 2),
    ]
    erased = []

    calls = []

    def replaced(job_id: str, result: dict | None) -> None:  # the first job's write-back
        calls.append((job_id, result is None))
        if not erased:
            erased.append(forget_user(runtime, "u-rescore-erased"))

    report = rescore_degraded(runtime, replaced)
    # the first was erased as its result was written back: forgotten again, not re-scored
    assert erased and report["rescored"] == [] and report["expired"] == []
    assert report["erased"] == ["rescore-u-1", "rescore-u-2", "rescore-u-3"]
    assert calls == [("rescore-u-1", False), ("rescore-u-1", True)]  # written, then forgotten
    for job in jobs:  # before #25 the other two stayed in aurum:degraded:expired for ever
        assert redis_mentions(redis_client, job.job_id) == [], job.job_id
    assert redis_mentions(redis_client, "u-rescore-erased") == []
    assert runtime.vectors.user_points("u-rescore-erased") == []
    assert runtime.degraded.expired() == []


def test_rescores_run_one_at_a_time_and_each_job_once(runtime, model, photos):
    now = time.time()
    for n, photo in enumerate(("obama.jpg", "biden.jpg")):
        _degraded(runtime, photos, f"rescore-once-{n}", f"u-rescore-once-{n}", photo, now + n)

    token = runtime.degraded.lock(60)  # a run under way
    assert token is not None
    skipped = rescore_degraded(runtime)
    assert skipped["skipped"] and skipped["rescored"] == []
    runtime.degraded.unlock(token)

    reports: list[dict] = []
    runs = [threading.Thread(target=lambda: reports.append(rescore_degraded(runtime)))
            for _ in range(3)]  # fmt: skip
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
    rescored = [job for report in reports for job in report["rescored"]]
    assert sorted(rescored) == ["rescore-once-0", "rescore-once-1"]  # each once, none crashed
    assert not any(report["expired"] for report in reports)
    assert runtime.degraded.pending() == []

    held = runtime.degraded.lock(1)  # a killed run's lock lapses with its lease
    time.sleep(1.2)
    assert held is not None and "skipped" not in rescore_degraded(runtime)
    for n in range(2):
        forget_user(runtime, f"u-rescore-once-{n}")


def test_an_erasure_leaves_another_users_job_with_the_same_photo_its_image(
    runtime, model, photos, redis_client
):
    """#25 (found by `make chaos`): the erasure deleted the images of the user's jobs
    outright — also when another user had sent the same bytes, whose degraded job then
    lost its image and was listed as expired instead of re-scored. The erasure takes its
    jobs off the image; the image goes when no job needs it. Its jobs' epoch records, kept
    so a redelivered intake still stores nothing, name no job id."""
    now = time.time()
    mine = _degraded(runtime, photos, "same-photo-1", "u-same-photo-erased", "obama.jpg", now)
    theirs = _degraded(runtime, photos, "same-photo-2", "u-same-photo-kept", "obama.jpg", now + 1)
    for job in (mine, theirs):
        runtime.users.job_epoch(job.user_id, job.job_id)  # as intake records it
        runtime.state.put_chip(job.job_id, np.zeros((150, 150, 3), np.uint8))
    runtime.users.note_image("u-same-photo-erased", mine.image_sha256)
    forget_user(runtime, "u-same-photo-erased")
    assert runtime.state.has_image(theirs.image_sha256)  # deleted before the fix
    report = rescore_degraded(runtime)
    assert report["rescored"] == ["same-photo-2"] and report["expired"] == []
    assert redis_mentions(redis_client, "same-photo-1") == []
    assert not runtime.state.has_image(theirs.image_sha256)  # released once re-scored
    forget_user(runtime, "u-same-photo-kept")
    assert redis_mentions(redis_client, "same-photo-2") == []
