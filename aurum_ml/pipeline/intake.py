"""``score_face``: intake admits a photo and hands the job to its chain.

``score_face.delay(image_b64, user_id="u1")`` validates the input and stores the image in
Redis under its content hash, in the caller's process
(:class:`~aurum_ml.pipeline.lifecycle.IntakeTask`), so the message names the image instead
of carrying it (``aurum_ml.request.IMAGE_REF``);
intake admits the job and replaces itself with the flat chain
``detect → embed → score → store`` (:mod:`aurum_ml.pipeline.chain`) — or runs the middle
stages itself when this worker would only send them back to itself. The caller's
AsyncResult resolves to the store stage's result (a :class:`~aurum_ml.schemas.Result` as
a dict). Bad input is a ``rejected`` result; infrastructure failures are retried with
backoff, then re-raised by ``.get()`` as an exception from :mod:`aurum_ml.errors`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from celery import Task, states
from celery.exceptions import Ignore

from aurum_ml.errors import BadInput, ImageExpired, InvalidRequest, UserErased
from aurum_ml.pipeline.celery_app import app
from aurum_ml.pipeline.chain import run_here, stages, stages_run_here, store
from aurum_ml.pipeline.imaging import decode_base64, inspect_image
from aurum_ml.pipeline.lifecycle import IntakeTask, dump
from aurum_ml.pipeline.runtime import Runtime, get_runtime
from aurum_ml.pipeline.stages.store import ERASED
from aurum_ml.pipeline.state import HandOff
from aurum_ml.request import PARAMETERS, check_score_request, staged_sha256
from aurum_ml.schemas import Job, Result, check_user_id


def _past_intake(rt: Runtime, job_id: str) -> bool:
    """Has the job gone past intake already, so that this is its intake message delivered
    again (a worker died before acking it)? Its result is stored, or the in-flight ledger
    holds it as admitted."""
    if app.AsyncResult(job_id).state in states.READY_STATES:
        return True
    entry = rt.inflight.load(job_id)
    return entry is not None and entry.job is not None


def _valid_user_id(user_id: Any) -> bool:
    if not isinstance(user_id, str):
        return False
    try:
        check_user_id(user_id)
    except ValueError:
        return False
    return True


def _rejection(job_id: str, user_id: str, exc: BadInput, **fields: Any) -> dict[str, Any]:
    return dump(
        Result(
            job_id=job_id,
            status="rejected",
            reason=exc.reason,
            message=exc.message,
            user_id=user_id,
            **fields,
        )
    )


@app.task(bind=True, base=IntakeTask, name="aurum_ml.score_face")
def score_face(self: Task, *args: Any, **kwargs: Any) -> Any:
    """``score_face(image_b64, user_id, allow_multiple_faces=None)``: score the face in a
    base64 image for ``user_id``. See the module docstring. The arguments are taken as
    given and checked here (a message may have been published by other means, with
    arguments missing, extra or of the wrong type): a ``rejected`` result with reason
    ``invalid_request``, never a TypeError."""
    runtime = get_runtime()
    job_id = self.request.id
    try:
        request = check_score_request(args, kwargs, runtime.settings.image_max_bytes)
    except InvalidRequest as exc:
        given = dict(zip(PARAMETERS, args, strict=False)) | kwargs
        user = given.get("user_id")
        return _rejection(job_id, str(user) if _valid_user_id(user) else "", exc)
    user_id = request.user_id
    staged = staged_sha256(request.image)  # the caller stored the image

    def let_go(answer: Any) -> Any:  # an answer without the chain: the image is not needed
        if staged is not None:
            runtime.state.release(staged, job_id)
        return answer

    epoch, erased = runtime.users.job_epoch(user_id, job_id)
    if erased:  # admitted before the user's erasure (or its intake delivered again)
        let_go(None)
        raise UserErased(ERASED)
    try:
        data: bytes | None
        if staged is None:
            data = decode_base64(request.image, runtime.settings)
            sha256 = hashlib.sha256(data).hexdigest()
        else:
            data, sha256 = runtime.state.staged_image(staged, job_id), staged
        if data is not None:
            inspect_image(data, runtime.settings)
    except BadInput as exc:
        return let_go(_rejection(job_id, user_id, exc))
    if data is None:  # the stored image is gone: its TTL passed, or the job has ended
        if _past_intake(runtime, job_id):
            raise Ignore()  # its chain answers (or answered); the sweep watches it
        raise ImageExpired("the image is no longer stored (its TTL passed); submit it again")
    admission = runtime.users.admit(user_id, sha256, job_id, noted=staged is not None)
    if admission.verdict == "stored":  # the same photo again: its stored result
        return let_go(admission.result)
    if admission.verdict == "cooldown":
        days = runtime.settings.cooldown_days
        message = (
            f"one new photo per {days:g} days; the next can be scored from {admission.until_iso}"
        )
        return let_go(
            _rejection(
                job_id, user_id, BadInput(message, "cooldown"), next_allowed_at=admission.until_iso
            )
        )
    if admission.verdict == "in_progress":
        message = (
            f"another photo of this user is still being scored (job {admission.job_id}); "
            "if it is rejected or fails this one may be sent again, if it is scored the "
            f"cooldown of {runtime.settings.cooldown_days:g} days starts"
        )
        return let_go(
            _rejection(
                job_id, user_id, BadInput(message, "in_progress"), pending_job_id=admission.job_id
            )
        )
    if staged is None:
        runtime.state.put_image(sha256, data, job_id)
    job = Job(
        job_id=job_id,
        status="pending",
        user_id=user_id,
        image_sha256=sha256,
        allow_multiple_faces=(
            runtime.settings.allow_multiple_faces
            if request.allow_multiple_faces is None
            else request.allow_multiple_faces
        ),
        submitted_at=time.time(),
        epoch=epoch,
    )
    runtime.inflight.enter(job)  # from here a lost message is found (aurum_ml.pipeline.redrive)
    if stages_run_here(runtime):
        handoff = HandOff(runtime.state, sha256, data)
        return self.replace(store.s(dump(run_here(self, runtime, job, handoff))))
    return self.replace(stages(job))
