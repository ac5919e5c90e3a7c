"""qdrant-client as an engine: a Qdrant server (``QDRANT_URL``), or a folder in
qdrant-client's local mode (the engine before Edge: migrated from, and the shared-contract
tests). Foreign exceptions become StoreUnavailable (retryable) or ConfigError here."""

from __future__ import annotations

import contextlib
import logging
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

log = logging.getLogger(__name__)


# --- qdrant-client: a server (QDRANT_URL), or a local-mode folder being migrated -----------
@contextlib.contextmanager
def qdrant_errors() -> Iterator[None]:
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


class ClientEngine:
    """qdrant-client: a Qdrant server, or (migration, the shared-contract tests) a folder in
    qdrant-client's local mode."""

    name = "qdrant-client"

    def __init__(self, client: Any, collection: str, dim: int, server: bool) -> None:
        from qdrant_client import models

        self.client, self.collection, self.server = client, collection, server
        with qdrant_errors():
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
        with qdrant_errors():
            self.client.upsert(self.collection, points=structs, wait=True)

    def retrieve(self, ids: list[str], vectors: bool, payload: bool) -> list[Point]:
        with qdrant_errors():
            found = self.client.retrieve(
                self.collection, ids=ids, with_vectors=vectors, with_payload=payload
            )
        return [(str(r.id), as_vector(r.vector or []), dict(r.payload or {})) for r in found]

    def count(self) -> int:
        with qdrant_errors():
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
        with qdrant_errors():
            records, offset = self.client.scroll(
                self.collection,
                scroll_filter=only,
                limit=batch,
                offset=offset,
                with_vectors=True,
                with_payload=payload,
            )
        return [(str(r.id), as_vector(r.vector), dict(r.payload or {})) for r in records], offset

    def nearest_ids(
        self, vector: np.ndarray, user_id: str | None, limit: int
    ) -> list[tuple[str, float]]:
        from qdrant_client import models

        not_user = None
        if user_id is not None:
            match = models.MatchValue(value=user_id)
            not_user = models.Filter(must_not=[models.FieldCondition(key="user_id", match=match)])
        with qdrant_errors():
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
        with qdrant_errors():
            self.client.batch_update_points(self.collection, operations, wait=True)

    def delete(self, ids: list[str]) -> None:
        from qdrant_client import models

        with qdrant_errors():
            self.client.delete(
                self.collection, points_selector=models.PointIdsList(points=ids), wait=True
            )

    def optimize(self) -> bool:
        return False  # a server optimises in its own background threads

    def status(self) -> dict[str, int]:
        with qdrant_errors():
            info = self.client.get_collection(self.collection)
        return {
            "points": int(info.points_count or 0),
            "indexed": int(info.indexed_vectors_count or 0),
            "segments": int(info.segments_count or 0),
        }

    def close(self) -> None:
        self.client.close()


def local_mode_client(folder: Path) -> Any:
    """qdrant-client's local mode on ``folder``; ConfigError when another process holds it."""
    from qdrant_client import QdrantClient

    try:
        return QdrantClient(path=str(folder))
    except RuntimeError as exc:
        if "already accessed" not in str(exc):
            raise
        raise ConfigError(folder_rule(folder, "is held by another process")) from None
