"""The exception tree, arranged for the caller's ``except`` clauses.

::

    AurumError
    ├── RetryableError          infrastructure that may work later: Celery retries these
    │   ├── StateUnavailable        Redis (pipeline state, score index) unreachable
    │   ├── StoreUnavailable        Qdrant server unreachable or timing out
    │   └── ServiceUnavailable      ML service refused, reset, timed out, 5xx, 429, loading
    └── PermanentError          retrying cannot help: the job fails at once
        ├── ConfigError             settings that cannot work (e.g. Qdrant folder held by
        │                           another process)
        ├── ImageExpired            the stored image or vector is gone (TTL passed)
        ├── JobLost                 the job stalled and was sent again REDRIVE_MAX times
        │                           without ending (aurum_ml.pipeline.redrive)
        ├── UserErased              the user was erased after the job was admitted:
        │                           nothing of it is stored
        ├── ServiceError            an ML service said no (401, 404, 422…) or answered
        │                           something that is not the contract
        └── BadInput                raised by the image/face code for bad input; the tasks
            │                       turn it into a *rejected result* (reason + message)
            └── InvalidRequest      raised in the *caller's* process by
                                    ``score_face.delay``/``apply_async`` for arguments that
                                    can never be scored (image over the size limit, wrong
                                    types, a malformed user_id): nothing was published

Bad input found by a worker is not an exception for callers: ``score_face`` returns a
result with ``status="rejected"`` and a reason code. Arguments that are wrong on their face
are refused before they are sent: ``InvalidRequest`` (a ``BadInput``, with the same
``reason`` and ``message``). A caller sees an exception (re-raised by
``AsyncResult.get()``) only for infrastructure failures after retries, and for
permanent ones such as an expired image.

Foreign exceptions are translated in one place each: redis in ``state.py``, qdrant in
``vectors.py``, OpenCV/Pillow in ``imaging.py``, requests in ``backends/http.py``.

Every exception takes a single message argument, so Celery's JSON result backend can
rebuild it on the caller's side (``exc_module`` + ``exc_type`` + message).
"""

from __future__ import annotations

from typing import Literal

Reason = Literal[
    "invalid_image",
    "image_too_large",
    "no_face",
    "multiple_faces",
    "face_too_small",
    "low_quality",
    "cooldown",
    "in_progress",
    "invalid_request",
    "callback_not_allowed",
]

__all__ = [
    "AurumError",
    "BadInput",
    "ConfigError",
    "ImageExpired",
    "InvalidRequest",
    "JobLost",
    "PermanentError",
    "Reason",
    "RetryableError",
    "ServiceError",
    "ServiceUnavailable",
    "StateUnavailable",
    "StoreUnavailable",
    "UserErased",
]


class AurumError(Exception):
    """Root of every error aurum_ml raises on purpose."""


class RetryableError(AurumError):
    """Infrastructure trouble that may pass: retried with backoff, then FAILURE."""


class StateUnavailable(RetryableError):
    """The pipeline-state Redis could not be reached."""


class StoreUnavailable(RetryableError):
    """The Qdrant server could not be reached or timed out."""


class ServiceUnavailable(RetryableError):
    """An ML service could not answer now (refused, reset, timeout, 5xx, 429, loading)."""


class PermanentError(AurumError):
    """Retrying cannot help."""


class ConfigError(PermanentError):
    """The configuration cannot work as given; the message says what to change."""


class ImageExpired(PermanentError):
    """The job's image or embedding is no longer stored (its TTL passed)."""


class JobLost(PermanentError):
    """The job stopped between stages and did not end after being sent again."""


class UserErased(PermanentError):
    """The job's user was erased after it was admitted; it stores nothing."""


class ServiceError(PermanentError):
    """An ML service refused the request for good, or broke its contract."""


class BadInput(PermanentError):
    """The input cannot be scored. Carries a reason code; tasks turn it into a rejection."""

    def __init__(self, message: str, reason: Reason = "invalid_image") -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message

    def __reduce__(self):  # keep both fields when pickled by a thread/process pool
        return (type(self), (self.message, self.reason))


class InvalidRequest(BadInput):
    """Raised by ``score_face.delay``/``apply_async`` in the caller's process: the arguments
    cannot be scored, and nothing was published. ``reason`` is ``invalid_request`` or
    ``image_too_large``."""

    def __init__(self, message: str, reason: Reason = "invalid_request") -> None:
        super().__init__(message, reason)
