"""The only module that talks to Qdrant.

A local folder (``QDRANT_PATH``, default ``$AURUM_DATA_DIR/qdrant``) in the embedded default
and in tests; a server when ``QDRANT_URL`` is set — the same client API either way. One
collection per model, named after model and dimension, Euclidean distance on the raw
vectors (dlib's same-person threshold, 0.6, applies as is).

Point ids are uuid5 of (user id, image hash, face index, model): a redelivered or repeated
job overwrites its own point, while one photo uploaded by two users stays two points.

qdrant-client and httpx exceptions become :class:`StoreUnavailable` (retryable) or
:class:`ConfigError` (permanent) here.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from aurum_ml.errors import ConfigError, StoreUnavailable
from aurum_ml.settings import Settings

__all__ = ["VectorStore", "collection_name", "point_id"]

_NAMESPACE = uuid.UUID("6f0d7a52-4c1e-5d8a-9b3e-a0c1e2f3d4b5")


def point_id(user_id: str, image_sha256: str, face_index: int, model: str) -> str:
    """Deterministic point id of one face of one user's photo."""
    return str(uuid.uuid5(_NAMESPACE, f"{user_id}\x1f{image_sha256}\x1f{face_index}\x1f{model}"))


def collection_name(model: str, dim: int) -> str:
    return f"faces_{model.replace('-', '_')}_{dim}"


@contextlib.contextmanager
def _qdrant_errors() -> Iterator[None]:
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        yield
    except UnexpectedResponse as exc:
        if exc.status_code is not None and (exc.status_code >= 500 or exc.status_code == 429):
            raise StoreUnavailable(f"Qdrant answered {exc.status_code}") from None
        raise ConfigError(f"Qdrant refused the request ({exc.status_code})") from None
    except (ResponseHandlingException, httpx.TransportError, ConnectionError, TimeoutError) as exc:
        raise StoreUnavailable(f"Qdrant unavailable: {type(exc).__name__}") from None


class VectorStore:
    """Faces' vectors and payloads in one collection. Methods are safe to call twice."""

    def __init__(self, settings: Settings, model: str, dim: int) -> None:
        self.settings = settings
        self.dim = dim
        self.collection = collection_name(model, dim)
        self._client: Any = None
        self._lock = threading.RLock()

    @property
    def where(self) -> str:
        return self.settings.qdrant_url or str(self.settings.qdrant_folder)

    def _connect(self) -> Any:
        from qdrant_client import QdrantClient, models

        if self._client is not None:
            return self._client
        if self.settings.qdrant_url:
            client = QdrantClient(
                url=self.settings.qdrant_url,
                api_key=self.settings.qdrant_api_key,
                timeout=10,
            )
        else:
            folder = self.settings.qdrant_folder
            folder.mkdir(parents=True, exist_ok=True)
            try:
                client = QdrantClient(path=str(folder))
            except RuntimeError as exc:
                if "already accessed" not in str(exc):
                    raise
                raise ConfigError(
                    f"the Qdrant folder {folder} is held by another process: local mode allows "
                    "one process per folder. Run a single store worker "
                    "(celery -A aurum_ml worker -Q store --concurrency 1 --pool threads) "
                    "or set QDRANT_URL to a Qdrant server."
                ) from None
        with _qdrant_errors():
            if not client.collection_exists(self.collection):
                client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(
                        size=self.dim, distance=models.Distance.EUCLID
                    ),
                )
                if self.settings.qdrant_url:  # local mode has no payload indexes
                    client.create_payload_index(
                        self.collection, "user_id", models.PayloadSchemaType.KEYWORD
                    )
        self._client = client
        return client

    def upsert(self, pid: str, vector: np.ndarray, payload: dict[str, Any]) -> None:
        from qdrant_client import models

        with self._lock, _qdrant_errors():
            self._connect().upsert(
                self.collection,
                points=[models.PointStruct(id=pid, vector=vector.tolist(), payload=payload)],
                wait=True,
            )

    def get(self, pid: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The stored vector and payload of a point, or None."""
        with self._lock, _qdrant_errors():
            found = self._connect().retrieve(
                self.collection, ids=[pid], with_vectors=True, with_payload=True
            )
        if not found:
            return None
        return np.asarray(found[0].vector, dtype=np.float32), dict(found[0].payload or {})

    def count(self) -> int:
        with self._lock, _qdrant_errors():
            return int(self._connect().count(self.collection, exact=True).count)

    def points(self, batch: int = 512) -> Iterator[tuple[str, np.ndarray]]:
        """Every (point id, vector) of the collection, in batches."""
        offset = None
        while True:
            with self._lock, _qdrant_errors():
                records, offset = self._connect().scroll(
                    self.collection, limit=batch, offset=offset, with_vectors=True
                )
            for record in records:
                yield str(record.id), np.asarray(record.vector, dtype=np.float32)
            if offset is None:
                return

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
