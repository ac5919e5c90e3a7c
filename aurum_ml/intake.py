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

__all__ = ["PARAMETERS", "check_score_request", "max_base64_chars"]

PARAMETERS = ("image_b64", "user_id", "allow_multiple_faces")


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
