"""A store worker killed during the re-rank's index build (#25).

With a local Qdrant folder the re-rank runs on the store worker, and Qdrant Edge's index
build holds the GIL for seconds. A message Redis handed the worker meanwhile (BRPOP
took it off the queue) was not yet recorded as unacked when the worker was killed: it was
in neither the queue nor the unacked set, so no visibility timeout brought it back, and
only the lost-job sweep did, after STALLED_AFTER (10 min). The killed run itself was lost
until beat's next hour, its staging set left behind, and nothing counted it.

A real `celery -A aurum_ml worker -Q store --pool threads` subprocess on a Redis database
and a Qdrant Edge folder of this test's own (its score index must not be the session's),
40 000 stored faces (a 4 s index build here): SIGKILL during the build, then a restart
under the same name."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import redis
from celery import Celery

from aurum_ml.pipeline.backends.local import MODEL_ID as MODEL
from aurum_ml.pipeline.celery_app import config
from aurum_ml.population.index import ScoreIndex
from aurum_ml.population.vectors import VectorStore
from aurum_ml.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from redisdb import claim_redis_db  # noqa: E402

FACES = 40_000
MESSAGES = 12


def _fill(folder: Path) -> None:
    settings = get_settings().model_copy(update={"qdrant_path": folder, "qdrant_url": None})
    store = VectorStore(settings, MODEL, 128)
    rng = np.random.default_rng(3)
    for first in range(0, FACES, 2000):
        vectors = (0.08 + rng.normal(scale=0.05, size=(2000, 128))).astype(np.float32)
        store.upsert_many(
            [
                (str(uuid.UUID(int=first + i + 1)), vectors[i],
                 {"user_id": f"filler-{first + i}", "job_id": f"filler-{first + i}",
                  "image_sha256": "f", "stored_at": 0.0})
                for i in range(2000)
            ]
        )  # fmt: skip
    store.close()


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(ROOT / ".venv/bin/celery"), "-A", "aurum_ml", "worker", "-Q", "store",
         "--pool", "threads", "-c", "4", "-n", "store-kill@%h", "-l", "warning"],
        cwd=ROOT, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _wait(what: str, check, timeout: float, log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.005)
    raise AssertionError(f"{what}: not within {timeout} s\n{log.read_text()[-3000:]}")


def test_a_store_worker_killed_mid_build_loses_no_message_and_the_rerank_is_redone(
    redis_client, tmp_path
):
    url = claim_redis_db(exclude=(os.environ["AURUM_REDIS_URL"],))
    db = redis.Redis.from_url(url)
    folder = tmp_path / "qdrant"
    _fill(folder)
    env = dict(
        os.environ,
        AURUM_BROKER_URL=url,
        AURUM_RESULT_BACKEND=url,
        AURUM_REDIS_URL=url,
        QDRANT_PATH=str(folder),
        BROKER_VISIBILITY_TIMEOUT="10",
    )
    client = Celery("kill-test", broker=url, backend=url)
    client.config_from_object(config)
    client.conf.update(broker_url=url, result_backend=url)
    log = tmp_path / "store.log"
    run_key = f"aurum:index:{MODEL}:rank:run"
    worker = _worker(env, log)
    try:
        client.send_task("aurum_ml.rerank", queue="store", routing_key="store")
        _wait("the re-rank's index build", lambda: db.hget(run_key, "phase") == b"index", 120, log)
        # the build is beginning: the worker freezes in it; jobs keep arriving
        sent = [
            client.send_task("aurum_ml.get_score", (f"nobody-{n}",), queue="store",
                             routing_key="store")
            for n in range(MESSAGES)
        ]  # fmt: skip
        time.sleep(1.5)  # a BRPOP in flight would have had its reply (1 s timeout)
        assert db.hget(run_key, "phase") == b"index", "the build ended before the kill"
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        # every message is still in Redis: queued, or recorded as handed out
        queued = db.llen("store")
        handed_out = db.hlen("unacked")
        done = sum(1 for r in sent if db.exists(f"celery-task-meta-{r.id}"))
        assert queued + handed_out + done == MESSAGES, (queued, handed_out, done)

        killed_at = time.monotonic()
        worker = _worker(env, log)  # the supervisor restarts it, under its name
        for result in sent:
            result.get(timeout=max(1.0, 120 - (time.monotonic() - killed_at)))
        resolved_s = time.monotonic() - killed_at
        # the lost run was found, counted and redone; its staging set went with it
        _wait("the redone re-rank", lambda: db.exists("aurum:rerank:last"), 120, log)
        assert int(db.get("aurum:rerank:lost") or 0) == 1
        assert not db.exists(f"aurum:index:{MODEL}:rank:next")
        assert not db.exists(run_key)
        assert ScoreIndex(db, MODEL, 128).counted() == FACES
        assert db.zcard(f"aurum:index:{MODEL}:rank") == FACES
        assert resolved_s < 120
    finally:
        with contextlib.suppress(ProcessLookupError):
            worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(30)
        if worker.poll() is None:
            worker.kill()
        client.close()
        db.flushdb()
        db.close()
        shutil.rmtree(folder, ignore_errors=True)
