"""Qdrant Edge as an engine: one shard per collection in a local folder, in this process
(``qdrant-edge-py``), and the migration of a folder written by qdrant-client's local mode."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from aurum_ml.errors import ConfigError, StoreUnavailable
from aurum_ml.population.qdrant import (
    HNSW_EF_CONSTRUCT,
    HNSW_M,
    OVERSAMPLING,
    QUANTILE,
    SEARCH_EF,
    Point,
    as_vector,
    folder_rule,
)
from aurum_ml.population.qdrant_server import ClientEngine, local_mode_client

log = logging.getLogger(__name__)


# --- Qdrant Edge: a local folder ------------------------------------------------------------
class EdgeEngine:
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
        return [(str(r.id), as_vector(r.vector or []), dict(r.payload or {})) for r in found]

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
        return [(str(r.id), as_vector(r.vector), dict(r.payload or {})) for r in records], offset

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
def local_mode_collections(folder: Path) -> dict[str, int]:
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
    collections = local_mode_collections(folder)
    if not collections:
        return {}
    moved: dict[str, int] = {}
    client = local_mode_client(folder)
    try:
        for name, dim in collections.items():
            final = folder / "edge" / name
            if final.exists():  # moved before a crash that left the old files behind
                continue
            aside = folder / "edge" / f"{name}.migrating"
            shutil.rmtree(aside, ignore_errors=True)
            aside.parent.mkdir(parents=True, exist_ok=True)
            source = ClientEngine(client, name, dim, server=False)
            target = EdgeEngine(aside, dim, folder)
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
