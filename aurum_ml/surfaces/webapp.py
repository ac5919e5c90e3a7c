"""What every web app of ours shares (the HTTP API and both ML services): the request-body
limit and its timeout, and one shape of error answer, ``{"error": code, "message": …}``.

A surface: imported by ``aurum_ml.surfaces.api`` and ``aurum_ml.surfaces.services``, never by the
pipeline.
"""

from __future__ import annotations

import logging

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aurum_ml.schemas import ServiceErrorBody

__all__ = ["BodyLimit", "json_error", "json_errors", "no_body"]


class _BodyTooLarge(HTTPException):
    """Raised from inside the body stream; FastAPI lets HTTPExceptions through as they are."""

    def __init__(self) -> None:
        super().__init__(413, "request body over the size limit")


class _BodyTooSlow(HTTPException):
    def __init__(self) -> None:
        super().__init__(408, "the request body did not arrive in time")


class BodyLimit:
    """ASGI middleware: refuse a body over ``max_bytes`` by its Content-Length, or as soon
    as that much has been streamed — never read more than the limit; and cut a body that
    has not arrived ``timeout_s`` after the request head (408: a slow upload holds no
    worker for ever)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 60.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        deadline = anyio.current_time() + self.timeout_s

        body_done = False

        async def limited() -> Message:
            nonlocal received, body_done
            if body_done:  # (a wait for the client's disconnect: no deadline)
                return await receive()
            with anyio.move_on_after(deadline - anyio.current_time()) as waited:
                message = await receive()
            if waited.cancelled_caught:
                raise _BodyTooSlow
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, send: Send) -> None:
        response = json_error(413, "image_too_large", f"request body over {self.max_bytes} bytes")
        await response(scope={"type": "http"}, receive=no_body, send=send)  # type: ignore[arg-type]


async def no_body() -> Message:
    """An empty request body, for answering before the app reads one."""
    return {"type": "http.request", "body": b"", "more_body": False}


def json_error(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error answer of any of our apps: ``{"error": code, "message": …}``."""
    body = ServiceErrorBody(error=error, message=message).model_dump()
    return JSONResponse(body, status, headers=headers)


_UNPARSABLE = "There was an error parsing the body"  # FastAPI's words: JSON it could not read


def json_errors(app: FastAPI, logger: logging.Logger) -> None:
    """The error answers every app of ours shares: a schema error is 422 invalid_request
    (naming the field), HTTP errors keep their status with a code, a bug is a logged 500 —
    all as ``{"error": code, "message": …}``."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return json_error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _UNPARSABLE:  # FastAPI's body parser
            return json_error(
                422, "invalid_request", "the body is not valid JSON (or nests too deep)"
            )
        code = {
            413: "image_too_large",
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
        }
        return json_error(exc.status_code, code.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error in %s", request.url.path)
        return json_error(500, "internal", "unexpected error; it was logged")
