"""Erasure: ``forget_user`` removes everything aurum_ml holds about one user, for good.

Order matters. First the user moves to a new erasure epoch (:meth:`UserRecords.mark_erased`):
from then on no job admitted earlier can store anything — a stage still in flight, a
redelivered message or the fallback's re-score days later all stop with ``UserErased``.
Then: Qdrant points (vectors and payloads), their entries in the score index and the
centroid sums, the cached latest result, the cooldown, the degraded jobs waiting for a
re-score and their images, any image or embedding still in flight and the jobs' entries
in the in-flight ledger (aurum_ml.pipeline.redrive), the Celery results of
the user's jobs, and the user's name in *other* users' match lists (their cached results
and their Celery results).

A store stage that read the user's face as a match just before the erasure may write its
result just after it: :func:`sweep` repeats the result and match clean-up once the longest
stage time limit has passed (the ``forget_user`` task schedules it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol, runtime_checkable

from aurum_ml.population.handles import Population

__all__ = ["SWEEP_AFTER_S", "ErasedJobs", "JobRecords", "ResultStore", "forget_user", "sweep"]

SWEEP_AFTER_S = 60  # > the store stage's hard time limit (40 s) plus queueing


class ResultStore(Protocol):
    """Where the jobs' results are kept (Celery's result backend)."""

    def forget(self, job_ids: Iterable[str]) -> None:
        """Delete these jobs' results."""

    def scrub(self, job_ids: Iterable[str], erased: str) -> int:
        """Take the user whose ``UserRecords.erasure_key`` is ``erased`` out of these
        results' match lists; returns how many changed."""


class ErasedJobs(NamedTuple):
    job_ids: list[str]  # every job of the user's the pipeline knew, degraded ones included
    degraded: int  # of which waiting for a re-score
    in_flight_keys: int  # images, chips and vectors deleted


@runtime_checkable
class JobRecords(Protocol):
    """The pipeline's records of a user's jobs (aurum_ml.pipeline.runtime.Runtime is one): the
    population erases through this, never by importing the pipeline."""

    def erase_jobs(self, user_id: str, job_ids: list[str], images: list[str]) -> ErasedJobs:
        """Drop the jobs' images, chips, vectors, degraded records, pending webhooks,
        in-flight ledger entries and owners; returns every job id dropped."""


class NoResults:
    """No result backend to clean (the embedded default's queries run without one)."""

    def forget(self, job_ids: Iterable[str]) -> None:
        pass

    def scrub(self, job_ids: Iterable[str], erased: str) -> int:
        return 0


def forget_user(
    population: Population,
    user_id: str,
    results: ResultStore | None = None,
    jobs: JobRecords | None = None,
) -> dict[str, Any]:
    """Erase the user; returns how much was removed (counts only: this report is itself
    stored as a task result). Safe to run twice. ``jobs``: the pipeline's records of the
    user's jobs; by default the population itself when it is one (a Runtime). There is no
    erasure without them: a population alone would leave the user's images in flight."""
    results = results or NoResults()
    if jobs is None:
        if not isinstance(population, JobRecords):
            raise TypeError("forget_user needs the pipeline's JobRecords (pass a Runtime)")
        jobs = population
    population.users.mark_erased(user_id)  # first: nothing admitted before now stores again
    points = population.vectors.user_points(user_id)
    job_ids, images, record_keys = population.users.forget(user_id)
    removed_from_index = population.index.remove([(pid, vector) for pid, vector, _ in points])
    population.vectors.delete([pid for pid, _, _ in points])
    erased = jobs.erase_jobs(user_id, job_ids, images)
    results.forget(erased.job_ids)
    named = population.users.forget_matches(user_id)
    scrubbed = results.scrub(named, population.users.erasure_key(user_id))
    return {
        "points": len(points),
        "index_entries": removed_from_index,
        "records": record_keys,
        "degraded_jobs": erased.degraded,
        "results": len(erased.job_ids),
        "in_flight_keys": erased.in_flight_keys,
        "other_results_scrubbed": max(scrubbed, len(named)),
    }


def sweep(
    population: Population, erased: str, job_ids: Iterable[str], results: ResultStore
) -> dict[str, int]:
    """The erasure's second pass, given the user's erasure key (not their id): results
    written by jobs that were finishing while the first pass ran."""
    job_ids = list(job_ids)
    results.forget(job_ids)
    named = population.users.forget_matches_of(erased)
    return {"results": len(job_ids), "other_results_scrubbed": results.scrub(named, erased)}
