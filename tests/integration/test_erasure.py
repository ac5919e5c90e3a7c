"""Erasure is final: no path stores for a user after `forget`, other users' results stop
naming them, logs never name anyone, failed jobs let go of what they held, and the Redis
append-only file can be rewritten after erasures. Real Redis, a real worker thread whose
Celery logs are captured at INFO, real models and photos."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import states

from aurum_ml.errors import StoreUnavailable, UserErased
from aurum_ml.pipeline import tasks
from aurum_ml.pipeline.runtime import build_runtime, set_runtime

from samples import b64

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos  # noqa: E402

TIMEOUT = 60


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def logs() -> Iterator[_Lines]:
    """Every log line at INFO and above while this module's worker runs, formatted."""
    handler = _Lines()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root, celery_logger = logging.getLogger(), logging.getLogger("celery")
    previous = celery_logger.level
    celery_logger.setLevel(logging.INFO)  # before the worker builds its tracers
    logging.getLogger("aurum_ml").setLevel(logging.INFO)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    celery_logger.setLevel(previous)


@pytest.fixture(scope="module")
def worker(logs, runtime, model) -> Iterator[object]:
    from aurum_ml.pipeline.celery_app import app, config
    from aurum_ml.surfaces.embedded import run_worker

    with run_worker(app, config.QUEUES, hostname="test-erasure@localhost") as running:
        yield running


@pytest.fixture()
def swap_runtime(runtime) -> Iterator:
    """Install a runtime built from changed settings for the worker; restored after."""

    def install(**updates):
        built = build_runtime(runtime.settings.model_copy(update=updates), local=runtime.local)
        set_runtime(built)
        return built

    yield install
    set_runtime(runtime)


def _submit(photos: Path, name: str, user_id: str, **options):
    return tasks.score_face.delay(b64((photos / name).read_bytes()), user_id=user_id, **options)


def _score(photos: Path, name: str, user_id: str) -> dict:
    return _submit(photos, name, user_id).get(timeout=TIMEOUT)


def _redis_hits(client: redis.Redis, needle: str) -> list[str]:
    """Keys whose name or value holds ``needle`` (every type, whole db)."""
    return chaos.redis_mentions(client, needle)


def _qdrant_hits(runtime, needle: str) -> list[str]:
    return [
        pid
        for pid, _, payload in runtime.vectors.points(with_payload=True)
        if needle in json.dumps(payload)
    ]


def _forget(user_id: str) -> dict:
    return tasks.forget_user.delay(user_id).get(timeout=TIMEOUT)


# --- 1. nothing stores for an erased user ------------------------------------------------------


def test_the_fallback_rescore_never_stores_an_erased_user(
    worker, photos, runtime, redis_client, swap_runtime
):
    swap_runtime(use_real_ml=False, fallback_backend="simulated")  # every stage: simulated
    degraded = _score(photos, "obama3.jpg", "u-erase-degraded")
    assert degraded["degraded"] is True
    job_id = degraded["job_id"]
    assert job_id in runtime.degraded.pending()

    report = _forget("u-erase-degraded")

    assert report["degraded_jobs"] == 1
    assert job_id not in runtime.degraded.pending()
    assert redis_client.keys(f"aurum:degraded:job:{job_id}") == []
    assert redis_client.keys("aurum:img*") == [] and redis_client.keys("aurum:vec:*") == []
    assert redis_client.keys("aurum:chip:*") == []
    rescored = tasks.rescore_degraded.delay().get(timeout=TIMEOUT)  # what recovery sends
    assert rescored["rescored"] == 0  # counts only: the report names no job (#25)
    assert runtime.vectors.user_points("u-erase-degraded") == []
    assert _redis_hits(redis_client, "u-erase-degraded") == []
    assert tasks.score_face.AsyncResult(job_id).state == states.PENDING  # result forgotten


def test_a_degraded_record_left_behind_is_dropped_not_rescored(
    worker, photos, runtime, redis_client, swap_runtime
):
    """Even a record the erasure could not see (erased by an older version, say) is never
    re-scored: the record carries the epoch of its admission."""
    swap_runtime(use_real_ml=False, fallback_backend="simulated")
    job_id = _score(photos, "obama2.jpg", "u-erase-late")["job_id"]
    record = redis_client.get(f"aurum:degraded:job:{job_id}")
    _forget("u-erase-late")
    redis_client.set(f"aurum:degraded:job:{job_id}", record)  # as if forget had missed it
    redis_client.zadd("aurum:degraded", {job_id: time.time()})

    report = tasks.rescore_degraded.delay().get(timeout=TIMEOUT)

    assert report["erased"] == 1 and report["rescored"] == 0
    assert job_id not in json.dumps(report)
    assert runtime.vectors.user_points("u-erase-late") == []
    assert runtime.users.latest_result("u-erase-late") is None


def test_a_stage_run_again_after_the_erasure_stores_nothing(worker, photos, runtime):
    """A redelivered store (or one still in flight) for a job admitted before the erasure."""
    from aurum_ml.schemas import Job

    user = "u-erase-inflight"
    sha = "f" * 64
    data = (photos / "obama.jpg").read_bytes()
    epoch, erased = runtime.users.job_epoch(user, "job-inflight")
    assert (epoch, erased) == (0, False)
    runtime.state.put_image(sha, data, "job-inflight")
    job = Job(job_id="job-inflight", status="pending", user_id=user, image_sha256=sha,
              submitted_at=time.time(), epoch=epoch)  # fmt: skip
    job = runtime.score(runtime.embed(runtime.detect(job, runtime.local), runtime.local))
    stored = runtime.store(job)
    assert stored.status == "scored" and runtime.vectors.user_points(user)

    _forget(user)
    with pytest.raises(UserErased):
        runtime.store(job)  # the same message delivered again
    assert runtime.vectors.user_points(user) == []
    assert runtime.index.standing(stored.point_id) is None
    assert runtime.users.latest_result(user) is None


def test_a_redelivered_intake_after_the_erasure_stores_nothing(worker, photos, runtime):
    user = "u-erase-redelivered"
    image = b64((photos / "biden.jpg").read_bytes())
    first = tasks.score_face.apply_async((image,), {"user_id": user}, task_id="job-redelivered")
    assert first.get(timeout=TIMEOUT)["status"] == "scored"
    _forget(user)

    again = tasks.score_face.apply_async((image,), {"user_id": user}, task_id="job-redelivered")
    with pytest.raises(UserErased):
        again.get(timeout=TIMEOUT)
    assert runtime.vectors.user_points(user) == []
    assert runtime.users.latest_result(user) is None


def test_a_new_job_after_the_erasure_is_scored(worker, photos, runtime):
    """The erasure stops what was admitted before it, not a user who comes back."""
    _forget("u-comes-back")
    assert _score(photos, "obama.jpg", "u-comes-back")["status"] == "scored"
    assert len(runtime.vectors.user_points("u-comes-back")) == 1
    _forget("u-comes-back")


# --- 2. other users' results stop naming the erased user ---------------------------------------


def test_other_users_results_stop_naming_the_erased_user(worker, photos, runtime, redis_client):
    _score(photos, "obama.jpg", "u-erase-matched")
    job = _submit(photos, "obama2.jpg", "u-erase-matcher")
    result = job.get(timeout=TIMEOUT)
    assert "u-erase-matched" in {m["user_id"] for m in result["matches"]}
    assert "u-erase-matched" in json.dumps(runtime.users.latest_result("u-erase-matcher"))

    report = _forget("u-erase-matched")

    assert report["other_results_scrubbed"] >= 1
    after = tasks.score_face.AsyncResult(job.id).get(timeout=TIMEOUT)
    assert after["status"] == "scored" and after["score"] == result["score"]
    assert "u-erase-matched" not in json.dumps(after)
    assert "u-erase-matched" not in json.dumps(runtime.users.latest_result("u-erase-matcher"))
    assert _redis_hits(redis_client, "u-erase-matched") == []
    # the owner's own erasure leaves nothing of theirs in the match indexes either
    _forget("u-erase-matcher")
    assert _redis_hits(redis_client, "u-erase-matcher") == []


# --- 5. a failed job lets go of its reservation and its image ----------------------------------


def test_a_failed_job_releases_the_cooldown_and_its_image(
    worker, photos, runtime, redis_client, swap_runtime
):
    swap_runtime(cooldown_days=30, qdrant_url="http://127.0.0.1:9")  # the store fails for good
    job = _submit(photos, "obama.jpg", "u-fails")
    with pytest.raises(StoreUnavailable):
        job.get(timeout=TIMEOUT)
    # released by the task's failure handler, which runs just after the failure is stored
    deadline = time.monotonic() + 10
    while (
        redis_client.get("aurum:user:u-fails:cooldown") is not None
        or redis_client.keys("aurum:img*")
        or redis_client.keys("aurum:vec:*")
        or redis_client.keys("aurum:chip:*")
    ):
        assert time.monotonic() < deadline, "the reservation, image or vector was kept"
        time.sleep(0.05)

    swap_runtime(cooldown_days=30)  # Qdrant is back: the user is not told "cooldown"
    assert _score(photos, "obama2.jpg", "u-fails")["status"] == "scored"
    _forget("u-fails")


# --- the whole story, then a scan for the erased ids ------------------------------------------


def test_privacy_scan_after_scores_matches_degraded_jobs_forget_and_rescore(
    worker, photos, runtime, redis_client, swap_runtime, logs
):
    erased = ["u-priv-alice", "u-priv-dan"]
    _score(photos, "obama.jpg", "u-priv-alice")
    _score(photos, "biden.jpg", "u-priv-dan")
    matcher = _score(photos, "obama2.jpg", "u-priv-bob")  # matches alice
    assert "u-priv-alice" in {m["user_id"] for m in matcher["matches"]}
    swap_runtime(use_real_ml=False, fallback_backend="simulated")
    assert _score(photos, "obama3.jpg", "u-priv-alice")["degraded"] is True
    dan_degraded = _score(photos, "obama_partial_face.jpg", "u-priv-dan")
    assert dan_degraded["degraded"] is True
    swap_runtime()  # the services are "back"

    _forget("u-priv-alice")  # before the re-score
    rescored = tasks.rescore_degraded.delay().get(timeout=TIMEOUT)
    assert rescored["rescored"] >= 1 and dan_degraded["job_id"] not in json.dumps(rescored)
    assert tasks.score_face.AsyncResult(dan_degraded["job_id"]).get()["degraded"] is False
    _forget("u-priv-dan")  # after it

    for user in erased:
        assert _redis_hits(redis_client, user) == [], user
        assert _qdrant_hits(runtime, user) == [], user
        assert not [line for line in logs.lines if user in line], user
    # and the logs name nobody at all, nor print results
    assert not [line for line in logs.lines if "u-priv-bob" in line]
    assert not [line for line in logs.lines if "'matches'" in line or "'score'" in line]
    assert any("succeeded in" in line for line in logs.lines)  # INFO lines were captured
    _forget("u-priv-bob")


def test_a_pickle_message_is_refused_without_its_body_in_the_log(worker, logs):
    import pickle

    from aurum_ml.pipeline.celery_app import app

    secret = "u-priv-pickled-secret"
    with app.producer_or_acquire() as producer:
        producer.publish(
            pickle.dumps(((secret,), {}, {})),
            routing_key="maintenance",
            exchange="aurum",
            serializer=None,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"task": "aurum_ml.stats", "id": "pickled-1", "argsrepr": secret},
        )
    deadline = time.monotonic() + 20
    while not any("pickled" in line or "decode" in line for line in logs.lines):
        assert time.monotonic() < deadline, "the worker never reported the refused message"
        time.sleep(0.1)
    assert not [line for line in logs.lines if secret in line]


# --- 4. the append-only file after an erasure -------------------------------------------------


@pytest.fixture()
def aof_redis(tmp_path) -> Iterator[str]:
    """A Redis of our own with AOF on, in a temporary folder, on a free loopback port."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = chaos.free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
         "--appendonly", "yes", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(10)


def _aof_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*.aof") if p.is_file())


def test_compact_rewrites_the_aof_so_erased_data_leaves_disk(aof_redis, tmp_path, runtime):
    from aurum_ml.pipeline.state import PipelineState
    from aurum_ml.population.persistence import compact
    from aurum_ml.population.users import UserRecords

    client = redis.Redis.from_url(aof_redis)
    users = UserRecords(client, cooldown_s=3600, pending_ttl_s=3600, keep_s=3600)
    state = PipelineState(client, 3600)
    users.admit("u-aof-erased", "a" * 64, "job-aof")
    state.put_image("a" * 64, b"\xff\xd8 pretend-face-bytes", "job-aof")
    client.execute_command("CONFIG", "SET", "appendfsync", "always")
    assert b"u-aof-erased" in _aof_bytes(tmp_path)

    users.mark_erased("u-aof-erased")
    users.forget("u-aof-erased")
    state.drop(["a" * 64], ["job-aof"])
    assert b"u-aof-erased" in _aof_bytes(tmp_path)  # deleted, but still on disk

    settings = runtime.settings.model_copy(
        update={"broker_url": aof_redis, "result_backend": aof_redis, "redis_url": aof_redis}
    )
    report = compact(settings, min_interval_s=60)
    (server,) = report["servers"]
    assert report["servers"][server]["status"] == "rewriting"
    deadline = time.monotonic() + 20
    while int(client.info("persistence")["aof_rewrite_in_progress"]) or (
        b"u-aof-erased" in _aof_bytes(tmp_path)
    ):
        assert time.monotonic() < deadline, "the AOF still holds the erased user"
        time.sleep(0.1)
    assert b"pretend-face-bytes" not in _aof_bytes(tmp_path)
    # rate-limited: a second request within the interval does not rewrite again
    assert compact(settings, min_interval_s=60)["servers"][server]["status"] == "too_soon"
    # a Redis without AOF says so
    plain = runtime.settings.model_copy(update={"redis_url": os.environ["AURUM_REDIS_URL"]})
    assert set(s["status"] for s in compact(plain, 60)["servers"].values()) == {"aof_off"}


def test_the_second_pass_scrubs_a_result_written_after_the_first(worker, photos, runtime):
    """A store that searched before the erasure may write its result just after it."""
    from aurum_ml.pipeline.tasks import app as celery_app

    _score(photos, "obama.jpg", "u-late-matched")
    job = _submit(photos, "obama2.jpg", "u-late-matcher")
    late = job.get(timeout=TIMEOUT)
    assert "u-late-matched" in json.dumps(late)
    report = tasks.forget_user.delay("u-late-matched").get(timeout=TIMEOUT)
    assert "erasure_key" not in report and "job_ids" not in report  # nothing to identify
    # the late write: the result and its match index entry as the store would leave them
    celery_app.backend.forget(job.id)
    celery_app.backend.store_result(job.id, late, states.SUCCESS)
    # the store's first write lands only now (a run again would keep the scrubbed result)
    runtime.users.redis.delete(runtime.users._key("u-late-matcher", "result"))
    assert runtime.users.scored("u-late-matcher", "b" * 64, job.id, late) == late
    assert "u-late-matched" in json.dumps(tasks.score_face.AsyncResult(job.id).get())

    erased = runtime.users.erasure_key("u-late-matched")
    swept = tasks.sweep_erased.delay(erased, []).get(timeout=TIMEOUT)

    assert swept["other_results_scrubbed"] == 1
    assert "u-late-matched" not in json.dumps(tasks.score_face.AsyncResult(job.id).get())
    assert "u-late-matched" not in json.dumps(runtime.users.latest_result("u-late-matcher"))
    _forget("u-late-matcher")
