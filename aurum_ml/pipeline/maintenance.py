"""The maintenance queue's tasks: the re-rank, the probe, the re-score of degraded
results, the lost-job sweep, the population's queries and erasure. Each is a thin task
over a plain function of the population or the pipeline (rerank, health, recovery,
redrive, queries, forget, persistence)."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from celery import Task, signals, states

from aurum_ml.errors import PermanentError, StateUnavailable
from aurum_ml.pipeline.celery_app import app, config
from aurum_ml.pipeline.chain import stages
from aurum_ml.pipeline.health import probe
from aurum_ml.pipeline.intake import score_face
from aurum_ml.pipeline.ledger import LedgerEntry
from aurum_ml.pipeline.lifecycle import PipelineTask, job_ended
from aurum_ml.pipeline.recovery import rescore_degraded as rescore_degraded_jobs
from aurum_ml.pipeline.redrive import redrive_stalled as redrive_stalled_jobs
from aurum_ml.pipeline.runtime import get_runtime
from aurum_ml.pipeline.telemetry import rerank_done
from aurum_ml.population import queries
from aurum_ml.population.forget import SWEEP_AFTER_S, sweep
from aurum_ml.population.forget import forget_user as forget_user_everywhere
from aurum_ml.population.persistence import compact
from aurum_ml.population.rerank import RerankBusy
from aurum_ml.population.rerank import rerank as rerank_index
from aurum_ml.population.users import UserRecords
from aurum_ml.schemas import Job

log = logging.getLogger("aurum_ml.pipeline.maintenance")


@app.task(bind=True, base=PipelineTask, name="aurum_ml.rerank")
def rerank(self: Task) -> dict[str, Any]:
    """Recompute every stored face's typicality and score (beat-scheduled)."""
    rt = get_runtime()
    try:
        report = rerank_index(rt, owner=self.request.hostname)
    except RerankBusy as exc:  # one at a time: the run under way does the work
        return {"skipped": str(exc), "under_way": rt.index.run_under_way()}
    rerank_done(rt.state.redis, report.seconds, report.faces)
    return report.as_dict()


_PROCESS_STARTED = time.time()  # before this worker took any message


@signals.worker_ready.connect(weak=False)
def _redo_lost_rerank(sender: Any = None, **_: Any) -> None:
    """A worker that runs re-ranks, restarted: a re-rank its previous life began died with
    it. Reap its record and staging set, count it, and send the re-rank again now rather
    than at beat's next hour (beat's sweep does the same once a lost run's lease lapses,
    for a worker that does not come back)."""
    if sender is None or config.VECTOR_QUEUE not in sender.app.amqp.queues.consume_from:
        return
    try:
        lost = get_runtime().index.run_reap(sender.hostname, _PROCESS_STARTED)
    except StateUnavailable:  # Redis down at start: beat's sweep reaps it by its lease
        return
    if lost:
        log.warning("a re-rank died with this worker's previous process; sending it again")
        rerank.delay()


@app.task(base=PipelineTask, name="aurum_ml.probe_health")
def probe_health() -> dict[str, Any]:
    """Probe the services, keep the fallback flag (beat-scheduled every interval)."""
    rt = get_runtime()
    return probe(rt.state.redis, rt.settings, on_recovery=lambda: rescore_degraded.delay())


@app.task(base=PipelineTask, name="aurum_ml.rescore_degraded")
def rescore_degraded() -> dict[str, Any]:
    """Re-score the simulated fallback's results through the services (same job ids)."""

    def replace(job_id: str, result: dict[str, Any] | None) -> None:
        # The backend never overwrites a SUCCESS (its guard against duplicate deliveries):
        # forget the simulated result first. None: the user was erased, forget it only.
        app.backend.forget(job_id)
        if result is not None:
            app.backend.store_result(job_id, result, states.SUCCESS)

    # counts only: this report is itself stored as a task result, for a day, and job ids
    # of users erased during the run (or after it) must not stay there
    report = rescore_degraded_jobs(get_runtime(), replace)
    return {k: len(v) if isinstance(v, list) else v for k, v in report.items()}


def stage_backlog() -> int:
    """Messages waiting in the stage queues (Redis or RabbitMQ)."""
    total = 0
    with app.connection_for_read() as conn:
        for queue in config.STAGE_QUEUES:
            channel = conn.channel()  # a refused passive declare closes its channel
            try:
                total += channel.queue_declare(queue, passive=True).message_count
            except conn.channel_errors:  # no such queue (Redis drops an empty list)
                pass
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return total


@app.task(base=PipelineTask, name="aurum_ml.redrive_stalled")
def redrive_stalled() -> dict[str, list[str]]:
    """Beat's sweep for jobs the broker lost: sent again, or failed with a typed error."""
    rt = get_runtime()

    def has_result(job_id: str) -> bool:
        return app.AsyncResult(job_id).state in states.READY_STATES

    def send(job_id: str, entry: LedgerEntry) -> None:
        if entry.job is not None:
            stages(entry.job, job_id).apply_async()
        elif entry.request is not None:
            args, kwargs = entry.request["args"], entry.request["kwargs"]
            score_face.apply_async(args, kwargs, task_id=job_id, ledger=False)

    def fail(job_id: str, job: Job | None, exc: PermanentError) -> None:
        app.backend.mark_as_failure(job_id, exc)
        if job is not None:
            rt.release_failed(job)
        job_ended(job_id)

    if rt.index.run_reap():  # a re-rank whose lease lapsed: it died, and nobody redid it
        log.warning("a re-rank died mid-run (its lease lapsed); sending it again")
        rerank.delay()
    return redrive_stalled_jobs(
        rt, has_result=has_result, backlog=stage_backlog, send=send, fail=fail
    ).as_dict()


@app.task(base=PipelineTask, name="aurum_ml.get_score")
def get_score(user_id: str) -> dict[str, Any] | None:
    return queries.get_score(get_runtime(), user_id)


@app.task(base=PipelineTask, name="aurum_ml.similar")
def similar(user_id: str, k: int = 10, tenant: str | None = None) -> list[dict[str, Any]] | None:
    return queries.similar(get_runtime(), user_id, k, tenant)


@app.task(base=PipelineTask, name="aurum_ml.leaderboard")
def leaderboard(limit: int = 10, tenant: str | None = None) -> list[dict[str, Any]]:
    return queries.leaderboard(get_runtime(), limit, tenant)


@app.task(base=PipelineTask, name="aurum_ml.stats")
def stats() -> dict[str, Any]:
    return queries.stats(get_runtime())


class CeleryResults:
    """The jobs' results in Celery's result backend, for erasure
    (:mod:`aurum_ml.population.forget`).
    Remembers the ids it forgot: the erasure's second pass forgets them again."""

    def __init__(self) -> None:
        self.forgotten: list[str] = []

    def forget(self, job_ids: Any) -> None:
        for job_id in job_ids:
            app.AsyncResult(job_id).forget()
            self.forgotten.append(job_id)

    def scrub(self, job_ids: Any, erased: str) -> int:
        changed = 0
        for job_id in job_ids:
            meta = app.backend.get_task_meta(job_id, cache=False)
            result = meta.get("result")
            if meta.get("status") != states.SUCCESS or not isinstance(result, dict):
                continue
            matches = result.get("matches") or []
            kept = [m for m in matches if not UserRecords.names(m, erased)]
            if len(kept) != len(matches):
                # the backend never overwrites a SUCCESS: forget it first
                app.backend.forget(job_id)
                app.backend.store_result(job_id, result | {"matches": kept}, states.SUCCESS)
                changed += 1
        return changed


@app.task(base=PipelineTask, name="aurum_ml.forget_user")
def forget_user(user_id: str) -> dict[str, Any]:
    """Erase everything held about the user, the Celery results of their jobs and their
    name in other users' match lists included; a second pass follows (forget.sweep)."""
    results = CeleryResults()
    report = forget_user_everywhere(get_runtime(), user_id, results)
    erased = UserRecords.erasure_key(user_id)  # the second pass never sees the id
    sweep_erased.apply_async((erased, results.forgotten), countdown=SWEEP_AFTER_S)
    return report


@app.task(base=PipelineTask, name="aurum_ml.sweep_erased")
def sweep_erased(erased: str, job_ids: list[str]) -> dict[str, Any]:
    """The erasure's second pass: results written by jobs that were finishing meanwhile.
    Takes the user's erasure key, never their id."""
    return sweep(get_runtime(), erased, job_ids, CeleryResults())


@app.task(base=PipelineTask, name="aurum_ml.compact_persistence")
def compact_persistence() -> dict[str, Any]:
    """Rewrite the Redis append-only files after erasures (rate-limited; see persistence)."""
    return compact(get_runtime().settings)
