"""score_face end to end: real Redis broker and backend, a real worker thread consuming every
queue, real models, real photos, a real (local) Qdrant folder."""

from __future__ import annotations

import pytest
from celery import states

from aurum_ml.errors import InvalidRequest, StoreUnavailable
from aurum_ml.pipeline.tasks import score_face

from samples import b64, no_face, one_pixel_png, png_header_claiming, two_faces

TIMEOUT = 60


def _score(data: bytes | str, user_id: str, **options) -> dict:
    image = data if isinstance(data, str) else b64(data)
    return score_face.delay(image, user_id=user_id, **options).get(timeout=TIMEOUT)


def _leftovers(redis_client) -> list[bytes]:
    return (
        redis_client.keys("aurum:img*")
        + redis_client.keys("aurum:vec:*")
        + redis_client.keys("aurum:chip:*")
    )


def test_a_photo_is_scored_with_every_field(pipeline_worker, photos, runtime, redis_client):
    out = _score((photos / "obama.jpg").read_bytes(), "u-obama")
    assert out["status"] == "scored" and out["reason"] is None
    assert out["user_id"] == "u-obama" and out["job_id"]
    assert out["face"]["box"] == [366, 136, 624, 394]
    assert len(out["face"]["landmarks"]) == 5
    assert out["face"]["detection_score"] > 2
    quality = out["quality"]
    assert quality["face_width_px"] == 258 and quality["sharpness"] > 12
    assert 60 < quality["brightness"] < 200 and abs(quality["roll_deg"]) < 5
    assert 0 < out["percentile"] <= 1 and out["score"] == round(100 * out["percentile"], 1)
    assert 1 <= out["rank"] <= out["total_faces"]
    assert (out["model"], out["source"]) == ("dlib-resnet-v1", "local")
    assert set(out["timings_ms"]) == {"detect", "embed", "score", "store", "total"}
    assert out["timings_ms"]["total"] >= out["timings_ms"]["detect"] > 0
    stored = runtime.vectors.get(out["point_id"])
    assert stored is not None
    vector, payload = stored
    assert vector.shape == (128,)
    assert payload["user_id"] == "u-obama" and payload["score"] == out["score"]
    assert set(payload) >= {
        "user_id",
        "image_sha256",
        "score",
        "percentile",
        "quality",
        "model",
        "source",
        "created_at",
    }
    assert _leftovers(redis_client) == []  # image and vector deleted once stored


def test_resubmitting_a_photo_leaves_one_point(pipeline_worker, photos, runtime):
    data = (photos / "obama2.jpg").read_bytes()
    first = _score(data, "u-resubmit")
    count = runtime.vectors.count()
    second = _score(data, "u-resubmit")
    assert second["point_id"] == first["point_id"]
    assert second["job_id"] != first["job_id"]
    assert runtime.vectors.count() == count
    assert second["total_faces"] == first["total_faces"]


def test_the_same_photo_from_two_users_is_two_points(pipeline_worker, photos, runtime):
    data = (photos / "obama3.jpg").read_bytes()
    a, b = _score(data, "u-one"), _score(data, "u-two")
    assert a["point_id"] != b["point_id"]
    assert runtime.vectors.get(a["point_id"]) and runtime.vectors.get(b["point_id"])


def test_concurrent_jobs_on_one_photo_all_finish(pipeline_worker, photos, redis_client):
    data = b64((photos / "biden.jpg").read_bytes())
    results = [score_face.delay(data, user_id=f"u-c{i}") for i in range(4)]
    outs = [r.get(timeout=TIMEOUT) for r in results]
    assert [o["status"] for o in outs] == ["scored"] * 4
    assert _leftovers(redis_client) == []


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: no_face(p), "no_face"),
        (lambda p: b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10, "invalid_image"),
        (lambda p: "", "invalid_image"),
        (lambda p: "%%% not base64 %%%", "invalid_image"),
        (lambda p: one_pixel_png(), "invalid_image"),
        (lambda p: png_header_claiming(100_000, 100_000), "image_too_large"),
        (lambda p: two_faces(p), "multiple_faces"),
    ],
    ids=["no-face", "corrupt", "empty", "not-base64", "1x1", "100k-header", "two-faces"],
)
def test_bad_input_is_a_rejection_with_a_reason(
    make, reason, pipeline_worker, photos, redis_client
):
    out = _score(make(photos), "u-bad")
    assert out["status"] == "rejected"
    assert out["reason"] == reason
    assert out["message"] and out["score"] is None and out["point_id"] is None
    assert _leftovers(redis_client) == []


def test_a_bad_user_id_is_refused_before_it_is_sent(pipeline_worker, photos):
    with pytest.raises(InvalidRequest) as refused:
        score_face.delay(b64((photos / "obama.jpg").read_bytes()), user_id="")
    assert refused.value.reason == "invalid_request" and "user_id" in refused.value.message


def test_several_faces_score_the_largest_when_allowed(pipeline_worker, photos):
    out = _score(two_faces(photos), "u-two-faces", allow_multiple_faces=True)
    assert out["status"] == "scored"
    assert out["face"]["box"][0] > 400  # Biden, the larger face, on the right


def test_a_stage_failing_for_good_fails_the_job_with_a_typed_error(
    pipeline_worker, photos, runtime, redis_client
):
    from aurum_ml.pipeline.runtime import build_runtime, set_runtime

    dead_qdrant = runtime.settings.model_copy(update={"qdrant_url": "http://127.0.0.1:9"})
    previous = set_runtime(build_runtime(dead_qdrant, local=runtime.local))
    try:
        result = score_face.delay(b64((photos / "obama.jpg").read_bytes()), user_id="u-fail")
        with pytest.raises(StoreUnavailable, match="Qdrant unavailable"):
            result.get(timeout=TIMEOUT)
        assert result.state == states.FAILURE  # never left PENDING
    finally:
        set_runtime(previous)


def test_the_image_never_reaches_logs_or_events(pipeline_worker, photos):
    from celery.signals import before_task_publish

    seen: list[dict] = []

    def capture(headers=None, **_):
        seen.append(dict(headers or {}))

    before_task_publish.connect(capture)
    try:
        image = b64((photos / "obama.jpg").read_bytes())
        result = score_face.apply_async((image,), {"user_id": "u-redact"})
        assert result.get(timeout=TIMEOUT)["status"] == "scored"
    finally:
        before_task_publish.disconnect(capture)
    headers = next(h for h in seen if h["task"] == "aurum_ml.score_face")
    assert image[:200] not in headers["argsrepr"] and "<image>" in headers["argsrepr"]
    assert "u-redact" not in headers["kwargsrepr"] and "<user>" in headers["kwargsrepr"]
    stages = [h for h in seen if h["task"] != "aurum_ml.score_face"]
    assert "aurum_ml.store" in {h["task"] for h in stages}  # (detect..score ran in intake)
    for stage in stages:  # a job payload shows as its id and status only
        assert "u-redact" not in stage["argsrepr"] and "<job " in stage["argsrepr"]


def _chain(names: list[str]) -> list[str]:
    """The chain's tasks in the order they ran, a retry counted once (a task left over
    from an earlier test, on the maintenance queue, is not the chain's)."""
    chain = ("score_face", "detect", "embed", "score", "store")
    ran = [n.removeprefix("aurum_ml.") for n in names]
    ran = [n for n in ran if n in chain]
    return [n for i, n in enumerate(ran) if i == 0 or ran[i - 1] != n]


def test_stages_that_share_the_worker_run_in_the_intake_task(
    pipeline_worker, photos, runtime, tasks_run
):
    """This worker consumes every queue and runs the models in-process: intake runs detect,
    embed and score itself and sends only the store stage. With INLINE_LOCAL_STAGES=false
    the whole chain goes through the broker — to the same face, vector and quality."""
    from aurum_ml.pipeline.runtime import build_runtime, set_runtime

    data = (photos / "obama3.jpg").read_bytes()
    inline = _score(data, "u-inline")
    assert _chain(tasks_run) == ["score_face", "store"]
    tasks_run.clear()
    split = runtime.settings.model_copy(update={"inline_local_stages": False})
    previous = set_runtime(build_runtime(split, local=runtime.local))
    try:
        chained = _score(data, "u-chained")
    finally:
        set_runtime(previous)
    assert _chain(tasks_run) == ["score_face", "detect", "embed", "score", "store"]
    assert inline["status"] == chained["status"] == "scored"
    assert (inline["face"], inline["quality"]) == (chained["face"], chained["quality"])
    assert set(inline["timings_ms"]) == set(chained["timings_ms"])
    a, b = runtime.vectors.get(inline["point_id"])[0], runtime.vectors.get(chained["point_id"])[0]
    assert (a == b).all()
