"""The client of our detection and embedding services (``aurum_ml.surfaces.services``).

One ``requests.Session`` per thread of a worker process (connection reuse); connect and read
timeouts from ``ML_SERVICE_TIMEOUT``. The client makes exactly one attempt per call: the
retry layer is Celery's autoretry (backoff, jitter, cap), so a job never retries twice over.

Every answer is mapped here, and only here:

=================================================  =========================================
connection refused or reset, timeout, 5xx, 429      :class:`ServiceUnavailable` (retried)
400 / 413 with ``invalid_image`` / ``image_too_large``  :class:`BadInput` → a rejected job
any other 4xx (401 token, 404 URL, 422 schema)      :class:`ServiceError` (fails at once)
2xx that is not the contract (JSON, fields, model)  :class:`ServiceError` (fails at once)
=================================================  =========================================
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import cv2
import numpy as np
import requests
from pydantic import BaseModel, ValidationError

from aurum_ml.errors import BadInput, ServiceError, ServiceUnavailable
from aurum_ml.pipeline.backends import Detection
from aurum_ml.pipeline.backends.local import DIM, MODEL_ID
from aurum_ml.schemas import DetectResponse, ExtractResponse, Health, ServiceErrorBody
from aurum_ml.settings import Settings

__all__ = ["HttpFaceBackend", "ServiceClient"]

_BAD_INPUT = {"invalid_image", "image_too_large", "no_face"}


class ServiceClient:
    """Calls one service. ``base_url`` like ``http://detection:8001``."""

    def __init__(self, base_url: str, timeout: float, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (min(3.05, timeout), timeout)  # (connect, read) seconds
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update(self._headers)
        return session

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            response = self._session().request(method, url, json=body, timeout=self.timeout)
        except requests.Timeout:
            raise ServiceUnavailable(f"{url} timed out") from None
        except requests.ConnectionError as exc:  # refused, reset, DNS
            text = str(exc).lower()
            what = "refused" if "refused" in text else "reset" if "reset" in text else "failed"
            raise ServiceUnavailable(f"{url}: connection {what}") from None
        except requests.RequestException as exc:
            raise ServiceError(f"{url}: {type(exc).__name__}") from None
        status = response.status_code
        if status >= 500 or status == 429:
            raise ServiceUnavailable(f"{url} answered {status}")
        if status >= 400:
            error = _error_body(response)
            if status in (400, 413, 422) and error and error.error in _BAD_INPUT:
                raise BadInput(error.message, reason=error.error)  # type: ignore[arg-type]
            detail = f"{error.error}: {error.message}" if error else response.text[:200]
            raise ServiceError(f"{url} refused the request ({status} {detail})")
        return response

    def token_accepted(self, path: str) -> bool:
        """Whether the service accepts our token on ``path``: an authenticated no-op (an
        empty body: 401 when the token is refused, a 4xx about the body when accepted)."""
        try:
            response = self._session().post(f"{self.base_url}{path}", json={}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ServiceUnavailable(f"{self.base_url}{path}: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise ServiceUnavailable(f"{self.base_url}{path} answered {response.status_code}")
        return response.status_code != 401

    def call(self, path: str, body: dict[str, Any], contract: type[BaseModel]) -> Any:
        """POST ``body``; the answer parsed as ``contract``."""
        response = self._request("POST", path, body)
        try:
            return contract.model_validate_json(response.content)
        except ValidationError:
            raise ServiceError(
                f"{self.base_url}{path} answered outside the contract ({contract.__name__})"
            ) from None

    def health(self) -> tuple[Health | None, float]:
        """(``/health`` body or None for the plain ``OK`` of older services, latency s)."""
        started = time.perf_counter()
        response = self._request("GET", "/health", None)
        elapsed = time.perf_counter() - started
        if response.text.strip().strip('"').upper() == "OK":
            return None, elapsed
        try:
            health = Health.model_validate_json(response.content)
        except ValidationError:
            raise ServiceError(f"{self.base_url}/health answered outside the contract") from None
        if health.status != "ok":
            raise ServiceUnavailable(f"{self.base_url} is {health.status}")
        return health, elapsed


def _error_body(response: requests.Response) -> ServiceErrorBody | None:
    try:
        return ServiceErrorBody.model_validate_json(response.content)
    except ValidationError:
        return None


class HttpFaceBackend:
    """Detection and/or embedding through the services; same interface as the local one."""

    model = MODEL_ID
    dim = DIM
    source = "service"

    def __init__(self, settings: Settings, detect_url: str | None, embed_url: str | None) -> None:
        timeout, token = settings.ml_service_timeout, settings.ml_service_token
        self.settings = settings
        self.detection = ServiceClient(detect_url, timeout, token) if detect_url else None
        self.embedding = ServiceClient(embed_url, timeout, token) if embed_url else None

    def detect(self, data: bytes) -> list[Detection]:
        if self.detection is None:
            raise ServiceError("no detection service configured")
        answer: DetectResponse = self.detection.call(
            "/detect",
            {
                "image_base64": base64.b64encode(data).decode("ascii"),
                "min_confidence": self.settings.detect_min_score,
                "upsample": self.settings.detect_upsample,
            },
            DetectResponse,
        )
        return [
            Detection(
                box=(f.bounding_box[0], f.bounding_box[1], f.bounding_box[2], f.bounding_box[3]),
                landmarks=tuple((int(p[0]), int(p[1])) for p in f.landmarks),
                score=f.score,
            )
            for f in answer.faces
        ]

    def embed_chip(self, chip: np.ndarray) -> np.ndarray:
        """POST the aligned chip (lossless PNG, ~40 KB instead of the whole photo)."""
        if self.embedding is None:
            raise ServiceError("no embedding service configured")
        ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(chip), cv2.COLOR_RGB2BGR))
        if not ok:
            raise ServiceError("could not encode the face chip")
        answer: ExtractResponse = self.embedding.call(
            "/extract",
            {"chip_base64": base64.b64encode(png.tobytes()).decode("ascii")},
            ExtractResponse,
        )
        return np.asarray(answer.embedding, dtype=np.float32)

    def embed(self, data: bytes, face: Detection) -> np.ndarray:
        if self.embedding is None:
            raise ServiceError("no embedding service configured")
        answer: ExtractResponse = self.embedding.call(
            "/extract",
            {
                "image_base64": base64.b64encode(data).decode("ascii"),
                "face": {
                    "bounding_box": list(face.box),
                    "landmarks": [list(p) for p in face.landmarks],
                },
            },
            ExtractResponse,
        )
        if (
            answer.model != self.model
            or answer.dim != self.dim
            or len(answer.embedding) != self.dim
        ):
            raise ServiceError(
                f"the embedding service runs {answer.model} ({answer.dim}-d); this pipeline "
                f"stores {self.model} ({self.dim}-d) vectors"
            )
        return np.asarray(answer.embedding, dtype=np.float32)
