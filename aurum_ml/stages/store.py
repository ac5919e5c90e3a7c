"""store: the vector and payload into Qdrant, the face into the score index, the image out
of Redis. Idempotent: a redelivered store finds its point and index entry already there."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aurum_ml.errors import ImageExpired
from aurum_ml.index import ScoreIndex
from aurum_ml.schemas import Job, Result
from aurum_ml.state import PipelineState
from aurum_ml.vectors import VectorStore


def store(job: Job, *, state: PipelineState, vectors: VectorStore, index: ScoreIndex) -> Result:
    started = time.perf_counter()
    if job.status != "rejected" and job.point_id is not None:
        vector = state.get_embedding(job.job_id)
        if vector is None:  # a second run after the first one released it
            stored = vectors.get(job.point_id)
            if stored is None:
                raise ImageExpired("the job's embedding is no longer stored (its TTL passed)")
            vector = stored[0]
        payload = {
            "user_id": job.user_id,
            "image_sha256": job.image_sha256,
            "score": job.score,
            "percentile": job.percentile,
            "typicality": job.typicality,
            "quality": job.quality.model_dump() if job.quality else None,
            "model": job.model,
            "source": job.source,
            "created_at": datetime.fromtimestamp(job.submitted_at, UTC).isoformat(),
        }
        vectors.upsert(job.point_id, vector, payload)
        index.add(job.point_id, vector, job.typicality or 0.0)
        job = job.model_copy(update={"status": "scored"})
    state.release(job.image_sha256, job.job_id)
    elapsed = (time.perf_counter() - started) * 1000
    total = (time.time() - job.submitted_at) * 1000
    timings = job.timings_ms.model_copy(
        update={"store": round(elapsed, 1), "total": round(total, 1)}
    )
    return job.model_copy(update={"timings_ms": timings}).result()
