"""The API's contract: its request and response bodies, and the errors every route may
answer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aurum_ml.schemas import ServiceErrorBody


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


SCORE_BODY = {
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
