"""Erasure: ``forget_user`` removes everything aurum_ml holds about one user.

Qdrant points (vectors and payloads), their entries in the score index and the centroid
sums, the cached latest result, the cooldown, the Celery results of the user's jobs, and
any image or embedding still in flight. A job still in flight when this runs finds its
image gone and fails, or, if it already holds its embedding, is stopped by a tombstone
(keyed by a hash of the user id, expiring with the image TTL) before it stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from aurum_ml.runtime import Runtime

__all__ = ["forget_user"]


def forget_user(
    runtime: Runtime,
    user_id: str,
    forget_results: Callable[[Iterable[str]], None] = lambda job_ids: None,
) -> dict[str, Any]:
    """Erase the user; returns how much was removed. Safe to run twice."""
    points = runtime.vectors.user_points(user_id)
    job_ids, images, record_keys = runtime.users.forget(user_id)
    removed_from_index = runtime.index.remove([(pid, vector) for pid, vector, _ in points])
    runtime.vectors.delete([pid for pid, _, _ in points])
    in_flight = runtime.state.drop(images, job_ids)
    forget_results(job_ids)
    return {  # counts only: this report is itself stored as a task result
        "points": len(points),
        "index_entries": removed_from_index,
        "records": record_keys,
        "results": len(job_ids),
        "in_flight_keys": in_flight,
    }
