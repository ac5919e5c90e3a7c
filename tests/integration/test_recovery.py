"""The re-score of degraded results (#25): an erasure during it leaves none of the user's
job ids anywhere in Redis, and runs never overlap. Real Redis, real models in process, real
photos; the erasure is the real forget_user, run from inside the re-score."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path

from aurum_ml.forget import forget_user
from aurum_ml.recovery import rescore_degraded
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

    def replaced(job_id: str, result: dict) -> None:  # after the first job is stored
        if not erased:
            erased.append(forget_user(runtime, "u-rescore-erased"))

    report = rescore_degraded(runtime, replaced)
    assert erased and report["rescored"] == ["rescore-u-1"]
    assert report["expired"] == [] and report["erased"] == ["rescore-u-2", "rescore-u-3"]
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
