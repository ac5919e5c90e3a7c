"""The score completed: re-rank, quality gate, vibes, matches, queries, cooldown, erasure —
through a real worker on real Redis, with real models and photos and a local Qdrant."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from aurum_ml.pipeline import tasks
from aurum_ml.pipeline.runtime import build_runtime, set_runtime
from aurum_ml.pipeline.tasks import score_face
from aurum_ml.population.index import midrank_percentiles, score_of, unit
from aurum_ml.population.queries import stored_result

from samples import b64, encode, no_face, read_rgb

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos  # noqa: E402

TIMEOUT = 120


def _score(data: bytes, user_id: str, **options) -> dict:
    return score_face.delay(b64(data), user_id=user_id, **options).get(timeout=TIMEOUT)


def _photo(photos, name: str) -> bytes:
    return (photos / name).read_bytes()


NEAR_TIE = 1e-12  # typicalities closer than this may rank either way (float summation order)


def _brute_force_with_ties(runtime) -> dict[str, tuple[float, int]]:
    """Each face's score from scratch, and how many other faces are within NEAR_TIE of its
    typicality (the re-rank sums the centroid in batches: such faces may swap places)."""
    ids, units = [], []
    for pid, vector, _ in runtime.vectors.points():
        ids.append(pid)
        units.append(unit(vector))
    matrix = np.vstack(units)
    typicalities = matrix @ unit(matrix.sum(axis=0))
    scores = [score_of(p) for p in midrank_percentiles(typicalities)]
    order = np.sort(typicalities)
    near = np.searchsorted(order, typicalities + NEAR_TIE, "right") - np.searchsorted(
        order, typicalities - NEAR_TIE, "left"
    )
    return {pid: (s, int(n) - 1) for pid, s, n in zip(ids, scores, near, strict=True)}


def test_rerank_of_2000_generated_faces_matches_brute_force(pipeline_worker, runtime):
    rng = np.random.default_rng(11)
    shared = rng.normal(size=128) * 0.1
    vectors = (shared + rng.normal(scale=0.05, size=(2000, 128))).astype(np.float32)
    for i, vector in enumerate(vectors):  # stored as the pipeline would: drifting centroid
        pid = f"00000000-0000-4000-8000-{i:012d}"
        place = runtime.index.enter(pid, vector)
        payload = {"user_id": f"gen-{i}", "stored_at": time.time(), "image_sha256": "g",
                   "job_id": f"gen-{i}"}  # fmt: skip
        runtime.vectors.upsert(pid, vector, payload)
        runtime.index.add(pid, vector, place.typicality)

    report = tasks.rerank.delay().get(timeout=TIMEOUT)

    with_ties = _brute_force_with_ties(runtime)
    expected = {pid: score for pid, (score, _) in with_ties.items()}
    assert report["faces"] == len(expected) >= 2000
    assert runtime.index.members() == set(expected)
    payloads = runtime.vectors.payloads(list(expected))
    for pid, (score, near) in with_ties.items():
        standing = runtime.index.standing(pid)
        slack = 100 * near / len(expected) + 0.1 if near else 0  # near-ties may swap
        assert abs(score_of(standing.percentile) - score) <= slack + 1e-9, pid
        assert abs(stored_result(runtime, pid, payloads[pid], [])["score"] - score) <= slack + 1e-9
        assert 1 <= len(payloads[pid]["vibes"]) <= 3
    distribution = runtime.index.distribution()
    assert distribution.count == len(expected)
    assert distribution.p50 == pytest.approx(np.percentile(list(expected.values()), 50), abs=0.01)
    # the population is past VIBE_REFERENCE_MIN_FACES: the vibe reference is now frozen
    assert runtime.index.vibe_reference().frozen


def test_the_beat_schedules_the_rerank_on_the_queue_of_the_vectors_owner(settings):
    from aurum_ml.pipeline.celery_app import app

    entry = app.conf.beat_schedule["rerank"]
    assert entry["task"] == "aurum_ml.rerank" and entry["schedule"] == settings.rerank_interval_s
    from aurum_ml.pipeline.celery_app import config

    # the tests run on a local Qdrant folder: the tasks that read vectors go to its owner
    assert config.LOCAL_FOLDER and config.VECTOR_QUEUE == "store"
    for name in config.VECTOR_TASKS:
        assert app.amqp.router.route({}, name)["queue"].name == "store"
    for name in ("aurum_ml.stats", "aurum_ml.compact_persistence", "aurum_ml.probe_health"):
        assert app.amqp.router.route({}, name)["queue"].name == "maintenance"


def test_result_carries_confidence_distribution_vibes(pipeline_worker, photos):
    out = _score(_photo(photos, "obama.jpg"), "u-fields")
    assert out["status"] == "scored"
    assert 0 < out["confidence"] <= 1 and out["confidence"] == round(out["confidence"], 2)
    assert out["quality"]["issues"] == []
    assert 1 <= len(out["vibes"]) <= 3
    assert out["distribution"] is None or {"mean", "p50", "p99"} <= set(out["distribution"])


def test_vibes_are_the_same_for_the_same_photo(pipeline_worker, photos, runtime):
    assert runtime.index.vibe_reference().frozen  # after the 2000-face re-rank above
    a = _score(_photo(photos, "obama2.jpg"), "u-vibe-a")
    b = _score(_photo(photos, "obama2.jpg"), "u-vibe-b")
    assert a["vibes"] == b["vibes"] and a["vibes"]


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (lambda img: cv2.GaussianBlur(img, (0, 0), 8), "LOW_SHARPNESS"),
        (lambda img: (img * 0.15).astype(np.uint8), "LOW_BRIGHTNESS"),
    ],
    ids=["blur-8", "dark-0.15"],
)
def test_low_quality_copies_are_rejected_with_codes(edit, code, pipeline_worker, photos, runtime):
    count = runtime.vectors.count()
    out = _score(encode(edit(read_rgb(photos / "obama.jpg"))), "u-quality")
    assert out["status"] == "rejected"
    assert out["reason"] in ("low_quality", "no_face")
    if out["reason"] == "low_quality":
        assert code in out["quality"]["issues"]
        assert out["message"].startswith("the photo did not pass the quality check")
    assert out["point_id"] is None and runtime.vectors.count() == count


def test_the_gate_can_be_turned_off_and_still_reports(pipeline_worker, photos, runtime):
    relaxed = build_runtime(
        runtime.settings.model_copy(update={"quality_gate": False}), local=runtime.local
    )
    previous = set_runtime(relaxed)
    try:
        dark = encode((read_rgb(photos / "obama.jpg") * 0.15).astype(np.uint8))
        out = _score(dark, "u-gate-off")
    finally:
        set_runtime(previous)
    assert out["status"] == "scored"
    assert "LOW_BRIGHTNESS" in out["quality"]["issues"]


def test_an_80_px_face_is_scored(pipeline_worker, photos):
    image = read_rgb(photos / "obama.jpg")
    scale = 80 / 258
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    out = _score(encode(small), "u-small-face")
    assert out["status"] == "scored", out["message"]


def test_same_person_matches_name_other_users_only(pipeline_worker, photos, runtime):
    # every match listed: the suite's earlier tests stored the same photos for other users,
    # and the closest MATCH_LIMIT of them could leave u-match-1 out
    wide = build_runtime(
        runtime.settings.model_copy(update={"match_limit": 100}), local=runtime.local
    )
    previous = set_runtime(wide)
    try:
        first = _score(_photo(photos, "obama2.jpg"), "u-match-1")
        own = _score(_photo(photos, "obama.jpg"), "u-match-1")
        other = _score(_photo(photos, "obama3.jpg"), "u-match-2")
        biden = _score(_photo(photos, "biden.jpg"), "u-match-3")
    finally:
        set_runtime(previous)
    assert "u-match-1" not in {m["user_id"] for m in own["matches"]}
    mine = {m["user_id"]: m for m in other["matches"]}
    assert "u-match-1" in mine and mine["u-match-1"]["distance"] < 0.5
    assert mine["u-match-1"]["point_id"] in (first["point_id"], own["point_id"])
    distances = [m["distance"] for m in other["matches"]]
    assert distances == sorted(distances) and all(d < 0.6 for d in distances)
    assert len(other["matches"]) <= 100
    assert not {"u-match-1", "u-match-2"} & {m["user_id"] for m in biden["matches"]}


def test_queries_as_tasks(pipeline_worker, photos, runtime):
    _score(_photo(photos, "obama.jpg"), "u-query-a")
    _score(_photo(photos, "obama3.jpg"), "u-query-b")
    _score(_photo(photos, "biden.jpg"), "u-query-c")

    latest = tasks.get_score.delay("u-query-a").get(timeout=TIMEOUT)
    assert latest["status"] == "scored" and latest["user_id"] == "u-query-a"
    standing = runtime.index.standing(latest["point_id"])
    assert latest["rank"] == standing.rank and latest["total_faces"] == runtime.index.count()
    assert tasks.get_score.delay("u-nobody").get(timeout=TIMEOUT) is None

    near = tasks.similar.delay("u-query-a", 3).get(timeout=TIMEOUT)
    assert len(near) == 3 and "u-query-a" not in {n["user_id"] for n in near}
    assert [n["distance"] for n in near] == sorted(n["distance"] for n in near)
    assert all(n["same_person"] for n in near)  # other accounts with Obama's face come first

    board = tasks.leaderboard.delay(25).get(timeout=TIMEOUT)
    assert [b["position"] for b in board] == list(range(1, 26))
    assert len({b["user_id"] for b in board}) == 25
    keys = [(-runtime.index.standing(b["point_id"]).typicality, b["scored_at"]) for b in board]
    assert [k[0] for k in keys] == sorted(k[0] for k in keys)

    summary = tasks.stats.delay().get(timeout=TIMEOUT)
    entry = summary["models"]["dlib-resnet-v1"]
    assert entry["count"] == runtime.index.count()
    assert set(entry["thresholds"]) == {"top_1pct", "top_5pct", "top_10pct"}


def test_cooldown_one_new_photo_per_period(pipeline_worker, photos, runtime):
    strict = build_runtime(
        runtime.settings.model_copy(update={"cooldown_days": 30}), local=runtime.local
    )
    previous = set_runtime(strict)
    try:
        refused = _score(no_face(photos), "u-cool")  # a rejected photo uses no cooldown
        first = _score(_photo(photos, "obama.jpg"), "u-cool")
        second = _score(_photo(photos, "obama2.jpg"), "u-cool")
        again = _score(_photo(photos, "obama.jpg"), "u-cool")
    finally:
        set_runtime(previous)
    assert refused["reason"] == "no_face"
    assert first["status"] == "scored"
    assert (second["status"], second["reason"]) == ("rejected", "cooldown")
    allowed = time.mktime(time.strptime(second["next_allowed_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert 29.9 * 86400 < allowed - time.mktime(time.gmtime()) < 30.1 * 86400
    assert again == first  # the same photo: its stored result, not a cooldown


def _redis_mentions(redis_client, text: str) -> list[str]:
    return chaos.redis_mentions(redis_client, text)


def test_forget_user_leaves_nothing_and_keeps_others_consistent(
    pipeline_worker, photos, runtime, redis_client
):
    user = "u-forget-me"
    _score(_photo(photos, "obama.jpg"), user)
    _score(_photo(photos, "biden.jpg"), user)
    _score(no_face(photos), user)
    assert len(runtime.vectors.user_points(user)) == 2
    assert _redis_mentions(redis_client, user)

    report = tasks.forget_user.delay(user).get(timeout=TIMEOUT)

    assert report["points"] == 2 and report["index_entries"] == 2 and report["results"] == 3
    assert runtime.vectors.user_points(user) == []
    assert _redis_mentions(redis_client, user) == []
    # the others: the index holds exactly Qdrant's faces, and its sums are theirs
    ids, units = [], []
    for pid, vector, _ in runtime.vectors.points():
        ids.append(pid)
        units.append(unit(vector))
    assert runtime.index.members() == set(ids)
    total, n = runtime.index._read_sum()
    assert n == len(ids) and np.allclose(total, np.sum(units, axis=0), atol=1e-6)
    # and a re-rank after it agrees with brute force
    tasks.rerank.delay().get(timeout=TIMEOUT)
    expected = _brute_force_with_ties(runtime)
    for pid in list(expected)[:200]:
        score, near = expected[pid]
        slack = 100 * near / len(expected) + 0.1 if near else 0  # near-ties may swap
        assert abs(score_of(runtime.index.standing(pid).percentile) - score) <= slack + 1e-9
    # forgetting twice is harmless
    assert tasks.forget_user.delay(user).get(timeout=TIMEOUT)["points"] == 0


def test_leaderboard_ties_go_to_the_earlier_face(runtime):
    from aurum_ml.population.queries import leaderboard

    vector = np.full(128, 0.05, dtype=np.float32)
    later, earlier = "00000000-0000-4000-9000-000000000001", "00000000-0000-4000-9000-000000000002"
    runtime.vectors.upsert(later, vector, {"user_id": "u-tie-later", "stored_at": 2000.0})
    runtime.vectors.upsert(earlier, vector, {"user_id": "u-tie-earlier", "stored_at": 1000.0})
    for pid in (later, earlier):  # tied at the very top (above any real typicality)
        runtime.index.add(pid, vector, 1.5)
    try:
        top = leaderboard(runtime, 2)
        assert [t["user_id"] for t in top] == ["u-tie-earlier", "u-tie-later"]
        assert top[0]["rank"] == top[1]["rank"] == 1
    finally:
        runtime.index.remove([(later, vector), (earlier, vector)])
        runtime.vectors.delete([later, earlier])


def test_a_lost_index_is_rebuilt_by_the_rerank(pipeline_worker, runtime):
    """Redis lost the score index (flushed): the streamed re-rank rebuilds its members and
    its running sum from Qdrant."""
    tasks.rerank.delay().get(timeout=TIMEOUT)
    members = runtime.index.members()
    total_before, n_before = runtime.index._read_sum()
    runtime.index.redis.delete(runtime.index._sum_key, runtime.index._rank_key)
    report = tasks.rerank.delay().get(timeout=TIMEOUT)
    assert runtime.index.members() == members and report["faces"] == len(members)
    total, n = runtime.index._read_sum()
    assert n == n_before and np.allclose(total, total_before, atol=1e-6)


def test_the_centroid_counts_exactly_the_faces_in_the_index_after_a_busy_rerank(runtime):
    """#25: faces stored while the re-rank ran dropped out of its running sum (the centroid
    was read in one pass, the typicalities in another): `n` ended short. Faces are stored
    from another thread for the whole re-rank; afterwards the index's sum and count must be
    those of its members' vectors, exactly."""
    import threading

    from aurum_ml.population.rerank import rerank

    rng = np.random.default_rng(25)
    shared = rng.normal(size=128) * 0.1

    def store(i: int) -> None:
        pid = f"00000000-0000-4000-9000-{i:012d}"
        vector = (shared + rng.normal(scale=0.05, size=128)).astype(np.float32)
        place = runtime.index.enter(pid, vector)
        runtime.vectors.upsert(
            pid,
            vector,
            {
                "user_id": f"busy-{i}",
                "stored_at": time.time(),
                "image_sha256": "b",
                "job_id": f"busy-{i}",
            },
        )
        runtime.index.add(pid, vector, place.typicality)

    for i in range(1500):
        store(i)
    stop, stored = threading.Event(), [1500]

    def keep_storing() -> None:
        while not stop.is_set():
            store(stored[0])
            stored[0] += 1

    writer = threading.Thread(target=keep_storing)
    writer.start()
    try:
        for _ in range(3):
            rerank(runtime, update_payloads=False)
    finally:
        stop.set()
        writer.join()
    assert stored[0] > 1510  # faces were stored during the re-ranks
    members = runtime.index.members()
    vectors = runtime.vectors.vectors_of(sorted(members))
    total, n = runtime.index._read_sum()
    assert n == len(members) == len(vectors)
    expected = sum((unit(v) for v in vectors.values()), np.zeros(128))
    assert np.allclose(total, expected, atol=1e-9)
    runtime.index.remove(
        [(pid, vectors[pid]) for pid in members if pid.startswith("00000000-0000-4000-9000")]
    )
    runtime.vectors.delete([pid for pid in members if pid.startswith("00000000-0000-4000-9000")])


def test_one_rerank_at_a_time_and_a_dead_one_is_reaped_by_the_sweep(pipeline_worker, runtime):
    """#25: a re-rank killed mid-run left its staging set for up to an hour and nothing
    counted it. A run holds a record with a lease: a second run meanwhile does nothing;
    a record whose lease lapsed is reaped by beat's lost-job sweep — staging set cleared,
    ``aurum_rerank_lost_total`` counted, the re-rank sent again and done."""
    from aurum_ml.population.index import RERANK_LOST
    from aurum_ml.population.rerank import RerankBusy, rerank
    from aurum_ml.surfaces.metrics import PipelineCollector

    index, client = runtime.index, runtime.index.redis
    token, took_over = index.run_begin("store@elsewhere", 1, lease_s=60)
    assert token is not None and not took_over
    with pytest.raises(RerankBusy):
        rerank(runtime, update_payloads=False)
    assert tasks.rerank.delay().get(timeout=TIMEOUT)["skipped"]
    assert index.run_reap() is False  # a live lease is left alone
    assert index.run_reap("store@elsewhere", started_before=0.0) is False  # began after

    # the run dies mid-pass: its staging set stays behind, its lease lapses
    index.stage(["00000000-0000-4000-8000-00000000dead"], np.array([0.5]))
    client.hset(index._run_key, "lease_until", time.time() - 1)
    lost_before = int(client.get(RERANK_LOST) or 0)
    last_before = client.hget("aurum:rerank:last", "at")
    tasks.redrive_stalled.delay().get(timeout=TIMEOUT)
    assert int(client.get(RERANK_LOST)) == lost_before + 1
    assert not client.exists(index._staging_key)
    assert index.run_renew(token, 60, "batches") is False  # the dead run may not go on
    deadline = time.monotonic() + TIMEOUT  # and the re-rank was sent again
    while client.hget("aurum:rerank:last", "at") == last_before:
        assert time.monotonic() < deadline, "the re-rank was not sent again"
        time.sleep(0.1)
    assert index.run_under_way() is None
    lost = next(
        m for m in PipelineCollector(runtime, ()).collect() if m.name == "aurum_rerank_lost"
    )
    assert lost.samples[0].value == lost_before + 1

    # a run of this machine whose process is gone (a CLI re-rank killed) is taken over at
    # once, its lease notwithstanding
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    assert index.run_begin("cli", gone.pid, lease_s=600)[0] is not None
    assert rerank(runtime, update_payloads=False).faces == index.count()
    assert int(client.get(RERANK_LOST)) == lost_before + 2
