"""The score index on real Redis, checked against brute force on generated embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from aurum_ml.index import ScoreIndex, unit


@pytest.fixture()
def index(redis_client):
    idx = ScoreIndex(redis_client, "test-model", 128)
    yield idx
    redis_client.delete(idx._sum_key, idx._rank_key)


def _vectors(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=128)
    return (base + rng.normal(scale=1.5, size=(n, 128))).astype(np.float32)


def _brute_force(vectors: np.ndarray, i: int) -> tuple[float, float, int]:
    units = np.vstack([unit(v) for v in vectors])
    centroid = unit(units.sum(axis=0))
    typ = units @ centroid
    others = np.delete(typ, i)
    at_or_below = int((others <= typ[i]).sum())
    return float(typ[i]), (at_or_below + 1) / len(typ), len(others) - at_or_below + 1


def test_first_face_is_the_whole_population(index):
    (v,) = _vectors(1)
    place = index.place("a", v)
    assert (place.percentile, place.rank, place.total) == (1.0, 1, 1)
    assert place.typicality == pytest.approx(1.0)


def test_add_is_idempotent(index):
    (v,) = _vectors(1)
    assert index.add("a", v, 1.0) is True
    assert index.add("a", v, 1.0) is False
    assert index.count() == 1
    total, n = index._read_sum()
    assert n == 1 and np.allclose(total, unit(v))


def test_placing_a_stored_face_does_not_count_it_twice(index):
    vectors = _vectors(5)
    for i, v in enumerate(vectors):
        index.add(str(i), v, index.place(str(i), v).typicality)
    again = index.place("2", vectors[2])
    assert again.total == 5


def test_rebuild_matches_brute_force_exactly(index):
    vectors = _vectors(300)
    for i, v in enumerate(vectors):  # arrival order: the centroid drifts as they come
        index.add(str(i), v, index.place(str(i), v).typicality)
    assert index.rebuild((str(i), v) for i, v in enumerate(vectors)) == 300
    for i in (0, 17, 150, 299):
        typ, percentile, rank = _brute_force(vectors, i)
        place = index.place(str(i), vectors[i])
        assert place.typicality == pytest.approx(typ, abs=1e-9)
        assert place.percentile == pytest.approx(percentile)
        assert place.rank == rank and place.total == 300
