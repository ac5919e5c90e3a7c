"""``POST /v1/score`` and ``GET /v1/jobs/{id}``: a photo submitted (JSON or multipart, the
upload kept as bytes), the job's state, result, error and webhook."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any

import anyio
import anyio.to_thread
from celery.result import AsyncResult
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser

from aurum_ml.errors import InvalidRequest
from aurum_ml.pipeline.webhooks import HookRecords, check_callback
from aurum_ml.population.queries import for_tenant
from aurum_ml.request import refuse_reference
from aurum_ml.schemas import ServiceErrorBody
from aurum_ml.settings import Settings
from aurum_ml.surfaces.api.access import NOT_YOURS, Caller, Reader, Submitter, Wiring, wiring
from aurum_ml.surfaces.api.models import SCORE_BODY, ApiError, JobView, ScoreBody, Webhook

MAX_WAIT_S = 30


# A request waits ~2 s for an unreachable broker, then answers 503 (the caller retries);
# a worker's own publishes wait ~80 s instead (celeryconfig's task_publish_retry_policy).
PUBLISH_RETRY = {
    "max_retries": 3,
    "interval_start": 0.2,
    "interval_step": 0.3,
    "interval_max": 1,
}  # the key name when no keys are configured (loopback only)


def state_of(result: AsyncResult) -> str:
    state = result.state
    if state == "SUCCESS":
        return "done"
    if state in ("FAILURE", "REVOKED"):
        return "failed"
    if state == "PENDING":
        return "queued"
    return "running"  # RECEIVED, STARTED, RETRY


def failure_body(result: AsyncResult) -> ServiceErrorBody:
    exc = result.result
    if isinstance(exc, BaseException):
        return ServiceErrorBody(error=type(exc).__name__, message=str(exc))
    return ServiceErrorBody(error="failed", message=str(exc))


def status_url(settings: Settings, job_id: str) -> str:
    """The job's URL: under AURUM_API_PUBLIC_URL, or relative — never built from the
    request's Host header (which the client chooses)."""
    return f"{settings.api_public_url or ''}/v1/jobs/{job_id}"


def job_view(
    request: Request, job_id: str, caller: Caller, hooks: HookRecords | None = None
) -> JobView:
    result = AsyncResult(job_id, app=request.app.state.celery)
    state = state_of(result)
    view = JobView(
        job_id=job_id, state=state, status_url=status_url(request.app.state.settings, job_id)
    )
    if state == "done":
        view.result = for_tenant(request.app.state.runtime, result.result, caller.scope)
    elif state == "failed":
        view.error = failure_body(result)
    if hooks is not None:
        delivery = hooks.get(job_id)
        if delivery is not None:
            view.webhook = Webhook(**delivery.public())
    return view


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: ``{"user_id": "a", "user_id": "b"}`` is read
    as "b" by Python and as "a" by some other parsers — refused rather than guessed."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} appears twice")
        found[key] = value
    return found


async def form_in_memory(request: Request) -> Any:
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


async def read_score_request(request: Request) -> tuple[ScoreBody, bytes | None]:
    """The body as JSON or multipart: (its fields, the multipart upload's bytes). The
    upload stays bytes all the way to Redis (its ``image_base64`` field is left empty)."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await form_in_memory(request)
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
            fields = json.loads(await request.body(), object_pairs_hook=unique_keys)
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


router = APIRouter()


@router.post(
    "/v1/score",
    status_code=202,
    response_model=JobView,
    responses={200: {"model": JobView, "description": "with ?wait: the job ended in time"}},
    openapi_extra=SCORE_BODY,
)
async def submit(
    request: Request,
    caller: Submitter,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait")] = 0,
) -> JSONResponse:
    """Submit a photo. 202 with the job; with ``wait``, 200 with the outcome if the job
    ends within that many seconds."""
    api = wiring(request)
    body, data = await read_score_request(request)
    callback = body.callback_url or api.settings.webhook_url
    try:
        if callback:
            check_callback(callback, api.settings)
    except InvalidRequest as exc:
        raise ApiError(422, exc.reason, exc.message) from None
    try:
        if data is None:
            refuse_reference(body.image_base64)
    except InvalidRequest as exc:
        raise ApiError(422, exc.reason, f"image_base64: {exc.message}") from None
    job_id = str(uuid.uuid4())
    await anyio.to_thread.run_sync(publish, api, job_id, caller, body, data, callback)
    if wait:
        view = await wait_for(request, job_id, caller, wait)
        if view.state in ("done", "failed"):
            return JSONResponse(view.model_dump(mode="json"), 200)
    view = await anyio.to_thread.run_sync(job_view, request, job_id, caller)
    return JSONResponse(view.model_dump(mode="json"), 202)


def publish(
    api: Wiring,
    job_id: str,
    caller: Caller,
    body: ScoreBody,
    data: bytes | None,
    callback: str | None,
) -> None:
    """The user is the caller's tenant's (claimed now if nobody's); record the job for
    its key (and its webhook), then publish score_face — the records first, so neither
    the job's owner nor its end can be missed."""
    if api.users.claim(body.user_id, caller.tenant) != caller.tenant and not caller.admin:
        raise ApiError(404, "not_found", NOT_YOURS)
    api.owners.issue(job_id, caller.key, "score")
    if callback:
        api.hooks.register(job_id, callback, caller.scope)
    kwargs = {"user_id": body.user_id, "allow_multiple_faces": body.allow_multiple_faces}
    try:
        if data is None:
            api.tasks.score_face.apply_async(
                (body.image_base64,), kwargs, task_id=job_id, retry_policy=PUBLISH_RETRY
            )
        else:  # the upload's bytes, as they came
            api.tasks.score_face.apply_async(
                (), kwargs, task_id=job_id, retry_policy=PUBLISH_RETRY, image_data=data
            )
    except InvalidRequest as exc:
        api.owners.drop(job_id)
        api.hooks.drop([job_id])
        raise ApiError(422, exc.reason, exc.message) from None
    except KombuOperationalError as exc:
        api.owners.drop(job_id)
        api.hooks.drop([job_id])
        raise ApiError(503, "unavailable", f"broker unreachable: {exc}") from None


async def wait_for(request: Request, job_id: str, caller: Caller, wait: float) -> JobView:
    """Poll the result backend: every 10 ms for the first half second (a job takes
    60–300 ms: a coarser poll would add most of its own pause to the answer), then
    backing off to every 250 ms."""
    started = time.monotonic()
    deadline, pause = started + wait, 0.01
    while True:
        view = await anyio.to_thread.run_sync(job_view, request, job_id, caller)
        if view.state in ("done", "failed") or time.monotonic() >= deadline:
            return view
        await anyio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        if time.monotonic() - started > 0.5:
            pause = min(pause * 1.5, 0.25)


@router.get("/v1/jobs/{job_id}", name="job", response_model=JobView)
def job(request: Request, job_id: str, caller: Reader) -> JobView:
    """A job submitted with this key: queued, running, done (with its result) or failed
    (with the error), and its webhook's delivery."""
    api = wiring(request)
    owner = api.owners.owner(job_id)
    if owner is None or owner[1] != caller.key:
        raise ApiError(404, "not_found", "no such job for this key")
    return job_view(request, job_id, caller, api.hooks)
