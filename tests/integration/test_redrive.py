"""No job waits for ever: a job whose message the broker lost is sent again by beat's
sweep and resolves under its own id; one that cannot be sent again fails with a typed
error; an erased user's lost job is dropped; a backlog is waited out, never doubled.

A lost message is made the way a broker loses one: the job is admitted exactly as intake
admits it (image stored, ledger entry) and its message is gone. Real Redis, a real worker
thread, real models and photos."""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest
from celery.result import AsyncResult

from aurum_ml.client import _write as write_entry
from aurum_ml.client import stage_submission
from aurum_ml.errors import ImageExpired, JobLost, UserErased
from aurum_ml.pipeline import tasks
from aurum_ml.pipeline.redrive import redrive_stalled
from aurum_ml.request import IMAGE_REF, ScoreArgs
from aurum_ml.schemas import Job

from samples import b64, no_face

TIMEOUT = 90
LEDGER = "aurum:inflight"


def _admitted_and_lost(runtime, photos, name: str = "obama.jpg", image: bool = True) -> Job:
    """What intake leaves behind for a job whose every message was then lost."""
    data = (photos / name).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    job_id = str(uuid.uuid4())
    user = f"redrive-{job_id[:8]}"
    epoch, _ = runtime.users.job_epoch(user, job_id)
    runtime.users.note_job(user, job_id)
    if image:
        runtime.users.note_image(user, sha)  # as admission notes it: an erasure finds it
        runtime.state.put_image(sha, data, job_id)
    job = Job(job_id=job_id, status="pending", user_id=user, image_sha256=sha,
              submitted_at=time.time(), epoch=epoch)  # fmt: skip
    runtime.inflight.enter(job)
    # no stage has started on it for longer than STALLED_AFTER
    runtime.state.redis.zadd(LEDGER, {job_id: time.time() - runtime.settings.stalled_after_s - 1})
    return job


def _left_the_ledger(runtime, job_id: str, seconds: float = 10) -> bool:
    """The job's end is recorded just after its result is stored (its on_success): poll."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if runtime.state.redis.zscore(LEDGER, job_id) is None and not runtime.state.redis.exists(
            f"aurum:inflight:job:{job_id}"
        ):
            return True
        time.sleep(0.05)
    return False


def _sweep() -> dict[str, list[str]]:
    return tasks.redrive_stalled.delay().get(timeout=TIMEOUT)


def test_the_backlog_counts_what_waits_in_the_stage_queues(runtime):
    """First in this module: no worker consumes yet."""
    from aurum_ml.pipeline.celery_app import app

    before = tasks.stage_backlog()
    for _ in range(2):
        tasks.stats.apply_async(queue="embed", routing_key="embed")
    tasks.stats.apply_async(queue="maintenance", routing_key="maintenance")  # not a stage
    assert tasks.stage_backlog() == before + 2
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge("embed")


def test_a_job_ends_and_leaves_the_ledger(pipeline_worker, runtime, photos):
    scored = tasks.score_face.delay(b64((photos / "obama2.jpg").read_bytes()), user_id="ledger-1")
    rejected = tasks.score_face.delay(b64(no_face(photos)), user_id="ledger-2")
    assert scored.get(timeout=TIMEOUT)["status"] == "scored"
    assert rejected.get(timeout=TIMEOUT)["status"] == "rejected"
    for ended in (scored.id, rejected.id):
        assert _left_the_ledger(runtime, ended)
    tasks.forget_user.delay("ledger-1").get(timeout=TIMEOUT)


def test_a_lost_job_is_sent_again_and_resolves_under_its_id(pipeline_worker, runtime, photos):
    job = _admitted_and_lost(runtime, photos)
    swept = _sweep()
    assert job.job_id in swept["redriven"], swept
    result = AsyncResult(job.job_id).get(timeout=TIMEOUT)
    assert result["status"] == "scored" and result["user_id"] == job.user_id
    assert result["job_id"] == job.job_id
    assert _left_the_ledger(runtime, job.job_id)  # it ended
    assert not runtime.state.has_image(job.image_sha256)  # released as any job's
    assert job.job_id not in _sweep()["redriven"]  # nothing left to send
    tasks.forget_user.delay(job.user_id).get(timeout=TIMEOUT)


def _sent_and_lost(runtime, user: str, data: bytes, stored: bool = False) -> str:
    """What the caller leaves behind for a job whose intake message was then lost: the
    caller's own ledger entry (the same functions score_face.apply_async runs), and no
    message. ``stored``: the caller stored the image and the entry names it (as whenever
    Redis takes it); else the image is in the entry."""
    job_id = str(uuid.uuid4())
    sha = hashlib.sha256(data).hexdigest()
    image, settings = b64(data), runtime.settings
    if stored:
        submission = stage_submission(
            runtime.state.redis,
            job_id,
            ScoreArgs(image, user),
            (image,),
            {"user_id": user},
            image_max_bytes=settings.image_max_bytes,
            image_ttl_s=settings.image_ttl_s,
            keep_s=settings.result_expires_s,
        )
        assert submission.entered and submission.args == (IMAGE_REF + sha,)
    else:  # what stage_submission writes when Redis refused the image: the request inline
        sent = ((image,), {"user_id": user})
        write_entry(runtime.state.redis, job_id, user, sent, None, settings.image_ttl_s,
                    settings.result_expires_s)  # fmt: skip
    runtime.state.redis.zadd(LEDGER, {job_id: time.time() - runtime.settings.stalled_after_s - 1})
    return job_id


def test_a_lost_intake_message_is_sent_again_from_the_callers_entry(
    pipeline_worker, runtime, photos
):
    user = f"redrive-intake-{uuid.uuid4().hex[:6]}"
    job_id = _sent_and_lost(runtime, user, (photos / "obama3.jpg").read_bytes())
    assert job_id in _sweep()["redriven"]
    result = AsyncResult(job_id).get(timeout=TIMEOUT)
    assert result["status"] == "scored" and result["job_id"] == job_id
    assert _left_the_ledger(runtime, job_id)
    tasks.forget_user.delay(user).get(timeout=TIMEOUT)


def test_the_callers_entry_gives_way_to_the_admitted_job(pipeline_worker, runtime, photos):
    """Once intake starts, the request (the image) leaves the ledger; the job stays."""
    user = f"redrive-admit-{uuid.uuid4().hex[:6]}"
    job_id = _sent_and_lost(runtime, user, (photos / "obama.jpg").read_bytes())
    key = f"aurum:inflight:job:{job_id}"
    assert runtime.state.redis.hexists(key, "request")
    job = Job(job_id=job_id, status="pending", user_id=user, image_sha256="e" * 64,
              submitted_at=time.time())  # fmt: skip
    runtime.inflight.enter(job)
    assert not runtime.state.redis.hexists(key, "request")
    assert runtime.inflight.load(job_id).job.job_id == job_id
    runtime.inflight.done(job_id)


def test_a_photo_sent_before_an_erasure_stores_nothing(pipeline_worker, runtime, photos):
    """Its epoch is fixed when it is sent, not when a worker takes it; the erasure also
    takes the job out of the ledger."""
    user = f"redrive-erased-{uuid.uuid4().hex[:6]}"
    data = (photos / "obama2.jpg").read_bytes()
    job_id = _sent_and_lost(runtime, user, data)
    tasks.forget_user.delay(user).get(timeout=TIMEOUT)
    assert runtime.state.redis.zscore(LEDGER, job_id) is None
    # the message arrives after the erasure (a backlog, a redelivery): nothing is stored
    late = tasks.score_face.apply_async((b64(data),), {"user_id": user}, task_id=job_id,
                                        ledger=False)  # fmt: skip
    with pytest.raises(UserErased):
        late.get(timeout=TIMEOUT)
    assert runtime.vectors.user_points(user) == []


def test_a_lost_job_whose_image_expired_fails_typed(pipeline_worker, runtime, photos):
    job = _admitted_and_lost(runtime, photos, image=False)
    assert job.job_id in _sweep()["failed"]
    with pytest.raises(ImageExpired):
        AsyncResult(job.job_id).get(timeout=TIMEOUT)
    assert runtime.state.redis.zscore(LEDGER, job.job_id) is None


def test_a_job_lost_again_and_again_fails_typed(pipeline_worker, runtime, photos):
    job = _admitted_and_lost(runtime, photos)
    key = f"aurum:inflight:job:{job.job_id}"
    runtime.state.redis.hset(key, "redrives", runtime.settings.redrive_max)
    assert job.job_id in _sweep()["failed"]
    with pytest.raises(JobLost):
        AsyncResult(job.job_id).get(timeout=TIMEOUT)
    assert not runtime.state.has_image(job.image_sha256)  # a failed job lets go of it
    assert runtime.state.redis.zscore(LEDGER, job.job_id) is None


def test_an_erased_users_lost_job_is_dropped_not_sent(pipeline_worker, runtime, photos):
    job = _admitted_and_lost(runtime, photos)
    runtime.users.mark_erased(job.user_id)  # erased after admission, by another path
    swept = _sweep()
    assert job.job_id in swept["erased"] and job.job_id not in swept["redriven"]
    assert not runtime.state.has_image(job.image_sha256)
    assert AsyncResult(job.job_id).state == "PENDING"  # nothing was ever stored for it


def test_forget_takes_the_users_jobs_out_of_the_ledger(pipeline_worker, runtime, photos):
    job = _admitted_and_lost(runtime, photos)
    tasks.forget_user.delay(job.user_id).get(timeout=TIMEOUT)
    assert runtime.state.redis.zscore(LEDGER, job.job_id) is None
    assert not runtime.state.redis.exists(f"aurum:inflight:job:{job.job_id}")


def test_a_backlog_is_waited_out_and_a_stored_result_ends_the_entry(runtime, photos):
    """The sweep itself, with the backlog and the result store given as functions."""
    waiting = _admitted_and_lost(runtime, photos)
    sent: list[str] = []
    out = redrive_stalled(
        runtime,
        has_result=lambda job_id: False,
        backlog=lambda: 7,  # seven messages waiting in the stage queues
        send=lambda job_id, entry: sent.append(job_id),
        fail=lambda job_id, job, exc: pytest.fail(f"failed {job_id}: {exc}"),
    )
    assert waiting.job_id in out.waiting and not sent
    assert runtime.state.redis.zscore(LEDGER, waiting.job_id) is not None  # still watched
    out = redrive_stalled(
        runtime,
        has_result=lambda job_id: job_id == waiting.job_id,  # it ended after all
        backlog=lambda: 0,
        send=lambda job_id, entry: sent.append(job_id),
        fail=lambda job_id, job, exc: pytest.fail(f"failed {job_id}: {exc}"),
    )
    assert waiting.job_id in out.ended and waiting.job_id not in sent
    assert runtime.state.redis.zscore(LEDGER, waiting.job_id) is None
    runtime.state.release(waiting.image_sha256, waiting.job_id)


# --- a request that names the image the caller stored ----------------------------------------


def test_a_lost_intake_is_sent_again_and_reads_the_stored_image(pipeline_worker, runtime, photos):
    data = (photos / "obama2.jpg").read_bytes()
    job_id = _sent_and_lost(runtime, "u-staged-lost", data, stored=True)
    assert job_id in _sweep()["redriven"]
    assert AsyncResult(job_id).get(timeout=TIMEOUT)["status"] == "scored"
    assert runtime.state.staged_image(hashlib.sha256(data).hexdigest(), job_id) is None


def test_a_lost_intake_whose_stored_image_expired_fails_typed_unsent(
    pipeline_worker, runtime, photos
):
    data = (photos / "obama3.jpg").read_bytes()
    job_id = _sent_and_lost(runtime, "u-staged-lost-expired", data, stored=True)
    runtime.state.redis.delete(f"aurum:img:{hashlib.sha256(data).hexdigest()}")  # TTL passed
    swept = _sweep()
    assert job_id in swept["failed"] and job_id not in swept["redriven"]
    with pytest.raises(ImageExpired):
        AsyncResult(job_id).get(timeout=TIMEOUT)


def test_a_lost_intake_of_a_user_erased_meanwhile_lets_its_image_go(
    pipeline_worker, runtime, photos
):
    data = (photos / "biden.jpg").read_bytes()
    job_id = _sent_and_lost(runtime, "u-staged-lost-erased", data, stored=True)
    runtime.users.mark_erased("u-staged-lost-erased")  # erased by another path
    swept = _sweep()
    assert job_id in swept["erased"] and job_id not in swept["redriven"]
    assert runtime.state.staged_image(hashlib.sha256(data).hexdigest(), job_id) is None
