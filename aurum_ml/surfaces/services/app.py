"""What both ML services share: the app factory, model loading, auth, limits, errors, health.

The model loads in a background thread started by the lifespan hook, so the server answers
at once: ``/health`` says ``loading`` (503) until it is ready, and a scoring request in that
time gets 503 ``loading`` — retryable, like any 503.

Errors are always JSON ``{"error": code, "message": …}``: 400 bad image, 413 over a limit
(the body size is checked before it is read in full, the pixel count from the header before
decoding), 422 schema, 401 missing or wrong token (constant-time comparison), 503 loading,
500 only for a bug.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import cv2
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from aurum_ml import __version__
from aurum_ml.errors import BadInput
from aurum_ml.pipeline.backends.local import CHIP_SIZE, LocalFaceModel
from aurum_ml.pipeline.imaging import Decoded, decode_base64, decode_scaled
from aurum_ml.schemas import Health, ServiceErrorBody
from aurum_ml.settings import Settings, get_settings
from aurum_ml.surfaces.webapp import BodyLimit, json_error, json_errors, no_body

__all__ = [
    "LoadedModel",
    "ServiceError",
    "create_service",
    "json_error",
    "json_errors",
    "request_image",
    "require_token",
]

log = logging.getLogger("aurum_ml.surfaces.services")

_STATUS = {"invalid_image": 400, "image_too_large": 413, "no_face": 422}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ServiceErrorBody} for code in (400, 401, 413, 422, 503)
}


class ServiceError(Exception):
    """An error answer: status, code and message."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


PUBLIC_PATHS = ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


class TokenGate:
    """ASGI middleware, outermost: with ML_SERVICE_TOKEN set, a request to anything but the
    public paths needs ``Authorization: Bearer …``, checked from the headers before a byte
    of the body is read (a 50 MB body without a token is a 401, not a 413)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not secrets.compare_digest(token, self.token):
            response = json_error(401, "unauthorized", "a valid bearer token is required")
            await response(scope={"type": "http"}, receive=no_body, send=send)  # type: ignore[arg-type]
            return
        await self.app(scope, receive, send)


def require_token(request: Request) -> None:
    """With ML_SERVICE_TOKEN set, every scoring request needs ``Authorization: Bearer …``."""
    expected = request.app.state.settings.ml_service_token
    if not expected:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), expected.encode()):
        raise ServiceError(401, "unauthorized", "a valid bearer token is required")


def loaded_model(request: Request) -> LocalFaceModel:
    """The model, or 503 while it is still loading."""
    if not request.app.state.ready.is_set():
        raise ServiceError(503, "loading", "the model is still loading; retry shortly")
    model: LocalFaceModel = request.app.state.model
    return model


LoadedModel = Annotated[LocalFaceModel, Depends(loaded_model)]


def bad_input(exc: BadInput) -> ServiceError:
    return ServiceError(_STATUS.get(exc.reason, 400), exc.reason, exc.message)


def request_image(image_base64: str, settings: Settings) -> Decoded:
    """The request's image as RGB pixels (far larger images at reduced scale: see
    ``Decoded.scale``), limits checked; bad input → its error answer."""
    try:
        return decode_scaled(decode_base64(image_base64, settings), settings)
    except BadInput as exc:
        raise bad_input(exc) from None


def request_chip(chip_base64: str, settings: Settings) -> np.ndarray:
    """The request's face chip: a 150 × 150 RGB PNG (or any lossless image of that size)."""
    try:
        data = decode_base64(chip_base64, settings)
    except BadInput as exc:
        raise bad_input(exc) from None
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None or pixels.shape[:2] != (CHIP_SIZE, CHIP_SIZE):
        raise ServiceError(400, "invalid_image", f"a chip is a {CHIP_SIZE} × {CHIP_SIZE} image")
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def create_service(
    name: str,
    routes: APIRouter,
    model_id: Callable[[LocalFaceModel], str],
    settings: Settings | None = None,
) -> FastAPI:
    """A FastAPI app serving ``routes`` with the shared behaviour described above."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def load() -> None:
            try:
                app.state.model.warm_up()
                app.state.ready.set()
                log.info("%s service ready", name)
            except Exception:  # the health check keeps saying "loading"; the log says why
                log.exception("%s service could not load its model", name)

        threading.Thread(target=load, name=f"{name}-model-loader", daemon=True).start()
        yield

    app = FastAPI(
        title=f"aurum_ml {name} service",
        version=__version__,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.model = LocalFaceModel(settings)
    app.state.ready = threading.Event()
    app.state.started = time.monotonic()
    # the largest legal body: the base64 of the largest image, plus the JSON around it
    app.add_middleware(
        BodyLimit,
        max_bytes=(settings.image_max_bytes + 2) // 3 * 4 + 65536,
        timeout_s=settings.http_body_timeout_s,
    )
    app.add_middleware(TokenGate, token=settings.ml_service_token)  # outermost: runs first

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return json_error(exc.status, exc.error, exc.message)

    json_errors(app, log)

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    def health(request: Request) -> JSONResponse:
        ready = request.app.state.ready.is_set()
        body = Health(
            status="ok" if ready else "loading",
            service=name,
            model=model_id(request.app.state.model),
            version=__version__,
            uptime_s=round(time.monotonic() - request.app.state.started, 1),
        )
        return JSONResponse(body.model_dump(), 200 if ready else 503)

    app.include_router(routes, dependencies=[Depends(require_token)])
    return app
