"""The vector store's two engines on one contract, the Edge index's freshness, the move
from qdrant-client's local mode, and export/import between engines.

The server engine is qdrant-client; no Qdrant server runs here, so its side of the
contract runs against qdrant-client's local mode, which answers through the same client
API (the server path itself is covered where a test can reach one: docker-compose)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from qdrant_folders import COLLECTION, write_local_mode

from aurum_ml.pipeline.backends.local import MODEL_ID
from aurum_ml.population.rerank import rerank
from aurum_ml.population.transfer import export_vectors, import_vectors
from aurum_ml.population.vectors import VectorStore, point_id

ENGINES = ("edge", "client")


def _store(settings, folder: Path, engine: str, **changes) -> VectorStore:
    local = settings.model_copy(update={"qdrant_path": folder, **changes})
    return VectorStore(local, MODEL_ID, 128, engine=engine)


def _population(n: int, seed: int = 3, name: str = "gen") -> list[tuple[str, np.ndarray, dict]]:
    """``n`` generated faces, two a user."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(scale=0.1, size=(n, 128)).astype(np.float32)
    points = []
    for i in range(n):
        user, sha = f"{name}-{i % (n // 2)}", f"{seed:08x}{i:056x}"
        payload = {"user_id": user, "stored_at": 1000.0 + i, "job_id": f"{name}{i}",
                   "image_sha256": sha, "erasure_epoch": 0}  # fmt: skip
        points.append((point_id(user, sha, 0, MODEL_ID), vectors[i], payload))
    return points


@pytest.fixture(scope="module")
def both(settings, tmp_path_factory):
    """The same 600 faces in each engine."""
    points = _population(600)
    stores = {}
    for engine in ENGINES:
        store = _store(settings, tmp_path_factory.mktemp(engine), engine)
        store.upsert_many(points)
        stores[engine] = store
    yield points, stores
    for store in stores.values():
        store.close()


def test_both_engines_give_the_same_answers(both):
    points, stores = both
    edge, client = stores["edge"], stores["client"]
    assert edge.status()["engine"] == "qdrant-edge"
    assert client.status()["engine"] == "qdrant-client"
    assert edge.count() == client.count() == len(points)
    rng = np.random.default_rng(9)
    for _, vector, payload in points[:40]:
        query = vector + rng.normal(scale=0.02, size=128).astype(np.float32)
        a = edge.nearest_others(query, payload["user_id"], limit=10, max_distance=0.6)
        b = client.nearest_others(query, payload["user_id"], limit=10, max_distance=0.6)
        assert [h[0] for h in a] == [h[0] for h in b]
        assert np.allclose([h[1] for h in a], [h[1] for h in b], atol=1e-5)
        assert all(h[2]["user_id"] != payload["user_id"] for h in a)
        assert [p[0] for p in edge.user_points(payload["user_id"])] == [
            p[0] for p in client.user_points(payload["user_id"])
        ]
    ids = [p[0] for p in points[:50]]
    assert edge.payloads(ids) == client.payloads(ids)
    for pid in ids:
        assert np.array_equal(edge.vectors_of([pid])[pid], client.vectors_of([pid])[pid])
    assert {p[0] for p in edge.points(batch=64)} == {p[0] for p in client.points(batch=64)}
    assert edge.get("not-a-point-id") is None and edge.payloads(["nope"]) == {}


@pytest.mark.parametrize("own", [2, 25])
def test_the_same_person_search_leaves_out_the_users_own_faces_however_many(
    settings, tmp_path, own
):
    """The search walks the graph unfiltered for a window past its limit and tells the
    user's own faces apart by payload; a user with more faces near the probe than that
    window holds gets the filtered search as well. Either way: the nearest other users'
    faces within the distance, as brute force finds them."""
    rng = np.random.default_rng(own)
    centre = rng.normal(scale=0.1, size=128).astype(np.float32)

    def near(radius: float) -> np.ndarray:
        step = rng.normal(size=128)
        return (centre + step / np.linalg.norm(step) * radius).astype(np.float32)

    crowd = [(f"self-{i}", near(rng.uniform(0.05, 0.2)), "me") for i in range(own)]
    crowd += [(f"other-{i}", near(rng.uniform(0.25, 0.55)), f"u{i}") for i in range(14)]
    crowd += [(f"far-{i}", near(rng.uniform(0.7, 0.9)), f"f{i}") for i in range(5)]
    points = _population(400, seed=31) + [
        (point_id(user, name.ljust(64, "0"), 0, MODEL_ID), vector, {"user_id": user})
        for name, vector, user in crowd
    ]
    expected = sorted(
        (float(np.linalg.norm(vector - centre)), pid)
        for pid, vector, payload in points
        if payload["user_id"] != "me" and np.linalg.norm(vector - centre) <= 0.6
    )[:10]
    for engine in ENGINES:
        store = _store(settings, tmp_path / engine, engine)
        try:
            store.upsert_many(points)
            hits = store.nearest_others(centre, "me", limit=10, max_distance=0.6)
            assert [h[0] for h in hits] == [pid for _, pid in expected], engine
            assert np.allclose([h[1] for h in hits], [d for d, _ in expected], atol=1e-5)
            assert all(h[2]["user_id"] != "me" for h in hits)
            fewer = store.nearest_others(centre, "me", limit=3, max_distance=0.3)
            assert [h[0] for h in fewer] == [pid for d, pid in expected if d <= 0.3][:3]
        finally:
            store.close()


def test_both_engines_change_points_the_same_way(settings, tmp_path):
    points = _population(40)
    for engine in ENGINES:
        store = _store(settings, tmp_path / engine, engine)
        try:
            store.upsert_many(points)
            store.upsert_many(points[:5])  # again: same ids, nothing added
            first, second = points[0][0], points[1][0]
            store.set_payloads([(first, {"vibes": ["x"]})])
            assert store.get(first)[1] == points[0][2] | {"vibes": ["x"]}
            store.delete([second, second])
            assert store.get(second) is None and store.count() == 39
        finally:
            store.close()


def test_the_rerank_agrees_on_both_engines(runtime, both):
    """Scores from one engine's points are the other's: the re-rank streams either (into a
    score index of its own, so the session's population is left alone)."""
    from aurum_ml.population.index import ScoreIndex

    points, stores = both
    standings = {}
    for engine, store in stores.items():
        index = ScoreIndex(runtime.index.redis, f"contract-{engine}", 128)
        index.clear()
        try:
            report = rerank(dataclasses.replace(runtime, vectors=store, index=index))
            assert report.faces == len(points) and report.vibe_reference_frozen
            standings[engine] = {p[0]: index.standing(p[0]) for p in points}
        finally:
            index.clear()
    for pid, place in standings["edge"].items():
        other = standings["client"][pid]
        assert place.typicality == pytest.approx(other.typicality, abs=1e-9)
        assert place.rank == other.rank and place.percentile == other.percentile
    # the vibe tags it wrote are the same on both
    ids = [p[0] for p in points]
    edge, client = stores["edge"].payloads(ids), stores["client"].payloads(ids)
    assert all(edge[pid]["vibes"] == client[pid]["vibes"] for pid in ids)


def test_a_face_just_stored_matches_before_and_after_the_index_takes_it(
    settings, model, photos, tmp_path
):
    """Edge with a small indexing threshold, so the filler is in HNSW segments: a face
    stored a moment ago is in the appendable segment, searched exactly — it matches at
    once, and still after optimize() has folded it into the index."""
    store = _store(settings, tmp_path, "edge", qdrant_indexing_threshold_kb=64)
    try:
        filler = _population(3000, seed=21)
        for start in range(0, len(filler), 1000):
            store.upsert_many(filler[start : start + 1000])
        assert store.optimize() is True
        indexed = store.status()
        assert indexed["indexed"] == indexed["points"] == 3000

        def embedding(name: str) -> np.ndarray:
            data = (photos / name).read_bytes()
            return model.embed(data, model.detect(data)[0])

        mine = point_id("u-fresh", "a" * 64, 0, MODEL_ID)
        store.upsert(mine, embedding("obama.jpg"), {"user_id": "u-fresh", "stored_at": 1.0})
        fresh = store.status()
        assert fresh["points"] == 3001 and fresh["indexed"] < fresh["points"]  # not indexed yet
        probe = embedding("obama3.jpg")  # another photo of the same person, another user
        hits = store.nearest_others(probe, "u-other", limit=10, max_distance=0.6)
        assert [h[0] for h in hits] == [mine]
        # a small appendable segment stays exact; once past the threshold, it is indexed
        store.upsert_many(_population(400, seed=22, name="later"))
        assert store.optimize() is True
        assert store.status()["indexed"] == store.status()["points"] == 3401
        assert [h[0] for h in store.nearest_others(probe, "u-other", 10, 0.6)] == [mine]
    finally:
        store.close()


def test_a_local_mode_folder_is_moved_to_edge_on_first_open_losing_no_point(settings, tmp_path):
    folder = tmp_path / "qdrant"
    old = write_local_mode(folder, 1500)
    (folder / "edge" / f"{COLLECTION}.migrating").mkdir(parents=True)  # a crashed attempt
    store = _store(settings, folder, "edge")
    try:
        assert store.count() == 1500
        for pid, (vector, payload) in old.items():
            got = store.get(pid)
            assert got is not None and np.array_equal(got[0], vector) and got[1] == payload
        hits = store.nearest_others(next(iter(old.values()))[0], "someone", 1)
        assert hits[0][0] == next(iter(old))
    finally:
        store.close()
    left = sorted(p.name for p in folder.iterdir())
    shards = sorted(p.name for p in (folder / "edge").iterdir())
    assert left == ["edge"] and shards == [COLLECTION, f"{COLLECTION}.lock"]
    # the old copy is gone: an erasure must not survive in it


def test_a_local_mode_folder_held_by_its_old_worker_is_not_moved(settings, tmp_path):
    """The migration needs the folder to itself: while an old worker holds it, the new one
    says so (the folder rule), and the old files stay as they are."""
    folder = tmp_path / "qdrant"
    write_local_mode(folder, 10)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from qdrant_client import QdrantClient; "
         f"c = QdrantClient(path={str(folder)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        from aurum_ml.errors import ConfigError

        with pytest.raises(ConfigError, match="held by another process"):
            _store(settings, folder, "edge").count()
    finally:
        holder.kill()
        holder.wait()
    assert (folder / "meta.json").exists() and not (folder / "edge" / COLLECTION).exists()


def test_export_then_import_moves_every_face_and_keeps_erasures(runtime, both, tmp_path):
    points, stores = both
    target = _store(runtime.settings, tmp_path / "to", "client")
    erased = points[0][2]["user_id"]
    try:
        file = tmp_path / "faces.jsonl.gz"
        assert export_vectors(dataclasses.replace(runtime, vectors=stores["edge"]), file) == 600
        assert file.stat().st_mode & 0o777 == 0o600  # biometric data: the owner's only
        runtime.users.mark_erased(erased)  # erased between the export and the import
        report = import_vectors(dataclasses.replace(runtime, vectors=target), file)
        assert (report.imported, report.skipped_erased) == (598, 2)
        assert target.user_points(erased) == []
        for pid, vector, _ in points[2:60]:
            got, source = target.get(pid), stores["edge"].get(pid)
            assert got is not None and np.array_equal(got[0], vector) and got[1] == source[1]
        again = import_vectors(dataclasses.replace(runtime, vectors=target), file)
        assert again.imported == 598 and target.count() == 598  # twice is harmless
    finally:
        runtime.users.redis.delete(f"aurum:erased:{runtime.users.erasure_key(erased)}")
        target.close()


def test_a_damaged_export_writes_nothing(runtime, both, tmp_path):
    from aurum_ml.errors import BadInput

    _, stores = both
    whole = tmp_path / "whole.jsonl"
    export_vectors(dataclasses.replace(runtime, vectors=stores["edge"]), whole)
    lines = whole.read_text().splitlines()
    target = _store(runtime.settings, tmp_path / "to", "edge")
    cases = {
        "cut.jsonl": lines[:300],  # no end line
        "short.jsonl": [*lines[:300], lines[-1]],  # the end line's count is not met
        "bent.jsonl": [
            *lines[:5],
            json.dumps({"id": str(uuid.uuid4()), "vector": [1.0], "payload": {}}),
            *lines[5:],
        ],  # fmt: skip
        "alien.jsonl": ['{"format": "something else"}', *lines[1:]],
    }
    try:
        for name, content in cases.items():
            (tmp_path / name).write_text("\n".join(content) + "\n")
            with pytest.raises(BadInput):
                import_vectors(dataclasses.replace(runtime, vectors=target), tmp_path / name)
            assert target.count() == 0, name
        (tmp_path / "gz.jsonl.gz").write_bytes(gzip.compress(b"not json\n"))
        with pytest.raises(BadInput):
            import_vectors(dataclasses.replace(runtime, vectors=target), tmp_path / "gz.jsonl.gz")
    finally:
        target.close()


def _on_disk(folder: Path, needles: list[bytes]) -> list[str]:
    found = []
    for file in folder.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            found += [f"{file.relative_to(folder)}" for n in needles if n in data]
    return found


def test_an_erased_face_leaves_the_disk(settings, tmp_path):
    """Edge keeps no write-ahead log and rewrites a segment that held a deleted point:
    neither the vector's bytes nor the user id stay in the folder, whether the face was
    in an indexed segment or in the appendable one."""
    store = _store(settings, tmp_path, "edge", qdrant_indexing_threshold_kb=64)
    rng = np.random.default_rng(41)
    try:
        store.upsert_many(_population(1000, seed=31))
        secrets = {}
        for user in ("erase-me-indexed", "erase-me-fresh"):
            vector = rng.normal(size=128).astype(np.float32)
            pid = point_id(user, "e" * 64, 0, MODEL_ID)
            store.upsert(pid, vector, {"user_id": user, "stored_at": 1.0})
            secrets[pid] = (user.encode(), vector.tobytes()[:32])
            if user == "erase-me-indexed":
                store.upsert_many(_population(400, seed=32, name="more"))
                assert store.optimize() is True
        needles = [n for pair in secrets.values() for n in pair]
        assert len(_on_disk(tmp_path, needles)) >= 4  # the test can see them
        store.delete(list(secrets))
        assert store.count() == 1400 and _on_disk(tmp_path, needles) == []
    finally:
        store.close()


def test_an_edge_folder_from_before_the_int8_copies_gets_them_at_its_next_optimize(
    settings, tmp_path
):
    """A shard made without quantization (the release before) opens, answers, and is
    rebuilt with the int8 copies by the next optimize (the re-rank's), losing nothing."""
    import qdrant_edge as edge

    shard = tmp_path / "edge" / COLLECTION
    shard.mkdir(parents=True)
    old = edge.EdgeShard.create(
        str(shard),
        edge.EdgeConfig(
            vectors=edge.EdgeVectorParams(size=128, distance=edge.Distance.Euclid),
            hnsw_config=edge.HnswIndexConfig(m=32, ef_construct=100, full_scan_threshold=10),
            optimizers=edge.EdgeOptimizersConfig(indexing_threshold=64),
            wal_enabled=False,
        ),
    )
    old.update(edge.UpdateOperation.create_field_index("user_id", edge.PayloadSchemaType.Keyword))
    points = _population(600, seed=41)
    old.update(
        edge.UpdateOperation.upsert_points([edge.Point(i, v.tolist(), p) for i, v, p in points])
    )
    old.flush()
    old.optimize()
    old.close()
    assert not list(shard.rglob("quantized.data"))
    store = _store(settings, tmp_path, "edge", qdrant_indexing_threshold_kb=64)
    try:
        probe = points[7][1]
        assert store.nearest_others(probe, "someone", 1)[0][0] == points[7][0]
        assert store.optimize() is True
        assert list(shard.rglob("quantized.data"))
        assert store.count() == 600 and store.status()["indexed"] == 600
        assert store.nearest_others(probe, "someone", 1)[0][0] == points[7][0]
    finally:
        store.close()
