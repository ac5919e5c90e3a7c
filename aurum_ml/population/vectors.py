"""The only module that talks to Qdrant: one :class:`VectorStore`, two engines.

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
import json
import logging
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aurum_ml.errors import ConfigError, StoreUnavailable
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

Point = tuple[str, np.ndarray, dict[str, Any]]
Hit = tuple[str, float, dict[str, Any]]

# A shard (or a local-mode folder) opens once per process: every VectorStore on it shares it.
_local_engines: dict[str, _Engine] = {}
_local_lock = threading.Lock()

# The HNSW graph and its search, the same on both engines. Measured on 100 000 generated
# faces (iid around a centre: a graph index's worst case) with 40 planted same-person pairs
# (BENCHMARKS.md): Qdrant's default graph (m 16) found 80 % of them, 88 % searching with
# ef 256; m 32 finds 97.5 % with ef 256 at 1.3 ms a search, for a 1.4× longer build.
HNSW_M = 32
HNSW_EF_CONSTRUCT = 100
SEARCH_EF = 256
# Scalar quantization: each vector is also kept as 128 int8 bytes, in RAM (128 MB a million
# faces); the graph is built and walked on those, and the best ``OVERSAMPLING × limit`` are
# re-scored on the full vectors, so every distance returned is exact. At a million generated
# faces (BENCHMARKS.md) the index builds in 262 s instead of 421 s.
QUANTILE = 0.99
OVERSAMPLING = 2.0
# The same-person search looks this many points past its limit without a filter on the
# user (see VectorStore.nearest_others): room for the user's own other photos.
OWN_FACES = 6

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


class _Engine(Protocol):
    """What VectorStore needs of an engine: plain tuples in, plain tuples out."""

    name: str

    def upsert(self, points: list[Point]) -> None: ...
    def retrieve(self, ids: list[str], vectors: bool, payload: bool) -> list[Point]: ...
    def count(self) -> int: ...
    def scroll(
        self, batch: int, payload: bool, user_id: str | None, offset: Any
    ) -> tuple[list[Point], Any]: ...
    def nearest_ids(
        self, vector: np.ndarray, user_id: str | None, limit: int
    ) -> list[tuple[str, float]]: ...
    def set_payloads(self, updates: list[tuple[str, dict[str, Any]]]) -> None: ...
    def delete(self, ids: list[str]) -> None: ...
    def optimize(self) -> bool: ...
    def status(self) -> dict[str, int]: ...
    def close(self) -> None: ...


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


def _vector(raw: Any) -> np.ndarray:
    if isinstance(raw, dict):  # a collection with named vectors: ours is the unnamed one
        raw = raw.get("", next(iter(raw.values())))
    return np.asarray(raw, dtype=np.float32)


# --- qdrant-client: a server (QDRANT_URL), or a local-mode folder being migrated -----------
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


class _ClientEngine:
    """qdrant-client: a Qdrant server, or (migration, the shared-contract tests) a folder in
    qdrant-client's local mode."""

    name = "qdrant-client"

    def __init__(self, client: Any, collection: str, dim: int, server: bool) -> None:
        from qdrant_client import models

        self.client, self.collection, self.server = client, collection, server
        with _qdrant_errors():
            if not client.collection_exists(collection):
                client.create_collection(
                    collection,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance.EUCLID),
                    hnsw_config=models.HnswConfigDiff(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT),
                    quantization_config=models.ScalarQuantization(
                        scalar=models.ScalarQuantizationConfig(
                            type=models.ScalarType.INT8, quantile=QUANTILE, always_ram=True
                        )
                    )
                    if server  # local mode has no quantization
                    else None,
                )
                if server:  # local mode has no payload indexes
                    client.create_payload_index(
                        collection, "user_id", models.PayloadSchemaType.KEYWORD
                    )

    def upsert(self, points: list[Point]) -> None:
        from qdrant_client import models

        structs = [
            models.PointStruct(id=pid, vector=vector.tolist(), payload=payload)
            for pid, vector, payload in points
        ]
        with _qdrant_errors():
            self.client.upsert(self.collection, points=structs, wait=True)

    def retrieve(self, ids: list[str], vectors: bool, payload: bool) -> list[Point]:
        with _qdrant_errors():
            found = self.client.retrieve(
                self.collection, ids=ids, with_vectors=vectors, with_payload=payload
            )
        return [(str(r.id), _vector(r.vector or []), dict(r.payload or {})) for r in found]

    def count(self) -> int:
        with _qdrant_errors():
            return int(self.client.count(self.collection, exact=True).count)

    def scroll(
        self, batch: int, payload: bool, user_id: str | None, offset: Any
    ) -> tuple[list[Point], Any]:
        from qdrant_client import models

        only = None
        if user_id is not None:
            only = models.Filter(
                must=[models.FieldCondition(key="user_id", match=models.MatchValue(value=user_id))]
            )
        with _qdrant_errors():
            records, offset = self.client.scroll(
                self.collection,
                scroll_filter=only,
                limit=batch,
                offset=offset,
                with_vectors=True,
                with_payload=payload,
            )
        return [(str(r.id), _vector(r.vector), dict(r.payload or {})) for r in records], offset

    def nearest_ids(
        self, vector: np.ndarray, user_id: str | None, limit: int
    ) -> list[tuple[str, float]]:
        from qdrant_client import models

        not_user = None
        if user_id is not None:
            match = models.MatchValue(value=user_id)
            not_user = models.Filter(must_not=[models.FieldCondition(key="user_id", match=match)])
        with _qdrant_errors():
            response = self.client.query_points(
                self.collection,
                query=vector.tolist(),
                query_filter=not_user,
                limit=limit,
                with_payload=False,
                search_params=models.SearchParams(
                    hnsw_ef=SEARCH_EF,
                    quantization=models.QuantizationSearchParams(
                        rescore=True, oversampling=OVERSAMPLING
                    ),
                )
                if self.server
                else None,
            )
        return [(str(p.id), float(p.score)) for p in response.points]

    def set_payloads(self, updates: list[tuple[str, dict[str, Any]]]) -> None:
        from qdrant_client import models

        operations = [
            models.SetPayloadOperation(set_payload=models.SetPayload(payload=fields, points=[pid]))
            for pid, fields in updates
        ]
        with _qdrant_errors():
            self.client.batch_update_points(self.collection, operations, wait=True)

    def delete(self, ids: list[str]) -> None:
        from qdrant_client import models

        with _qdrant_errors():
            self.client.delete(
                self.collection, points_selector=models.PointIdsList(points=ids), wait=True
            )

    def optimize(self) -> bool:
        return False  # a server optimises in its own background threads

    def status(self) -> dict[str, int]:
        with _qdrant_errors():
            info = self.client.get_collection(self.collection)
        return {
            "points": int(info.points_count or 0),
            "indexed": int(info.indexed_vectors_count or 0),
            "segments": int(info.segments_count or 0),
        }

    def close(self) -> None:
        self.client.close()


def _local_mode_client(folder: Path) -> Any:
    """qdrant-client's local mode on ``folder``; ConfigError when another process holds it."""
    from qdrant_client import QdrantClient

    try:
        return QdrantClient(path=str(folder))
    except RuntimeError as exc:
        if "already accessed" not in str(exc):
            raise
        raise ConfigError(folder_rule(folder, "is held by another process")) from None


# --- Qdrant Edge: a local folder ------------------------------------------------------------
class _EdgeEngine:
    """One Qdrant Edge shard (a collection) in this process. Its calls hold the GIL, so an
    :meth:`optimize` pauses this process's other threads while it builds (see BENCHMARKS.md
    for how long); searches and writes never wait for an index.

    Erasure reaches the disk: the shard keeps no write-ahead log (it would hold every
    stored vector and payload until it rotates), so each write is flushed before it
    returns instead, and any segment holding a deleted point is rewritten at the next
    :meth:`optimize`, which :meth:`delete` runs at once. With no log to lock, the shard is
    held by an exclusive lock on ``<shard>.lock`` for as long as it is open."""

    name = "qdrant-edge"

    def __init__(
        self, path: Path, dim: int, folder: Path, indexing_threshold_kb: int | None = None
    ) -> None:
        import fcntl

        import qdrant_edge as edge

        self.edge = edge
        path.parent.mkdir(parents=True, exist_ok=True)
        self._held = (path.parent / f"{path.name}.lock").open("a")
        try:
            fcntl.flock(self._held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._held.close()
            raise ConfigError(folder_rule(folder, "is held by another process")) from None
        optimizers = edge.EdgeOptimizersConfig(
            deleted_threshold=1e-9,  # a segment with any erased face is rewritten
            vacuum_min_vector_number=1,
            indexing_threshold=indexing_threshold_kb,
        )
        vectors = edge.EdgeVectorParams(size=dim, distance=edge.Distance.Euclid)
        quantized = edge.ScalarQuantizationConfig(
            type=edge.ScalarType.Int8, quantile=QUANTILE, memory=edge.Memory.Cached
        )
        try:
            if (path / "edge_config.json").exists():
                config = edge.EdgeConfig(
                    vectors=vectors, optimizers=optimizers, quantization_config=quantized
                )
                self.shard = edge.EdgeShard.load(str(path), config)
            else:
                config = edge.EdgeConfig(
                    vectors=vectors,
                    hnsw_config=edge.HnswIndexConfig(
                        m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=10_000
                    ),
                    optimizers=optimizers,
                    quantization_config=quantized,
                    wal_enabled=False,
                )
                self.shard = edge.EdgeShard.create(str(path), config)
                self.shard.update(
                    edge.UpdateOperation.create_field_index(
                        "user_id", edge.PayloadSchemaType.Keyword
                    )
                )
                self.shard.flush()
        except Exception as exc:
            self._held.close()
            raise ConfigError(f"cannot open the Qdrant Edge shard {path}: {exc}") from None

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - the engine raises one type for everything
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise StoreUnavailable(f"Qdrant Edge failed: {first}") from None

    def _not_user(self, user_id: str | None) -> Any:
        edge = self.edge
        if user_id is None:
            return None
        return edge.Filter(
            must_not=[edge.FieldCondition(key="user_id", match=edge.MatchValue(value=user_id))]
        )

    def upsert(self, points: list[Point]) -> None:
        edge = self.edge
        structs = [edge.Point(pid, vector.tolist(), payload) for pid, vector, payload in points]
        with self._errors():
            self.shard.update(edge.UpdateOperation.upsert_points(structs))
            self.shard.flush()

    def retrieve(self, ids: list[str], vectors: bool, payload: bool) -> list[Point]:
        with self._errors():
            found = self.shard.retrieve(list[Any](ids), with_payload=payload, with_vector=vectors)
        return [(str(r.id), _vector(r.vector or []), dict(r.payload or {})) for r in found]

    def count(self) -> int:
        with self._errors():
            return int(self.shard.count(self.edge.CountRequest(exact=True)))

    def scroll(
        self, batch: int, payload: bool, user_id: str | None, offset: Any
    ) -> tuple[list[Point], Any]:
        edge = self.edge
        only = None
        if user_id is not None:
            only = edge.Filter(
                must=[edge.FieldCondition(key="user_id", match=edge.MatchValue(value=user_id))]
            )
        request = edge.ScrollRequest(
            offset=offset, limit=batch, filter=only, with_payload=payload, with_vector=True
        )
        with self._errors():
            records, offset = self.shard.scroll(request)
        return [(str(r.id), _vector(r.vector), dict(r.payload or {})) for r in records], offset

    def nearest_ids(
        self, vector: np.ndarray, user_id: str | None, limit: int
    ) -> list[tuple[str, float]]:
        edge = self.edge
        request = edge.QueryRequest(
            limit=limit,
            query=edge.Query.Nearest(vector.tolist()),
            filter=self._not_user(user_id),
            with_payload=False,
            params=edge.SearchParams(
                hnsw_ef=SEARCH_EF,
                quantization=edge.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING),
            ),
        )
        with self._errors():
            found = self.shard.query(request)
        return [(str(p.id), float(p.score)) for p in found]

    def set_payloads(self, updates: list[tuple[str, dict[str, Any]]]) -> None:
        edge = self.edge
        with self._errors():
            for pid, fields in updates:
                self.shard.update(edge.UpdateOperation.set_payload([pid], fields))
            self.shard.flush()

    def delete(self, ids: list[str]) -> None:
        with self._errors():
            self.shard.update(self.edge.UpdateOperation.delete_points(list[Any](ids)))
            self.shard.flush()
            self.shard.optimize()  # rewrite the segments that held them: off the disk now
            self.shard.flush()  # (the engine lets go of the old segments' files here)

    def optimize(self) -> bool:
        with self._errors():
            changed = bool(self.shard.optimize())
            self.shard.flush()
        return changed

    def status(self) -> dict[str, int]:
        with self._errors():
            info = self.shard.info()
        return {
            "points": int(info.points_count),
            "indexed": int(info.indexed_vectors_count),
            "segments": int(info.segments_count),
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.shard.flush()
        self.shard.close()
        self._held.close()  # and the lock with it


# --- migration from qdrant-client's local mode -----------------------------------------------
def _local_mode_collections(folder: Path) -> dict[str, int]:
    """The collections (name → dimension) of a folder written by qdrant-client's local
    mode; empty when the folder holds none."""
    meta = folder / "meta.json"
    if not meta.exists():
        return {}
    config = json.loads(meta.read_text()).get("collections", {})
    found = {}
    for name, params in config.items():
        vectors = params.get("vectors", {})
        size = vectors.get("size") if isinstance(vectors, dict) else None
        if not isinstance(size, int):
            raise ConfigError(
                f"the local-mode collection {name} in {folder} has named vectors: "
                "export it with qdrant-client and import it with aurum-ml import-vectors"
            )
        found[name] = size
    return found


def migrate_local_mode(folder: Path, batch: int = 1000) -> dict[str, int]:
    """Move every collection of a qdrant-client local-mode folder into Qdrant Edge shards
    (``folder/edge/<collection>``), then remove the local-mode files. Each shard is built
    aside and counted against the source before it takes its place; a crash before that
    leaves the old folder as it was, and the next open starts over. Returns the number
    of points moved per collection."""
    collections = _local_mode_collections(folder)
    if not collections:
        return {}
    moved: dict[str, int] = {}
    client = _local_mode_client(folder)
    try:
        for name, dim in collections.items():
            final = folder / "edge" / name
            if final.exists():  # moved before a crash that left the old files behind
                continue
            aside = folder / "edge" / f"{name}.migrating"
            shutil.rmtree(aside, ignore_errors=True)
            aside.parent.mkdir(parents=True, exist_ok=True)
            source = _ClientEngine(client, name, dim, server=False)
            target = _EdgeEngine(aside, dim, folder)
            offset = None
            while True:
                points, offset = source.scroll(batch, True, None, offset)
                target.upsert(points)
                if offset is None:
                    break
            expected, written = source.count(), target.count()
            target.optimize()
            target.close()
            (aside.parent / f"{aside.name}.lock").unlink(missing_ok=True)
            if written != expected:
                shutil.rmtree(aside, ignore_errors=True)
                raise ConfigError(
                    f"migrating {name} from local mode copied {written} of {expected} "
                    "points; the old folder is untouched"
                )
            aside.rename(final)
            moved[name] = written
    finally:
        client.close()
    for leftover in ("collection", "meta.json", ".lock"):
        path = folder / leftover
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for name, count in moved.items():
        log.warning(
            "moved %d faces of %s from qdrant-client's local mode to Qdrant Edge", count, name
        )
    return moved


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
        self._engine: _Engine | None = None
        self._lock = threading.RLock()

    @property
    def where(self) -> str:
        return self.settings.qdrant_url or str(self.settings.qdrant_folder)

    def _connect(self) -> _Engine:
        if self._engine is not None:
            return self._engine
        if self.settings.qdrant_url:
            from qdrant_client import QdrantClient

            client = QdrantClient(
                url=self.settings.qdrant_url, api_key=self.settings.qdrant_api_key, timeout=10
            )
            self._engine = _ClientEngine(client, self.collection, self.dim, server=True)
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
                    shared = _EdgeEngine(shard, self.dim, folder, threshold)
                else:
                    client = _local_mode_client(folder)
                    shared = _ClientEngine(client, self.collection, self.dim, server=False)
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
    def _payloads_of(engine: _Engine, found: list[tuple[str, float]]) -> dict[str, dict[str, Any]]:
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
