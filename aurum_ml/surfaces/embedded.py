"""A Celery worker inside the calling process: the embedded default, and the tests' worker.

The embedded default (no ``AURUM_BROKER_URL``) runs the same tasks, queues and chain as a
cluster, on a ``memory://`` broker with one worker thread pool consuming every queue; the
pipeline state is an in-process fakeredis whose score index and cooldowns are rebuilt from
the local Qdrant folder at start, so the population carries over between runs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
from celery import Celery
from celery.result import _set_task_join_will_block
from celery.worker import WorkController

from aurum_ml.pipeline.runtime import Runtime
from aurum_ml.population.faces import FacePayload, read_payload
from aurum_ml.population.queries import stored_result
from aurum_ml.population.rerank import rerank
from aurum_ml.schemas import Result

__all__ = ["run_worker", "start_embedded"]


@contextlib.contextmanager
def run_worker(
    app: Celery,
    queues: Sequence[str],
    *,
    pool: str = "threads",
    concurrency: int = 2,
    hostname: str = "embedded@localhost",
    shutdown_timeout: float = 30.0,
) -> Iterator[WorkController]:
    """Run a worker consuming ``queues`` in a daemon thread until the block ends."""
    ready = threading.Event()
    app.finalize()
    # Pool threads resolve tasks through the *default* app: make it this one, or they run
    # Celery's fallback app (same celeryconfig, other task instances).
    app.set_default()
    app.set_current()
    worker = WorkController(
        app=app,
        queues=list(queues),
        pool=pool,
        concurrency=concurrency,
        hostname=hostname,
        loglevel="WARNING",
        ready_callback=lambda consumer: ready.set(),
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    thread = threading.Thread(target=worker.start, name=f"worker-{hostname}", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the embedded worker did not start within 30 s")
    # Creating a worker marks the process as "inside a task"; the caller is not.
    _set_task_join_will_block(False)
    try:
        yield worker
    finally:
        worker.stop(in_sighandler=False)
        thread.join(shutdown_timeout)


def restore(runtime: Runtime, with_results: bool = True) -> None:
    """Rebuild the in-process state from the Qdrant folder: the score index (a re-rank that
    leaves the stored payloads alone: start-up should not rewrite the collection), the
    users' cooldowns and — ``with_results``, for scoring — their latest results with their
    matches, so the same photo gets its stored result here as on a cluster, not a second
    run under a new job id. A query needs none of that (it reads the points) and skips
    the one same-person search per user it costs."""
    rerank(runtime, update_payloads=False)
    latest: dict[str, tuple[str, np.ndarray, FacePayload]] = {}
    for pid, vector, raw in runtime.vectors.points(with_payload=True):
        payload, user = read_payload(raw), str(raw.get("user_id") or "")
        if user and (user not in latest or payload["stored_at"] >= latest[user][2]["stored_at"]):
            latest[user] = (pid, vector, payload)
    horizon = time.time() - runtime.users.result_ttl
    for user, (pid, vector, payload) in latest.items():
        sha256, job_id = str(payload["image_sha256"]), str(payload["job_id"])
        if not with_results or payload["stored_at"] < horizon:
            runtime.users.restore(user, sha256, job_id, payload["stored_at"])
            continue  # a cluster would no longer hold its result either
        matches = [m.model_dump() for m in runtime.vectors.same_person(vector, user)]
        result = Result.model_validate(stored_result(runtime, pid, payload, matches))
        runtime.users.restore(
            user, sha256, job_id, payload["stored_at"], result.model_dump(mode="json")
        )


@contextlib.contextmanager
def start_embedded(app: Celery, runtime: Runtime) -> Iterator[Runtime]:
    """The whole pipeline in this process, on ``runtime`` (embedded settings)."""
    from aurum_ml.pipeline.celery_app import config

    if not runtime.settings.embedded:
        raise RuntimeError("start_embedded needs the embedded default (no AURUM_BROKER_URL)")
    restore(runtime)
    with run_worker(app, config.QUEUES):
        try:
            yield runtime
        finally:
            runtime.vectors.close()
