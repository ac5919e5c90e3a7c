"""Thin Celery tasks: deserialise, call the stage, return JSON. Logic lives in ``stages``.

``score_face.delay(image_b64, user_id="u1")`` validates the input, stores the image in
Redis under its content hash and replaces itself with the flat chain
``detect → embed → score → store``; the caller's AsyncResult resolves to the store stage's
result (a :class:`~aurum_ml.schemas.Result` as a dict). Bad input is a ``rejected`` result;
infrastructure failures are retried with backoff, then re-raised by ``.get()`` as an
exception from :mod:`aurum_ml.errors`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Task, chain, states

from aurum_ml import queries
from aurum_ml.backends import FaceBackend
from aurum_ml.celery_app import app
from aurum_ml.errors import BadInput, PermanentError, RetryableError, ServiceUnavailable
from aurum_ml.forget import forget_user as forget_user_everywhere
from aurum_ml.health import fallback_state, probe
from aurum_ml.imaging import decode_base64, inspect_image
from aurum_ml.recovery import rescore_degraded as rescore_degraded_jobs
from aurum_ml.rerank import rerank as rerank_index
from aurum_ml.runtime import Runtime, get_runtime
from aurum_ml.schemas import Job, Result

__all__ = [
    "detect",
    "embed",
    "forget_user",
    "get_score",
    "leaderboard",
    "probe_health",
    "rerank",
    "rescore_degraded",
    "score",
    "score_face",
    "similar",
    "stats",
    "store",
]

MAX_USER_ID = 128
log = logging.getLogger("aurum_ml.tasks")


class PipelineTask(Task):
    """Retry policy, declared once: retryable errors back off exponentially with jitter
    (cap and count from celeryconfig's task_annotations); permanent ones fail at once."""

    autoretry_for = (RetryableError,)
    dont_autoretry_for = (PermanentError,)
    retry_backoff = True
    retry_jitter = True


class IntakeTask(PipelineTask):
    """Keeps the image out of logs, events and Flower: its argument is shown redacted."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        shown_args = [_redact(a) if i == 0 else a for i, a in enumerate(args)]
        shown_kwargs = {k: _redact(v) if k == "image_b64" else v for k, v in kwargs.items()}
        options.setdefault("argsrepr", repr(tuple(shown_args)))
        options.setdefault("kwargsrepr", repr(shown_kwargs))
        return super().apply_async(args, kwargs, **options)


def _redact(image: Any) -> str:
    size = len(image) if isinstance(image, str | bytes) else 0
    return f"<image: {size} base64 chars>"


def _dump(model: Job | Result) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _rejection(job_id: str, user_id: Any, exc: BadInput, **fields: Any) -> dict[str, Any]:
    return _dump(
        Result(
            job_id=job_id,
            status="rejected",
            reason=exc.reason,
            message=exc.message,
            user_id=str(user_id)[:MAX_USER_ID],
            **fields,
        )
    )


@app.task(bind=True, base=IntakeTask, name="aurum_ml.score_face")
def score_face(
    self: Task, image_b64: str, user_id: str, allow_multiple_faces: bool | None = None
) -> Any:
    """Score the face in a base64 image for ``user_id``. See the module docstring."""
    runtime = get_runtime()
    job_id = self.request.id
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > MAX_USER_ID:
        message = f"user_id must be a non-empty string of at most {MAX_USER_ID} chars"
        return _rejection(job_id, user_id, BadInput(message, "invalid_request"))
    runtime.users.note_job(user_id, job_id)
    try:
        data = decode_base64(image_b64, runtime.settings)
        inspect_image(data, runtime.settings)
    except BadInput as exc:
        return _rejection(job_id, user_id, exc)
    sha256 = hashlib.sha256(data).hexdigest()
    admission = runtime.users.admit(user_id, sha256, job_id)
    if admission.verdict == "stored":  # the same photo again: its stored result
        return admission.result
    if admission.verdict == "cooldown":
        days = runtime.settings.cooldown_days
        message = (
            f"one new photo per {days:g} days; the next can be scored from {admission.until_iso}"
        )
        return _rejection(
            job_id, user_id, BadInput(message, "cooldown"), next_allowed_at=admission.until_iso
        )
    runtime.state.put_image(sha256, data, job_id)
    job = Job(
        job_id=job_id,
        status="pending",
        user_id=user_id,
        image_sha256=sha256,
        allow_multiple_faces=(
            runtime.settings.allow_multiple_faces
            if allow_multiple_faces is None
            else bool(allow_multiple_faces)
        ),
        submitted_at=time.time(),
    )
    return self.replace(chain(detect.s(_dump(job)), embed.s(), score.s(), store.s()))


def _with_service_or_fallback(
    task: Task, rt: Runtime, service: FaceBackend | None, run: Callable[[FaceBackend], Job]
) -> Job:
    """The service, unless there is none (USE_REAL_ML off, no URL) or the fallback flag is
    on; when the service is still unavailable on the last retry, the fallback — both only
    with FALLBACK_TO_SIMULATED. Otherwise ServiceUnavailable goes to Celery's autoretry."""
    may_fall_back = rt.settings.fallback_to_simulated
    if service is None or (may_fall_back and fallback_state(rt.state.redis).active):
        return run(rt.fallback)
    try:
        return run(service)
    except ServiceUnavailable as exc:
        if may_fall_back and task.request.retries >= task.max_retries:
            log.warning("%s: service unavailable after retries (%s): fallback", task.name, exc)
            return run(rt.fallback)
        raise


@app.task(bind=True, base=PipelineTask, name="aurum_ml.detect")
def detect(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    rt = get_runtime()
    current = Job.model_validate(job)
    return _dump(
        _with_service_or_fallback(
            self,
            rt,
            rt.detect_service,
            lambda backend: rt.detect(current, backend),
        )
    )


@app.task(bind=True, base=PipelineTask, name="aurum_ml.embed")
def embed(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    rt = get_runtime()
    current = Job.model_validate(job)
    return _dump(
        _with_service_or_fallback(
            self,
            rt,
            rt.embed_service,
            lambda backend: rt.embed(current, backend),
        )
    )


@app.task(bind=True, base=PipelineTask, name="aurum_ml.score")
def score(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    rt = get_runtime()
    return _dump(rt.score(Job.model_validate(job)))


@app.task(bind=True, base=PipelineTask, name="aurum_ml.store")
def store(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    rt = get_runtime()
    return _dump(rt.store(Job.model_validate(job)))


# --- maintenance queue: the re-rank, queries and erasure --------------------------------------


@app.task(base=PipelineTask, name="aurum_ml.rerank")
def rerank() -> dict[str, Any]:
    """Recompute every stored face's typicality and score (beat-scheduled)."""
    return rerank_index(get_runtime()).as_dict()


@app.task(base=PipelineTask, name="aurum_ml.probe_health")
def probe_health() -> dict[str, Any]:
    """Probe the services, keep the fallback flag (beat-scheduled every interval)."""
    rt = get_runtime()
    return probe(rt.state.redis, rt.settings, on_recovery=lambda: rescore_degraded.delay())


@app.task(base=PipelineTask, name="aurum_ml.rescore_degraded")
def rescore_degraded() -> dict[str, Any]:
    """Re-score the simulated fallback's results through the services (same job ids)."""

    def replace(job_id: str, result: dict[str, Any]) -> None:
        # The backend never overwrites a SUCCESS (its guard against duplicate deliveries):
        # forget the simulated result first.
        app.backend.forget(job_id)
        app.backend.store_result(job_id, result, states.SUCCESS)

    return rescore_degraded_jobs(get_runtime(), replace)


@app.task(base=PipelineTask, name="aurum_ml.get_score")
def get_score(user_id: str) -> dict[str, Any] | None:
    return queries.get_score(get_runtime(), user_id)


@app.task(base=PipelineTask, name="aurum_ml.similar")
def similar(user_id: str, k: int = 10) -> list[dict[str, Any]]:
    return queries.similar(get_runtime(), user_id, k)


@app.task(base=PipelineTask, name="aurum_ml.leaderboard")
def leaderboard(limit: int = 10) -> list[dict[str, Any]]:
    return queries.leaderboard(get_runtime(), limit)


@app.task(base=PipelineTask, name="aurum_ml.stats")
def stats() -> dict[str, Any]:
    return queries.stats(get_runtime())


@app.task(base=PipelineTask, name="aurum_ml.forget_user")
def forget_user(user_id: str) -> dict[str, Any]:
    """Erase everything held about the user, the Celery results of their jobs included."""

    def forget_results(job_ids: Any) -> None:
        for job_id in job_ids:
            app.AsyncResult(job_id).forget()

    return forget_user_everywhere(get_runtime(), user_id, forget_results)
