"""store: same-person matches, the vector and payload into Qdrant, the face into the score
index, the user's records, the image out of Redis. Idempotent: a redelivered store finds
its point and index entry already there."""

from __future__ import annotations

import time

from aurum_ml.errors import ImageExpired, UserErased
from aurum_ml.pipeline.state import DegradedJobs, PipelineState
from aurum_ml.population.faces import face_payload
from aurum_ml.population.index import ScoreIndex
from aurum_ml.population.users import UserRecords
from aurum_ml.population.vectors import VectorStore
from aurum_ml.schemas import Job, Result
from aurum_ml.settings import Settings


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
    if users.erased_after(job.user_id, job.epoch):
        _withdraw(job, index)
        state.release(job.image_sha256, job.job_id)
        raise UserErased(ERASED)
    if job.degraded and job.status != "rejected":
        # Simulated: nothing goes into the collection or the index; the image stays (within
        # its TTL) for the re-score once the services are back.
        job = job.model_copy(update={"status": "scored"})
        degraded.record(job)
        state.drop_derived(job.job_id)  # the image stays; its chip and vector need not
        if users.erased_after(job.user_id, job.epoch):  # erased meanwhile: no record left
            degraded.done(job.job_id)
            state.release(job.image_sha256, job.job_id)
            raise UserErased(ERASED)
    elif job.status == "rejected" or job.point_id is None:
        _withdraw(job, index)
        users.rejected(job.user_id, job.image_sha256, job.job_id)
        state.release(job.image_sha256, job.job_id)
    else:
        job = _store_face(job, vectors=vectors, index=index, users=users, state=state)
        state.release(job.image_sha256, job.job_id)
    elapsed = (time.perf_counter() - started) * 1000
    total = (time.time() - job.submitted_at) * 1000
    timings = job.timings_ms.model_copy(
        update={"store": round(elapsed, 1), "total": round(total, 1)}
    )
    result = job.model_copy(update={"timings_ms": timings}).result()
    if result.status == "scored":
        fields = result.model_dump(mode="json")
        kept = users.scored(job.user_id, job.image_sha256, job.job_id, fields, job.epoch)
        if kept is None:
            # erased since the checks above: the erasure removes the point and records
            state.release(job.image_sha256, job.job_id)
            raise UserErased(ERASED)
        if kept is not fields:  # this job's result as a first run cached it: one truth
            result = Result.model_validate(kept)
    return result


ERASED = "the user was erased after this job was submitted: nothing is stored"


def _withdraw(job: Job, index: ScoreIndex) -> None:
    """Take the face the score stage counted in back out (nothing if it placed none)."""
    if job.point_id is not None:
        index.withdraw(job.point_id)


def _store_face(
    job: Job,
    *,
    vectors: VectorStore,
    index: ScoreIndex,
    users: UserRecords,
    state: PipelineState,
) -> Job:
    assert job.point_id is not None
    vector = state.get_embedding(job.job_id)
    if vector is None:  # a second run after the first one released it
        stored = vectors.get(job.point_id)
        if stored is None:
            raise ImageExpired("the job's embedding is no longer stored (its TTL passed)")
        vector = stored[0]
    matches = vectors.same_person(vector, job.user_id)
    payload = face_payload(job)
    vectors.upsert(job.point_id, vector, dict(payload))
    index.add(job.point_id, vector, job.typicality or 0.0)
    if users.erased_after(job.user_id, job.epoch):  # erased while we wrote: take it out
        index.remove([(job.point_id, vector)])  # its pending entry too
        vectors.delete([job.point_id])
        raise UserErased(ERASED)
    return job.model_copy(update={"status": "scored", "matches": matches})
