"""The score index on real Redis, checked against brute force on generated embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from aurum_ml.population.index import ScoreIndex, midrank_percentiles, unit


@pytest.fixture()
def index(redis_client):
    idx = ScoreIndex(redis_client, "test-model", 128)
    idx.clear()
    yield idx
    idx.clear()


def _vectors(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=128)
    return (base + rng.normal(scale=1.5, size=(n, 128))).astype(np.float32)


def _fill(index: ScoreIndex, vectors: np.ndarray) -> None:
    for i, v in enumerate(vectors):  # arrival order: the centroid drifts as they come
        index.add(str(i), v, index.enter(str(i), v).typicality)


def test_first_face_is_the_whole_population(index):
    (v,) = _vectors(1)
    place = index.enter("a", v)
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
    _fill(index, vectors)
    again = index.enter("2", vectors[2])
    assert again.total == 5


def test_ties_count_half(index):
    vectors = _vectors(4)
    for pid, typicality in (("a", 0.5), ("b", 0.5), ("c", 0.2), ("d", 0.9)):
        index.add(pid, vectors["abcd".index(pid)], typicality)
    standing = index.standing("a")
    # below: c; tied others: b (half); itself: 1 → (1 + 0.5 + 1) / 4
    assert standing.percentile == pytest.approx(2.5 / 4)
    assert standing.rank == 2  # only d is more typical
    assert list(midrank_percentiles(np.array([0.5, 0.5, 0.2, 0.9]))) == [0.625, 0.625, 0.25, 1.0]


def test_remove_takes_the_face_and_its_sum_out(index):
    vectors = _vectors(3)
    _fill(index, vectors)
    assert index.remove([("1", vectors[1]), ("nope", vectors[0])]) == 1
    total, n = index._read_sum()
    assert n == 2 and np.allclose(total, unit(vectors[0]) + unit(vectors[2]))
    assert index.members() == {"0", "2"}
    assert index.gone() == {"1", "nope"}


def test_top_includes_every_face_tied_with_the_last(index):
    vectors = _vectors(5)
    for pid, typicality in zip("abcde", (0.9, 0.8, 0.8, 0.8, 0.1), strict=True):
        index.add(pid, vectors["abcde".index(pid)], typicality)
    assert [pid for pid, _ in index.top(2)][:1] == ["a"]
    assert {pid for pid, _ in index.top(2)} == {"a", "b", "c", "d"}


def test_a_staged_rerank_swaps_in_a_recomputed_index(index, runtime):
    vectors = _vectors(300)
    _fill(index, vectors)
    units = np.vstack([unit(v) for v in vectors])
    typicalities = units @ unit(units.sum(axis=0))
    ids = [str(i) for i in range(300)]
    assert index.members() == set(ids)
    index.stage_clear()
    index.stage(ids, typicalities)
    stats = {"distribution": None, "thresholds": {}}
    assert index.swap_staged(units.sum(axis=0), 300, stats, set(), runtime.vectors) == 300
    expected = midrank_percentiles(typicalities)
    for i in (0, 17, 150, 299):
        standing = index.standing(str(i))
        assert standing.typicality == pytest.approx(typicalities[i], abs=1e-12)
        assert standing.percentile == pytest.approx(expected[i])
        assert standing.rank == 1 + int((typicalities > typicalities[i]).sum())


def test_concurrent_placements_count_each_other(index):
    """Faces entering at the same moment (threads, one connection pool) get totals 1..N,
    and each rank is the one its typicality earns among the faces entered before it."""
    from concurrent.futures import ThreadPoolExecutor

    vectors = _vectors(24, seed=3)
    with ThreadPoolExecutor(8) as pool:
        placed = list(pool.map(lambda i: index.enter(str(i), vectors[i]), range(24)))
    assert sorted(p.total for p in placed) == list(range(1, 25))
    by_total = sorted(placed, key=lambda p: p.total)
    for k, p in enumerate(by_total):
        earlier = [q.typicality for q in by_total[:k]]
        assert p.rank == 1 + sum(t > p.typicality for t in earlier)
    total, n = index._read_sum()
    assert n == 24 and np.allclose(total, sum(unit(v) for v in vectors))


def test_a_placement_not_confirmed_can_be_withdrawn(index):
    vectors = _vectors(3)
    index.enter("a", vectors[0])
    index.add("a", vectors[0], 1.0)  # stored: confirmed
    index.enter("b", vectors[1])  # scored, its job then fails
    assert index.count() == 2
    assert index.withdraw("b") is True
    assert index.withdraw("b") is False  # twice is harmless
    assert index.withdraw("a") is False  # a confirmed face stays
    total, n = index._read_sum()
    assert n == 1 and np.allclose(total, unit(vectors[0]))
    assert index.members() == {"a"}
    assert index.pending_units(["a", "b"]) == {}


def test_a_redelivered_score_is_not_counted_twice(index):
    vectors = _vectors(2)
    first = index.enter("a", vectors[0])
    again = index.enter("a", vectors[0])
    assert (first.total, again.total) == (1, 1)
    assert index.add("a", vectors[0], first.typicality) is False  # already counted in
    assert index.count() == 1


def test_a_staged_rerank_keeps_faces_entered_meanwhile_and_drops_stale_ones(index, runtime):
    """The streamed re-rank swaps its typicalities in atomically: a face scored during the
    re-rank keeps its own and counts in the sum; an entry whose job vanished (no vector
    anywhere) is dropped, so the index heals."""
    vectors = _vectors(5)
    _fill(index, vectors[:4])
    index.stage_clear()
    index.stage(["0", "1", "2", "3"], np.array([0.1, 0.2, 0.3, 0.4]))
    entered = index.enter("4", vectors[4])  # scored during the re-rank: pending
    index.redis.zadd(index._rank_key, {"ghost": 0.5})  # its job vanished, its vector too
    total = sum(unit(v) for v in vectors[:4])
    stats = {"distribution": None, "thresholds": {}}
    assert index.swap_staged(total, 4, stats, set(), runtime.vectors) == 5
    assert index.members() == {"0", "1", "2", "3", "4"}
    assert index.standing("0").typicality == 0.1
    assert index.standing("4").typicality == pytest.approx(entered.typicality)
    after, n = index._read_sum()
    assert n == 5 and np.allclose(after, total + unit(vectors[4]))
    batch = index.standings(["3", "ghost", "0"])
    assert batch[1] is None and [batch[0], batch[2]] == [index.standing("3"), index.standing("0")]


def test_an_erasure_during_the_rerank_makes_it_run_again(index, runtime):
    vectors = _vectors(3)
    _fill(index, vectors)
    index.stage_clear()
    index.stage(["0", "1", "2"], np.array([0.1, 0.2, 0.3]))
    index.remove([("1", vectors[1])])  # erased while the re-rank was reading
    stats = {"distribution": None, "thresholds": {}}
    assert index.swap_staged(np.zeros(128), 3, stats, set(), runtime.vectors) is None
    assert index.members() == {"0", "2"}  # the live index as it was


def test_a_sum_kept_by_an_earlier_version_is_read_and_replaced(index):
    """Before, the sum was a hash of 129 fields (one HINCRBYFLOAT each a face); an index
    that holds one keeps counting from it, and its first write replaces it."""
    vectors = _vectors(3)
    legacy = {str(i): repr(float(x)) for i, x in enumerate(unit(vectors[0]) + unit(vectors[1]))}
    index.redis.hset("aurum:index:test-model:sum", mapping=legacy | {"n": 2})
    index.redis.zadd("aurum:index:test-model:rank", {"0": 0.9, "1": 0.8})
    total, n = index._read_sum()
    assert n == 2 and np.allclose(total, unit(vectors[0]) + unit(vectors[1]))
    index.add("2", vectors[2], index.enter("2", vectors[2]).typicality)
    assert not index.redis.exists("aurum:index:test-model:sum")
    total, n = index._read_sum()
    assert n == 3 and np.allclose(total, sum(unit(v) for v in vectors))
