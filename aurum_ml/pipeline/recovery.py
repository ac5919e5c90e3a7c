"""Recovery of degraded results: jobs the simulated fallback answered are re-scored through
the services once they are back, under the same job id.

The store stage records each degraded job (``aurum:degraded`` sorted by submission time, the
job itself in ``aurum:degraded:{job_id}``) and keeps its image. ``rescore_degraded`` — which
the probe enqueues when the fallback flag turns off, and which can be run by hand — runs each
through detect → embed → score → store with the services (or the in-process models when no
service is configured), replaces the result stored under the job id and the user's cached
result, and forgets the record. A job whose image has expired meanwhile is moved to
``aurum:degraded:expired`` and reported: never dropped silently (it stays there, with its
record, for the records' keep time, and an erasure takes it). A job whose user was erased
after it was admitted is dropped with its image: the re-score carries the job's erasure
epoch, so it can never store for an erased user; a job erased during the run is never
moved to the expired list. One run at a time: ``aurum:degraded:lock``, with a lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aurum_ml.errors import ImageExpired, UserErased
from aurum_ml.pipeline.runtime import Runtime
from aurum_ml.schemas import Job, Timings

__all__ = ["rescore_degraded"]


LEASE_S = 1860  # the task's hard time limit: a killed run's lock lapses with it


def rescore_degraded(
    runtime: Runtime,
    replace_result: Callable[[str, dict[str, Any] | None], None] = lambda i, r: None,
) -> dict[str, Any]:
    """Re-score every degraded job; returns the job ids re-scored and those expired. One
    run at a time (a lock with a lease): a run that finds another under way returns
    ``skipped`` — the other re-scores every job once. ``replace_result(job_id, result)``
    stores a job's new result under its id; with None, forgets it (an erasure came)."""
    degraded = runtime.degraded
    token = degraded.lock(LEASE_S)
    if token is None:
        return {"skipped": "another re-score is running", "rescored": [], "expired": [],
                "erased": [], "expired_total": len(degraded.expired())}  # fmt: skip
    try:
        return _rescore(runtime, replace_result)
    finally:
        degraded.unlock(token)


def _rescore(
    runtime: Runtime, replace_result: Callable[[str, dict[str, Any] | None], None]
) -> dict[str, Any]:
    degraded = runtime.degraded
    detector = runtime.detect_service or runtime.local
    embedder = runtime.embed_service or runtime.local
    rescored: list[str] = []
    expired: list[str] = []
    erased: list[str] = []
    for job_id in degraded.pending():
        record = degraded.load(job_id)
        if record is None:  # erased meanwhile (the erasure took the rest), or long gone
            degraded.done(job_id)
            erased.append(job_id)
            continue
        if runtime.users.erased_after(record.user_id, record.epoch):
            degraded.done(job_id)
            runtime.state.release(record.image_sha256, job_id)
            erased.append(job_id)
            continue
        if not runtime.state.has_image(record.image_sha256):
            if degraded.expire(job_id):  # not if an erasure took it just now
                expired.append(job_id)
            continue
        job = Job(
            job_id=record.job_id,
            status="pending",
            user_id=record.user_id,
            image_sha256=record.image_sha256,
            allow_multiple_faces=record.allow_multiple_faces,
            submitted_at=time.time(),
            timings_ms=Timings(),
            epoch=record.epoch,
        )
        try:
            job = runtime.score(runtime.embed(runtime.detect(job, detector), embedder))
            result = runtime.store(job)
        except UserErased:  # erased while it was re-scored: the erasure took the rest
            degraded.done(job_id)
            erased.append(job_id)
            continue
        except ImageExpired:  # its image went while it was re-scored (its TTL, an erasure)
            if degraded.expire(job_id):
                expired.append(job_id)
            continue
        # an erasure between the store and here took the job's result: write none back
        # (None forgets it: an erasure landing while it is written leaves none either)
        if not runtime.users.erased_after(record.user_id, record.epoch):
            replace_result(job_id, result.model_dump(mode="json"))
        if runtime.users.erased_after(record.user_id, record.epoch):
            replace_result(job_id, None)
            degraded.done(job_id)
            erased.append(job_id)
            continue
        degraded.done(job_id)
        rescored.append(job_id)
    return {
        "rescored": rescored,
        "expired": expired,
        "erased": erased,
        "expired_total": len(degraded.expired()),
    }
