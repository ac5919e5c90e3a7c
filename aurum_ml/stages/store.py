"""store: same-person matches, the vector and payload into Qdrant, the face into the score
index, the user's records, the image out of Redis. Idempotent: a redelivered store finds
its point and index entry already there."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aurum_ml.errors import ImageExpired
from aurum_ml.index import ScoreIndex
from aurum_ml.schemas import Job, Match, Result
from aurum_ml.settings import Settings
from aurum_ml.state import DegradedJobs, PipelineState
from aurum_ml.users import UserRecords
from aurum_ml.vectors import VectorStore


def store(
    job: Job,
    *,
    state: PipelineState,
    vectors: VectorStore,
    index: ScoreIndex,
    users: UserRecords,
    degraded: DegradedJobs,
    settings: Settings,
) -> Result:
    started = time.perf_counter()
    if job.degraded and job.status != "rejected":
        # Simulated: nothing goes into the collection or the index; the image stays (within
        # its TTL) for the re-score once the services are back.
        job = job.model_copy(update={"status": "scored"})
        degraded.record(job)
    elif job.status == "rejected" or job.point_id is None:
        users.rejected(job.user_id, job.image_sha256, job.job_id)
        state.release(job.image_sha256, job.job_id)
    else:
        job = _store_face(job, vectors=vectors, index=index, users=users, state=state,
                          settings=settings)  # fmt: skip
        state.release(job.image_sha256, job.job_id)
    elapsed = (time.perf_counter() - started) * 1000
    total = (time.time() - job.submitted_at) * 1000
    timings = job.timings_ms.model_copy(
        update={"store": round(elapsed, 1), "total": round(total, 1)}
    )
    result = job.model_copy(update={"timings_ms": timings}).result()
    if result.status == "scored":
        users.scored(job.user_id, job.image_sha256, job.job_id, result.model_dump(mode="json"))
    return result


def _erased_meanwhile(users: UserRecords, job: Job) -> bool:
    erased_at = users.forgotten_since(job.user_id)
    return erased_at is not None and erased_at >= job.submitted_at


def _store_face(
    job: Job,
    *,
    vectors: VectorStore,
    index: ScoreIndex,
    users: UserRecords,
    state: PipelineState,
    settings: Settings,
) -> Job:
    assert job.point_id is not None
    if _erased_meanwhile(users, job):
        raise ImageExpired("the user was erased while this job was in flight")
    vector = state.get_embedding(job.job_id)
    if vector is None:  # a second run after the first one released it
        stored = vectors.get(job.point_id)
        if stored is None:
            raise ImageExpired("the job's embedding is no longer stored (its TTL passed)")
        vector = stored[0]
    hits = vectors.nearest_others(
        vector, job.user_id, limit=settings.match_limit, max_distance=settings.same_person_distance
    )
    matches = [
        Match(user_id=str(payload.get("user_id")), point_id=pid, distance=round(distance, 4))
        for pid, distance, payload in hits
    ]
    payload = {
        "user_id": job.user_id,
        "job_id": job.job_id,
        "image_sha256": job.image_sha256,
        "score": job.score,
        "percentile": job.percentile,
        "typicality": job.typicality,
        "confidence": job.confidence,
        "vibes": job.vibes,
        "face": job.face.model_dump() if job.face else None,
        "quality": job.quality.model_dump() if job.quality else None,
        "model": job.model,
        "source": job.source,
        "created_at": datetime.fromtimestamp(job.submitted_at, UTC).isoformat(),
        "stored_at": job.submitted_at,
    }
    vectors.upsert(job.point_id, vector, payload)
    index.add(job.point_id, vector, job.typicality or 0.0)
    if _erased_meanwhile(users, job):  # erased while we wrote: take it back out
        index.remove([(job.point_id, vector)])
        vectors.delete([job.point_id])
        raise ImageExpired("the user was erased while this job was in flight")
    return job.model_copy(update={"status": "scored", "matches": matches})
