"""Thin Celery tasks: deserialise, call the stage, return JSON. Logic lives in ``stages``.

``score_face.delay(image_b64, user_id="u1")`` validates the input and stores the image in
Redis under its content hash, in the caller's process, so the message names the image
instead of carrying it (``aurum_ml.request.IMAGE_REF``); intake admits the job and replaces
itself with the flat chain
``detect → embed → score → store``; the caller's AsyncResult resolves to the store stage's
result (a :class:`~aurum_ml.schemas.Result` as a dict). Bad input is a ``rejected`` result;
infrastructure failures are retried with backoff, then re-raised by ``.get()`` as an
exception from :mod:`aurum_ml.errors`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Task, chain, signals, states
from celery.exceptions import Ignore, Reject, Retry
from celery.utils import uuid
from celery.worker.request import Request as CeleryRequest
from kombu.exceptions import OperationalError as KombuOperationalError

from aurum_ml.client import check_serializer, shown, stage_submission, withdraw
from aurum_ml.errors import (
    BadInput,
    ImageExpired,
    InvalidRequest,
    PermanentError,
    RetryableError,
    ServiceUnavailable,
    StateUnavailable,
    UserErased,
)
from aurum_ml.pipeline import webhooks
from aurum_ml.pipeline.backends import FaceBackend
from aurum_ml.pipeline.celery_app import app, config
from aurum_ml.pipeline.health import fallback_state, probe
from aurum_ml.pipeline.imaging import decode_base64, inspect_image
from aurum_ml.pipeline.recovery import rescore_degraded as rescore_degraded_jobs
from aurum_ml.pipeline.redrive import redrive_stalled as redrive_stalled_jobs
from aurum_ml.pipeline.runtime import Runtime, get_runtime
from aurum_ml.pipeline.stages.store import ERASED
from aurum_ml.pipeline.state import HandOff, LedgerEntry, PipelineState
from aurum_ml.pipeline.telemetry import record_stage, rerank_done
from aurum_ml.population import queries
from aurum_ml.population.forget import SWEEP_AFTER_S, sweep
from aurum_ml.population.forget import forget_user as forget_user_everywhere
from aurum_ml.population.persistence import compact
from aurum_ml.population.rerank import RerankBusy
from aurum_ml.population.rerank import rerank as rerank_index
from aurum_ml.population.users import UserRecords
from aurum_ml.request import (
    IMAGE_REF,
    PARAMETERS,
    check_score_request,
    refuse_reference,
    staged_sha256,
)
from aurum_ml.schemas import Job, Result, check_user_id
from aurum_ml.settings import get_settings

__all__ = [
    "compact_persistence",
    "detect",
    "embed",
    "forget_user",
    "get_score",
    "leaderboard",
    "notify",
    "probe_health",
    "redrive_stalled",
    "rerank",
    "rescore_degraded",
    "score",
    "score_face",
    "similar",
    "stats",
    "store",
    "sweep_erased",
]

log = logging.getLogger("aurum_ml.pipeline.tasks")
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


_NOTES: dict[str, RunNotes] = {}  # task id → its run's notes, while it runs


class PipelineTask(Task):
    """Retry policy, declared once: retryable errors back off exponentially with jitter
    (cap and count from celeryconfig's task_annotations); permanent ones fail at once.

    What a task's arguments and results show in logs, events and Flower is redacted: a
    stage's job payload appears as its job id and status, never its user id, face or
    results (:class:`RedactedRequest`)."""

    Request = "aurum_ml.pipeline.tasks:RedactedRequest"
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
        # travel with a retry): what the run notes for after it goes in _NOTES
        notes = _NOTES[self.request.id] = RunNotes()
        try:
            retval = super().__call__(*args, **kwargs)
            outcome, source = _outcome(args, retval)
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
            # stages intake ran itself were timed as their own (_run_here): not intake's
            _NOTES.pop(self.request.id, None)
            seconds = time.perf_counter() - started - notes.inline_s
            ended = self.request.id if _ends_job(retval, self.request.id) else None
            # a job that ended leaves the ledger in the same round trip (on_success then
            # sends its webhook, if one is wanted, once its result is stored)
            self.request.hook_wanted = _stages_ran(
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
        if _ends_job(retval, task_id):
            wanted = getattr(self.request, "hook_wanted", None)
            if wanted is None:  # its bookkeeping did not reach Redis: the long way
                _job_ended(task_id)
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
            _job_ended(job["job_id"])


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
        notes = _NOTES.get(self.request.id)
        if notes is None:  # not run through PipelineTask.__call__: Celery's own way
            return super().on_replace(sig)
        sig.delay()
        notes.handed_on = True  # PipelineTask.__call__ does the rest
        return None

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Intake failed for good after admitting the photo: release what it reserved."""
        _job_ended(task_id)
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


def _past_intake(rt: Runtime, job_id: str) -> bool:
    """Has the job gone past intake already, so that this is its intake message delivered
    again (a worker died before acking it)? Its result is stored, or the in-flight ledger
    holds it as admitted."""
    if app.AsyncResult(job_id).state in states.READY_STATES:
        return True
    entry = rt.inflight.load(job_id)
    return entry is not None and entry.job is not None


_STAGE_OF = {
    "aurum_ml.score_face": "intake",
    "aurum_ml.detect": "detect",
    "aurum_ml.embed": "embed",
    "aurum_ml.score": "score",
    "aurum_ml.store": "store",
}


def _ends_job(retval: Any, task_id: str | None) -> bool:
    """Is this the job's end: the store stage's result (it carries the job's id), or an
    intake that answered without running the chain?"""
    return isinstance(retval, dict) and retval.get("job_id") == task_id and "status" in retval


def _stages_ran(
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


_OUTCOME_FIELDS = {"status", "source", "reason", "image_sha256"}  # what _outcome reads


def _outcome(args: tuple[Any, ...], retval: Any) -> tuple[str, str]:
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


def _job_ended(job_id: str) -> None:
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
        notify.apply_async((job_id,))
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


def _dump(model: Job | Result) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _valid_user_id(user_id: Any) -> bool:
    if not isinstance(user_id, str):
        return False
    try:
        check_user_id(user_id)
    except ValueError:
        return False
    return True


def _rejection(job_id: str, user_id: str, exc: BadInput, **fields: Any) -> dict[str, Any]:
    return _dump(
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
    if _stages_run_here(runtime):
        handoff = HandOff(runtime.state, sha256, data)
        return self.replace(store.s(_dump(_run_here(self, runtime, job, handoff))))
    return self.replace(_stages(job))


def _stages_run_here(rt: Runtime) -> bool:
    """Does this worker consume the detect, embed and score queues and run their models
    in-process? Then sending a job's three stages through the broker would only bring
    them back to this very pool: intake runs them itself (``INLINE_LOCAL_STAGES``)."""
    if not rt.settings.inline_local_stages:
        return False
    consumed = set(app.amqp.queues.consume_from)
    return (
        {"detect", "embed", "score"} <= consumed
        and _in_process(rt, rt.detect_service)
        and _in_process(rt, rt.embed_service)
    )


def _run_here(task: Task, rt: Runtime, job: Job, handoff: HandOff) -> Job:
    """detect → embed → score in this task, each counted as its stage (aurum_ml.surfaces.metrics)
    as if it had run as one — their bookkeeping in one round trip, before the store stage
    is sent — with the image and the chip handed on in memory; the job then goes on to
    the store stage."""
    notes = _NOTES.get(task.request.id) or RunNotes()
    runs: list[tuple[str, float, str, str]] = []
    try:
        for stage, run in _MIDDLE:
            started = time.perf_counter()
            came_in = {"status": job.status}
            outcome, source = "failed", "none"
            try:
                job = run(task, rt, job, handoff)
                outcome, source = _outcome((came_in,), job.model_dump(include=_OUTCOME_FIELDS))
            finally:
                seconds = time.perf_counter() - started
                notes.inline_s += seconds
                runs.append((stage, seconds, outcome, source))
    finally:
        _stages_ran(runs, job.job_id)
    return job


def _stages(job: Job, job_id: str | None = None) -> Any:
    """detect → embed → score → store; ``job_id`` names the store stage (a re-sent job)."""
    last = store.s() if job_id is None else store.s().set(task_id=job_id)
    return chain(detect.s(_dump(job)), embed.s(), score.s(), last)


def _in_process(rt: Runtime, service: FaceBackend | None) -> bool:
    """Would a stage with this service run on the in-process model now: no service, or
    the fallback flag on (with FALLBACK_TO_SIMULATED)?"""
    if service is None:
        return True
    return bool(rt.settings.fallback_to_simulated and fallback_state(rt.state.redis).active)


def _with_service_or_fallback(
    task: Task, rt: Runtime, service: FaceBackend | None, run: Callable[[FaceBackend], Job]
) -> Job:
    """The service, unless there is none (USE_REAL_ML off, no URL) or the fallback flag is
    on; when the service is still unavailable on the last retry, the fallback — both only
    with FALLBACK_TO_SIMULATED. Otherwise ServiceUnavailable goes to Celery's autoretry."""
    if service is None or _in_process(rt, service):  # (None: narrows the type)
        return run(rt.fallback)
    try:
        return run(service)
    except ServiceUnavailable as exc:
        if rt.settings.fallback_to_simulated and task.request.retries >= task.max_retries:
            log.warning("%s: service unavailable after retries (%s): fallback", task.name, exc)
            return run(rt.fallback)
        raise


def _detect(task: Task, rt: Runtime, job: Job, state: PipelineState | None = None) -> Job:
    return _with_service_or_fallback(
        task, rt, rt.detect_service, lambda b: rt.detect(job, b, state)
    )


def _embed(task: Task, rt: Runtime, job: Job, state: PipelineState | None = None) -> Job:
    return _with_service_or_fallback(task, rt, rt.embed_service, lambda b: rt.embed(job, b, state))


def _score(task: Task, rt: Runtime, job: Job, state: PipelineState | None = None) -> Job:
    return rt.score(job, state)


# the middle stages' bodies, in order: their tasks, and intake's run of them (_run_here)
_MIDDLE: tuple[tuple[str, Callable[[Task, Runtime, Job, PipelineState | None], Job]], ...] = (
    ("detect", _detect),
    ("embed", _embed),
    ("score", _score),
)


@app.task(bind=True, base=PipelineTask, name="aurum_ml.detect")
def detect(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    return _dump(_detect(self, get_runtime(), Job.model_validate(job)))


@app.task(bind=True, base=PipelineTask, name="aurum_ml.embed")
def embed(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    return _dump(_embed(self, get_runtime(), Job.model_validate(job)))


@app.task(bind=True, base=PipelineTask, name="aurum_ml.score")
def score(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    return _dump(_score(self, get_runtime(), Job.model_validate(job)))


@app.task(bind=True, base=PipelineTask, name="aurum_ml.store")
def store(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    rt = get_runtime()
    result = rt.store(Job.model_validate(job))
    # ids, outcome, reason code and timings only: see aurum_ml.logs
    log.info(
        "job %s %s%s in %.0f ms",
        result.job_id,
        "degraded" if result.degraded else result.status,
        f" ({result.reason})" if result.reason else "",
        result.timings_ms.total,
    )
    return _dump(result)


# --- maintenance queue: the re-rank, queries and erasure --------------------------------------


@app.task(bind=True, base=PipelineTask, name="aurum_ml.rerank")
def rerank(self: Task) -> dict[str, Any]:
    """Recompute every stored face's typicality and score (beat-scheduled)."""
    rt = get_runtime()
    try:
        report = rerank_index(rt, owner=self.request.hostname)
    except RerankBusy as exc:  # one at a time: the run under way does the work
        return {"skipped": str(exc), "under_way": rt.index.run_under_way()}
    rerank_done(rt.state.redis, report.seconds, report.faces)
    return report.as_dict()


_PROCESS_STARTED = time.time()  # before this worker took any message


@signals.worker_ready.connect(weak=False)
def _redo_lost_rerank(sender: Any = None, **_: Any) -> None:
    """A worker that runs re-ranks, restarted: a re-rank its previous life began died with
    it. Reap its record and staging set, count it, and send the re-rank again now rather
    than at beat's next hour (beat's sweep does the same once a lost run's lease lapses,
    for a worker that does not come back)."""
    if sender is None or config.VECTOR_QUEUE not in sender.app.amqp.queues.consume_from:
        return
    try:
        lost = get_runtime().index.run_reap(sender.hostname, _PROCESS_STARTED)
    except StateUnavailable:  # Redis down at start: beat's sweep reaps it by its lease
        return
    if lost:
        log.warning("a re-rank died with this worker's previous process; sending it again")
        rerank.delay()


@app.task(base=PipelineTask, name="aurum_ml.probe_health")
def probe_health() -> dict[str, Any]:
    """Probe the services, keep the fallback flag (beat-scheduled every interval)."""
    rt = get_runtime()
    return probe(rt.state.redis, rt.settings, on_recovery=lambda: rescore_degraded.delay())


@app.task(base=PipelineTask, name="aurum_ml.rescore_degraded")
def rescore_degraded() -> dict[str, Any]:
    """Re-score the simulated fallback's results through the services (same job ids)."""

    def replace(job_id: str, result: dict[str, Any] | None) -> None:
        # The backend never overwrites a SUCCESS (its guard against duplicate deliveries):
        # forget the simulated result first. None: the user was erased, forget it only.
        app.backend.forget(job_id)
        if result is not None:
            app.backend.store_result(job_id, result, states.SUCCESS)

    # counts only: this report is itself stored as a task result, for a day, and job ids
    # of users erased during the run (or after it) must not stay there
    report = rescore_degraded_jobs(get_runtime(), replace)
    return {k: len(v) if isinstance(v, list) else v for k, v in report.items()}


def stage_backlog() -> int:
    """Messages waiting in the stage queues (Redis or RabbitMQ)."""
    total = 0
    with app.connection_for_read() as conn:
        for queue in config.STAGE_QUEUES:
            channel = conn.channel()  # a refused passive declare closes its channel
            try:
                total += channel.queue_declare(queue, passive=True).message_count
            except conn.channel_errors:  # no such queue (Redis drops an empty list)
                pass
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return total


@app.task(base=PipelineTask, name="aurum_ml.redrive_stalled")
def redrive_stalled() -> dict[str, list[str]]:
    """Beat's sweep for jobs the broker lost: sent again, or failed with a typed error."""
    rt = get_runtime()

    def has_result(job_id: str) -> bool:
        return app.AsyncResult(job_id).state in states.READY_STATES

    def send(job_id: str, entry: LedgerEntry) -> None:
        if entry.job is not None:
            _stages(entry.job, job_id).apply_async()
        elif entry.request is not None:
            args, kwargs = entry.request["args"], entry.request["kwargs"]
            score_face.apply_async(args, kwargs, task_id=job_id, ledger=False)

    def fail(job_id: str, job: Job | None, exc: PermanentError) -> None:
        app.backend.mark_as_failure(job_id, exc)
        if job is not None:
            rt.release_failed(job)
        _job_ended(job_id)

    if rt.index.run_reap():  # a re-rank whose lease lapsed: it died, and nobody redid it
        log.warning("a re-rank died mid-run (its lease lapsed); sending it again")
        rerank.delay()
    return redrive_stalled_jobs(
        rt, has_result=has_result, backlog=stage_backlog, send=send, fail=fail
    ).as_dict()


@app.task(base=PipelineTask, name="aurum_ml.get_score")
def get_score(user_id: str) -> dict[str, Any] | None:
    return queries.get_score(get_runtime(), user_id)


@app.task(base=PipelineTask, name="aurum_ml.similar")
def similar(user_id: str, k: int = 10, tenant: str | None = None) -> list[dict[str, Any]] | None:
    return queries.similar(get_runtime(), user_id, k, tenant)


@app.task(base=PipelineTask, name="aurum_ml.leaderboard")
def leaderboard(limit: int = 10, tenant: str | None = None) -> list[dict[str, Any]]:
    return queries.leaderboard(get_runtime(), limit, tenant)


@app.task(base=PipelineTask, name="aurum_ml.stats")
def stats() -> dict[str, Any]:
    return queries.stats(get_runtime())


class CeleryResults:
    """The jobs' results in Celery's result backend, for erasure
    (:mod:`aurum_ml.population.forget`).
    Remembers the ids it forgot: the erasure's second pass forgets them again."""

    def __init__(self) -> None:
        self.forgotten: list[str] = []

    def forget(self, job_ids: Any) -> None:
        for job_id in job_ids:
            app.AsyncResult(job_id).forget()
            self.forgotten.append(job_id)

    def scrub(self, job_ids: Any, erased: str) -> int:
        changed = 0
        for job_id in job_ids:
            meta = app.backend.get_task_meta(job_id, cache=False)
            result = meta.get("result")
            if meta.get("status") != states.SUCCESS or not isinstance(result, dict):
                continue
            matches = result.get("matches") or []
            kept = [m for m in matches if not UserRecords.names(m, erased)]
            if len(kept) != len(matches):
                # the backend never overwrites a SUCCESS: forget it first
                app.backend.forget(job_id)
                app.backend.store_result(job_id, result | {"matches": kept}, states.SUCCESS)
                changed += 1
        return changed


@app.task(base=PipelineTask, name="aurum_ml.forget_user")
def forget_user(user_id: str) -> dict[str, Any]:
    """Erase everything held about the user, the Celery results of their jobs and their
    name in other users' match lists included; a second pass follows (forget.sweep)."""
    results = CeleryResults()
    report = forget_user_everywhere(get_runtime(), user_id, results)
    erased = UserRecords.erasure_key(user_id)  # the second pass never sees the id
    sweep_erased.apply_async((erased, results.forgotten), countdown=SWEEP_AFTER_S)
    return report


@app.task(base=PipelineTask, name="aurum_ml.sweep_erased")
def sweep_erased(erased: str, job_ids: list[str]) -> dict[str, Any]:
    """The erasure's second pass: results written by jobs that were finishing meanwhile.
    Takes the user's erasure key, never their id."""
    return sweep(get_runtime(), erased, job_ids, CeleryResults())


@app.task(base=PipelineTask, name="aurum_ml.compact_persistence")
def compact_persistence() -> dict[str, Any]:
    """Rewrite the Redis append-only files after erasures (rate-limited; see persistence)."""
    return compact(get_runtime().settings)


# --- notify queue: webhooks ---------------------------------------------------------------------

_OUTCOME_WAIT_TRIES = 30  # a second apart: the result backend lags the task's end by ms


@app.task(bind=True, base=PipelineTask, name="aurum_ml.notify")
def notify(self: Task, job_id: str, attempt: int = 1) -> str:
    """POST the job's outcome to its webhook, signed; retried with backoff on timeouts,
    5xx and 429 (see aurum_ml.pipeline.webhooks). Each message carries the attempt it is for: of
    several copies of one attempt (a redelivered retry, a job ended twice) exactly one
    POSTs (``HookRecords.claim``), so an outage of any length gives one delivery."""
    rt = get_runtime()
    record = rt.hooks.get(job_id)
    if record is None or record.final:
        return "none"
    if record.next_attempt != attempt:  # a copy of an attempt already made
        return "duplicate"
    result = app.AsyncResult(job_id)
    state = result.state
    if state not in (states.SUCCESS, states.FAILURE):
        if self.request.retries >= _OUTCOME_WAIT_TRIES:  # forgotten (erased) or lost
            rt.hooks.attempted(job_id, "no_outcome", delivered=False, final=True)
            return "final"
        raise self.retry(countdown=1, max_retries=self.request.retries + 1)
    if not rt.hooks.claim(job_id, attempt, lease_s=rt.settings.webhook_timeout_s + 15):
        return "duplicate"  # another copy of this attempt is posting, or has posted
    if state == states.SUCCESS:
        shown = queries.for_tenant(rt, result.result, record.tenant)
        body = webhooks.body_of(job_id, "done", shown, None)
    else:
        exc = result.result
        error = {"error": type(exc).__name__, "message": str(exc)}
        body = webhooks.body_of(job_id, "failed", None, error)
    outcome = webhooks.deliver(job_id, record, rt.hooks, rt.settings, body)
    if outcome == "retry":
        countdown = webhooks.backoff(record.attempts + 1)  # this attempt included
        raise self.retry(
            args=(job_id, attempt + 1), countdown=countdown, max_retries=self.request.retries + 1
        )
    log.info("job %s: webhook %s", job_id, outcome)
    return outcome
