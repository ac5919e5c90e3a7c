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
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from aurum_ml.errors import ConfigError, StoreUnavailable
from aurum_ml.settings import Settings

__all__ = ["VectorStore", "claim_local_folder", "collection_name", "folder_rule", "point_id"]

# Local mode allows one client per folder and process: every VectorStore on a folder shares it.
_local_clients: dict[str, Any] = {}
_local_lock = threading.Lock()

_NAMESPACE = uuid.UUID("6f0d7a52-4c1e-5d8a-9b3e-a0c1e2f3d4b5")


def point_id(user_id: str, image_sha256: str, face_index: int, model: str) -> str:
    """Deterministic point id of one face of one user's photo."""
    return str(uuid.uuid5(_NAMESPACE, f"{user_id}\x1f{image_sha256}\x1f{face_index}\x1f{model}"))


def collection_name(model: str, dim: int) -> str:
    return f"faces_{model.replace('-', '_')}_{dim}"


def folder_rule(folder: Any, problem: str) -> str:
    """The one rule of a local Qdrant folder, as every message about it states it."""
    return (
        f"the Qdrant folder {folder} {problem}: a local folder can be opened by one process "
        "only. Without QDRANT_URL, run exactly one store worker, as one process — "
        "celery -A aurum_ml worker -Q store --pool threads -n store@%h — it owns the folder "
        "and also runs the tasks that read vectors (re-rank, get-score, similar, leaderboard, "
        "forget, re-score), which are routed to the store queue. Or set QDRANT_URL to a "
        "Qdrant server."
    )


def claim_local_folder(
    queues: set[str], pool: Any, settings: Settings, store: Callable[[], VectorStore]
) -> None:
    """At a worker's start: a worker that consumes the store queue on a local folder must
    be one process, and takes the folder now — ConfigError (the worker refuses to start)
    rather than a failure per task later. Nothing to do with a Qdrant server, in the
    embedded default, or for a worker without the store queue."""
    if settings.qdrant_url or settings.embedded or "store" not in queues:
        return
    name = pool if isinstance(pool, str) else f"{getattr(pool, '__module__', '')}.{pool}"
    if "thread" not in name and "solo" not in name:
        raise ConfigError(
            folder_rule(settings.qdrant_folder, "cannot be shared by a prefork pool's processes")
        )
    store().count()  # opens the folder (and the collection), or ConfigError if it is held


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
                with _local_lock:
                    shared = _local_clients.get(str(folder))
                    if shared is None:
                        shared = _local_clients[str(folder)] = QdrantClient(path=str(folder))
                client = shared
            except RuntimeError as exc:
                if "already accessed" not in str(exc):
                    raise
                raise ConfigError(folder_rule(folder, "is held by another process")) from None
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

    def upsert_many(self, points: list[tuple[str, np.ndarray, dict[str, Any]]]) -> None:
        """Write a batch of points in one request (imports, bulk loads)."""
        from qdrant_client import models

        if not points:
            return
        structs = [
            models.PointStruct(id=pid, vector=vector.tolist(), payload=payload)
            for pid, vector, payload in points
        ]
        with self._lock, _qdrant_errors():
            self._connect().upsert(self.collection, points=structs, wait=True)

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

    def _scroll(
        self, batch: int, with_payload: bool, only: Any = None
    ) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
        offset = None
        while True:
            with self._lock, _qdrant_errors():
                records, offset = self._connect().scroll(
                    self.collection,
                    scroll_filter=only,
                    limit=batch,
                    offset=offset,
                    with_vectors=True,
                    with_payload=with_payload,
                )
            for record in records:
                vector = np.asarray(record.vector, dtype=np.float32)
                yield str(record.id), vector, dict(record.payload or {})
            if offset is None:
                return

    def points(
        self, batch: int = 512, with_payload: bool = False
    ) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
        """Every (point id, vector, payload) of the collection, read in batches."""
        return self._scroll(batch, with_payload)

    def user_points(self, user_id: str) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
        """All points of one user, newest first."""
        from qdrant_client import models

        only_user = models.Filter(
            must=[models.FieldCondition(key="user_id", match=models.MatchValue(value=user_id))]
        )
        found = list(self._scroll(256, True, only_user))
        return sorted(found, key=lambda p: p[2].get("stored_at", 0.0), reverse=True)

    def nearest_others(
        self, vector: np.ndarray, user_id: str, limit: int, max_distance: float | None = None
    ) -> list[tuple[str, float, dict[str, Any]]]:
        """Other users' points nearest to ``vector``: (point id, distance, payload)."""
        from qdrant_client import models

        if limit <= 0:
            return []
        not_user = models.Filter(
            must_not=[models.FieldCondition(key="user_id", match=models.MatchValue(value=user_id))]
        )
        with self._lock, _qdrant_errors():
            response = self._connect().query_points(
                self.collection,
                query=vector.tolist(),
                query_filter=not_user,
                limit=limit,
                with_payload=True,
            )
        hits = [(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]
        if max_distance is not None:
            hits = [h for h in hits if h[1] <= max_distance]
        return sorted(hits, key=lambda h: h[1])

    def payloads(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        with self._lock, _qdrant_errors():
            found = self._connect().retrieve(self.collection, ids=ids, with_payload=True)
        return {str(r.id): dict(r.payload or {}) for r in found}

    def vectors_of(self, ids: list[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        with self._lock, _qdrant_errors():
            found = self._connect().retrieve(self.collection, ids=ids, with_vectors=True)
        return {str(r.id): np.asarray(r.vector, dtype=np.float32) for r in found}

    def set_payloads(self, updates: list[tuple[str, dict[str, Any]]]) -> None:
        """Merge each dict into its point's payload (one request per batch)."""
        from qdrant_client import models

        if not updates:
            return
        operations = [
            models.SetPayloadOperation(set_payload=models.SetPayload(payload=fields, points=[pid]))
            for pid, fields in updates
        ]
        with self._lock, _qdrant_errors():
            self._connect().batch_update_points(self.collection, operations, wait=True)

    def delete(self, ids: list[str]) -> None:
        from qdrant_client import models

        if not ids:
            return
        with self._lock, _qdrant_errors():
            self._connect().delete(
                self.collection, points_selector=models.PointIdsList(points=ids), wait=True
            )

    def close(self) -> None:
        """Close the client (for a local folder: the one every store in this process shares)."""
        with self._lock, _local_lock:
            if self._client is not None:
                self._client.close()
                for folder, client in list(_local_clients.items()):
                    if client is self._client:
                        del _local_clients[folder]
                self._client = None
