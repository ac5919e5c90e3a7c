"""The population's routes: a user's score, similar users, the leaderboard, stats, and
erasure (``DELETE /v1/users/{id}``). Each publishes the task the Python API publishes."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as KombuOperationalError

from aurum_ml.population.queries import for_tenant
from aurum_ml.surfaces.api.access import Eraser, Reader, owned, wiring
from aurum_ml.surfaces.api.jobs import PUBLISH_RETRY, job_view
from aurum_ml.surfaces.api.models import ApiError, JobView

QUERY_TIMEOUT_S = 30


def run_query(request: Request, task: Any, *args: Any) -> Any:
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


router = APIRouter()


@router.get("/v1/users/{user_id}/score")
def user_score(request: Request, user_id: str, caller: Reader) -> dict[str, Any]:
    """The user's latest result, score and rank as they stand now."""
    api = wiring(request)
    out = run_query(request, api.tasks.get_score, owned(api, caller, user_id))
    if out is None:
        raise ApiError(404, "not_found", "no stored face for this user")
    return dict(for_tenant(api.runtime, out, caller.scope))


@router.get("/v1/users/{user_id}/similar")
def user_similar(
    request: Request,
    user_id: str,
    caller: Reader,
    k: Annotated[int, Query(ge=1, le=100)] = 10,
) -> list[dict[str, Any]]:
    """The other users of this key's tenant whose faces are nearest to the user's
    latest face."""
    api = wiring(request)
    out = run_query(request, api.tasks.similar, owned(api, caller, user_id), k, caller.scope)
    if out is None:
        raise ApiError(404, "not_found", "no stored face for this user")
    return list(out)


@router.get("/v1/leaderboard")
def leaderboard(
    request: Request, caller: Reader, limit: Annotated[int, Query(ge=1, le=100)] = 10
) -> list[dict[str, Any]]:
    """The most typical faces of this key's tenant, one per user (rank: in the whole
    population)."""
    api = wiring(request)
    return list(run_query(request, api.tasks.leaderboard, limit, caller.scope))


@router.get("/v1/stats")
def stats(request: Request, caller: Reader) -> dict[str, Any]:
    """Population count, score distribution, top 1/5/10 % thresholds (aggregates of
    the whole population, which every score is placed in; no user's data)."""
    api = wiring(request)
    return dict(run_query(request, api.tasks.stats))


@router.delete("/v1/users/{user_id}", status_code=202, response_model=JobView)
def forget(request: Request, user_id: str, caller: Eraser) -> JSONResponse:
    """Erase everything held about a user of this key's tenant: 202 with a job, done
    when erased."""
    api = wiring(request)
    user_id = owned(api, caller, user_id)
    job_id = str(uuid.uuid4())
    api.owners.issue(job_id, caller.key, "forget")
    try:
        api.tasks.forget_user.apply_async((user_id,), task_id=job_id, retry_policy=PUBLISH_RETRY)
    except KombuOperationalError as exc:
        api.owners.drop(job_id)
        raise ApiError(503, "unavailable", f"broker unreachable: {exc}") from None
    return JSONResponse(job_view(request, job_id, caller).model_dump(mode="json"), 202)
