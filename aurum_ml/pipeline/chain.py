"""The job's chain: the detect, embed, score and store tasks, and the choice each middle
stage makes between its ML service and the in-process model. The stages' work is in
:mod:`aurum_ml.pipeline.stages`; a task only (de)serialises and picks the backend."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Task, chain

from aurum_ml.errors import ServiceUnavailable
from aurum_ml.pipeline.backends import FaceBackend
from aurum_ml.pipeline.celery_app import app
from aurum_ml.pipeline.health import fallback_state
from aurum_ml.pipeline.lifecycle import (
    NOTES,
    OUTCOME_FIELDS,
    PipelineTask,
    RunNotes,
    dump,
    outcome_of,
    stages_ran,
)
from aurum_ml.pipeline.runtime import Runtime, get_runtime
from aurum_ml.pipeline.state import HandOff, PipelineState
from aurum_ml.schemas import Job

log = logging.getLogger("aurum_ml.pipeline.chain")


def stages_run_here(rt: Runtime) -> bool:
    """Does this worker consume the detect, embed and score queues and run their models
    in-process? Then sending a job's three stages through the broker would only bring
    them back to this very pool: intake runs them itself (``INLINE_LOCAL_STAGES``)."""
    if not rt.settings.inline_local_stages:
        return False
    consumed = set(app.amqp.queues.consume_from)
    return (
        {"detect", "embed", "score"} <= consumed
        and _in_process(rt, rt.detect_service)
        and _in_process(rt, rt.embed_service)
    )


def run_here(task: Task, rt: Runtime, job: Job, handoff: HandOff) -> Job:
    """detect → embed → score in this task, each counted as its stage (aurum_ml.surfaces.metrics)
    as if it had run as one — their bookkeeping in one round trip, before the store stage
    is sent — with the image and the chip handed on in memory; the job then goes on to
    the store stage."""
    notes = NOTES.get(task.request.id) or RunNotes()
    runs: list[tuple[str, float, str, str]] = []
    try:
        for stage, run in _MIDDLE:
            started = time.perf_counter()
            came_in = {"status": job.status}
            outcome, source = "failed", "none"
            try:
                job = run(task, rt, job, handoff)
                outcome, source = outcome_of((came_in,), job.model_dump(include=OUTCOME_FIELDS))
            finally:
                seconds = time.perf_counter() - started
                notes.inline_s += seconds
                runs.append((stage, seconds, outcome, source))
    finally:
        stages_ran(runs, job.job_id)
    return job


def stages(job: Job, job_id: str | None = None) -> Any:
    """detect → embed → score → store; ``job_id`` names the store stage (a re-sent job)."""
    last = store.s() if job_id is None else store.s().set(task_id=job_id)
    return chain(detect.s(dump(job)), embed.s(), score.s(), last)


def _in_process(rt: Runtime, service: FaceBackend | None) -> bool:
    """Would a stage with this service run on the in-process model now: no service, or
    the fallback flag on (with FALLBACK_TO_SIMULATED)?"""
    if service is None:
        return True
    return bool(rt.settings.fallback_to_simulated and fallback_state(rt.state.redis).active)


def _with_service_or_fallback(
    task: Task, rt: Runtime, service: FaceBackend | None, run: Callable[[FaceBackend], Job]
) -> Job:
    """The service, unless there is none (USE_REAL_ML off, no URL) or the fallback flag is
    on; when the service is still unavailable on the last retry, the fallback — both only
    with FALLBACK_TO_SIMULATED. Otherwise ServiceUnavailable goes to Celery's autoretry."""
    if service is None or _in_process(rt, service):  # (None: narrows the type)
        return run(rt.fallback)
    try:
        return run(service)
    except ServiceUnavailable as exc:
        if rt.settings.fallback_to_simulated and task.request.retries >= task.max_retries:
            log.warning("%s: service unavailable after retries (%s): fallback", task.name, exc)
            return run(rt.fallback)
        raise


def _detect(task: Task, rt: Runtime, job: Job, state: PipelineState | None = None) -> Job:
    return _with_service_or_fallback(
        task, rt, rt.detect_service, lambda b: rt.detect(job, b, state)
    )


def _embed(task: Task, rt: Runtime, job: Job, state: PipelineState | None = None) -> Job:
    return _with_service_or_fallback(task, rt, rt.embed_service, lambda b: rt.embed(job, b, state))


def _score(task: Task, rt: Runtime, job: Job, state: PipelineState | None = None) -> Job:
    return rt.score(job, state)


# the middle stages' bodies, in order: their tasks, and intake's run of them (run_here)
_MIDDLE: tuple[tuple[str, Callable[[Task, Runtime, Job, PipelineState | None], Job]], ...] = (
    ("detect", _detect),
    ("embed", _embed),
    ("score", _score),
)


@app.task(bind=True, base=PipelineTask, name="aurum_ml.detect")
def detect(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    return dump(_detect(self, get_runtime(), Job.model_validate(job)))


@app.task(bind=True, base=PipelineTask, name="aurum_ml.embed")
def embed(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    return dump(_embed(self, get_runtime(), Job.model_validate(job)))


@app.task(bind=True, base=PipelineTask, name="aurum_ml.score")
def score(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    return dump(_score(self, get_runtime(), Job.model_validate(job)))


@app.task(bind=True, base=PipelineTask, name="aurum_ml.store")
def store(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    rt = get_runtime()
    result = rt.store(Job.model_validate(job))
    # ids, outcome, reason code and timings only: see aurum_ml.logs
    log.info(
        "job %s %s%s in %.0f ms",
        result.job_id,
        "degraded" if result.degraded else result.status,
        f" ({result.reason})" if result.reason else "",
        result.timings_ms.total,
    )
    return dump(result)
