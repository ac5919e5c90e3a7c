"""The door: ``score_face``'s arguments checked against one schema, before anything costly.

The same :class:`~aurum_ml.schemas.ScoreRequest` is applied twice: in the caller's process
by ``score_face.delay``/``apply_async`` (which raises :class:`InvalidRequest` and publishes
nothing), and in the worker for a message published by other means (a ``rejected`` result).
The image's size is checked on the raw argument's length first, so an 80 MB argument costs
nothing but a ``len()``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from aurum_ml.errors import InvalidRequest
from aurum_ml.schemas import ScoreRequest
from aurum_ml.settings import Settings

__all__ = [
    "IMAGE_REF",
    "PARAMETERS",
    "check_score_request",
    "max_base64_chars",
    "refuse_reference",
    "requested_image",
    "staged_sha256",
]

PARAMETERS = ("image_b64", "user_id", "allow_multiple_faces")

# ``image_b64`` as ``score_face.apply_async`` sends it: the caller stored the image in Redis
# under its content hash (the key intake keeps it under, TTL IMAGE_TTL_S) and the message
# names it, so no broker queue, unacked copy or ledger entry holds the image itself, or
# keeps it past its TTL. Not base64 (":"), so it cannot be mistaken for an image.
IMAGE_REF = "aurum-image:sha256:"
_HEX = frozenset("0123456789abcdef")


def staged_sha256(image: Any) -> str | None:
    """The content hash an image reference names; None for an image sent in the message."""
    if not isinstance(image, str) or not image.startswith(IMAGE_REF):
        return None
    sha256 = image[len(IMAGE_REF) :]
    return sha256 if len(sha256) == 64 and set(sha256) <= _HEX else None


def refuse_reference(image: Any) -> None:
    """InvalidRequest for a stored-image reference where a new job's image belongs: only
    the pipeline sends one (a retry of intake, the lost-job sweep), for the job it was
    stored for; from a caller it could only ever end ``ImageExpired``."""
    if staged_sha256(image) is not None:
        raise InvalidRequest(
            "image_b64 must be the image itself in base64, not a stored-image reference"
        )


def requested_image(request: dict[str, Any]) -> Any:
    """The ``image_b64`` of a call recorded as ``{"args": [...], "kwargs": {...}}``."""
    args = request.get("args") or ()
    return args[0] if args else (request.get("kwargs") or {}).get("image_b64")


def max_base64_chars(settings: Settings) -> int:
    """The longest base64 text an image of ``IMAGE_MAX_BYTES`` can take: 4 chars per 3
    bytes, plus room for line breaks (2 %) and a ``data:image/…;base64,`` prefix."""
    encoded = -(-settings.image_max_bytes // 3) * 4
    return encoded + encoded // 50 + 256


def check_score_request(args: Any, kwargs: Any, settings: Settings) -> ScoreRequest:
    """``score_face``'s call arguments → a :class:`ScoreRequest`, or InvalidRequest."""
    args, kwargs = tuple(args or ()), dict(kwargs or {})
    if len(args) > len(PARAMETERS):
        raise InvalidRequest(f"score_face takes at most {len(PARAMETERS)} arguments")
    given = dict(zip(PARAMETERS, args, strict=False))
    for name, value in kwargs.items():
        if name not in PARAMETERS:
            raise InvalidRequest(f"score_face got an unexpected argument {name!r}")
        if name in given:
            raise InvalidRequest(f"score_face got two values for {name!r}")
        given[name] = value
    image = given.get("image_b64")
    if isinstance(image, str | bytes) and len(image) > max_base64_chars(settings):
        raise InvalidRequest(
            f"image is larger than the {settings.image_max_bytes} byte limit "
            f"({len(image)} base64 chars)",
            reason="image_too_large",
        )
    try:
        return ScoreRequest.model_validate(
            {
                "image_base64": image,
                "user_id": given.get("user_id"),
                "allow_multiple_faces": given.get("allow_multiple_faces"),
            }
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "request"
        where = "image_b64" if where.startswith("image_base64") else where
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(
            message if message.startswith(where) else f"{where}: {message}"
        ) from None
