"""The population's one way to Qdrant: one :class:`VectorStore` (here) over two engines
(:mod:`.qdrant_edge`, :mod:`.qdrant_server`; what they share: :mod:`.qdrant`).

- **A local folder** (``QDRANT_PATH``, default ``$AURUM_DATA_DIR/qdrant``: the embedded
  default, a one-machine deployment, the tests) is Qdrant's own engine in this process,
  Qdrant Edge (``qdrant-edge-py``): HNSW and a keyword index on ``user_id``, no server. One
  shard per collection under ``edge/``, opened by one process only (an exclusive lock on
  ``edge/<collection>.lock``): the local-folder rule (:func:`folder_rule`). An erased face
  leaves the disk when :meth:`VectorStore.delete` returns (no write-ahead log; the segment
  that held it is rewritten).
- **A server** (``QDRANT_URL``) through qdrant-client.

Both keep the same ids, payloads, Euclidean distances on the raw vectors (dlib's
same-person threshold, 0.6, applies as is) and filters; ``aurum-ml export-vectors`` /
``import-vectors`` move a collection from one to the other. One collection per model,
named after model and dimension.

Index freshness (Edge): a stored face goes into the shard's appendable segment, which a
search scans exactly, so it matches from the moment ``upsert`` returns. :meth:`optimize`
(at the end of every re-rank and bulk load) folds those faces into HNSW segments. Qdrant
rewrites a point that changes, so nothing rewrites every payload: a payload keeps the
score the face had when stored, and the live standing comes from the score index.

A folder written by qdrant-client's local mode (the engine before Edge: ``meta.json`` and
``collection/``) is migrated on first open, every point copied and counted, then the old
files are removed (an erasure must not survive in a copy).

Point ids are uuid5 of (user id, image hash, face index, model): a redelivered or repeated
job overwrites its own point, while one photo uploaded by two users stays two points.

Foreign exceptions become :class:`StoreUnavailable` (retryable) or :class:`ConfigError`
(permanent) here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from aurum_ml.errors import ConfigError
from aurum_ml.population.qdrant import Engine, Hit, Point, folder_rule
from aurum_ml.population.qdrant_edge import EdgeEngine, migrate_local_mode
from aurum_ml.population.qdrant_server import ClientEngine, local_mode_client
from aurum_ml.schemas import Match
from aurum_ml.settings import Settings

__all__ = [
    "VectorStore",
    "claim_local_folder",
    "collection_name",
    "folder_rule",
    "migrate_local_mode",
    "point_id",
]

log = logging.getLogger(__name__)


# A shard (or a local-mode folder) opens once per process: every VectorStore on it shares it.
_local_engines: dict[str, Engine] = {}
_local_lock = threading.Lock()

# The same-person search looks this many points past its limit without a filter on the
# user (see VectorStore.nearest_others): room for the user's own other photos.
OWN_FACES = 6

_NAMESPACE = uuid.UUID("6f0d7a52-4c1e-5d8a-9b3e-a0c1e2f3d4b5")


def point_id(user_id: str, image_sha256: str, face_index: int, model: str) -> str:
    """Deterministic point id of one face of one user's photo."""
    return str(uuid.uuid5(_NAMESPACE, f"{user_id}\x1f{image_sha256}\x1f{face_index}\x1f{model}"))


def collection_name(model: str, dim: int) -> str:
    return f"faces_{model.replace('-', '_')}_{dim}"


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


def _stored_ids(ids: list[str]) -> list[str]:
    """The ids that can name a point: ours are UUIDs, and Qdrant refuses a lookup of
    anything else (a stray index entry, say) instead of finding nothing."""
    kept = []
    for pid in ids:
        with contextlib.suppress(ValueError):
            kept.append(str(uuid.UUID(pid)))
    return kept


def _others(
    found: list[tuple[str, float]], payloads: dict[str, dict[str, Any]], user_id: str
) -> list[Hit]:
    """The hits (nearest first) that are still stored and not ``user_id``'s."""
    hits = [
        (pid, d, payloads[pid])
        for pid, d in found
        if pid in payloads and payloads[pid].get("user_id") != user_id
    ]
    return sorted(hits, key=lambda h: h[1])


# --- the store ------------------------------------------------------------------------------
class VectorStore:
    """Faces' vectors and payloads in one collection. Methods are safe to call twice.

    ``engine``: ``"edge"`` (a local folder) or ``"client"`` (qdrant-client: a server, or
    a local-mode folder for the shared-contract tests); by default Edge for a folder and
    qdrant-client for ``QDRANT_URL``."""

    def __init__(self, settings: Settings, model: str, dim: int, engine: str | None = None) -> None:
        self.settings = settings
        self.dim = dim
        self.collection = collection_name(model, dim)
        self.engine = engine or ("client" if settings.qdrant_url else "edge")
        self._engine: Engine | None = None
        self._lock = threading.RLock()

    @property
    def where(self) -> str:
        return self.settings.qdrant_url or str(self.settings.qdrant_folder)

    def _connect(self) -> Engine:
        if self._engine is not None:
            return self._engine
        if self.settings.qdrant_url:
            from qdrant_client import QdrantClient

            client = QdrantClient(
                url=self.settings.qdrant_url, api_key=self.settings.qdrant_api_key, timeout=10
            )
            self._engine = ClientEngine(client, self.collection, self.dim, server=True)
            return self._engine
        folder = self.settings.qdrant_folder
        folder.mkdir(parents=True, exist_ok=True)
        with _local_lock:
            key = f"{self.engine}:{folder}:{self.collection}"
            shared = _local_engines.get(key)
            if shared is None:
                if self.engine == "edge":
                    migrate_local_mode(folder)
                    shard = folder / "edge" / self.collection
                    threshold = self.settings.qdrant_indexing_threshold_kb
                    shared = EdgeEngine(shard, self.dim, folder, threshold)
                else:
                    client = local_mode_client(folder)
                    shared = ClientEngine(client, self.collection, self.dim, server=False)
                _local_engines[key] = shared
        self._engine = shared
        return shared

    def upsert(self, pid: str, vector: np.ndarray, payload: dict[str, Any]) -> None:
        self.upsert_many([(pid, vector, payload)])

    def upsert_many(self, points: list[Point]) -> None:
        """Write a batch of points in one request (imports, bulk loads)."""
        if not points:
            return
        with self._lock:
            self._connect().upsert(points)

    def get(self, pid: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The stored vector and payload of a point, or None."""
        if not _stored_ids([pid]):
            return None
        with self._lock:
            found = self._connect().retrieve([pid], vectors=True, payload=True)
        return (found[0][1], found[0][2]) if found else None

    def count(self) -> int:
        with self._lock:
            return self._connect().count()

    def _scroll(
        self, batch: int, with_payload: bool, user_id: str | None = None
    ) -> Iterator[Point]:
        offset = None
        while True:
            with self._lock:
                records, offset = self._connect().scroll(batch, with_payload, user_id, offset)
            yield from records
            if offset is None:
                return

    def points(self, batch: int = 512, with_payload: bool = False) -> Iterator[Point]:
        """Every (point id, vector, payload) of the collection, read in batches."""
        return self._scroll(batch, with_payload)

    def user_points(self, user_id: str) -> list[Point]:
        """All points of one user, newest first."""
        found = list(self._scroll(256, True, user_id))
        return sorted(found, key=lambda p: p[2].get("stored_at", 0.0), reverse=True)

    def same_person(self, vector: np.ndarray, user_id: str) -> list[Match]:
        """Other users' faces within SAME_PERSON_DISTANCE of ``vector``, nearest first, at
        most MATCH_LIMIT: the one same-person search (the store stage's, and the embedded
        default's when it rebuilds the latest results)."""
        hits = self.nearest_others(
            vector,
            user_id,
            limit=self.settings.match_limit,
            max_distance=self.settings.same_person_distance,
        )
        return [
            Match(user_id=str(payload.get("user_id")), point_id=pid, distance=round(d, 4))
            for pid, d, payload in hits
        ]

    def nearest_others(
        self, vector: np.ndarray, user_id: str, limit: int, max_distance: float | None = None
    ) -> list[Hit]:
        """Other users' points nearest to ``vector``: (point id, distance, payload). The
        search reads no payload (a face's payload is read from disk); only the hits within
        ``max_distance`` — usually none — are.

        With ``max_distance`` (the same-person search) the graph is walked without a filter,
        for ``limit + OWN_FACES`` points: a filter on the user is checked at every point the
        walk visits (1.6× the search at a million faces). The user's own faces there are
        within the distance (the same person), so their payloads, read anyway, tell them
        apart. Only when that whole window is within the distance and too few of it are
        other users' is the filtered search run as well. Without ``max_distance`` the
        search is filtered."""
        if limit <= 0:
            return []
        with self._lock:
            engine = self._connect()
            if max_distance is not None:
                window = limit + OWN_FACES
                wide = engine.nearest_ids(vector, None, window)
                found = [(pid, d) for pid, d in wide if d <= max_distance]
                hits = _others(found, self._payloads_of(engine, found), user_id)
                if len(hits) >= limit or len(found) < len(wide) or len(wide) < window:
                    return hits[:limit]
            found = engine.nearest_ids(vector, user_id, limit)
            if max_distance is not None:
                found = [(pid, d) for pid, d in found if d <= max_distance]
            return _others(found, self._payloads_of(engine, found), user_id)

    @staticmethod
    def _payloads_of(engine: Engine, found: list[tuple[str, float]]) -> dict[str, dict[str, Any]]:
        if not found:
            return {}
        read = engine.retrieve([pid for pid, _ in found], vectors=False, payload=True)
        return {pid: payload for pid, _, payload in read}

    def payloads(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        ids = _stored_ids(ids)
        if not ids:
            return {}
        with self._lock:
            found = self._connect().retrieve(ids, vectors=False, payload=True)
        return {pid: payload for pid, _, payload in found}

    def vectors_of(self, ids: list[str]) -> dict[str, np.ndarray]:
        ids = _stored_ids(ids)
        if not ids:
            return {}
        with self._lock:
            found = self._connect().retrieve(ids, vectors=True, payload=False)
        return {pid: vector for pid, vector, _ in found}

    def set_payloads(self, updates: list[tuple[str, dict[str, Any]]]) -> None:
        """Merge each dict into its point's payload (one request per batch). Qdrant moves a
        changed point out of its indexed segment: write only what changed."""
        if not updates:
            return
        with self._lock:
            self._connect().set_payloads(updates)

    def delete(self, ids: list[str]) -> None:
        ids = _stored_ids(ids)
        if not ids:
            return
        with self._lock:
            self._connect().delete(ids)

    def optimize(self) -> bool:
        """Fold recently stored faces into the HNSW index (Edge; a server does it on its
        own). Blocks this process's threads while it builds; True if it changed anything."""
        with self._lock:
            return self._connect().optimize()

    def status(self) -> dict[str, Any]:
        """Points, indexed vectors and segments, and which engine holds them."""
        with self._lock:
            engine = self._connect()
            return {"engine": engine.name} | engine.status()

    def close(self) -> None:
        """Close the engine (for a local folder: the one every store in this process shares)."""
        with self._lock, _local_lock:
            if self._engine is not None:
                self._engine.close()
                for key, engine in list(_local_engines.items()):
                    if engine is self._engine:
                        del _local_engines[key]
                self._engine = None
