"""The score index: where a face stands in the population, at a cost that does not grow
with the population.

Per model, in Redis:

- ``aurum:index:{model}:sum``   hash: the running sum of the stored faces' unit embeddings
  (fields ``"0"`` … ``"127"``) and their count ``"n"``;
- ``aurum:index:{model}:rank``  sorted set: point id → typicality when it was stored.

Typicality is the cosine similarity of a face's unit embedding to the population centroid
(the mean of the unit embeddings, this face included). Placing a face reads the sum (one
HGETALL) and counts the sorted set (ZCOUNT, O(log N)): no scan of the vectors. As faces
arrive the centroid drifts and stored typicalities go stale; :meth:`ScoreIndex.rebuild`
recomputes them all from the vectors (the embedded default calls it at start).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import redis

from aurum_ml.state import redis_errors

__all__ = ["Placement", "ScoreIndex", "unit"]


def unit(vector: np.ndarray) -> np.ndarray:
    """The vector scaled to length 1 (float64)."""
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


@dataclass(frozen=True)
class Placement:
    """Where a face stands: ``percentile`` 0–1 (share of faces at or below its typicality),
    ``rank`` 1 = most typical, ``total`` faces including this one."""

    typicality: float
    percentile: float
    rank: int
    total: int


class ScoreIndex:
    def __init__(self, client: redis.Redis, model: str, dim: int) -> None:
        self.redis = client
        self.dim = dim
        self._sum_key = f"aurum:index:{model}:sum"
        self._rank_key = f"aurum:index:{model}:rank"

    def _read_sum(self) -> tuple[np.ndarray, int]:
        raw: dict[bytes, bytes] = self.redis.hgetall(self._sum_key)  # type: ignore[assignment]
        total = np.zeros(self.dim, dtype=np.float64)
        for field, value in raw.items():
            if field != b"n":
                total[int(field)] = float(value)
        return total, int(raw.get(b"n", 0))

    def place(self, point_id: str, embedding: np.ndarray) -> Placement:
        """Typicality and standing of a face, as if it were stored (it may already be)."""
        u = unit(embedding)
        with redis_errors():
            total_sum, n = self._read_sum()
            stored = self.redis.zscore(self._rank_key, point_id)
            if stored is None:  # not in the population yet: count it in
                total_sum, n = total_sum + u, n + 1
            typicality = float(u @ unit(total_sum))
            others = self.redis.zcard(self._rank_key) - (stored is not None)
            at_or_below = self.redis.zcount(self._rank_key, "-inf", typicality)
        if stored is not None and stored <= typicality:
            at_or_below -= 1  # do not count its own earlier entry
        return Placement(
            typicality=typicality,
            percentile=(at_or_below + 1) / (others + 1),
            rank=others - at_or_below + 1,
            total=others + 1,
        )

    def add(self, point_id: str, embedding: np.ndarray, typicality: float) -> bool:
        """Count a stored face in; False if it already was (safe to call twice)."""
        u = unit(embedding)

        def add_once(pipe: redis.client.Pipeline) -> bool:
            if pipe.zscore(self._rank_key, point_id) is not None:
                return False
            pipe.multi()
            pipe.zadd(self._rank_key, {point_id: typicality})
            for i, value in enumerate(u):
                pipe.hincrbyfloat(self._sum_key, str(i), float(value))
            pipe.hincrby(self._sum_key, "n", 1)
            return True

        with redis_errors():
            # WATCH the sorted set: two store workers adding the same face add it once.
            added = self.redis.transaction(
                add_once,  # type: ignore[arg-type]
                self._rank_key,
                value_from_callable=True,
            )
            return bool(added)

    def count(self) -> int:
        with redis_errors():
            return int(self.redis.zcard(self._rank_key))

    def rebuild(self, points: Iterable[tuple[str, np.ndarray]]) -> int:
        """Replace the index with these (point id, embedding) pairs; typicalities are
        recomputed against their common centroid. Returns the number of faces."""
        ids: list[str] = []
        vectors: list[np.ndarray] = []
        for point_id, embedding in points:
            ids.append(point_id)
            vectors.append(unit(embedding))
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._sum_key, self._rank_key)
            if ids:
                matrix = np.vstack(vectors)
                total_sum = matrix.sum(axis=0)
                typicalities = matrix @ unit(total_sum)
                sums: dict[str | bytes, str | int] = {
                    str(i): repr(float(v)) for i, v in enumerate(total_sum)
                }
                sums["n"] = len(ids)
                pipe.hset(self._sum_key, mapping=sums)  # type: ignore[arg-type]
                pipe.zadd(self._rank_key, dict(zip(ids, map(float, typicalities), strict=True)))
            pipe.execute()
        return len(ids)
