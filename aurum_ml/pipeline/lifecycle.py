"""What every task of the pipeline does around its own work, declared once.

- :class:`PipelineTask` — the retry policy (retryable errors back off, permanent ones fail
  at once, a retry whose publish fails is put back), a stage's run counted and timed, the
  job's end (it leaves the in-flight ledger; its webhook goes), and what its arguments and
  results show in logs, events and Flower (:class:`RedactedRequest`);
- :class:`IntakeTask` — ``score_face``'s side in the caller's process: the thin caller's
  one submission (:func:`aurum_ml.client.stage_submission`), and the hand-on to the stages
  without Celery's Ignore.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from celery.utils import uuid
from celery.worker.request import Request as CeleryRequest
from kombu.exceptions import OperationalError as KombuOperationalError

from aurum_ml.client import check_serializer, shown, stage_submission, withdraw
from aurum_ml.errors import InvalidRequest, PermanentError, RetryableError
from aurum_ml.pipeline.celery_app import app
from aurum_ml.pipeline.imaging import decode_base64
from aurum_ml.pipeline.runtime import get_runtime
from aurum_ml.pipeline.telemetry import record_stage
from aurum_ml.request import (
    IMAGE_REF,
    PARAMETERS,
    check_score_request,
    refuse_reference,
    staged_sha256,
)
from aurum_ml.schemas import Job, Result
from aurum_ml.settings import get_settings

log = logging.getLogger("aurum_ml.pipeline.lifecycle")

# a publish failing on these means the broker is unreachable: worth another delivery
_INFRASTRUCTURE_ERRORS = (KombuOperationalError, ConnectionError, OSError, redis.RedisError)


class RedactedRequest(CeleryRequest):
    """The worker's side of a task run, with the events it sends redacted: a result
    appears in ``task-succeeded`` (what Flower lists and keeps) as its job id, status and
    reason at most — never a user id, face, vector, score or match (#24)."""

    def send_event(self, type_: str, **fields: Any) -> None:
        if "result" in fields:
            fields["result"] = _result_shown(fields["result"])
        super().send_event(type_, **fields)


_SHOWN_ID = re.compile(r"'job_id': '([0-9a-f-]{1,64})'")
_SHOWN_STATUS = re.compile(r"'status': '([a-z_]{1,32})'")
_SHOWN_REASON = re.compile(r"'reason': '([a-z_]{1,32})'")


def _result_shown(result: Any) -> str:
    """A task's result as events show it. The worker hands over the result or its repr
    (the prefork pool sends the repr): only the job id, status and reason are taken from
    either."""
    text = result if isinstance(result, str) else repr(result)
    parts = [f"{name}={m.group(1)}" for name, pattern in (
        ("job", _SHOWN_ID), ("status", _SHOWN_STATUS), ("reason", _SHOWN_REASON)
    ) if (m := pattern.search(text))]  # fmt: skip
    return f"<{' '.join(parts)}>" if parts else f"<{type(result).__name__}>"


@dataclass
class RunNotes:
    """What a task's run tells :meth:`PipelineTask.__call__` after it: the seconds spent in
    stages intake ran itself (timed as their own), and whether intake sent the stages on."""

    inline_s: float = 0.0
    handed_on: bool = False


NOTES: dict[str, RunNotes] = {}  # task id → its run's notes, while it runs


class PipelineTask(Task):
    """Retry policy, declared once: retryable errors back off exponentially with jitter
    (cap and count from celeryconfig's task_annotations); permanent ones fail at once.

    What a task's arguments and results show in logs, events and Flower is redacted: a
    stage's job payload appears as its job id and status, never its user id, face or
    results (:class:`RedactedRequest`)."""

    Request = "aurum_ml.pipeline.lifecycle:RedactedRequest"
    autoretry_for = (RetryableError,)
    dont_autoretry_for = (PermanentError,)
    retry_backoff = True
    retry_jitter = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the task; a stage's run is counted and timed (aurum_ml.surfaces.metrics)."""
        stage = _STAGE_OF.get(self.name)
        if stage is None:
            return super().__call__(*args, **kwargs)
        started = time.perf_counter()
        outcome, source, retval = "failed", "none", None
        # Task.__call__ runs the task on a copy of this request (and a request's fields
        # travel with a retry): what the run notes for after it goes in NOTES
        notes = NOTES[self.request.id] = RunNotes()
        try:
            retval = super().__call__(*args, **kwargs)
            outcome, source = outcome_of(args, retval)
            if notes.handed_on:  # intake sent the stages on: its own result is not stored
                outcome = "admitted"
                self.request.ignore_result = True  # read when the result would be stored
                self.request.callbacks = self.request.chain = self.request.chord = None
            return retval
        except Ignore:  # an intake delivered again whose chain answers (_past_intake)
            outcome = "admitted"
            raise
        except Retry:
            outcome = "retried"
            raise
        finally:
            job = args[0] if args and isinstance(args[0], dict) else {}
            # stages intake ran itself were timed as their own (run_here): not intake's
            NOTES.pop(self.request.id, None)
            seconds = time.perf_counter() - started - notes.inline_s
            ended = self.request.id if ends_job(retval, self.request.id) else None
            # a job that ended leaves the ledger in the same round trip (on_success then
            # sends its webhook, if one is wanted, once its result is stored)
            self.request.hook_wanted = stages_ran(
                [(stage, seconds, outcome, source)], job.get("job_id"), ended=ended
            )

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        if options.get("serializer", "json") != "json":  # workers accept JSON only
            raise InvalidRequest(
                f"{self.name} is sent as JSON only (serializer={options['serializer']!r} "
                "would be refused by every worker, and its result never come)"
            )
        if args:
            options.setdefault("argsrepr", repr(tuple(_shown(a) for a in args)))
        if kwargs:
            options.setdefault("kwargsrepr", repr({k: _shown(v) for k, v in kwargs.items()}))
        return super().apply_async(args, kwargs, **options)

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's retry, except that a retry whose publish fails (the broker is down for
        longer than task_publish_retry_policy waits) puts the message back instead of
        dropping it: Celery raises Reject(requeue=False) there, which loses the job."""
        try:
            return super().retry(*args, **kwargs)
        except Reject as exc:
            if exc.requeue or not isinstance(exc.reason, _INFRASTRUCTURE_ERRORS):
                raise
            log.warning("%s: could not publish its retry (%s): requeued", self.name, exc.reason)
            raise Reject(exc.reason, requeue=True) from None

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """The job ended here (the store stage carries the job's id; so does an intake that
        answered without running the chain): its webhook, if one is wanted."""
        if ends_job(retval, task_id):
            wanted = getattr(self.request, "hook_wanted", None)
            if wanted is None:  # its bookkeeping did not reach Redis: the long way
                job_ended(task_id)
            elif wanted:
                _send_hook(task_id)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """A stage failed for good: the job lets go of its image, vector and the user's
        pending cooldown reservation now, not when their TTL passes; its webhook goes."""
        job = args[0] if args and isinstance(args[0], dict) else None
        if job is None or "image_sha256" not in job:
            return
        with contextlib.suppress(Exception):  # best effort: the TTLs remain the backstop
            get_runtime().release_failed(Job.model_validate(job))
        if isinstance(job.get("job_id"), str):
            job_ended(job["job_id"])


class IntakeTask(PipelineTask):
    """Checks the arguments in the caller's process (InvalidRequest, nothing published),
    stores the image in Redis there so the message only names it (``IMAGE_REF``: the image
    is in no queue, unacked copy or ledger entry), and keeps the image and the user id out
    of logs, events and Flower."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """The thin caller's steps (aurum_ml.client), on this process's settings and Redis."""
        check_serializer("score_face", options)
        settings = get_settings()
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        data = options.pop("image_data", None)  # bytes already (the API's multipart upload)
        if data is not None:
            if len(data) > settings.image_max_bytes:
                raise InvalidRequest(
                    f"image is {len(data)} bytes, over the {settings.image_max_bytes} byte limit",
                    reason="image_too_large",
                )
            args = (IMAGE_REF + hashlib.sha256(data).hexdigest(), *args)  # what is sent
        request = check_score_request(args, kwargs, settings.image_max_bytes)
        if "task_id" not in options and data is None:  # its image, never a reference
            refuse_reference(request.image)
        options = shown(args, kwargs) | options
        if not options.pop("ledger", True):  # sent again by the sweep: already entered
            return super().apply_async(args, kwargs, **options)
        job_id = options.setdefault("task_id", uuid())
        client = get_runtime().state.redis
        submission = stage_submission(
            client, job_id, request, args, kwargs, image_max_bytes=settings.image_max_bytes,
            image_ttl_s=settings.image_ttl_s, keep_s=settings.result_expires_s, data=data,
        )  # fmt: skip
        try:
            return super().apply_async(submission.args, submission.kwargs, **options)
        except BaseException:
            withdraw(client, submission)
            raise

    def on_replace(self, sig: Any) -> Any:
        """``self.replace(...)`` without the Ignore: the stages are sent under the job's id
        (the caller's AsyncResult resolves to the store stage's result), and intake ends as
        a success whose result is not stored. Celery handles an Ignore by formatting its
        traceback twice (billiard's ExceptionInfo): 14 % of the stage worker's samples at
        640 px (py-spy) went there. What replace folded into ``sig`` — the request's links,
        chain and chord — is taken off the request, so nothing is sent twice."""
        notes = NOTES.get(self.request.id)
        if notes is None:  # not run through PipelineTask.__call__: Celery's own way
            return super().on_replace(sig)
        sig.delay()
        notes.handed_on = True  # PipelineTask.__call__ does the rest
        return None

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Intake failed for good after admitting the photo: release what it reserved."""
        job_ended(task_id)
        given = dict(zip(PARAMETERS, args or (), strict=False)) | dict(kwargs or {})
        image, user_id = given.get("image_b64"), given.get("user_id")
        if not isinstance(image, str | bytes) or not isinstance(user_id, str):
            return
        with contextlib.suppress(Exception):
            sha256 = staged_sha256(image)
            if sha256 is None:
                sha256 = hashlib.sha256(decode_base64(image, get_settings())).hexdigest()
            rt = get_runtime()
            rt.users.rejected(user_id, sha256, task_id)
            rt.state.release(sha256, task_id)


NOTIFY = "aurum_ml.notify"  # by name: the notify task's module imports this one

_STAGE_OF = {
    "aurum_ml.score_face": "intake",
    "aurum_ml.detect": "detect",
    "aurum_ml.embed": "embed",
    "aurum_ml.score": "score",
    "aurum_ml.store": "store",
}


def ends_job(retval: Any, task_id: str | None) -> bool:
    """Is this the job's end: the store stage's result (it carries the job's id), or an
    intake that answered without running the chain?"""
    return isinstance(retval, dict) and retval.get("job_id") == task_id and "status" in retval


def stages_ran(
    runs: list[tuple[str, float, str, str]], job_id: str | None, ended: str | None = None
) -> bool | None:
    """Stage runs' bookkeeping in one round trip: their metrics (stage, seconds, outcome,
    source each), and the job's progress in the in-flight ledger — or, for a job that
    ``ended``, its leaving the ledger and whether its webhook is wanted (returned). Never
    raises (None: nothing reached Redis): a lost sample or a missed touch (the sweep then
    sees the job idle a little sooner; sending it again is harmless) must not fail a job."""
    try:
        rt = get_runtime()
        with rt.state.redis.pipeline(transaction=False) as pipe:
            for stage, seconds, outcome, source in runs:
                record_stage(pipe, stage, seconds, outcome, source)
            if ended:
                rt.inflight.end(ended, pipe)
                rt.hooks.wanted_on(ended, pipe)
            elif job_id:
                rt.inflight.touch(job_id, pipe)
            replies = pipe.execute()
    except Exception:  # noqa: BLE001 - the price of a Redis outage
        return None
    return bool(replies[-1]) if ended else None


OUTCOME_FIELDS = {"status", "source", "reason", "image_sha256"}  # what outcome_of reads


def outcome_of(args: tuple[Any, ...], retval: Any) -> tuple[str, str]:
    """(outcome, source) of a stage run that returned: a job passed on is ``ok``; a job
    that came in already rejected and passes through a middle stage is ``skipped``; an end
    (the store stage, or intake answering at once) is ``scored`` or the rejection reason."""
    if not isinstance(retval, dict):
        return "ok", "none"
    source = str(retval.get("source") or "none")
    came_in = args[0] if args and isinstance(args[0], dict) else {}
    status = retval.get("status")
    if status == "pending":
        return "ok", source
    if came_in.get("status") not in (None, "pending") and "image_sha256" in retval:
        return "skipped", source
    if status == "rejected":
        return str(retval.get("reason") or "rejected"), source
    return str(status), source


def job_ended(job_id: str) -> None:
    """The job leaves the in-flight ledger; its webhook goes if one was asked for (its
    message carries the job id only: the notify task reads the outcome from the result
    backend)."""
    with contextlib.suppress(Exception):  # a ledger entry left behind: the sweep ends it
        get_runtime().inflight.done(job_id)
    try:
        wanted = get_runtime().hooks.wanted(job_id)
    except Exception as exc:  # noqa: BLE001 - logged; the job's own outcome stands
        log.error("job %s: could not send its webhook (%s)", job_id, type(exc).__name__)
        return
    if wanted:
        _send_hook(job_id)


def _send_hook(job_id: str) -> None:
    try:
        app.tasks[NOTIFY].apply_async((job_id,))
    except Exception as exc:  # noqa: BLE001 - logged; the job's own outcome stands
        log.error("job %s: could not send its webhook (%s)", job_id, type(exc).__name__)


def _shown(value: Any) -> Any:
    """How an argument appears in logs and Flower: a job payload by its id and status."""
    if isinstance(value, dict) and "job_id" in value:
        return f"<job {value.get('job_id')} {value.get('status')}>"
    if isinstance(value, str):  # a user id, an image: neither belongs in a log
        return "<str>"
    if isinstance(value, list | tuple) and any(isinstance(v, str) for v in value):
        return f"<{len(value)} items>"
    return value


def dump(model: Job | Result) -> dict[str, Any]:
    return model.model_dump(mode="json")
