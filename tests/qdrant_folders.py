"""Local Qdrant folders in the states a user meets: held by another store, or written by
the engine before Qdrant Edge (qdrant-client's local mode)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from aurum_ml.pipeline.backends.local import MODEL_ID
from aurum_ml.population.vectors import collection_name

COLLECTION = collection_name(MODEL_ID, 128)


@contextlib.contextmanager
def held(folder: Path) -> Iterator[None]:
    """The folder open in this process, as another process's store worker would hold it."""
    from aurum_ml.population.vectors import VectorStore
    from aurum_ml.settings import get_settings

    settings = get_settings().model_copy(update={"qdrant_path": folder, "qdrant_url": None})
    store = VectorStore(settings, MODEL_ID, 128)
    store.count()  # opens it
    try:
        yield
    finally:
        store.close()


def write_local_mode(folder: Path, n: int, seed: int = 5) -> dict[str, tuple[np.ndarray, dict]]:
    """A folder as qdrant-client's local mode wrote it before this release: ``n`` faces.
    Returns them by point id."""
    import uuid

    from qdrant_client import QdrantClient, models

    rng = np.random.default_rng(seed)
    points = {
        str(uuid.UUID(int=int(rng.integers(1 << 62)) + i)): (
            rng.normal(size=128).astype(np.float32),
            {"user_id": f"old-{i}", "stored_at": 1000.0 + i, "score": float(i % 100)},
        )
        for i in range(n)
    }
    client = QdrantClient(path=str(folder))
    try:
        client.create_collection(
            COLLECTION,
            vectors_config=models.VectorParams(size=128, distance=models.Distance.EUCLID),
        )
        client.upsert(
            COLLECTION,
            points=[
                models.PointStruct(id=pid, vector=v.tolist(), payload=p)
                for pid, (v, p) in points.items()
            ],
        )
    finally:
        client.close()
    return points
