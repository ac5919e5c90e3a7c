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

import logging
import os
import time
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from aurum_ml import __version__
from aurum_ml.errors import AurumError, ConfigError
from aurum_ml.pipeline.state import JobOwners
from aurum_ml.pipeline.webhooks import HookRecords
from aurum_ml.settings import Settings, get_settings
from aurum_ml.surfaces.api import jobs, population
from aurum_ml.surfaces.api.access import Wiring
from aurum_ml.surfaces.api.models import ERRORS, ApiError
from aurum_ml.surfaces.webapp import BodyLimit, json_error, json_errors

__all__ = ["ApiError", "create_app"]

log = logging.getLogger("aurum_ml.surfaces.api")


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
    app.state.wiring = Wiring(
        settings=settings,
        runtime=runtime,
        users=runtime.users,
        owners=JobOwners(runtime.state.redis, settings.result_expires_s),
        hooks=HookRecords(runtime.state.redis, settings.result_expires_s),
        tasks=tasks,
    )
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
    app.include_router(jobs.router)
    app.include_router(population.router)

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
