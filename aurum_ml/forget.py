"""Erasure: ``forget_user`` removes everything aurum_ml holds about one user, for good.

Order matters. First the user moves to a new erasure epoch (:meth:`UserRecords.mark_erased`):
from then on no job admitted earlier can store anything — a stage still in flight, a
redelivered message or the fallback's re-score days later all stop with ``UserErased``.
Then: Qdrant points (vectors and payloads), their entries in the score index and the
centroid sums, the cached latest result, the cooldown, the degraded jobs waiting for a
re-score and their images, any image or embedding still in flight and the jobs' entries
in the in-flight ledger (aurum_ml.redrive), the Celery results of
the user's jobs, and the user's name in *other* users' match lists (their cached results
and their Celery results).

A store stage that read the user's face as a match just before the erasure may write its
result just after it: :func:`sweep` repeats the result and match clean-up once the longest
stage time limit has passed (the ``forget_user`` task schedules it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from aurum_ml.runtime import Runtime
from aurum_ml.state import JobOwners

__all__ = ["SWEEP_AFTER_S", "ResultStore", "forget_user", "sweep"]

SWEEP_AFTER_S = 60  # > the store stage's hard time limit (40 s) plus queueing


class ResultStore(Protocol):
    """Where the jobs' results are kept (Celery's result backend)."""

    def forget(self, job_ids: Iterable[str]) -> None:
        """Delete these jobs' results."""

    def scrub(self, job_ids: Iterable[str], erased: str) -> int:
        """Take the user whose ``UserRecords.erasure_key`` is ``erased`` out of these
        results' match lists; returns how many changed."""


class NoResults:
    """No result backend to clean (the embedded default's queries run without one)."""

    def forget(self, job_ids: Iterable[str]) -> None:
        pass

    def scrub(self, job_ids: Iterable[str], erased: str) -> int:
        return 0


def forget_user(
    runtime: Runtime, user_id: str, results: ResultStore | None = None
) -> dict[str, Any]:
    """Erase the user; returns how much was removed (counts only: this report is itself
    stored as a task result). Safe to run twice."""
    results = results or NoResults()
    runtime.users.mark_erased(user_id)  # first: nothing admitted before now stores again
    points = runtime.vectors.user_points(user_id)
    job_ids, images, record_keys = runtime.users.forget(user_id)
    degraded_jobs, degraded_images = runtime.degraded.forget_user(user_id)
    removed_from_index = runtime.index.remove([(pid, vector) for pid, vector, _ in points])
    runtime.vectors.delete([pid for pid, _, _ in points])
    in_flight = runtime.state.drop(
        sorted({*images, *degraded_images}), sorted({*job_ids, *degraded_jobs})
    )
    all_jobs = sorted({*job_ids, *degraded_jobs})
    results.forget(all_jobs)
    runtime.hooks.drop(all_jobs)  # a webhook not yet sent reads the (gone) result: none
    runtime.inflight.done(*all_jobs)  # a job in flight stops at its next stage anyway
    JobOwners(runtime.state.redis, 0).drop(*all_jobs)  # the API's status URLs: 404 now
    named = runtime.users.forget_matches(user_id)
    scrubbed = results.scrub(named, runtime.users.erasure_key(user_id))
    return {
        "points": len(points),
        "index_entries": removed_from_index,
        "records": record_keys,
        "degraded_jobs": len(degraded_jobs),
        "results": len(all_jobs),
        "in_flight_keys": in_flight,
        "other_results_scrubbed": max(scrubbed, len(named)),
    }


def sweep(
    runtime: Runtime, erased: str, job_ids: Iterable[str], results: ResultStore
) -> dict[str, int]:
    """The erasure's second pass, given the user's erasure key (not their id): results
    written by jobs that were finishing while the first pass ran."""
    job_ids = list(job_ids)
    results.forget(job_ids)
    named = runtime.users.forget_matches_of(erased)
    return {"results": len(job_ids), "other_results_scrubbed": results.scrub(named, erased)}
