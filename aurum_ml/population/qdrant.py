"""What both Qdrant engines share with the store above them (:mod:`.vectors`): a point's
shape, the collection's HNSW graph and quantization, the engine interface, and the
local-folder rule."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

Point = tuple[str, np.ndarray, dict[str, Any]]
Hit = tuple[str, float, dict[str, Any]]

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


class Engine(Protocol):
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


def as_vector(raw: Any) -> np.ndarray:
    if isinstance(raw, dict):  # a collection with named vectors: ours is the unnamed one
        raw = raw.get("", next(iter(raw.values())))
    return np.asarray(raw, dtype=np.float32)
