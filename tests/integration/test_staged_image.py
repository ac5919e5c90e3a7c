"""The caller stores the image in Redis (content hash, TTL IMAGE_TTL) and the message
carries a reference: no image on the broker, in its unacked copies, or in the in-flight
ledger. What that must not break: a staged image gone before intake is a typed expiry, an
erasure before intake takes the staged image with it, and an intake message delivered again
after its job ended leaves the job's result alone. Real worker thread, real models."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest
from celery import states
from celery.signals import before_task_publish, task_postrun

from aurum_ml.errors import ImageExpired, InvalidRequest, UserErased
from aurum_ml.pipeline.celery_app import app
from aurum_ml.pipeline.tasks import score_face
from aurum_ml.population.forget import forget_user
from aurum_ml.request import IMAGE_REF

from samples import b64

TIMEOUT = 90


@pytest.fixture()
def on_intake_publish():
    """Runs the given function in the caller's process just before a score_face message is
    published (after the image was stored); collects the bodies of every message."""
    bodies: list[tuple[str, str]] = []
    actions = []

    def record(body=None, headers=None, **_):
        name = (headers or {}).get("task", "?")
        bodies.append((name, json.dumps(body, default=str)))
        if name == "aurum_ml.score_face":
            for action in actions:
                action((headers or {}).get("id"))

    before_task_publish.connect(record, weak=False)
    yield bodies, actions
    before_task_publish.disconnect(record)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_no_message_and_no_ledger_entry_carries_the_image(
    pipeline_worker, photos, runtime, on_intake_publish
):
    bodies, actions = on_intake_publish
    data = (photos / "obama2.jpg").read_bytes()
    image = b64(data)
    ledger = []
    actions.append(lambda job_id: ledger.append(runtime.inflight.load(job_id)))

    out = score_face.delay(image, user_id="u-staged").get(timeout=TIMEOUT)

    assert out["status"] == "scored"
    intake = [body for name, body in bodies if name == "aurum_ml.score_face"]
    assert len(intake) == 1 and IMAGE_REF + _sha(data) in intake[0]
    assert not [name for name, body in bodies if image[:4096] in body]  # no message at all
    assert image[:4096] not in json.dumps(ledger[0].request)  # the ledger's copy: the ref
    assert runtime.state.staged_image(_sha(data), out["job_id"]) is None  # the store let go


def test_bytes_given_as_bytes_are_stored_as_they_came(
    pipeline_worker, photos, runtime, on_intake_publish
):
    """The API's multipart upload (image_data=): no base64 on the way to Redis (#26)."""
    bodies, actions = on_intake_publish
    data = (photos / "obama2.jpg").read_bytes()
    stored = []
    actions.append(lambda job_id: stored.append(runtime.state.staged_image(_sha(data), job_id)))

    job = score_face.apply_async((), {"user_id": "u-staged-bytes"}, image_data=data)
    out = job.get(timeout=TIMEOUT)

    assert out["status"] == "scored" and stored == [data]
    intake = [body for name, body in bodies if name == "aurum_ml.score_face"]
    assert len(intake) == 1 and IMAGE_REF + _sha(data) in intake[0]
    with pytest.raises(InvalidRequest) as refused:  # the byte limit holds for bytes too
        score_face.apply_async(
            (), {"user_id": "u"}, image_data=b"x" * (runtime.settings.image_max_bytes + 1)
        )
    assert refused.value.reason == "image_too_large"
    forget_user(runtime, "u-staged-bytes", jobs=runtime)


def test_a_staged_image_gone_before_intake_is_a_typed_expiry(
    pipeline_worker, photos, runtime, on_intake_publish
):
    _, actions = on_intake_publish
    data = (photos / "obama3.jpg").read_bytes()
    actions.append(lambda _: runtime.state.redis.delete(f"aurum:img:{_sha(data)}"))  # TTL

    job = score_face.delay(b64(data), user_id="u-staged-expired")

    with pytest.raises(ImageExpired):
        job.get(timeout=TIMEOUT)
    assert runtime.vectors.user_points("u-staged-expired") == []
    # ended, not left to the sweep (on_failure runs just after the failure is stored)
    deadline = time.monotonic() + 5
    while runtime.inflight.load(job.id) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runtime.inflight.load(job.id) is None


def test_an_erasure_before_intake_takes_the_staged_image(
    pipeline_worker, photos, runtime, on_intake_publish
):
    _, actions = on_intake_publish
    data = (photos / "biden.jpg").read_bytes()
    seen = []

    def erase(_job_id: str) -> None:
        forget_user(runtime, "u-staged-erased")
        seen.append(runtime.state.has_image(_sha(data)))

    actions.append(erase)
    job = score_face.delay(b64(data), user_id="u-staged-erased")

    with pytest.raises(UserErased):
        job.get(timeout=TIMEOUT)
    assert seen == [False]  # gone with the erasure, before any worker saw the job
    assert not runtime.state.has_image(_sha(data))
    assert runtime.vectors.user_points("u-staged-erased") == []


def test_an_intake_delivered_again_after_its_job_ended_leaves_the_result(
    pipeline_worker, photos, runtime
):
    data = (photos / "obama.jpg").read_bytes()
    first = score_face.delay(b64(data), user_id="u-staged-again")
    assert first.get(timeout=TIMEOUT)["status"] == "scored"
    assert runtime.state.staged_image(_sha(data), first.id) is None  # the store let go

    ran, ended_as = threading.Event(), []

    def done(sender=None, task_id=None, state=None, **_):
        if task_id == first.id and sender.name == "aurum_ml.score_face":
            ended_as.append(state)
            ran.set()

    task_postrun.connect(done, weak=False)
    try:  # the same message again (a worker died before acking it): the image is gone now
        app.send_task(
            "aurum_ml.score_face",
            args=(IMAGE_REF + _sha(data),),
            kwargs={"user_id": "u-staged-again"},
            task_id=first.id,
        )
        assert ran.wait(TIMEOUT)
    finally:
        task_postrun.disconnect(done)

    meta = app.backend.get_task_meta(first.id, cache=False)
    assert ended_as == [states.IGNORED]  # not a failure: no webhook, no release run twice
    assert meta["status"] == states.SUCCESS and meta["result"]["status"] == "scored"
