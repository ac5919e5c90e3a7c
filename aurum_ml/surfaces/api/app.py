"""``/v1``: submit a photo (202 + job id, or the result within ``?wait=N`` s), poll the job,
get a signed webhook when it ends, query the population, erase a user.

Nothing is re-implemented here: every route publishes the task the Python API publishes
(``score_face``, ``get_score``, ``similar``, ``leaderboard``, ``stats``, ``forget_user``) and
reads Celery's result backend.

- **Keys**: ``AURUM_API_KEYS`` (``name:key,…``), header ``X-API-Key``, compared in constant
  time against every key. A job id belongs to the key that submitted it
  (``aurum:api:job:{id}``): another key gets 404, as for an id never issued (Celery itself
  reports any unknown id as PENDING). Without keys the API serves loopback only
  (``aurum-ml serve api`` refuses another address).
- **Limits**: ``POST /v1/score`` is limited per key (``AURUM_API_RATE_LIMIT``, 10/minute) with
  the ``limits`` library's moving window in Redis, so it holds across API processes; 429
  comes with ``Retry-After``. The body is capped before it is read (413).
- **Errors**: always ``{"error": code, "message": …}`` with the pipeline's reason codes; a
  photo the pipeline refuses is a *result* (``state: done``, ``result.status: rejected``).
- **Logs**: one line per request with the route's template (``/v1/users/{user_id}/score``),
  never the user id, key or body; uvicorn's access log is off.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser

from aurum_ml import __version__
from aurum_ml.errors import AurumError, ConfigError, InvalidRequest
from aurum_ml.pipeline.state import JobOwners
from aurum_ml.pipeline.webhooks import HookRecords, check_callback
from aurum_ml.population.queries import for_tenant
from aurum_ml.request import refuse_reference
from aurum_ml.schemas import ServiceErrorBody, check_user_id
from aurum_ml.settings import Settings, get_settings
from aurum_ml.surfaces.webapp import BodyLimit, json_error, json_errors

__all__ = ["ApiError", "create_app"]

log = logging.getLogger("aurum_ml.surfaces.api")

NOT_YOURS = "no such user for this key"
MAX_WAIT_S = 30
QUERY_TIMEOUT_S = 30
ANONYMOUS = "local"
# A request waits ~2 s for an unreachable broker, then answers 503 (the caller retries);
# a worker's own publishes wait ~80 s instead (celeryconfig's task_publish_retry_policy).
PUBLISH_RETRY = {
    "max_retries": 3,
    "interval_start": 0.2,
    "interval_step": 0.3,
    "interval_max": 1,
}  # the key name when no keys are configured (loopback only)


class ApiError(Exception):
    def __init__(
        self, status: int, error: str, message: str, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers


# --- request and response bodies --------------------------------------------------------------
class ScoreBody(BaseModel):
    """``POST /v1/score`` as JSON (multipart: the same fields, ``image`` as a file). Strict:
    ``"yes"`` is not a boolean, a number is not a user id."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image_base64: str = Field(..., description="the photo (JPEG, PNG, WebP …), base64")
    user_id: str = Field(..., description="1–128 printable characters")
    allow_multiple_faces: bool | None = Field(
        None, description="score the largest of several faces (default: the server's setting)"
    )
    callback_url: str | None = Field(
        None, description="POST the outcome here when the job ends (host must be allowed)"
    )


class Webhook(BaseModel):
    """The job's webhook as its submitter sees it: never the receiver's answer."""

    delivered: bool
    attempts: int = Field(..., description="POSTs sent so far")


class JobView(BaseModel):
    job_id: str
    state: Literal["queued", "running", "done", "failed"]
    status_url: str
    result: dict[str, Any] | None = Field(
        None, description="with done: the result (see the README's result table)"
    )
    error: ServiceErrorBody | None = Field(None, description="with failed: what went wrong")
    webhook: Webhook | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ServiceErrorBody, "description": "missing or wrong X-API-Key"},
    404: {"model": ServiceErrorBody, "description": "unknown to this key"},
    413: {"model": ServiceErrorBody, "description": "body over the image limit"},
    422: {"model": ServiceErrorBody, "description": "invalid request (reason code in error)"},
    429: {"model": ServiceErrorBody, "description": "rate limit; see Retry-After"},
    503: {"model": ServiceErrorBody, "description": "broker or Redis unreachable: retry"},
}


# --- the parts a request needs --------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    """Who is asking: the key's name, its tenant (the name's part before ``/``:
    ``miniapp/web`` and ``miniapp/ios`` share the tenant ``miniapp``) and whether it is an
    operator's key (``AURUM_API_ADMIN_KEYS``: rights over every tenant's users)."""

    key: str
    tenant: str
    admin: bool

    @property
    def scope(self) -> str | None:
        """The tenant whose users this caller sees; None: every user."""
        return None if self.admin else self.tenant


def _caller(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> Caller:
    """The caller's key (every key is compared: no early exit). Without keys (loopback
    only) the one caller is an operator."""
    settings: Settings = request.app.state.settings
    table = settings.api_key_table
    if not table:
        return Caller(ANONYMOUS, ANONYMOUS, admin=True)
    given = (x_api_key or "").encode()
    found = None
    for name, key in table.items():
        if secrets.compare_digest(given, key.encode()):
            found = name
    if found is None:
        raise ApiError(401, "unauthorized", "a valid X-API-Key header is required")
    return Caller(found, found.partition("/")[0], found in settings.api_admin_key_names)


def _limited(bucket: Literal["score", "erase", "read"]) -> Any:
    """A dependency: the caller, once its key is under the bucket's rate limit (429 with
    Retry-After otherwise). Submissions and erasures count against AURUM_API_RATE_LIMIT,
    each in a bucket of its own; reads against AURUM_API_READ_RATE_LIMIT."""

    def limited(request: Request, caller: Annotated[Caller, Depends(_caller)]) -> Caller:
        limiter, item = request.app.state.limiter, request.app.state.limits[bucket]
        try:
            allowed = limiter.hit(item, bucket, caller.key)
            if not allowed:
                reset = limiter.get_window_stats(item, bucket, caller.key).reset_time
        except Exception as exc:  # noqa: BLE001 - the limiter's storage is Redis
            raise ApiError(
                503, "unavailable", f"rate limiter unavailable: {type(exc).__name__}"
            ) from None
        if not allowed:
            wait = max(1, math.ceil(reset - time.time()))
            raise ApiError(
                429,
                "rate_limited",
                f"over {item} ({bucket}) for this key; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        return caller

    return limited


Submitter = Annotated[Caller, Depends(_limited("score"))]
Reader = Annotated[Caller, Depends(_limited("read"))]
Eraser = Annotated[Caller, Depends(_limited("erase"))]


def _user(user_id: str) -> str:
    try:
        return check_user_id(user_id)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


def _state_of(result: AsyncResult) -> str:
    state = result.state
    if state == "SUCCESS":
        return "done"
    if state in ("FAILURE", "REVOKED"):
        return "failed"
    if state == "PENDING":
        return "queued"
    return "running"  # RECEIVED, STARTED, RETRY


def _failure(result: AsyncResult) -> ServiceErrorBody:
    exc = result.result
    if isinstance(exc, BaseException):
        return ServiceErrorBody(error=type(exc).__name__, message=str(exc))
    return ServiceErrorBody(error="failed", message=str(exc))


def status_url(settings: Settings, job_id: str) -> str:
    """The job's URL: under AURUM_API_PUBLIC_URL, or relative — never built from the
    request's Host header (which the client chooses)."""
    return f"{settings.api_public_url or ''}/v1/jobs/{job_id}"


def _view(
    request: Request, job_id: str, caller: Caller, hooks: HookRecords | None = None
) -> JobView:
    result = AsyncResult(job_id, app=request.app.state.celery)
    state = _state_of(result)
    view = JobView(
        job_id=job_id, state=state, status_url=status_url(request.app.state.settings, job_id)
    )
    if state == "done":
        view.result = for_tenant(request.app.state.runtime, result.result, caller.scope)
    elif state == "failed":
        view.error = _failure(result)
    if hooks is not None:
        delivery = hooks.get(job_id)
        if delivery is not None:
            view.webhook = Webhook(**delivery.public())
    return view


def _query(request: Request, task: Any, *args: Any) -> Any:
    """Run a query task and wait for it (its result is deleted once read)."""
    try:
        result = task.apply_async(args, retry_policy=PUBLISH_RETRY)
    except KombuOperationalError as exc:
        raise ApiError(503, "unavailable", f"broker unreachable: {exc}") from None
    try:
        return result.get(timeout=min(QUERY_TIMEOUT_S, request.app.state.settings.query_timeout_s))
    except (TimeoutError, CeleryTimeoutError):  # celery's is not the built-in one
        raise ApiError(503, "timeout", "no worker answered in time; retry") from None
    finally:
        result.forget()


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: ``{"user_id": "a", "user_id": "b"}`` is read
    as "b" by Python and as "a" by some other parsers — refused rather than guessed."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} appears twice")
        found[key] = value
    return found


async def _form_in_memory(request: Request) -> Any:
    """The multipart form, every part in memory: Starlette spools a file part over 1 MB to
    a temporary file, and a photo must never touch the disk. The body is capped before it
    is read (BodyLimit), so a part can never outgrow the spool's in-memory size."""
    parser = MultiPartParser(
        request.headers, request.stream(), max_files=1, max_fields=8, max_part_size=4096
    )
    parser.spool_max_size = request.app.state.body_cap + 1  # never rolled over to disk
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise ApiError(422, "invalid_request", f"multipart body: {exc.message}") from None


async def _score_request(request: Request) -> tuple[ScoreBody, bytes | None]:
    """The body as JSON or multipart: (its fields, the multipart upload's bytes). The
    upload stays bytes all the way to Redis (its ``image_base64`` field is left empty)."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await _form_in_memory(request)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "invalid_request", "image: a file part named image is required")
        data: bytes | None = await upload.read()
        fields: dict[str, Any] = {
            "image_base64": "",
            "user_id": form.get("user_id"),
            "callback_url": form.get("callback_url") or None,
        }
        flag = form.get("allow_multiple_faces")
        if flag is not None:
            if flag not in ("true", "false"):
                raise ApiError(422, "invalid_request", "allow_multiple_faces: true or false")
            fields["allow_multiple_faces"] = flag == "true"
    elif kind.partition(";")[0].strip().lower() == "application/json":
        try:
            fields = json.loads(await request.body(), object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested ~1000 deep
            why = str(exc) if "twice" in str(exc) else "not JSON, or nested too deep"
            raise ApiError(422, "invalid_request", f"the body: {why}") from None
        data = None
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send Content-Type: application/json, or multipart/form-data",
        )
    try:
        return ScoreBody.model_validate(fields), data
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise ApiError(422, "invalid_request", f"{where}: {first.get('msg')}") from None


_SCORE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            # the schema itself: a $ref to a component FastAPI never defines (the body is
            # read by hand, for multipart) broke every generator (openapi-typescript)
            "application/json": {"schema": ScoreBody.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "user_id"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "user_id": {"type": "string"},
                        "allow_multiple_faces": {"type": "boolean"},
                        "callback_url": {"type": "string"},
                    },
                }
            },
        },
    }
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API app (uvicorn's factory). Needs a cluster: a broker and a Redis."""
    settings = settings or get_settings()
    if settings.embedded:
        raise ConfigError(
            "the HTTP API publishes to a cluster: set AURUM_BROKER_URL (and run the workers; "
            "see the README's cluster recipe)"
        )
    from limits import parse
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter

    from aurum_ml.pipeline import tasks
    from aurum_ml.pipeline.celery_app import app as celery
    from aurum_ml.pipeline.runtime import get_runtime

    runtime = get_runtime()
    users = runtime.users
    log.setLevel(logging.INFO)  # the request log (route templates only)
    if not logging.getLogger().handlers and not log.handlers:  # under uvicorn: nobody prints
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    app = FastAPI(
        title="aurum_ml API",
        version=__version__,
        description="Face scoring for Aurum Circle over HTTP. See the README's API section.",
        responses=ERRORS,
    )
    app.state.settings = settings
    app.state.celery = celery
    app.state.runtime = runtime
    app.state.limits = {
        "score": parse(settings.api_rate_limit),
        "erase": parse(settings.api_rate_limit),
        "read": parse(settings.api_read_rate_limit),
    }
    app.state.limiter = MovingWindowRateLimiter(
        RedisStorage(settings.state_url or "", key_prefix="aurum:ratelimit")
    )
    owners = JobOwners(runtime.state.redis, settings.result_expires_s)
    hooks = HookRecords(runtime.state.redis, settings.result_expires_s)
    app.state.owners, app.state.hooks = owners, hooks
    # the largest legal body: the base64 of the largest image, plus the JSON around it
    app.state.body_cap = (settings.image_max_bytes + 2) // 3 * 4 + 65536
    app.add_middleware(
        BodyLimit, max_bytes=app.state.body_cap, timeout_s=settings.http_body_timeout_s
    )

    # this process's requests, for Prometheus (GET /metrics): route templates, never ids
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    requests_total = Counter(
        "aurum_api_requests",
        "HTTP requests by route template, method and status",
        ["route", "method", "status"],
        registry=registry,
    )
    request_seconds = Histogram(
        "aurum_api_request_duration_seconds",
        "Time to answer an HTTP request",
        ["route"],
        registry=registry,
    )

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "(no route)")
        elapsed = time.perf_counter() - started
        log.info("%s %s %d %.0f ms", request.method, route, response.status_code, elapsed * 1000)
        requests_total.labels(route, request.method, str(response.status_code)).inc()
        request_seconds.labels(route).observe(elapsed)
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text format; no key needed, like Flower's: serve it on a private
        network only (counts and timings by route, nothing about users)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # `serve api --workers N`: all of them
            from prometheus_client import multiprocess

            summed = CollectorRegistry()
            multiprocess.MultiProcessCollector(summed)
            return Response(generate_latest(summed), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return json_error(exc.status, exc.error, exc.message, exc.headers)

    @app.exception_handler(AurumError)
    async def unavailable(request: Request, exc: AurumError) -> JSONResponse:
        # StateUnavailable and the like: Redis is down; retry later
        return json_error(503, "unavailable", f"{type(exc).__name__}: {exc}")

    json_errors(app, log)

    @app.post(
        "/v1/score",
        status_code=202,
        response_model=JobView,
        responses={200: {"model": JobView, "description": "with ?wait: the job ended in time"}},
        openapi_extra=_SCORE_BODY,
    )
    async def submit(
        request: Request,
        caller: Submitter,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait")] = 0,
    ) -> JSONResponse:
        """Submit a photo. 202 with the job; with ``wait``, 200 with the outcome if the job
        ends within that many seconds."""
        body, data = await _score_request(request)
        callback = body.callback_url or settings.webhook_url
        try:
            if callback:
                check_callback(callback, settings)
        except InvalidRequest as exc:
            raise ApiError(422, exc.reason, exc.message) from None
        try:
            if data is None:
                refuse_reference(body.image_base64)
        except InvalidRequest as exc:
            raise ApiError(422, exc.reason, f"image_base64: {exc.message}") from None
        job_id = str(uuid.uuid4())
        await anyio.to_thread.run_sync(publish, job_id, caller, body, data, callback)
        if wait:
            view = await _wait_for(request, job_id, caller, wait)
            if view.state in ("done", "failed"):
                return JSONResponse(view.model_dump(mode="json"), 200)
        view = await anyio.to_thread.run_sync(_view, request, job_id, caller)
        return JSONResponse(view.model_dump(mode="json"), 202)

    def publish(
        job_id: str, caller: Caller, body: ScoreBody, data: bytes | None, callback: str | None
    ) -> None:
        """The user is the caller's tenant's (claimed now if nobody's); record the job for
        its key (and its webhook), then publish score_face — the records first, so neither
        the job's owner nor its end can be missed."""
        if users.claim(body.user_id, caller.tenant) != caller.tenant and not caller.admin:
            raise ApiError(404, "not_found", NOT_YOURS)
        owners.issue(job_id, caller.key, "score")
        if callback:
            hooks.register(job_id, callback, caller.scope)
        kwargs = {"user_id": body.user_id, "allow_multiple_faces": body.allow_multiple_faces}
        try:
            if data is None:
                tasks.score_face.apply_async(
                    (body.image_base64,), kwargs, task_id=job_id, retry_policy=PUBLISH_RETRY
                )
            else:  # the upload's bytes, as they came
                tasks.score_face.apply_async(
                    (), kwargs, task_id=job_id, retry_policy=PUBLISH_RETRY, image_data=data
                )
        except InvalidRequest as exc:
            owners.drop(job_id)
            hooks.drop([job_id])
            raise ApiError(422, exc.reason, exc.message) from None
        except KombuOperationalError as exc:
            owners.drop(job_id)
            hooks.drop([job_id])
            raise ApiError(503, "unavailable", f"broker unreachable: {exc}") from None

    async def _wait_for(request: Request, job_id: str, caller: Caller, wait: float) -> JobView:
        """Poll the result backend: every 10 ms for the first half second (a job takes
        60–300 ms: a coarser poll would add most of its own pause to the answer), then
        backing off to every 250 ms."""
        started = time.monotonic()
        deadline, pause = started + wait, 0.01
        while True:
            view = await anyio.to_thread.run_sync(_view, request, job_id, caller)
            if view.state in ("done", "failed") or time.monotonic() >= deadline:
                return view
            await anyio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            if time.monotonic() - started > 0.5:
                pause = min(pause * 1.5, 0.25)

    def owned(caller: Caller, user_id: str) -> str:
        """The user id, if the caller's tenant owns that user (an operator's key: any
        user); 404 otherwise — the same answer as for a user nobody submitted."""
        user_id = _user(user_id)
        if caller.scope is not None and users.tenants([user_id])[user_id] != caller.scope:
            raise ApiError(404, "not_found", NOT_YOURS)
        return user_id

    @app.get("/v1/jobs/{job_id}", name="job", response_model=JobView)
    def job(request: Request, job_id: str, caller: Reader) -> JobView:
        """A job submitted with this key: queued, running, done (with its result) or failed
        (with the error), and its webhook's delivery."""
        owner = owners.owner(job_id)
        if owner is None or owner[1] != caller.key:
            raise ApiError(404, "not_found", "no such job for this key")
        return _view(request, job_id, caller, hooks)

    @app.get("/v1/users/{user_id}/score")
    def user_score(request: Request, user_id: str, caller: Reader) -> dict[str, Any]:
        """The user's latest result, score and rank as they stand now."""
        out = _query(request, tasks.get_score, owned(caller, user_id))
        if out is None:
            raise ApiError(404, "not_found", "no stored face for this user")
        return dict(for_tenant(runtime, out, caller.scope))

    @app.get("/v1/users/{user_id}/similar")
    def user_similar(
        request: Request,
        user_id: str,
        caller: Reader,
        k: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> list[dict[str, Any]]:
        """The other users of this key's tenant whose faces are nearest to the user's
        latest face."""
        out = _query(request, tasks.similar, owned(caller, user_id), k, caller.scope)
        if out is None:
            raise ApiError(404, "not_found", "no stored face for this user")
        return list(out)

    @app.get("/v1/leaderboard")
    def leaderboard(
        request: Request, caller: Reader, limit: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> list[dict[str, Any]]:
        """The most typical faces of this key's tenant, one per user (rank: in the whole
        population)."""
        return list(_query(request, tasks.leaderboard, limit, caller.scope))

    @app.get("/v1/stats")
    def stats(request: Request, caller: Reader) -> dict[str, Any]:
        """Population count, score distribution, top 1/5/10 % thresholds (aggregates of
        the whole population, which every score is placed in; no user's data)."""
        return dict(_query(request, tasks.stats))

    @app.delete("/v1/users/{user_id}", status_code=202, response_model=JobView)
    def forget(request: Request, user_id: str, caller: Eraser) -> JSONResponse:
        """Erase everything held about a user of this key's tenant: 202 with a job, done
        when erased."""
        user_id = owned(caller, user_id)
        job_id = str(uuid.uuid4())
        owners.issue(job_id, caller.key, "forget")
        try:
            tasks.forget_user.apply_async((user_id,), task_id=job_id, retry_policy=PUBLISH_RETRY)
        except KombuOperationalError as exc:
            owners.drop(job_id)
            raise ApiError(503, "unavailable", f"broker unreachable: {exc}") from None
        return JSONResponse(_view(request, job_id, caller).model_dump(mode="json"), 202)

    @app.get("/healthz", include_in_schema=True)
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "which dependency failed"}})
    def readyz() -> JSONResponse:
        """The broker, the result backend and the state Redis are reachable."""
        checks: dict[str, str] = {}

        def check(name: str, probe: Any) -> None:
            try:
                probe()
                checks[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                checks[name] = f"unreachable: {type(exc).__name__}"

        def broker() -> None:
            with celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)

        check("broker", broker)
        check("result_backend", lambda: celery.backend.client.ping())
        check("state", lambda: runtime.state.redis.ping())
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                            200 if ok else 503)  # fmt: skip

    return app
