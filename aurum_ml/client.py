"""``score_face`` for an app that only submits photos: celery, kombu and redis, nothing else.

::

    from aurum_ml.client import score_face

    job = score_face.delay(image_b64, user_id="u1")  # an AsyncResult
    result = job.get(timeout=60)  # the same Result dict as aurum_ml.pipeline.tasks.score_face gives

It imports no model, OpenCV, numpy, pydantic or Qdrant code: an app needs only
``pip install celery[redis]`` and this package's files (``aurum_ml/client.py``,
``request.py``, ``keys.py``, ``errors.py``), and its import takes a few hundredths of a
second: celery and redis are imported at the first submission (``make bench-pipeline``
prints both). It reads its settings from the same
environment variables as the workers (:class:`CallerSettings`).

A submission is checked once (:func:`aurum_ml.request.check_score_request`: InvalidRequest,
nothing published), its image stored in Redis under its content hash with the job's
erasure epoch, user notes and in-flight ledger entry — one transaction, two round trips
(:func:`stage_submission`) — and then published naming the image. The full package's
``aurum_ml.pipeline.tasks.score_face.delay`` runs the very same steps.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aurum_ml import keys
from aurum_ml.errors import BadInput, ConfigError, InvalidRequest, StateUnavailable
from aurum_ml.request import (
    IMAGE_REF,
    PARAMETERS,
    ScoreArgs,
    check_score_request,
    decode_base64,
    refuse_reference,
    staged_sha256,
)

if TYPE_CHECKING:  # celery, kombu and redis are imported on first use: see Caller
    from celery import Celery
    from celery.result import AsyncResult

__all__ = [
    "EXCHANGE",
    "INTAKE_QUEUE",
    "CallerSettings",
    "Submission",
    "publish_retry_policy",
    "score_face",
    "stage_submission",
    "withdraw",
]

log = logging.getLogger("aurum_ml.client")

EXCHANGE = "aurum"  # direct; every queue is bound by its own name (celeryconfig.py)
INTAKE_QUEUE = "detect"  # score_face is intake: cheap, so it shares the detect queue
TASK = "aurum_ml.score_face"
REDACTED = {"image_b64": "<image>", "user_id": "<user>"}  # what logs and Flower show


def publish_retry_policy(max_retries: int) -> dict[str, Any]:
    """How a publish waits out a broker outage: 0.2 s, +0.5 s each time, at most 3 s apart,
    ``max_retries`` tries (about 80 s at the default 30)."""
    return {"max_retries": max_retries, "interval_start": 0.2, "interval_step": 0.5,
            "interval_max": 3}  # fmt: skip


@dataclass(frozen=True)
class CallerSettings:
    """What a caller needs, from the environment variables the workers read (the same
    names and defaults as :class:`aurum_ml.settings.Settings`; a test holds them equal)."""

    broker_url: str
    result_backend: str
    redis_url: str
    image_max_bytes: int = 10 * 1024 * 1024
    image_ttl_s: int = 3600
    keep_s: int = 86400  # RESULT_EXPIRES: how long a user's job ids are kept
    publish_max_retries: int = 30

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CallerSettings:
        env = os.environ if environ is None else environ
        broker = env.get("AURUM_BROKER_URL", "").strip()
        if not broker:
            raise ConfigError(
                "AURUM_BROKER_URL is not set: aurum_ml.client publishes to the workers' "
                "broker (the embedded default needs the full package: aurum-ml score)"
            )
        redis_url = env.get("AURUM_REDIS_URL", "").strip()
        if not redis_url and not broker.startswith(("redis://", "rediss://")):
            raise ConfigError(
                "AURUM_REDIS_URL is required when AURUM_BROKER_URL is not a Redis URL"
            )
        backend = env.get("AURUM_RESULT_BACKEND", "").strip()
        if not backend and not broker.startswith(("redis://", "rediss://")):
            raise ConfigError(
                "AURUM_RESULT_BACKEND is required when AURUM_BROKER_URL is not a Redis URL"
            )

        def number(name: str, default: int, low: int) -> int:
            raw = env.get(name, "").strip()
            try:
                value = int(raw) if raw else default
            except ValueError:
                raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
            if value < low:
                raise ConfigError(f"{name} must be at least {low}")
            return value

        return cls(
            broker_url=broker,
            result_backend=backend or broker,
            redis_url=redis_url or broker,
            image_max_bytes=number("IMAGE_MAX_BYTES", cls.image_max_bytes, 1),
            image_ttl_s=number("IMAGE_TTL_SECONDS", cls.image_ttl_s, 60),
            keep_s=number("RESULT_EXPIRES", cls.keep_s, 60),
            publish_max_retries=number("PUBLISH_MAX_RETRIES", cls.publish_max_retries, 0),
        )


# --- the submission's records: one transaction ----------------------------------------------
@dataclass(frozen=True)
class Submission:
    """What a caller wrote for a job before publishing it, and the message to publish."""

    job_id: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    sha256: str | None  # the image stored under its hash (None: it travels in the message)
    entered: bool  # in the in-flight ledger (the lost-job sweep watches it)


def stage_submission(
    client: Any,
    job_id: str,
    request: ScoreArgs,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    image_max_bytes: int,
    image_ttl_s: int,
    keep_s: int,
    data: bytes | None = None,
) -> Submission:
    """In the caller's process, before publishing: store the image under its content hash
    for ``job_id`` (noted under the user: an erasure deletes it, whenever it comes), fix the
    job's erasure epoch now (a photo sent before its user's erasure stores nothing, whenever
    a worker takes it), note the job under its user, and enter the request — naming the
    image — in the in-flight ledger, so a lost message is sent again (aurum_ml.pipeline.redrive).

    Two round trips: the user's erasure epoch, then everything else in one MULTI. Best
    effort: if Redis refuses the image, the request is entered with the image inline; if
    Redis is out of reach, the job is still published with its image inline (intake
    records the epoch), only unwatched until intake starts. ``data``: the image's bytes
    when the caller has them already (the API's multipart upload: never base64'd)."""
    if data is None:
        try:
            data = decode_base64(request.image, image_max_bytes)
        except BadInput:  # not base64: it goes in the message, and the worker says why
            data = None
    inline = (args, kwargs)
    if data is not None:
        sha256 = hashlib.sha256(data).hexdigest()
        if staged_sha256(request.image) is not None:  # bytes given: inline means base64
            inline = _with_image(args, kwargs, base64.b64encode(data).decode("ascii"))
        sent = _with_image(args, kwargs, IMAGE_REF + sha256)
        try:
            _write(client, job_id, request.user_id, sent, (sha256, data), image_ttl_s, keep_s)
            return Submission(job_id, *sent, sha256=sha256, entered=True)
        except Exception as exc:  # noqa: BLE001 - the image then travels in the message
            log.warning("job %s: image not stored ahead (%s): sent inline", job_id,
                        type(exc).__name__)  # fmt: skip
    try:
        _write(client, job_id, request.user_id, inline, None, image_ttl_s, keep_s)
    except Exception as exc:  # noqa: BLE001 - the job itself must not fail for this
        log.warning("job %s: not entered in the in-flight ledger (%s)", job_id, type(exc).__name__)
        return Submission(job_id, *inline, sha256=None, entered=False)
    return Submission(job_id, *inline, sha256=None, entered=True)


def _with_image(
    args: tuple[Any, ...], kwargs: dict[str, Any], image: str
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (image, *args[1:]), kwargs
    return args, {**kwargs, "image_b64": image}


def _write(
    client: Any,
    job_id: str,
    user_id: str,
    sent: tuple[tuple[Any, ...], dict[str, Any]],
    image: tuple[str, bytes] | None,
    image_ttl_s: int,
    keep_s: int,
) -> None:
    from kombu.utils.json import dumps  # the ledger's encoding (aurum_ml.pipeline.ledger.InFlight)

    tombstone, epoch_key = keys.tombstone(user_id), keys.job_epoch(job_id)
    current = int(client.get(tombstone) or 0)
    entry = keys.inflight_job(job_id)
    request = {"args": list(sent[0]), "kwargs": sent[1]}
    with client.pipeline(transaction=True) as pipe:
        pipe.set(epoch_key, current, nx=True, ex=image_ttl_s)
        pipe.get(epoch_key)
        if current:  # keep the counter alive while the user has jobs
            pipe.expire(tombstone, keys.tombstone_ttl(image_ttl_s))
        jobs = keys.user(user_id, "jobs")
        pipe.sadd(jobs, job_id)
        pipe.expire(jobs, keep_s)
        if image is not None:
            sha256, data = image
            images, refs = keys.user(user_id, "images"), keys.image_refs(sha256)
            pipe.sadd(images, sha256)
            pipe.expire(images, image_ttl_s)
            pipe.set(keys.image(sha256), data, ex=image_ttl_s)
            pipe.sadd(refs, job_id)
            pipe.expire(refs, image_ttl_s)
        fields = {"request": dumps(request), "user_id": user_id, "epoch": current, "redrives": 0}
        pipe.hset(entry, mapping=fields)
        pipe.expire(entry, image_ttl_s)
        pipe.zadd(keys.INFLIGHT, {job_id: time.time()})
        first = int(pipe.execute()[1] or current)
    if first != current:  # the job id was entered before (sent again): its first epoch
        client.hset(entry, "epoch", first)


def withdraw(client: Any, submission: Submission) -> None:
    """The message was never published: nothing of the job is left to find later."""
    job_id, sha256 = submission.job_id, submission.sha256
    with contextlib.suppress(Exception):
        if submission.entered:
            with client.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.INFLIGHT, job_id)
                pipe.delete(keys.inflight_job(job_id))
                pipe.execute()
        if sha256 is not None:
            refs = keys.image_refs(sha256)

            def drop(pipe: Any) -> None:
                remaining = set(pipe.smembers(refs)) - {job_id.encode()}
                pipe.multi()
                pipe.srem(refs, job_id)
                if not remaining:
                    pipe.delete(keys.image(sha256), refs)

            client.transaction(drop, refs)  # WATCH refs: a job adding itself runs it again


def shown(args: Any, kwargs: Any) -> dict[str, str]:
    """``argsrepr``/``kwargsrepr`` for a score_face message: no image, no user id."""
    shown_args = [REDACTED.get(PARAMETERS[i], a) for i, a in enumerate(tuple(args or ()))]
    shown_kwargs = {k: REDACTED.get(k, v) for k, v in dict(kwargs or {}).items()}
    return {"argsrepr": repr(tuple(shown_args)), "kwargsrepr": repr(shown_kwargs)}


def check_serializer(name: str, options: Mapping[str, Any]) -> None:
    if options.get("serializer", "json") != "json":  # workers accept JSON only
        raise InvalidRequest(
            f"{name} is sent as JSON only (serializer={options['serializer']!r} would be "
            "refused by every worker, and its result never come)"
        )


# --- the thin caller --------------------------------------------------------------------------
class Caller:
    """A Celery app that publishes ``aurum_ml.score_face`` and nothing else, and a Redis
    client for the submission's records. Celery, kombu and redis are imported here, not at
    the module's import (redis-py alone takes ~0.1 s to import)."""

    def __init__(self, settings: CallerSettings | None = None) -> None:
        import redis

        self.settings = settings or CallerSettings.from_env()
        self.app = _publisher(self.settings)
        self.redis = redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=10, socket_connect_timeout=5,
            health_check_interval=30,
        )  # fmt: skip

    def submit(self, args: Any = None, kwargs: Any = None, **options: Any) -> AsyncResult:
        check_serializer("score_face", options)
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        request = check_score_request(args, kwargs, self.settings.image_max_bytes)
        refuse_reference(request.image)
        job_id = options.pop("task_id", None) or str(uuid.uuid4())
        submission = stage_submission(
            self.redis, job_id, request, args, kwargs,
            image_max_bytes=self.settings.image_max_bytes,
            image_ttl_s=self.settings.image_ttl_s, keep_s=self.settings.keep_s,
        )  # fmt: skip
        options = shown(args, kwargs) | options
        try:
            return self.app.send_task(
                TASK, submission.args, submission.kwargs, task_id=job_id, **options
            )
        except BaseException as exc:
            withdraw(self.redis, submission)
            if _unreachable(exc):  # nothing was published: the caller may try again
                raise StateUnavailable(
                    f"the broker or its result store is unreachable ({type(exc).__name__}); "
                    "nothing was published"
                ) from exc
            raise


def _unreachable(exc: BaseException) -> bool:
    """A publish that failed for want of the broker or the result store: kombu's and
    redis-py's connection errors, and Celery's "Retry limit exceeded while trying to
    reconnect to the Celery result store" (a RuntimeError)."""
    from kombu.exceptions import OperationalError

    if isinstance(exc, OperationalError | ConnectionError | OSError):
        return True
    return isinstance(exc, RuntimeError) and "Retry limit exceeded" in str(exc)


def _publisher(settings: CallerSettings) -> Celery:
    from celery import Celery
    from kombu import Exchange, Queue

    app = Celery("aurum_ml", set_as_current=False)
    exchange = Exchange(EXCHANGE, type="direct")
    transport: dict[str, Any] = {}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        transport = {"socket_timeout": 30, "socket_connect_timeout": 5, "socket_keepalive": True}
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_publish_retry=True,
        task_publish_retry_policy=publish_retry_policy(settings.publish_max_retries),
        task_queues=(Queue(INTAKE_QUEUE, exchange, routing_key=INTAKE_QUEUE),),
        task_routes={TASK: {"queue": INTAKE_QUEUE, "routing_key": INTAKE_QUEUE}},
        task_default_exchange=EXCHANGE,
        task_create_missing_queues=False,
        result_backend_always_retry=True,
        result_backend_max_retries=30,
        result_backend_transport_options={
            "retry_policy": {
                "max_retries": 60,
                "interval_start": 0,
                "interval_step": 1,
                "interval_max": 2,
            }  # fmt: skip
        },
    )
    return app


_caller: Caller | None = None
_lock = threading.Lock()


def caller() -> Caller:
    """The process's caller, built from the environment on first use."""
    global _caller
    with _lock:
        if _caller is None:
            _caller = Caller()
        return _caller


class _ScoreFace:
    """``score_face.delay(image_b64, user_id, allow_multiple_faces=None)`` and
    ``score_face.apply_async(args, kwargs, **options)``, as on the Celery task."""

    name = TASK

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return caller().submit(args, kwargs)

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> AsyncResult:
        return caller().submit(args, kwargs, **options)


score_face = _ScoreFace()
